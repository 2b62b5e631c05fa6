# Two commands matter: `make demo` (set up, index real photos, search them) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Plain `torch` (PyPI's build for your machine, CUDA included), unless pip can install torch 2.13.0 without an
# index (a local CPU wheel in its find-links, as on this project's CI machines): then that wheel, so that a
# fresh venv does not pull a CUDA build. `TORCH=... make setup` chooses for you.
TORCH ?= $(shell $(PYTHON) -m pip install --dry-run --quiet --no-index --no-deps --ignore-installed torch==2.13.0 \
	>/dev/null 2>&1 && echo torch==2.13.0 || echo torch)
DEMO_DIR ?= examples/photos
DEMO_INDEX ?= examples/photos-index

.PHONY: setup test lint demo completions bench clean

$(BIN)/retrv: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check "$(TORCH)" -e ".[dev]"
	@touch $@

setup: $(BIN)/retrv

test: setup
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

demo: setup
	$(BIN)/python examples/sample_photos.py $(DEMO_DIR)
	$(BIN)/retrv build-index $(DEMO_DIR) --index $(DEMO_INDEX)
	$(BIN)/retrv search "a cup of coffee" --index $(DEMO_INDEX) --k 3
	$(BIN)/retrv search "a rocket launch" --index $(DEMO_INDEX) --k 3

completions: setup
	for sh in bash zsh fish; do $(BIN)/retrv completions $$sh > completions/retrv.$$sh; done

clean:
	rm -rf $(DEMO_DIR) $(DEMO_INDEX) .pytest_cache
