//! The Weave Scope plugin report at `GET /report`: its plugin entry, node
//! ids, metric templates, per-code rate metrics, sample shape, and what
//! happens to a process's node when it goes idle or exits.

mod common;

use std::collections::BTreeSet;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use common::*;

const TRACKED_CODES: [u16; 16] = [
    100, 200, 201, 202, 204, 308, 400, 401, 403, 404, 408, 451, 500, 501, 502, 503,
];
const REQUESTS_METRIC: &str = "http_requests_per_second";
const OTHERS_METRIC: &str = "http_OTHERS_responses_per_second";

fn code_metric(code: u16) -> String {
    format!("http_{code}_responses_per_second")
}

/// Parses an RFC 3339 UTC timestamp `YYYY-MM-DDTHH:MM:SS[.frac]Z` into
/// seconds since the epoch; None if it is not exactly that form.
fn parse_rfc3339_utc(date: &str) -> Option<f64> {
    let b = date.as_bytes();
    let digits = |range: std::ops::Range<usize>| -> Option<i64> {
        let s = date.get(range)?;
        s.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| s.parse().ok())?
    };
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (year, month, day) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
    let (hour, minute, second) = (digits(11..13)?, digits(14..16)?, digits(17..19)?);
    let rest = date.get(19..)?.strip_suffix('Z')?;
    let fraction = match rest.strip_prefix('.') {
        Some(f) if !f.is_empty() && f.bytes().all(|c| c.is_ascii_digit()) => {
            format!("0.{f}").parse().ok()?
        }
        None if rest.is_empty() => 0.0,
        _ => return None,
    };
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + hour * 3_600 + minute * 60 + second) as f64 + fraction)
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// The value of the last (latest) sample of a metric.
fn latest_value(metric: &Value) -> f64 {
    metric["samples"]
        .as_array()
        .and_then(|s| s.last())
        .and_then(|s| s["value"].as_f64())
        .unwrap_or_else(|| panic!("metric without a numeric last sample: {metric}"))
}

/// Checks one metric: at least one sample, RFC 3339 UTC dates close to now,
/// numeric values within [min, max].
fn assert_metric_well_formed(name: &str, metric: &Value) {
    let samples = metric["samples"]
        .as_array()
        .unwrap_or_else(|| panic!("{name}: no samples array: {metric}"));
    assert!(!samples.is_empty(), "{name}: empty samples (crashes Scope)");
    let min = metric["min"]
        .as_f64()
        .unwrap_or_else(|| panic!("{name}: no numeric min: {metric}"));
    let max = metric["max"]
        .as_f64()
        .unwrap_or_else(|| panic!("{name}: no numeric max: {metric}"));
    for sample in samples {
        let date = sample["date"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: date is not a string: {sample}"));
        let when = parse_rfc3339_utc(date).unwrap_or_else(|| {
            panic!("{name}: date {date:?} is not RFC 3339 UTC (YYYY-MM-DDTHH:MM:SS[.f]Z)")
        });
        assert!(
            (when - now_secs()).abs() < 120.0,
            "{name}: sample date {date} is not close to now"
        );
        let value = sample["value"]
            .as_f64()
            .unwrap_or_else(|| panic!("{name}: value is not a number: {sample}"));
        assert!(
            value >= 0.0 && min <= value && value <= max,
            "{name}: value {value} outside [min {min}, max {max}]"
        );
    }
}

/// One round of requests to the node server: every tracked code and two
/// unlisted ones (418, 299).
fn every_code_round(port: u16) {
    for code in [418, 299].into_iter().chain(TRACKED_CODES) {
        assert_eq!(http_get(port, &format!("/status/{code}")), code);
    }
}

#[test]
fn report_shows_every_tracked_code_and_others_while_traffic_flows() {
    let daemon = Daemon::start();
    let server = start_node();
    let node_id = daemon.node_id(server.pid);

    // Rates are only non-zero in the interval after traffic: keep a steady
    // stream of every code going while polling /report.
    let port = server.port;
    let traffic = TrafficLoop::start(move || every_code_round(port));

    let expected: BTreeSet<String> = TRACKED_CODES
        .iter()
        .map(|&c| code_metric(c))
        .chain([REQUESTS_METRIC.to_string(), OTHERS_METRIC.to_string()])
        // Every response answers a request it read: latency is measured too.
        .chain([
            "http_request_duration_p50_ms".to_string(),
            "http_request_duration_p99_ms".to_string(),
        ])
        .collect();
    let mut report = Value::Null;
    let shown = wait_until(Duration::from_secs(8), || {
        report = daemon.report();
        report_metric_names(&report, &node_id) == expected
    });
    let rounds = traffic.finish();
    let names = report_metric_names(&report, &node_id);
    assert!(
        shown,
        "node {node_id} never showed exactly the expected metrics while traffic flowed;\n\
         missing: {:?}\nunexpected: {:?}",
        expected.difference(&names).collect::<Vec<_>>(),
        names.difference(&expected).collect::<Vec<_>>()
    );

    let metrics = report_node_metrics(&report, &node_id).unwrap();
    let templates = &report["Process"]["metric_templates"];
    for name in &expected {
        // Traffic was flowing: every rate of this node is non-zero (rates
        // cannot be compared exactly; the totals are, below).
        assert_metric_well_formed(name, &metrics[name]);
        assert!(
            latest_value(&metrics[name]) > 0.0,
            "{name} rate is zero while traffic flows"
        );

        let template = &templates[name];
        assert_eq!(template["id"], json!(name), "template {name}: id");
        assert!(
            template["priority"].is_number(),
            "template {name}: priority {template}"
        );
    }
    assert_eq!(
        templates[REQUESTS_METRIC]["label"],
        json!("HTTP Req/Second")
    );
    assert_eq!(templates[REQUESTS_METRIC]["priority"], json!(0.1));
    for code in TRACKED_CODES {
        assert_eq!(
            templates[code_metric(code)]["label"],
            json!(format!("HTTP Resp {code} /Second"))
        );
    }
    assert_eq!(templates[code_metric(200)]["priority"], json!(0.2));
    assert_eq!(
        templates[OTHERS_METRIC]["label"],
        json!("HTTP Resp OTHERS /Second")
    );
    assert_eq!(templates[OTHERS_METRIC]["priority"], json!(1.0));

    // And the totals behind the rates are exact.
    let responses: Vec<(u16, u64)> = [418, 299]
        .into_iter()
        .chain(TRACKED_CODES)
        .map(|code| (code, rounds))
        .collect();
    daemon.wait_for_counts(
        &format!("node, {rounds} rounds of 18 codes"),
        server.pid,
        &PidCounts::expect(18 * rounds, &responses),
    );
}

#[test]
fn report_plugin_entry_id_follows_the_socket_name() {
    let daemon = Daemon::start_with("my-plugin.sock", "testhost");
    let response = daemon.request("GET", "/report");
    assert_eq!(response.status, 200);
    assert!(
        response
            .header("content-type")
            .is_some_and(|t| t.starts_with("application/json")),
        "Content-Type: {:?}",
        response.header("content-type")
    );
    let report = response.json();
    assert_eq!(
        report["Plugins"],
        json!([{
            "id": "my-plugin",
            "label": "HTTP Statistics",
            "description": "Adds http request metrics to processes",
            "interfaces": ["reporter"],
            "api_version": "1",
        }])
    );
    assert!(
        report["Process"]["nodes"].is_object(),
        "Process.nodes: {report}"
    );
    assert!(
        report["Process"]["metric_templates"].is_object(),
        "Process.metric_templates: {report}"
    );
}

#[test]
fn report_nodes_samples_and_templates_are_well_formed() {
    let daemon = Daemon::start();
    let server = start_python_http11();
    let node_id = daemon.node_id(server.pid);

    let port = server.port;
    let traffic = TrafficLoop::start(move || {
        assert_eq!(http_get(port, "/"), 200);
        assert_eq!(http_get(port, "/missing"), 404);
    });
    let mut report = Value::Null;
    let shown = wait_until(Duration::from_secs(6), || {
        report = daemon.report();
        let names = report_metric_names(&report, &node_id);
        names.contains(REQUESTS_METRIC)
            && names.contains(&code_metric(200))
            && names.contains(&code_metric(404))
    });
    let rounds = traffic.finish();
    assert!(
        shown,
        "node {node_id} did not show request, 200 and 404 rates: {report}"
    );

    // Every node in the report (the probe is host-wide: other tests' servers
    // may be there too) has a "<hostname>;<pid>" id and well-formed metrics,
    // and every metric has a template whose id is its key.
    let templates = report["Process"]["metric_templates"]
        .as_object()
        .expect("metric_templates object");
    for (key, template) in templates {
        assert_eq!(template["id"], json!(key), "template {key}");
        assert!(
            template["label"].as_str().is_some_and(|l| !l.is_empty()),
            "template {key}: label"
        );
        assert!(template["priority"].is_number(), "template {key}: priority");
    }
    let nodes = report["Process"]["nodes"]
        .as_object()
        .expect("nodes object");
    for (id, node) in nodes {
        let (host, pid) = id
            .split_once(';')
            .unwrap_or_else(|| panic!("node id {id:?}"));
        assert_eq!(host, "testhost", "node id {id:?} does not use --hostname");
        assert!(pid.parse::<u32>().is_ok(), "node id {id:?}: pid");
        let metrics = node["metrics"]
            .as_object()
            .unwrap_or_else(|| panic!("node {id}: {node}"));
        for (name, metric) in metrics {
            assert!(
                templates.contains_key(name),
                "node {id}: metric {name} has no template"
            );
            assert_metric_well_formed(name, metric);
        }
    }

    daemon.wait_for_counts(
        "python HTTP/1.1",
        server.pid,
        &PidCounts::expect(2 * rounds, &[(200, rounds), (404, rounds)]),
    );
}

#[test]
fn idle_server_keeps_only_its_request_rate_and_exited_server_disappears() {
    let daemon = Daemon::start();
    let mut server = start_python_http10();
    let node_id = daemon.node_id(server.pid);

    for _ in 0..3 {
        assert_eq!(http_get(server.port, "/"), 200);
    }
    daemon.wait_for_counts(
        "python HTTP/1.0",
        server.pid,
        &PidCounts::expect(3, &[(200, 3)]),
    );

    // wait_for_counts left more than a snapshot interval without traffic: the
    // live, idle process keeps its node with a zero request rate and no code
    // rates.
    let report = daemon.report();
    let metrics = report_node_metrics(&report, &node_id)
        .unwrap_or_else(|| panic!("live server {node_id} missing from /report: {report}"));
    assert_eq!(
        metrics.keys().cloned().collect::<Vec<_>>(),
        vec![REQUESTS_METRIC.to_string()],
        "metrics of an idle server"
    );
    assert_metric_well_formed(REQUESTS_METRIC, &metrics[REQUESTS_METRIC]);
    assert_eq!(
        latest_value(&metrics[REQUESTS_METRIC]),
        0.0,
        "request rate of an idle server"
    );

    // When it exits, its series and its node go away within ~3 s.
    let pid = server.pid;
    server.stop();
    assert!(!process_alive(pid));
    let started = Instant::now();
    let gone = wait_until(Duration::from_secs(3), || {
        !daemon.metrics().mentions_pid(pid)
            && report_node_metrics(&daemon.report(), &node_id).is_none()
    });
    assert!(
        gone,
        "exited server {pid} still in /metrics ({:?}) or /report after {:?}",
        daemon.metrics().counts_for(pid),
        started.elapsed()
    );
    // And it stays gone (no resurrection from a stale snapshot).
    thread::sleep(SETTLE);
    assert!(!daemon.metrics().mentions_pid(pid));
    assert!(report_node_metrics(&daemon.report(), &node_id).is_none());
}
