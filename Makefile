# The two commands of the README. Each one sets up .venv on a fresh machine first.
#   make quickstart   - the main job: data -> train -> export -> serve -> call -> benchmark
#   make test         - ruff and the whole test suite (what CI runs)
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup quickstart test lint protos clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU build of torch first: an unpinned torch would pull several GB of CUDA wheels.
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

quickstart: setup
	$(VENV)/bin/gamjeong quickstart

test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -q

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

# Regenerate the gRPC stubs in clients/v1 from protos/ (a test fails when they are stale).
protos: setup
	$(PY) -m gamjeong.clients.codegen

clean:
	rm -rf $(VENV) build *.egg-info
