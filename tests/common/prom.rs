//! The Prometheus text exposition of `/metrics`, parsed into series, and the
//! per-process counts the tests compare exactly.

use std::collections::{BTreeMap, BTreeSet};

pub type Labels = BTreeMap<String, String>;

/// A parsed Prometheus text exposition: value per (metric name, labels), plus
/// the `# TYPE` of each family.
#[derive(Debug, Default, Clone)]
pub struct Metrics {
    pub samples: BTreeMap<(String, Labels), f64>,
    pub types: BTreeMap<String, String>,
    pub helps: BTreeSet<String>,
}

pub const REQUESTS: &str = "http_server_requests_total";
pub const RESPONSES: &str = "http_server_responses_total";
pub const DROPS: &str = "scope_http_statistics_probe_drops_total";

impl Metrics {
    pub fn parse(text: &str) -> Metrics {
        let mut metrics = Metrics::default();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut parts = rest.split_whitespace();
                if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                    metrics.types.insert(name.to_string(), kind.to_string());
                }
                continue;
            }
            if let Some(rest) = line.strip_prefix("# HELP ") {
                if let Some(name) = rest.split_whitespace().next() {
                    metrics.helps.insert(name.to_string());
                }
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let (name_and_labels, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("malformed metrics line {line:?}"));
            let value: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("malformed value in metrics line {line:?}"));
            let (name, labels) = match name_and_labels.split_once('{') {
                Some((name, rest)) => {
                    let inner = rest
                        .strip_suffix('}')
                        .unwrap_or_else(|| panic!("malformed labels in {line:?}"));
                    (name, parse_labels(inner, line))
                }
                None => (name_and_labels, Labels::new()),
            };
            let key = (name.to_string(), labels);
            assert!(
                !metrics.samples.contains_key(&key),
                "duplicate series in /metrics: {line:?}"
            );
            metrics.samples.insert(key, value);
        }
        metrics
    }

    /// Every series of `name` whose labels include all of `filter`.
    pub fn series<'a>(
        &'a self,
        name: &'a str,
        filter: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = (&'a Labels, f64)> + 'a {
        self.samples
            .iter()
            .filter(move |((n, labels), _)| {
                n == name
                    && filter
                        .iter()
                        .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|((_, labels), value)| (labels, *value))
    }

    /// Everything the daemon says about `pid`, for exact comparison.
    pub fn counts_for(&self, pid: u32) -> PidCounts {
        let pid = pid.to_string();
        let filter = [("pid", pid.as_str())];
        let mut counts = PidCounts::default();
        for (labels, value) in self.series(REQUESTS, &filter) {
            assert!(
                counts.requests.is_none(),
                "two request series for pid {pid}"
            );
            counts.requests = Some(as_count(value));
            counts.comm = labels.get("comm").cloned();
        }
        for (labels, value) in self.series(RESPONSES, &filter) {
            let code = labels
                .get("code")
                .unwrap_or_else(|| panic!("response series without a code label: {labels:?}"));
            let previous = counts.responses.insert(code.clone(), as_count(value));
            assert!(previous.is_none(), "two series for pid {pid} code {code}");
            if counts.comm.is_none() {
                counts.comm = labels.get("comm").cloned();
            }
        }
        counts
    }

    /// Whether any series at all carries `pid="<pid>"`.
    pub fn mentions_pid(&self, pid: u32) -> bool {
        let pid = pid.to_string();
        self.samples
            .keys()
            .any(|(_, labels)| labels.get("pid") == Some(&pid))
    }

    /// The probe drop counters, by reason (for failure messages).
    pub fn drops(&self) -> BTreeMap<String, f64> {
        self.series(DROPS, &[])
            .map(|(labels, v)| (labels.get("reason").cloned().unwrap_or_default(), v))
            .collect()
    }
}

fn as_count(value: f64) -> u64 {
    assert!(
        value >= 0.0 && value.fract() == 0.0,
        "a counter is not a whole number: {value}"
    );
    value as u64
}

fn parse_labels(inner: &str, line: &str) -> Labels {
    let mut labels = Labels::new();
    let mut rest = inner;
    while !rest.is_empty() {
        let (key, after) = rest
            .split_once("=\"")
            .unwrap_or_else(|| panic!("malformed label in {line:?}"));
        // Values may contain escaped quotes and backslashes.
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, other)) => value.push(other),
                    None => break,
                },
                '"' => {
                    end = Some(i);
                    break;
                }
                c => value.push(c),
            }
        }
        let end = end.unwrap_or_else(|| panic!("unterminated label value in {line:?}"));
        labels.insert(key.trim().to_string(), value);
        rest = after[end + 1..].trim_start_matches(',').trim_start();
    }
    labels
}

/// The request and response counters of one process, as /metrics shows them.
/// `requests` is None when the process has no request line at all.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PidCounts {
    pub requests: Option<u64>,
    /// code (as the `code` label spells it) → responses
    pub responses: BTreeMap<String, u64>,
    /// The `comm` label; [`Daemon::counts_for`] clears it so that expected
    /// values need not spell it (tests check it separately).
    pub comm: Option<String>,
}

impl PidCounts {
    /// What a server that read `requests` requests and wrote `responses`
    /// (code, count) should show. Codes with count 0 are left out (no line).
    pub fn expect(requests: u64, responses: &[(u16, u64)]) -> PidCounts {
        PidCounts {
            requests: Some(requests),
            responses: responses
                .iter()
                .filter(|(_, n)| *n > 0)
                .map(|(code, n)| (code.to_string(), *n))
                .collect(),
            comm: None,
        }
    }

    /// Nothing at all: the pid must not appear in /metrics.
    pub fn nothing() -> PidCounts {
        PidCounts::default()
    }

    pub(super) fn without_comm(mut self) -> PidCounts {
        self.comm = None;
        self
    }
}
