//! Clients that hang up before the server read their request (issue 14):
//! with a reset (`SO_LINGER` 0), the socket's state goes to `TCP_CLOSE`
//! before the server's read delivers the request, so whatever that read
//! leaves in flight must still be removed. The in-flight gauge is host-wide:
//! the test starts from 0 on a quiet host and must end at exactly 0.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

const INFLIGHT: &str = "scope_http_statistics_inflight_requests";

/// "Within 3 s of the last close", plus one snapshot interval (the gauge is
/// read from a snapshot taken once a second).
const INFLIGHT_DEADLINE: Duration = Duration::from_secs(4);

fn inflight(daemon: &Daemon) -> Option<f64> {
    let metrics = daemon.metrics();
    let values: Vec<f64> = metrics.series(INFLIGHT, &[]).map(|(_, v)| v).collect();
    assert!(values.len() <= 1, "several {INFLIGHT} series: {values:?}");
    values.first().copied()
}

/// python's ThreadingHTTPServer (tests/fixtures/counting_threaded_server.py):
/// `GET /count` answers how many requests the handler was given before it.
fn start_threaded_server() -> Server {
    let mut command = Command::new(python());
    command.args([
        "-u".as_ref(),
        fixture("counting_threaded_server.py").as_os_str(),
    ]);
    Server::spawn_printing_port(
        command,
        TempDir::new("threaded"),
        "the threaded python server",
    )
}

/// How many requests the handler was given so far (this one excluded).
fn handled(server: &Server) -> u64 {
    let reply = tcp_exchange(
        server.port,
        b"GET /count HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    let text = String::from_utf8_lossy(&reply);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    body.trim()
        .parse()
        .unwrap_or_else(|_| panic!("GET /count answered {text:?}"))
}

/// Connects, sends one request and hangs up at once: with a reset
/// (`SO_LINGER` on, 0 s) or with an orderly close (FIN).
fn hang_up(port: u16, reset: bool) {
    let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port))
        .unwrap_or_else(|e| panic!("connect to 127.0.0.1:{port}: {e}"));
    stream.set_nodelay(true).unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    if reset {
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: setsockopt reads `linger` (a live, correctly sized struct)
        // on a socket this function owns.
        let rc = unsafe {
            libc::setsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&linger as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            )
        };
        assert_eq!(
            rc,
            0,
            "setsockopt(SO_LINGER): {}",
            std::io::Error::last_os_error()
        );
    } else {
        // Let the server read and answer; then close.
        let mut byte = [0u8; 1];
        let _ = stream.set_read_timeout(Some(Duration::from_millis(1)));
        let _ = stream.read(&mut byte);
    }
    drop(stream);
}

#[test]
fn two_thousand_hang_ups_leave_nothing_in_flight() {
    let daemon = Daemon::start();
    assert!(
        wait_until(INFLIGHT_DEADLINE, || inflight(&daemon) == Some(0.0)),
        "{INFLIGHT} is {:?} before the test: another HTTP server on the host has requests in flight",
        inflight(&daemon)
    );
    let server = start_threaded_server();

    // 4 clients x 500 hang-ups, alternating reset and orderly close.
    let port = server.port;
    let clients: Vec<_> = (0..4)
        .map(|_| {
            thread::spawn(move || {
                for i in 0..500 {
                    hang_up(port, i % 2 == 0);
                }
            })
        })
        .collect();
    for client in clients {
        client.join().expect("a client thread failed");
    }
    let last_close = Instant::now();

    let mut last = None;
    let drained = wait_until(INFLIGHT_DEADLINE, || {
        last = inflight(&daemon);
        last == Some(0.0)
    });
    assert!(
        drained,
        "{INFLIGHT} is {last:?} {:?} after the last of 2,000 hang-ups (expected 0 within 3 s); \
         probe drops {:?}",
        last_close.elapsed(),
        daemon.metrics().drops()
    );

    // Exactly the requests the server's handler was given were counted, and
    // the count request itself.
    let handled = handled(&server);
    let counts = observed_requests(&daemon, server.pid, handled + 1);
    assert_eq!(counts, Some(handled + 1), "requests counted for the server");
}

/// Waits (up to the count timeout) for `expected` requests of `pid`; returns
/// the last count seen.
fn observed_requests(daemon: &Daemon, pid: u32, expected: u64) -> Option<u64> {
    let mut last = None;
    wait_until(COUNT_TIMEOUT, || {
        last = daemon.counts_for(pid).requests;
        last == Some(expected)
    });
    last
}
