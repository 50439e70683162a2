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

# The sample job in the sandbox: a fresh work directory under /tmp (as root, the sandbox
# runs as uid 65534, which must reach it), removed afterwards.
demo: setup
	$(BIN)/sandbox-agent jdl check samples/*.jdl
	$(BIN)/sandbox-agent policy explain samples/hello.jdl --runtime bwrap
	@base=$$(mktemp -d /tmp/sandbox-agent-demo.XXXXXX) && chmod 711 "$$base" && \
	  mkdir -m 777 "$$base/work" && chmod 777 "$$base/work" && \
	  cp samples/hello.sh "$$base/work/" && \
	  echo "$$ sandbox-agent sandbox exec --jdl samples/hello.jdl --workdir $$base/work -- /bin/sh hello.sh" && \
	  $(BIN)/sandbox-agent --home "$$base/home" sandbox exec --jdl samples/hello.jdl \
	    --workdir "$$base/work" -- /bin/sh hello.sh && \
	  echo "hello.txt: $$(cat "$$base/work/hello.txt")"; \
	  status=$$?; rm -rf "$$base"; exit $$status

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis src/*.egg-info
