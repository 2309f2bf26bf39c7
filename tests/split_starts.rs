//! Messages whose first bytes arrive in a transfer of their own (issue 14):
//! Go's net/http reads the first byte of the next keep-alive request alone
//! (`read(fd, "G", 1)`, then `read(fd, "ET / HTTP/1.1...", 4095)`), clients
//! and proxies split requests anywhere, servers split responses. Every
//! request and response must be counted exactly once, and every request
//! paired with its response for latency, whatever the split.
//!
//! Each test asserts on its own server's pid only (the probe sees the host).

mod common;
#[path = "common/go.rs"]
mod go;

use std::io::{BufReader, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::process::Command;
use std::thread;
use std::time::Duration;

use common::*;
use go::start_go_server;

const DURATION_COUNT: &str = "http_server_request_duration_seconds_count";

/// How long a client waits between the two parts of a split send, so that
/// the server reads the first part on its own.
const SPLIT_PAUSE: Duration = Duration::from_millis(80);

/// What /metrics says about a server: its counts, and how many of its
/// requests were paired with a response for latency.
#[derive(Debug, PartialEq)]
struct Observed {
    counts: PidCounts,
    latencies: u64,
}

fn observed(daemon: &Daemon, pid: u32) -> Observed {
    let metrics = daemon.metrics();
    let pid_text = pid.to_string();
    let latencies = metrics
        .series(DURATION_COUNT, &[("pid", pid_text.as_str())])
        .map(|(_, v)| v as u64)
        .sum();
    let mut counts = metrics.counts_for(pid);
    counts.comm = None;
    Observed { counts, latencies }
}

/// Waits until the server's counts are exactly `requests` requests answered
/// by `responses`, each request paired with its response, and stay so.
fn wait_for_observed(
    daemon: &Daemon,
    what: &str,
    pid: u32,
    requests: u64,
    responses: &[(u16, u64)],
) {
    let expected = Observed {
        counts: PidCounts::expect(requests, responses),
        latencies: requests,
    };
    let what = format!(
        "{what} (pid {pid}; probe drops now {:?})",
        daemon.metrics().drops()
    );
    wait_for_exact(&what, &expected, || observed(daemon, pid));
}

fn connect(port: u16) -> TcpStream {
    let stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port))
        .unwrap_or_else(|e| panic!("connect to 127.0.0.1:{port}: {e}"));
    stream.set_nodelay(true).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

/// Sends `bytes` in two writes, the first `split` bytes, then (after
/// [`SPLIT_PAUSE`]) the rest.
fn send_split(stream: &mut TcpStream, bytes: &[u8], split: usize) {
    stream.write_all(&bytes[..split]).unwrap();
    thread::sleep(SPLIT_PAUSE);
    stream.write_all(&bytes[split..]).unwrap();
}

/// Reads `n` responses from `reader`; returns their status codes.
fn read_statuses(reader: &mut BufReader<TcpStream>, n: usize) -> Vec<u16> {
    (0..n)
        .map(|i| {
            read_response(reader)
                .unwrap_or_else(|e| panic!("response #{}: {e}", i + 1))
                .status
        })
        .collect()
}

/// Where a request is cut in two sends: after its first byte (Go's case),
/// inside the method, and inside the request line past the method.
const SPLITS: [usize; 3] = [1, 3, 15];

const GET_INDEX: &str = "GET /index.html HTTP/1.1\r\nHost: x\r\n\r\n";
const GET_INDEX_CLOSE: &str = "GET /index.html HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";

#[test]
fn go_net_http_keep_alive_load_is_counted_exactly() {
    let daemon = Daemon::start();
    let server = start_go_server();
    const CLIENTS: usize = 4;
    const PER_CLIENT: usize = 150;

    // Every third request lingers in its handler after its response went
    // out: the client's next request then arrives while net/http's 1-byte
    // background read is pending, and is read "G" + "ET /...". The others
    // are answered at once (as under any keep-alive load).
    let port = server.port;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            thread::spawn(move || {
                let mut stream = connect(port);
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut statuses = Vec::new();
                for i in 0..PER_CLIENT {
                    let path = match i % 3 {
                        0 => "/linger/2",
                        1 => "/",
                        _ => "/status/404",
                    };
                    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
                    stream.write_all(request.as_bytes()).unwrap();
                    statuses.extend(read_statuses(&mut reader, 1));
                }
                statuses
            })
        })
        .collect();
    let mut statuses: Vec<u16> = Vec::new();
    for client in clients {
        statuses.extend(client.join().expect("a client thread failed"));
    }
    let total = (CLIENTS * PER_CLIENT) as u64;
    let not_found = statuses.iter().filter(|&&s| s == 404).count() as u64;
    assert_eq!(
        not_found,
        total / 3,
        "the Go server's answers: {statuses:?}"
    );
    assert_eq!(
        statuses.len() as u64,
        total,
        "Go server log:\n{}",
        server.server_log()
    );

    wait_for_observed(
        &daemon,
        "Go net/http, 4 keep-alive clients",
        server.pid,
        total,
        &[(200, total - not_found), (404, not_found)],
    );
}

/// A request cut in two sends, then a whole one on the same connection,
/// for each split of [`SPLITS`]; counts are cumulative over the rows.
fn split_requests_are_counted(server_pid: u32, port: u16) {
    let daemon = Daemon::start();
    for (row, &split) in SPLITS.iter().enumerate() {
        let mut stream = connect(port);
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        send_split(&mut stream, GET_INDEX.as_bytes(), split);
        assert_eq!(read_statuses(&mut reader, 1), vec![200]);
        stream.write_all(GET_INDEX.as_bytes()).unwrap();
        assert_eq!(read_statuses(&mut reader, 1), vec![200]);

        let n = 2 * (row as u64 + 1);
        wait_for_observed(
            &daemon,
            &format!("a request split after {split} bytes, then a whole one"),
            server_pid,
            n,
            &[(200, n)],
        );
    }
}

#[test]
fn a_request_split_after_1_3_and_15_bytes_is_counted_by_python() {
    let server = start_python_http11();
    split_requests_are_counted(server.pid, server.port);
}

#[test]
fn a_request_split_after_1_3_and_15_bytes_is_counted_by_go() {
    let server = start_go_server();
    split_requests_are_counted(server.pid, server.port);
}

#[test]
fn a_pipelined_batch_whose_second_request_is_split_is_counted() {
    let daemon = Daemon::start();
    let server = start_python_http11();
    // Three pipelined requests in two sends: the first send ends `split`
    // bytes into the second request. python reads the first send whole,
    // answers the first request, then reads the rest.
    let batch = format!("{GET_INDEX}{GET_INDEX}{GET_INDEX_CLOSE}");
    for (row, &split) in SPLITS.iter().enumerate() {
        let mut stream = connect(server.port);
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        send_split(&mut stream, batch.as_bytes(), GET_INDEX.len() + split);
        assert_eq!(read_statuses(&mut reader, 3), vec![200; 3]);

        let n = 3 * (row as u64 + 1);
        wait_for_observed(
            &daemon,
            &format!("3 pipelined requests, the second split after {split} bytes"),
            server.pid,
            n,
            &[(200, n)],
        );
    }
}

#[test]
fn a_response_split_after_1_3_and_15_bytes_is_counted() {
    let daemon = Daemon::start();
    let mut command = Command::new(python());
    command.args(["-u".as_ref(), fixture("response_splitter.py").as_os_str()]);
    let server =
        Server::spawn_printing_port(command, TempDir::new("splitter"), "the response splitter");
    for (row, &split) in SPLITS.iter().enumerate() {
        // A split response, then a whole one, on one connection.
        let mut stream = connect(server.port);
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let request = format!("GET /split/{split} HTTP/1.1\r\nHost: x\r\n\r\n");
        stream.write_all(request.as_bytes()).unwrap();
        assert_eq!(read_statuses(&mut reader, 1), vec![200]);
        stream
            .write_all(b"GET /whole HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        assert_eq!(read_statuses(&mut reader, 1), vec![200]);

        let n = 2 * (row as u64 + 1);
        wait_for_observed(
            &daemon,
            &format!("a response split after {split} bytes, then a whole one"),
            server.pid,
            n,
            &[(200, n)],
        );
    }
}
