# Two commands work on a fresh machine (see README): `make train` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?= -m "not slow" -n 2

.PHONY: setup setup-peers train test test-all lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	touch $@

setup: $(VENV)/.installed

# Optional peers (torchvision, ultralytics, pycocotools) for parity tests and benchmarks.
$(VENV)/.peers: $(VENV)/.installed
	$(PY) -m pip install -q -e ".[test,peers]"
	touch $@

setup-peers: $(VENV)/.peers

train: setup
	$(VENV)/bin/detjax train $(ARGS)

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-all: setup
	$(PY) -m pytest -q -m "" -n 2

lint: setup
	$(VENV)/bin/ruff check detjax tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
