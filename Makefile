# charrnn: `make train` and `make test` set up everything they need on a fresh machine.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
ARGS   ?=
TRAIN  ?= experiment=ten_minutes  # make train's recipe: the best model 10 minutes train here

.DEFAULT_GOAL := help
.PHONY: help install train test lint bench tensorboard clean

help: ## list the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt src/charrnn/int8_rows.cpp
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --no-compile -c constraints.txt -e '.[dev,sweep,onnx]'
	$(PY) -m charrnn.int8_kernel || echo "(the sampler's int8 product at 2-8 rows: oneDNN's)"
	$(PY) -m compileall -q -j 0 -x 'py31[2-9]' $(VENV)/lib >/dev/null  # on every core (pip: one); not py3.12+ files
	touch $(STAMP)

install: $(STAMP) ## create .venv with the pinned stack (fast when already done)

train: $(STAMP) ## train the best 10-minute model on tiny Shakespeare (TRAIN=... to change it, ARGS="key=value ...")
	$(PY) src/train.py $(TRAIN) $(ARGS)

test: $(STAMP) ## run the test suite
	$(PY) -m pytest -q -n auto $(ARGS)

lint: $(STAMP) ## ruff lint and format check
	$(PY) -m ruff check src tests bench
	$(PY) -m ruff format --check src tests bench

bench: $(STAMP) ## training and generation speed benchmark (ARGS=--quick for a short run)
	$(PY) bench/run.py $(ARGS)

tensorboard: $(STAMP) ## open TensorBoard on every run under outputs/
	$(VENV)/bin/tensorboard --logdir outputs

clean: ## remove the venv, caches and run outputs (keeps data/)
	rm -rf $(VENV) .pytest_cache .ruff_cache src/*.egg-info
	find outputs -mindepth 1 ! -name .gitkeep -exec rm -rf {} +
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
