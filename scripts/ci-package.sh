#!/bin/sh
# Checks the three ways operators run the daemon (README "Running it"):
#  1. the static binary: really static, starts, serves, stops cleanly;
#  2. the FROM scratch image: builds, and the binary inside it works the same;
#  3. the manifests: the DaemonSet against the Kubernetes schema and the
#     fields that matter, the systemd unit with systemd-analyze verify.
# Needs root, make static's toolchain, buildah (or podman/docker), python3
# with kubernetes-validate, systemd-analyze.
set -eu
cd "$(dirname "$0")/.."
fail() { echo "FAIL: $*" >&2; exit 1; }
IMAGE=${IMAGE:-localhost/scope-http-statistics:ci}
work=$(mktemp -d /tmp/shs-package.XXXXXX)
trap 'rm -rf "$work"' EXIT

echo "== static binary"
make -s static
bin=dist/scope-http-statistics
file "$bin" | tee "$work/file.txt"
grep -Eq 'statically linked|static-pie linked' "$work/file.txt" || fail "$bin is not static"
if ldd "$bin" >"$work/ldd.txt" 2>&1; then :; fi
grep -Eq 'not a dynamic executable|statically linked' "$work/ldd.txt" || fail "ldd: $(cat "$work/ldd.txt")"
echo "ok: ldd: $(cat "$work/ldd.txt" | tr -s ' \t' ' ')"
echo "size: $(stat -c %s "$bin") bytes"
BIN=$bin PORT=18191 scripts/ci-smoke.sh

echo "== image"
make -s image IMAGE="$IMAGE"
if docker info >/dev/null 2>&1; then
	ctr=$(docker create "$IMAGE")
	docker cp "$ctr:/scope-http-statistics" "$work/from-image"
	docker rm "$ctr" >/dev/null
	docker image inspect "$IMAGE" --format 'image size: {{.Size}} bytes'
else
	tool=buildah
	command -v buildah >/dev/null || tool=podman
	ctr=$($tool --storage-driver vfs from "$IMAGE")
	root=$($tool --storage-driver vfs mount "$ctr")
	ls -l "$root"
	[ "$(ls "$root")" = "scope-http-statistics" ] || fail "the image holds more than the binary: $(ls "$root")"
	cp "$root/scope-http-statistics" "$work/from-image"
	$tool --storage-driver vfs umount "$ctr" >/dev/null
	$tool --storage-driver vfs rm "$ctr" >/dev/null
	$tool --storage-driver vfs images --format 'image size: {{.Size}}' "$IMAGE"
	$tool --storage-driver vfs inspect --type image --format '{{.OCIv1.Config.Entrypoint}}' "$IMAGE" >"$work/entrypoint"
	grep -q '/scope-http-statistics' "$work/entrypoint" || fail "entrypoint is $(cat "$work/entrypoint")"
fi
cmp "$work/from-image" "$bin" || fail "the image's binary differs from $bin"
BIN=$work/from-image PORT=18192 scripts/ci-smoke.sh

echo "== kubernetes manifest"
python3 -m kubernetes_validate --strict deployments/k8s-http-statistics.yaml
python3 scripts/check-daemonset.py deployments/k8s-http-statistics.yaml

echo "== systemd unit"
# verify needs ExecStart to exist: check the shipped file with only that
# path pointed at the binary just built.
mkdir -p "$work/unit"
sed "s|/usr/local/bin/scope-http-statistics|$(pwd)/$bin|" deployments/scope-http-statistics.service \
	>"$work/unit/scope-http-statistics.service"
systemd-analyze verify "$work/unit/scope-http-statistics.service" >"$work/verify.txt" 2>&1 || true
if [ -s "$work/verify.txt" ]; then cat "$work/verify.txt"; fail "systemd-analyze verify complains"; fi
echo "ok: systemd-analyze verify is silent"
echo "package checks passed"
