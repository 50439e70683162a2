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

# The pilot on the embedded default: the sample jobs submitted to a fresh queue (in a
# new directory under /tmp each time: as root the sandbox runs as uid 65534, which must
# reach the work area) and run in the sandbox with a local test authority, then their
# states, outputs, logs and the signed audit record of the production job. fail.jdl is
# meant to fail: it shows ERROR_E and OutputErrorE.
demo: setup
	$(BIN)/sandbox-agent jdl check samples/*.jdl samples/production/production.jdl > /dev/null
	@base=$$(mktemp -d /tmp/sandbox-agent-demo.XXXXXX) && chmod 711 "$$base" && \
	  home="$$base/home" && mkdir -p "$$home" && cp samples/slot.toml "$$home/slot.toml" && \
	  sa() { echo "$$ sandbox-agent $$*"; $(BIN)/sandbox-agent --home "$$home" "$$@"; } && \
	  sa submit samples/hello.jdl && sa submit samples/production/production.jdl && \
	  sa submit samples/sleep.jdl && sa submit samples/fail.jdl && \
	  sa run && sa jobs && sa status 2 && sa outputs 2 && sa logs 1 && sa audit show 2 && \
	  echo "the demo's state is in $$home (remove it with: rm -rf $$base)"

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis src/*.egg-info
