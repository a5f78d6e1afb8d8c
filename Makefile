VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test bench

install:
	./scripts/install.sh

demo: install
	$(BIN)/slimkit demo --overwrite  # replaces only an earlier demo run (slimkit.outputs)

test: install
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python bench/demo.py
