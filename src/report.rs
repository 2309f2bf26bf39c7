//! The Weave Scope plugin report (GET /report): pure rendering from rates.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};

use crate::rates::ProcessRates;

pub const PLUGIN_LABEL: &str = "HTTP Statistics";
pub const PLUGIN_DESCRIPTION: &str = "Adds http request metrics to processes";
pub const REQUESTS_METRIC: &str = "http_requests_per_second";
pub const LATENCY_P50_METRIC: &str = "http_request_duration_p50_ms";
pub const LATENCY_P99_METRIC: &str = "http_request_duration_p99_ms";
/// Latency quantiles: (metric id, label, priority right after the request rate).
const LATENCY_METRICS: [(&str, &str, f64); 2] = [
    (LATENCY_P50_METRIC, "HTTP Latency p50 (ms)", 0.11),
    (LATENCY_P99_METRIC, "HTTP Latency p99 (ms)", 0.12),
];
const OTHERS: &str = "OTHERS";

/// The response codes with a metric of their own, as the original plugin
/// listed them; every other code is summed under OTHERS.
pub const TRACKED_CODES: [u16; 16] = [
    100, 200, 201, 202, 204, 308, 400, 401, 403, 404, 408, 451, 500, 501, 502, 503,
];

/// The code group a response code is reported under: itself, or OTHERS.
fn code_group(code: u16) -> Option<u16> {
    TRACKED_CODES.contains(&code).then_some(code)
}

fn response_metric_id(group: Option<u16>) -> String {
    match group {
        Some(code) => format!("http_{code}_responses_per_second"),
        None => format!("http_{OTHERS}_responses_per_second"),
    }
}

fn response_template(group: Option<u16>) -> Value {
    let (label, priority) = match group {
        Some(code) => (
            format!("HTTP Resp {code} /Second"),
            f64::from(code) / 1000.0,
        ),
        None => (format!("HTTP Resp {OTHERS} /Second"), 1.0),
    };
    json!({"id": response_metric_id(group), "label": label, "priority": priority})
}

fn metric(value: f64, date: &str) -> Value {
    // Scope scales graphs by min/max; a rate's floor is 0.
    json!({"samples": [{"date": date, "value": value}], "min": 0.0, "max": value})
}

/// Renders the whole report. `date` is the snapshot's time in RFC 3339.
/// Processes that never received a request and answer nothing now are left
/// out; response-code metrics (and their templates) appear only while their
/// rate is non-zero.
pub fn render(plugin_id: &str, hostname: &str, rates: &[ProcessRates], date: &str) -> String {
    let mut templates = Map::new();
    templates.insert(
        REQUESTS_METRIC.to_string(),
        json!({"id": REQUESTS_METRIC, "label": "HTTP Req/Second", "priority": 0.1}),
    );
    let mut nodes = Map::new();
    for p in rates {
        if p.total_requests == 0 && p.responses_per_second.is_empty() {
            continue;
        }
        let mut by_group: BTreeMap<Option<u16>, f64> = BTreeMap::new();
        for (&code, &r) in &p.responses_per_second {
            *by_group.entry(code_group(code)).or_default() += r;
        }
        let mut metrics = Map::new();
        metrics.insert(
            REQUESTS_METRIC.to_string(),
            metric(p.requests_per_second, date),
        );
        let quantiles = [p.latency_p50_ms, p.latency_p99_ms];
        for ((id, label, priority), value) in LATENCY_METRICS.into_iter().zip(quantiles) {
            if let Some(ms) = value {
                templates
                    .entry(id)
                    .or_insert_with(|| json!({"id": id, "label": label, "priority": priority}));
                metrics.insert(id.to_string(), metric(ms, date));
            }
        }
        for (group, r) in by_group {
            let id = response_metric_id(group);
            if !templates.contains_key(&id) {
                templates.insert(id.clone(), response_template(group));
            }
            metrics.insert(id, metric(r, date));
        }
        nodes.insert(format!("{hostname};{}", p.pid), json!({"metrics": metrics}));
    }
    json!({
        "Plugins": [{
            "id": plugin_id,
            "label": PLUGIN_LABEL,
            "description": PLUGIN_DESCRIPTION,
            "interfaces": ["reporter"],
            "api_version": "1",
        }],
        "Process": {"metric_templates": templates, "nodes": nodes},
    })
    .to_string()
}

/// RFC 3339 UTC with microseconds, e.g. `2016-09-21T07:22:24.293175Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_micros()
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian
/// calendar (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn rates(pid: u32, req: f64, total: u64, codes: &[(u16, f64)]) -> ProcessRates {
        ProcessRates {
            pid,
            requests_per_second: req,
            responses_per_second: codes.iter().copied().collect(),
            total_requests: total,
            latency_p50_ms: None,
            latency_p99_ms: None,
        }
    }

    #[test]
    fn rfc3339_formats() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
        let t = UNIX_EPOCH + Duration::new(1_474_442_544, 293_175_000);
        assert_eq!(rfc3339(t), "2016-09-21T07:22:24.293175Z");
        // A leap day and the end of a century year.
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00.000000Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(4_107_542_399)),
            "2100-02-28T23:59:59.000000Z"
        );
    }

    #[test]
    fn report_has_the_seed_shape() {
        let date = "2016-09-21T07:22:24.293175Z";
        let out = render(
            "http-statistics",
            "example.org",
            &[rates(29770, 1.0, 5, &[(200, 1.0)])],
            date,
        );
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            v["Plugins"],
            json!([{"id": "http-statistics", "label": "HTTP Statistics",
                    "description": "Adds http request metrics to processes",
                    "interfaces": ["reporter"], "api_version": "1"}])
        );
        assert_eq!(
            v["Process"]["metric_templates"],
            json!({
                "http_requests_per_second": {"id": "http_requests_per_second", "label": "HTTP Req/Second", "priority": 0.1},
                "http_200_responses_per_second": {"id": "http_200_responses_per_second", "label": "HTTP Resp 200 /Second", "priority": 0.2},
            })
        );
        assert_eq!(
            v["Process"]["nodes"],
            json!({"example.org;29770": {"metrics": {
                "http_requests_per_second": {"samples": [{"date": date, "value": 1.0}], "min": 0.0, "max": 1.0},
                "http_200_responses_per_second": {"samples": [{"date": date, "value": 1.0}], "min": 0.0, "max": 1.0},
            }}})
        );
    }

    #[test]
    fn every_tracked_code_has_its_own_metric_and_the_rest_are_others() {
        let mut codes: Vec<(u16, f64)> = TRACKED_CODES.iter().map(|&c| (c, 1.0)).collect();
        codes.extend([(418, 2.0), (299, 0.5), (0, 0.25)]);
        let out = render("p", "h", &[rates(1, 0.0, 3, &codes)], "d");
        let v: Value = serde_json::from_str(&out).unwrap();
        let templates = v["Process"]["metric_templates"].as_object().unwrap();
        assert_eq!(templates.len(), 1 + 16 + 1);
        for (key, t) in templates {
            assert_eq!(t["id"], json!(key));
        }
        assert_eq!(
            templates["http_202_responses_per_second"]["label"],
            "HTTP Resp 202 /Second"
        );
        assert_eq!(
            templates["http_503_responses_per_second"]["label"],
            "HTTP Resp 503 /Second"
        );
        assert_eq!(
            templates["http_503_responses_per_second"]["priority"],
            0.503
        );
        assert_eq!(
            templates["http_OTHERS_responses_per_second"]["priority"],
            1.0
        );
        let metrics = &v["Process"]["nodes"]["h;1"]["metrics"];
        assert_eq!(
            metrics["http_OTHERS_responses_per_second"]["samples"][0]["value"],
            2.75
        );
        assert_eq!(
            metrics["http_requests_per_second"]["samples"][0]["value"],
            0.0
        );
    }

    #[test]
    fn latency_quantiles_follow_the_request_rate() {
        let mut r = rates(3, 2.0, 2, &[(200, 2.0)]);
        r.latency_p50_ms = Some(20.5);
        r.latency_p99_ms = Some(101.0);
        let v: Value =
            serde_json::from_str(&render("p", "h", &[r, rates(4, 0.0, 1, &[])], "d")).unwrap();
        let t = &v["Process"]["metric_templates"];
        assert_eq!(
            t["http_request_duration_p50_ms"],
            json!({"id": "http_request_duration_p50_ms", "label": "HTTP Latency p50 (ms)", "priority": 0.11})
        );
        assert_eq!(
            t["http_request_duration_p99_ms"]["label"],
            "HTTP Latency p99 (ms)"
        );
        assert_eq!(t["http_request_duration_p99_ms"]["priority"], 0.12);
        let m = &v["Process"]["nodes"]["h;3"]["metrics"];
        assert_eq!(
            m["http_request_duration_p50_ms"]["samples"][0]["value"],
            20.5
        );
        assert_eq!(
            m["http_request_duration_p99_ms"]["samples"][0]["value"],
            101.0
        );
        // A process without paired responses in the interval has none.
        let idle = v["Process"]["nodes"]["h;4"]["metrics"].as_object().unwrap();
        assert!(!idle.contains_key("http_request_duration_p50_ms"));
    }

    #[test]
    fn processes_without_requests_or_responses_are_left_out() {
        let out = render(
            "p",
            "h",
            &[rates(1, 0.0, 0, &[]), rates(2, 0.0, 9, &[])],
            "d",
        );
        let v: Value = serde_json::from_str(&out).unwrap();
        let nodes = v["Process"]["nodes"].as_object().unwrap();
        assert_eq!(nodes.keys().collect::<Vec<_>>(), vec!["h;2"]);
        // Idle: only the request rate, no code templates.
        assert_eq!(
            v["Process"]["metric_templates"].as_object().unwrap().len(),
            1
        );
    }
}
