//! Processes and the file system: root check, temp dirs, free ports, polling
//! until a value holds, and reading /proc.

use std::fmt::Debug;
use std::fs;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Counters are snapshotted once a second; this leaves room for a slow snapshot.
pub const COUNT_TIMEOUT: Duration = Duration::from_secs(6);
/// After a value reached its expected value, how long it must stay there
/// (more than one snapshot interval, so over-counting shows up).
pub const SETTLE: Duration = Duration::from_millis(1500);
pub(super) const POLL: Duration = Duration::from_millis(100);

/// The daemon loads eBPF, which needs root: without it the tests would only
/// test a daemon that cannot start, so they fail loudly instead.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "these integration tests must run as root (the daemon loads an eBPF probe); \
         run them with sudo / as root"
    );
}

/// A directory under /tmp, unique per call, removed on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let path = PathBuf::from(format!(
            "/tmp/shs-test-{}-{}-{}-{tag}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst),
            nanos
        ));
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// Runs the tests that take it one at a time, for tests whose assertions
/// are host-wide (drop counters, the pid counter, load). Each test file is a
/// binary of its own, so this serializes the tests of one file only. A test
/// that panicked poisons the lock; the next one goes on regardless.
pub fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A loopback TCP port that was free a moment ago (only nginx needs one: the
/// python and node servers bind port 0 and print the port they got).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
    listener.local_addr().unwrap().port()
}

/// Polls `cond` until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(POLL);
    }
}

/// Waits until `current()` equals `expected` (the daemon answers from a
/// snapshot taken once a second), then waits [`SETTLE`] and checks that it is
/// STILL exactly `expected`: a value that keeps growing is over-counting.
pub fn wait_for_exact<T: PartialEq + Debug>(
    what: &str,
    expected: &T,
    mut current: impl FnMut() -> T,
) {
    let mut last = current();
    let reached = wait_until(COUNT_TIMEOUT, || {
        last = current();
        last == *expected
    });
    assert!(
        reached,
        "{what}: expected {expected:?} within {COUNT_TIMEOUT:?}, last observed {last:?}"
    );
    thread::sleep(SETTLE);
    let after = current();
    assert_eq!(
        &after, expected,
        "{what}: reached the expected value, but {SETTLE:?} later it is {after:?} (over-counting)"
    );
}

pub(super) fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) has no memory-safety preconditions; pid is one we started.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// Sends SIGTERM, waits up to `grace`, then SIGKILLs; returns the exit status
/// if the process exited on its own.
pub(super) fn terminate(child: &mut Child, grace: Duration) -> Option<std::process::ExitStatus> {
    if let Ok(Some(status)) = child.try_wait() {
        return Some(status);
    }
    signal(child.id(), libc::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

pub fn process_alive(pid: u32) -> bool {
    // A zombie still has a /proc entry; only count it alive if it is not one.
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat_fields_after_comm(&stat).first() != Some(&"Z"),
        Err(_) => false,
    }
}

/// The fields of /proc/PID/stat after the `(comm)` field (comm may hold spaces).
fn stat_fields_after_comm(stat: &str) -> Vec<&str> {
    match stat.rfind(')') {
        Some(i) => stat[i + 1..].split_whitespace().collect(),
        None => Vec::new(),
    }
}

/// Pids whose parent is `parent` (e.g. the workers of an nginx master).
pub fn children_of(parent: u32) -> Vec<u32> {
    let mut children = Vec::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return children;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // After "(comm)": state, ppid, ...
        if stat_fields_after_comm(&stat).get(1) == Some(&parent.to_string().as_str()) {
            children.push(pid);
        }
    }
    children.sort_unstable();
    children
}

/// The kernel's comm of a process, as the probe records it.
pub fn comm_of(pid: u32) -> String {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/comm: {e}"))
        .trim_end()
        .to_string()
}
