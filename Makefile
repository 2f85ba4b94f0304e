# One entry point for people and CI. Every target installs what it needs by itself:
# a virtualenv in .venv, the pinned Python packages, and a release build of the extension.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEPS := $(VENV)/.deps-installed
# Build the extension and run cargo against the virtualenv's interpreter.
export PYO3_PYTHON := $(abspath $(BIN)/python)

.PHONY: all build demo test lint rust-test py-test bench bench-smoke fuzz test-long memcheck clean

all: test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(DEPS): requirements-dev.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	touch $@

# The extension, the example kernel plugin and the Rust reader the demo and tests run.

build: $(DEPS)
	$(BIN)/maturin develop --release --locked --quiet
	cargo build --release --locked -p arrowbridge-example-kernels -p arrowbridge --lib --example ipc_view

demo: build
	$(BIN)/python -m arrowbridge.demo

lint: $(DEPS)
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --locked -- -D warnings
	RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked --quiet
	$(BIN)/ruff check arrowbridge tests benchmarks notebooks
	$(BIN)/ruff format --check arrowbridge tests benchmarks notebooks

rust-test: $(DEPS)
	cargo test --workspace --locked

py-test: build
	$(BIN)/python -m mypy.stubtest arrowbridge._native
	$(BIN)/python -m pytest
	$(BIN)/python -m pytest --nbmake notebooks -q

# The quick benchmark runs in CI so that the suite never rots; its report goes to a
# temporary directory, not over docs/benchmarks.md.
bench-smoke: build
	$(BIN)/python benchmarks/run.py --quick --out "$$(mktemp -d)/benchmarks.md" > /dev/null

test: lint rust-test py-test bench-smoke

bench: build
	$(BIN)/python benchmarks/run.py $(if $(QUICK),--quick)

# Fuzzes the IPC reader (atheris); FUZZ_RUNS inputs, 200000 by default.
fuzz: build
	$(BIN)/python -m pip install --quiet -r fuzz/requirements.txt
	$(BIN)/python fuzz/fuzz_ipc.py -atheris_runs=$(or $(FUZZ_RUNS),200000) -print_final_stats=1

# The long reliability profiles: ten times the property and fuzz examples, five minutes of
# 64-client load, and a million atheris inputs to the IPC reader.
test-long: build
	HYPOTHESIS_PROFILE=nightly LOAD_SECONDS=$(or $(LOAD_SECONDS),300) $(BIN)/python -m pytest \
		tests/test_properties.py tests/test_fuzz.py tests/test_faults.py -q -s -p no:cacheprovider
	$(MAKE) fuzz FUZZ_RUNS=$(or $(FUZZ_RUNS),1000000)

# Memory safety under valgrind memcheck: the Rust test suite (no invalid access, no definite
# leak), then the in-process Python tests (no invalid access in arrowbridge's code; see
# tests/memcheck.py). About 5 minutes on 2 cores.
VALGRIND := valgrind --error-exitcode=99 -q
memcheck: build
	apt-get --version > /dev/null 2>&1 && ! command -v valgrind > /dev/null && \
		(apt-get update -qq && apt-get install -y -qq valgrind) || true
	CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="$(VALGRIND) --leak-check=full \
		--errors-for-leak-kinds=definite --show-leak-kinds=definite" cargo test --workspace --locked
	$(BIN)/python tests/memcheck.py tests/test_call.py tests/test_to_numpy.py \
		tests/test_to_arrow.py tests/test_plugin.py -k "not cli and not server and not large_inputs"

clean:
	rm -rf $(VENV) target
