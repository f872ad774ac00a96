# Everything a machine needs is installed from here: Debian packages (when root and missing),
# then a venv with exactly the distributions of requirements.lock, and the project itself.
PY      ?= python3.11
VENV    := .venv
BIN     := $(VENV)/bin
UV      := $(BIN)/uv
STAMP   := $(VENV)/.installed
LOCK    := requirements.lock
APT_PKGS := prometheus prometheus-alertmanager docker-compose chromium
export PIP_DISABLE_PIP_VERSION_CHECK := 1

# The one platform the lock is resolved for (the machines the project is tested on).
LOCK_FLAGS := --extra dev --extra postgres --python-version 3.11 --python-platform x86_64-unknown-linux-gnu \
              --generate-hashes --custom-compile-command "make lock"

.PHONY: install lock test unit integration lint demo mlflow bench clean-runs

install: $(STAMP)

$(BIN)/python:
	$(PY) -m venv $(VENV) || python3 -m venv $(VENV)

# uv itself comes from the lock (its version and hashes), installed by the venv's pip.
$(UV): $(LOCK) | $(BIN)/python
	sed -n '/^uv==/,/[^\\]$$/p' $(LOCK) > $(VENV)/uv-requirement.txt
	$(BIN)/pip install -q --no-deps --require-hashes -r $(VENV)/uv-requirement.txt
	touch $(UV)

$(STAMP): pyproject.toml $(LOCK) | $(UV)
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else echo "please install Debian packages:$$missing (sudo apt-get install$$missing)"; exit 1; fi; \
	fi
	$(UV) pip sync -q --python $(BIN)/python --require-hashes $(LOCK)
	$(UV) pip install -q --python $(BIN)/python --no-deps --no-build-isolation -e .
	touch $(STAMP)

# Re-resolve pyproject.toml into the lock, keeping every pin the ranges still allow. To move one
# package on purpose: make lock ARGS="--upgrade-package pyarrow"; all of them: ARGS=--upgrade.
lock: | $(UV)
	$(UV) pip compile pyproject.toml $(LOCK_FLAGS) $(ARGS) -o $(LOCK)

lint: install
	$(BIN)/ruff check .

test: install lint
	$(BIN)/python -m pytest -q --timeout=900 --durations=15

demo: install
	$(BIN)/stopdrift demo

mlflow: install
	$(BIN)/stopdrift mlflow

bench: install
	$(BIN)/python -m benchmarks.run_all

clean-runs:
	rm -rf runs/
