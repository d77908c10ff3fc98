# Two commands on a fresh machine: `make quickstart` and `make test`.
# Both create .venv with python3 and (re)install jaxssl into it when the venv
# is missing or setup.py changed.

PYTHON ?= python3
VENV ?= .venv
WORKDIR ?= workdirs/quickstart
PYTEST_ARGS ?=
BIN := $(VENV)/bin
STAMP := $(VENV)/.jaxssl-installed

.PHONY: quickstart test install clean

install: $(STAMP)

$(STAMP): setup.py
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

quickstart: $(STAMP)
	$(BIN)/python -m jaxssl.main --config=configs/quickstart.py --workdir=$(WORKDIR)

# Two pytest workers (pytest-xdist); each test file runs on one worker so
# module fixtures (pretraining runs shared by several tests) run once.
# Set PYTEST_WORKERS=0 for a single process.
PYTEST_WORKERS ?= 2

test: $(STAMP)
	$(BIN)/python -m pytest -q tests -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) workdirs *.egg-info
