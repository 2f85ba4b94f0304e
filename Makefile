# One entry point for people and CI. Every target installs what it needs by itself: a
# virtualenv in .venv, the pinned Python packages, and the extension.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEPS := $(VENV)/.deps-installed
DEMO_DEPS := $(VENV)/.demo-deps-installed
BUILD_DEPS := $(VENV)/.build-deps-installed
# Build the extension and run cargo against the virtualenv's interpreter.
export PYO3_PYTHON := $(abspath $(BIN)/python)

.PHONY: all install build demo wheel wheel-smoke docs test lint rust-test py-test instructions instructions-baseline bench bench-smoke fuzz fuzz-cmin fuzz-python test-long memcheck clean

all: test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The demo needs numpy and pyarrow; the tests need everything else too.
$(DEMO_DEPS): requirements-demo.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-demo.txt
	touch $@

$(BUILD_DEPS): requirements-build.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet -r requirements-build.txt
	touch $@

$(DEPS): requirements-dev.txt requirements-demo.txt requirements-build.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	touch $@ $(DEMO_DEPS) $(BUILD_DEPS)

# The wheel users install, built for the virtualenv's interpreter and installed into it: the
# tests run against exactly that (cargo rebuilds only what changed).
install: $(DEPS)
	rm -rf target/wheels/installed
	$(BIN)/maturin build --release --locked --quiet -i $(BIN)/python -o target/wheels/installed
	$(BIN)/python -m pip install --quiet --force-reinstall --no-deps target/wheels/installed/*.whl

# The installed wheel, then what the tests and benchmarks use besides it: the example
# extension built on arrowbridge-pyo3 (examples/extension), the test hooks
# (crates/arrowbridge-testing, never shipped), the example kernel plugin and the Rust reader.
# Each of these reuses the dependencies the wheel's build compiled: crates/workspace-hack gives
# them one feature set, and the plugin is built as a cdylib alone, so that its dependencies are
# compiled for link-time optimisation as the wheel's were (an rlib would want object code).
build: install
	$(BIN)/maturin develop --release --locked --quiet -m examples/extension/Cargo.toml
	$(BIN)/maturin develop --release --locked --quiet -m crates/arrowbridge-testing/Cargo.toml
	cargo rustc --release --locked --quiet -p arrowbridge-example-kernels --lib --crate-type cdylib
	cargo build --release --locked --quiet -p arrowbridge --example ipc_view

# The shipped wheels, one per CPython 3.10-3.13 found (on PATH or under pyenv), in dist/.
wheel: $(BUILD_DEPS)
	$(BIN)/maturin build --release --locked -o dist $(foreach i,$(shell $(BIN)/python packaging/pythons.py),-i $(i))

# Each other CPython found gets the shipped wheel in a fresh virtualenv and runs the doctests
# and a smoke subset of the tests there (packaging/smoke.py says which, and skips a missing one).
# CI runs it after `make test` (.ci/run): three release builds take about 9 minutes here, which
# would take a cold `make test` past 30.
wheel-smoke: build
	$(BIN)/python packaging/smoke.py

# Only what the demo runs, in one cargo invocation (so no dependency is built twice) with
# the demo profile (quicker to build than the wheels' release profile, see Cargo.toml): the
# extension, the example kernel plugin and the Rust IPC reader. The package and its
# extension are put together in target/demo/site, which the demo imports from.
DEMO := target/demo
demo: $(DEMO_DEPS)
	PYO3_BUILD_EXTENSION_MODULE=1 cargo build --profile demo --locked -p arrowbridge-py \
		-p arrowbridge-example-kernels -p arrowbridge --lib --example ipc_view
	rm -rf $(DEMO)/site && mkdir -p $(DEMO)/site && cp -r python/arrowbridge $(DEMO)/site/
	cp $(DEMO)/lib_native.so $(DEMO)/site/arrowbridge/_native$$($(BIN)/python -c \
		'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')
	PYTHONPATH=$(DEMO)/site $(BIN)/python -m arrowbridge.demo \
		--plugin $(DEMO)/libarrowbridge_example_kernels.so --ipc-view $(DEMO)/examples/ipc_view

lint: $(DEPS)
	cargo fmt --all -- --check
	$(BIN)/python packaging/unified.py
	cargo clippy --workspace --all-targets --all-features --locked -- -D warnings
	RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked --quiet
	$(BIN)/ruff check python tests benchmarks notebooks examples
	$(BIN)/ruff format --check python tests benchmarks notebooks examples

rust-test: $(DEPS)
	cargo test --workspace --locked

py-test: build
	$(BIN)/python -m mypy.stubtest arrowbridge._native rowstats --allowlist examples/extension/stubtest-allowlist.txt
	$(BIN)/python -m pytest
	$(BIN)/python -m pytest --nbmake notebooks -q

# The quick benchmark runs in CI so that the suite never rots; its report goes to a
# temporary directory, not over docs/benchmarks.md.
bench-smoke: build
	$(BIN)/python benchmarks/run.py --quick --out "$$(mktemp -d)/benchmarks.md" > /dev/null

# Instruction counts of the hot paths (callgrind), against benchmarks/instructions.json: a rise
# of more than 10 % fails. After a deliberate change, `make instructions-baseline` rewrites it.
instructions: build
	command -v valgrind > /dev/null || (apt-get update -qq && apt-get install -y -qq valgrind)
	$(BIN)/python benchmarks/instructions.py

instructions-baseline: build
	$(BIN)/python benchmarks/instructions.py --record

test: lint rust-test py-test docs instructions bench-smoke

# The documentation site (mkdocs.yml, docs/) into site/: a broken link or anchor, or a page
# missing from the navigation, fails the build. tests/test_docs.py runs the pages' code.
docs: $(DEPS)
	$(BIN)/python -m pip install --quiet -r requirements-docs.txt
	$(BIN)/ruff check docs/_ext
	$(BIN)/ruff format --check docs/_ext
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

# The Flight rows compare against iperf3's loopback throughput: installed from Debian's
# packages when missing (the row says so when that is not possible).
bench: build
	command -v iperf3 > /dev/null || (apt-get update -qq && apt-get install -y -qq iperf3) \
		|| echo "iperf3 could not be installed; its row will say so" >&2
	$(BIN)/python benchmarks/run.py $(if $(QUICK),--quick)

# Coverage-guided fuzzing of the Rust code: every cargo-fuzz target (fuzz/fuzz_targets, bodies
# in crates/fuzz-targets) under libFuzzer and AddressSanitizer for FUZZ_SECONDS (60 by default)
# each, growing fuzz/corpus/. Needs the nightly toolchain; installs cargo-fuzz if missing.
# `make test` replays the committed corpora and fuzz/regressions through every target.
FUZZ_TARGETS := ipc_decode c_data_import tensor_metadata flight_service kernel_params flight_get_response flight_ticket shm_request ragged_import
FUZZ_ENV := ASAN_OPTIONS=allocator_may_return_null=1
FUZZ_LIMITS := -rss_limit_mb=4096 -malloc_limit_mb=65536
fuzz: build
	command -v cargo-fuzz > /dev/null || cargo install cargo-fuzz --locked
	$(BIN)/python fuzz/make_seeds.py
	cd fuzz && for t in $(FUZZ_TARGETS); do \
		$(FUZZ_ENV) cargo +nightly fuzz run -O $$t corpus/$$t seeds/$$t -- \
			-max_total_time=$(or $(FUZZ_SECONDS),60) $(FUZZ_LIMITS) -print_final_stats=1 || exit 1; \
	done

# Shrinks each corpus to the inputs that keep its coverage (before committing it).
fuzz-cmin:
	cd fuzz && for t in $(FUZZ_TARGETS); do \
		$(FUZZ_ENV) cargo +nightly fuzz cmin -O $$t corpus/$$t -- $(FUZZ_LIMITS) || exit 1; \
	done

# Fuzzes the IPC reader from Python (atheris); FUZZ_RUNS inputs, 200000 by default.
fuzz-python: build
	$(BIN)/python -m pip install --quiet -r fuzz/requirements.txt
	$(BIN)/python fuzz/fuzz_ipc.py -atheris_runs=$(or $(FUZZ_RUNS),200000) -print_final_stats=1

# The long reliability profiles: ten times the property and fuzz examples, five minutes of
# 64-client load, the heavy tests (`@pytest.mark.long`: arrays over 2 GiB over Flight, a
# million in-process calls), and a million atheris inputs to the IPC reader.
test-long: build
	HYPOTHESIS_PROFILE=nightly LOAD_SECONDS=$(or $(LOAD_SECONDS),300) $(BIN)/python -m pytest \
		tests/test_properties.py tests/test_fuzz.py tests/test_faults.py -q -s -p no:cacheprovider \
		-m "long or not long"
	$(BIN)/python -m pytest -m long -q -s -p no:cacheprovider --deselect \
		tests/test_faults.py::test_64_clients_mixing_put_get_call_see_no_errors_and_flat_memory
	$(MAKE) fuzz-python FUZZ_RUNS=$(or $(FUZZ_RUNS),1000000)

# Memory safety: the Rust tests of the core and Flight crates under AddressSanitizer and
# LeakSanitizer (nightly), the Rust test suite under valgrind memcheck (no invalid access, no
# definite leak), then the in-process Python tests (no invalid access in arrowbridge's code;
# see tests/memcheck.py). About 15 minutes on 2 cores, most of it the sanitized build.
VALGRIND := valgrind --error-exitcode=99 -q
HOST := $(shell rustc -vV | sed -n 's/^host: //p')
memcheck: build
	RUSTFLAGS="-Zsanitizer=address" $(FUZZ_ENV) cargo +nightly test --locked --target $(HOST) \
		--target-dir target/asan -p arrowbridge -p arrowbridge-flight --lib --tests
	apt-get --version > /dev/null 2>&1 && ! command -v valgrind > /dev/null && \
		(apt-get update -qq && apt-get install -y -qq valgrind) || true
	CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="$(VALGRIND) --leak-check=full \
		--errors-for-leak-kinds=definite --show-leak-kinds=definite" cargo test --workspace --locked
	$(BIN)/python tests/memcheck.py tests/test_call.py tests/test_to_numpy.py \
		tests/test_to_arrow.py tests/test_plugin.py -k "not cli and not server and not large_inputs"

clean:
	rm -rf $(VENV) target dist
