//! The HTTP surface of the daemon's Unix socket: routing, methods, the
//! Prometheus exposition format, and polling the way Weave Scope does.

mod common;

use std::io::{BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use serde_json::json;

use common::*;

#[test]
fn unknown_paths_are_404_and_other_methods_405() {
    let daemon = Daemon::start();
    for path in ["/nope", "/", "/metrics/extra", "/reports"] {
        assert_eq!(daemon.request("GET", path).status, 404, "GET {path}");
    }
    for (method, path) in [
        ("POST", "/report"),
        ("PUT", "/report"),
        ("DELETE", "/report"),
        ("POST", "/metrics"),
    ] {
        assert_eq!(daemon.request(method, path).status, 405, "{method} {path}");
    }
    // Still serving after all that.
    assert_eq!(daemon.request("GET", "/report").status, 200);
}

#[test]
fn metrics_use_the_prometheus_text_format() {
    let daemon = Daemon::start();
    let server = start_python_http10();
    assert_eq!(http_get(server.port, "/"), 200);
    daemon.wait_for_counts(
        "python HTTP/1.0",
        server.pid,
        &PidCounts::expect(1, &[(200, 1)]),
    );

    let response = daemon.request("GET", "/metrics");
    assert_eq!(response.status, 200);
    let content_type = response
        .header("content-type")
        .unwrap_or_default()
        .to_string();
    assert!(
        content_type.starts_with("text/plain") && content_type.contains("version=0.0.4"),
        "Content-Type {content_type:?}"
    );
    let metrics = Metrics::parse(&response.text());
    for family in [REQUESTS, RESPONSES, DROPS] {
        assert_eq!(
            metrics.types.get(family).map(String::as_str),
            Some("counter"),
            "# TYPE of {family}"
        );
        assert!(metrics.helps.contains(family), "# HELP of {family}");
    }
    // Every drop counter carries a reason.
    let drops: Vec<_> = metrics.series(DROPS, &[]).collect();
    assert!(!drops.is_empty(), "no {DROPS} series");
    for (labels, _) in drops {
        assert!(
            labels.contains_key("reason"),
            "{DROPS} without reason: {labels:?}"
        );
    }

    // The server's series carry pid, comm (the kernel's comm) and code.
    let pid = server.pid.to_string();
    let expected_labels = |code: Option<&str>| {
        let mut labels = Labels::new();
        labels.insert("pid".into(), pid.clone());
        labels.insert("comm".into(), comm_of(server.pid));
        if let Some(code) = code {
            labels.insert("code".into(), code.into());
        }
        labels
    };
    assert_eq!(
        metrics
            .samples
            .get(&(REQUESTS.to_string(), expected_labels(None))),
        Some(&1.0)
    );
    assert_eq!(
        metrics
            .samples
            .get(&(RESPONSES.to_string(), expected_labels(Some("200")))),
        Some(&1.0)
    );
}

#[test]
fn report_answers_scope_style_polling_on_one_keep_alive_connection() {
    let daemon = Daemon::start();

    // Scope polls every second on one reused connection, with its query
    // parameters, and gives up on an answer slower than 500 ms.
    let stream = UnixStream::connect(&daemon.socket).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    for poll in 0..3 {
        let started = Instant::now();
        write!(
            writer,
            "GET /report?api_version=1&probe_id=abc HTTP/1.1\r\nHost: plugin\r\nUser-Agent: Scope_Probe/1.13\r\n\r\n"
        )
        .unwrap();
        let response = read_response(&mut reader)
            .unwrap_or_else(|e| panic!("poll {poll} on a kept-alive connection: {e}"));
        let elapsed = started.elapsed();
        assert_eq!(response.status, 200, "poll {poll}");
        assert!(
            elapsed < Duration::from_millis(500),
            "poll {poll} took {elapsed:?}"
        );
        let report = response.json();
        assert_eq!(
            report["Plugins"][0]["id"],
            json!("http-statistics"),
            "poll {poll}"
        );
        assert_eq!(
            report["Plugins"][0]["api_version"],
            json!("1"),
            "poll {poll}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
