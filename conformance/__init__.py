"""Schemathesis conformance: the real server fuzzed against openapi.yaml."""
