//! The client side of HTTP/1.1 over TCP: reading responses, one-shot
//! exchanges, pipelined requests, curl, and background traffic (paced or
//! as fast as a round allows).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

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

/// `n` pipelined `GET path` requests; the last one asks the server to close
/// the connection, so the client can read until the end.
pub fn pipelined_gets(path: &str, n: usize) -> String {
    let mut requests = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").repeat(n - 1);
    requests.push_str(&format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    ));
    requests
}

/// Sends `n` pipelined `GET path` requests in ONE write on a fresh
/// connection; asserts that the client got `n` answers, all 200.
pub fn get_pipelined(port: u16, path: &str, n: usize) {
    let reply = tcp_exchange(port, pipelined_gets(path, n).as_bytes());
    assert_eq!(
        response_statuses(&reply),
        vec![200; n],
        "the answers to {n} pipelined GET {path} (client side)"
    );
}

/// Requests sent from a background thread until stopped, counted, so the
/// test can assert exact totals (and, when paced, rates) afterwards.
pub struct TrafficLoop {
    stop: Arc<AtomicBool>,
    handle: Option<thread::JoinHandle<u64>>,
}

impl TrafficLoop {
    /// Repeats `round` (one round of requests) until [`TrafficLoop::finish`],
    /// which returns how many complete rounds it ran.
    pub fn start(mut round: impl FnMut() + Send + 'static) -> TrafficLoop {
        TrafficLoop::spawn(move |stop| {
            let mut rounds = 0;
            while !stop.load(Ordering::SeqCst) {
                round();
                rounds += 1;
                // Keep the rate modest: the probe is host-wide and tests run in parallel.
                thread::sleep(Duration::from_millis(20));
            }
            rounds
        })
    }

    /// Calls `request` `per_second` times a second on a fixed schedule (late
    /// requests catch up, so the average rate holds) until
    /// [`TrafficLoop::finish`], which returns how many it made.
    pub fn paced(per_second: f64, mut request: impl FnMut() + Send + 'static) -> TrafficLoop {
        let period = Duration::from_secs_f64(1.0 / per_second);
        TrafficLoop::spawn(move |stop| {
            let started = Instant::now();
            let mut sent = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let due = started + period * sent as u32;
                let now = Instant::now();
                if due > now {
                    thread::sleep(due - now);
                    continue;
                }
                request();
                sent += 1;
            }
            sent
        })
    }

    /// Runs `body` on a thread of its own; `body` returns its count once the
    /// flag it is given is set.
    fn spawn(body: impl FnOnce(&AtomicBool) -> u64 + Send + 'static) -> TrafficLoop {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = thread::spawn(move || body(&flag));
        TrafficLoop {
            stop,
            handle: Some(handle),
        }
    }

    /// Stops the loop; returns its count (each request counted completed).
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
