# The two commands of the README. Each one sets up .venv on a fresh machine first.
#   make quickstart   - the main job: data -> train -> export -> serve -> call -> benchmark
#   make test         - ruff and the whole test suite (what CI runs)
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup quickstart test lint protos clean bench node-deps
NODE_CLIENT := clients/node
NODE_DEPS := $(NODE_CLIENT)/node_modules/.package-lock.json

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU build of torch first: an unpinned torch would pull several GB of CUDA wheels.
	$(PY) -m pip install -q "torch==2.13.0"
	# Everything: the base (serving) install plus the train and export extras and the dev tools.
	$(PY) -m pip install -q -e ".[train,export,dev]"
	touch $@

setup: $(VENV)/.installed

quickstart: setup
	$(VENV)/bin/gamjeong quickstart

# The numbers in docs/benchmarks.md (about 40 minutes on 2 cores): the model grid and the gRPC server (PyTorch fp32
# and ONNX int8), with one thread per backend and with the libraries' default threads.
bench: setup
	$(VENV)/bin/gamjeong bench model --threads 1 --iterations 10 --max-cell-seconds 10 --output docs/benchmarks/model-1-thread
	$(VENV)/bin/gamjeong bench server --threads 1 --output docs/benchmarks/server-1-thread
	$(VENV)/bin/gamjeong bench server --threads 1 --max-batch-size 1 --modes unary,chat \
		--model $${XDG_CACHE_HOME:-$$HOME/.cache}/gamjeong/bench/random-distilbert-base-multilingual-cased/onnx-int8 \
		--output docs/benchmarks/server-no-batching-1-thread
	$(VENV)/bin/gamjeong bench model --iterations 15 --max-cell-seconds 15 --output docs/benchmarks/model
	$(VENV)/bin/gamjeong bench server --output docs/benchmarks/server

# The Node.js example client's packages, exactly as locked (tests/test_node_client.py runs the client). Where npm is
# missing the test skips, and says so; CI installs node and npm first and makes that skip a failure.
$(NODE_DEPS): $(NODE_CLIENT)/package.json $(NODE_CLIENT)/package-lock.json
	npm ci --prefix $(NODE_CLIENT) --no-audit --no-fund
	touch $@

node-deps:
	@if command -v npm >/dev/null 2>&1; then $(MAKE) --no-print-directory $(NODE_DEPS); \
	else echo "npm not found: the Node client test (tests/test_node_client.py) will be skipped"; fi

test: setup node-deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -q

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

# Regenerate the gRPC stubs in gamjeong/api from protos/ (a test fails when they are stale), with the pinned grpcio-tools
# installed aside in build/ (its protobuf 5 gencode is the floor in pyproject.toml; gamjeong/api/codegen.py says why).
PROTOC_TOOLS = $(shell $(PY) -c "from gamjeong.api.codegen import PINNED_TOOLS; print(PINNED_TOOLS)")
protos: setup
	$(PY) -m pip install -q --no-deps --target build/grpcio-tools-$(PROTOC_TOOLS) grpcio-tools==$(PROTOC_TOOLS)
	PYTHONPATH=build/grpcio-tools-$(PROTOC_TOOLS) $(PY) -m gamjeong.api.codegen

clean:
	rm -rf $(VENV) build *.egg-info
