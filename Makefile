VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test test-fast bench

install:
	./scripts/install.sh

demo: install
	$(BIN)/slimkit demo --overwrite  # replaces only an earlier demo run (slimkit.io.outputs)

test: install
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

bench: install
	$(BIN)/python bench/demo.py
