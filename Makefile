# One entry point for people and CI. Every target installs what it needs by itself:
# a virtualenv in .venv, the pinned Python packages, and a release build of the extension.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEPS := $(VENV)/.deps-installed
# Build the extension and run cargo against the virtualenv's interpreter.
export PYO3_PYTHON := $(abspath $(BIN)/python)

.PHONY: all build demo test lint rust-test py-test bench clean

all: test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(DEPS): requirements-dev.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	touch $@

build: $(DEPS)
	$(BIN)/maturin develop --release --locked --quiet

demo: build
	cargo build --release --locked --example ipc_view
	$(BIN)/python -m arrowbridge.demo

lint: $(DEPS)
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --locked -- -D warnings
	$(BIN)/ruff check arrowbridge tests benchmarks notebooks
	$(BIN)/ruff format --check arrowbridge tests benchmarks notebooks

rust-test: $(DEPS)
	cargo test --workspace --locked

py-test: build
	$(BIN)/python -m mypy.stubtest arrowbridge._native
	$(BIN)/python -m pytest
	$(BIN)/python -m pytest --nbmake notebooks -q

test: lint rust-test py-test

bench: build
	$(BIN)/python benchmarks/run.py $(if $(QUICK),--quick)

clean:
	rm -rf $(VENV) target
