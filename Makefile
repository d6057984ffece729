# Two commands do all the set-up: `make run` starts the gateway, `make test` runs the whole test suite.
# Each creates .venv with the Python it finds and installs what it needs when the requirements change; `make test`
# also installs the Debian packages the suite runs for real, with apt-get as root (tests/helpers/install-system-deps.sh).
# `make serve` is the recommended self-hosting server: gunicorn with gevent workers (gunicorn.conf.py), from
# requirements-serve.txt, which cPanel never installs.
# `make test-fast` is the edit loop: ruff and the tests that need no browser, no Apache and no slow run (pytest markers
# browser, deploy, slow; see tests/README.md), in under a minute.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: run serve test test-fast lint clean

run: $(VENV)/.runtime
	$(BIN)/python -m app

serve: $(VENV)/.serve
	$(BIN)/gunicorn --config gunicorn.conf.py

test: $(VENV)/.dev
	sh tests/helpers/install-system-deps.sh
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

test-fast: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -m "not browser and not deploy and not slow"

lint: $(VENV)/.dev
	$(BIN)/ruff check .

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.runtime: requirements.txt | $(VENV)/bin/python
	$(BIN)/python -m pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.serve: requirements.txt requirements-serve.txt | $(VENV)/bin/python
	$(BIN)/python -m pip install --quiet -r requirements-serve.txt
	touch $@ $(VENV)/.runtime

$(VENV)/.dev: requirements.txt requirements-serve.txt requirements-dev.txt | $(VENV)/bin/python
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	touch $@ $(VENV)/.runtime $(VENV)/.serve

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
