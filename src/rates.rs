//! Counter snapshots and the per-second rates derived from two of them.
//! Pure: the probe module fills a `CounterSnapshot`, this turns snapshots into
//! rates, and knows nothing about the kernel.

use std::collections::{BTreeMap, HashMap};

use crate::latency::LatencyHistogram;
use crate::probe::abi::{DropReason, DROP_REASONS};

/// Cumulative counts of one process, as read from the kernel.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ProcessCounts {
    pub pid: u32,
    /// When the kernel entry was created; a different value under the same pid
    /// means a new process that reused the pid.
    pub first_seen_ns: u64,
    pub comm: String,
    pub requests: u64,
    /// Responses by exact status code.
    pub responses: BTreeMap<u16, u64>,
    /// Responses whose code found no free slot in the kernel entry.
    pub untracked_responses: u64,
    /// Latencies of the responses paired with a request.
    pub latency: LatencyHistogram,
}

/// Things the probe saw but could not count, cumulative since it was loaded:
/// one counter per reason of probe/http_stats.h, indexed like
/// [`DROP_REASONS`] (`abi::DROP_<NAME>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProbeDrops(pub [u64; DROP_REASONS.len()]);

impl ProbeDrops {
    pub const REASONS: usize = DROP_REASONS.len();

    /// (reason, count) pairs, in the probe's order.
    pub fn by_reason(&self) -> impl Iterator<Item = (&'static DropReason, u64)> {
        let reasons: &'static [DropReason; Self::REASONS] = &DROP_REASONS;
        reasons.iter().zip(self.0)
    }
}

/// One reading of the kernel's counters.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CounterSnapshot {
    /// Sorted by pid.
    pub processes: Vec<ProcessCounts>,
    pub drops: ProbeDrops,
    /// Connections with a request read and its response not yet written.
    pub awaiting_connections: u64,
}

/// Per-second rates of one process over the last snapshot interval.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessRates {
    pub pid: u32,
    pub requests_per_second: f64,
    /// Only codes with a non-zero rate; untracked responses are under code 0.
    pub responses_per_second: BTreeMap<u16, f64>,
    /// Cumulative requests: a process with none is not a server (yet).
    pub total_requests: u64,
    /// Latency quantiles over the interval, when responses were paired in it.
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
}

/// Remembers the previous snapshot so that the next one can be turned into
/// rates.
#[derive(Debug, Default)]
pub struct RateTracker {
    previous: HashMap<u32, ProcessCounts>,
}

/// `now - before` per second, never negative, zero when no time has passed.
pub fn rate(before: u64, now: u64, elapsed_secs: f64) -> f64 {
    if elapsed_secs.is_nan() || elapsed_secs <= 0.0 || elapsed_secs.is_infinite() {
        return 0.0;
    }
    now.saturating_sub(before) as f64 / elapsed_secs
}

impl RateTracker {
    /// Rates of every process in `snapshot` over the `elapsed_secs` since the
    /// previous call (or since the probe was loaded, when counting started
    /// from zero). A process not seen before, or whose pid now belongs to a
    /// different process, counts from zero.
    /// Takes the snapshot by value: it becomes the next baseline without a
    /// copy (with thousands of processes the histograms weigh megabytes).
    pub fn update(&mut self, snapshot: CounterSnapshot, elapsed_secs: f64) -> Vec<ProcessRates> {
        let empty = ProcessCounts::default();
        let rates = snapshot
            .processes
            .iter()
            .map(|now| {
                let before = match self.previous.get(&now.pid) {
                    Some(p) if p.first_seen_ns == now.first_seen_ns => p,
                    _ => &empty,
                };
                let mut responses_per_second = BTreeMap::new();
                for (&code, &count) in &now.responses {
                    let r = rate(
                        before.responses.get(&code).copied().unwrap_or(0),
                        count,
                        elapsed_secs,
                    );
                    if r > 0.0 {
                        responses_per_second.insert(code, r);
                    }
                }
                let untracked = rate(
                    before.untracked_responses,
                    now.untracked_responses,
                    elapsed_secs,
                );
                if untracked > 0.0 {
                    responses_per_second.insert(0, untracked);
                }
                let latency = now.latency.since(&before.latency);
                ProcessRates {
                    pid: now.pid,
                    requests_per_second: rate(before.requests, now.requests, elapsed_secs),
                    responses_per_second,
                    total_requests: now.requests,
                    latency_p50_ms: latency.quantile_ms(0.5),
                    latency_p99_ms: latency.quantile_ms(0.99),
                }
            })
            .collect();
        self.previous = snapshot.processes.into_iter().map(|p| (p.pid, p)).collect();
        rates
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process(
        pid: u32,
        first_seen_ns: u64,
        requests: u64,
        responses: &[(u16, u64)],
    ) -> ProcessCounts {
        ProcessCounts {
            pid,
            first_seen_ns,
            comm: "srv".into(),
            requests,
            responses: responses.iter().copied().collect(),
            untracked_responses: 0,
            latency: LatencyHistogram::default(),
        }
    }

    fn snapshot(processes: Vec<ProcessCounts>) -> CounterSnapshot {
        CounterSnapshot {
            processes,
            ..CounterSnapshot::default()
        }
    }

    #[test]
    fn rate_is_zero_safe_and_never_negative() {
        assert_eq!(rate(5, 15, 2.0), 5.0);
        assert_eq!(rate(15, 5, 1.0), 0.0);
        assert_eq!(rate(0, 10, 0.0), 0.0);
        assert_eq!(rate(0, 10, -1.0), 0.0);
        assert_eq!(rate(0, 10, f64::NAN), 0.0);
        assert_eq!(rate(u64::MAX - 1, 1, 1.0), 0.0);
    }

    #[test]
    fn first_snapshot_counts_from_zero() {
        let mut t = RateTracker::default();
        let r = t.update(snapshot(vec![process(7, 1, 4, &[(200, 3), (404, 1)])]), 2.0);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].requests_per_second, 2.0);
        assert_eq!(
            r[0].responses_per_second,
            BTreeMap::from([(200, 1.5), (404, 0.5)])
        );
        assert_eq!(r[0].total_requests, 4);
    }

    #[test]
    fn deltas_between_snapshots_and_zero_codes_left_out() {
        let mut t = RateTracker::default();
        t.update(snapshot(vec![process(7, 1, 4, &[(200, 3), (404, 1)])]), 1.0);
        let r = t.update(
            snapshot(vec![process(7, 1, 10, &[(200, 9), (404, 1)])]),
            1.0,
        );
        assert_eq!(r[0].requests_per_second, 6.0);
        assert_eq!(r[0].responses_per_second, BTreeMap::from([(200, 6.0)]));
    }

    #[test]
    fn reused_pid_starts_from_zero() {
        let mut t = RateTracker::default();
        t.update(snapshot(vec![process(7, 1, 1000, &[(200, 1000)])]), 1.0);
        let r = t.update(snapshot(vec![process(7, 2, 3, &[(200, 3)])]), 1.0);
        assert_eq!(r[0].requests_per_second, 3.0);
        assert_eq!(r[0].responses_per_second, BTreeMap::from([(200, 3.0)]));
    }

    #[test]
    fn counters_going_backwards_give_zero_not_negative() {
        let mut t = RateTracker::default();
        t.update(snapshot(vec![process(7, 1, 10, &[(200, 10)])]), 1.0);
        let r = t.update(snapshot(vec![process(7, 1, 4, &[(200, 2)])]), 1.0);
        assert_eq!(r[0].requests_per_second, 0.0);
        assert!(r[0].responses_per_second.is_empty());
    }

    #[test]
    fn latency_quantiles_cover_only_the_last_interval() {
        let mut t = RateTracker::default();
        let mut p = process(7, 1, 1, &[(200, 1)]);
        p.latency.fine[crate::latency::fine_bucket(100_000_000)] = 1; // 100 ms, earlier
        t.update(snapshot(vec![p.clone()]), 1.0);
        p.latency.fine[crate::latency::fine_bucket(20_000_000)] += 3; // 3 x 20 ms, now
        let r = t.update(snapshot(vec![p.clone()]), 1.0);
        let p50 = r[0].latency_p50_ms.unwrap();
        assert!((p50 - 20.0).abs() < 0.7, "{p50}");
        assert!((r[0].latency_p99_ms.unwrap() - 20.0).abs() < 0.7);
        // No new latencies: no quantiles.
        let r = t.update(snapshot(vec![p]), 1.0);
        assert_eq!((r[0].latency_p50_ms, r[0].latency_p99_ms), (None, None));
    }

    #[test]
    fn untracked_responses_are_reported_under_code_zero() {
        let mut t = RateTracker::default();
        let mut p = process(7, 1, 2, &[]);
        p.untracked_responses = 2;
        let r = t.update(snapshot(vec![p]), 1.0);
        assert_eq!(r[0].responses_per_second, BTreeMap::from([(0, 2.0)]));
    }

    #[test]
    fn exited_processes_are_forgotten() {
        let mut t = RateTracker::default();
        t.update(snapshot(vec![process(7, 1, 10, &[])]), 1.0);
        assert!(t.update(snapshot(vec![]), 1.0).is_empty());
        // Back under the same identity after a gap: treated as new, from zero.
        let r = t.update(snapshot(vec![process(7, 1, 12, &[])]), 1.0);
        assert_eq!(r[0].requests_per_second, 12.0);
    }
}
