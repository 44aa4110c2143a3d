"""One module per resource; each operation of openapi.yaml is a function here.

Connexion routes ``operationId`` (camelCase) to the snake_case function of the
module named by ``x-openapi-router-controller``, after auth and validation.
"""
