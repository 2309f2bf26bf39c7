//! Hardening of the daemon itself, end to end, as root with the real probe:
//!
//! - a socket path under a symlink, a regular file or someone else's
//!   directory is refused (exit 1, one line) and the thing in the way is left
//!   untouched;
//! - SIGTERM/SIGINT mid-answer stop the daemon cleanly and quickly, SIGHUP is
//!   logged and ignored;
//! - under an open-files limit of 1024, 2,000 idle clients neither lock Scope
//!   out nor make the worker spin.
//!
//! The socket worker against hostile clients, and the socket's modes, are
//! tested without root on the library's server: tests/server.rs.

mod common;

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::ExitStatus;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// How fast SIGTERM/SIGINT must end the daemon.
const STOP_WITHIN: Duration = Duration::from_secs(2);

/// The uid and gid of `nobody`.
const NOBODY: u32 = 65534;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn send_signal(pid: u32, signal: libc::c_int) {
    // SAFETY: kill(2) has no memory-safety preconditions; pid is our child.
    let rc = unsafe { libc::kill(pid as libc::pid_t, signal) };
    assert_eq!(
        rc,
        0,
        "kill({pid}, {signal}): {}",
        io::Error::last_os_error()
    );
}

/// Sends `signal` to the daemon and waits up to `limit` for it to exit;
/// returns its exit status and how long it took (None: still running), and
/// when its socket file disappeared.
fn signal_and_wait(
    daemon: &mut Daemon,
    signal: libc::c_int,
    limit: Duration,
) -> (Option<(ExitStatus, Duration)>, Option<Duration>) {
    let started = Instant::now();
    send_signal(daemon.pid(), signal);
    let mut socket_gone = None;
    while started.elapsed() < limit {
        if socket_gone.is_none() && fs::symlink_metadata(&daemon.socket).is_err() {
            socket_gone = Some(started.elapsed());
        }
        if let Some(status) = daemon.try_exit_status() {
            return (Some((status, started.elapsed())), socket_gone);
        }
        thread::sleep(Duration::from_millis(5));
    }
    (None, socket_gone)
}

fn assert_no_file(what: &str, path: &Path) {
    let meta = fs::symlink_metadata(path);
    assert!(
        meta.is_err(),
        "{what}: {} exists ({:?})",
        path.display(),
        meta.map(|m| m.file_type())
    );
}

// ---------------------------------------------------------------------------
// 1. The socket path
// ---------------------------------------------------------------------------

/// Runs the daemon on `socket` to its exit (it should refuse the path).
fn run_daemon_to_exit(socket: &Path) -> Outcome {
    run_to_exit(daemon_at(socket))
}

/// Exit status 1, nothing on stdout, and exactly one line on stderr besides
/// the log lines: `scope-http-statistics: ...` holding every needle.
fn assert_refused(what: &str, outcome: &Outcome, needles: &[&str]) {
    assert_fails(what, outcome, 1, needles);
}

/// Names in a directory (it must stay empty).
fn entries(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn a_socket_directory_that_is_a_symlink_a_file_or_someone_elses_is_refused_and_left_alone() {
    require_root();
    let base = TempDir::new("refused");

    // A symlink to a real, root-owned 0755 directory.
    let target = base.path().join("real-dir");
    fs::create_dir(&target).unwrap();
    fs::set_permissions(&target, fs::Permissions::from_mode(0o755)).unwrap();
    let link = base.path().join("link");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let under_link = link.join("http-statistics.sock");

    // A regular file.
    let file = base.path().join("file");
    fs::write(&file, "a regular file\n").unwrap();
    fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
    let under_file = file.join("http-statistics.sock");

    // A 0755 directory that belongs to nobody.
    let theirs = base.path().join("nobodys");
    fs::create_dir(&theirs).unwrap();
    fs::set_permissions(&theirs, fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::chown(&theirs, Some(NOBODY), Some(NOBODY)).unwrap();
    let under_theirs = theirs.join("http-statistics.sock");

    let outcomes: Vec<Outcome> = thread::scope(|s| {
        let runs: Vec<_> = [&under_link, &under_file, &under_theirs]
            .into_iter()
            .map(|socket| s.spawn(move || run_daemon_to_exit(socket)))
            .collect();
        runs.into_iter().map(|h| h.join().unwrap()).collect()
    });

    // The symlink: refused, not followed: nothing created in the target,
    // whose mode stays 0755; the link is still the same link.
    let what = "socket directory is a symlink";
    assert_refused(
        what,
        &outcomes[0],
        &[&link.display().to_string(), "symlink"],
    );
    assert_no_file(what, &under_link);
    assert_eq!(
        entries(&target),
        Vec::<String>::new(),
        "{what}: created in the target"
    );
    let meta = fs::symlink_metadata(&target).unwrap();
    assert_eq!(
        meta.mode() & 0o7777,
        0o755,
        "{what}: the target was chmod-ed"
    );
    assert_eq!(meta.uid(), 0, "{what}: the target was chown-ed");
    assert!(
        fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink(),
        "{what}"
    );
    assert_eq!(
        fs::read_link(&link).unwrap(),
        target,
        "{what}: the link changed"
    );

    // The regular file: refused, contents and mode unchanged.
    let what = "socket directory is a regular file";
    assert_refused(
        what,
        &outcomes[1],
        &[&file.display().to_string(), "not a directory"],
    );
    assert_no_file(what, &under_file);
    assert_eq!(
        fs::read_to_string(&file).unwrap(),
        "a regular file\n",
        "{what}"
    );
    let meta = fs::symlink_metadata(&file).unwrap();
    assert!(meta.is_file(), "{what}: {:?}", meta.file_type());
    assert_eq!(meta.mode() & 0o7777, 0o644, "{what}: the file was chmod-ed");

    // Someone else's directory: refused, not chmod-ed, nothing created.
    let what = "socket directory belongs to uid 65534";
    assert_refused(
        what,
        &outcomes[2],
        &[&theirs.display().to_string(), "belongs to uid 65534"],
    );
    assert_no_file(what, &under_theirs);
    assert_eq!(
        entries(&theirs),
        Vec::<String>::new(),
        "{what}: created inside"
    );
    let meta = fs::symlink_metadata(&theirs).unwrap();
    assert_eq!(
        meta.mode() & 0o7777,
        0o755,
        "{what}: the directory was chmod-ed"
    );
    assert_eq!(
        (meta.uid(), meta.gid()),
        (NOBODY, NOBODY),
        "{what}: the directory was chown-ed"
    );
}

// ---------------------------------------------------------------------------
// 2. Signals
// ---------------------------------------------------------------------------

/// Starts a large answer (200 pipelined requests: far more than the socket
/// holds, so the worker has an answer pending), reads a few bytes of it, and
/// stops the daemon with `signal`: it must exit 0 within 2 s and remove its
/// socket; the client then sees the connection end.
fn stop_mid_answer(signal: libc::c_int, request: &str) {
    let mut daemon = Daemon::start();
    let socket = daemon.socket.clone();
    let mut client = connect(&socket).unwrap();
    client.write_all(&pipelined(request, 200)).unwrap();
    let mut start = [0u8; 16];
    client.read_exact(&mut start).unwrap();
    assert_eq!(&start, b"HTTP/1.1 200 OK\r", "the first answer");
    // Let the worker fill the socket and wait on it.
    thread::sleep(Duration::from_millis(200));

    let (exit, socket_gone) = signal_and_wait(&mut daemon, signal, Duration::from_secs(10));
    let (status, took) = exit.unwrap_or_else(|| {
        panic!(
            "the daemon was still running 10 s after signal {signal}; log:\n{}",
            daemon.log()
        )
    });
    eprintln!(
        "signal {signal} mid-answer: socket removed after {:?}, exit {status} after {} ms",
        socket_gone.map(|d| d.as_millis()),
        took.as_millis()
    );
    assert_eq!(status.code(), Some(0), "exit status after signal {signal}");
    assert!(
        took <= STOP_WITHIN,
        "signal {signal}: the daemon took {} ms to exit (limit {} ms; socket removed after {:?} ms)",
        took.as_millis(),
        STOP_WITHIN.as_millis(),
        socket_gone.map(|d| d.as_millis())
    );
    assert_no_file(&format!("after signal {signal}"), &socket);
    let log = daemon.log();
    assert_eq!(
        log.lines()
            .filter(|l| l.contains(&format!("stopping: removing {}", socket.display())))
            .count(),
        1,
        "log:\n{log}"
    );
    let (_, closed) = read_until_closed(&mut client, Duration::from_secs(5));
    assert!(
        closed.is_ok(),
        "the client's connection after the exit: {closed:?}"
    );
}

#[test]
fn sigterm_while_a_client_reads_a_large_answer_exits_0_within_2s_and_removes_the_socket() {
    stop_mid_answer(libc::SIGTERM, GET_METRICS);
}

#[test]
fn sigint_while_a_client_reads_a_large_answer_exits_0_within_2s_and_removes_the_socket() {
    stop_mid_answer(libc::SIGINT, GET_REPORT);
}

/// The lines of the daemon's log that contain `needle`.
fn log_lines_with(daemon: &Daemon, needle: &str) -> usize {
    daemon.log().lines().filter(|l| l.contains(needle)).count()
}

/// SIGHUP is logged and ignored. And the daemon, not only its worker,
/// survives clients that vanish: a write to one raises SIGPIPE, which must
/// not kill the process (the worker's side of it, EPIPE handling, is tested
/// in tests/server.rs).
#[test]
fn sighup_is_logged_and_ignored_and_sigpipe_does_not_kill_the_daemon() {
    let mut daemon = Daemon::start();
    let socket = daemon.socket.clone();

    send_signal(daemon.pid(), libc::SIGHUP);
    let logged = wait_until(Duration::from_secs(2), || {
        log_lines_with(&daemon, "SIGHUP") > 0
    });
    assert!(
        logged,
        "no log line about SIGHUP within 2 s; log:\n{}",
        daemon.log()
    );
    thread::sleep(Duration::from_millis(300));
    assert_eq!(
        log_lines_with(&daemon, "SIGHUP"),
        1,
        "log:\n{}",
        daemon.log()
    );
    assert_eq!(
        daemon.try_exit_status(),
        None,
        "the daemon exited on SIGHUP"
    );
    assert_eq!(daemon.report()["Plugins"][0]["id"], "http-statistics");

    // 200 clients whose answers raise SIGPIPE in the daemon.
    clients_that_shut_their_reading_side(&socket, 200);
    assert_eq!(
        daemon.try_exit_status(),
        None,
        "the daemon died of vanishing clients"
    );
    assert_eq!(daemon.report()["Plugins"][0]["id"], "http-statistics");
    assert_eq!(daemon.request("GET", "/metrics").status, 200);

    let (exit, _) = signal_and_wait(&mut daemon, libc::SIGTERM, Duration::from_secs(10));
    let (status, took) = exit.expect("the daemon was still running 10 s after SIGTERM");
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM ({} ms)",
        took.as_millis()
    );
    assert_no_file("after SIGTERM", &socket);
}

// ---------------------------------------------------------------------------
// 3. An open-files limit of 1024 and 2,000 idle clients
// ---------------------------------------------------------------------------

const IDLE_OVER_THE_LIMIT: usize = 2000;
/// Polls a Scope-like client makes while the idle clients hold on.
const LIMITED_POLLS: u32 = 10;

/// Raises this test process's soft open-files limit so that it can hold
/// `needed` descriptors (CI machines may start it at 1024).
fn allow_open_files(needed: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable rlimit for the call.
    assert_eq!(
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
        0
    );
    assert!(
        limit.rlim_max >= needed,
        "this test needs {needed} open files and the hard limit is {}",
        limit.rlim_max
    );
    if limit.rlim_cur < needed {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: a valid rlimit; raising the soft limit to the hard one
        // needs no privilege and affects only this process.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0);
    }
}

/// One Scope poll on a fresh connection: the answer and how long connect
/// plus answer took. Errors rather than hangs past 2 s.
fn poll_once(socket: &Path) -> Result<(HttpResponse, Duration), String> {
    let started = Instant::now();
    let mut stream = connect(socket)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(SCOPE_POLL_CLOSE)
        .map_err(|e| format!("write: {e}"))?;
    let response =
        read_response(&mut io::BufReader::new(stream)).map_err(|e| format!("read: {e}"))?;
    Ok((response, started.elapsed()))
}

/// The soft and hard "Max open files" of a process.
fn open_files_limits(pid: u32) -> (String, String) {
    let limits = fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap_or_else(|| panic!("no Max open files in /proc/{pid}/limits:\n{limits}"));
    let fields: Vec<&str> = line["Max open files".len()..].split_whitespace().collect();
    (fields[0].to_string(), fields[1].to_string())
}

/// CPU time (user + system, in clock ticks) of the thread of `pid` named
/// `name`.
fn thread_cpu_ticks(pid: u32, name: &str) -> u64 {
    for task in fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let path = task.path();
        if fs::read_to_string(path.join("comm")).is_ok_and(|c| c.trim_end() == name) {
            let stat = fs::read_to_string(path.join("stat")).unwrap();
            let after_comm: Vec<&str> = stat[stat.rfind(')').unwrap() + 1..]
                .split_whitespace()
                .collect();
            // After "(comm)": state is field 3 of stat(5), utime 14, stime 15.
            let (utime, stime): (u64, u64) = (
                after_comm[11].parse().unwrap(),
                after_comm[12].parse().unwrap(),
            );
            return utime + stime;
        }
    }
    panic!("pid {pid} has no thread named {name}");
}

/// Under `ulimit`, 2,000 clients connect and stay idle; meanwhile every one
/// of a Scope-like poller's polls, each on a fresh connection, is answered
/// 200 within 500 ms, and the worker does not spin (under half a core over
/// 2 s).
fn idle_clients_beyond_the_open_files_limit_do_not_lock_scope_out(
    ulimit: &str,
    expected_limits: (&str, &str),
) {
    allow_open_files(IDLE_OVER_THE_LIMIT as u64 + 512);
    let daemon = Daemon::start_after(ulimit);
    let limits = open_files_limits(daemon.pid());
    assert_eq!(
        (limits.0.as_str(), limits.1.as_str()),
        expected_limits,
        "the daemon's soft and hard open-files limits under {ulimit:?}"
    );

    // Connecting may block once the daemon stops accepting: from a thread,
    // with a deadline, so that the test fails rather than hangs.
    let (sender, receiver) = std::sync::mpsc::channel();
    let socket = daemon.socket.clone();
    thread::spawn(move || {
        let idle: Result<Vec<UnixStream>, String> = (0..IDLE_OVER_THE_LIMIT)
            .map(|i| UnixStream::connect(&socket).map_err(|e| format!("idle client #{i}: {e}")))
            .collect();
        let _ = sender.send(idle);
    });
    let idle = receiver
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| panic!("{IDLE_OVER_THE_LIMIT} clients could not connect within 30 s"))
        .unwrap_or_else(|e| panic!("{e}"));

    let mut failures = Vec::new();
    let mut slowest = Duration::ZERO;
    for i in 0..LIMITED_POLLS {
        thread::sleep(Duration::from_millis(100));
        match poll_once(&daemon.socket) {
            Ok((response, took)) => {
                slowest = slowest.max(took);
                if let Err(e) = check_report(&response) {
                    failures.push(format!("poll #{i}: {e}"));
                } else if took >= SCOPE_BUDGET {
                    failures.push(format!("poll #{i} took {} ms", took.as_millis()));
                }
            }
            Err(e) => failures.push(format!("poll #{i}: {e}")),
        }
    }
    let before = thread_cpu_ticks(daemon.pid(), "http-worker");
    thread::sleep(Duration::from_secs(2));
    let used = thread_cpu_ticks(daemon.pid(), "http-worker") - before;
    // SAFETY: sysconf has no preconditions.
    let ticks_per_second = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).unwrap();
    eprintln!(
        "under {ulimit:?} with {} idle clients: {} of {LIMITED_POLLS} polls answered in time \
         (slowest {} ms); the worker used {used} ticks of CPU in 2 s ({ticks_per_second}/s)",
        idle.len(),
        LIMITED_POLLS as usize - failures.len(),
        slowest.as_millis()
    );
    assert!(
        failures.is_empty(),
        "under {ulimit:?} with {IDLE_OVER_THE_LIMIT} idle clients, Scope's polls failed: \
         {failures:?}; log:\n{}",
        daemon.log()
    );
    assert!(
        used < ticks_per_second,
        "under {ulimit:?} with {IDLE_OVER_THE_LIMIT} idle clients the worker spins: \
         {used} ticks of CPU in 2 s ({ticks_per_second} ticks a second)"
    );
    drop(idle);
    let log = daemon.log();
    assert!(
        !log.contains("panicked") && !log.contains("ERROR"),
        "daemon log:\n{log}"
    );
}

#[test]
fn a_soft_open_files_limit_of_1024_is_raised_and_2000_idle_clients_do_not_lock_scope_out() {
    // systemd's default: soft 1024, hard 524288 (here, whatever the test has).
    let mut hard = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `hard` is a valid, writable rlimit for the call.
    assert_eq!(
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut hard) },
        0
    );
    let hard = hard.rlim_max.to_string();
    idle_clients_beyond_the_open_files_limit_do_not_lock_scope_out(
        "ulimit -Sn 1024",
        (&hard, &hard),
    );
}

#[test]
fn a_hard_open_files_limit_of_1024_caps_connections_below_it_and_2000_idle_clients_do_not_lock_scope_out(
) {
    idle_clients_beyond_the_open_files_limit_do_not_lock_scope_out(
        "ulimit -n 1024",
        ("1024", "1024"),
    );
}
