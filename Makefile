# scope-http-statistics: build, run and test entry points.
# `make run` and `make test` install what they need (Debian, as root).

BIN       := scope-http-statistics
RELEASE   := target/release/$(BIN)
SOCKET    ?= /var/run/scope/plugins/http-statistics/http-statistics.sock
ARGS      ?=
APT       := DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends

# Build needs: clang and the libbpf headers (the probe is C compiled at build time).
BUILD_PKGS := clang libbpf-dev
# Test needs: real servers and clients, promtool and prometheus, bpftool, an image
# builder, tmux (a terminal for `top`);
# plus kubernetes-validate from PyPI for the DaemonSet's schema.
TEST_PKGS  := nginx nodejs python3 curl openssl wrk netcat-openbsd prometheus bpftool buildah file tmux golang-go

MUSL      := x86_64-unknown-linux-musl
DIST      := dist/$(BIN)
IMAGE     ?= scope-http-statistics:latest

.PHONY: all build run deps test-deps test lint unit integration test-kernels smoke static image package-check bench soak clean

all: build

# Installs the build packages only when something is missing.
deps:
	@if ! command -v clang >/dev/null || [ ! -f /usr/include/bpf/bpf_helpers.h ]; then \
		echo "installing $(BUILD_PKGS)"; apt-get update -qq && $(APT) $(BUILD_PKGS); fi

test-deps: deps
	@missing=""; for c in nginx node python3 curl openssl wrk nc promtool prometheus bpftool buildah file tmux go; do \
		command -v $$c >/dev/null || missing=1; done; \
	if [ -n "$$missing" ]; then echo "installing $(TEST_PKGS)"; apt-get update -qq && $(APT) $(TEST_PKGS); fi
	@python3 -c 'import kubernetes_validate' 2>/dev/null || python3 -m pip install -q kubernetes-validate
	@rustup component add rustfmt clippy >/dev/null 2>&1 || true

build: deps
	cargo build --release --locked

# Builds, then runs the daemon in the foreground (Ctrl-C stops it and removes the socket).
run: build
	$(RELEASE) --socket $(SOCKET) $(ARGS)

# A fully static x86_64 binary in dist/: musl when its target can be
# installed, else glibc with +crt-static. Says which one it made.
static: deps
	@if rustup target add $(MUSL) >/dev/null 2>&1; then \
		cargo build --release --locked --target $(MUSL) && \
		mkdir -p dist && cp target/$(MUSL)/release/$(BIN) $(DIST) && \
		echo "static: built $(DIST) for $(MUSL) (musl)"; \
	else \
		RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked \
			--target x86_64-unknown-linux-gnu --target-dir target/crt-static && \
		mkdir -p dist && cp target/crt-static/x86_64-unknown-linux-gnu/release/$(BIN) $(DIST) && \
		echo "static: musl target unavailable; built $(DIST) with glibc +crt-static"; \
	fi
	@ls -l $(DIST) | awk '{print "static: " $$5 " bytes"}'

# The FROM scratch image, with docker when an engine runs, else podman or
# buildah (vfs storage and chroot isolation work without an engine or root
# filesystem tricks).
image: static
	@if docker info >/dev/null 2>&1; then \
		docker build -t $(IMAGE) .; \
	elif command -v podman >/dev/null; then \
		podman --storage-driver vfs build --isolation chroot -t $(IMAGE) .; \
	elif command -v buildah >/dev/null; then \
		buildah --storage-driver vfs bud --isolation chroot -t $(IMAGE) .; \
	else \
		echo "image: no docker engine, podman or buildah (apt-get install buildah)" >&2; exit 1; \
	fi

# Static binary, image, manifests: built and checked (see scripts/ci-package.sh).
package-check: test-deps
	scripts/ci-package.sh

lint: deps
	cargo fmt --check
	cargo clippy --locked --all-targets -- -D warnings

unit: deps
	cargo test --locked --lib --bins

# Suites whose counts depend on the hook path: run once per path (issue 9).
PATH_SUITES := --test counting --test report --test latency --test limits --test split_starts --test hangups --test tls

# Loads the real probe: needs root. Every suite on the socket-layer path,
# then the counting suites again on the syscall-tracepoint path.
integration: test-deps
	SHS_HOOKS=socket cargo test --locked --test '*' -- --test-threads=2
	SHS_HOOKS=syscalls cargo test --locked $(PATH_SUITES) -- --test-threads=2

# Debian's kernels booted under QEMU (scripts/test-kernels.sh): the
# kernel-dependent suites inside each, on every hook path it offers.
# `make test-kernels KERNELS="5.10 6.1"` runs some of them alone.
KERNELS    ?= 5.10 6.1 6.12
# The kernels CI boots: only those whose run passes (main stays green).
CI_KERNELS := 5.10 6.1 6.12

test-kernels: test-deps
	scripts/test-kernels.sh $(KERNELS)

smoke: build test-deps
	scripts/ci-smoke.sh

# The whole suite, as CI runs it.
test: test-deps lint unit integration
	$(MAKE) smoke
	$(if $(strip $(CI_KERNELS)),$(MAKE) test-kernels KERNELS="$(CI_KERNELS)",@echo "test-kernels: no kernel in CI_KERNELS")
	$(MAKE) package-check

# Not part of the test suite: timings and long runs (see BENCHMARKS.md).
bench:
	scripts/bench.sh $(BENCH_ARGS)

soak: build
	scripts/soak.sh $(SOAK_ARGS)

clean:
	cargo clean
	rm -rf dist
