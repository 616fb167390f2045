# Two commands: `make demo` (the main job) and `make test` (the suite). Both create .venv as needed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# One epoch over 55,000 training images: the least that trains ResNet-20 to a credible accuracy on 2 cores; the
# other 5,000 stay unseen, for the validation split Taylor pruning stops by.
DEMO_ARGS ?= --test-subset 5000 --epochs 1
DEMO_TAYLOR ?= --val-size 5000 --step-fraction 0.1 --finetune-steps 50 --max-drop 1

.PHONY: demo test test-fast data data-cifar10 lint imports clean

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
# where edgeprune finds them by itself. CIFAR-10: the JPEG q75 copy in ../shared/datasets (checksum checked) goes into
# the cache, where `-d cifar10` finds it when the official files are absent; it is decoded once, on first use.
CIFAR_JPEG_SRC ?= ../shared/datasets/cifar10-jpg.tar.gz
CIFAR_JPEG_SHA256 := fdf0b4f6a0ce0e8a5d81bb436b49a9fb87e6911e1442da8db80f1a61ec5517e3
CACHE ?= $(or $(EDGEPRUNE_DATA),$(HOME)/.cache/edgeprune)
data: data-cifar10
	@if [ -d /usr/share/datasets/fashion-mnist ]; then \
		echo "Fashion-MNIST: found in /usr/share/datasets/fashion-mnist"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) \
		|| echo "note: could not install dataset-fashion-mnist with apt; pass --data-root DIR or --download"; \
	else \
		echo "note: Fashion-MNIST is not installed and apt is not usable as root here;"; \
		echo "      run 'sudo apt-get install dataset-fashion-mnist', or pass --data-root DIR / --download"; \
	fi

data-cifar10:
	@if [ -f $(CACHE)/cifar10/cifar10-jpg.tar.gz ]; then \
		echo "CIFAR-10 (JPEG q75 copy): found in $(CACHE)/cifar10"; \
	elif [ -f $(CIFAR_JPEG_SRC) ]; then \
		if echo "$(CIFAR_JPEG_SHA256)  $(CIFAR_JPEG_SRC)" | sha256sum -c --quiet - \
			&& mkdir -p $(CACHE)/cifar10 && cp $(CIFAR_JPEG_SRC) $(CACHE)/cifar10/.cifar10-jpg.tar.gz.part \
			&& mv $(CACHE)/cifar10/.cifar10-jpg.tar.gz.part $(CACHE)/cifar10/cifar10-jpg.tar.gz; then \
			echo "CIFAR-10 (JPEG q75 copy): copied into $(CACHE)/cifar10 (decoded on first use)"; \
		else \
			echo "note: CIFAR-10 not prepared: $(CIFAR_JPEG_SRC) does not match its published checksum, or the copy failed"; \
		fi; \
	else \
		echo "note: CIFAR-10 not prepared: $(CIFAR_JPEG_SRC) is absent. Put the official cifar-10-batches-py/"; \
		echo "      (or cifar10-jpg.tar.gz) in $(CACHE)/cifar10, or pass --data-root DIR / --download"; \
	fi

demo: $(VENV)/.installed data
	$(BIN)/edgeprune train --model resnet20 --dataset fashion-mnist --subset 55000 $(DEMO_ARGS) --name demo-dense \
		--overwrite
	$(BIN)/edgeprune prune --method taylor --from runs/demo-dense $(DEMO_TAYLOR) --quantize int8 --name demo-taylor \
		--overwrite
	$(BIN)/edgeprune compare runs/demo-dense runs/demo-taylor runs/demo-taylor-int8

# The whole suite (the README's test command, and CI's). test-fast leaves out the tests marked slow (over ~10 s).
test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest

test-fast: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -m "not slow"

lint: imports
	$(BIN)/ruff check src tests benchmarks

# The layer contracts in pyproject.toml ([tool.importlinter]; docs/architecture.md): CI runs this too.
imports: $(VENV)/.installed-dev
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache src/*.egg-info
