# Two entry points a new user needs: `make demo` and `make test`.
# Both create .venv (Python 3.10+ with pip is all a fresh machine needs).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.unetsl-installed

.PHONY: demo test test-fast test-slow lint install clean

$(STAMP): setup.py pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test,napari]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" bash examples/demo.sh

test: test-fast test-slow lint

# two pytest workers (pytest-xdist), one test file each at a time: module fixtures stay shared
TEST_WORKERS ?= 2

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" -n $(TEST_WORKERS) --dist loadfile

# exit code 5 = "no test selected": fine while no test is marked slow
test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow || [ $$? -eq 5 ]

lint: $(STAMP)
	$(BIN)/ruff check src tests examples benchmarks

clean:
	rm -rf $(VENV) demo build src/*.egg-info
