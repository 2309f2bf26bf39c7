#!/bin/sh
# Smoke test for scope-http-statistics: sends a bounded stream of `GET /`
# (200) and `GET /not/exist` (404) to an HTTP server, and with --check reads
# the daemon's report and fails unless the server's process shows both rates.
set -eu

target=127.0.0.1:8080
seconds=5
per_second=10
socket=
usage() {
	cat <<USAGE
Usage: $0 [--target HOST:PORT] [--seconds N] [--rate N] [--check SOCKET]

  --target HOST:PORT  server to send requests to [default: $target]
  --seconds N         how long to send [default: $seconds]
  --rate N            GET / and GET /not/exist pairs per second [default: $per_second]
  --check SOCKET      read the daemon's report from SOCKET while sending, and exit 1
                      unless the process listening on the target port shows
                      http_200 and http_404 response rates
USAGE
}
while [ $# -gt 0 ]; do
	case "$1" in
	--target) target=${2:?--target needs HOST:PORT}; shift 2 ;;
	--seconds) seconds=${2:?--seconds needs a number}; shift 2 ;;
	--rate) per_second=${2:?--rate needs a number}; shift 2 ;;
	--check) socket=${2:?--check needs a socket path}; shift 2 ;;
	-h|--help) usage; exit 0 ;;
	*) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
	esac
done
for tool in curl; do
	command -v "$tool" >/dev/null || { echo "$0: $tool is needed" >&2; exit 2; }
done

send() {
	i=0
	while [ "$i" -lt "$((seconds * per_second))" ]; do
		curl -s -o /dev/null "http://$target/" || true
		curl -s -o /dev/null "http://$target/not/exist" || true
		i=$((i + 1))
		sleep "$(awk "BEGIN { print 1 / $per_second }")"
	done
}

if [ -z "$socket" ]; then
	echo "sending $((seconds * per_second)) x (GET /, GET /not/exist) to $target"
	send
	exit 0
fi

command -v python3 >/dev/null || { echo "$0: python3 is needed for --check" >&2; exit 2; }
[ -S "$socket" ] || { echo "$0: $socket is not a socket (is the daemon running?)" >&2; exit 1; }
port=${target##*:}
# Every process holding the listening socket (nginx: master and workers).
pids=$(ss -Hltnp "sport = :$port" | grep -o 'pid=[0-9]*' | cut -d= -f2 | sort -u | tr '\n' ' ')
[ -n "$pids" ] || { echo "$0: no process listens on port $port" >&2; exit 1; }

send &
sender=$!
trap 'kill $sender 2>/dev/null || true' EXIT
sleep 2
ok=1
for attempt in 1 2 3 4 5; do
	report=$(curl -s --max-time 1 --unix-socket "$socket" "http://plugin/report?api_version=1") || report=
	if printf '%s' "$report" | python3 -c '
import json, sys
pids = set(sys.argv[1].split())
report = json.load(sys.stdin)
for node, body in report["Process"]["nodes"].items():
    if node.rsplit(";", 1)[1] in pids:
        m = body["metrics"]
        if all(m.get(k, {"samples": [{"value": 0}]})["samples"][-1]["value"] > 0
               for k in ("http_requests_per_second", "http_200_responses_per_second", "http_404_responses_per_second")):
            print("ok: " + node + " " + ", ".join(
                "%s=%s" % (k, v["samples"][-1]["value"]) for k, v in sorted(m.items())))
            sys.exit(0)
sys.exit(1)
' "$pids"; then
		ok=0
		break
	fi
	sleep 1
done
if [ "$ok" -ne 0 ]; then
	echo "FAIL: no process of pid(s) $pids shows request, 200 and 404 rates in the report" >&2
	exit 1
fi
