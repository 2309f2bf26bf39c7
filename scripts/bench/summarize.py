#!/usr/bin/env python3
"""Helpers of scripts/bench.sh.

    summarize.py wrk FILE          parse wrk --latency output:
                                   "req_per_s p50_us p99_us requests errors"
    summarize.py report RAW META   the markdown results from the raw records
                                   (section round config case metric value, TSV)
                                   and the run's facts (key=value lines)
"""
import re
import statistics
import sys
from collections import defaultdict

UNITS = {"us": 1.0, "ms": 1e3, "s": 1e6}


def parse_wrk(path):
    text = open(path, encoding="utf-8", errors="replace").read()

    def latency(pct):
        m = re.search(r"^\s*%s%%\s+([\d.]+)(us|ms|s)\s*$" % pct, text, re.M)
        return "%.1f" % (float(m.group(1)) * UNITS[m.group(2)]) if m else "?"

    rps = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.M)
    reqs = re.search(r"^\s*(\d+) requests in", text, re.M)
    errors = 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        errors += sum(int(x) for x in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if m:
        errors += int(m.group(1))
    print(rps.group(1) if rps else "?", latency(50), latency(99),
          reqs.group(1) if reqs else "0", errors)


# ---- report ----

def num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


class Raw:
    def __init__(self, path):
        # (section, config, case, metric) -> {round: value}
        self.v = defaultdict(dict)
        for line in open(path, encoding="utf-8"):
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 6:
                continue
            sec, rnd, cfg, case, metric, value = parts
            self.v[(sec, cfg, case, metric)][rnd] = value

    def rounds(self, sec, cfg, case, metric):
        """{round: float} of the numeric values."""
        d = self.v.get((sec, cfg, case, metric), {})
        return {r: num(x) for r, x in d.items() if num(x) is not None}

    def values(self, sec, cfg, case, metric):
        return list(self.rounds(sec, cfg, case, metric).values())

    def has(self, sec, cfg, case, metric):
        return (sec, cfg, case, metric) in self.v


def med(xs):
    return statistics.median(xs) if xs else None


def fmt(x, digits=0):
    if x is None:
        return "n/a"
    if digits == 0:
        return "{:,.0f}".format(x)
    return "{:,.{d}f}".format(x, d=digits)


def spread(xs, digits=0, unit=""):
    """median (min–max), or the value alone for one round."""
    if not xs:
        return "n/a"
    m = fmt(med(xs), digits) + unit
    if len(xs) == 1:
        return m
    return "%s (%s–%s)" % (m, fmt(min(xs), digits), fmt(max(xs), digits))


def ratios(raw, sec, cfg, case, metric, base_cfg):
    """Per-round value / baseline of the same round."""
    a = raw.rounds(sec, cfg, case, metric)
    b = raw.rounds(sec, base_cfg, case, metric)
    return [a[r] / b[r] for r in a if r in b and b[r]]


def diffs(raw, sec, cfg, case, metric, base_cfg):
    a = raw.rounds(sec, cfg, case, metric)
    b = raw.rounds(sec, base_cfg, case, metric)
    return [a[r] - b[r] for r in a if r in b]


def verdict(ok):
    if ok is None:
        return "n/a"
    return "**met**" if ok else "**missed**"


APP_LABEL = {
    "baseline": "a. baseline (nothing tracing)",
    "socket": "b. daemon, --hooks socket (+ /report poller 1/s)",
    "syscalls": "c. daemon, --hooks syscalls (+ poller)",
    "bpftrace": "d. bpftrace script, 16 syscall tracepoints",
    "proxy": "e. nginx reverse proxy logging $status $request_time",
    "baseline-again": "a'. baseline again (A/A: the noise band)",
    "empty-socket": "a''. empty programs on the socket path's hooks (its floor)",
}

MICRO_CASES = [
    ("exchange_http", "HTTP exchange: 70 B GET written, read; 90 B 200 written, read (4 calls)"),
    ("exchange_other", "the same 4 calls, bytes that are not HTTP"),
    ("getppid", "getppid()"),
    ("pread_1B_file", "pread 1 B of a small file"),
    ("read_1B_zero", "read 1 B of /dev/zero"),
    ("read_64B_zero", "read 64 B of /dev/zero"),
    ("tcp_1B_pair", "TCP loopback send+recv 1 B (pair)"),
    ("tcp_64B_pair", "TCP loopback send+recv 64 B non-HTTP (pair)"),
]


def report(raw_path, meta_path):
    raw = Raw(raw_path)
    meta = {}
    for line in open(meta_path, encoding="utf-8"):
        if "=" in line:
            k, v = line.rstrip("\n").split("=", 1)
            meta[k] = v
    quick = meta.get("quick") == "1"
    out = []
    w = out.append
    targets = []  # (what, target, measured, verdict)

    w("# scope-http-statistics benchmark results%s" % (" (--quick smoke run: timings not meaningful)" if quick else ""))
    w("")
    w("- commit: `%s`" % meta.get("commit"))
    w("- command: `%s`" % meta.get("command"))
    w("- date: %s, run time %s s" % (meta.get("date"), meta.get("runtime_s")))
    w("- machine: %s CPUs, %s, kernel %s, %s MB RAM" % (meta.get("nproc"), meta.get("model"), meta.get("kernel"), meta.get("memory_mb")))
    w("- load average (1/5/15 min) at start: %s; at end: %s" % (meta.get("load_start"), meta.get("load_end")))
    w("- tools: nginx %s, node %s, %s" % (meta.get("nginx"), meta.get("node"), meta.get("bpftrace")))
    w("- rounds: %s, configurations interleaved round-robin (order rotated each round); every cell is the median over rounds, (min–max) when there are several"
      % meta.get("rounds"))
    w("- parts run: %s; pinning: %s" % (meta.get("parts"), meta.get("pinning")))
    foreign_s, foreign_k = [], []
    for (sec, cfg, case, metric), d in raw.v.items():
        if sec != "env":
            continue
        vals = [num(x) for x in d.values() if num(x) is not None]
        (foreign_s if metric == "foreign_syscall_progs" else foreign_k).extend(vals)
    if foreign_s or foreign_k:
        w("- other eBPF programs loaded on the machine during measurements (not this run's): "
          "%s on syscall tracepoints, %s on the sock_*_length tracepoints (min–max over measurements)"
          % ("%d–%d" % (min(foreign_s), max(foreign_s)) if foreign_s else "?",
             "%d–%d" % (min(foreign_k), max(foreign_k)) if foreign_k else "?"))
    w("")

    # ---- 1 ----
    w("## 1. Application overhead")
    w("")
    w("`%s` on 127.0.0.1, keep-alive; nginx (1 worker) serving a 25-byte static file, node `http` answering a 25-byte body. "
      "Ratios are to the baseline of the same round. *counted* = requests the tracer counted for the server's pid / requests wrk completed."
      % meta.get("wrk"))
    w("")
    w("*server CPU µs/req*: the server process's CPU time (utime+stime) over the run / requests wrk completed; the probe runs "
      "in the server's syscalls, so its cost per request shows here whether or not the server had idle CPU to absorb it.")
    w("")
    w("| server | configuration | req/s | p50 ms | p99 ms | throughput ratio | p50 ratio | p99 ratio | server CPU µs/req | its ratio | server CPU % of a core | counted | tracer CPU % of a core | throughput ≥ 0.97 | p99 ≤ 1.05 |")
    w("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for t in ("nginx", "node"):
        for c in ("baseline", "baseline-again", "empty-socket", "socket", "syscalls", "bpftrace", "proxy"):
            if raw.has("app", c, t, "skipped"):
                w("| %s | %s | could not run here (see notes) | | | | | | | | n/a | n/a |" % (t, APP_LABEL[c]))
                continue
            rps = raw.values("app", c, t, "rps")
            if not rps:
                continue
            p50 = [x / 1000 for x in raw.values("app", c, t, "p50_us")]
            p99 = [x / 1000 for x in raw.values("app", c, t, "p99_us")]
            cpu = raw.values("app", c, t, "tracer_cpu_pct")
            cnt = raw.values("app", c, t, "counted")
            scpu = raw.values("app", c, t, "server_cpu_us_per_req")
            spct = raw.values("app", c, t, "server_cpu_pct")
            if c == "baseline":
                w("| %s | %s | %s | %s | %s | 1 | 1 | 1 | %s | 1 | %s | | | | |" % (t, APP_LABEL[c], spread(rps), spread(p50, 3), spread(p99, 3), spread(scpu, 2), spread(spct, 0)))
                continue
            tr = ratios(raw, "app", c, t, "rps", "baseline")
            r50 = ratios(raw, "app", c, t, "p50_us", "baseline")
            r99 = ratios(raw, "app", c, t, "p99_us", "baseline")
            rc = ratios(raw, "app", c, t, "server_cpu_us_per_req", "baseline")
            ok_t = med(tr) >= 0.97 if tr else None
            ok_p = med(r99) <= 1.05 if r99 else None
            if c in ("baseline-again", "empty-socket"):
                ok_t = ok_p = None
            w("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
                t, APP_LABEL[c], spread(rps), spread(p50, 3), spread(p99, 3), spread(tr, 3), spread(r50, 3), spread(r99, 3),
                spread(scpu, 2), spread(rc, 3), spread(spct, 0), spread(cnt, 3), spread(cpu, 1),
                verdict(ok_t) if ok_t is not None else "", verdict(ok_p) if ok_p is not None else ""))
            if c in ("socket", "syscalls"):
                targets.append(("%s path, %s: throughput ≥ 0.97 of baseline" % (c, t), fmt(med(tr), 3) if tr else "n/a", verdict(ok_t)))
                targets.append(("%s path, %s: p99 ≤ 1.05 of baseline" % (c, t), fmt(med(r99), 3) if r99 else "n/a", verdict(ok_p)))
    errs = [x for k, d in raw.v.items() if k[0] == "app" and k[3] == "errors" for x in d.values() if num(x)]
    if errs:
        w("")
        w("wrk reported socket errors or non-2xx answers in %d run(s)." % len(errs))
    w("")
    w("The targets (met/missed) apply to the daemon (b, c); d and e are the alternatives, for comparison.")
    w("")

    # ---- 2 ----
    w("## 2. The daemon's own cost")
    w("")
    w("CPU from /proc/PID/stat utime+stime deltas (all threads, %s-ms ticks), in %% of one core: *idle* over %s s with only the 1/s `/report` poller "
      "(and the rest of the machine); *under load* over each wrk run. RSS sampled in the middle of the wrk runs (VmRSS) and at the end (VmHWM)."
      % (1000 // 100, meta.get("idle")))
    w("")
    w("| tracer | CPU idle % | CPU under load, nginx % | CPU under load, node % | VmRSS under load MB | VmHWM MB | tracked processes | CPU ≤ 2 % | RSS ≤ 16 MB |")
    w("|---|---|---|---|---|---|---|---|---|")
    for c in ("socket", "syscalls", "bpftrace", "proxy"):
        idle = raw.values("cost", c, "-", "cpu_idle_pct")
        ln = raw.values("app", c, "nginx", "tracer_cpu_pct")
        lo = raw.values("app", c, "node", "tracer_cpu_pct")
        rss = [x / 1024 for x in raw.values("app", c, "nginx", "tracer_rss_kb") + raw.values("app", c, "node", "tracer_rss_kb")]
        hwm = [x / 1024 for x in raw.values("cost", c, "-", "hwm_kb")]
        tracked = raw.values("cost", c, "-", "tracked")
        if not (ln or lo):
            continue
        label = {"socket": "daemon, socket path", "syscalls": "daemon, syscalls path", "bpftrace": "bpftrace script (d)",
                 "proxy": "nginx proxy worker (e)"}[c]
        if c in ("socket", "syscalls"):
            worst_cpu = max(med(ln) or 0, med(lo) or 0)
            ok_c = worst_cpu <= 2.0
            worst_rss = max(rss) if rss else None
            ok_r = worst_rss <= 16 if worst_rss is not None else None
            peak = max(hwm) if hwm else None
            ok_h = peak <= 16 if peak is not None else None
            targets.append(("%s path: CPU under load ≤ 2 %% of a core" % c, "%s %% (worse of nginx, node)" % fmt(worst_cpu, 2), verdict(ok_c)))
            targets.append(("%s path: RSS under load ≤ 16 MB" % c, "%s MB (VmRSS, largest sample)" % fmt(worst_rss, 1), verdict(ok_r)))
            targets.append(("%s path: peak RSS ≤ 16 MB" % c, "%s MB (VmHWM, largest)" % fmt(peak, 1), verdict(ok_h)))
            vc, vr = verdict(ok_c), "%s (peak: %s)" % (verdict(ok_r), verdict(ok_h))
        else:
            vc = vr = ""
        w("| %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            label, spread(idle, 2), spread(ln, 2), spread(lo, 2), spread(rss, 1), spread(hwm, 1),
            spread(tracked) if tracked else "", vc, vr))
    w("")
    w("Binary: %s, **%s bytes** (%.2f MiB); target/release/scope-http-statistics: %s bytes.%s" % (
        meta.get("binary"), fmt(num(meta.get("binary_bytes"))), (num(meta.get("binary_bytes")) or 0) / 2**20,
        fmt(num(meta.get("release_bytes"))), " Note: dist/ is %s." % meta["binary_note"] if meta.get("binary_note") else ""))
    w("")

    # ---- 3 ----
    w("## 3. /report and /metrics with N tracked processes")
    w("")
    w("The daemon (socket path) alone; `procs N` forks N processes that each read one request and write one response on a "
      "loopback connection of their own and stay alive. Times are connect → last byte, one connection per request, median of %s "
      "requests each. *snapshot ms* = CPU time per second of the daemon's main thread (se.sum_exec_runtime in /proc/PID/task/PID/sched, "
      "over %s s), which does nothing but the once-a-second snapshot of the maps and the rendering of /report and /metrics: so, ms of CPU "
      "per snapshot. *daemon CPU %%* is the whole process (utime+stime ticks). "
      "*tracked* is the daemon's own gauge (it includes any other process on the machine that served HTTP)."
      % (meta.get("gets"), meta.get("cpuwin")))
    w("")
    w("| N | tracked | /report median µs | /report worst µs | /report bytes | /metrics median µs | /metrics worst µs | /metrics bytes | snapshot ms CPU / s | daemon CPU % | VmRSS MB |")
    w("|---|---|---|---|---|---|---|---|---|---|---|")
    ns = sorted({int(k[1]) for k in raw.v if k[0] == "scale" and k[1] not in ("-",)})
    for n in ns:
        c = str(n)
        g = lambda m, d=0, s=1.0: spread([x / s for x in raw.values("scale", c, "-", m)], d)
        w("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            fmt(n), g("tracked"), g("report_us"), g("report_max_us"), g("report_bytes"), g("metrics_us"),
            g("metrics_max_us"), g("metrics_bytes"), g("snapshot_ms", 2), g("daemon_cpu_pct", 2), g("rss_kb", 1, 1024)))
    hwm = raw.values("scale", "-", "-", "hwm_kb")
    if hwm:
        w("")
        w("VmHWM of the daemon at the end of part 3: %s MB." % fmt(hwm[0] / 1024, 1))
    w("")

    # ---- 4 ----
    w("## 4. Per-call cost (C microbenchmark)")
    w("")
    w("CPU ns per call (per send+recv pair for TCP) of the benchmark thread (CLOCK_THREAD_CPUTIME_ID: the kernel's work in the syscall, "
      "eBPF programs included, counts; time preempted by the machine's other load does not), each the median of %s batches; "
      "then median (min–max) over %s rounds. "
      "*empty* = %s on the same hooks as each path: `sock:sock_recv_length` and `sock:sock_send_length` "
      "(socket path), or the 16 `sys_enter/sys_exit` tracepoints of read, recvfrom, readv, recvmsg, write, sendto, writev, sendmsg "
      "(syscalls path). The daemon also attaches `sched:sched_process_exit` and `sock:inet_sock_set_state` on both paths; "
      "neither fires in these loops."
      % (meta.get("mb", "").split(" x ")[-1], meta.get("micro_rounds"),
         {"libbpf": "programs that only `return 0` (scripts/bench/empty.bpf.c, built with clang, attached with libbpf by scripts/bench/attach.c)",
          "bpftrace": "bpftrace programs with empty actions (they return 1, which also hands each event to perf: a floor above a true empty program)"}
         .get(meta.get("empty_method"), "empty programs (not available here)")))
    w("")
    cfgs = [("none", "nothing attached"), ("socket", "daemon socket"), ("syscalls", "daemon syscalls"),
            ("empty-socket", "empty, socket hooks"), ("empty-syscalls", "empty, syscall hooks")]
    w("| call | " + " | ".join(l for _, l in cfgs) + " | noise of untraced (max−min) |")
    w("|---|" + "---|" * (len(cfgs) + 1))
    for case, label in MICRO_CASES:
        cells = []
        for c, _ in cfgs:
            if raw.has("micro", c, "-", "skipped") and not raw.values("micro", c, case, "ns"):
                cells.append("not run")
            else:
                cells.append(spread(raw.values("micro", c, case, "ns"), 1))
        none = raw.values("micro", "none", case, "ns")
        noise = (max(none) - min(none)) if len(none) > 1 else None
        w("| %s | %s | %s |" % (label, " | ".join(cells), fmt(noise, 1) if noise is not None else "n/a (1 round)"))
    w("")
    for metric, title in (("ns", "Added cost in ns, per round against the same round's reference (batch medians), median (min–max) over rounds:"),
                          ("min_ns", "The same from each configuration's fastest batch (the least disturbed by the rest of the machine):")):
        w(title)
        w("")
        w("| call | socket − nothing | syscalls − nothing | socket − empty socket hooks | syscalls − empty syscall hooks | empty socket hooks − nothing | empty syscall hooks − nothing |")
        w("|---|---|---|---|---|---|---|")
        for case, label in MICRO_CASES:
            d = lambda a, b: spread(diffs(raw, "micro", a, case, metric, b), 1)
            w("| %s | %s | %s | %s | %s | %s | %s |" % (label, d("socket", "none"), d("syscalls", "none"), d("socket", "empty-socket"),
                                                     d("syscalls", "empty-syscalls"), d("empty-socket", "none"), d("empty-syscalls", "none")))
        w("")
    for path in ("socket", "syscalls"):
        for case in ("pread_1B_file", "read_1B_zero", "getppid"):
            dd = diffs(raw, "micro", path, case, "ns", "none")
            ok = med(dd) <= 150 if dd else None
            targets.append(("issue 7, %s path: added cost of %s ≤ 150 ns" % (path, case), "%s ns" % fmt(med(dd), 1) if dd else "n/a", verdict(ok)))
    for case in ("pread_1B_file", "read_1B_zero", "getppid"):
        dd = diffs(raw, "micro", "socket", case, "ns", "none")
        none = raw.values("micro", "none", case, "ns")
        if dd and len(none) > 1:
            noise = max(none) - min(none)
            ok = med(dd) <= noise  # one-sided: faster than untraced is not a slowdown
            targets.append(("issue 9, socket path: %s within noise of untraced (added cost ≤ noise)" % case,
                            "%s ns vs noise %s ns" % (fmt(med(dd), 1), fmt(noise, 1)), verdict(ok)))
        else:
            targets.append(("issue 9, socket path: %s within noise of untraced (added cost ≤ noise)" % case,
                            "%s ns (noise needs ≥ 2 rounds)" % fmt(med(dd), 1) if dd else "n/a", "n/a"))
    # The exchange: best window of each configuration (min_ns), per round
    # against the same round's floor.
    w("### The exchange above the empty-program floor")
    w("")
    w("CPU ns per exchange (best of %s windows of %s exchanges) minus the same round's empty programs on the same hooks, "
      "median (min–max) over rounds; *per call* divides by the exchange's 4 socket calls. *A/A* is the spread of the "
      "floor itself between rounds (max − min of the empty-program configuration)."
      % (meta.get("mb", "").split(" x ")[-1], meta.get("exchanges")))
    w("")
    w("| exchange | path | floor (empty programs) ns | daemon ns | above floor per exchange | per call | floor's spread over rounds |")
    w("|---|---|---|---|---|---|---|")
    for case in ("exchange_http", "exchange_other"):
        for path in ("socket", "syscalls"):
            dd = diffs(raw, "micro", path, case, "min_ns", "empty-" + path)
            floor = raw.values("micro", "empty-" + path, case, "min_ns")
            w("| %s | %s | %s | %s | %s | %s | %s |" % (
                case, path, spread(floor, 0), spread(raw.values("micro", path, case, "min_ns"), 0), spread(dd, 0),
                spread([x / 4 for x in dd], 0), fmt(max(floor) - min(floor), 0) if len(floor) > 1 else "n/a"))
    w("")
    dd = diffs(raw, "micro", "socket", "exchange_http", "min_ns", "empty-socket")
    targets.append(("issue 14, socket path: HTTP exchange ≤ floor + 600 ns", "%s ns" % fmt(med(dd), 0) if dd else "n/a",
                    verdict(med(dd) <= 600 if dd else None)))
    dd = diffs(raw, "micro", "socket", "exchange_other", "min_ns", "empty-socket")
    targets.append(("issue 14, socket path: non-HTTP traffic ≤ floor + 40 ns per call", "%s ns per call" % fmt(med(dd) / 4, 0) if dd else "n/a",
                    verdict(med(dd) / 4 <= 40 if dd else None)))
    for case in ("tcp_1B_pair", "tcp_64B_pair"):
        dd = diffs(raw, "micro", "socket", case, "ns", "empty-socket")
        ok = med(dd) <= 60 if dd else None
        v = verdict(ok)
        if len(dd) > 1 and max(dd) - min(dd) > 60:
            # The rounds disagree by more than the threshold: the verdict is noise.
            v += " (not resolved: the rounds spread %s ns)" % fmt(max(dd) - min(dd))
        targets.append(("issue 9, socket path: %s ≤ 60 ns above the empty-program floor" % case,
                        "%s ns" % fmt(med(dd), 1) if dd else "n/a (no empty programs)", v))
    w("")

    # ---- targets ----
    w("## Targets")
    w("")
    if quick:
        w("(--quick: one short round; these verdicts mean nothing.)")
        w("")
    w("| target | measured (median) | verdict |")
    w("|---|---|---|")
    for what, measured, v in targets:
        w("| %s | %s | %s |" % (what, measured, v))
    w("")
    print("\n".join(out))


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "wrk":
        parse_wrk(sys.argv[2])
    elif len(sys.argv) == 4 and sys.argv[1] == "report":
        report(sys.argv[2], sys.argv[3])
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
