# cvpipe: two commands for a newcomer, `make demo` and `make test`.
#
# The environment lives in .venv. torch is installed before the project so that a machine
# without an NVIDIA GPU gets the CPU build (no CUDA packages), and a machine with one gets
# PyPI's CUDA build. Override with TORCH=cpu|cuda.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
TORCH ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo cuda || echo cpu)
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
STAMP := $(VENV)/.installed-$(TORCH)
# uv sets up in about 21 s what pip takes about 44 s for (same packages, bytecode compiled as
# pip does it). pip stays the fallback: where uv cannot be installed, or UV=no.
UV ?= yes
# pip's local wheel folders (find-links), which uv does not read from pip's settings
UV_FIND_LINKS ?= $(PIP_FIND_LINKS)
UV_INSTALL = test "$(UV)" = yes && test -x $(BIN)/uv && $(BIN)/uv pip install -q --compile-bytecode --python $(BIN)/python \
  $(addprefix --find-links ,$(UV_FIND_LINKS))
# the test, lint and benchmark tools on top (make demo and make serve do without them)
DEV_STAMP := $(STAMP)-dev

.PHONY: help install demo serve compare-full compare-frontier test test-fast lint bench bench-gpu clean-venv

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || { echo "creating $(VENV)"; $(PYTHON) -m venv $(VENV); }
	@if [ "$(UV)" = yes ] && ! [ -x $(BIN)/uv ]; then \
	  $(BIN)/pip install -q "uv>=0.4" || echo "uv could not be installed: pip installs instead"; fi
	@echo "installing torch $(TORCH_VERSION) ($(TORCH) build) into $(VENV)"
ifeq ($(TORCH),cpu)
	@# "+cpu" matches only the CPU build: a local wheel where pip's find-links has one,
	@# else PyTorch's CPU index. Never the CUDA build.
	@$(UV_INSTALL) "torch==$(TORCH_VERSION)+cpu" \
	  || $(BIN)/pip install -q "torch==$(TORCH_VERSION)+cpu" \
	  || $(BIN)/pip install -q "torch==$(TORCH_VERSION)+cpu" --index-url $(TORCH_CPU_INDEX) --extra-index-url https://pypi.org/simple
else
	@$(UV_INSTALL) "torch==$(TORCH_VERSION)" || $(BIN)/pip install -q "torch==$(TORCH_VERSION)"
endif
	@echo "installing cvpipe (editable) and its dependencies into $(VENV)"
	@$(UV_INSTALL) -e . || $(BIN)/pip install -q -e .
	@rm -f $(VENV)/.installed-*
	@touch $@

$(DEV_STAMP): $(STAMP)
	@echo "installing the dev tools (pytest, ruff, import-linter, ...) into $(VENV)"
	@$(UV_INSTALL) -e ".[dev]" || $(BIN)/pip install -q -e ".[dev]"
	@touch $@

install: $(DEV_STAMP) ## create .venv and install cvpipe with its dependencies and its dev tools

demo: $(STAMP) ## the quick comparison (it fetches, verifies and decodes what it uses of CIFAR-10), models ready to serve
	@# no separate `cvpipe data prepare`: it would decode all 60,000 images (17 s), and the
	@# quick profile decodes the 6,000 it uses itself
	$(BIN)/cvpipe compare --profile quick
	@echo
	@echo "Report: reports/cifar10-quick/report.html. Serve the models with 'make serve', i.e.:"
	@echo "  $(BIN)/cvpipe serve --models models --reports reports --host 127.0.0.1 --port 8000"
	@echo "then open http://127.0.0.1:8000/ (classify images in the browser; API docs at /docs)"

serve: $(STAMP) ## serve ./models and ./reports on http://127.0.0.1:8000 (a page at /, docs at /docs)
	$(BIN)/cvpipe serve --models models --reports reports --host 127.0.0.1 --port 8000

compare-full: $(STAMP) ## the full comparison on all 60,000 images (32 min and 3.4 GB on 2 CPU cores, the README)
	$(BIN)/cvpipe compare --profile full

compare-frontier: $(STAMP) ## the full comparison, then the K = 6,400 patch pipelines (67 min and 4 GB on 2 CPU cores)
	$(BIN)/cvpipe compare --profile frontier

test: $(DEV_STAMP) ## run the whole test suite
	$(BIN)/pytest

test-fast: $(DEV_STAMP) ## tests without the slow ones
	$(BIN)/pytest -m "not slow"

lint: $(DEV_STAMP) ## ruff, and the layer contracts (import-linter)
	$(BIN)/ruff check .
	$(BIN)/lint-imports

# The speed benchmarks that measure against a peer in the same run and need nothing but
# CIFAR-10. The others take a models folder (api, rescore, ui), arguments (augment_variants,
# preconditioners) or hours (cnn, scale, the *_variants sweeps): see each one's --help.
BENCHMARKS ?= features patch_encoding scattering mlp_precision dask_extract

bench: $(DEV_STAMP) ## speed against the peers: scikit-image, OpenCV, kymatio, ... (CIFAR-10; JSON on stdout)
	@set -e; for b in $(BENCHMARKS); do echo "== benchmarks/$$b.py"; $(BIN)/python benchmarks/$$b.py; done

bench-gpu: $(DEV_STAMP) ## every GPU figure in one run (NVIDIA GPU; about 8 minutes; JSON on stdout)
	bash benchmarks/gpu.sh

clean-venv: ## remove the environment
	rm -rf $(VENV)
