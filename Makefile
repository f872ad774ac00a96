# Everything a machine needs is installed from here: Debian packages (when root and missing),
# then a venv with the project and its pinned dependencies.
PY      ?= python3.11
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
APT_PKGS := prometheus prometheus-alertmanager docker-compose chromium
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install test unit integration lint demo mlflow bench clean-runs

install: $(STAMP)

$(STAMP): pyproject.toml
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else echo "please install Debian packages:$$missing (sudo apt-get install$$missing)"; exit 1; fi; \
	fi
	test -x $(BIN)/python || $(PY) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

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
