# Two commands do all the set-up on a fresh machine:
#   make run    install into .venv, create demo store 123 and its key (in a new or
#               empty ./kanal.db only), serve on :8080
#   make test   install everything (Python and npm tools, Debian's postgresql when
#               missing), lint code and contract, fuzz the real server with
#               Schemathesis on SQLite and on a throwaway PostgreSQL, then run pytest
VENV ?= .venv
PYTHON ?= python3
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml requirements.lock | cksum | cut -d' ' -f1)
NODE_STAMP := node_modules/.installed-$(shell cat package.json package-lock.json | cksum | cut -d' ' -f1)

.PHONY: run test lint contract pytest conformance conformance-postgres conformance-deep clients install postgres format clean

$(STAMP): pyproject.toml requirements.lock
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -c requirements.lock -e ".[dev]"
	rm -f $(VENV)/.installed-* && touch $@

$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	rm -f node_modules/.installed-* && touch $@

install: $(STAMP) $(NODE_STAMP)

# PostgreSQL's server for the tests (Debian's package), installed when it is missing.
# The tests start a throwaway cluster of their own (kanal/throwaway.py); nothing is
# assumed to be running. KANAL_TEST_POSTGRES_URL points them at a server of yours.
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || [ -n "$$KANAL_TEST_POSTGRES_URL" ] || { \
		echo "installing Debian's postgresql package for the tests"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq postgresql >/dev/null; }

run: $(STAMP)
	$(VENV)/bin/kanal demo

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Every operation has a handler; Redocly + Spectral with zero errors and zero warnings;
# the breaking-change guard.
contract: $(STAMP) $(NODE_STAMP)
	$(VENV)/bin/kanal stubs --check
	$(VENV)/bin/python -m conformance.lint

# The client tests need the npm tools (openapi-typescript, tsc) too.
pytest: $(STAMP) $(NODE_STAMP) postgres
	$(VENV)/bin/python -m pytest

# Generate the Python client (build/kanal-client) and the TypeScript types.
clients: $(STAMP) $(NODE_STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/openapi-python-client generate \
		--path openapi.yaml --config clients/python/config.yaml \
		--custom-template-path clients/python/templates \
		--output-path build/kanal-client --overwrite
	node_modules/.bin/openapi-typescript openapi.yaml -o clients/typescript/schema.d.ts
	node_modules/.bin/tsc --noEmit -p clients/typescript

# Schemathesis, every check and every phase, against a real server (CI depth: fixed seed).
conformance: $(STAMP)
	$(VENV)/bin/python -m conformance.run

# The same, against a fresh database of a throwaway PostgreSQL server.
conformance-postgres: $(STAMP) postgres
	$(VENV)/bin/python -m conformance.run --db postgres --reports postgres

# Release depth: hundreds of examples per operation, random seed, no time cap.
conformance-deep: $(STAMP)
	$(VENV)/bin/python -m conformance.run --deep

test: lint contract conformance conformance-postgres pytest

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) node_modules kanal.db kanal.db-wal kanal.db-shm .pytest_cache .ruff_cache \
		.hypothesis .schemathesis conformance/reports build clients/typescript/schema.d.ts
