# Two commands: `make demo` (the main job) and `make test` (the suite). Both create .venv as needed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# One epoch over all 60,000 training images: the least that trains ResNet-20 to a credible accuracy on 2 cores.
DEMO_ARGS ?= --test-subset 5000 --epochs 1

.PHONY: demo test data lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip>=23.1"

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@ $(VENV)/.installed

# Debian's dataset-fashion-mnist puts the official idx files in /usr/share/datasets/fashion-mnist,
# where edgeprune finds them by itself.
data:
	@if [ -d /usr/share/datasets/fashion-mnist ]; then \
		echo "Fashion-MNIST: found in /usr/share/datasets/fashion-mnist"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) \
		|| echo "note: could not install dataset-fashion-mnist with apt; pass --data-root DIR or --download"; \
	else \
		echo "note: Fashion-MNIST is not installed and apt is not usable as root here;"; \
		echo "      run 'sudo apt-get install dataset-fashion-mnist', or pass --data-root DIR / --download"; \
	fi

demo: $(VENV)/.installed data
	$(BIN)/edgeprune train --model resnet20 --dataset fashion-mnist $(DEMO_ARGS) --name demo-dense --overwrite
	$(BIN)/edgeprune prune --method synflow --sparsity 0.9 --model resnet20 --dataset fashion-mnist $(DEMO_ARGS) \
		--name demo-synflow90 --overwrite
	$(BIN)/edgeprune prune --method reconvene --criterion synflow --sparsity 0.9 --model resnet20 \
		--dataset fashion-mnist $(DEMO_ARGS) --name demo-reconvene90 --overwrite
	$(BIN)/edgeprune compare runs/demo-dense runs/demo-synflow90 runs/demo-reconvene90

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache src/*.egg-info
