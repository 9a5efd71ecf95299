# purgeproxy: the two commands are `make run` (demo) and `make test` (whole suite).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
MEDPLUM := upstreams/medplum
HAPI := upstreams/hapi
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install upstreams medplum hapi postgresql nginx lint test run bench bench-tools clean

install: $(BIN)/purgeproxy

$(BIN)/purgeproxy: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

medplum: $(MEDPLUM)/node_modules/.package-lock.json

$(MEDPLUM)/node_modules/.package-lock.json: $(MEDPLUM)/package-lock.json $(MEDPLUM)/package.json
	cd $(MEDPLUM) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

hapi:
	$(HAPI)/hapi.sh build

upstreams: medplum hapi

# The job-store tests start a throwaway cluster with Debian's server binaries (not a system service).
postgresql:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || \
		{ $(SUDO) apt-get update && $(SUDO) apt-get install -y postgresql; }

# The operations-only deployment's test (tests/test_nginx_deployment.py) runs Debian's nginx on deploy/nginx/.
nginx:
	@command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || \
		{ $(SUDO) apt-get update && $(SUDO) apt-get install -y nginx; }

# Style and static types (settings in pyproject.toml: mypy is strict on engine, fhir and servers).
lint: install
	$(BIN)/ruff check purgeproxy tests bench
	$(BIN)/mypy purgeproxy

test: install lint upstreams postgresql nginx
	$(BIN)/pytest -ra

run: install medplum
	scripts/demo.sh

# Load from wrk, nginx as the reference reverse proxy, matplotlib for the charts.
bench-tools:
	@command -v wrk >/dev/null && command -v nginx >/dev/null || \
		{ $(SUDO) apt-get update && $(SUDO) apt-get install -y wrk nginx; }
	$(BIN)/pip install --quiet -e '.[test,bench]'

bench: install upstreams bench-tools
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) $(MEDPLUM)/node_modules $(HAPI)/target .pytest_cache
