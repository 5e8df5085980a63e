# The README's two commands: `make dev` (run the function locally, streaming) and `make test`
# (the whole suite). Both set up everything they need on a fresh machine.

PYTHON ?= $(shell command -v python3.12 2>/dev/null || echo python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: dev vercel-dev test lint bench bundle clean deps-redis deps-js deps-browser deps-vercel

$(STAMP): requirements.txt requirements-dev.txt
	$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 12), "Python 3.12 is required (Vercel runtime)"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

dev: $(STAMP)
	$(BIN)/python -m dev.serve $(ARGS)

# `vercel dev` with the real CLI (needs `vercel login` and `vercel link` once; buffers responses):
# runs it with vercel.dev.json, derived from vercel.json on every start (docs/platform.md).
vercel-dev: $(STAMP) deps-vercel
	$(BIN)/python -m dev.vercel_cli dev $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The Redis tests start their own redis-server on loopback; install Debian's when it is missing.
deps-redis:
	@command -v redis-server >/dev/null 2>&1 || { \
		apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server; }

# The conformance suite's real clients: the node packages pinned by tests/js/package-lock.json,
# and Debian's Chromium (Playwright's own browser download cannot work here).
JS := tests/js
JS_STAMP := $(JS)/node_modules/.installed

$(JS_STAMP): $(JS)/package.json $(JS)/package-lock.json
	cd $(JS) && npm ci --no-audit --no-fund
	touch $@

deps-js: $(JS_STAMP)

# Vercel's real CLI, pinned in tools/vercel, for the build test and `make bundle`.
VC := tools/vercel
VC_STAMP := $(VC)/node_modules/.installed

# `npm install`, not `npm ci`: the lock cannot list the CLI's native packages for other platforms
# (the registry here lacks them) and `npm ci` refuses it for that; install still takes every
# version from the lock and leaves it unchanged.
$(VC_STAMP): $(VC)/package.json $(VC)/package-lock.json
	cd $(VC) && npm install --no-audit --no-fund
	touch $@

deps-vercel: $(VC_STAMP)

deps-browser:
	@test -x /usr/bin/chromium || { apt-get update && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium; }

test: $(STAMP) deps-redis deps-js deps-browser deps-vercel lint
	$(BIN)/python -m pytest $(ARGS)

bench: $(STAMP) deps-vercel
	$(BIN)/python -m bench $(ARGS)

# Build the working tree with the real `vercel build` (offline) and print the function bundle.
bundle: $(STAMP) deps-vercel
	$(BIN)/python -m dev.vercel_cli bundle $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache node_modules $(JS)/node_modules $(VC)/node_modules
