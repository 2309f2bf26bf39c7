#!/usr/bin/env bash
# Benchmarks scope-http-statistics against no tracing, a bpftrace script and
# a logging reverse proxy, in one run, configurations interleaved round-robin:
#   1. application overhead: nginx (static file) and node under wrk;
#   2. the daemon's own CPU and memory, and its binary size;
#   3. time to answer /report and /metrics with 1, 100 and 5,000 processes,
#      and the snapshot's CPU cost;
#   4. per-call cost (C microbenchmark, pinned to one CPU): one HTTP exchange
#      on a loopback connection (4 socket calls), the same with bytes that are
#      not HTTP, and single syscalls, with each hook path and with empty
#      programs on the same hooks (the floor), in the same run.
# Writes a markdown table (medians, min-max over rounds) to stdout and to
# --out (default bench-results.md). Needs root; installs nginx, wrk, node,
# bpftrace and bpftool with apt-get when missing. Helper sources: scripts/bench/.
#
#   scripts/bench.sh [--quick] [--rounds N] [--duration S] [--only PARTS] [--no-pin] [--out FILE] [--no-build] [--keep]
#
# --quick: 1 round, 2-second wrk runs, fewer iterations, 1/20/200 processes
# (a smoke run, < 2 minutes; it asserts nothing about timings). --only:
# a comma-separated subset of app (parts 1 and 2), scale (3), micro (4).
# --no-pin: wrk and the servers on any CPU (as the first BENCHMARKS.md was).
# --no-build: skip `cargo build --release`. --keep: keep the work directory
# (raw records, wrk and bpftrace outputs) and say where.
#
# It refuses to measure (exit 3, one line saying what) while any eBPF program
# it did not load itself is attached to a tracepoint it measures: another
# program's cost would be counted in the baseline or in ours. It turns
# kernel.bpf_stats_enabled off for the run (it adds its own cost to every
# program run) and restores it at the end. The load generator (wrk) and the
# server run on CPUs of their own; each round also runs the baseline twice
# (an A/A pair) so that the noise band of every ratio is visible.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HERE=$ROOT/scripts/bench
COMMAND=$(printf '%q ' "$0" "$@")
COMMAND=${COMMAND% }

QUICK=0
ROUNDS=
DURATION=
OUT=bench-results.md
BUILD=1
KEEP=0
ONLY=app,scale,micro
PIN=1
usage() { sed -n '2,/^set -uo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
	case "$1" in
	--quick) QUICK=1 ;;
	--rounds) ROUNDS=${2:?--rounds needs a number}; shift ;;
	--rounds=*) ROUNDS=${1#*=} ;;
	--duration) DURATION=${2:?--duration needs seconds}; shift ;;
	--duration=*) DURATION=${1#*=} ;;
	--out) OUT=${2:?--out needs a file}; shift ;;
	--out=*) OUT=${1#*=} ;;
	--only) ONLY=${2:?--only needs app,scale,micro}; shift ;;
	--only=*) ONLY=${1#*=} ;;
	--no-pin) PIN=0 ;;
	--no-build) BUILD=0 ;;
	--keep) KEEP=1 ;;
	-h | --help) usage; exit 0 ;;
	*) echo "bench.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
	esac
	shift
done

if [ "$QUICK" = 1 ]; then
	: "${ROUNDS:=1}" "${DURATION:=2}"
	IDLE=1 CPUWIN=2 NPROCS="1 20 200" GETS=10 MB_ITERS=20000 MB_BATCHES=5 MB_EXCHANGES=10000
else
	: "${ROUNDS:=3}" "${DURATION:=10}"
	IDLE=5 CPUWIN=5 NPROCS="1 100 5000" GETS=20 MB_ITERS=30000 MB_BATCHES=7
fi
# Part 4 is short per run and the noisiest: twice the rounds (still interleaved).
MICRO_ROUNDS=$((QUICK ? ROUNDS : 2 * ROUNDS))
WRK_THREADS=2 WRK_CONNS=32
case "$ROUNDS$DURATION" in *[!0-9]*) echo "bench.sh: --rounds and --duration take whole numbers" >&2; exit 2 ;; esac
for part in ${ONLY//,/ }; do
	case "$part" in app | scale | micro) ;; *) echo "bench.sh: --only takes app, scale, micro (comma-separated), not $part" >&2; exit 2 ;; esac
done
part() { case ",$ONLY," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }
# The load generator and the server on CPUs of their own (2 CPUs: wrk on 0,
# the server on 1); the microbenchmark on the server's CPU.
if [ "$(nproc)" -ge 2 ]; then LOAD_CPU=0 SERVER_CPU=1; else LOAD_CPU=0 SERVER_CPU=0; fi
# --no-pin (to compare with how the first BENCHMARKS.md was measured): wrk
# and the servers anywhere; the microbenchmark stays pinned.
ALL_CPUS=0-$(($(nproc) - 1))
if [ "$PIN" = 0 ]; then LOAD_PIN=$ALL_CPUS SERVER_PIN=$ALL_CPUS; else LOAD_PIN=$LOAD_CPU SERVER_PIN=$SERVER_CPU; fi
MB_EXCHANGES=100000

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "needs root (the daemon and bpftrace load eBPF programs)"

# ---- tools ----
need_pkgs=()
command -v nginx >/dev/null || need_pkgs+=(nginx)
command -v wrk >/dev/null || need_pkgs+=(wrk)
command -v node >/dev/null || need_pkgs+=(nodejs)
command -v cc >/dev/null || need_pkgs+=(gcc)
command -v python3 >/dev/null || need_pkgs+=(python3)
command -v curl >/dev/null || need_pkgs+=(curl)
command -v bpftrace >/dev/null || need_pkgs+=(bpftrace)
command -v bpftool >/dev/null || need_pkgs+=(bpftool)
command -v clang >/dev/null || need_pkgs+=(clang)
[ -f /usr/include/bpf/libbpf.h ] || need_pkgs+=(libbpf-dev)
if [ ${#need_pkgs[@]} -gt 0 ]; then
	log "installing ${need_pkgs[*]}"
	apt-get update -qq >/dev/null 2>&1
	for p in "${need_pkgs[@]}"; do
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$p" >/dev/null 2>&1 ||
			log "could not install $p"
	done
fi
for c in nginx wrk node cc python3 curl; do command -v $c >/dev/null || die "$c is missing"; done
HAVE_BPFTRACE=0
command -v bpftrace >/dev/null && HAVE_BPFTRACE=1
HAVE_BPFTOOL=0
command -v bpftool >/dev/null && HAVE_BPFTOOL=1

BIN=$ROOT/target/release/scope-http-statistics
if [ "$BUILD" = 1 ]; then
	log "cargo build --release --locked"
	(cd "$ROOT" && cargo build --release --locked -q) || die "cargo build --release failed"
fi
[ -x "$BIN" ] || die "$BIN is missing (cargo build --release)"

WORK=$(mktemp -d /tmp/shs-bench.XXXXXX)
RAW=$WORK/raw.tsv
META=$WORK/meta
: >"$RAW"
: >"$META"
STARTED=() # pids this script started (process groups are not used: kill by pid)

STATS_BEFORE=$(sysctl -n kernel.bpf_stats_enabled 2>/dev/null || echo 0)
cleanup() {
	local p
	for p in "${STARTED[@]}"; do kill -TERM "$p" 2>/dev/null; done
	sleep 0.3
	for p in "${STARTED[@]}"; do kill -KILL "$p" 2>/dev/null; done
	wait 2>/dev/null
	if [ "$STATS_BEFORE" = 1 ]; then sysctl -qw kernel.bpf_stats_enabled=1; fi
	if [ "$KEEP" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- helpers ----
meta() { printf '%s=%s\n' "$1" "$2" >>"$META"; }
# record SECTION ROUND CONFIG CASE METRIC VALUE
record() { printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >>"$RAW"; }

# CPU ticks (utime+stime, all threads) of a pid; of one thread with a tid.
cpu_ticks() {
	local f=/proc/$1/stat
	[ -n "${2:-}" ] && f=/proc/$1/task/$2/stat
	# Fields after "(comm)": state is $1, so utime is $12 and stime $13.
	sed 's/.*) //' "$f" 2>/dev/null | awk '{print $12 + $13}'
}
TCK=$(getconf CLK_TCK)
# pct_of_core TICKS_DELTA SECONDS
pct_of_core() { awk -v t="$1" -v s="$2" -v h="$TCK" 'BEGIN{printf "%.2f", (s > 0 ? 100 * t / h / s : 0)}'; }
# CPU milliseconds of one thread, ns-precise (the scheduler's sum_exec_runtime).
thread_cpu_ms() { awk '$1 == "se.sum_exec_runtime" {print $3}' "/proc/$1/task/$2/sched" 2>/dev/null; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.3f", b - a}'; }
status_kb() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status" 2>/dev/null; }

stop_pid() {
	local p=$1 i
	kill -TERM "$p" 2>/dev/null || return 0
	for i in $(seq 100); do
		kill -0 "$p" 2>/dev/null || break
		sleep 0.1
	done
	kill -KILL "$p" 2>/dev/null
	wait "$p" 2>/dev/null
	return 0
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_http() { # URL: up to 20 s
	local i
	for i in $(seq 200); do
		curl -fs -o /dev/null --max-time 1 "$1" && return 0
		sleep 0.1
	done
	return 1
}

# ---- helpers compiled here ----
CFLAGS="-O2 -Wall"
for prog in microbench unixget procs; do
	cc $CFLAGS -o "$WORK/$prog" "$HERE/$prog.c" || die "cannot compile scripts/bench/$prog.c"
done
cc $CFLAGS -o "$WORK/attached" "$HERE/attached.c" -lbpf || die "cannot compile scripts/bench/attached.c (apt-get install libbpf-dev)"

# ---- nothing but this run's programs on the tracepoints it measures ----
MEASURED_TPS=" sock_recv_length sock_send_length inet_sock_set_state tcp_destroy_sock sched_process_exit "
for s in read recvfrom readv recvmsg write sendto writev sendmsg; do MEASURED_TPS+="sys_enter_$s sys_exit_$s "; done
# Prints "tracepoint:prog_id:name" for every program on a measured tracepoint,
# through a BPF link (attached.c) or a perf event (bpftool perf list).
attached_progs() {
	"$WORK/attached" 2>/dev/null | while read -r tp id name; do
		case "$MEASURED_TPS" in *" $tp "*) echo "$tp:$id:$name" ;; esac
		[ "$tp" = "?" ] && echo "unknown-tracepoint:$id:$name" # a kernel before 6.6 does not name it
	done
	if [ $HAVE_BPFTOOL = 1 ]; then
		bpftool -j perf list 2>/dev/null | python3 -c '
import json, sys
for e in json.load(sys.stdin):
    tp = e.get("tracepoint")
    if tp and " %s " % tp in sys.argv[1]:
        print("%s:%s:pid%s" % (tp, e.get("prog_id"), e.get("pid")))
' "$MEASURED_TPS" 2>/dev/null
	fi
}
# Before every timed slot, with none of this run's tracers attached: refuse
# to measure when anything else is, and turn off the kernel's per-program
# statistics (they add a clock read to every program run).
preflight() {
	local found
	found=$(attached_progs | sort -u | tr '\n' ' ')
	if [ -n "$found" ]; then
		echo "bench.sh: refusing to measure: other eBPF programs are attached to the tracepoints it measures: ${found% } (stop them: another daemon, a test suite, bpftrace)" >&2
		exit 3
	fi
	if [ "$(sysctl -n kernel.bpf_stats_enabled 2>/dev/null)" = 1 ]; then
		sysctl -qw kernel.bpf_stats_enabled=0 || die "cannot turn kernel.bpf_stats_enabled off"
		log "kernel.bpf_stats_enabled was on: turned off (restored at the end)"
	fi
}
preflight

# Empty programs (part 4): a BPF object built here with clang and attached
# with libbpf (scripts/bench/attach.c); else bpftrace, whose programs return 1.
EMPTY_METHOD=none
if command -v clang >/dev/null &&
	clang -O2 -g -target bpf -I"/usr/include/$(cc -print-multiarch 2>/dev/null)" -DHOOKS_SOCKET \
		-c "$HERE/empty.bpf.c" -o "$WORK/empty-socket.o" 2>"$WORK/empty-build.log" &&
	clang -O2 -g -target bpf -I"/usr/include/$(cc -print-multiarch 2>/dev/null)" -DHOOKS_SYSCALLS \
		-c "$HERE/empty.bpf.c" -o "$WORK/empty-syscalls.o" 2>>"$WORK/empty-build.log" &&
	cc $CFLAGS -o "$WORK/attach" "$HERE/attach.c" -lbpf 2>>"$WORK/empty-build.log"; then
	EMPTY_METHOD=libbpf
elif [ $HAVE_BPFTRACE = 1 ]; then
	EMPTY_METHOD=bpftrace
	log "cannot build the empty BPF object ($(head -1 "$WORK/empty-build.log")): using bpftrace's (they return 1)"
fi

# ---- the machine and the commit ----
commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
git -C "$ROOT" diff --quiet HEAD 2>/dev/null || commit="$commit-dirty"
meta commit "$commit"
meta command "$COMMAND"
meta date "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
meta nproc "$(nproc)"
meta model "$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
meta kernel "$(uname -r)"
meta memory_mb "$(awk '/^MemTotal/ {printf "%d", $2/1024}' /proc/meminfo)"
meta load_start "$(cut -d' ' -f1-3 /proc/loadavg)"
meta rounds "$ROUNDS"
meta parts "$ONLY"
meta pinning "wrk on CPU $LOAD_PIN, nginx and node on CPU $SERVER_PIN, microbenchmark on CPU $SERVER_CPU"
meta exchanges "$MB_EXCHANGES"
meta duration "$DURATION"
meta quick "$QUICK"
meta wrk "wrk -t$WRK_THREADS -c$WRK_CONNS -d${DURATION}s --latency"
meta idle "$IDLE"
meta cpuwin "$CPUWIN"
meta gets "$GETS"
meta mb "$MB_ITERS x $MB_BATCHES"
meta micro_rounds "$MICRO_ROUNDS"
meta bpftrace "$([ $HAVE_BPFTRACE = 1 ] && bpftrace --version 2>/dev/null || echo missing)"
meta nginx "$(nginx -v 2>&1 | sed 's/.*: //')"
meta node "$(node --version)"
meta empty_method "$EMPTY_METHOD"
if [ -x "$ROOT/dist/scope-http-statistics" ]; then
	meta binary "dist/scope-http-statistics (make static)"
	meta binary_bytes "$(stat -c %s "$ROOT/dist/scope-http-statistics")"
	if [ "$ROOT/dist/scope-http-statistics" -ot "$BIN" ]; then meta binary_note "older than target/release"; fi
else
	meta binary "target/release/scope-http-statistics (no dist/: make static was not run)"
	meta binary_bytes "$(stat -c %s "$BIN")"
fi
meta release_bytes "$(stat -c %s "$BIN")"

# Other eBPF programs on the hooks we measure (another daemon, a test suite...)
# change what "nothing attached" means: count them at each measurement.
foreign_progs() { # prints "syscalls socket" program counts loaded on the machine
	[ $HAVE_BPFTOOL = 1 ] || { echo "? ?"; return; }
	bpftool prog list 2>/dev/null | awk '
		/ tracepoint / && / name (enter_|exit_socket_io|sys_enter|sys_exit)/ {s++}
		/ tracepoint / && / name (sock_recv|sock_send)/ {k++}
		END {print s + 0, k + 0}'
}
# record_env ROUND LABEL CONFIG: the counts, less the programs CONFIG itself loads.
record_env() {
	local s k
	read -r s k < <(foreign_progs)
	if [ "$s" != "?" ]; then
		case "$3:$EMPTY_METHOD" in
		socket:*) k=$((k - 2)) ;;
		syscalls:*) s=$((s - 9)) ;;
		bpftrace:*) s=$((s - 16)) ;;
		empty-socket:bpftrace) k=$((k - 2)) ;;
		empty-syscalls:bpftrace) s=$((s - 16)) ;;
		esac
	fi
	record env "$1" "$2" - foreign_syscall_progs "$s"
	record env "$1" "$2" - foreign_socket_progs "$k"
}

# ---- the tracers ----
TRACER_PID=
TRACER_KIND=
SOCK=$WORK/daemon/http-statistics.sock
POLLER_PID=

start_daemon() { # socket|syscalls
	mkdir -p "$WORK/daemon"
	"$BIN" --hooks "$1" --socket "$SOCK" --hostname bench --log-level warn >>"$WORK/daemon.log" 2>&1 &
	TRACER_PID=$!
	STARTED+=("$TRACER_PID")
	TRACER_KIND=daemon
	local i
	for i in $(seq 600); do
		[ -S "$SOCK" ] && "$WORK/unixget" time "$SOCK" /report 1 >/dev/null 2>&1 && return 0
		kill -0 "$TRACER_PID" 2>/dev/null || break
		sleep 0.1
	done
	tail -5 "$WORK/daemon.log" >&2
	die "the daemon (--hooks $1) did not start"
}

start_poller() {
	"$WORK/unixget" poll "$SOCK" "/report?api_version=1&probe_id=bench" 1000 >/dev/null 2>&1 &
	POLLER_PID=$!
	STARTED+=("$POLLER_PID")
}

# start_bpftrace NAME PROGRAMS (bpftrace args...): waits until PROGRAMS programs are loaded
start_bpftrace() {
	local name=$1 progs=$2
	shift 2
	BPFTRACE_MAP_KEYS_MAX=65536 bpftrace "$@" >"$WORK/bpftrace-$name.out" 2>"$WORK/bpftrace-$name.err" &
	TRACER_PID=$!
	STARTED+=("$TRACER_PID")
	TRACER_KIND=bpftrace
	local i
	for i in $(seq 600); do
		if [ "$(ls -l /proc/$TRACER_PID/fd 2>/dev/null | grep -c 'bpf-prog')" -ge "$progs" ]; then
			sleep 1 # the last program's attach
			return 0
		fi
		kill -0 "$TRACER_PID" 2>/dev/null || break
		sleep 0.1
	done
	grep -v RLIMIT_MEMLOCK "$WORK/bpftrace-$name.err" | tail -5 >&2
	stop_pid "$TRACER_PID"
	TRACER_PID=
	return 1
}

start_empty() { # socket|syscalls: empty programs on that path's hooks
	case "$EMPTY_METHOD" in
	libbpf)
		"$WORK/attach" "$WORK/empty-$1.o" >"$WORK/attach-$1.out" 2>&1 &
		TRACER_PID=$!
		STARTED+=("$TRACER_PID")
		TRACER_KIND=attach
		local i
		for i in $(seq 300); do
			grep -q '^attached' "$WORK/attach-$1.out" && return 0
			kill -0 "$TRACER_PID" 2>/dev/null || break
			sleep 0.1
		done
		cat "$WORK/attach-$1.out" >&2
		stop_pid "$TRACER_PID"
		TRACER_PID=
		return 1 ;;
	bpftrace)
		if [ "$1" = socket ]; then
			start_bpftrace empty-socket 2 -e "$EMPTY_SOCKET"
		else
			start_bpftrace empty-syscalls 16 -e "$EMPTY_SYSCALLS"
		fi ;;
	*) return 1 ;;
	esac
}

stop_tracer() {
	[ -n "$POLLER_PID" ] && stop_pid "$POLLER_PID"
	POLLER_PID=
	if [ -n "$TRACER_PID" ]; then
		if [ "$TRACER_KIND" = bpftrace ]; then kill -INT "$TRACER_PID" 2>/dev/null; fi
		stop_pid "$TRACER_PID"
	fi
	TRACER_PID=
	TRACER_KIND=
}

EMPTY_SOCKET='tracepoint:sock:sock_recv_length,tracepoint:sock:sock_send_length {}'
EMPTY_SYSCALLS=
for s in read recvfrom readv recvmsg write sendto writev sendmsg; do
	EMPTY_SYSCALLS+="${EMPTY_SYSCALLS:+,}tracepoint:syscalls:sys_enter_$s,tracepoint:syscalls:sys_exit_$s"
done
EMPTY_SYSCALLS+=' {}'

if part app; then
# ---- part 1 servers: nginx (static file) and node, started once ----
mkdir -p "$WORK/www" "$WORK/nginx-tmp"
printf 'hello from the benchmark\n' >"$WORK/www/small.txt"
NGINX_PORT=$(free_port)
sed -e "s|@DIR@|$WORK|g" -e "s|@PORT@|$NGINX_PORT|g" "$HERE/nginx-static.conf.in" >"$WORK/nginx-static.conf"
taskset -c "$SERVER_PIN" nginx -p "$WORK/" -c "$WORK/nginx-static.conf" -e "$WORK/nginx-static-error.log" 2>>"$WORK/nginx-static-error.log" &
NGINX_MASTER=$!
STARTED+=("$NGINX_MASTER")
wait_http "http://127.0.0.1:$NGINX_PORT/small.txt" || die "nginx did not start: $(tail -3 "$WORK/nginx-static-error.log")"
NGINX_WORKER=$(ps -o pid= --ppid "$NGINX_MASTER" | head -1 | tr -d ' ')

taskset -c "$SERVER_PIN" node "$HERE/server.js" 0 >"$WORK/node.out" 2>&1 &
NODE_PID=$!
STARTED+=("$NODE_PID")
for i in $(seq 100); do grep -q '^port ' "$WORK/node.out" && break; sleep 0.1; done
NODE_PORT=$(awk '/^port / {print $2}' "$WORK/node.out")
[ -n "$NODE_PORT" ] || die "node did not start: $(cat "$WORK/node.out")"
wait_http "http://127.0.0.1:$NODE_PORT/" || die "node does not answer"

PROXY_NGINX_PORT=$(free_port)
PROXY_NODE_PORT=$(free_port)
sed -e "s|@DIR@|$WORK|g" -e "s|@NGINX_PORT@|$NGINX_PORT|g" -e "s|@NODE_PORT@|$NODE_PORT|g" \
	-e "s|@PROXY_NGINX_PORT@|$PROXY_NGINX_PORT|g" -e "s|@PROXY_NODE_PORT@|$PROXY_NODE_PORT|g" \
	"$HERE/nginx-proxy.conf.in" >"$WORK/nginx-proxy.conf"

declare -A SERVER_PID=([nginx]=$NGINX_WORKER [node]=$NODE_PID)
declare -A URL=([nginx]="http://127.0.0.1:$NGINX_PORT/small.txt" [node]="http://127.0.0.1:$NODE_PORT/")
declare -A PROXY_URL=([nginx]="http://127.0.0.1:$PROXY_NGINX_PORT/small.txt" [node]="http://127.0.0.1:$PROXY_NODE_PORT/")

# Requests the current tracer has counted for a pid so far (cumulative).
counted() { # config pid
	case "$1" in
	socket | syscalls)
		curl -s --max-time 5 --unix-socket "$SOCK" http://plugin/metrics |
			awk -v p="pid=\"$2\"" '/^http_server_requests_total\{/ && index($0, p) {s += $NF} END {print s + 0}' ;;
	bpftrace)
		grep "^@requests\[$2, " "$WORK/bpftrace-count.out" | tail -1 | awk '{print $NF + 0}' | grep . || echo 0 ;;
	proxy)
		wc -l <"$WORK/proxy-access.log" 2>/dev/null || echo 0 ;;
	*) echo "" ;;
	esac
}

# One wrk run against a target; records throughput, latency, counting, tracer CPU.
run_wrk() { # round config target url
	local r=$1 c=$2 t=$3 url=$4 before after t0 c0 c1 secs out=$WORK/wrk-$1-$2-$3.txt rss
	before=$(counted "$c" "${SERVER_PID[$t]}")
	t0=$(now)
	[ -n "$TRACER_PID" ] && c0=$(cpu_ticks "$TRACER_PID")
	local s0 s1
	s0=$(cpu_ticks "${SERVER_PID[$t]}")
	taskset -c "$LOAD_PIN" wrk -t$WRK_THREADS -c$WRK_CONNS -d${DURATION}s --latency "$url" >"$out" 2>&1 &
	local wpid=$!
	sleep "$(awk -v d="$DURATION" 'BEGIN{print d / 2}')"
	[ -n "$TRACER_PID" ] && rss=$(status_kb "$TRACER_PID" VmRSS)
	wait "$wpid"
	if [ -n "$TRACER_PID" ]; then
		c1=$(cpu_ticks "$TRACER_PID")
		secs=$(elapsed "$t0")
		record app "$r" "$c" "$t" tracer_cpu_pct "$(pct_of_core $((c1 - c0)) "$secs")"
		record app "$r" "$c" "$t" tracer_rss_kb "$rss"
	fi
	s1=$(cpu_ticks "${SERVER_PID[$t]}")
	read -r rps p50 p99 reqs errs < <(python3 "$HERE/summarize.py" wrk "$out")
	# The server's CPU per request (the probe runs in its syscalls, so its
	# cost is charged there); for the proxy, the backend's alone.
	record app "$r" "$c" "$t" server_cpu_us_per_req "$(awk -v t=$((s1 - s0)) -v h="$TCK" -v n="$reqs" 'BEGIN{if (n > 0) printf "%.2f", t / h * 1e6 / n}')"
	record app "$r" "$c" "$t" server_cpu_pct "$(pct_of_core $((s1 - s0)) "$DURATION")"
	[ "$rps" = "?" ] && log "wrk output: $(tr '\n' ' ' <"$out")"
	record app "$r" "$c" "$t" rps "$rps"
	record app "$r" "$c" "$t" p50_us "$p50"
	record app "$r" "$c" "$t" p99_us "$p99"
	record app "$r" "$c" "$t" errors "$errs"
	if [ "$c" != baseline ] && [ "$c" != baseline-again ] && [ "$c" != empty-socket ]; then
		sleep 1.5 # a snapshot (daemon) or a print (bpftrace) after the load
		after=$(counted "$c" "${SERVER_PID[$t]}")
		record app "$r" "$c" "$t" counted "$(awk -v a="$after" -v b="$before" -v n="$reqs" 'BEGIN{printf "%.3f", (n > 0 ? (a - b) / n : 0)}')"
	fi
	log "  $c/$t: $rps req/s, p50 ${p50}us, p99 ${p99}us"
}

# ---- part 1 + 2: application overhead and the daemon's cost ----
# baseline-again: a second baseline slot per round (A/A): its ratio to the
# first is the noise band every other ratio must be read against.
# empty-socket: programs that only return 0 on the socket path's two hooks,
# the floor any probe on them pays.
APP_CONFIGS=(baseline socket syscalls bpftrace proxy baseline-again empty-socket)
log "part 1: wrk on nginx and node; configs ${APP_CONFIGS[*]}; $ROUNDS round(s) of ${DURATION}s runs"
for r in $(seq "$ROUNDS"); do
	n=${#APP_CONFIGS[@]}
	for k in $(seq 0 $((n - 1))); do
		c=${APP_CONFIGS[$(((k + r - 1) % n))]} # rotate the order each round
		log "round $r: $c"
		preflight
		case "$c" in
		socket | syscalls)
			start_daemon "$c"
			start_poller ;;
		empty-socket)
			if ! start_empty socket; then
				log "cannot attach empty programs here: config skipped"
				record app "$r" empty-socket nginx skipped 1
				record app "$r" empty-socket node skipped 1
				continue
			fi ;;
		bpftrace)
			if [ $HAVE_BPFTRACE = 0 ] || ! start_bpftrace count 17 "$HERE/http-count.bt"; then
				log "bpftrace cannot run here: config skipped"
				record app "$r" bpftrace nginx skipped 1
				record app "$r" bpftrace node skipped 1
				continue
			fi ;;
		proxy)
			: >"$WORK/proxy-access.log"
			nginx -p "$WORK/" -c "$WORK/nginx-proxy.conf" -e "$WORK/nginx-proxy-error.log" 2>>"$WORK/nginx-proxy-error.log" &
			PROXY_MASTER=$!
			STARTED+=("$PROXY_MASTER")
			wait_http "${PROXY_URL[nginx]}" && wait_http "${PROXY_URL[node]}" || die "the proxy did not start: $(tail -3 "$WORK/nginx-proxy-error.log")"
			TRACER_PID=$(ps -o pid= --ppid "$PROXY_MASTER" | head -1 | tr -d ' ')
			TRACER_KIND=proxy ;;
		esac
		if [ "$c" != baseline ] && [ "$c" != baseline-again ] && [ "$c" != proxy ]; then
			# Idle: the poller only (and whatever else runs on the machine).
			t0=$(now)
			c0=$(cpu_ticks "$TRACER_PID")
			sleep "$IDLE"
			record cost "$r" "$c" - cpu_idle_pct "$(pct_of_core $(($(cpu_ticks "$TRACER_PID") - c0)) "$(elapsed "$t0")")"
		fi
		record_env "$r" "app-$c" "$c"
		for t in nginx node; do
			if [ "$c" = proxy ]; then url=${PROXY_URL[$t]}; else url=${URL[$t]}; fi
			run_wrk "$r" "$c" "$t" "$url"
		done
		if [ "$c" = socket ] || [ "$c" = syscalls ] || [ "$c" = bpftrace ]; then
			record cost "$r" "$c" - rss_kb "$(status_kb "$TRACER_PID" VmRSS)"
			record cost "$r" "$c" - hwm_kb "$(status_kb "$TRACER_PID" VmHWM)"
		fi
		if [ "$c" = socket ] || [ "$c" = syscalls ]; then
			record cost "$r" "$c" - tracked "$(curl -s --unix-socket "$SOCK" http://plugin/metrics | awk '/^scope_http_statistics_tracked_processes / {print $2}')"
		fi
		if [ "$c" = proxy ]; then
			TRACER_PID=
			stop_pid "$PROXY_MASTER"
		else
			stop_tracer
		fi
	done
done

fi # part app

if part scale; then
# ---- part 3: /report and /metrics with N processes ----
log "part 3: /report and /metrics with $NPROCS processes; $ROUNDS round(s)"
preflight
start_daemon socket
DAEMON=$TRACER_PID
for r in $(seq "$ROUNDS"); do
	for n in $NPROCS; do
		mkfifo "$WORK/procs-in"
		"$WORK/procs" "$n" <"$WORK/procs-in" >"$WORK/procs.out" 2>&1 &
		ppid=$!
		STARTED+=("$ppid")
		exec 7>"$WORK/procs-in"
		for i in $(seq 1200); do grep -q '^ready' "$WORK/procs.out" && break; kill -0 $ppid 2>/dev/null || break; sleep 0.1; done
		grep -q '^ready' "$WORK/procs.out" || die "procs $n did not start: $(cat "$WORK/procs.out")"
		sleep 2.5 # two snapshots
		tracked=$(curl -s --unix-socket "$SOCK" http://plugin/metrics | awk '/^scope_http_statistics_tracked_processes / {print $2}')
		record scale "$r" "$n" - tracked "$tracked"
		read -r med mn mx bytes < <("$WORK/unixget" time "$SOCK" "/report?api_version=1&probe_id=bench" "$GETS")
		record scale "$r" "$n" - report_us "$med"
		record scale "$r" "$n" - report_max_us "$mx"
		record scale "$r" "$n" - report_bytes "$bytes"
		read -r med mn mx bytes < <("$WORK/unixget" time "$SOCK" /metrics "$GETS")
		record scale "$r" "$n" - metrics_us "$med"
		record scale "$r" "$n" - metrics_max_us "$mx"
		record scale "$r" "$n" - metrics_bytes "$bytes"
		# The main thread only snapshots and renders, once a second: its CPU
		# per second is the time one snapshot + render takes.
		t0=$(now)
		m0=$(thread_cpu_ms "$DAEMON" "$DAEMON")
		a0=$(cpu_ticks "$DAEMON")
		sleep "$CPUWIN"
		m1=$(thread_cpu_ms "$DAEMON" "$DAEMON")
		a1=$(cpu_ticks "$DAEMON")
		secs=$(elapsed "$t0")
		record scale "$r" "$n" - snapshot_ms "$(awk -v a="$m0" -v b="$m1" -v s="$secs" 'BEGIN{if (a != "" && b != "") printf "%.3f", (b - a) / s}')"
		record scale "$r" "$n" - daemon_cpu_pct "$(pct_of_core $((a1 - a0)) "$secs")"
		record scale "$r" "$n" - rss_kb "$(status_kb "$DAEMON" VmRSS)"
		log "  round $r, $n processes: tracked $tracked, /report ${med}us"
		exec 7>&-
		wait "$ppid" 2>/dev/null
		rm -f "$WORK/procs-in"
	done
done
record scale - - - hwm_kb "$(status_kb "$DAEMON" VmHWM)"
stop_tracer
fi # part scale

if part micro; then
# ---- part 4: per-call cost ----
MICRO_CONFIGS=(none socket syscalls empty-socket empty-syscalls)
log "part 4: microbenchmark ($MB_ITERS calls x $MB_BATCHES batches); configs ${MICRO_CONFIGS[*]}; $MICRO_ROUNDS round(s)"
for r in $(seq "$MICRO_ROUNDS"); do
	n=${#MICRO_CONFIGS[@]}
	for k in $(seq 0 $((n - 1))); do
		c=${MICRO_CONFIGS[$(((k + r - 1) % n))]}
		preflight
		ok=1
		case "$c" in
		socket | syscalls) start_daemon "$c" ;;
		empty-socket) start_empty socket || ok=0 ;;
		empty-syscalls) start_empty syscalls || ok=0 ;;
		esac
		if [ $ok = 0 ]; then
			log "round $r: $c: cannot attach empty programs here: skipped"
			record micro "$r" "$c" - skipped 1
			continue
		fi
		record_env "$r" "micro-$c" "$c"
		while read -r name cpu_med cpu_min wall_med wall_min; do
			record micro "$r" "$c" "$name" ns "$cpu_med"
			record micro "$r" "$c" "$name" min_ns "$cpu_min"
			record micro "$r" "$c" "$name" wall_ns "$wall_med"
			record micro "$r" "$c" "$name" wall_min_ns "$wall_min"
		done < <("$WORK/microbench" "$MB_ITERS" "$MB_BATCHES" "$SERVER_CPU" "$MB_EXCHANGES")
		log "round $r: $c: $(awk -v r="$r" -v c="$c" -F'\t' '$1 == "micro" && $2 == r && $3 == c && $5 == "ns" {printf "%s %s ", $4, $6}' "$RAW")"
		stop_tracer
	done
done

fi # part micro

meta load_end "$(cut -d' ' -f1-3 /proc/loadavg)"
meta runtime_s "$SECONDS"
python3 "$HERE/summarize.py" report "$RAW" "$META" >"$WORK/results.md" || die "summarize.py failed"
cat "$WORK/results.md"
cp "$WORK/results.md" "$OUT"
log "written to $OUT (${SECONDS}s)"
