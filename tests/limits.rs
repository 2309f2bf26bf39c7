//! The documented bounds of the probe: a full process table (`--max-processes`)
//! and the 16 messages counted per buffer, with their drop counters and log.
//!
//! The drop counters are host-wide (any process on the host can make them
//! grow), so the tests of this file take [`serial`] and never overlap; other
//! test binaries run before or after this one, never alongside.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

const TRACKED: &str = "scope_http_statistics_tracked_processes";
const TRACKED_LIMIT: &str = "scope_http_statistics_tracked_processes_limit";

/// The drop counters expected: `nonzero` (reason, count), every other reason
/// at 0. Compare with [`drops_of`].
fn drops_exactly(nonzero: &[(&str, u64)]) -> BTreeMap<String, u64> {
    nonzero
        .iter()
        .map(|(reason, n)| (reason.to_string(), *n))
        .collect()
}

/// The drop counters of a /metrics page that are not 0, plus the `named`
/// reasons whatever their value (so a missing series shows), as whole numbers.
fn drops_of(metrics: &Metrics, named: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    metrics
        .drops()
        .into_iter()
        .map(|(reason, v)| {
            assert!(v >= 0.0 && v.fract() == 0.0, "drop counter {reason} = {v}");
            (reason, v as u64)
        })
        .filter(|(reason, v)| *v != 0 || named.contains_key(reason))
        .collect()
}

/// The value of an unlabelled gauge.
fn gauge(metrics: &Metrics, name: &str) -> Option<u64> {
    let values: Vec<f64> = metrics.series(name, &[]).map(|(_, v)| v).collect();
    assert!(values.len() <= 1, "{name}: several series {values:?}");
    values.first().map(|v| *v as u64)
}

/// One GET of `/` by curl, on a connection of its own; returns the status.
fn curl_get(server: &Server) -> u16 {
    curl(&[
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &server.url("/"),
    ])
    .trim()
    .parse()
    .expect("curl -w %{http_code}")
}

/// The daemon's log lines about `reason`'s drop episodes, without their
/// timestamps: e.g. "started" and "stopped at 8".
fn episode_lines(log: &str, reason: &str) -> Vec<String> {
    let prefix = format!("probe drops ({reason}) ");
    log.lines()
        .filter_map(|line| {
            let at = line.find(&prefix)?;
            let rest = &line[at + prefix.len()..];
            Some(if rest.starts_with("started") {
                "started".to_string()
            } else {
                rest.to_string()
            })
        })
        .collect()
}

/// A second daemon, with the default table, that watches which processes
/// serve HTTP on the host while a test runs: the drop counters of the daemon
/// under test are host-wide, so another process serving HTTP meanwhile (e.g.
/// a concurrent smoke test) adds to them and the exact values no longer hold.
struct Witness<'a> {
    daemon: &'a Daemon,
    /// Pids the test started (its servers).
    ours: Mutex<BTreeSet<u32>>,
    /// Every pid with HTTP counters the witness listed, with its comm.
    seen: Mutex<BTreeMap<u32, String>>,
}

impl Witness<'_> {
    /// Declares `pid` as one of the test's own servers.
    fn ours(&self, pid: u32) {
        self.ours.lock().unwrap().insert(pid);
    }

    fn poll(&self) {
        let Ok(response) = self.daemon.try_request("GET", "/metrics") else {
            return;
        };
        let metrics = Metrics::parse(&response.text());
        let mut seen = self.seen.lock().unwrap();
        for name in [REQUESTS, RESPONSES] {
            for (labels, _) in metrics.series(name, &[]) {
                if let Some(pid) = labels.get("pid").and_then(|p| p.parse().ok()) {
                    let comm = labels.get("comm").cloned().unwrap_or_default();
                    seen.insert(pid, comm);
                }
            }
        }
    }

    /// Processes that served HTTP and are not the test's.
    fn foreign(&self) -> BTreeMap<u32, String> {
        let ours = self.ours.lock().unwrap();
        let mut foreign = self.seen.lock().unwrap().clone();
        foreign.retain(|pid, _| !ours.contains(pid));
        foreign
    }
}

const ATTEMPTS: usize = 3;

/// "N processes: M × comm, ..." for a map of pid → comm ("" when empty).
fn summary(processes: &BTreeMap<u32, String>) -> String {
    if processes.is_empty() {
        return String::new();
    }
    let mut by_comm: BTreeMap<&str, usize> = BTreeMap::new();
    for comm in processes.values() {
        *by_comm.entry(comm.as_str()).or_default() += 1;
    }
    let comms: Vec<String> = by_comm.iter().map(|(c, n)| format!("{n} × {c}")).collect();
    format!("{} processes: {}", processes.len(), comms.join(", "))
}

/// Runs `attempt` while a [`Witness`] watches the host. A failed attempt
/// during which another process served HTTP is run again (up to
/// [`ATTEMPTS`] times); any other failure is the test's.
fn on_a_quiet_host(test: &str, attempt: impl Fn(&Witness)) {
    let mut overlaps = Vec::new();
    for n in 1..=ATTEMPTS {
        let daemon = Daemon::start();
        let witness = Witness {
            daemon: &daemon,
            ours: Mutex::new(BTreeSet::new()),
            seen: Mutex::new(BTreeMap::new()),
        };
        let stop = AtomicBool::new(false);
        let outcome = thread::scope(|scope| {
            scope.spawn(|| {
                while !stop.load(Ordering::SeqCst) {
                    witness.poll();
                    thread::sleep(Duration::from_millis(100));
                }
            });
            let outcome = panic::catch_unwind(AssertUnwindSafe(|| attempt(&witness)));
            // Let the witness take a snapshot newer than the attempt's end.
            thread::sleep(Duration::from_millis(1200));
            witness.poll();
            stop.store(true, Ordering::SeqCst);
            outcome
        });
        let foreign = summary(&witness.foreign());
        match outcome {
            Ok(()) => return,
            Err(failure) if foreign.is_empty() => panic::resume_unwind(failure),
            Err(_) => {
                eprintln!(
                    "{test}: attempt {n} of {ATTEMPTS} failed while other processes served HTTP \
                     on the host ({foreign}); the probe's drop counters are host-wide, retrying"
                );
                overlaps.push(foreign);
            }
        }
    }
    panic!(
        "{test}: every attempt overlapped with HTTP served by other processes on the host \
         ({overlaps:?}); run the tests on a quiet host"
    );
}

/// The counts in the "started, N so far" lines of `reason`, in order.
fn started_counts(log: &str, reason: &str) -> Vec<u64> {
    let prefix = format!("probe drops ({reason}) started, ");
    log.lines()
        .filter_map(|line| {
            let rest = &line[line.find(&prefix)? + prefix.len()..];
            rest.split(' ').next()?.parse().ok()
        })
        .collect()
}

#[test]
fn a_full_process_table_skips_new_processes_and_counts_each_skipped_buffer() {
    let _serial = serial();
    on_a_quiet_host(
        "a_full_process_table_skips_new_processes_and_counts_each_skipped_buffer",
        full_process_table,
    );
}

fn full_process_table(witness: &Witness) {
    let daemon = Daemon::start_args(&["--max-processes", "1"]);
    let metrics = daemon.metrics();
    assert_eq!(gauge(&metrics, TRACKED_LIMIT), Some(1), "{TRACKED_LIMIT}");
    assert_eq!(
        gauge(&metrics, TRACKED),
        Some(0),
        "a process on the host counted HTTP before the test's servers did; \
         the table of 1 is taken"
    );

    // Server A takes the only entry.
    let a = start_python_http11();
    witness.ours(a.pid);
    for _ in 0..3 {
        assert_eq!(http_get(a.port, "/"), 200);
    }
    let a_counts = PidCounts::expect(3, &[(200, 3)]);
    daemon.wait_for_counts("server A", a.pid, &a_counts);

    // Server B finds the table full. Each of its 4 requests is one read that
    // starts with a request line, and each response head one write that
    // starts with a status line (the body goes in a later write that starts
    // with "<html>", which parse_buffer() turns away before process_entry()).
    // Every such buffer calls process_entry(), whose insert fails with E2BIG
    // and counts one drop: 4 + 4. curl, the client, writes requests and reads
    // responses, which never look like a message start in its direction.
    let b = start_python_http11();
    witness.ours(b.pid);
    for _ in 0..4 {
        assert_eq!(curl_get(&b), 200);
    }
    let state = |m: &Metrics, drops: &BTreeMap<String, u64>| {
        (
            drops_of(m, drops),
            m.counts_for(a.pid).requests,
            m.mentions_pid(b.pid),
            gauge(m, TRACKED),
        )
    };
    let first_drops = drops_exactly(&[("process_map_full", 8)]);
    wait_for_exact(
        "(drops, A's requests, B listed, tracked processes) after B's 4 requests",
        &(first_drops.clone(), Some(3), false, Some(1)),
        || state(&daemon.metrics(), &first_drops),
    );
    assert_eq!(daemon.counts_for(a.pid), a_counts, "server A");
    // The witness, whose table has room, counts B's 4 requests and 4 responses.
    assert_eq!(
        witness.daemon.counts_for(b.pid),
        PidCounts::expect(4, &[(200, 4)]),
        "server B, as the witness daemon counts it"
    );
    assert_eq!(
        report_node_metrics(&daemon.report(), &daemon.node_id(b.pid)),
        None,
        "server B has a node in /report"
    );

    // The episode is logged once when the counter starts growing and once
    // when a snapshot shows no growth (wait_for_exact waited 1.5 s with none).
    assert!(
        wait_until(COUNT_TIMEOUT, || {
            episode_lines(&daemon.log(), "process_map_full").len() == 2
        }),
        "no end of the first drop episode in the log"
    );
    let log = daemon.log();
    assert_eq!(
        episode_lines(&log, "process_map_full"),
        ["started", "stopped at 8"],
        "log:\n{log}"
    );
    let started: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("probe drops (process_map_full) started"))
        .collect();
    assert_eq!(started.len(), 1, "log:\n{log}");
    assert!(
        started[0].contains(" WARN ")
            && started[0].contains("the table of 1 processes is full")
            && started[0].contains("--max-processes"),
        "the episode's first line: {:?}",
        started[0]
    );

    // A second episode whose drops grow over several snapshots: 7 requests,
    // 300 ms apart. Every one-second snapshot interval in between sees a drop
    // (no gap reaches 1 s) and the whole stretch (≈ 2 s) spans at least two
    // snapshots, so the counter grows in consecutive snapshots: still ONE
    // "started" line for the episode, and one "stopped" after it.
    let rounds: u64 = 7;
    let mut last = Instant::now();
    for i in 0..rounds {
        if i > 0 {
            thread::sleep(Duration::from_millis(300).saturating_sub(last.elapsed()));
        }
        last = Instant::now();
        assert_eq!(curl_get(&b), 200);
    }
    let total = 8 + 2 * rounds;
    let second_drops = drops_exactly(&[("process_map_full", total)]);
    wait_for_exact(
        "(drops, A's requests, B listed, tracked processes) after B's second burst",
        &(second_drops.clone(), Some(3), false, Some(1)),
        || state(&daemon.metrics(), &second_drops),
    );
    assert!(
        wait_until(COUNT_TIMEOUT, || {
            episode_lines(&daemon.log(), "process_map_full").len() == 4
        }),
        "no end of the second drop episode in the log:\n{}",
        daemon.log()
    );
    let log = daemon.log();
    assert_eq!(
        episode_lines(&log, "process_map_full"),
        [
            "started".to_string(),
            "stopped at 8".to_string(),
            "started".to_string(),
            format!("stopped at {total}"),
        ],
        "log:\n{log}"
    );
    // The premise: the second episode was already logged as started while
    // its drops kept growing in later snapshots.
    let second_start = started_counts(&log, "process_map_full")[1];
    assert!(
        (9..total).contains(&second_start),
        "the second episode started at {second_start} drops, so its growth did not span \
         several snapshots (total {total}); log:\n{log}"
    );
    assert_eq!(daemon.counts_for(a.pid), a_counts, "server A");
    assert_eq!(
        witness.daemon.counts_for(b.pid),
        PidCounts::expect(4 + rounds, &[(200, 4 + rounds)]),
        "server B, as the witness daemon counts it"
    );
    let metrics = daemon.metrics();
    assert_eq!(gauge(&metrics, TRACKED), Some(1), "{TRACKED}");
    assert_eq!(gauge(&metrics, TRACKED_LIMIT), Some(1), "{TRACKED_LIMIT}");
}

/// Sends `n` pipelined `GET /` to nginx in ONE write and reads the `n`
/// responses; then the worker must show `expected_requests` requests and `n`
/// 200s, and the drop counters `expected_message_limit` message_limit drops
/// and nothing else.
fn nginx_pipelined(n: usize, expected_requests: u64, expected_message_limit: u64) {
    let _serial = serial();
    let daemon = Daemon::start();
    let server = start_nginx();

    // nginx reads a new connection into its 1 KiB client_header_buffer: all
    // requests must fit, so that one read holds them all.
    let bytes = pipelined_gets("/", n).len();
    assert!(bytes < 1000, "{n} pipelined requests take {bytes} bytes");
    get_pipelined(server.port, "/", n);

    // nginx answers each pipelined request with a writev of its own, so every
    // response is counted; the read holding the n requests counts the first
    // 16 and then one message_limit drop if more follow.
    daemon.wait_for_counts(
        &format!("nginx, {n} pipelined requests"),
        server.pid,
        &PidCounts::expect(expected_requests, &[(200, n as u64)]),
    );
    let drops = drops_exactly(&[("message_limit", expected_message_limit)]);
    assert_eq!(
        drops_of(&daemon.metrics(), &drops),
        drops,
        "probe drops other than 0"
    );
}

#[test]
fn twenty_pipelined_requests_in_one_read_count_16_and_one_message_limit_drop() {
    nginx_pipelined(20, 16, 1);
}

#[test]
fn sixteen_pipelined_requests_in_one_read_are_all_counted_without_a_drop() {
    nginx_pipelined(16, 16, 0);
}
