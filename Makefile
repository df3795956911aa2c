# Two commands do everything on a fresh machine:
#   make demo   create .venv, install vireid, generate synthetic data, train on the CPU, print results
#   make test   create .venv, install vireid with its dev extras, run the whole test suite
# Both are idempotent: the install step is skipped while pyproject.toml is unchanged.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.vireid-installed
# PyTorch is installed first, pinned, so pip never resolves torch to a multi-GB download by accident.
# Override on other platforms, e.g. make test TORCH_PKGS="torch torchvision".
TORCH_PKGS ?= torch==2.14.1 torchvision==0.29.1
EXTRAS ?= dev,fast,onnx,faiss,text

.PHONY: demo test lint install clean-venv bench

demo: $(STAMP)
	$(VENV)/bin/vireid demo --out demo_out

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

install: $(STAMP)

bench: $(STAMP)
	$(PY) benchmarks/eval_speed.py
	$(PY) benchmarks/train_speed.py

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	@$(PY) -c "import torch, torchvision" 2>/dev/null || $(PY) -m pip install $(TORCH_PKGS)
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	@touch $(STAMP)

clean-venv:
	rm -rf $(VENV)
