# purgeproxy: the two commands are `make run` (demo) and `make test` (whole suite).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
MEDPLUM := upstreams/medplum
HAPI := upstreams/hapi

.PHONY: install upstreams medplum hapi test run bench clean

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

test: install upstreams
	$(BIN)/pytest -ra

run: install medplum
	scripts/demo.sh

bench: install upstreams
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) $(MEDPLUM)/node_modules $(HAPI)/target .pytest_cache
