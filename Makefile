# Two commands do everything: `make test` and `make demo`. Each installs what it needs
# (Debian packages, a virtual environment, the package) and is safe to run again.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup host test lint typecheck unit demo clean

setup: $(STAMP)

host:
	@PYTHON=$(PYTHON) bash scripts/setup-host.sh

# Reinstall when the dependencies change; the package itself is editable.
$(STAMP): pyproject.toml | host
	@test -x $(BIN)/python || "$$(PYTHON=$(PYTHON) bash scripts/setup-host.sh --python)" -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	@touch $@

lint: setup
	$(BIN)/ruff check src tests benchmarks certs-test

typecheck: setup
	$(BIN)/mypy

unit: setup
	$(BIN)/python -m pytest

test: lint typecheck unit

demo: setup
	$(BIN)/sandbox-agent jdl check samples/*.jdl
	$(BIN)/sandbox-agent policy explain samples/hello.jdl --runtime bwrap

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis src/*.egg-info
