# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO := outputs/demo

.PHONY: demo test test-fast lint format venv clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev,batch,tune,doctor]"
	touch $(STAMP)

venv: $(STAMP)

## The main job on its embedded default: synthetic cars -> data check -> quick recipe -> submission.
demo: $(STAMP)
	$(BIN)/python -m carclf.data.synthetic $(DEMO)/data
	$(BIN)/python -m carclf.data.check $(DEMO)/data
	$(BIN)/python train.py experiment=quick data.path=$(DEMO)/data data.image_size=160 hydra.run.dir=$(DEMO)/run
	$(BIN)/python predict.py model=$(DEMO)/run input=$(DEMO)/data/test_upload \
		sample_submission=$(DEMO)/data/sample-submission.csv output=$(DEMO)/submission.csv
	@echo "demo outputs in $(DEMO)/: run/ (checkpoints, tensorboard, bundle, curves.png), submission.csv"

## The whole test suite, slow tests included (what CI runs).
test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix . && $(BIN)/ruff format .

clean:
	rm -rf outputs multirun .pytest_cache
