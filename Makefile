# The README's two commands: `make run` (set up, then run on embedded defaults) and
# `make test` (set up, then run the whole test suite). Both are idempotent: the virtualenv is
# rebuilt only when pyproject.toml changes, and `faceguard models build` does nothing when the
# models are already built (downloads and conversions are cached per user).
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup run test

$(BIN)/faceguard: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

setup: $(BIN)/faceguard
	$(BIN)/faceguard models build

run: setup
	$(BIN)/faceguard analyze

test: setup
	$(BIN)/python -m pytest
