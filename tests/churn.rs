//! Many processes, process churn, pid reuse and a daemon killed with SIGKILL,
//! with the real probe loaded.
//!
//! The servers are children of `tests/support/churn.c` (compiled here with
//! `cc`): each child owns one loopback TCP connection to itself and serves
//! requests on it, so it counts exactly its own requests and 200s. The tests
//! of this file are host-wide (thousands of processes, the kernel's pid
//! counter, the list of loaded BPF programs), so they take [`serial`].

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// The comm of every process the churn program starts.
const CHURN_COMM: &str = "shs-churn";
const TRACKED: &str = "scope_http_statistics_tracked_processes";
const TRACKED_LIMIT: &str = "scope_http_statistics_tracked_processes_limit";
const SNAPSHOT_TIME: &str = "scope_http_statistics_snapshot_timestamp_seconds";
/// Exit of a process → its series gone: the probe deletes the entry at exit,
/// the next snapshot (at most 1 s later) leaves it out.
const EXIT_TIMEOUT: Duration = Duration::from_secs(3);
/// Scope's budget for answering GET /report.
const SCOPE_BUDGET: Duration = Duration::from_millis(500);

/// Compiles tests/support/churn.c into `dir`.
fn build_churn(dir: &Path) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/churn.c");
    let binary = dir.join(CHURN_COMM);
    let output = Command::new("cc")
        .args(["-O2", "-Wall", "-o"])
        .arg(&binary)
        .arg(&source)
        .output()
        .expect("run cc (apt-get install gcc)");
    assert!(
        output.status.success(),
        "cc {}: {}",
        source.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    binary
}

/// A running churn program, in a process group of its own. On drop it closes
/// stdin (the program then kills and reaps its children), and SIGKILLs the
/// whole group if it is still there.
struct Churn {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Churn {
    fn start(binary: &Path, args: &[&str]) -> Churn {
        let mut child = Command::new(binary)
            .args(args)
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("start {} {args:?}: {e}", binary.display()));
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Churn {
            child,
            stdin,
            stdout,
        }
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("read churn output");
        assert!(!line.is_empty(), "the churn program exited early");
        line.trim_end().to_string()
    }

    /// Reads "pid P" lines until `end` (a line starting with it), which is
    /// returned; panics on any "fail" line.
    fn pids_until(&mut self, end: &str, pids: &mut Vec<u32>) -> String {
        loop {
            let line = self.line();
            if let Some(pid) = line.strip_prefix("pid ") {
                pids.push(pid.parse().expect("pid"));
            } else if line.starts_with(end) {
                return line;
            } else {
                panic!("churn program: {line}");
            }
        }
    }

    /// Tells a live/serve program to SIGKILL and reap its children; returns
    /// once they are all gone.
    fn kill_children(&mut self) {
        let stdin = self.stdin.as_mut().expect("stdin");
        stdin.write_all(b"kill\n").expect("write to churn program");
        stdin.flush().unwrap();
        assert_eq!(self.line(), "killed");
    }
}

impl Drop for Churn {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        // SAFETY: kill(2) on the process group this test created.
        unsafe {
            libc::kill(-(self.child.id() as libc::pid_t), libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

/// What the tests need from one /metrics page, read line by line: a page of
/// 5,000 processes has ~100,000 series, too many for the harness's full parse
/// to keep up with while polling.
#[derive(Debug, Default)]
struct Page {
    /// Counts of every process of the churn program, by pid.
    churn: BTreeMap<u32, PidCounts>,
    /// Unlabelled series (the gauges).
    gauges: BTreeMap<String, u64>,
    /// Drop counters by reason.
    drops: BTreeMap<String, u64>,
    /// Every pid in the page (each tracked process has a requests series).
    pids: BTreeSet<u32>,
}

impl Page {
    fn get(daemon: &Daemon) -> Page {
        let response = daemon.request("GET", "/metrics");
        assert_eq!(response.status, 200, "GET /metrics");
        Page::parse(&response.text())
    }

    fn parse(text: &str) -> Page {
        let mut page = Page::default();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (series, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("metrics line {line:?}"));
            let Some((name, labels)) = series.split_once('{') else {
                // The counts are whole; the snapshot's timestamp is not.
                if series != SNAPSHOT_TIME {
                    page.gauges.insert(series.to_string(), whole(value, line));
                }
                continue;
            };
            let labels = labels.strip_suffix('}').unwrap_or(labels);
            // Good enough for our own series (no commas or quotes in values).
            let label = |key: &str| -> Option<&str> {
                labels
                    .split(',')
                    .find_map(|kv| kv.strip_prefix(key)?.strip_prefix("=\"")?.strip_suffix('"'))
            };
            if name == DROPS {
                let reason = label("reason").unwrap_or_else(|| panic!("{line:?}"));
                page.drops.insert(reason.to_string(), whole(value, line));
            } else if name == REQUESTS {
                if let Some(pid) = labels
                    .strip_prefix("pid=\"")
                    .and_then(|rest| rest.split('"').next())
                    .and_then(|pid| pid.parse().ok())
                {
                    page.pids.insert(pid);
                }
            }
            if (name == REQUESTS || name == RESPONSES) && label("comm") == Some(CHURN_COMM) {
                let pid = label("pid").and_then(|p| p.parse().ok());
                let entry = page
                    .churn
                    .entry(pid.unwrap_or_else(|| panic!("{line:?}")))
                    .or_default();
                if name == REQUESTS {
                    entry.requests = Some(whole(value, line));
                } else {
                    let code = label("code").unwrap_or_else(|| panic!("{line:?}"));
                    entry.responses.insert(code.to_string(), whole(value, line));
                }
            }
        }
        page
    }

    fn gauge(&self, name: &str) -> u64 {
        *self
            .gauges
            .get(name)
            .unwrap_or_else(|| panic!("no {name} in /metrics"))
    }

    fn drop_count(&self, reason: &str) -> u64 {
        *self
            .drops
            .get(reason)
            .unwrap_or_else(|| panic!("no drop counter {reason:?} in /metrics"))
    }
}

fn whole(value: &str, line: &str) -> u64 {
    value
        .parse()
        .unwrap_or_else(|_| panic!("not a whole number in {line:?}"))
}

/// Waits until none of `pids` is in /metrics and the kernel table holds no
/// process that is gone: the tracked gauge is back to `tracked_before`, or,
/// when other processes on the host started or stopped serving HTTP
/// meanwhile (other test runs), every process it counts is a live one.
fn wait_all_gone(daemon: &Daemon, pids: &BTreeSet<u32>, tracked_before: u64, since: Instant) {
    let mut last = (BTreeMap::new(), 0, BTreeSet::new());
    let gone = wait_until(EXIT_TIMEOUT, || {
        let page = Page::get(daemon);
        let tracked = page.gauge(TRACKED);
        let dead: BTreeSet<u32> = page
            .pids
            .iter()
            .copied()
            .filter(|pid| !process_alive(*pid))
            .collect();
        let left: BTreeMap<u32, PidCounts> = page
            .churn
            .into_iter()
            .filter(|(pid, _)| pids.contains(pid))
            .collect();
        let clean =
            tracked == tracked_before || (tracked == page.pids.len() as u64 && dead.is_empty());
        last = (left, tracked, dead);
        last.0.is_empty() && clean
    });
    let (left, tracked, dead) = last;
    assert!(
        gone,
        "{:?} after the kill: {} of the children still in /metrics (e.g. {:?}); tracked {tracked} \
         (before: {tracked_before}), of which dead processes: {dead:?}; {}",
        since.elapsed(),
        left.len(),
        left.iter().take(3).collect::<Vec<_>>(),
        snapshot_ages(daemon)
    );
    println!(
        "all {} children gone from /metrics {:?} after the kill; tracked {tracked} (before: {tracked_before})",
        pids.len(),
        since.elapsed()
    );
}

/// For failure messages: how old the report's snapshot is, a few times over
/// (the daemon renders one a second; a slow daemon shows here).
fn snapshot_ages(daemon: &Daemon) -> String {
    let mut dates = Vec::new();
    for _ in 0..4 {
        let report = daemon.report();
        let date = report["Process"]["nodes"]
            .as_object()
            .and_then(|nodes| nodes.values().next())
            .and_then(|node| {
                node["metrics"]["http_requests_per_second"]["samples"][0]["date"].as_str()
            })
            .unwrap_or("(no node)")
            .to_string();
        dates.push(format!("{date} read at {}", now_rfc3339()));
        thread::sleep(Duration::from_millis(500));
    }
    format!("report snapshot dates: {dates:?}")
}

fn now_rfc3339() -> String {
    let output = Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%S.%6NZ"])
        .output()
        .expect("date");
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// CPU time (user + system) of a process so far.
fn cpu_time(pid: u32) -> Duration {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..]
        .split_whitespace()
        .collect();
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after comm.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

/// Times `samples` GETs of `target`; returns (min, median, max, bytes).
fn time_get(
    daemon: &Daemon,
    target: &str,
    samples: usize,
) -> (Duration, Duration, Duration, usize) {
    let mut times = Vec::new();
    let mut bytes = 0;
    for _ in 0..samples {
        let start = Instant::now();
        let response = daemon.request("GET", target);
        times.push(start.elapsed());
        assert_eq!(response.status, 200, "GET {target}");
        bytes = response.body.len();
        thread::sleep(Duration::from_millis(150));
    }
    times.sort();
    (times[0], times[samples / 2], times[samples - 1], bytes)
}

/// Counting 5,000 processes takes the daemon more than one snapshot
/// interval when it is a debug build on a busy host (see the CPU time the
/// test prints); the counts must be exact, the time to get there may vary.
const LIVE_COUNT_TIMEOUT: Duration = Duration::from_secs(15);

#[test]
fn five_thousand_live_processes_are_counted_reported_and_forgotten() {
    const N: usize = 5000;
    let _serial = serial();
    let dir = TempDir::new("churn-live");
    let binary = build_churn(dir.path());
    let daemon = Daemon::start();
    thread::sleep(Duration::from_millis(1100)); // a snapshot of the host without them
    let tracked_before = Page::get(&daemon).gauge(TRACKED);

    let spawn = Instant::now();
    let mut churn = Churn::start(&binary, &["live", &N.to_string()]);
    let mut pids = Vec::new();
    churn.pids_until("ready", &mut pids);
    println!("{N} children forked and served in {:?}", spawn.elapsed());
    let pids: BTreeSet<u32> = pids.into_iter().collect();
    assert_eq!(pids.len(), N);

    let expected: BTreeMap<u32, PidCounts> = pids
        .iter()
        .map(|&pid| (pid, PidCounts::expect(1, &[(200, 1)])))
        .collect();
    let describe = |page: &Page| {
        let wrong: Vec<_> = expected
            .iter()
            .filter(|(pid, want)| page.churn.get(pid) != Some(want))
            .take(3)
            .map(|(pid, _)| (pid, page.churn.get(pid)))
            .collect();
        format!(
            "{} churn processes in /metrics, {} as expected (e.g. wrong: {wrong:?}); tracked {} \
             (before {tracked_before}); drops {:?}; {}",
            page.churn.len(),
            expected
                .iter()
                .filter(|(pid, want)| page.churn.get(pid) == Some(want))
                .count(),
            page.gauge(TRACKED),
            page.drops,
            snapshot_ages(&daemon)
        )
    };
    let mut last = Page::default();
    let counting = Instant::now();
    let reached = wait_until(LIVE_COUNT_TIMEOUT, || {
        last = Page::get(&daemon);
        last.churn == expected
    });
    assert!(reached, "{}", describe(&last));
    println!(
        "all {N} counted in /metrics {:?} after they were served",
        counting.elapsed()
    );
    thread::sleep(SETTLE);
    let page = Page::get(&daemon);
    assert!(
        page.churn == expected,
        "after settling: {}",
        describe(&page)
    );
    // Exactly ours on top of what was there, unless other processes on the
    // host started or stopped serving meanwhile (then the gauge is the page's).
    let tracked = page.gauge(TRACKED);
    assert!(
        tracked == tracked_before + N as u64 || tracked == page.pids.len() as u64,
        "tracked {tracked}, before {tracked_before}, processes in the page {}",
        page.pids.len()
    );
    assert_eq!(page.drop_count("process_map_full"), 0);

    let report = daemon.report();
    let nodes = report["Process"]["nodes"]
        .as_object()
        .expect("Process.nodes");
    let missing: Vec<_> = pids
        .iter()
        .filter(|pid| {
            nodes
                .get(&daemon.node_id(**pid))
                .and_then(|n| n["metrics"].get("http_requests_per_second"))
                .is_none()
        })
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {N} children have no node with http_requests_per_second in /report (e.g. {:?})",
        missing.len(),
        &missing[..missing.len().min(3)]
    );

    let cpu_before = cpu_time(daemon.pid());
    let (rmin, rmed, rmax, rbytes) = time_get(&daemon, "/report", 7);
    let (mmin, mmed, mmax, mbytes) = time_get(&daemon, "/metrics", 7);
    let cpu = cpu_time(daemon.pid()) - cpu_before;
    println!(
        "BENCH {N} live processes: GET /report {rbytes} bytes min {rmin:?} median {rmed:?} max {rmax:?}; \
         GET /metrics {mbytes} bytes min {mmin:?} median {mmed:?} max {mmax:?}; \
         daemon CPU {cpu:?} over those ~2.1 s"
    );
    assert!(
        rmax < SCOPE_BUDGET,
        "GET /report took {rmax:?} with {N} processes (Scope's budget: {SCOPE_BUDGET:?})"
    );

    let kill = Instant::now();
    churn.kill_children();
    println!("{N} children killed and reaped in {:?}", kill.elapsed());
    wait_all_gone(&daemon, &pids, tracked_before, kill);
}

#[test]
fn twenty_thousand_short_lived_processes_stay_within_the_table() {
    const TOTAL: usize = 20_000;
    const BATCH: usize = 200;
    const LIMIT: u64 = 4096;
    let _serial = serial();
    let dir = TempDir::new("churn-burst");
    let binary = build_churn(dir.path());
    let daemon = Daemon::start_args(&["--max-processes", &LIMIT.to_string()]);
    thread::sleep(Duration::from_millis(1100));
    let page = Page::get(&daemon);
    assert_eq!(page.gauge(TRACKED_LIMIT), LIMIT);
    let tracked_before = page.gauge(TRACKED);

    let stop = AtomicBool::new(false);
    let (pids, samples, churn_time) = thread::scope(|scope| {
        let sampler = scope.spawn(|| {
            let mut samples = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                samples.push(Page::get(&daemon).gauge(TRACKED));
                thread::sleep(Duration::from_millis(200));
            }
            samples
        });
        let start = Instant::now();
        let mut churn = Churn::start(&binary, &["burst", &TOTAL.to_string(), &BATCH.to_string()]);
        let mut pids = Vec::new();
        let done = churn.pids_until("done", &mut pids);
        let churn_time = start.elapsed();
        // One more snapshot after the last child exited.
        thread::sleep(Duration::from_millis(1200));
        stop.store(true, Ordering::SeqCst);
        let samples = sampler.join().expect("sampler");
        assert_eq!(done, "done 0", "children failed");
        (pids, samples, churn_time)
    });
    assert_eq!(pids.len(), TOTAL);
    let max = samples.iter().copied().max().unwrap_or(0);
    println!(
        "{TOTAL} short-lived children in {churn_time:?} ({BATCH} at a time); tracked processes \
         over {} samples: max {max} (before: {tracked_before})",
        samples.len()
    );
    assert!(
        max <= LIMIT,
        "tracked processes reached {max}, above --max-processes {LIMIT}"
    );
    let pids: BTreeSet<u32> = pids.into_iter().collect();
    wait_all_gone(&daemon, &pids, tracked_before, Instant::now());
    let page = Page::get(&daemon);
    assert_eq!(
        page.drop_count("process_map_full"),
        0,
        "buffers skipped for a full table, although at most {max} processes were tracked: {:?}",
        page.drops
    );
}

/// The request rate of `node_id` in a report, with the report's sample date.
fn node_rate(report: &Value, node_id: &str) -> Option<(String, f64)> {
    let sample = &report_node_metrics(report, node_id)?["http_requests_per_second"]["samples"][0];
    Some((
        sample["date"].as_str()?.to_string(),
        sample["value"].as_f64()?,
    ))
}

#[test]
fn a_reused_pid_starts_from_zero() {
    let _serial = serial();
    let dir = TempDir::new("churn-reuse");
    let binary = build_churn(dir.path());
    let daemon = Daemon::start();

    let mut a = Churn::start(&binary, &["serve", "5"]);
    let mut pids = Vec::new();
    a.pids_until("ready", &mut pids);
    let pid = pids[0];
    daemon.wait_for_counts("child A", pid, &PidCounts::expect(5, &[(200, 5)]));
    a.kill_children();
    drop(a);
    let gone = wait_until(EXIT_TIMEOUT, || !daemon.metrics().mentions_pid(pid));
    assert!(gone, "pid {pid} still in /metrics after A was killed");

    let stop = AtomicBool::new(false);
    let node = daemon.node_id(pid);
    let rates = thread::scope(|scope| {
        let sampler = scope.spawn(|| {
            let mut rates = BTreeMap::new();
            while !stop.load(Ordering::SeqCst) {
                if let Some((date, rate)) = node_rate(&daemon.report(), &node) {
                    rates.insert(date, rate);
                }
                thread::sleep(Duration::from_millis(100));
            }
            rates
        });
        let mut b = Churn::start(&binary, &["serve", "2", &pid.to_string()]);
        let mut pids = Vec::new();
        b.pids_until("ready", &mut pids);
        assert_eq!(pids, [pid], "child B did not get pid {pid}");
        daemon.wait_for_counts(
            "child B, on A's pid",
            pid,
            &PidCounts::expect(2, &[(200, 2)]),
        );
        stop.store(true, Ordering::SeqCst);
        let rates = sampler.join().expect("sampler");
        b.kill_children();
        rates
    });
    println!("request rates of pid {pid} (B) per snapshot: {rates:?}");
    let max = rates.values().copied().fold(0.0, f64::max);
    // B's two requests fall in one snapshot interval of about one second
    // (not exactly: the interval is measured, hence the 5 %).
    assert!(
        (max - 2.0).abs() <= 0.1,
        "highest request rate of pid {pid} was {max}/s, expected 2/s: {rates:?}"
    );
}

/// The programs of the probe: both hook paths, and the two they share.
const SOCKET_PROGRAMS: [&str; 4] = ["process_exit", "sock_recv", "sock_send", "socket_state"];
const SYSCALL_PROGRAMS: [&str; 11] = [
    "enter_read",
    "enter_readv",
    "enter_recvfrom",
    "enter_recvmsg",
    "enter_sendmsg",
    "enter_sendto",
    "enter_write",
    "enter_writev",
    "exit_socket_io",
    "process_exit",
    "socket_state",
];

/// Loaded programs named like ours, from `bpftool -j prog show`: id → name.
fn our_programs() -> BTreeMap<u64, String> {
    let output = Command::new("bpftool")
        .args(["-j", "prog", "show"])
        .output()
        .expect("run bpftool (apt-get install bpftool)");
    assert!(output.status.success(), "bpftool -j prog show failed");
    let progs: Value = serde_json::from_slice(&output.stdout).expect("bpftool JSON");
    progs
        .as_array()
        .expect("bpftool: an array")
        .iter()
        .filter_map(|p| {
            let name = p["name"].as_str()?;
            (SOCKET_PROGRAMS.contains(&name) || SYSCALL_PROGRAMS.contains(&name))
                .then(|| (p["id"].as_u64().unwrap(), name.to_string()))
        })
        .collect()
}

/// The BPF program ids each process holds (prog and link fds), from
/// /proc/*/fdinfo. (bpftool's "pids" would say the same, but Debian's
/// bpftool is built without skeletons and never prints it.)
fn program_holders() -> BTreeMap<u64, BTreeSet<u32>> {
    let mut holders: BTreeMap<u64, BTreeSet<u32>> = BTreeMap::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(fds) = fs::read_dir(entry.path().join("fdinfo")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(info) = fs::read_to_string(fd.path()) else {
                continue;
            };
            for line in info.lines() {
                if let Some(id) = line.strip_prefix("prog_id:") {
                    if let Ok(id) = id.trim().parse() {
                        holders.entry(id).or_default().insert(pid);
                    }
                }
            }
        }
    }
    holders
}

/// (programs named `name` loaded, those of them no live process holds).
/// Other daemons (other test runs) may come and go meanwhile; a program left
/// behind by a dead daemon is one that nobody holds.
fn programs_named(name: &str) -> (usize, usize) {
    let programs = our_programs();
    let holders = program_holders();
    let ids: Vec<u64> = programs
        .iter()
        .filter(|(_, n)| *n == name)
        .map(|(id, _)| *id)
        .collect();
    let unheld = ids.iter().filter(|id| !holders.contains_key(id)).count();
    (ids.len(), unheld)
}

/// Starts a daemon with `--hooks hooks`, checks it holds exactly `expected`,
/// SIGKILLs it and checks that all of them are unloaded within 2 s; returns
/// the daemon (dead, its socket left behind).
fn start_and_sigkill(hooks: &str, expected: &[&str], marker: &str) -> Daemon {
    let (marker_before, unheld_before) = programs_named(marker);
    // --tls off: this is about the hook path's programs; the kernel takes
    // ~250 ms per uprobe to unregister them at exit (tests/tls.rs checks
    // that a killed daemon's uprobes go too).
    let mut daemon = Daemon::start_args(&["--hooks", hooks, "--tls", "off"]);
    let pid = daemon.pid();
    let holders = program_holders();
    let mine: BTreeMap<u64, String> = our_programs()
        .into_iter()
        .filter(|(id, _)| holders.get(id).is_some_and(|p| p.contains(&pid)))
        .collect();
    let mut names: Vec<&str> = mine.values().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(
        names, expected,
        "--hooks {hooks}: programs held by the daemon (pid {pid})"
    );

    // SAFETY: kill(2) on the daemon this test started.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGKILL);
    }
    let killed = Instant::now();
    assert!(
        wait_until(Duration::from_secs(2), || daemon
            .try_exit_status()
            .is_some()),
        "the daemon did not die of SIGKILL"
    );
    let mut left = BTreeMap::new();
    let mut marker_now = (0, 0);
    let unloaded = wait_until(Duration::from_secs(2), || {
        let loaded = our_programs();
        left = mine
            .iter()
            .filter(|(id, _)| loaded.contains_key(id))
            .map(|(id, name)| (*id, name.clone()))
            .collect();
        marker_now = programs_named(marker);
        left.is_empty() && marker_now.1 == unheld_before
    });
    let unload_time = killed.elapsed();
    println!(
        "--hooks {hooks}: {} programs unloaded {unload_time:?} after SIGKILL; {marker} programs \
         loaded: {} (before the daemon: {marker_before}), held by no process: {} (before: {unheld_before})",
        mine.len(),
        marker_now.0,
        marker_now.1
    );
    assert!(
        unloaded,
        "--hooks {hooks}, {unload_time:?} after SIGKILL: programs of the daemon still loaded: \
         {left:?}; {marker} programs held by no process: {} (before the daemon: {unheld_before})",
        marker_now.1
    );
    daemon
}

#[test]
fn sigkill_unloads_the_probe_and_a_new_daemon_replaces_the_stale_socket() {
    let _serial = serial();
    for (hooks, expected, marker) in [
        ("syscalls", &SYSCALL_PROGRAMS[..], "exit_socket_io"),
        ("socket", &SOCKET_PROGRAMS[..], "sock_recv"),
    ] {
        let killed = start_and_sigkill(hooks, expected, marker);
        let socket = killed.socket.clone();
        let file_type = fs::symlink_metadata(&socket)
            .unwrap_or_else(|e| panic!("{} after SIGKILL: {e}", socket.display()))
            .file_type();
        assert!(
            file_type.is_socket(),
            "{} is not a socket",
            socket.display()
        );

        let second = Daemon::start_at(&socket);
        let report = second.report();
        assert_eq!(report["Plugins"][0]["id"], "http-statistics");
        assert!(
            second
                .log()
                .contains(&format!("replaced stale socket {}", socket.display())),
            "log of the second daemon:\n{}",
            second.log()
        );
        drop(second);
        drop(killed);
    }
}
