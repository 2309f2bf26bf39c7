#!/bin/bash
# Soak run of the release daemon: steady HTTP load plus process churn, with
# /report polled once a second as Scope does. Every 10 s it records the
# daemon's RSS and open fds, the tracked/in-flight gauges and the entry counts
# of its kernel maps; at the end it prints a markdown table and a verdict
# comparing the first sample after warm-up with the last one.
#
#   scripts/soak.sh [--minutes N] [--binary PATH]     (as root; default 10 minutes)
#
# Load: nginx (one worker) on a loopback port serving a small file, driven by
# `wrk -c 8 -t 2` with a 10 ms pause between requests on each connection
# (about 700 requests/s); churn: a short-lived server every 100 ms
# (tests/support/churn.c in trickle mode: each child serves 3 requests on a
# loopback connection of its own, then exits).
# Exits 1 when the verdict is FAIL: fds grew, or RSS grew by more than 10 %
# and 1 MiB, or /report failed or took longer than Scope's 500 ms.
set -euo pipefail

minutes=10
bin=target/release/scope-http-statistics
while [ $# -gt 0 ]; do
	case "$1" in
	--minutes) minutes=$2; shift 2 ;;
	--minutes=*) minutes=${1#*=}; shift ;;
	--binary) bin=$2; shift 2 ;;
	--binary=*) bin=${1#*=}; shift ;;
	-h | --help) sed -n '2,17p' "$0"; exit 0 ;;
	*) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
	esac
done
case "$minutes" in '' | *[!0-9]*) echo "--minutes: a whole number" >&2; exit 2 ;; esac
[ "$minutes" -ge 1 ] || { echo "--minutes: at least 1" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "soak.sh: run as root (the daemon loads an eBPF probe)" >&2; exit 2; }
for tool in nginx wrk curl bpftool cc python3; do
	command -v "$tool" >/dev/null || { echo "soak.sh: $tool is missing" >&2; exit 2; }
done

cd "$(dirname "$0")/.."
if [ ! -x "$bin" ]; then
	echo "building $bin"
	cargo build --release --quiet
fi

duration=$((minutes * 60))
interval=10
# Warm-up: a fifth of the run, at most a minute (the first samples include
# start-up, allocator growth and the first wave of churned processes).
warmup=$((duration / 5))
[ "$warmup" -gt 60 ] && warmup=60
[ "$warmup" -lt "$interval" ] && warmup=$interval

work=$(mktemp -d /tmp/shs-soak.XXXXXX)
chmod 755 "$work"
socket=$work/plugins/http-statistics.sock
daemon= nginx_pid= wrk_pid= churn_pid= poller_pid=

cleanup() {
	local pid
	for pid in "$poller_pid" "$wrk_pid" "$churn_pid" "$nginx_pid" "$daemon"; do
		[ -n "$pid" ] && kill "$pid" 2>/dev/null || true
	done
	for pid in "$poller_pid" "$wrk_pid" "$churn_pid" "$nginx_pid" "$daemon"; do
		[ -n "$pid" ] && wait "$pid" 2>/dev/null || true
	done
	rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
	python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# --- the daemon -------------------------------------------------------------
"$bin" --socket "$socket" --hostname soak-host >"$work/daemon.log" 2>&1 &
daemon=$!
for _ in $(seq 1 100); do
	curl -sf -o /dev/null --unix-socket "$socket" http://plugin/metrics && break
	sleep 0.1
done
curl -sf -o /dev/null --unix-socket "$socket" http://plugin/metrics ||
	{ cat "$work/daemon.log"; echo "FAIL: the daemon did not come up" >&2; exit 1; }

# Its kernel maps, by the ids in its fdinfo (names are cut to 15 characters).
declare -A map_id=()
for info in /proc/"$daemon"/fdinfo/*; do
	id=$(sed -n 's/^map_id:[[:space:]]*//p' "$info" 2>/dev/null || true)
	[ -n "$id" ] || continue
	name=$(bpftool -j map show id "$id" | python3 -c 'import json,sys; print(json.load(sys.stdin).get("name",""))')
	case "$name" in
	process_counts) map_id[process_counts]=$id ;;
	latency_by_proc*) map_id[latency_by_process]=$id ;;
	awaiting_respon*) map_id[awaiting_response]=$id ;;
	esac
done
for name in process_counts latency_by_process awaiting_response; do
	[ -n "${map_id[$name]:-}" ] || { echo "FAIL: no map $name among the daemon's fds" >&2; exit 1; }
done

map_entries() {
	bpftool -j map dump id "$1" 2>/dev/null |
		python3 -c 'import json,sys; print(len(json.load(sys.stdin)))' 2>/dev/null || echo "?"
}

# --- steady load: nginx + wrk ----------------------------------------------
mkdir -p "$work/nginx/logs" "$work/nginx/html"
chmod 755 "$work/nginx" "$work/nginx/html"
head -c 512 /dev/zero | tr '\0' 'x' >"$work/nginx/html/index.html"
port=$(free_port)
sed -e "s|@PREFIX@|$work/nginx|g" -e "s|@PORT@|$port|g" tests/fixtures/nginx.conf.in >"$work/nginx/nginx.conf"
nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" -g 'daemon off;' 2>"$work/nginx.err" &
nginx_pid=$!
for _ in $(seq 1 50); do curl -sf -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done
curl -sf -o /dev/null "http://127.0.0.1:$port/" || { cat "$work/nginx.err"; echo "FAIL: nginx did not start" >&2; exit 1; }

echo 'function delay() return 10 end' >"$work/pace.lua"
wrk -c 8 -t 2 -d "${duration}s" -s "$work/pace.lua" "http://127.0.0.1:$port/index.html" >"$work/wrk.out" 2>&1 &
wrk_pid=$!

# --- churn: a short-lived server every 100 ms -------------------------------
cc -O2 -o "$work/shs-churn" tests/support/churn.c
"$work/shs-churn" trickle 100 3 >"$work/churn.out" &
churn_pid=$!

# --- Scope's poll: GET /report once a second, 500 ms budget ------------------
(
	while :; do
		curl -s -o /dev/null -m 0.5 -w '%{http_code} %{time_total}\n' \
			--unix-socket "$socket" "http://plugin/report?api_version=1&probe_id=soak" || echo "000 0.5"
		sleep 1
	done
) >"$work/polls.log" 2>/dev/null &
poller_pid=$!

# --- samples ------------------------------------------------------------------
gauge() { sed -n "s/^$1 //p" "$work/metrics.txt"; }
rows=()
polls_seen=0
start=$(date +%s)
echo "soak: ${minutes} min, sampling every ${interval} s, warm-up ${warmup} s (nginx :$port, daemon pid $daemon)"
for ((t = interval; t <= duration; t += interval)); do
	wait_s=$((start + t - $(date +%s)))
	[ "$wait_s" -gt 0 ] && sleep "$wait_s"
	kill -0 "$daemon" 2>/dev/null || { cat "$work/daemon.log"; echo "FAIL: the daemon died" >&2; exit 1; }
	rss=$(awk '/^VmRSS:/ {print $2}' /proc/"$daemon"/status)
	fds=$(ls /proc/"$daemon"/fd | wc -l)
	curl -s -m 2 --unix-socket "$socket" http://plugin/metrics >"$work/metrics.txt" || : >"$work/metrics.txt"
	tracked=$(gauge scope_http_statistics_tracked_processes)
	inflight=$(gauge scope_http_statistics_inflight_requests)
	pc=$(map_entries "${map_id[process_counts]}")
	lat=$(map_entries "${map_id[latency_by_process]}")
	aw=$(map_entries "${map_id[awaiting_response]}")
	# The polls of the last interval: how many, how many failed, the slowest.
	read -r polls bad slowest < <(tail -n +$((polls_seen + 1)) "$work/polls.log" |
		awk '{n++; if ($1 != "200") bad++; if ($2 > max) max = $2} END {printf "%d %d %.1f\n", n, bad, max * 1000}')
	polls_seen=$((polls_seen + polls))
	churned=$(grep -c '^pid ' "$work/churn.out" || true)
	rows+=("$t $rss $fds ${tracked:-?} ${inflight:-?} $pc $lat $aw $polls $bad $slowest $churned")
	echo "t=${t}s rss=${rss}kB fds=$fds tracked=${tracked:-?} inflight=${inflight:-?} maps=$pc/$lat/$aw report=${polls}x(bad $bad, max ${slowest} ms) churned=$churned"
done

# --- results --------------------------------------------------------------------
wait "$wrk_pid" 2>/dev/null || true
wrk_pid=
curl -s --unix-socket "$socket" http://plugin/metrics >"$work/metrics.txt" || true
worker=$(ps -o pid= --ppid "$nginx_pid" | head -1 | tr -d ' ')
counted=$(sed -n "s/^http_server_requests_total{pid=\"$worker\",[^}]*} //p" "$work/metrics.txt")
sent=$(awk '/requests in/ {print $1}' "$work/wrk.out")
churn_fails=$(grep -c '^fail' "$work/churn.out" || true)

echo
echo "| elapsed s | RSS kB | fds | tracked | inflight | process_counts | latency_by_process | awaiting_response | /report polls | failed | slowest ms | servers churned |"
echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
for row in "${rows[@]}"; do
	# shellcheck disable=SC2086
	printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' $row
done
echo
echo "wrk: ${sent:-?} requests completed (plus at most 8 in flight at the end); nginx worker $worker counted ${counted:-?}; churned servers that failed: $churn_fails"

# First sample after warm-up vs the last one.
first= last=
for row in "${rows[@]}"; do
	set -- $row
	[ -z "$first" ] && [ "$1" -ge "$warmup" ] && first=$row
	last=$row
done
set -- $first
t0=$1 rss0=$2 fds0=$3 tracked0=$4 aw0=$8
set -- $last
t1=$1 rss1=$2 fds1=$3 tracked1=$4 aw1=$8
rss_growth=$((rss1 - rss0))
rss_pct=$(awk -v a="$rss0" -v b="$rss1" 'BEGIN {printf "%+.1f", (b - a) * 100 / a}')
fd_growth=$((fds1 - fds0))
bad_polls=$(awk '$1 != "200" {n++} END {print n + 0}' "$work/polls.log")
slow_polls=$(awk '$2 >= 0.5 {n++} END {print n + 0}' "$work/polls.log")
verdict=PASS
reasons=()
[ "$fd_growth" -gt 0 ] && { verdict=FAIL; reasons+=("fds grew"); }
if [ "$rss_growth" -gt 1024 ] && awk -v a="$rss0" -v b="$rss1" 'BEGIN {exit !((b - a) * 10 > a)}'; then
	verdict=FAIL
	reasons+=("RSS grew by more than 10 % and 1 MiB")
fi
[ "$bad_polls" -gt 0 ] && { verdict=FAIL; reasons+=("$bad_polls /report polls failed"); }
[ "$slow_polls" -gt 0 ] && { verdict=FAIL; reasons+=("$slow_polls /report polls took 500 ms or more"); }
[ "$churn_fails" -gt 0 ] && { verdict=FAIL; reasons+=("$churn_fails churned servers failed"); }
why=
[ "${#reasons[@]}" -gt 0 ] && why="; $(IFS=';'; echo "${reasons[*]}")"
printf 'VERDICT: %s — first sample after warm-up (t=%ss) vs last (t=%ss): RSS %s → %s kB (%+d kB, %s %%), fds %s → %s (%+d), tracked %s → %s, awaiting_response %s → %s%s\n' \
	"$verdict" "$t0" "$t1" "$rss0" "$rss1" "$rss_growth" "$rss_pct" "$fds0" "$fds1" "$fd_growth" \
	"$tracked0" "$tracked1" "$aw0" "$aw1" "$why"
[ "$verdict" = PASS ]
