//! A raw client of the daemon's Unix socket, for tests that behave as
//! Scope, or as a hostile local client would: raw `UnixStream`s with
//! timeouts, so that a server that stalls makes a test fail, never hang, and
//! what the server answered and how it ended the connection told apart.

use std::io::{self, Cursor, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use super::client::{read_response, HttpResponse};

/// What Scope gives a plugin for one poll (connect plus the whole answer).
pub const SCOPE_BUDGET: Duration = Duration::from_millis(500);
/// A poll as Scope's probe sends it, on a kept-alive connection.
pub const SCOPE_POLL: &[u8] = b"GET /report?api_version=1&probe_id=x HTTP/1.1\r\nHost: plugin\r\n\
User-Agent: Scope_Probe/1.13.2\r\nAccept-Encoding: gzip\r\n\r\n";
/// The same poll on a connection of its own.
pub const SCOPE_POLL_CLOSE: &[u8] =
    b"GET /report?api_version=1&probe_id=x HTTP/1.1\r\nHost: plugin\r\n\
Connection: close\r\n\r\n";
/// A plain keep-alive request, for pipelining.
pub const GET_REPORT: &str = "GET /report HTTP/1.1\r\nHost: plugin\r\n\r\n";
pub const GET_METRICS: &str = "GET /metrics HTTP/1.1\r\nHost: plugin\r\n\r\n";

pub fn connect(socket: &Path) -> Result<UnixStream, String> {
    let stream =
        UnixStream::connect(socket).map_err(|e| format!("connect to {}: {e}", socket.display()))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    Ok(stream)
}

/// How the daemon ended a connection, as the client saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// read() returned 0.
    Eof,
    /// read() failed with ECONNRESET.
    Reset,
}

/// Reads until the daemon closes the connection, for at most `limit`.
/// Returns the bytes read and how the connection ended (Err: still open
/// after `limit`, or another read error).
pub fn read_until_closed(
    stream: &mut UnixStream,
    limit: Duration,
) -> (Vec<u8>, Result<Closed, String>) {
    let deadline = Instant::now() + limit;
    let mut bytes = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (bytes, Err(format!("still open after {limit:?}")));
        }
        if let Err(e) = stream.set_read_timeout(Some(left.max(Duration::from_millis(1)))) {
            return (bytes, Err(format!("set_read_timeout: {e}")));
        }
        match stream.read(&mut chunk) {
            Ok(0) => return (bytes, Ok(Closed::Eof)),
            Ok(n) => bytes.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                return (bytes, Ok(Closed::Reset))
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return (bytes, Err(format!("read failed: {e}"))),
        }
    }
}

/// The complete responses at the start of `bytes`, and how many bytes follow
/// them (a response cut short, or anything that is not a response).
pub fn parse_responses(bytes: &[u8]) -> (Vec<HttpResponse>, usize) {
    let mut cursor = Cursor::new(bytes);
    let mut responses = Vec::new();
    loop {
        let start = cursor.position() as usize;
        if start == bytes.len() {
            return (responses, 0);
        }
        match read_response(&mut cursor) {
            Ok(response) => responses.push(response),
            Err(_) => return (responses, bytes.len() - start),
        }
    }
}

/// The first line of `bytes`, for messages.
pub fn first_line(bytes: &[u8]) -> String {
    let end = bytes
        .windows(2)
        .position(|w| w == b"\r\n")
        .unwrap_or(bytes.len().min(80));
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// Checks that `bytes` hold exactly one whole response with `status` and
/// `Connection: close`, and that the daemon then closed the connection in
/// one of the ways in `ends`.
pub fn expect_refusal(
    what: &str,
    (bytes, closed): &(Vec<u8>, Result<Closed, String>),
    status: u16,
    ends: &[Closed],
) -> Result<(), String> {
    let (responses, trailing) = parse_responses(bytes);
    let statuses: Vec<u16> = responses.iter().map(|r| r.status).collect();
    if statuses != [status] || trailing != 0 {
        return Err(format!(
            "{what}: expected exactly one {status} response, got statuses {statuses:?} \
             (first line {:?}, {} bytes, {trailing} bytes after the last whole response)",
            first_line(bytes),
            bytes.len()
        ));
    }
    let connection = responses[0].header("connection").unwrap_or_default();
    if !connection.eq_ignore_ascii_case("close") {
        return Err(format!(
            "{what}: the {status} says Connection: {connection:?}, not close"
        ));
    }
    if !closed.as_ref().is_ok_and(|c| ends.contains(c)) {
        return Err(format!(
            "{what}: after the {status}, expected the connection to end with one of {ends:?}, \
             got {closed:?}"
        ));
    }
    Ok(())
}

/// Sends `payload` as a client that has a large request to send, without
/// ever blocking inside send(2): a send blocked when the daemon closes the
/// connection would take the socket's pending error (the ECONNRESET that
/// AF_UNIX reports when the daemon closes with bytes of ours unread) and hide
/// from the reader how the connection really ended. Waits with poll(2) while
/// the socket is full; stops when the daemon hangs up or refuses more. Never
/// shuts down its sending side (see
/// `a_request_followed_by_a_half_close_is_answered` in tests/server.rs).
pub fn send_without_blocking(stream: &UnixStream, payload: &[u8]) {
    let fd = stream.as_raw_fd();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut sent = 0;
    while sent < payload.len() && Instant::now() < deadline {
        let rest = &payload[sent..];
        // SAFETY: rest is a live buffer of rest.len() bytes; fd stays open.
        let n = unsafe {
            libc::send(
                fd,
                rest.as_ptr().cast(),
                rest.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n >= 0 {
            sent += n as usize;
            continue;
        }
        match io::Error::last_os_error().kind() {
            io::ErrorKind::WouldBlock => {
                let mut pollfd = libc::pollfd {
                    fd,
                    events: libc::POLLOUT,
                    revents: 0,
                };
                // SAFETY: one valid pollfd, on a socket that stays open.
                unsafe { libc::poll(&mut pollfd, 1, 100) };
                if pollfd.revents & (libc::POLLHUP | libc::POLLERR) != 0 {
                    return;
                }
            }
            io::ErrorKind::Interrupted => {}
            // EPIPE: the daemon has closed; nothing more to send.
            _ => return,
        }
    }
}

/// Sends `payload` from a second thread (it may be far larger than the
/// daemon accepts), waits without reading until the daemon has closed the
/// connection (at most `limit`), then reads what it answered and how the
/// connection ended. Reading only after the close makes that end
/// deterministic: ECONNRESET if the daemon closed with bytes of ours unread,
/// EOF if it did not (had it read, or drained, them).
pub fn send_and_read(
    socket: &Path,
    payload: &[u8],
    limit: Duration,
) -> Result<(Vec<u8>, Result<Closed, String>), String> {
    let mut stream = connect(socket)?;
    let writer = stream.try_clone().map_err(|e| e.to_string())?;
    thread::scope(|s| {
        s.spawn(move || send_without_blocking(&writer, payload));
        if wait_for_hangup(&stream, limit).is_none() {
            return Err(format!(
                "the daemon had not closed the connection after {limit:?}"
            ));
        }
        Ok(read_until_closed(&mut stream, Duration::from_secs(1)))
    })
}

/// `n` pipelined copies of `request`.
pub fn pipelined(request: &str, n: usize) -> Vec<u8> {
    request.repeat(n).into_bytes()
}

/// Waits, without reading, until the peer has closed `stream` (POLLHUP: both
/// directions shut, which a client's own shutdown of its reading side is not);
/// returns how long that took, or None after `limit`.
pub fn wait_for_hangup(stream: &UnixStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < limit {
        let mut fd = libc::pollfd {
            fd: stream.as_raw_fd(),
            events: 0,
            revents: 0,
        };
        // SAFETY: one valid pollfd, on a socket that stays open for the call.
        let ready = unsafe { libc::poll(&mut fd, 1, 20) };
        if ready > 0 && fd.revents & libc::POLLHUP != 0 {
            return Some(started.elapsed());
        }
    }
    None
}

/// `n` clients, one after the other, that send a Scope poll and will not
/// take the answer: each shuts its reading side first, so the server's
/// write fails with EPIPE (and raises SIGPIPE) for sure. Panics unless the
/// server hangs up on each within 2 s.
pub fn clients_that_shut_their_reading_side(socket: &Path, n: usize) {
    for i in 0..n {
        let mut client = connect(socket).unwrap();
        client.shutdown(std::net::Shutdown::Read).unwrap();
        client.write_all(SCOPE_POLL).unwrap();
        assert!(
            wait_for_hangup(&client, Duration::from_secs(2)).is_some(),
            "vanishing client #{i}: the server did not close the connection within 2 s"
        );
    }
}

/// Pseudo-random bytes (xorshift64*), the same on every run.
pub fn garbage(len: usize) -> Vec<u8> {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect()
}

/// Checks one poll's answer: a whole 200 with the plugin's report.
pub fn check_report(response: &HttpResponse) -> Result<(), String> {
    if response.status != 200 {
        return Err(format!("status {}", response.status));
    }
    let report: serde_json::Value = serde_json::from_slice(&response.body)
        .map_err(|e| format!("body is not JSON ({e}): {}", response.text()))?;
    if report["Plugins"][0]["id"] != "http-statistics" {
        return Err(format!("not the plugin's report: {report}"));
    }
    Ok(())
}
