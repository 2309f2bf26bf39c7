//! The daemon under test: started on a private socket, asked for `/metrics`
//! and `/report` over it, stopped on drop; and daemons expected to fail at
//! start-up, run to their exit.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::client::{read_response, HttpResponse};
use super::process::{require_root, terminate, wait_for_exact, TempDir, POLL};
use super::prom::{Metrics, PidCounts};

pub const DAEMON: &str = env!("CARGO_BIN_EXE_scope-http-statistics");

/// How long the daemon may take to load its probe and answer on its socket.
const DAEMON_START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running daemon on a private socket; SIGTERMed (then killed) on drop.
pub struct Daemon {
    child: Child,
    pub socket: PathBuf,
    pub hostname: String,
    log: PathBuf,
    dir: TempDir,
}

/// `--hooks $SHS_HOOKS` and `--tls $SHS_TLS` unless the test chose them
/// itself: `make test` runs every suite once per hook path (issue 9), with
/// the same assertions; scripts/test-kernels.sh runs the plaintext suites
/// with `SHS_TLS=off` (see there why).
fn args_from_env(extra: &[&str]) -> Vec<String> {
    let mut args = Vec::new();
    for (var, option) in [("SHS_HOOKS", "--hooks"), ("SHS_TLS", "--tls")] {
        match std::env::var(var) {
            Ok(value) if !value.is_empty() && !extra.iter().any(|a| a.starts_with(option)) => {
                args.extend([option.to_string(), value]);
            }
            _ => {}
        }
    }
    args
}

impl Daemon {
    /// Starts the daemon with `--socket <tmp>/plugins/http-statistics.sock
    /// --hostname testhost`.
    pub fn start() -> Daemon {
        Daemon::start_with("http-statistics.sock", "testhost")
    }

    /// Starts the daemon serving on `<fresh tmp dir>/plugins/<socket_name>`; the
    /// `plugins` directory does not exist yet: the daemon must create it.
    pub fn start_with(socket_name: &str, hostname: &str) -> Daemon {
        let dir = TempDir::new("daemon");
        let socket = dir.path().join("plugins").join(socket_name);
        Daemon::spawn(dir, socket, hostname, &[])
    }

    /// Like [`Daemon::start`], with `extra` command-line arguments after the
    /// harness's own (e.g. `&["--max-processes", "1"]`).
    pub fn start_args(extra: &[&str]) -> Daemon {
        let dir = TempDir::new("daemon");
        let socket = dir.path().join("plugins").join("http-statistics.sock");
        Daemon::spawn(dir, socket, "testhost", extra)
    }

    /// Starts the daemon serving on `socket`, a path the test prepared (e.g.
    /// one where a stale socket lies); its log goes to a fresh tmp dir.
    pub fn start_at(socket: &Path) -> Daemon {
        Daemon::spawn(
            TempDir::new("daemon"),
            socket.to_path_buf(),
            "testhost",
            &[],
        )
    }

    /// Like [`Daemon::start`], started by `sh -c "<prelude> && exec <daemon>
    /// ..."`, as an init system would set a limit (e.g. `ulimit -Sn 1024`)
    /// before the daemon's first instruction. exec keeps the pid, so
    /// [`Daemon::pid`] is the daemon's.
    pub fn start_after(prelude: &str) -> Daemon {
        let dir = TempDir::new("daemon");
        let socket = dir.path().join("plugins").join("http-statistics.sock");
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(format!("{prelude} && exec \"$0\" \"$@\""))
            .arg(DAEMON);
        Daemon::spawn_command(command, dir, socket, "testhost", &[])
    }

    fn spawn(dir: TempDir, socket: PathBuf, hostname: &str, extra: &[&str]) -> Daemon {
        Daemon::spawn_command(Command::new(DAEMON), dir, socket, hostname, extra)
    }

    /// Runs `command` (the daemon, or what execs it) with the daemon's
    /// arguments; returns once the daemon answers on `socket`.
    fn spawn_command(
        mut command: Command,
        dir: TempDir,
        socket: PathBuf,
        hostname: &str,
        extra: &[&str],
    ) -> Daemon {
        require_root();
        let log = dir.path().join("daemon.log");
        let log_file = File::create(&log).unwrap();
        let child = command
            .arg("--socket")
            .arg(&socket)
            .args(["--hostname", hostname, "--log-level", "info"])
            .args(args_from_env(extra))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("start {DAEMON}: {e}"));
        let mut daemon = Daemon {
            child,
            socket,
            hostname: hostname.to_string(),
            log,
            dir,
        };
        daemon.wait_ready();
        daemon
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + DAEMON_START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "the daemon exited during start-up ({status}); its log:\n{}",
                    self.log()
                );
            }
            if self.socket.exists() {
                if let Ok(response) = self.try_request("GET", "/metrics") {
                    if response.status == 200 {
                        return;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not answer GET /metrics on {} within {DAEMON_START_TIMEOUT:?}; its log:\n{}",
                self.socket.display(),
                self.log()
            );
            thread::sleep(POLL);
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// What the daemon wrote to stdout/stderr so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn try_request(&self, method: &str, target: &str) -> io::Result<HttpResponse> {
        let mut stream = UnixStream::connect(&self.socket)?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            stream,
            "{method} {target} HTTP/1.1\r\nHost: plugin\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
        )?;
        read_response(&mut BufReader::new(stream))
    }

    /// One request on a fresh connection; panics if the daemon does not answer.
    pub fn request(&self, method: &str, target: &str) -> HttpResponse {
        self.try_request(method, target).unwrap_or_else(|e| {
            panic!(
                "{method} {target} on {}: {e}; daemon log:\n{}",
                self.socket.display(),
                self.log()
            )
        })
    }

    pub fn metrics(&self) -> Metrics {
        let response = self.request("GET", "/metrics");
        assert_eq!(response.status, 200, "GET /metrics: {}", response.text());
        Metrics::parse(&response.text())
    }

    pub fn report(&self) -> Value {
        let response = self.request("GET", "/report");
        assert_eq!(response.status, 200, "GET /report: {}", response.text());
        response.json()
    }

    pub fn counts_for(&self, pid: u32) -> PidCounts {
        self.metrics().counts_for(pid).without_comm()
    }

    /// [`wait_for_exact`] on everything /metrics says about `pid`.
    pub fn wait_for_counts(&self, what: &str, pid: u32, expected: &PidCounts) {
        let what = format!(
            "{what} (pid {pid}; probe drops now {:?})",
            self.metrics().drops()
        );
        wait_for_exact(&what, expected, || self.counts_for(pid));
    }

    /// The Scope node id of a process.
    pub fn node_id(&self, pid: u32) -> String {
        format!("{};{pid}", self.hostname)
    }

    /// The exit status if the daemon has exited, without waiting.
    pub fn try_exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGTERM; returns the exit status (None if it had to be killed).
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        terminate(&mut self.child, Duration::from_secs(5))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
        if thread::panicking() {
            eprintln!(
                "---- daemon log ({}) ----\n{}",
                self.socket.display(),
                self.log()
            );
        }
    }
}

/// The metrics of node `node_id` in a /report, if the node is there.
pub fn report_node_metrics<'a>(
    report: &'a Value,
    node_id: &str,
) -> Option<&'a serde_json::Map<String, Value>> {
    report
        .get("Process")?
        .get("nodes")?
        .get(node_id)?
        .get("metrics")?
        .as_object()
}

/// The names of the metrics of node `node_id` (empty if the node is absent).
pub fn report_metric_names(report: &Value, node_id: &str) -> BTreeSet<String> {
    report_node_metrics(report, node_id)
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

/// Loading the probe takes a few seconds; a daemon still running after this
/// long has started when it should have failed.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

/// How a daemon that was expected to fail ended.
pub struct Outcome {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `command` to its exit (stdout and stderr to files in a tmp dir);
/// kills it and panics if it is still running after [`EXIT_TIMEOUT`].
pub fn run_to_exit(mut command: Command) -> Outcome {
    let dir = TempDir::new("out");
    let (out, err) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut child = command
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out).unwrap())
        .stderr(fs::File::create(&err).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("run {command:?}: {e}"));
    let deadline = Instant::now() + EXIT_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{command:?} was still running after {EXIT_TIMEOUT:?} (it should have failed); \
                 stderr:\n{}",
                fs::read_to_string(&err).unwrap_or_default()
            );
        }
        thread::sleep(Duration::from_millis(50));
    };
    Outcome {
        status,
        stdout: fs::read_to_string(&out).unwrap(),
        stderr: fs::read_to_string(&err).unwrap(),
    }
}

/// The daemon serving on `socket` (as root).
pub fn daemon_at(socket: &Path) -> Command {
    let mut command = Command::new(DAEMON);
    command
        .arg("--socket")
        .arg(socket)
        .args(["--hostname", "testhost"]);
    command
}

/// Whether `line` is one of the logger's lines, which start with a UTC
/// timestamp such as `2026-01-31T12:34:56.789Z`.
pub fn is_log_line(line: &str) -> bool {
    let stamp = line.split(' ').next().unwrap_or_default().as_bytes();
    stamp.len() >= 20
        && stamp[..4].iter().all(u8::is_ascii_digit)
        && stamp[4] == b'-'
        && stamp[7] == b'-'
        && stamp[10] == b'T'
        && stamp.ends_with(b"Z")
}

/// The daemon exited with `code`, printed nothing on stdout, and printed
/// exactly one line on stderr besides its log lines:
/// `scope-http-statistics: <message>`, with every one of `needles` in it.
/// Returns that line.
pub fn assert_fails(what: &str, outcome: &Outcome, code: i32, needles: &[&str]) -> String {
    assert_eq!(
        outcome.status.code(),
        Some(code),
        "{what}: exit status ({}); stderr:\n{}",
        outcome.status,
        outcome.stderr
    );
    assert_eq!(outcome.stdout, "", "{what}: stdout");
    let plain: Vec<&str> = outcome
        .stderr
        .lines()
        .filter(|line| !is_log_line(line))
        .collect();
    assert_eq!(
        plain.len(),
        1,
        "{what}: expected one plain error line on stderr, got:\n{}",
        outcome.stderr
    );
    let line = plain[0];
    assert!(
        line.starts_with("scope-http-statistics: "),
        "{what}: the error line {line:?} does not name the program"
    );
    for needle in needles {
        assert!(
            line.contains(needle),
            "{what}: the error line {line:?} does not mention {needle:?}"
        );
    }
    line.to_string()
}
