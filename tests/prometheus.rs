//! `--metrics-address`, scraped by a real Prometheus under real traffic, and
//! the Grafana dashboard's queries run against what it scraped.

mod common;
#[path = "common/prometheus.rs"]
mod prometheus;

use std::collections::BTreeSet;
use std::io::{BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use common::*;
use prometheus::{unix_now, Prometheus, JOB};

/// Requests per second the server gets (from `CLIENTS` paced clients at
/// once), and for how long.
const RATE: f64 = 20.0;
const CLIENTS: u32 = 4;
const LOAD_SECONDS: u64 = 16;
/// What the handler of most requests does before answering (node's
/// `/delay/120`): p99 must land in the bucket that holds it, (0.1, 0.25];
/// well inside it, so that a loaded machine's scheduling delays (tens of
/// ms for the slowest 1 %) do not move it to the next.
const SLEEP_MS: u64 = 120;
/// The window of rate() in the checks; Grafana's `$__rate_interval` for a
/// 1 s scrape interval is 4 s at least, any window of a few scrapes works.
const WINDOW: &str = "10s";

/// A daemon with `--metrics-address`, a node server that got `sent` paced
/// requests (of each client's ten: eight `/delay/120`, one 404, one 500), and a
/// Prometheus that scraped the daemon every second meanwhile.
struct Scraped {
    // Dropped first: no failed scrapes of a daemon already gone.
    prometheus: Prometheus,
    server: Server,
    _daemon: Daemon,
    /// host:port Prometheus scrapes.
    target: String,
    sent: u64,
    /// Requests each client sent.
    per_client: Vec<u64>,
    /// A time (Unix s) whose `WINDOW` lies wholly inside the load.
    during_load: f64,
}

/// Responses the clients' loads got, by code, from what each sent.
fn expected_codes(per_client: &[u64]) -> [(u16, u64); 3] {
    let kind = |k: u64| -> u64 {
        per_client
            .iter()
            .map(|&sent| (0..sent).filter(|i| i % 10 == k).count() as u64)
            .sum()
    };
    let sent: u64 = per_client.iter().sum();
    [
        (200, sent - kind(8) - kind(9)),
        (404, kind(8)),
        (500, kind(9)),
    ]
}

fn scraped_traffic() -> Scraped {
    let port = free_port();
    let target = format!("127.0.0.1:{port}");
    let daemon = Daemon::start_args(&["--metrics-address", &target]);
    let server = start_node();
    let prometheus = Prometheus::start(std::slice::from_ref(&target));
    prometheus.wait_for_value(
        &format!("up{{job=\"{JOB}\"}}"),
        1.0,
        Duration::from_secs(30),
    );

    let server_port = server.port;
    let loads: Vec<TrafficLoop> = (0..CLIENTS)
        .map(|_| {
            let mut i = 0u64;
            TrafficLoop::paced(RATE / f64::from(CLIENTS), move || {
                let (path, status) = match i % 10 {
                    8 => ("/status/404".to_string(), 404),
                    9 => ("/status/500".to_string(), 500),
                    _ => (format!("/delay/{SLEEP_MS}"), 200),
                };
                assert_eq!(http_get(server_port, &path), status, "{path}");
                i += 1;
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(LOAD_SECONDS));
    let per_client: Vec<u64> = loads.into_iter().map(TrafficLoop::finish).collect();
    let during_load = unix_now() - 2.0;

    let sent = per_client.iter().sum();
    daemon.wait_for_counts(
        "node under paced load",
        server.pid,
        &PidCounts::expect(sent, &expected_codes(&per_client)),
    );
    Scraped {
        prometheus,
        server,
        _daemon: daemon,
        target,
        sent,
        per_client,
        during_load,
    }
}

#[test]
fn prometheus_scrapes_exact_counts_rates_and_latency() {
    let s = scraped_traffic();
    let p = &s.prometheus;
    let pid = s.server.pid;
    // Exact totals, once Prometheus has scraped the last snapshot.
    p.wait_for_value(
        &format!("http_server_requests_total{{pid=\"{pid}\"}}"),
        s.sent as f64,
        Duration::from_secs(10),
    );
    let now = unix_now();
    for (code, count) in expected_codes(&s.per_client) {
        assert_eq!(
            p.scalar(
                &format!("http_server_responses_total{{pid=\"{pid}\",code=\"{code}\"}}"),
                now
            ),
            count as f64,
            "responses {code}"
        );
    }
    // The load's rate, seen by rate() over a window inside the load.
    let rate = p.scalar(
        &format!("rate(http_server_requests_total{{pid=\"{pid}\"}}[{WINDOW}])"),
        s.during_load,
    );
    assert!(
        (rate - RATE).abs() <= RATE * 0.1,
        "rate() {rate}/s, the load was {RATE}/s"
    );
    // p99 in the bucket that holds the handler's sleep.
    let p99 = p.scalar(
        &format!(
            "histogram_quantile(0.99, sum by (le) \
             (rate(http_server_request_duration_seconds_bucket{{pid=\"{pid}\"}}[{WINDOW}])))"
        ),
        s.during_load,
    );
    assert!(
        p99 > 0.1 && p99 <= 0.25,
        "p99 {p99} s is not in the bucket of the handler's {SLEEP_MS} ms sleep, (0.1, 0.25]"
    );
    // The target is up, with no error, and Prometheus logged no scrape problem.
    assert_eq!(p.scalar(&format!("up{{job=\"{JOB}\"}}"), now), 1.0);
    let targets = p.api("/api/v1/targets", &[]);
    let active = targets["data"]["activeTargets"].as_array().unwrap();
    assert_eq!(active.len(), 1, "{targets}");
    assert_eq!(active[0]["labels"]["instance"], s.target.as_str());
    assert_eq!(active[0]["health"], "up", "{targets}");
    assert_eq!(active[0]["lastError"], "", "{targets}");
    assert_eq!(
        p.scrape_problems(),
        Vec::<String>::new(),
        "prometheus logged scrape problems"
    );
}

// ---------------------------------------------------------------------------
// The Grafana dashboard
// ---------------------------------------------------------------------------

fn dashboard() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deployments/grafana-dashboard.json"
    );
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: not JSON: {e}"))
}

/// Every panel, rows' panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in dashboard["panels"].as_array().expect("panels") {
        out.push(p);
        if let Some(nested) = p["panels"].as_array() {
            out.extend(nested);
        }
    }
    out
}

/// Grafana's variables as the test's traffic sets them.
fn substitute(expr: &str, instance: &str, comm: &str) -> String {
    expr.replace("$__rate_interval", WINDOW)
        .replace("${instance}", instance)
        .replace("$instance", instance)
        .replace("${comm}", comm)
        .replace("$comm", comm)
}

/// Whether `expr` still names a Grafana variable (`$name`, `${name}`);
/// `${1}` is label_replace()'s capture group, not a variable.
fn has_variable(expr: &str) -> bool {
    expr.split('$').skip(1).any(|after| {
        let name = after.strip_prefix('{').unwrap_or(after);
        name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
    })
}

/// `label_values(selector, label)`, the variable queries, as PromQL.
fn label_values_query(query: &str) -> (String, String) {
    let inner = query
        .strip_prefix("label_values(")
        .and_then(|q| q.strip_suffix(')'))
        .unwrap_or_else(|| panic!("not a label_values() query: {query:?}"));
    let (selector, label) = inner.rsplit_once(',').unwrap();
    let label = label.trim().to_string();
    (format!("count by ({label}) ({selector})"), label)
}

#[test]
fn dashboard_is_importable_without_a_datasource_uid() {
    let d = dashboard();
    assert!(
        d["schemaVersion"].as_u64().unwrap() >= 36,
        "Grafana 10 schema"
    );
    let variables = d["templating"]["list"].as_array().unwrap();
    let names: Vec<&str> = variables
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["datasource", "instance", "comm"]);
    assert_eq!(variables[0]["type"], "datasource");
    assert_eq!(variables[0]["query"], "prometheus");
    // Every datasource reference is the variable: nothing to edit on import.
    let mut refs = Vec::new();
    collect_datasources(&d, &mut refs);
    assert!(!refs.is_empty());
    for r in refs {
        assert_eq!(r["uid"], "${datasource}", "hard-coded datasource {r}");
        assert_eq!(r["type"], "prometheus");
    }
    let mut ids = BTreeSet::new();
    for p in panels(&d) {
        assert!(ids.insert(p["id"].as_u64().unwrap()), "duplicate panel id");
        for key in ["x", "y", "w", "h"] {
            assert!(
                p["gridPos"][key].is_u64(),
                "gridPos.{key} of {}",
                p["title"]
            );
        }
        for t in p["targets"].as_array().unwrap() {
            assert!(t["refId"].is_string() && t["expr"].is_string(), "{t}");
        }
    }
    let titles: Vec<&str> = panels(&d)
        .iter()
        .map(|p| p["title"].as_str().unwrap())
        .collect();
    for wanted in [
        "Requests/s by process",
        "Responses/s by status class",
        "Responses/s by status code",
        "Error ratio (5xx / all responses)",
        "Latency p50",
        "Latency p99",
        "In-flight requests",
        "Probe drops/s by reason",
        "Hook path in use",
    ] {
        assert!(titles.contains(&wanted), "no panel {wanted:?}: {titles:?}");
    }
}

fn collect_datasources<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                if k == "datasource" {
                    out.push(child);
                } else {
                    collect_datasources(child, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| collect_datasources(i, out)),
        _ => {}
    }
}

#[test]
fn every_dashboard_query_returns_data_for_real_traffic() {
    let d = dashboard();
    let s = scraped_traffic();
    let p = &s.prometheus;
    let comm = comm_of(s.server.pid);
    // The variables offer this host and the server's command.
    for v in &d["templating"]["list"].as_array().unwrap()[1..] {
        let query = substitute(v["query"].as_str().unwrap(), &s.target, &comm);
        let (promql, label) = label_values_query(&query);
        let values: Vec<String> = p
            .vector(&promql, s.during_load)
            .into_iter()
            .filter_map(|(labels, _)| labels.get(&label).cloned())
            .collect();
        let wanted = if label == "instance" {
            &s.target
        } else {
            &comm
        };
        assert!(
            values.contains(wanted),
            "variable {}: {query:?} offers {values:?}, not {wanted:?}",
            v["name"]
        );
    }
    // Every panel's queries parse and return data.
    let mut checked = 0;
    for panel in panels(&d) {
        for target in panel["targets"].as_array().unwrap() {
            let expr = substitute(target["expr"].as_str().unwrap(), &s.target, &comm);
            assert!(!has_variable(&expr), "unsubstituted variable in {expr:?}");
            let result = p.vector(&expr, s.during_load);
            assert!(
                !result.is_empty(),
                "panel {:?}: {expr:?} returned no data",
                panel["title"]
            );
            // Panels by class or code show the classes and codes sent
            // (the server's, and maybe other node processes' on the host).
            for label in ["class", "code"] {
                if expr.contains(&format!("sum by ({label})")) {
                    let shown: BTreeSet<&str> = result
                        .iter()
                        .filter_map(|(labels, _)| labels.get(label).map(String::as_str))
                        .collect();
                    let sent: &[&str] = if label == "class" {
                        &["2xx", "4xx", "5xx"]
                    } else {
                        &["200", "404", "500"]
                    };
                    for want in sent {
                        assert!(
                            shown.contains(want),
                            "panel {:?}: no {label} {want} in {shown:?}",
                            panel["title"]
                        );
                    }
                }
            }
            // Per-process panels show the server under load.
            if expr.contains("pid") {
                let ours: Vec<_> = result
                    .iter()
                    .filter(|(labels, _)| labels.get("pid") == Some(&s.server.pid.to_string()))
                    .collect();
                assert_eq!(
                    ours.len(),
                    1,
                    "panel {:?}: {expr:?}: {result:?}",
                    panel["title"]
                );
                assert!(
                    ours[0].1.is_finite(),
                    "panel {:?}: {ours:?}",
                    panel["title"]
                );
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 11, "queries checked");
}

// ---------------------------------------------------------------------------
// The TCP listener itself
// ---------------------------------------------------------------------------

fn tcp_request(port: u16, request: &[u8]) -> HttpResponse {
    let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(request).unwrap();
    read_response(&mut BufReader::new(stream)).unwrap()
}

#[test]
fn tcp_listener_serves_metrics_only_with_the_sockets_limits() {
    let port = free_port();
    let daemon = Daemon::start_args(&["--metrics-address", &format!("127.0.0.1:{port}")]);
    let get = |target: &str| {
        tcp_request(
            port,
            format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
    };
    let metrics = get("/metrics");
    assert_eq!(metrics.status, 200);
    assert_eq!(
        metrics.header("content-type"),
        daemon.request("GET", "/metrics").header("content-type")
    );
    let parsed = Metrics::parse(&metrics.text());
    assert_eq!(
        parsed.types.get(REQUESTS).map(String::as_str),
        Some("counter")
    );
    // The Scope report and anything else stay off the network.
    let big_head = format!(
        "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(16 * 1024)
    );
    let table: [(&str, Vec<u8>, u16); 4] = [
        (
            "the report",
            b"GET /report HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            404,
        ),
        (
            "POST",
            b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".to_vec(),
            405,
        ),
        ("a 16 KiB head", big_head.into_bytes(), 431),
        (
            "garbage",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec(),
            400,
        ),
    ];
    for (what, request, status) in table {
        assert_eq!(tcp_request(port, &request).status, status, "{what}");
    }
    // Keep-alive: two scrapes on one connection.
    let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\nGET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut all = Vec::new();
    stream.read_to_end(&mut all).unwrap();
    assert_eq!(response_statuses(&all), [200, 200]);
}

#[test]
fn a_metrics_port_in_use_fails_start_up_in_one_line() {
    require_root();
    let taken = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let dir = TempDir::new("tcp-taken");
    let socket = dir.path().join("plugins").join("http-statistics.sock");
    let mut command = daemon_at(&socket);
    command.args(["--metrics-address", &address]);
    let outcome = run_to_exit(command);
    assert_fails(
        "--metrics-address on a port in use",
        &outcome,
        1,
        &["--metrics-address", &address, "cannot listen"],
    );
    assert!(!socket.exists(), "a socket was left behind");
    assert!(
        !socket.parent().unwrap().exists(),
        "the socket directory was created"
    );
}

#[test]
fn help_names_the_default_metrics_port() {
    let output = Command::new(DAEMON)
        .arg("--help")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("--metrics-address HOST[:PORT]"), "{text}");
    assert!(text.contains("port 10230"), "{text}");
}
