//! Exact request and response counts in /metrics for real servers (python's
//! http.server, nginx, node) driven by real clients (curl, raw sockets).
//!
//! Every test starts its own daemon and server and asserts on the server's
//! pid only (the probe sees the whole host). Counts are compared exactly, as
//! the whole set of series of the pid, so a missing, extra or wrongly coded
//! response fails the test.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::*;

/// The 16 status codes that have a metric of their own in /report.
const TRACKED_CODES: [u16; 16] = [
    100, 200, 201, 202, 204, 308, 400, 401, 403, 404, 408, 451, 500, 501, 502, 503,
];

/// curl arguments that fetch every URL in `urls` in one invocation (so over
/// one keep-alive connection), discarding bodies and printing per transfer
/// "<status> <new connections>".
fn curl_many(extra: &[&str], urls: &[String]) -> Vec<(u16, u32)> {
    let mut args: Vec<&str> = vec!["-s", "-w", "%{http_code} %{num_connects}\\n"];
    args.extend_from_slice(extra);
    for url in urls {
        args.extend_from_slice(&["-o", "/dev/null", url]);
    }
    curl(&args)
        .lines()
        .map(|line| {
            let (code, connects) = line.split_once(' ').expect("curl -w output");
            (code.parse().unwrap(), connects.parse().unwrap())
        })
        .collect()
}

#[test]
fn python_http11_keep_alive_counts_each_request_once() {
    let daemon = Daemon::start();
    let server = start_python_http11();

    // One curl invocation, seven URLs: curl reuses one connection, so the
    // server reads seven requests from the same socket.
    let urls = vec![server.url("/index.html"); 7];
    let transfers = curl_many(&[], &urls);
    assert_eq!(
        transfers.iter().map(|t| t.0).collect::<Vec<_>>(),
        vec![200; 7]
    );
    assert_eq!(
        transfers.iter().map(|t| t.1).sum::<u32>(),
        1,
        "curl should have opened a single keep-alive connection: {transfers:?}"
    );

    daemon.wait_for_counts(
        "python HTTP/1.1 keep-alive",
        server.pid,
        &PidCounts::expect(7, &[(200, 7)]),
    );
}

#[test]
fn python_http10_counts_requests_and_status_codes() {
    let daemon = Daemon::start();
    let server = start_python_http10();

    // HTTP/1.0 server: one connection per request. python writes the headers
    // and the body (file or error page) in separate writes.
    for _ in 0..5 {
        assert_eq!(http_get(server.port, "/"), 200);
    }
    for _ in 0..3 {
        assert_eq!(http_get(server.port, "/not/exist"), 404);
    }

    daemon.wait_for_counts(
        "python HTTP/1.0 (5 × 200, 3 × 404)",
        server.pid,
        &PidCounts::expect(8, &[(200, 5), (404, 3)]),
    );
}

/// Writes `n` GET requests in ONE write on one connection to nginx and checks
/// that all `n` requests and `n` responses are counted. nginx reads them all
/// in one read (nginx 1.22 then answers each with its own writev).
fn nginx_pipelined(n: usize) {
    let daemon = Daemon::start();
    let server = start_nginx();

    get_pipelined(server.port, "/", n);

    daemon.wait_for_counts(
        &format!("nginx, {n} pipelined requests"),
        server.pid,
        &PidCounts::expect(n as u64, &[(200, n as u64)]),
    );
    let metrics = daemon.metrics();
    assert_eq!(
        metrics.counts_for(server.pid).comm.as_deref(),
        Some(comm_of(server.pid).as_str()),
        "comm label of the nginx worker"
    );
    // The test process itself was the client: it wrote requests and read
    // responses, and must not be counted.
    assert_eq!(metrics.counts_for(std::process::id()), PidCounts::nothing());
}

#[test]
fn nginx_counts_8_pipelined_requests_sent_in_one_write() {
    nginx_pipelined(8);
}

#[test]
fn nginx_counts_10_pipelined_requests_sent_in_one_write() {
    nginx_pipelined(10);
}

#[test]
fn several_responses_in_one_write_are_each_counted() {
    let daemon = Daemon::start();
    let server = start_python_batching_writer();

    // 10 pipelined requests, answered by one send holding 10 responses.
    get_pipelined(server.port, "/", 10);
    // 4 pipelined requests, answered by one sendmsg of 8 iovecs (each
    // response's head and body in an iovec of its own).
    get_pipelined(server.port, "/iov", 4);

    daemon.wait_for_counts(
        "python, batched responses",
        server.pid,
        &PidCounts::expect(14, &[(200, 14)]),
    );
}

/// A ~100-byte form body, as `curl -d` sends it.
const FORM_BODY: &str =
    "name=scope-http-statistics&purpose=integration-test&payload=0123456789abcdefghijklmnopqrstuvwxyz0123";

#[test]
fn node_counts_curl_posts_with_a_body() {
    let daemon = Daemon::start();
    let server = start_node();
    assert!((90..=110).contains(&FORM_BODY.len()));

    // Three POSTs with a body over one keep-alive connection.
    let urls = vec![server.url("/submit"); 3];
    let transfers = curl_many(&["-d", FORM_BODY], &urls);
    assert_eq!(
        transfers.iter().map(|t| t.0).collect::<Vec<_>>(),
        vec![200; 3]
    );

    daemon.wait_for_counts(
        "node, 3 × curl -d",
        server.pid,
        &PidCounts::expect(3, &[(200, 3)]),
    );
    assert_eq!(
        daemon.metrics().counts_for(server.pid).comm,
        Some(comm_of(server.pid))
    );
}

#[test]
fn node_counts_a_post_body_followed_by_a_pipelined_get_in_one_write() {
    let daemon = Daemon::start();
    let server = start_node();

    // The probe must skip the body by its Content-Length to find the GET
    // that starts right after it in the same buffer.
    let request = format!(
        "POST /submit HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Content-Length: {}\r\n\r\n{FORM_BODY}\
         GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        FORM_BODY.len()
    );
    let reply = tcp_exchange(server.port, request.as_bytes());
    assert_eq!(response_statuses(&reply), vec![200, 200]);
    assert!(
        String::from_utf8_lossy(&reply).contains(&format!("ok {}", FORM_BODY.len())),
        "node did not receive the whole body"
    );

    daemon.wait_for_counts(
        "node, POST with body + pipelined GET",
        server.pid,
        &PidCounts::expect(2, &[(200, 2)]),
    );
}

#[test]
fn node_message_bodies_that_look_like_http_are_not_counted() {
    let daemon = Daemon::start();
    let server = start_node();

    // The request body holds a request line and the echoed response body a
    // status line; both lie inside a Content-Length body, so neither is a
    // message of its own. One request, one 200 (not a 500).
    let body = "GET /inside/the/body HTTP/1.1\r\nHost: y\r\n\r\nHTTP/1.1 500 Internal Server Error\r\n\r\n";
    let request = format!(
        "POST /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let reply = tcp_exchange(server.port, request.as_bytes());
    assert_eq!(response_statuses(&reply), vec![200]);

    daemon.wait_for_counts(
        "node, HTTP-looking request and response bodies",
        server.pid,
        &PidCounts::expect(1, &[(200, 1)]),
    );
}

#[test]
fn node_counts_every_tracked_and_unlisted_status_code_exactly() {
    let daemon = Daemon::start();
    let server = start_node();

    // Two unlisted codes first (so a server's first codes are not all listed
    // ones), then the 16 tracked ones; two rounds, so each code twice.
    let codes: Vec<u16> = [418, 299].into_iter().chain(TRACKED_CODES).collect();
    for _round in 0..2 {
        for &code in &codes {
            assert_eq!(http_get(server.port, &format!("/status/{code}")), code);
        }
    }

    let responses: Vec<(u16, u64)> = codes.iter().map(|&code| (code, 2)).collect();
    daemon.wait_for_counts(
        "node, 18 distinct status codes × 2",
        server.pid,
        &PidCounts::expect(2 * codes.len() as u64, &responses),
    );
}

#[test]
fn responses_written_in_several_writes_are_counted_once() {
    let daemon = Daemon::start();
    let python = start_python_split_writer();
    let node = start_node();

    // python: status line + headers in one send, the body in two later sends;
    // four requests over one keep-alive connection, then two on their own.
    let transfers = curl_many(&[], &vec![python.url("/"); 4]);
    assert_eq!(
        transfers.iter().map(|t| t.0).collect::<Vec<_>>(),
        vec![200; 4]
    );
    for _ in 0..2 {
        assert_eq!(http_get(python.port, "/"), 200);
    }
    // node: writeHead + write('a'), then end('b') 10 ms later.
    for _ in 0..3 {
        assert_eq!(http_get(node.port, "/split"), 200);
    }

    daemon.wait_for_counts(
        "python, body in later writes",
        python.pid,
        &PidCounts::expect(6, &[(200, 6)]),
    );
    daemon.wait_for_counts(
        "node, body in later writes",
        node.pid,
        &PidCounts::expect(3, &[(200, 3)]),
    );
}

/// Writes and reads HTTP-looking bytes 50 times through a file, a pipe, a
/// Unix socketpair and UDP (none of them TCP), prints "done", then stays
/// alive until its stdin closes.
const NON_TCP_SCRIPT: &str = r#"
import os, socket, sys
request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
response = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
path = sys.argv[1]
for _ in range(50):
    with open(path, "wb") as f:
        f.write(request)
        f.write(response)
    with open(path, "rb") as f:
        assert f.read() == request + response
    r, w = os.pipe()
    os.write(w, request); os.read(r, 4096)
    os.write(w, response); os.read(r, 4096)
    os.close(r); os.close(w)
    a, b = socket.socketpair()
    a.sendall(request); b.recv(4096)
    b.sendall(response); a.recv(4096)
    a.close(); b.close()
    u1 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u2 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u1.bind(("127.0.0.1", 0)); u2.bind(("127.0.0.1", 0))
    u2.sendto(request, u1.getsockname()); u1.recvfrom(4096)
    u1.sendto(response, u2.getsockname()); u2.recvfrom(4096)
    u1.close(); u2.close()
print("done", flush=True)
sys.stdin.read()
"#;

#[test]
fn http_bytes_through_files_pipes_unix_and_udp_sockets_are_not_counted() {
    let daemon = Daemon::start();
    let dir = TempDir::new("nontcp");
    let mut decoy = Command::new(python())
        .args(["-u", "-c", NON_TCP_SCRIPT])
        .arg(dir.path().join("http.txt"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start python");
    let mut line = String::new();
    BufReader::new(decoy.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "done", "the decoy script failed");

    // A positive control after the decoy traffic: once its count shows, the
    // snapshot is newer than everything the decoy did.
    let control = start_python_http10();
    assert_eq!(http_get(control.port, "/"), 200);
    daemon.wait_for_counts(
        "control server",
        control.pid,
        &PidCounts::expect(1, &[(200, 1)]),
    );

    let metrics = daemon.metrics();
    assert!(
        !metrics.mentions_pid(decoy.id()),
        "a process doing non-TCP I/O of HTTP-looking bytes was counted: {:?}",
        metrics.counts_for(decoy.id())
    );
    // The daemon itself reads HTTP requests and writes responses on its Unix
    // socket (all the /metrics polls above); that is not TCP either.
    assert!(
        !metrics.mentions_pid(daemon.pid()),
        "the daemon counted its own Unix-socket HTTP: {:?}",
        metrics.counts_for(daemon.pid())
    );

    drop(decoy.stdin.take());
    let _ = decoy.wait();
}

/// An HTTP/1.1 client that makes four GETs over one connection, prints
/// "done", then stays alive until its stdin closes.
const PYTHON_CLIENT: &str = r#"
import http.client, sys
conn = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]))
for _ in range(4):
    conn.request("GET", "/from-python-client")
    reply = conn.getresponse()
    reply.read()
    assert reply.status == 200, reply.status
print("done", flush=True)
sys.stdin.read()
"#;

#[test]
fn clients_are_not_counted_only_the_server() {
    let daemon = Daemon::start();
    let server = start_node();

    // curl: three quick GETs, then one the server answers only after 8 s, so
    // curl is still alive (and still has its counters, if any) while we look.
    let mut curl_args: Vec<String> = vec!["-s".into(), "--max-time".into(), "30".into()];
    for path in ["/a", "/b", "/c", "/delay/8000"] {
        curl_args.extend(["-o".into(), "/dev/null".into(), server.url(path)]);
    }
    let mut curl_client = Command::new("curl")
        .args(&curl_args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("start curl");

    let mut python_client = Command::new(python())
        .args(["-u", "-c", PYTHON_CLIENT, &server.port.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start python client");
    let mut line = String::new();
    BufReader::new(python_client.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "done", "the python client failed");

    // Server side: 4 (curl) + 4 (python) requests read, 3 + 4 responses
    // written (the delayed one is still pending).
    daemon.wait_for_counts(
        "node server",
        server.pid,
        &PidCounts::expect(8, &[(200, 7)]),
    );

    assert!(
        matches!(curl_client.try_wait(), Ok(None)),
        "curl should still be waiting for the delayed response"
    );
    let metrics = daemon.metrics();
    for (what, pid) in [
        ("curl", curl_client.id()),
        ("python http.client", python_client.id()),
        ("the test process", std::process::id()),
    ] {
        assert_eq!(
            metrics.counts_for(pid),
            PidCounts::nothing(),
            "client {what} (pid {pid}) must not be counted"
        );
    }

    let _ = curl_client.kill();
    let _ = curl_client.wait();
    drop(python_client.stdin.take()); // lets the client exit
    let _ = python_client.wait();
}
