//! The socket worker (src/server.rs) as the library serves it, on a fixed
//! page table: no root, no probe. As hostile local clients would try it:
//!
//! - the socket's directory is 0700 and the socket 0600, both the server's
//!   user's, and a looser existing directory is tightened (once, logged);
//! - hostile clients (idle floods, slowloris, oversized and garbage requests,
//!   pipelining, a client that never reads) never stall a Scope-like poller;
//! - oversized bodies, chunked bodies, other HTTP versions, over-long request
//!   lines (414) and header fields (431) are refused;
//! - a request followed by a half-close is answered; clients that vanish
//!   (EPIPE) do not hurt.
//!
//! What needs the daemon itself (signals, start-up refusals, its open-files
//! limit) is in tests/hardening.rs. Every client here is a raw `UnixStream`
//! with timeouts (tests/common/unix_client.rs), so a server that stalls makes
//! a test fail, never hang.

mod common;

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Mutex, Once};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use scope_http_statistics::metrics::{self, DaemonFacts};
use scope_http_statistics::rates::{CounterSnapshot, ProcessRates};
use scope_http_statistics::server::{Page, PageSlot, SocketServer, Worker, MAX_CONNECTIONS};
use scope_http_statistics::{fd_budget, report};

/// The documented deadlines of the worker (src/server.rs).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Slack on those deadlines: the worker checks them every 100 ms, and the
/// machine is busy with the other tests.
const DEADLINE_SLACK: Duration = Duration::from_millis(2000);

// ---------------------------------------------------------------------------
// The fixture: the library's server on fixed pages, and its log
// ---------------------------------------------------------------------------

/// The pages the daemon serves, rendered by its own renderers from fixed
/// counters: a report of one busy process (~2.3 KiB with its head, so that
/// some 90 answers fill a Unix socket's 208 KiB and 200 pipelined ones
/// overflow it) and the metrics page of an empty snapshot.
fn fixed_pages() -> PageSlot {
    let rates = [ProcessRates {
        pid: 4242,
        requests_per_second: 12.5,
        responses_per_second: [(200, 10.0), (404, 2.0), (503, 0.5)].into(),
        total_requests: 125,
        latency_p50_ms: Some(1.5),
        latency_p99_ms: Some(9.0),
    }];
    let report = report::render(
        "http-statistics",
        "testhost",
        &rates,
        "2026-12-01T00:00:00.000000Z",
    );
    let facts = DaemonFacts {
        tracked_limit: 16384,
        hook_path: "socket",
        hook_reason: "fixed page for tests".to_string(),
        tls_libraries: 0,
    };
    let metrics = metrics::render(&CounterSnapshot::default(), 1_796_083_200.0, &facts);
    Arc::new(Mutex::new(vec![
        Page {
            path: "/report",
            content_type: "application/json",
            body: Arc::from(report.into_bytes()),
        },
        Page {
            path: "/metrics",
            content_type: metrics::CONTENT_TYPE,
            body: Arc::from(metrics.into_bytes()),
        },
    ]))
}

/// The library's socket server on [`fixed_pages`]; stopped (and its socket
/// removed) on drop.
struct Served {
    // Dropped before the directory.
    _server: SocketServer,
    socket: PathBuf,
    _dir: Option<TempDir>,
}

impl Served {
    /// Serves on `<fresh tmp dir>/plugins/http-statistics.sock`; `plugins`
    /// does not exist yet: the server creates it.
    fn start() -> Served {
        prepare_process();
        let dir = TempDir::new("served");
        let socket = dir.path().join("plugins").join("http-statistics.sock");
        let mut served = Served::start_at(&socket);
        served._dir = Some(dir);
        served
    }

    /// Serves on `socket`, a path the test prepared.
    fn start_at(socket: &Path) -> Served {
        prepare_process();
        let server = SocketServer::start(socket, fixed_pages(), MAX_CONNECTIONS)
            .unwrap_or_else(|e| panic!("serve on {}: {e}", socket.display()));
        Served {
            _server: server,
            socket: socket.to_path_buf(),
            _dir: None,
        }
    }

    fn request(&self, method: &str, target: &str) -> HttpResponse {
        request(&self.socket, method, target)
    }

    fn report(&self) -> serde_json::Value {
        let response = self.request("GET", "/report");
        assert_eq!(response.status, 200, "GET /report: {}", response.text());
        response.json()
    }
}

/// One request on a fresh connection; panics if nothing answers in 5 s.
fn request(socket: &Path, method: &str, target: &str) -> HttpResponse {
    let answer = (|| -> io::Result<HttpResponse> {
        let mut stream = UnixStream::connect(socket)?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            stream,
            "{method} {target} HTTP/1.1\r\nHost: plugin\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
        )?;
        read_response(&mut io::BufReader::new(stream))
    })();
    answer.unwrap_or_else(|e| panic!("{method} {target} on {}: {e}", socket.display()))
}

/// What this test process logged: (thread name, level, message).
static LOG: Mutex<Vec<(String, log::Level, String)>> = Mutex::new(Vec::new());

/// Keeps every log record in [`LOG`], as the daemon's logger would print it.
struct Capture;

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, record: &log::Record) {
        let thread = thread::current().name().unwrap_or_default().to_string();
        let line = (thread, record.level(), record.args().to_string());
        LOG.lock().unwrap_or_else(|p| p.into_inner()).push(line);
    }
    fn flush(&self) {}
}

/// Once per test process: captures the log, and raises the soft open-files
/// limit to the hard one as the daemon does, since here every connection
/// costs this process two descriptors, the client's and the server's.
fn prepare_process() {
    static PREPARED: Once = Once::new();
    PREPARED.call_once(|| {
        log::set_boxed_logger(Box::new(Capture)).unwrap();
        log::set_max_level(log::LevelFilter::Debug);
        fd_budget::raise_open_files_limit().unwrap();
    });
}

/// Log lines containing `needle`, from the thread named `thread` if given.
fn log_lines_with(thread: Option<&str>, needle: &str) -> usize {
    let log = LOG.lock().unwrap_or_else(|p| p.into_inner());
    log.iter()
        .filter(|(t, _, line)| thread.is_none_or(|name| t == name) && line.contains(needle))
        .count()
}

/// Everything logged at level ERROR, by any server of this process.
fn logged_errors() -> Vec<String> {
    let log = LOG.lock().unwrap_or_else(|p| p.into_inner());
    log.iter()
        .filter(|(_, level, _)| *level == log::Level::Error)
        .map(|(_, _, line)| line.clone())
        .collect()
}

// ---------------------------------------------------------------------------
// 1. The socket and its directory
// ---------------------------------------------------------------------------

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

fn assert_owned_mode(what: &str, path: &Path, mode: u32) -> fs::Metadata {
    let meta = fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{what}: stat {}: {e}", path.display()));
    assert_eq!(
        meta.mode() & 0o7777,
        mode,
        "{what}: mode of {} is {:o}",
        path.display(),
        meta.mode() & 0o7777
    );
    assert_eq!(meta.uid(), euid(), "{what}: owner of {}", path.display());
    meta
}

#[test]
fn the_socket_directory_is_0700_and_the_socket_0600_both_the_servers_users() {
    // A directory the server creates, and one of ours that exists with mode
    // 0755 (tightened at start-up).
    let existing = TempDir::new("mode755");
    let dir = existing.path().join("plugins");
    fs::create_dir(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    let created = Served::start();
    let tightened = Served::start_at(&dir.join("http-statistics.sock"));

    for (what, served) in [("created dir", &created), ("existing 0755 dir", &tightened)] {
        let dir = served.socket.parent().unwrap();
        let meta = assert_owned_mode(what, dir, 0o700);
        assert!(meta.is_dir(), "{what}: {:?}", meta.file_type());
        let meta = assert_owned_mode(what, &served.socket, 0o600);
        assert!(
            meta.file_type().is_socket(),
            "{what}: {:?}",
            meta.file_type()
        );
        assert_eq!(served.request("GET", "/report").status, 200, "{what}");
    }
    let line = format!(
        "socket directory {} had mode 755: set it to 0700",
        dir.display()
    );
    assert_eq!(log_lines_with(None, &line), 1, "log lines {line:?}");
}

// ---------------------------------------------------------------------------
// 2. Hostile clients never stall the report
// ---------------------------------------------------------------------------

const IDLE_CONNECTIONS: usize = 500;
const SLOWLORIS_CLIENTS: usize = 20;
const SLOWLORIS_BYTE_EVERY: Duration = Duration::from_millis(500);
/// 8 s of polls, one every [`POLL_EVERY`]: long enough for the slowloris
/// deadline and the non-reader's to pass while Scope polls.
const POLLS: u32 = 80;
const POLL_EVERY: Duration = Duration::from_millis(100);
const STALLED_PIPELINE: usize = 200;

/// What a Scope-like poller saw.
#[derive(Debug, Default)]
struct Polls {
    /// When every client was connected and the polls began.
    began: Option<Instant>,
    attempted: usize,
    ok: usize,
    max: Duration,
    failures: Vec<String>,
}

impl Polls {
    fn summary(&self) -> String {
        format!(
            "{} of {} polls answered 200 in time, slowest {} ms",
            self.ok,
            self.attempted,
            self.max.as_millis()
        )
    }
}

/// Polls like Scope, [`POLLS`] times, every [`POLL_EVERY`]: on one
/// kept-alive connection, or on a fresh connection per poll. Each poll's time
/// counts from the write of the request (or the connect) to the end of the
/// answer.
fn poll_like_scope(socket: &Path, keep_alive: bool, barrier: &Barrier) -> Polls {
    let mut polls = Polls::default();
    let mut kept = if keep_alive {
        Some(connect(socket).map(io::BufReader::new))
    } else {
        None
    };
    barrier.wait();
    let started = Instant::now();
    polls.began = Some(started);
    for i in 0..POLLS {
        thread::sleep((started + POLL_EVERY * i).saturating_duration_since(Instant::now()));
        polls.attempted += 1;
        let poll_started = Instant::now();
        let result = match &mut kept {
            Some(Ok(reader)) => reader
                .get_mut()
                .write_all(SCOPE_POLL)
                .map_err(|e| format!("write: {e}"))
                .and_then(|()| read_response(reader).map_err(|e| format!("read: {e}"))),
            Some(Err(e)) => Err(e.clone()),
            None => connect(socket).and_then(|mut stream| {
                stream
                    .write_all(SCOPE_POLL_CLOSE)
                    .map_err(|e| format!("write: {e}"))?;
                read_response(&mut io::BufReader::new(stream)).map_err(|e| format!("read: {e}"))
            }),
        };
        let took = poll_started.elapsed();
        polls.max = polls.max.max(took);
        let at = started.elapsed().as_millis();
        match result.and_then(|r| check_report(&r)) {
            Ok(()) if took < SCOPE_BUDGET => polls.ok += 1,
            Ok(()) => polls
                .failures
                .push(format!("poll at {at} ms took {} ms", took.as_millis())),
            Err(e) => {
                polls.failures.push(format!("poll at {at} ms: {e}"));
                if keep_alive {
                    // The connection is unusable now: a fresh one, as Scope would.
                    kept = Some(connect(socket).map(io::BufReader::new));
                }
            }
        }
    }
    polls
}

/// Sends a valid request one byte every 500 ms; returns how long after its
/// first byte the server closed the connection, and what it answered.
fn slowloris(socket: &Path, barrier: &Barrier) -> Result<(Duration, Vec<u8>, Closed), String> {
    let stream = connect(socket);
    barrier.wait();
    let mut stream = stream?;
    let request = SCOPE_POLL;
    stream
        .set_read_timeout(Some(SLOWLORIS_BYTE_EVERY))
        .map_err(|e| e.to_string())?;
    let started = Instant::now();
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    for &byte in request {
        if stream.write_all(&[byte]).is_err() {
            // Closed under us: read what it said before.
            break;
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Ok((started.elapsed(), answer, Closed::Eof)),
            Ok(n) => {
                answer.extend_from_slice(&chunk[..n]);
                break;
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                return Ok((started.elapsed(), answer, Closed::Reset))
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(format!("slowloris read: {e}")),
        }
        if started.elapsed() > REQUEST_TIMEOUT + DEADLINE_SLACK + Duration::from_secs(2) {
            return Err(format!(
                "still open {} ms after its first byte",
                started.elapsed().as_millis()
            ));
        }
    }
    let (rest, closed) = read_until_closed(&mut stream, Duration::from_secs(3));
    answer.extend_from_slice(&rest);
    Ok((started.elapsed(), answer, closed?))
}

/// Sends 200 pipelined GET /report in one write and never reads: the answers
/// fill the socket (an AF_UNIX stream is bounded by the server's send
/// buffer, ~208 KiB, which ~90 answers of the fixed report fill). Returns when, after the
/// write, the server hung up (seen without reading), and then what reading
/// found: the number of whole answers, and how the stream ended.
fn never_reads(socket: &Path, barrier: &Barrier) -> Result<(Duration, usize, Closed), String> {
    let stream = connect(socket);
    barrier.wait();
    let mut stream = stream?;
    stream
        .write_all(&pipelined(GET_REPORT, STALLED_PIPELINE))
        .map_err(|e| format!("write: {e}"))?;
    let hung_up = wait_for_hangup(&stream, Duration::from_secs(10)).ok_or_else(|| {
        "still open 10 s after the write, though nothing was read (expected a close ~5 s in)"
            .to_string()
    })?;
    let (bytes, closed) = read_until_closed(&mut stream, Duration::from_secs(10));
    let (responses, _) = parse_responses(&bytes);
    if let Some(bad) = responses.iter().find(|r| r.status != 200) {
        return Err(format!("an answer with status {}", bad.status));
    }
    Ok((hung_up, responses.len(), closed?))
}

/// Connects `n` clients that send nothing, then holds them until `done`;
/// returns how many were still open (nothing to read, no EOF) at the end.
fn idle_flood(
    socket: &Path,
    n: usize,
    barrier: &Barrier,
    done: &AtomicBool,
) -> Result<usize, String> {
    let streams: Result<Vec<UnixStream>, String> = (0..n).map(|_| connect(socket)).collect();
    barrier.wait();
    let streams = streams?;
    while !done.load(Ordering::SeqCst) {
        thread::sleep(Duration::from_millis(50));
    }
    let mut open = 0;
    for mut stream in streams {
        stream.set_nonblocking(true).map_err(|e| e.to_string())?;
        match stream.read(&mut [0u8; 16]) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => open += 1,
            _ => {}
        }
    }
    Ok(open)
}

/// A GET /report carrying a 100-byte body, then a second request on the same
/// connection (which proves the body was skipped, not taken as a request).
fn request_with_body(socket: &Path, barrier: &Barrier) -> Result<(), String> {
    let stream = connect(socket);
    barrier.wait();
    let mut reader = io::BufReader::new(stream?);
    let mut request =
        b"GET /report HTTP/1.1\r\nHost: plugin\r\nContent-Length: 100\r\n\r\n".to_vec();
    request.extend(vec![b'z'; 100]);
    reader
        .get_mut()
        .write_all(&request)
        .map_err(|e| e.to_string())?;
    let first = read_response(&mut reader).map_err(|e| format!("first answer: {e}"))?;
    check_report(&first).map_err(|e| format!("GET /report with a body: {e}"))?;
    reader
        .get_mut()
        .write_all(SCOPE_POLL_CLOSE)
        .map_err(|e| e.to_string())?;
    let second = read_response(&mut reader).map_err(|e| format!("second answer: {e}"))?;
    check_report(&second).map_err(|e| format!("the request after the body: {e}"))?;
    let (rest, closed) = read_until_closed(reader.get_mut(), Duration::from_secs(3));
    if !rest.is_empty() || closed != Ok(Closed::Eof) {
        return Err(format!(
            "after Connection: close, expected EOF, got {} more bytes and {closed:?}",
            rest.len()
        ));
    }
    Ok(())
}

/// `GET /metrics HTTP/1.0` without Host: a 200 with the metrics, then EOF.
fn http10_metrics(socket: &Path, barrier: &Barrier) -> Result<(), String> {
    let stream = connect(socket);
    barrier.wait();
    let mut stream = stream?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let (bytes, closed) = read_until_closed(&mut stream, Duration::from_secs(5));
    let (responses, trailing) = parse_responses(&bytes);
    let statuses: Vec<u16> = responses.iter().map(|r| r.status).collect();
    if statuses != [200] || trailing != 0 {
        return Err(format!(
            "expected one 200, got {statuses:?} and {trailing} trailing bytes ({:?})",
            first_line(&bytes)
        ));
    }
    if !responses[0]
        .text()
        .contains(&format!("# TYPE {DROPS} counter"))
    {
        return Err(format!("not the metrics page:\n{}", responses[0].text()));
    }
    if closed != Ok(Closed::Eof) {
        return Err(format!("expected EOF after the answer, got {closed:?}"));
    }
    Ok(())
}

/// 10 pipelined GET /report in one write (the last asks to close): 10
/// answers, in order (9 keep-alive, then close), then EOF.
fn pipelined_ten(socket: &Path, barrier: &Barrier) -> Result<(), String> {
    let stream = connect(socket);
    barrier.wait();
    let mut stream = stream?;
    let mut requests = pipelined(GET_REPORT, 9);
    requests.extend_from_slice(SCOPE_POLL_CLOSE);
    stream.write_all(&requests).map_err(|e| e.to_string())?;
    let (bytes, closed) = read_until_closed(&mut stream, Duration::from_secs(5));
    let (responses, trailing) = parse_responses(&bytes);
    let connection: Vec<String> = responses
        .iter()
        .map(|r| {
            r.header("connection")
                .unwrap_or_default()
                .to_ascii_lowercase()
        })
        .collect();
    let mut expected = vec!["keep-alive".to_string(); 9];
    expected.push("close".to_string());
    if connection != expected || trailing != 0 {
        return Err(format!(
            "expected 10 answers (9 keep-alive, then close), got Connection {connection:?} \
             and {trailing} trailing bytes"
        ));
    }
    for (i, response) in responses.iter().enumerate() {
        check_report(response).map_err(|e| format!("answer #{}: {e}", i + 1))?;
    }
    if closed != Ok(Closed::Eof) {
        return Err(format!(
            "expected EOF after the 10th answer, got {closed:?}"
        ));
    }
    Ok(())
}

/// Runs `f` once every client is ready.
fn after_barrier<T>(barrier: &Barrier, f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    barrier.wait();
    f()
}

#[test]
fn hostile_clients_never_stall_scope_polls() {
    let served = Served::start();
    let socket = served.socket.as_path();

    // A request line of 1 MB, 1 MB of headers, 64 KiB of random bytes.
    let mut long_line = b"GET /".to_vec();
    long_line.extend(vec![b'a'; 1 << 20]);
    let mut long_headers = b"GET /report HTTP/1.1\r\nHost: plugin\r\n".to_vec();
    for i in 0..1024 {
        long_headers.extend(format!("X-Filler-{i:04}: {}\r\n", "b".repeat(1000)).bytes());
    }
    long_headers.extend(b"\r\n");
    let random = garbage(64 * 1024);

    // Everyone connects, then all start at once.
    let big_clients = 3;
    let others = 5; // idle flood, body, HTTP/1.0, pipelined 10, non-reader
    let pollers = 2;
    let barrier = Barrier::new(SLOWLORIS_CLIENTS + big_clients + others + pollers);
    let done = AtomicBool::new(false);

    let started = Instant::now();
    thread::scope(|s| {
        let barrier = &barrier;
        let done = &done;
        let idle = s.spawn(move || idle_flood(socket, IDLE_CONNECTIONS, barrier, done));
        let slow: Vec<_> = (0..SLOWLORIS_CLIENTS)
            .map(|_| s.spawn(move || slowloris(socket, barrier)))
            .collect();
        let big: Vec<_> = [
            ("1 MB request line", &long_line, 414),
            ("1 MB of headers", &long_headers, 431),
            ("64 KiB of random bytes", &random, 400),
        ]
        .into_iter()
        .map(|(what, payload, status)| {
            s.spawn(move || {
                after_barrier(barrier, || {
                    send_and_read(socket, payload, Duration::from_secs(10))
                })
                .and_then(|answer| expect_refusal(what, &answer, status, &[Closed::Eof]))
            })
        })
        .collect();
        let body = s.spawn(move || request_with_body(socket, barrier));
        let http10 = s.spawn(move || http10_metrics(socket, barrier));
        let ten = s.spawn(move || pipelined_ten(socket, barrier));
        let stalled = s.spawn(move || never_reads(socket, barrier));
        let kept = s.spawn(move || poll_like_scope(socket, true, barrier));
        let fresh = s.spawn(move || poll_like_scope(socket, false, barrier));

        // The pollers end after 8 s; everything else must be over by then.
        let kept = kept.join().unwrap();
        let fresh = fresh.join().unwrap();
        done.store(true, Ordering::SeqCst);
        let idle = idle.join().unwrap();
        let slow: Vec<_> = slow.into_iter().map(|h| h.join().unwrap()).collect();
        let big: Vec<_> = big.into_iter().map(|h| h.join().unwrap()).collect();
        let body = body.join().unwrap();
        let http10 = http10.join().unwrap();
        let ten = ten.join().unwrap();
        let stalled = stalled.join().unwrap();

        let mut problems = Vec::new();
        let mut facts = Vec::new();
        if let Some(began) = kept.began {
            facts.push(format!(
                "all clients connected {} ms after the start",
                began.duration_since(started).as_millis()
            ));
        }
        for (what, polls) in [
            ("one kept-alive connection", &kept),
            ("a connection per poll", &fresh),
        ] {
            facts.push(format!("Scope poller on {what}: {}", polls.summary()));
            // Every one of the 80 polls a 200 within 500 ms.
            if polls.attempted != POLLS as usize
                || polls.ok != polls.attempted
                || polls.max >= SCOPE_BUDGET
            {
                problems.push(format!(
                    "Scope poller on {what}: {}; failures: {:?}",
                    polls.summary(),
                    polls.failures
                ));
            }
        }
        match idle {
            Ok(open) if open == IDLE_CONNECTIONS => {
                facts.push(format!("{open} idle connections still open at the end"))
            }
            other => problems.push(format!(
                "idle flood: expected {IDLE_CONNECTIONS} connections still open, got {other:?}"
            )),
        }
        // The server may also close without a word, and a byte sent just
        // before its close makes the end a reset rather than an EOF.
        let (mut with_408, mut first, mut last) = (0, Duration::MAX, Duration::ZERO);
        for (i, outcome) in slow.iter().enumerate() {
            match outcome {
                Ok((after, answer, closed)) => {
                    (first, last) = (first.min(*after), last.max(*after));
                    let in_time =
                        *after >= REQUEST_TIMEOUT && *after <= REQUEST_TIMEOUT + DEADLINE_SLACK;
                    let answer_ok = answer.is_empty()
                        || expect_refusal(
                            "slowloris",
                            &(answer.clone(), Ok(*closed)),
                            408,
                            &[Closed::Eof, Closed::Reset],
                        )
                        .is_ok();
                    with_408 += usize::from(!answer.is_empty());
                    if !in_time || !answer_ok {
                        problems.push(format!(
                            "slowloris #{i}: closed ({closed:?}) {} ms after its first byte \
                             (expected {}..={} ms) answering {:?}",
                            after.as_millis(),
                            REQUEST_TIMEOUT.as_millis(),
                            (REQUEST_TIMEOUT + DEADLINE_SLACK).as_millis(),
                            String::from_utf8_lossy(answer)
                        ));
                    }
                }
                Err(e) => problems.push(format!(
                    "slowloris #{i}: expected a 408 (or a close) ~5 s after its first byte: {e}"
                )),
            }
        }
        facts.push(format!(
            "{SLOWLORIS_CLIENTS} slowloris clients closed {}..{} ms after their first byte, \
             {with_408} of them with a 408",
            first.as_millis(),
            last.as_millis()
        ));
        for result in big.into_iter().chain([body, http10, ten]) {
            if let Err(e) = result {
                problems.push(e);
            }
        }
        match stalled {
            Ok((hung_up, answers, Closed::Eof))
                if hung_up >= WRITE_TIMEOUT
                    && hung_up <= WRITE_TIMEOUT + DEADLINE_SLACK
                    && answers < STALLED_PIPELINE =>
            {
                facts.push(format!(
                    "the client that never read was closed {} ms after its write, after {answers} answers",
                    hung_up.as_millis()
                ))
            }
            other => problems.push(format!(
                "the client that never read: expected a close {}..={} ms after its write with fewer \
                 than {STALLED_PIPELINE} answers then EOF, got (hung up after, whole answers, end) = {other:?}",
                WRITE_TIMEOUT.as_millis(),
                (WRITE_TIMEOUT + DEADLINE_SLACK).as_millis()
            )),
        }
        eprintln!(
            "hostile scenario ({} ms):\n  {}",
            started.elapsed().as_millis(),
            facts.join("\n  ")
        );
        assert!(
            problems.is_empty(),
            "under hostile clients:\n  {}\n(what held: {})",
            problems.join("\n  "),
            facts.join("; ")
        );
    });

    // Still serving, and nothing went wrong enough to log an error.
    assert_eq!(served.report()["Plugins"][0]["id"], "http-statistics");
    let errors = logged_errors();
    assert!(errors.is_empty(), "errors logged: {errors:?}");
}

// ---------------------------------------------------------------------------
// 3. Bodies, chunked encoding, other HTTP versions, over-long heads
// ---------------------------------------------------------------------------

#[test]
fn oversized_bodies_chunked_bodies_and_http2_are_refused_and_closed() {
    let served = Served::start();
    let socket = served.socket.clone();

    let mut too_large =
        b"GET /report HTTP/1.1\r\nHost: plugin\r\nContent-Length: 100000\r\n\r\n".to_vec();
    too_large.extend(vec![b'z'; 100_000]);
    // The 413 leaves most of the body unread in the server's socket: on
    // AF_UNIX, closing a socket with unread bytes makes the peer's next read
    // after the answer fail with ECONNRESET instead of returning 0 (which one
    // the client sees depends on whether it reads before or after the close).
    // The other two requests are read whole: a clean EOF.
    let cases: [(&str, Vec<u8>, u16, &[Closed]); 3] = [
        (
            "a 100000-byte body",
            too_large,
            413,
            &[Closed::Eof, Closed::Reset],
        ),
        (
            "Transfer-Encoding: chunked",
            b"GET /report HTTP/1.1\r\nHost: plugin\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
                .to_vec(),
            411,
            &[Closed::Eof],
        ),
        (
            "HTTP/2.0",
            b"GET /report HTTP/2.0\r\nHost: plugin\r\n\r\n".to_vec(),
            505,
            &[Closed::Eof],
        ),
    ];
    for (what, payload, status, ends) in cases {
        let answer = send_and_read(&socket, &payload, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        if let Err(e) = expect_refusal(what, &answer, status, ends) {
            panic!("{e}");
        }
    }
    // And it still serves.
    assert_eq!(served.report()["Plugins"][0]["id"], "http-statistics");
}

/// RFC 9112: a request-target longer than the server accepts is 414 (URI
/// Too Long); 431 is for header fields too large.
#[test]
fn over_long_request_lines_are_414_and_over_long_header_fields_431() {
    let served = Served::start();
    let request_line_of = |path_len: usize| {
        let mut request = format!("GET /{} HTTP/1.1\r\n", "a".repeat(path_len - 1)).into_bytes();
        request.extend(b"Host: plugin\r\n\r\n");
        request
    };
    let mut long_headers = b"GET /report HTTP/1.1\r\nHost: plugin\r\n".to_vec();
    long_headers.extend(format!("X-Filler: {}\r\n\r\n", "b".repeat(8 * 1024)).bytes());
    let cases: [(&str, Vec<u8>, u16); 3] = [
        ("an 8 KiB path", request_line_of(8 * 1024), 414),
        ("a 100 KB request line", request_line_of(100_000), 414),
        ("an 8 KiB header field", long_headers, 431),
    ];
    for (what, payload, status) in cases {
        let answer = send_and_read(&served.socket, &payload, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        if let Err(e) = expect_refusal(what, &answer, status, &[Closed::Eof]) {
            panic!("{e}");
        }
    }
    assert_eq!(served.report()["Plugins"][0]["id"], "http-statistics");
}

/// Not in the list of limits, but found while writing these tests: a client
/// that sends its request and at once shuts down its sending side (as
/// `nc -N`, socat or a shell `printf ... |` pipeline do) must still get its
/// answer, then EOF. 50 times, each a complete request in one write.
#[test]
fn a_request_followed_by_a_half_close_is_answered() {
    let served = Served::start();
    let mut unanswered = Vec::new();
    for i in 0..50 {
        let mut client = connect(&served.socket).unwrap();
        client.write_all(SCOPE_POLL_CLOSE).unwrap();
        client.shutdown(std::net::Shutdown::Write).unwrap();
        let (bytes, closed) = read_until_closed(&mut client, Duration::from_secs(5));
        let (responses, trailing) = parse_responses(&bytes);
        let statuses: Vec<u16> = responses.iter().map(|r| r.status).collect();
        if statuses != [200] || trailing != 0 || closed != Ok(Closed::Eof) {
            unanswered.push(format!("#{i}: statuses {statuses:?}, then {closed:?}"));
        }
    }
    assert!(
        unanswered.is_empty(),
        "{} of 50 requests followed by a half-close did not get one 200 then EOF: {:?}",
        unanswered.len(),
        unanswered
    );
}

// ---------------------------------------------------------------------------
// 4. Clients that vanish
// ---------------------------------------------------------------------------

#[test]
fn clients_that_vanish_do_not_hurt() {
    // A worker of its own, named, so that its log lines are told apart from
    // those of the other tests' servers in this process.
    prepare_process();
    let dir = TempDir::new("vanish");
    let socket = dir.path().join("http-statistics.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    listener.set_nonblocking(true).unwrap();
    let worker = Worker::start("vanish-worker", listener, fixed_pages(), MAX_CONNECTIONS).unwrap();
    let lines_with = |needle| log_lines_with(Some("vanish-worker"), needle);

    // 200 clients whose answers fail with EPIPE: the server must close each
    // connection and go on.
    let epipe = "client went away: Broken pipe (os error 32)";
    clients_that_shut_their_reading_side(&socket, 200);
    assert!(
        wait_until(Duration::from_secs(2), || lines_with(epipe) == 200),
        "expected 200 log lines {epipe:?}, got {}",
        lines_with(epipe)
    );

    // 200 that send the request and disconnect at once, and 200 that
    // disconnect in the middle of a large answer.
    for _ in 0..200 {
        let mut client = connect(&socket).unwrap();
        client.write_all(SCOPE_POLL).unwrap();
    }
    for _ in 0..200 {
        let mut client = connect(&socket).unwrap();
        client.write_all(&pipelined(GET_REPORT, 200)).unwrap();
        client.read_exact(&mut [0u8; 10]).unwrap();
    }

    let report = request(&socket, "GET", "/report");
    assert_eq!(report.status, 200, "{}", report.text());
    assert_eq!(report.json()["Plugins"][0]["id"], "http-statistics");
    assert_eq!(request(&socket, "GET", "/metrics").status, 200);
    drop(worker);
}
