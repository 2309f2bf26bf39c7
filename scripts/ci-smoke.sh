#!/bin/sh
# End-to-end smoke run of the release binary, as an operator would use it:
# start the daemon, put nginx under scripts/test-http-statistics.sh, check the
# report and that promtool accepts /metrics, then stop it with SIGTERM and
# check that it exits 0 and removes its socket. Needs root.
set -eu

bin=${BIN:-target/release/scope-http-statistics}
work=$(mktemp -d /tmp/shs-smoke.XXXXXX)
socket=$work/plugins/http-statistics/http-statistics.sock
port=${PORT:-18181}
daemon=
nginx_pid=

cleanup() {
	[ -n "$daemon" ] && kill "$daemon" 2>/dev/null || true
	[ -n "$nginx_pid" ] && kill "$nginx_pid" 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

mkdir -p "$work/nginx/logs" "$work/nginx/html"
chmod 755 "$work" "$work/nginx" "$work/nginx/html" # nginx workers run as an unprivileged user
echo hello >"$work/nginx/html/index.html"
sed -e "s|@PREFIX@|$work/nginx|g" -e "s|@PORT@|$port|g" tests/fixtures/nginx.conf.in >"$work/nginx/nginx.conf"
nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" -g 'daemon off;' &
nginx_pid=$!

"$bin" --socket "$socket" --hostname smoke-host >"$work/daemon.log" 2>&1 &
daemon=$!
for _ in $(seq 1 100); do [ -S "$socket" ] && break; sleep 0.1; done
[ -S "$socket" ] || { cat "$work/daemon.log"; fail "daemon did not create $socket"; }
[ "$(stat -c %a "$(dirname "$socket")")" = 700 ] || fail "socket directory is not mode 0700"

scripts/test-http-statistics.sh --target "127.0.0.1:$port" --seconds 4 --check "$socket"

curl -s --unix-socket "$socket" http://plugin/metrics >"$work/metrics.txt"
promtool check metrics <"$work/metrics.txt" || fail "promtool rejects /metrics"
echo "ok: promtool accepts /metrics"

"$bin" --healthcheck --socket "$socket" || fail "--healthcheck fails against a running daemon"
echo "ok: --healthcheck passes while the daemon runs"

kill -TERM "$daemon"
status=0
wait "$daemon" || status=$?
daemon=
[ "$status" -eq 0 ] || { cat "$work/daemon.log"; fail "daemon exited $status after SIGTERM"; }
[ ! -e "$socket" ] || fail "socket left behind after SIGTERM"
echo "ok: SIGTERM exits 0 and removes the socket"
if "$bin" --healthcheck --socket "$socket" 2>/dev/null; then fail "--healthcheck passes with no daemon"; fi
echo "ok: --healthcheck fails once the daemon is gone"

status=0
"$bin" --socket "$work/bad_name.sock" 2>"$work/bad.log" || status=$?
[ "$status" -eq 1 ] || fail "an invalid plugin id exits $status, not 1"
[ ! -e "$work/bad_name.sock" ] || fail "a refused start left a socket"
grep -q "not a valid id" "$work/bad.log" || fail "no clear error for an invalid plugin id"
echo "ok: invalid socket name refused with exit 1"
echo "smoke test passed"
