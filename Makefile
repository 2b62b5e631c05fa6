# Two commands matter: `make demo` (set up, index real photos, search them) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch 2.13.0 is the CPU wheel this project's machines carry; on your own machine `TORCH=torch make ...`.
TORCH ?= torch==2.13.0
DEMO_DIR ?= examples/photos
DEMO_INDEX ?= examples/photos-index

.PHONY: setup test demo completions bench clean

$(BIN)/retrv: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check "$(TORCH)" -e ".[dev]"
	@touch $@

setup: $(BIN)/retrv

test: setup
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest -q

demo: setup
	$(BIN)/python examples/sample_photos.py $(DEMO_DIR)
	$(BIN)/retrv build-index $(DEMO_DIR) --index $(DEMO_INDEX)
	$(BIN)/retrv search "a cup of coffee" --index $(DEMO_INDEX) --k 3
	$(BIN)/retrv search "a rocket launch" --index $(DEMO_INDEX) --k 3

completions: setup
	for sh in bash zsh fish; do $(BIN)/retrv completions $$sh > completions/retrv.$$sh; done

clean:
	rm -rf $(DEMO_DIR) $(DEMO_INDEX) .pytest_cache
