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
# states, outputs, logs and the signed audit record of the image job. fail.jdl is
# meant to fail: it shows ERROR_E and OutputErrorE. busybox.jdl runs on an image: a
# busybox root built here, offered as Platform "busybox" by a site policy in the home
# (the shipped default, extended by name, plus that one platform). Then, where Podman
# runs here, hello.jdl once more with its JobWrapper in a Podman container
# (scripts/demo-podman.sh).
demo: setup
	$(BIN)/sandbox-agent jdl check samples/*.jdl samples/production/production.jdl > /dev/null
	@base=$$(mktemp -d /tmp/sandbox-agent-demo.XXXXXX) && chmod 711 "$$base" && \
	  home="$$base/home" && mkdir -p "$$home/policies" && cp samples/slot.toml "$$home/slot.toml" && \
	  bash scripts/busybox-image.sh "$$base/images/busybox" && chmod 755 "$$base/images" && \
	  printf 'extends = "default"\n[images]\nplatforms = { busybox = "%s" }\n' \
	    "$$base/images/busybox" > "$$home/policies/site.toml" && \
	  sa() { echo "$$ sandbox-agent $$*"; $(BIN)/sandbox-agent --home "$$home" "$$@"; } && \
	  sa image inspect "$$base/images/busybox" && \
	  sa submit samples/hello.jdl && sa submit samples/production/production.jdl && \
	  sa submit samples/sleep.jdl && sa submit samples/fail.jdl && \
	  sa submit samples/busybox.jdl --policy site && \
	  sa run --policy site && sa jobs && sa status 2 && sa outputs 2 && sa logs 1 && \
	  sa logs 5 && sa audit show 5 && \
	  bash scripts/demo-podman.sh $(BIN)/sandbox-agent "$$home" "$$base/images/busybox" && \
	  echo "the demo's state is in $$home (remove it with: rm -rf $$base)"

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis src/*.egg-info

# Mutation testing of the security-critical modules (not part of `make test`: it takes
# a while). Each mutant runs the module's own tests in a copy of the tree; a survivor is
# a defence no test holds. Options: make mutants MUTANTS_ARGS="--module handoff --sample 40"
.PHONY: mutants
mutants: setup
	$(BIN)/python scripts/mutants.py --list-survivors $(MUTANTS_ARGS)
