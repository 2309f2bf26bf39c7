//! Test harness shared by the integration tests: starts the daemon on a
//! private Unix socket, starts real HTTP servers (python, nginx, node) on free
//! loopback ports, talks HTTP to both, and parses `/metrics` and `/report`.
//!
//! The probe counts host-wide, so every assertion is about the pid of a server
//! the test itself started; tests can therefore run in parallel, each with its
//! own daemon and servers. Everything a test starts is owned by a guard that
//! stops it on drop, also when the test panics.

// Each test file compiles this module on its own and uses only part of it.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

pub const DAEMON: &str = env!("CARGO_BIN_EXE_scope-http-statistics");

/// How long the daemon may take to load its probe and answer on its socket.
const DAEMON_START_TIMEOUT: Duration = Duration::from_secs(30);
/// Counters are snapshotted once a second; this leaves room for a slow snapshot.
pub const COUNT_TIMEOUT: Duration = Duration::from_secs(6);
/// After a value reached its expected value, how long it must stay there
/// (more than one snapshot interval, so over-counting shows up).
pub const SETTLE: Duration = Duration::from_millis(1500);
const POLL: Duration = Duration::from_millis(100);

// ---------------------------------------------------------------------------
// Preconditions and small utilities
// ---------------------------------------------------------------------------

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

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) has no memory-safety preconditions; pid is one we started.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// Sends SIGTERM, waits up to `grace`, then SIGKILLs; returns the exit status
/// if the process exited on its own.
fn terminate(child: &mut Child, grace: Duration) -> Option<std::process::ExitStatus> {
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

// ---------------------------------------------------------------------------
// HTTP/1.1 messages (client side)
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }
}

/// Reads one response: status line, headers, then a body delimited by
/// Content-Length, chunked transfer-encoding, or the end of the connection
/// (none for 1xx, 204 and 304).
pub fn read_response<R: BufRead>(reader: &mut R) -> io::Result<HttpResponse> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed before a response",
        ));
    }
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad status line {line:?}"),
            )
        })?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        let l = line.trim_end_matches(['\r', '\n']);
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let mut response = HttpResponse {
        status,
        headers,
        body: Vec::new(),
    };
    // 1xx, 204 and 304 responses never have a body.
    let bodiless = response.status < 200 || response.status == 204 || response.status == 304;
    let chunked = response
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    if bodiless {
        // Nothing to read.
    } else if chunked {
        loop {
            line.clear();
            reader.read_line(&mut line)?;
            let size_text = line.trim().split(';').next().unwrap_or("");
            let size = usize::from_str_radix(size_text, 16).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("bad chunk size {line:?}"),
                )
            })?;
            if size == 0 {
                // Trailers, up to the empty line.
                loop {
                    line.clear();
                    if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
                        break;
                    }
                }
                break;
            }
            let start = response.body.len();
            response.body.resize(start + size, 0);
            reader.read_exact(&mut response.body[start..])?;
            line.clear();
            reader.read_line(&mut line)?; // CRLF after the chunk
        }
    } else if let Some(len) = response.header("content-length") {
        let len: usize = len
            .parse()
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad content-length"))?;
        response.body.resize(len, 0);
        reader.read_exact(&mut response.body)?;
    } else {
        reader.read_to_end(&mut response.body)?;
    }
    Ok(response)
}

/// Status codes of the responses in `bytes` (everything a server sent on one
/// connection), in order; bodies are skipped by Content-Length or chunking.
/// Lets a test check, client side, that the server answered what it expects.
pub fn response_statuses(bytes: &[u8]) -> Vec<u16> {
    let mut reader = BufReader::new(bytes);
    let mut statuses = Vec::new();
    while !reader.fill_buf().unwrap().is_empty() {
        let response = read_response(&mut reader)
            .unwrap_or_else(|e| panic!("malformed response #{}: {e}", statuses.len() + 1));
        statuses.push(response.status);
    }
    statuses
}

/// Opens a TCP connection to 127.0.0.1:`port`, sends `request` in ONE write,
/// and returns everything the server sends until it closes the connection.
/// (Callers end their last request with `Connection: close`.)
pub fn tcp_exchange(port: u16, request: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port))
        .unwrap_or_else(|e| panic!("connect to 127.0.0.1:{port}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.set_nodelay(true).unwrap();
    // write_all on a small buffer is a single write(2) on a fresh socket.
    let written = stream.write(request).expect("write request");
    assert_eq!(written, request.len(), "request was not sent in one write");
    let mut reply = Vec::new();
    stream
        .read_to_end(&mut reply)
        .unwrap_or_else(|e| panic!("read reply from 127.0.0.1:{port}: {e}"));
    reply
}

/// `GET path` on a fresh connection (closed after the response); returns the status.
pub fn http_get(port: u16, path: &str) -> u16 {
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    let statuses = response_statuses(&tcp_exchange(port, request.as_bytes()));
    assert_eq!(
        statuses.len(),
        1,
        "GET {path}: expected one response, got {statuses:?}"
    );
    statuses[0]
}

/// Runs curl with `args`; panics unless it exits 0; returns its stdout.
pub fn curl(args: &[&str]) -> String {
    let output = Command::new("curl")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run curl (apt-get install curl)");
    assert!(
        output.status.success(),
        "curl {args:?} failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

// ---------------------------------------------------------------------------
// /metrics
// ---------------------------------------------------------------------------

pub type Labels = BTreeMap<String, String>;

/// A parsed Prometheus text exposition: value per (metric name, labels), plus
/// the `# TYPE` of each family.
#[derive(Debug, Default, Clone)]
pub struct Metrics {
    pub samples: BTreeMap<(String, Labels), f64>,
    pub types: BTreeMap<String, String>,
    pub helps: BTreeSet<String>,
}

pub const REQUESTS: &str = "http_server_requests_total";
pub const RESPONSES: &str = "http_server_responses_total";
pub const DROPS: &str = "scope_http_statistics_probe_drops_total";

impl Metrics {
    pub fn parse(text: &str) -> Metrics {
        let mut metrics = Metrics::default();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut parts = rest.split_whitespace();
                if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                    metrics.types.insert(name.to_string(), kind.to_string());
                }
                continue;
            }
            if let Some(rest) = line.strip_prefix("# HELP ") {
                if let Some(name) = rest.split_whitespace().next() {
                    metrics.helps.insert(name.to_string());
                }
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let (name_and_labels, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("malformed metrics line {line:?}"));
            let value: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("malformed value in metrics line {line:?}"));
            let (name, labels) = match name_and_labels.split_once('{') {
                Some((name, rest)) => {
                    let inner = rest
                        .strip_suffix('}')
                        .unwrap_or_else(|| panic!("malformed labels in {line:?}"));
                    (name, parse_labels(inner, line))
                }
                None => (name_and_labels, Labels::new()),
            };
            let key = (name.to_string(), labels);
            assert!(
                !metrics.samples.contains_key(&key),
                "duplicate series in /metrics: {line:?}"
            );
            metrics.samples.insert(key, value);
        }
        metrics
    }

    /// Every series of `name` whose labels include all of `filter`.
    pub fn series<'a>(
        &'a self,
        name: &'a str,
        filter: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = (&'a Labels, f64)> + 'a {
        self.samples
            .iter()
            .filter(move |((n, labels), _)| {
                n == name
                    && filter
                        .iter()
                        .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|((_, labels), value)| (labels, *value))
    }

    /// Everything the daemon says about `pid`, for exact comparison.
    pub fn counts_for(&self, pid: u32) -> PidCounts {
        let pid = pid.to_string();
        let filter = [("pid", pid.as_str())];
        let mut counts = PidCounts::default();
        for (labels, value) in self.series(REQUESTS, &filter) {
            assert!(
                counts.requests.is_none(),
                "two request series for pid {pid}"
            );
            counts.requests = Some(as_count(value));
            counts.comm = labels.get("comm").cloned();
        }
        for (labels, value) in self.series(RESPONSES, &filter) {
            let code = labels
                .get("code")
                .unwrap_or_else(|| panic!("response series without a code label: {labels:?}"));
            let previous = counts.responses.insert(code.clone(), as_count(value));
            assert!(previous.is_none(), "two series for pid {pid} code {code}");
            if counts.comm.is_none() {
                counts.comm = labels.get("comm").cloned();
            }
        }
        counts
    }

    /// Whether any series at all carries `pid="<pid>"`.
    pub fn mentions_pid(&self, pid: u32) -> bool {
        let pid = pid.to_string();
        self.samples
            .keys()
            .any(|(_, labels)| labels.get("pid") == Some(&pid))
    }

    /// The probe drop counters, by reason (for failure messages).
    pub fn drops(&self) -> BTreeMap<String, f64> {
        self.series(DROPS, &[])
            .map(|(labels, v)| (labels.get("reason").cloned().unwrap_or_default(), v))
            .collect()
    }
}

fn as_count(value: f64) -> u64 {
    assert!(
        value >= 0.0 && value.fract() == 0.0,
        "a counter is not a whole number: {value}"
    );
    value as u64
}

fn parse_labels(inner: &str, line: &str) -> Labels {
    let mut labels = Labels::new();
    let mut rest = inner;
    while !rest.is_empty() {
        let (key, after) = rest
            .split_once("=\"")
            .unwrap_or_else(|| panic!("malformed label in {line:?}"));
        // Values may contain escaped quotes and backslashes.
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, other)) => value.push(other),
                    None => break,
                },
                '"' => {
                    end = Some(i);
                    break;
                }
                c => value.push(c),
            }
        }
        let end = end.unwrap_or_else(|| panic!("unterminated label value in {line:?}"));
        labels.insert(key.trim().to_string(), value);
        rest = after[end + 1..].trim_start_matches(',').trim_start();
    }
    labels
}

/// The request and response counters of one process, as /metrics shows them.
/// `requests` is None when the process has no request line at all.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PidCounts {
    pub requests: Option<u64>,
    /// code (as the `code` label spells it) → responses
    pub responses: BTreeMap<String, u64>,
    /// The `comm` label; [`Daemon::counts_for`] clears it so that expected
    /// values need not spell it (tests check it separately).
    pub comm: Option<String>,
}

impl PidCounts {
    /// What a server that read `requests` requests and wrote `responses`
    /// (code, count) should show. Codes with count 0 are left out (no line).
    pub fn expect(requests: u64, responses: &[(u16, u64)]) -> PidCounts {
        PidCounts {
            requests: Some(requests),
            responses: responses
                .iter()
                .filter(|(_, n)| *n > 0)
                .map(|(code, n)| (code.to_string(), *n))
                .collect(),
            comm: None,
        }
    }

    /// Nothing at all: the pid must not appear in /metrics.
    pub fn nothing() -> PidCounts {
        PidCounts::default()
    }

    fn without_comm(mut self) -> PidCounts {
        self.comm = None;
        self
    }
}

// ---------------------------------------------------------------------------
// The daemon
// ---------------------------------------------------------------------------

/// A running daemon on a private socket; SIGTERMed (then killed) on drop.
pub struct Daemon {
    child: Child,
    pub socket: PathBuf,
    pub hostname: String,
    log: PathBuf,
    dir: TempDir,
}

/// `--hooks $SHS_HOOKS` unless the test chose a path itself: `make test`
/// runs every suite once per hook path (issue 9), with the same assertions.
fn hook_path_args(extra: &[&str]) -> Vec<String> {
    match std::env::var("SHS_HOOKS") {
        Ok(path) if !path.is_empty() && !extra.iter().any(|a| a.starts_with("--hooks")) => {
            vec!["--hooks".to_string(), path]
        }
        _ => Vec::new(),
    }
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

    fn spawn(dir: TempDir, socket: PathBuf, hostname: &str, extra: &[&str]) -> Daemon {
        require_root();
        let log = dir.path().join("daemon.log");
        let log_file = File::create(&log).unwrap();
        let child = Command::new(DAEMON)
            .arg("--socket")
            .arg(&socket)
            .args(["--hostname", hostname, "--log-level", "info"])
            .args(hook_path_args(extra))
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

// ---------------------------------------------------------------------------
// HTTP servers under test
// ---------------------------------------------------------------------------

/// A server process the test started; killed (with its children) on drop.
pub struct Server {
    child: Child,
    /// The process that reads requests and writes responses (for nginx the
    /// single worker; otherwise the process itself).
    pub pid: u32,
    pub port: u16,
    dir: TempDir,
}

impl Server {
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Stops the server (SIGTERM, then SIGKILL) and reaps it.
    pub fn stop(&mut self) {
        let workers = children_of(self.child.id());
        terminate(&mut self.child, Duration::from_secs(3));
        for pid in workers {
            signal(pid, libc::SIGKILL);
        }
    }

    pub fn server_log(&self) -> String {
        fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Spawns `command` (stdout piped, stderr to server.log) and reads the
    /// port it prints as its first line.
    fn spawn_printing_port(mut command: Command, dir: TempDir, what: &str) -> Server {
        let log = dir.path().join("server.log");
        let mut child = command
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("start {what}: {e}"));
        let mut first_line = String::new();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let _ = stdout.read_line(&mut first_line);
        let port = parse_port(&first_line).unwrap_or_else(|| {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{what} did not print its port (printed {first_line:?}); stderr:\n{}",
                fs::read_to_string(&log).unwrap_or_default()
            )
        });
        // Keep draining stdout so the server never blocks on a full pipe.
        thread::spawn(move || io::copy(&mut stdout, &mut io::sink()));
        let pid = child.id();
        Server {
            child,
            pid,
            port,
            dir,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The port in a line like "41234" or "Serving HTTP on 127.0.0.1 port 41234 (...)".
fn parse_port(line: &str) -> Option<u16> {
    let line = line.trim();
    if let Ok(port) = line.parse() {
        return Some(port);
    }
    let after = line.split(" port ").nth(1)?;
    after.split_whitespace().next()?.parse().ok()
}

/// Debian's python3 when present (the one on PATH may be a pyenv shim).
pub fn python() -> &'static str {
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

fn write_file(path: &Path, contents: &str) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    fs::write(path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// The body every static server serves at `/`.
pub const INDEX_HTML: &str = "<html><body>hello from the test server</body></html>\n";

/// `python3 -m http.server` as shipped: HTTP/1.0, one connection per request,
/// serving a directory that holds index.html.
pub fn start_python_http10() -> Server {
    let dir = TempDir::new("py10");
    write_file(&dir.path().join("www/index.html"), INDEX_HTML);
    let mut command = Command::new(python());
    command.args([
        "-u",
        "-m",
        "http.server",
        "0",
        "--bind",
        "127.0.0.1",
        "--directory",
        "www",
    ]);
    Server::spawn_printing_port(command, dir, "python3 -m http.server")
}

/// python's http.server with `protocol_version = "HTTP/1.1"`: keep-alive.
pub fn start_python_http11() -> Server {
    const SCRIPT: &str = r#"
import functools, http.server
class Handler(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(
    ("127.0.0.1", 0), functools.partial(Handler, directory="www"))
print(server.server_address[1], flush=True)
server.serve_forever()
"#;
    let dir = TempDir::new("py11");
    write_file(&dir.path().join("www/index.html"), INDEX_HTML);
    let mut command = Command::new(python());
    command.args(["-u", "-c", SCRIPT]);
    Server::spawn_printing_port(command, dir, "python HTTP/1.1 server")
}

/// A raw-socket python server that answers every request with a 200 whose
/// status line + headers go out in one send and the body in two later sends.
pub const SPLIT_BODY: &str = "hello, split world\n";

pub fn start_python_split_writer() -> Server {
    const SCRIPT: &str = r#"
import socket, sys, threading, time
body = sys.argv[1].encode()
def serve(conn):
    with conn:
        buf = b""
        while True:
            while b"\r\n\r\n" not in buf:
                data = conn.recv(4096)
                if not data:
                    return
                buf += data
            head, buf = buf.split(b"\r\n\r\n", 1)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % len(body))
            time.sleep(0.02)
            conn.sendall(body[:5])
            time.sleep(0.02)
            conn.sendall(body[5:])
            if b"connection: close" in head.lower():
                return
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", 0))
listener.listen(64)
print(listener.getsockname()[1], flush=True)
while True:
    conn, _ = listener.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"#;
    let dir = TempDir::new("pysplit");
    let mut command = Command::new(python());
    command.args(["-u", "-c", SCRIPT, SPLIT_BODY]);
    Server::spawn_printing_port(command, dir, "python split-write server")
}

/// A raw-socket python server that answers all the pipelined GETs it got in
/// one read with ONE write: a single `sendall` of all responses, or, for
/// requests to `/iov`, a single `sendmsg` whose iovecs are each response's
/// head and body (nginx, by contrast, writes one response per writev).
pub fn start_python_batching_writer() -> Server {
    const SCRIPT: &str = r#"
import socket, threading
body = b"batched\n"
head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % len(body)
def serve(conn):
    with conn:
        buf = b""
        while True:
            data = conn.recv(65536)
            if not data:
                return
            buf += data
            n = buf.count(b"\r\n\r\n")  # GETs without bodies only
            if n == 0:
                continue
            end = buf.rfind(b"\r\n\r\n") + 4
            batch, buf = buf[:end], buf[end:]
            if batch.startswith(b"GET /iov "):
                sent = conn.sendmsg([part for _ in range(n) for part in (head, body)])
                assert sent == n * (len(head) + len(body)), sent
            else:
                conn.sendall((head + body) * n)
            if b"connection: close" in batch.lower():
                return
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", 0))
listener.listen(64)
print(listener.getsockname()[1], flush=True)
while True:
    conn, _ = listener.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"#;
    let dir = TempDir::new("pybatch");
    let mut command = Command::new(python());
    command.args(["-u", "-c", SCRIPT]);
    Server::spawn_printing_port(command, dir, "python batching server")
}

/// `n` pipelined `GET path` requests; the last one asks the server to close
/// the connection, so the client can read until the end.
pub fn pipelined_gets(path: &str, n: usize) -> String {
    let mut requests = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").repeat(n - 1);
    requests.push_str(&format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    ));
    requests
}

/// node's http server:
/// - `/status/NNN`: answers with status NNN (no body);
/// - `/split`: head + first body byte, then the last byte 10 ms later;
/// - `/echo`: answers 200 with the request body as its body (Content-Length);
/// - `/delay/MS`: answers 200 after MS milliseconds;
/// - anything else (any method): reads the whole request body, answers 200
///   with `ok <body length>`.
pub fn start_node() -> Server {
    const SCRIPT: &str = r#"
const http = require('http');
const server = http.createServer((req, res) => {
  let m;
  if ((m = /^\/status\/(\d{3})$/.exec(req.url))) {
    res.writeHead(Number(m[1]));
    res.end();
  } else if (req.url === '/split') {
    res.writeHead(200, { 'Content-Type': 'text/plain', 'Content-Length': '2' });
    res.write('a');
    setTimeout(() => res.end('b'), 10);
  } else if (req.url === '/echo') {
    const chunks = [];
    req.on('data', (chunk) => chunks.push(chunk));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      res.writeHead(200, { 'Content-Type': 'text/plain', 'Content-Length': String(body.length) });
      res.end(body);
    });
  } else if ((m = /^\/delay\/(\d+)$/.exec(req.url))) {
    setTimeout(() => res.end('late'), Number(m[1]));
  } else {
    let length = 0;
    req.on('data', (chunk) => { length += chunk.length; });
    req.on('end', () => res.end('ok ' + length));
  }
});
server.listen(0, '127.0.0.1', () => console.log(server.address().port));
"#;
    let dir = TempDir::new("node");
    let mut command = Command::new("node");
    command.args(["-e", SCRIPT]);
    Server::spawn_printing_port(command, dir, "node http server")
}

/// nginx with one worker, in the foreground, on a private prefix and a free
/// port, serving index.html. `Server::pid` is the worker's pid.
pub fn start_nginx() -> Server {
    let dir = TempDir::new("nginx");
    let root = dir.path();
    write_file(&root.join("html/index.html"), INDEX_HTML);
    fs::create_dir_all(root.join("logs")).unwrap();
    // The port is only free until someone else takes it: retry on bind errors.
    for _attempt in 0..5 {
        let port = free_port();
        let config = format!(
            "worker_processes 1;\n\
             pid {root}/nginx.pid;\n\
             error_log {root}/logs/error.log warn;\n\
             events {{ worker_connections 128; }}\n\
             http {{\n\
               access_log off;\n\
               client_body_temp_path {root}/tmp_body;\n\
               proxy_temp_path {root}/tmp_proxy;\n\
               fastcgi_temp_path {root}/tmp_fastcgi;\n\
               uwsgi_temp_path {root}/tmp_uwsgi;\n\
               scgi_temp_path {root}/tmp_scgi;\n\
               server {{\n\
                 listen 127.0.0.1:{port};\n\
                 root {root}/html;\n\
                 location / {{ }}\n\
               }}\n\
             }}\n",
            root = root.display()
        );
        let config_path = root.join("nginx.conf");
        write_file(&config_path, &config);
        let mut child = Command::new("nginx")
            .arg("-p")
            .arg(root)
            .arg("-e")
            .arg(root.join("logs/error.log"))
            .arg("-c")
            .arg(&config_path)
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(root.join("server.log")).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("start nginx (apt-get install nginx): {e}"));
        let master = child.id();
        let mut workers = Vec::new();
        let started = wait_until(Duration::from_secs(5), || {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return true;
            }
            workers = children_of(master);
            workers.len() == 1
        });
        if let Ok(Some(_)) = child.try_wait() {
            let errors = fs::read_to_string(root.join("logs/error.log")).unwrap_or_default()
                + &fs::read_to_string(root.join("server.log")).unwrap_or_default();
            if errors.contains("Address already in use") {
                continue;
            }
            panic!("nginx exited at start-up:\n{errors}");
        }
        assert!(
            started,
            "nginx master {master} did not fork exactly one worker: {workers:?}"
        );
        return Server {
            child,
            pid: workers[0],
            port,
            dir,
        };
    }
    panic!("nginx could not bind a free port in 5 attempts");
}

/// A background loop that sends requests until stopped; counts what it sent
/// so the test can assert exact totals afterwards.
pub struct TrafficLoop {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: Option<thread::JoinHandle<u64>>,
}

impl TrafficLoop {
    /// Repeats `round` (one round of requests) until [`TrafficLoop::finish`].
    pub fn start(mut round: impl FnMut() + Send + 'static) -> TrafficLoop {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let handle = thread::spawn(move || {
            let mut rounds = 0;
            while !flag.load(Ordering::SeqCst) {
                round();
                rounds += 1;
                // Keep the rate modest: the probe is host-wide and tests run in parallel.
                thread::sleep(Duration::from_millis(20));
            }
            rounds
        });
        TrafficLoop {
            stop,
            handle: Some(handle),
        }
    }

    /// Stops the loop; returns how many complete rounds it ran.
    pub fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        self.handle
            .take()
            .unwrap()
            .join()
            .expect("the traffic thread panicked")
    }
}

impl Drop for TrafficLoop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

// ---------------------------------------------------------------------------
// Daemons expected to fail at start-up
// ---------------------------------------------------------------------------

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
