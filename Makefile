# Two commands do everything on a fresh machine: `make train` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NOTEBOOK_STAMP := $(VENV)/.installed-notebook
export TF_USE_LEGACY_KERAS := 1
export TF_CPP_MIN_LOG_LEVEL := 2

CONFIG ?= ppnet/configs/default.toml
DATA ?= data/synthetic
OUT ?= runs/$(shell date +%Y%m%d-%H%M%S)
ARGS ?=
# pytest-xdist processes for `make test` (`auto`: one per core; 0 runs the suite in this process).
TEST_WORKERS ?= auto

.PHONY: install train test lint notebook bench bench-smoke profile clean

install: $(STAMP)

# Reinstalls only when pyproject.toml changes (the stamp is newer otherwise). pip -qq prints errors
# only: not its warnings about index locations a machine's pip config names but lacks, nor
# setuptools' notes on editable builds, which say nothing about ppnet.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -qq --upgrade pip
	$(BIN)/python -m pip install -qq -e '.[test]'
	touch $(STAMP)

data/synthetic: | $(STAMP)
	$(BIN)/ppnet prepare synthetic --out $@

train: $(STAMP) $(if $(filter data/synthetic,$(DATA)),data/synthetic)
	$(BIN)/ppnet train --config $(CONFIG) --data $(DATA) --out $(OUT) $(ARGS)

# Test files are shared out whole across the workers (--dist loadfile), so a file's session fixtures
# (a trained run, the bench smoke run) are built once, on the one worker that needs them.
# The lint first: what CI runs, so a green `make test` here is a green CI run.
test: lint
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile $(ARGS)

# Jupyter (the `notebook` extra) over the base install; reinstalled when that is.
$(NOTEBOOK_STAMP): $(STAMP)
	$(BIN)/python -m pip install -qq -e '.[test,notebook]'
	touch $(NOTEBOOK_STAMP)

# Executes notebooks/evaluate_auc.ipynb headless (the committed notebook is only read) on
# PPNET_EXPORT, PPNET_DNN_EXPORT, PPNET_DATA and PPNET_FIGURES (make passes command-line variables
# to the environment); the executed copy goes beside the PNGs, in RUN_DIR/figures/. PYTHONPATH:
# the kernel starts in notebooks/ and must import this checkout's ppnet.
notebook: $(NOTEBOOK_STAMP)
	PYTHONPATH=$(CURDIR) $(BIN)/python notebooks/execute.py

# ruff's lint and format check, configured in pyproject.toml; `$(BIN)/ruff format .` applies the format.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Benchmark (quality, speed, memory, serving) → bench/results/<timestamp>.json; see bench/.
bench: $(STAMP)
	$(BIN)/python -m bench $(ARGS)

bench-smoke: $(STAMP)
	$(BIN)/python -m bench --smoke $(ARGS)

# Where a training step's and a one-row request's time goes, by TensorFlow op type; see bench/profile.py.
profile: $(STAMP) $(if $(filter data/synthetic,$(DATA)),data/synthetic)
	$(BIN)/python -m bench.profile --config $(CONFIG) --data $(DATA) $(ARGS)

clean:
	rm -rf $(VENV) runs data/synthetic .pytest_cache .ruff_cache
