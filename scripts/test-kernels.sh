#!/usr/bin/env bash
# Boots Debian's own kernels under QEMU (software emulation: this machine's
# nested KVM cannot run them) with virtme-ng, the host's root filesystem shared
# read-only into the guest, and runs inside each the integration suites whose
# behaviour depends on the kernel, on every hook path that kernel offers, with
# the same assertions as on the host. Prints a summary table; exits 1 if any
# suite failed or a guest did not report.
#
# usage: scripts/test-kernels.sh [KERNEL...]     (as root; default: 5.10 6.1 6.12)
#
#   SHS_KERNEL_PATH_SUITES  suites run once per hook path (default below)
#   SHS_KERNEL_ONCE_SUITES  suites run once per kernel, hook path auto (default below)
#   SHS_KERNEL_CACHE        virtme-ng's venv and the unpacked kernels
#                           (/opt/scope-http-statistics; the guest sees /opt, not /var/cache)
#   SHS_KERNEL_TIMEOUT      seconds one guest may run (default 2400)
#
# Installs what it needs (apt: qemu-system-x86 busybox-static kmod udev file;
# PyPI: virtme-ng in a venv) and downloads the kernel packages with apt
# (`apt-get download`, unpacked with `dpkg-deb -x`, never installed). 5.10
# comes from bullseye through a private apt state directory: the system's apt
# sources and lists are never touched.
set -euo pipefail
cd "$(dirname "$0")/.."

PATH_SUITES=${SHS_KERNEL_PATH_SUITES:-counting report latency limits}
ONCE_SUITES=${SHS_KERNEL_ONCE_SUITES:-startup kernel_features}
CACHE=${SHS_KERNEL_CACHE:-/opt/scope-http-statistics}
TIMEOUT=${SHS_KERNEL_TIMEOUT:-2400}
VIRTME_NG=virtme-ng==1.42
THREADS=${SHS_KERNEL_TEST_THREADS:-2}
RESULTS=$PWD/target/test-kernels

# Run on the host only: these assert wall-clock durations (the servers sleep
# 1-100 ms and the tests check which latency bucket each response lands in),
# or that a burst of curl requests fits in one snapshot interval. Under
# software emulation sleeps and process start-up take 1.5-3x longer, so they
# fail there for reasons that have nothing to do with the kernel.
EMULATION_SKIPS=(
	latency:twenty_ms_responses_are_counted_exactly_and_reported_within_ten_percent
	latency:hundred_ms_responses_land_above_the_point_one_bucket
	latency:a_ninety_ten_mix_reports_p50_of_the_fast_and_p99_of_the_slow
	latency:keep_alive_requests_are_paired_with_their_own_responses
	latency:pipelined_requests_are_paired_in_order_from_the_read_that_delivered_them
	latency:interim_1xx_responses_do_not_end_a_request
	limits:a_full_process_table_skips_new_processes_and_counts_each_skipped_buffer
)

log() { echo "test-kernels: $*" >&2; }
die() { log "$*"; exit 1; }

# --- the kernels -------------------------------------------------------------

# KERNEL -> "suite package": a package of that suite whose only dependency
# that matters is the versioned image (meta), or the versioned image itself.
kernel_source() {
	case $1 in
	5.10) echo "bullseye linux-image-5.10.0-32-amd64" ;;
	6.1) echo "bookworm linux-image-amd64" ;;
	6.12) echo "bookworm linux-image-6.12-amd64" ;;
	*) die "unknown kernel '$1' (known: 5.10 6.1 6.12; the host's kernel runs the whole suite)" ;;
	esac
}

# KERNEL -> the hook paths it offers: the socket layer needs the
# sock_recv_length/sock_send_length tracepoints (6.3+). The guest checks this
# against the kernel it booted.
kernel_paths() {
	case $1 in
	5.10 | 6.1) echo "syscalls" ;;
	*) echo "socket syscalls" ;;
	esac
}

# --- host side: tools ----------------------------------------------------------

install_tools() {
	local missing=()
	command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
	dpkg -s busybox-static >/dev/null 2>&1 || missing+=(busybox-static) # virtme-ng's initramfs
	command -v depmod >/dev/null || missing+=(kmod)                      # modules.dep of the .debs
	[ -x /lib/systemd/systemd-udevd ] || missing+=(udev)                 # the guest's virtio-ports
	command -v file >/dev/null || missing+=(file)                        # the image's version
	if [ ${#missing[@]} -gt 0 ]; then
		log "installing ${missing[*]}"
		apt-get update -qq
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
	fi
	if [ ! -x "$CACHE/venv/bin/vng" ]; then
		log "installing $VIRTME_NG in $CACHE/venv"
		rm -rf "$CACHE/venv"
		python3 -m venv "$CACHE/venv"
		"$CACHE/venv/bin/pip" install -q "$VIRTME_NG"
	fi
}

# The apt options of a private apt state for SUITE (bullseye), in
# $CACHE/apt-SUITE: the system's sources and lists are never touched, so no
# other release's line is ever seen by anyone else's apt-get.
private_apt_opts() {
	local dir=$CACHE/apt-$1
	echo "-o Dir::Etc::sourcelist=$dir/sources.list -o Dir::Etc::sourceparts=$dir/parts" \
		"-o Dir::State::lists=$dir/lists -o Dir::Cache=$dir/cache -o APT::Sandbox::User=root"
}

private_apt_update() {
	local dir=$CACHE/apt-$1
	rm -rf "$dir"
	mkdir -p "$dir/lists/partial" "$dir/cache/archives/partial" "$dir/parts"
	echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $1 main" \
		>"$dir/sources.list"
	# shellcheck disable=SC2046
	apt-get $(private_apt_opts "$1") update -qq >&2
}

# Prints the path of KERNEL's vmlinuz, downloading and unpacking its package
# into $CACHE/kernels/<package> the first time.
fetch_kernel() {
	local suite pkg image opts=""
	read -r suite pkg <<<"$(kernel_source "$1")"
	if [ "$suite" = bookworm ]; then
		apt-cache show "$pkg" >/dev/null 2>&1 || apt-get update -qq >&2
		# A meta package (linux-image-amd64) depends on the versioned image.
		image=$(apt-cache depends "$pkg" | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
		[ -n "$image" ] || die "$1: $pkg not found, or it depends on no linux-image-<version>"
	else
		image=$pkg
	fi
	local dir=$CACHE/kernels/$image
	if [ ! -f "$dir/.unpacked" ]; then
		log "$1: downloading $image ($suite)"
		if [ "$suite" != bookworm ]; then
			private_apt_update "$suite"
			opts=$(private_apt_opts "$suite")
		fi
		local tmp
		tmp=$(mktemp -d)
		# shellcheck disable=SC2086
		(cd "$tmp" && apt-get $opts -o APT::Sandbox::User=root download "$image" >&2)
		[ "$suite" = bookworm ] || rm -rf "$CACHE/apt-$suite"
		rm -rf "$dir"
		mkdir -p "$dir"
		dpkg-deb -x "$tmp"/*.deb "$dir"
		rm -rf "$tmp"
		touch "$dir/.unpacked"
	fi
	local vmlinuz
	vmlinuz=$(ls "$dir"/boot/vmlinuz-* 2>/dev/null | head -n 1)
	[ -n "$vmlinuz" ] || die "$1: no boot/vmlinuz-* in $image"
	echo "$vmlinuz"
}

# Builds the test binaries once (the same debug build `make test` uses) and
# writes "suite<TAB>executable" lines to $RESULTS/binaries. The daemon's path
# compiled into them (CARGO_BIN_EXE_*) is under target/, which the guest sees.
build_tests() {
	local args=() suite
	for suite in $PATH_SUITES $ONCE_SUITES; do args+=(--test "$suite"); done
	mkdir -p "$RESULTS"
	cargo test --locked --no-run --message-format=json "${args[@]}" |
		python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and "test" in m["target"]["kind"]:
        print(m["target"]["name"] + "\t" + m["executable"])
' >"$RESULTS/binaries"
	for suite in $PATH_SUITES $ONCE_SUITES; do
		grep -q "^$suite	" "$RESULTS/binaries" || die "no test binary for suite $suite"
	done
}

# --- guest side ----------------------------------------------------------------

# Runs inside the booted kernel: every suite on every path, one line per
# suite in $out/results.tsv (kernel, path, suite, passed|failed, seconds,
# libtest's result line) and its output in $out/<path>-<suite>.log.
guest() {
	local kernel=$1 out=$2 paths=$3
	cd /tmp
	mountpoint -q /sys/kernel/tracing || mount -t tracefs nodev /sys/kernel/tracing
	# virtme-ng mounts debugfs, whose tracing/ is a second view of tracefs
	# that the host does not have: kernel_features.rs hides tracepoints under
	# /sys/kernel/tracing only, and the daemon would still find them there.
	if mountpoint -q /sys/kernel/debug; then umount /sys/kernel/debug; fi
	# The daemon reads the ELF symbols of every binary that carries OpenSSL
	# (node links it statically: ~100 MB) to attach its TLS uprobes; the
	# first read over 9p under emulation outlasts the tests' 30 s start-up
	# limit, so read them once into the guest's page cache first.
	cat "$(command -v node)" >/dev/null 2>&1 || true
	ip link set lo up
	local offered=syscalls
	[ -d /sys/kernel/tracing/events/sock/sock_recv_length ] && offered="socket syscalls"
	echo "guest: $(uname -r), hook paths offered: $offered" | tee "$out/guest.log"
	if [ "$offered" != "$paths" ]; then
		printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$kernel" "$paths" "hook paths" failed 0 \
			"the kernel offers '$offered'" >>"$out/results.tsv"
	fi
	local path suite
	for path in $paths; do
		for suite in $PATH_SUITES; do run_suite "$kernel" "$out" "$path" "$suite"; done
	done
	for suite in $ONCE_SUITES; do run_suite "$kernel" "$out" auto "$suite"; done
}

run_suite() {
	local kernel=$1 out=$2 path=$3 suite=$4 bin start status=passed summary skip args=()
	bin=$(awk -F'\t' -v s="$suite" '$1 == s {print $2}' "$out/../binaries")
	for skip in "${EMULATION_SKIPS[@]}"; do
		[ "${skip%%:*}" != "$suite" ] || args+=(--skip "${skip#*:}")
	done
	[ ${#args[@]} = 0 ] || args+=(--exact)
	local logf=$out/$path-$suite.log
	start=$(date +%s)
	echo "guest: $kernel $path $suite ..."
	# SHS_TLS=off: these suites test plaintext counting on this kernel; with
	# TLS on, the debug daemon's start-up scan of /usr/bin/node's 100 MB of
	# symbols takes ~30 s under software emulation, past the harness's start
	# timeout. HTTPS is tested on the host (tests/tls.rs).
	export SHS_TLS=off
	if [ "$path" = auto ]; then
		env -u SHS_HOOKS timeout 1200 "$bin" --test-threads="$THREADS" "${args[@]}" >"$logf" 2>&1 || status=failed
	else
		SHS_HOOKS=$path timeout 1200 "$bin" --test-threads="$THREADS" "${args[@]}" >"$logf" 2>&1 || status=failed
	fi
	summary=$(grep -E '^test result:' "$logf" | tail -n 1 | sed 's/^test result: //; s/; finished in.*//')
	[ -n "$summary" ] || summary="no result line (exit or timeout)"
	printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$kernel" "$path" "$suite" "$status" \
		"$(($(date +%s) - start))" "$summary" | tee -a "$out/results.tsv"
}

# --- main ------------------------------------------------------------------------

if [ "${1:-}" = --guest ]; then
	shift
	guest "$@"
	exit 0
fi

[ "$(id -u)" = 0 ] || die "must run as root (the guests load the eBPF probe as the same user)"
kernels=("$@")
[ ${#kernels[@]} -gt 0 ] || kernels=(5.10 6.1 6.12)
for k in "${kernels[@]}"; do kernel_source "$k" >/dev/null; done

install_tools
declare -A vmlinuz
for k in "${kernels[@]}"; do vmlinuz[$k]=$(fetch_kernel "$k"); done
build_tests

export PATH=$CACHE/venv/bin:$PATH
failed=0
summary=()
for k in "${kernels[@]}"; do
	out=$RESULTS/$k
	rm -rf "$out"
	mkdir -p "$out"
	paths=$(kernel_paths "$k")
	log "$k: booting $(basename "${vmlinuz[$k]}") (paths: $paths)"
	start=$(date +%s)
	rc=0
	# QEMU re-opens /proc/self/fd/1 and 2 as files, truncating them: when our
	# output goes to a log file, everything before the boot would be lost.
	# Through cat, they are pipes.
	timeout "$TIMEOUT" vng --disable-kvm --run "${vmlinuz[$k]}" --cpus 2 --memory 2G \
		--rwdir "$RESULTS" \
		--exec "PATH=$PATH SHS_KERNEL_PATH_SUITES='$PATH_SUITES' SHS_KERNEL_ONCE_SUITES='$ONCE_SUITES' \
			SHS_KERNEL_TEST_THREADS=$THREADS \
			scripts/test-kernels.sh --guest $k $out '$paths'" </dev/null \
		> >(cat) 2> >(cat >&2) || rc=$?
	secs=$(($(date +%s) - start))
	summary+=("$(printf '%-6s %-10s %-16s %-7s %5ss  %s' "$k" "(all)" "boot+run" \
		"$([ $rc = 0 ] && echo ok || echo "rc=$rc")" "$secs" "")")
	expected=$(( $(wc -w <<<"$paths") * $(wc -w <<<"$PATH_SUITES") + $(wc -w <<<"$ONCE_SUITES") ))
	got=$(awk -F'\t' '$3 != "hook paths"' "$out/results.tsv" 2>/dev/null | wc -l)
	if [ "$rc" != 0 ] || [ "$got" != "$expected" ]; then
		log "$k: the guest exited with $rc after ${secs}s and reported $got of $expected suites"
		failed=1
	fi
	while IFS=$'\t' read -r kern path suite status s result; do
		summary+=("$(printf '%-6s %-10s %-16s %-7s %5ss  %s' "$kern" "$path" "$suite" "$status" "$s" "$result")")
		if [ "$status" != passed ]; then
			failed=1
			log "$kern $path $suite failed; end of $out/$path-$suite.log:"
			tail -n 40 "$out/$path-$suite.log" >&2 2>/dev/null || true
		fi
	done < <(cat "$out/results.tsv" 2>/dev/null)
done

echo
printf '%-6s %-10s %-16s %-7s %6s  %s\n' kernel path suite result time "libtest"
printf '%s\n' "${summary[@]}"
exit $failed
