//! Prometheus text exposition (GET /metrics, format 0.0.4): pure rendering of
//! the cumulative counters.

use std::fmt::Write;

use crate::latency;
use crate::rates::CounterSnapshot;

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Families other code reads back (`top`), named once.
pub const REQUESTS_TOTAL: &str = "http_server_requests_total";
pub const RESPONSES_TOTAL: &str = "http_server_responses_total";
pub const SNAPSHOT_TIMESTAMP: &str = "scope_http_statistics_snapshot_timestamp_seconds";

/// Escapes a label value: backslash, double quote and newline.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A gauge without labels: its header and its one sample.
fn gauge(out: &mut String, name: &str, help: &str, value: impl std::fmt::Display) {
    header(out, name, "gauge", help);
    let _ = writeln!(out, "{name} {value}");
}

/// What the daemon runs with, exported beside the counters.
pub struct DaemonFacts {
    /// The kernel table's bound, so that operators can alert before it fills.
    pub tracked_limit: u32,
    /// The probe's hook path ("socket" or "syscalls") and why it was chosen.
    pub hook_path: &'static str,
    pub hook_reason: String,
    /// Files (libssl, executables exporting OpenSSL) the TLS hooks are on.
    pub tls_libraries: usize,
}

/// Renders every counter in `snapshot`, taken at `taken_at` (Unix seconds),
/// and the daemon's facts.
pub fn render(snapshot: &CounterSnapshot, taken_at: f64, facts: &DaemonFacts) -> String {
    let mut out = String::new();
    header(
        &mut out,
        REQUESTS_TOTAL,
        "counter",
        "HTTP/1.x requests the process read from TCP sockets since the daemon started.",
    );
    for p in &snapshot.processes {
        let _ = writeln!(
            out,
            "{REQUESTS_TOTAL}{{pid=\"{}\",comm=\"{}\"}} {}",
            p.pid,
            escape(&p.comm),
            p.requests
        );
    }
    header(
        &mut out,
        RESPONSES_TOTAL,
        "counter",
        "HTTP/1.x responses the process wrote to TCP sockets since the daemon started, by status code \
         (code=\"other\": codes beyond the per-process slots).",
    );
    for p in &snapshot.processes {
        let comm = escape(&p.comm);
        for (code, count) in &p.responses {
            let _ = writeln!(
                out,
                "{RESPONSES_TOTAL}{{pid=\"{}\",comm=\"{comm}\",code=\"{code}\"}} {count}",
                p.pid
            );
        }
        if p.untracked_responses > 0 {
            let _ = writeln!(
                out,
                "{RESPONSES_TOTAL}{{pid=\"{}\",comm=\"{comm}\",code=\"other\"}} {}",
                p.pid, p.untracked_responses
            );
        }
    }
    header(
        &mut out,
        "http_server_request_duration_seconds",
        "histogram",
        "Time from the read that delivered a request to the first write of its response on the same socket, \
         measured in the kernel, since the daemon started.",
    );
    for p in &snapshot.processes {
        let labels = format!("pid=\"{}\",comm=\"{}\"", p.pid, escape(&p.comm));
        let h = &p.latency;
        let mut cumulative = 0;
        for (le, count) in latency::BOUNDS
            .iter()
            .chain(["+Inf"].iter())
            .zip(h.le.iter())
        {
            cumulative += count;
            let _ = writeln!(
                out,
                "http_server_request_duration_seconds_bucket{{{labels},le=\"{le}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            out,
            "http_server_request_duration_seconds_sum{{{labels}}} {}",
            h.sum_ns as f64 / 1e9
        );
        let _ = writeln!(
            out,
            "http_server_request_duration_seconds_count{{{labels}}} {}",
            h.count()
        );
    }
    gauge(
        &mut out,
        "scope_http_statistics_inflight_requests",
        "Connections with a request read whose response has not been written yet (the kernel's table).",
        snapshot.awaiting_connections,
    );
    header(
        &mut out,
        "scope_http_statistics_probe_drops_total",
        "counter",
        "Processes or transfers the probe saw but could not count, by reason.",
    );
    for (reason, count) in snapshot.drops.by_reason() {
        let _ = writeln!(
            out,
            "scope_http_statistics_probe_drops_total{{reason=\"{}\"}} {count}",
            reason.label
        );
    }
    gauge(
        &mut out,
        "scope_http_statistics_tracked_processes",
        "Processes with HTTP counters in the kernel table.",
        snapshot.processes.len(),
    );
    gauge(
        &mut out,
        "scope_http_statistics_tracked_processes_limit",
        "Bound of the kernel table; new processes are skipped when it is full.",
        facts.tracked_limit,
    );
    gauge(
        &mut out,
        SNAPSHOT_TIMESTAMP,
        "When the daemon read the kernel's counters on this page (Unix time): rates over the exact \
         interval between two pages, and a stalled daemon shows as an old value.",
        format_args!("{taken_at:.3}"),
    );
    header(
        &mut out,
        "scope_http_statistics_hooks_info",
        "gauge",
        "Where the probe hooks in (socket layer or syscall tracepoints) and why; always 1.",
    );
    let _ = writeln!(
        out,
        "scope_http_statistics_hooks_info{{path=\"{}\",reason=\"{}\"}} 1",
        facts.hook_path,
        escape(&facts.hook_reason)
    );
    gauge(
        &mut out,
        "scope_http_statistics_tls_libraries",
        "Distinct files holding OpenSSL (shared libssl, executables that export it) whose reads and \
         writes are hooked to count HTTPS; 0 with --tls off.",
        facts.tls_libraries,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::latency::LatencyHistogram;
    use crate::probe::abi;
    use crate::rates::{ProbeDrops, ProcessCounts};

    fn facts(tracked_limit: u32) -> DaemonFacts {
        DaemonFacts {
            tracked_limit,
            hook_path: "socket",
            hook_reason: "auto: \"why\"".into(),
            tls_libraries: 2,
        }
    }

    #[test]
    fn renders_counters_with_labels() {
        let snapshot = CounterSnapshot {
            processes: vec![ProcessCounts {
                pid: 42,
                first_seen_ns: 1,
                comm: "we\"ird\\n".into(),
                requests: 7,
                responses: [(200, 5), (404, 2)].into_iter().collect(),
                untracked_responses: 1,
                latency: LatencyHistogram {
                    sum_ns: 1_500_000_000,
                    le: [1, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
                    ..LatencyHistogram::default()
                },
            }],
            drops: {
                let mut drops = ProbeDrops::default();
                drops.0[abi::DROP_PROCESS_MAP_FULL] = 3;
                drops
            },
            awaiting_connections: 4,
        };
        let out = render(&snapshot, 1_700_000_000.25, &facts(100));
        let expected = [
            "# TYPE http_server_requests_total counter",
            "http_server_requests_total{pid=\"42\",comm=\"we\\\"ird\\\\n\"} 7",
            "http_server_responses_total{pid=\"42\",comm=\"we\\\"ird\\\\n\",code=\"200\"} 5",
            "http_server_responses_total{pid=\"42\",comm=\"we\\\"ird\\\\n\",code=\"404\"} 2",
            "http_server_responses_total{pid=\"42\",comm=\"we\\\"ird\\\\n\",code=\"other\"} 1",
            "scope_http_statistics_probe_drops_total{reason=\"process_map_full\"} 3",
            "scope_http_statistics_probe_drops_total{reason=\"segment_limit\"} 0",
            "scope_http_statistics_tracked_processes 1",
            "scope_http_statistics_hooks_info{path=\"socket\",reason=\"auto: \\\"why\\\"\"} 1",
            "# TYPE http_server_request_duration_seconds histogram",
            "http_server_request_duration_seconds_bucket{pid=\"42\",comm=\"we\\\"ird\\\\n\",le=\"0.005\"} 1",
            "http_server_request_duration_seconds_bucket{pid=\"42\",comm=\"we\\\"ird\\\\n\",le=\"0.01\"} 1",
            "http_server_request_duration_seconds_bucket{pid=\"42\",comm=\"we\\\"ird\\\\n\",le=\"0.025\"} 3",
            "http_server_request_duration_seconds_bucket{pid=\"42\",comm=\"we\\\"ird\\\\n\",le=\"10\"} 3",
            "http_server_request_duration_seconds_bucket{pid=\"42\",comm=\"we\\\"ird\\\\n\",le=\"+Inf\"} 4",
            "http_server_request_duration_seconds_sum{pid=\"42\",comm=\"we\\\"ird\\\\n\"} 1.5",
            "http_server_request_duration_seconds_count{pid=\"42\",comm=\"we\\\"ird\\\\n\"} 4",
            "scope_http_statistics_inflight_requests 4",
            "scope_http_statistics_tracked_processes_limit 100",
            "scope_http_statistics_snapshot_timestamp_seconds 1700000000.250",
            "scope_http_statistics_tls_libraries 2",
        ];
        for line in expected {
            assert!(out.lines().any(|l| l == line), "missing {line:?} in\n{out}");
        }
        // Every sample line belongs to a family declared by HELP and TYPE.
        for l in out.lines().filter(|l| !l.starts_with('#')) {
            let name = l.split(['{', ' ']).next().unwrap();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| {
                    name.strip_suffix(suffix)
                        .filter(|f| out.contains(&format!("# TYPE {f} histogram")))
                })
                .unwrap_or(name);
            assert!(out.contains(&format!("# TYPE {family} ")), "{family}");
            assert!(out.contains(&format!("# HELP {family} ")), "{family}");
        }
    }

    #[test]
    fn empty_snapshot_still_declares_families() {
        let out = render(&CounterSnapshot::default(), 0.0, &facts(16384));
        assert!(out.contains("# TYPE http_server_requests_total counter"));
        assert!(out.contains("scope_http_statistics_tracked_processes 0"));
    }
}
