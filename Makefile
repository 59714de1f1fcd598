# The two commands: `make run` and `make test` each do all set-up on a fresh
# Debian 12 machine (packages, virtual environment, BPF objects) first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BUILD := build
OBJDIR := src/ecapture/objects
BPF_SOURCES := $(wildcard bpf/*.bpf.c)
BPF_OBJECTS := $(patsubst bpf/%.bpf.c,$(OBJDIR)/%.bpf.o,$(BPF_SOURCES))
CLANG ?= clang
ARCH := $(shell uname -m | sed -e 's/x86_64/x86/' -e 's/aarch64/arm64/')

# Build tools and the real programs the tests and benchmarks drive (docs/targets.md#programs).
APT_PACKAGES := clang llvm libbpf-dev bpftool make curl openssl ca-certificates \
	nginx nghttp2-server nghttp2-client wrk bpftrace bpfcc-tools \
	android-libboringssl android-boringssl procps gcc binutils util-linux libssl-dev libnghttp2-14 jq \
	zsh sqlite3 postgresql-client-15 tshark libpcap0.8 \
	mariadb-server mariadb-client postgresql \
	gnutls-bin wget libnss3-tools \
	chromium chromium-driver \
	golang-go
STAMP_APT := $(BUILD)/.apt-$(shell echo $(APT_PACKAGES) | md5sum | cut -c1-8)
STAMP_VENV := $(VENV)/.installed
NATIVE_SOURCES := native/Cargo.toml $(wildcard native/Cargo.lock native/build.rs native/src/*.rs native/src/*/*.rs)
# The Rust core (ecapture._native) is rebuilt in place when its sources change.
STAMP_NATIVE := $(VENV)/.native

.PHONY: all setup deps venv native bytecode native-test fuzz bpf test-bpf run test unit e2e lint typecheck bench clean

all: bpf

setup: deps venv bpf native bytecode

deps: $(STAMP_APT)
$(STAMP_APT):
	@mkdir -p $(BUILD)
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:" $$missing; \
		if [ "$$(id -u)" != 0 ]; then echo "need root to install: $$missing" >&2; exit 1; fi; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	@touch $@

venv: $(STAMP_VENV)
# The editable install builds the Rust core through maturin (pyproject.toml) with the
# machine's cargo; the BPF objects are built by their own rule (ECAPTURE_BPF_BUILT).
$(STAMP_VENV): pyproject.toml | bpf
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	ECAPTURE_BPF_BUILT=1 $(VENV)/bin/pip install -q -e '.[dev]'
	@touch $@ $(STAMP_NATIVE)

# pip compiles the bytecode of what it installs from a wheel, not of an editable
# install's src/: where PYTHONDONTWRITEBYTECODE is set (or src/ is not writable
# by the user running ecapture) every start compiled each module again (~40-80 ms
# of `ecapture tls` start-up here). Up-to-date files are skipped.
bytecode: | $(STAMP_VENV)
	@$(VENV)/bin/python -m compileall -q src/ecapture

native: $(STAMP_NATIVE)
$(STAMP_NATIVE): $(NATIVE_SOURCES) | $(STAMP_VENV)
	ECAPTURE_BPF_BUILT=1 VIRTUAL_ENV=$(abspath $(VENV)) $(VENV)/bin/maturin develop -q --release --skip-install
	@touch $@

# vmlinux.h comes from this kernel's BTF at build time; never committed.
$(BUILD)/vmlinux.h:
	@mkdir -p $(BUILD)
	bpftool btf dump file /sys/kernel/btf/vmlinux format c > $@.tmp && mv $@.tmp $@

# Small BPF programs that only the tests load (the wrapper's own tests).
TEST_BPF_SOURCES := $(wildcard tests/bpf/*.bpf.c)
TEST_BPF_OBJECTS := $(patsubst tests/bpf/%.bpf.c,$(BUILD)/tests/%.bpf.o,$(TEST_BPF_SOURCES))
$(BUILD)/tests/%.bpf.o: tests/bpf/%.bpf.c bpf/events.h $(BUILD)/vmlinux.h
	@mkdir -p $(BUILD)/tests
	$(CLANG) -g -O2 -Wall -Werror -target bpf -D__TARGET_ARCH_$(ARCH) -I$(BUILD) -Ibpf -c $< -o $@

test-bpf: $(TEST_BPF_OBJECTS)

bpf: $(BPF_OBJECTS)
# gotls.bpf.c includes tls.bpf.c (the same connection bookkeeping).
$(OBJDIR)/gotls.bpf.o: bpf/tls.bpf.c
$(OBJDIR)/%.bpf.o: bpf/%.bpf.c $(wildcard bpf/*.h) $(BUILD)/vmlinux.h
	@mkdir -p $(OBJDIR)
	$(CLANG) -g -O2 -Wall -Werror -target bpf -D__TARGET_ARCH_$(ARCH) \
		-I$(BUILD) -Ibpf -c $< -o $@

run: deps venv bpf native bytecode
	$(VENV)/bin/ecapture tls $(ARGS)

lint: venv
	$(VENV)/bin/ruff check src tests bench
	cd native && cargo fmt --check && ECAPTURE_BPF_BUILT=1 cargo clippy -q --all-targets -- -D warnings
	cd native/fuzz && cargo fmt --check

# The Rust core's own tests (parsers, writer, ring) run without root.
native-test:
	cd native && ECAPTURE_BPF_BUILT=1 cargo test -q

# Every parser's cargo-fuzz target for FUZZ_SECONDS each (libFuzzer without a sanitizer:
# the machine's stable toolchain); a crash fails the build and leaves its input in
# native/fuzz/artifacts/. cargo-fuzz itself is built once into build/cargo.
FUZZ_SECONDS ?= 15
CARGO_FUZZ := $(BUILD)/cargo/bin/cargo-fuzz
$(CARGO_FUZZ):
	cargo install -q --locked cargo-fuzz --root $(BUILD)/cargo
fuzz: $(CARGO_FUZZ)
	cd native && for target in $$(../$(CARGO_FUZZ) fuzz list); do \
		echo "fuzzing $$target for $(FUZZ_SECONDS) s"; \
		ECAPTURE_BPF_BUILT=1 ../$(CARGO_FUZZ) fuzz run -s none $$target -- \
			-max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 -print_final_stats=0 \
			2>&1 | tail -n 3 || exit 1; \
	done

typecheck: venv
	$(VENV)/bin/mypy src

unit: deps venv bpf native test-bpf
	$(VENV)/bin/pytest -q tests/unit

test: deps venv bpf native bytecode test-bpf lint typecheck native-test fuzz
	$(VENV)/bin/pytest -q tests

bench: deps venv bpf native bytecode
	$(VENV)/bin/python -m bench $(ARGS)

clean:
	rm -rf $(BUILD) $(OBJDIR) dist native/target src/ecapture/_native*.so
