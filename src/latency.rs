//! Request latency histograms as the probe keeps them (see probe/http_stats.h):
//! exact counters at the OpenTelemetry boundaries for Prometheus, and a fine
//! log-linear histogram for quantiles. Pure.

use crate::probe::abi;

/// Fine values are in units of 2^UNIT_SHIFT (1024) ns.
const UNIT_SHIFT: u32 = abi::LATENCY_UNIT_SHIFT;
const SUB_BUCKETS: u64 = abi::LATENCY_SUB_BUCKETS;
const LOG2_SUB_BUCKETS: u32 = abi::LOG2_SUB_BUCKETS;
pub const FINE_BUCKETS: usize = abi::LATENCY_FINE_BUCKETS;

/// OpenTelemetry's default HTTP server duration boundaries, in seconds, as
/// Prometheus `le` labels: the probe's `latency_bounds_ns`.
pub const BOUNDS: [&str; abi::LATENCY_BOUNDS] = abi::LATENCY_BOUND_LABELS;

/// One process's latencies, cumulative or over an interval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LatencyHistogram {
    pub sum_ns: u64,
    /// `le[i]`: latencies in (BOUNDS[i-1], BOUNDS[i]]; the last one above 10 s.
    pub le: [u64; BOUNDS.len() + 1],
    pub fine: Vec<u32>,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            sum_ns: 0,
            le: [0; BOUNDS.len() + 1],
            fine: vec![0; FINE_BUCKETS],
        }
    }
}

/// The [low, high) range in ns that fine bucket `i` covers.
pub fn fine_bucket_range_ns(i: usize) -> (u64, u64) {
    let i = i as u64;
    let (low, width) = if i < SUB_BUCKETS {
        (i, 1)
    } else {
        let power = i / SUB_BUCKETS + u64::from(LOG2_SUB_BUCKETS) - 1;
        let sub = i % SUB_BUCKETS;
        let width = 1u64 << (power - u64::from(LOG2_SUB_BUCKETS));
        ((SUB_BUCKETS + sub) * width, width)
    };
    (low << UNIT_SHIFT, (low + width) << UNIT_SHIFT)
}

/// The fine bucket the probe puts `ns` in: the twin of `fine_bucket()` in
/// probe/latency.h, which a test below compares it with at every bucket edge.
#[cfg(test)] // the probe computes it; the daemon only reads the buckets
pub fn fine_bucket(ns: u64) -> usize {
    let u = ns >> UNIT_SHIFT;
    if u < SUB_BUCKETS {
        return u as usize;
    }
    let power = 63 - u.leading_zeros();
    let i = (u64::from(power - LOG2_SUB_BUCKETS) + 1) * SUB_BUCKETS
        + ((u >> (power - LOG2_SUB_BUCKETS)) & (SUB_BUCKETS - 1));
    (i as usize).min(FINE_BUCKETS - 1)
}

impl LatencyHistogram {
    /// Latencies counted (every one lands in exactly one `le` slot).
    pub fn count(&self) -> u64 {
        self.le.iter().sum()
    }

    /// What was added since `before`; counters that went backwards (a
    /// different process under the same pid) give zero, never negative.
    pub fn since(&self, before: &LatencyHistogram) -> LatencyHistogram {
        let mut le = [0; BOUNDS.len() + 1];
        for (d, (now, then)) in le.iter_mut().zip(self.le.iter().zip(&before.le)) {
            *d = now.saturating_sub(*then);
        }
        let fine = self
            .fine
            .iter()
            .enumerate()
            .map(|(i, now)| now.saturating_sub(before.fine.get(i).copied().unwrap_or(0)))
            .collect();
        LatencyHistogram {
            sum_ns: self.sum_ns.saturating_sub(before.sum_ns),
            le,
            fine,
        }
    }

    /// The q-quantile (0 < q <= 1) in milliseconds, from the fine buckets:
    /// the middle of the bucket holding the rank-th latency, so within half
    /// a bucket (1/32 of the value) of the truth. None when empty.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let total: u64 = self.fine.iter().map(|&c| u64::from(c)).sum();
        if total == 0 || !(q > 0.0 && q <= 1.0) {
            return None;
        }
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0u64;
        for (i, &c) in self.fine.iter().enumerate() {
            seen += u64::from(c);
            if seen >= rank {
                let (low, high) = fine_bucket_range_ns(i);
                return Some((low + high) as f64 / 2.0 / 1e6);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn histogram_of(latencies_ns: &[u64]) -> LatencyHistogram {
        let mut h = LatencyHistogram::default();
        for &ns in latencies_ns {
            h.fine[fine_bucket(ns)] += 1;
            h.sum_ns += ns;
        }
        h
    }

    #[test]
    fn bounds_are_opentelemetrys_in_seconds() {
        // The `le` labels of the Prometheus histogram series: they must not
        // change with how they are made from the probe's nanoseconds.
        assert_eq!(
            BOUNDS,
            [
                "0.005", "0.01", "0.025", "0.05", "0.075", "0.1", "0.25", "0.5", "0.75", "1",
                "2.5", "5", "7.5", "10"
            ]
        );
    }

    #[test]
    fn buckets_tile_the_range_without_gaps() {
        assert_eq!(fine_bucket_range_ns(0), (0, 1024));
        for i in 1..FINE_BUCKETS {
            assert_eq!(
                fine_bucket_range_ns(i - 1).1,
                fine_bucket_range_ns(i).0,
                "bucket {i}"
            );
        }
        // Every value lands in the bucket whose range holds it.
        for ns in [
            0,
            1023,
            1024,
            16 << 10,
            17 << 10,
            20_000_000,
            100_000_000,
            137_000_000_000,
        ] {
            let (low, high) = fine_bucket_range_ns(fine_bucket(ns));
            assert!(low <= ns && ns < high, "{ns} in [{low}, {high})");
        }
        assert_eq!(fine_bucket(u64::MAX), FINE_BUCKETS - 1);
    }

    /// `(ns, fine_bucket(ns))` computed by the probe's own C code
    /// (probe/latency.h, built for the build host by build.rs): at and
    /// around every bucket edge, 0 and the largest values.
    mod probe {
        include!(concat!(env!("OUT_DIR"), "/fine_bucket_samples.rs"));
    }

    #[test]
    fn fine_bucket_is_the_probes() {
        for &(ns, bucket) in probe::FINE_BUCKET_SAMPLES.iter() {
            assert_eq!(fine_bucket(ns), bucket, "fine_bucket({ns})");
        }
    }

    #[test]
    fn the_probes_samples_cross_every_bucket_edge() {
        let samples: std::collections::HashMap<u64, usize> =
            probe::FINE_BUCKET_SAMPLES.iter().copied().collect();
        for i in 1..FINE_BUCKETS {
            let (low, _) = fine_bucket_range_ns(i);
            assert_eq!(samples.get(&low), Some(&i), "low edge of bucket {i}");
            assert_eq!(samples.get(&(low - 1)), Some(&(i - 1)), "below bucket {i}");
        }
        assert_eq!(samples.get(&0), Some(&0));
        assert_eq!(samples.get(&u64::MAX), Some(&(FINE_BUCKETS - 1)));
    }

    #[test]
    fn buckets_are_at_most_a_sixteenth_of_their_value_wide() {
        for i in 16..FINE_BUCKETS {
            let (low, high) = fine_bucket_range_ns(i);
            assert!((high - low) * 16 <= low, "bucket {i}: [{low}, {high})");
        }
    }

    #[test]
    fn quantiles_are_within_a_few_percent() {
        let mut values: Vec<u64> = vec![20_000_000; 90];
        values.extend([200_000_000; 10]);
        let h = histogram_of(&values);
        let p50 = h.quantile_ms(0.5).unwrap();
        let p99 = h.quantile_ms(0.99).unwrap();
        assert!((p50 - 20.0).abs() / 20.0 < 0.035, "p50 {p50}");
        assert!((p99 - 200.0).abs() / 200.0 < 0.035, "p99 {p99}");
        assert_eq!(h.quantile_ms(1.0), Some(p99));
    }

    #[test]
    fn empty_or_bad_quantiles_are_none() {
        let h = LatencyHistogram::default();
        assert_eq!(h.quantile_ms(0.5), None);
        let h = histogram_of(&[1_000_000]);
        assert_eq!(h.quantile_ms(0.0), None);
        assert_eq!(h.quantile_ms(f64::NAN), None);
        assert_eq!(h.quantile_ms(1.5), None);
    }

    #[test]
    fn since_is_saturating() {
        let mut before = histogram_of(&[1_000_000, 2_000_000]);
        before.le[0] = 2;
        let mut now = histogram_of(&[1_000_000, 2_000_000, 3_000_000]);
        now.le[0] = 3;
        let d = now.since(&before);
        assert_eq!(d.count(), 1);
        assert_eq!(d.sum_ns, 3_000_000);
        assert_eq!(d.fine.iter().map(|&c| u64::from(c)).sum::<u64>(), 1);
        let back = before.since(&now);
        assert_eq!((back.count(), back.sum_ns), (0, 0));
    }
}
