# scope-http-statistics: build, run and test entry points.
# `make run` and `make test` install what they need (Debian, as root).

BIN       := scope-http-statistics
RELEASE   := target/release/$(BIN)
SOCKET    ?= /var/run/scope/plugins/http-statistics/http-statistics.sock
ARGS      ?=
APT       := DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends

# Build needs: clang and the libbpf headers (the probe is C compiled at build time).
BUILD_PKGS := clang libbpf-dev
# Test needs: real servers and clients, promtool, bpftool.
TEST_PKGS  := nginx nodejs python3 curl wrk netcat-openbsd prometheus bpftool

.PHONY: all build run deps test-deps test lint unit integration smoke clean

all: build

# Installs the build packages only when something is missing.
deps:
	@if ! command -v clang >/dev/null || [ ! -f /usr/include/bpf/bpf_helpers.h ]; then \
		echo "installing $(BUILD_PKGS)"; apt-get update -qq && $(APT) $(BUILD_PKGS); fi

test-deps: deps
	@missing=""; for c in nginx node python3 curl wrk nc promtool bpftool; do \
		command -v $$c >/dev/null || missing=1; done; \
	if [ -n "$$missing" ]; then echo "installing $(TEST_PKGS)"; apt-get update -qq && $(APT) $(TEST_PKGS); fi
	@rustup component add rustfmt clippy >/dev/null 2>&1 || true

build: deps
	cargo build --release --locked

# Builds, then runs the daemon in the foreground (Ctrl-C stops it and removes the socket).
run: build
	$(RELEASE) --socket $(SOCKET) $(ARGS)

lint: deps
	cargo fmt --check
	cargo clippy --locked --all-targets -- -D warnings

unit: deps
	cargo test --locked --bins

# Loads the real probe: needs root.
integration: test-deps
	cargo test --locked --tests -- --test-threads=2

smoke: build test-deps
	scripts/ci-smoke.sh

# The whole suite, as CI runs it.
test: test-deps lint
	cargo test --locked -- --test-threads=2
	$(MAKE) smoke

clean:
	cargo clean
