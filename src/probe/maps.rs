//! Reading the probe's maps into a [`CounterSnapshot`], once a second.

use std::collections::BTreeMap;

use aya::maps::{HashMap, Map, MapData, PerCpuArray};
use aya::Ebpf;
use log::warn;

use super::abi::{RawAwaiting, RawLatencyStats, RawProcessCounts};
use super::describe;
use crate::latency::LatencyHistogram;
use crate::rates::{CounterSnapshot, ProbeDrops, ProcessCounts};

/// The maps the daemon reads, taken out of the loaded probe.
pub(super) struct ProbeMaps {
    process_counts: HashMap<MapData, u32, RawProcessCounts>,
    latency_by_process: HashMap<MapData, u32, RawLatencyStats>,
    awaiting_response: HashMap<MapData, u64, RawAwaiting>,
    probe_drops: PerCpuArray<MapData, u64>,
}

impl ProbeMaps {
    pub(super) fn take(ebpf: &mut Ebpf) -> Result<ProbeMaps, String> {
        Ok(ProbeMaps {
            process_counts: HashMap::try_from(take_map(ebpf, "process_counts")?)
                .map_err(|e| describe("map process_counts", &e))?,
            latency_by_process: HashMap::try_from(take_map(ebpf, "latency_by_process")?)
                .map_err(|e| describe("map latency_by_process", &e))?,
            awaiting_response: HashMap::try_from(take_map(ebpf, "awaiting_response")?)
                .map_err(|e| describe("map awaiting_response", &e))?,
            probe_drops: PerCpuArray::try_from(take_map(ebpf, "probe_drops")?)
                .map_err(|e| describe("map probe_drops", &e))?,
        })
    }

    /// Reads every process's counters and the drop counters.
    pub(super) fn snapshot(&self) -> CounterSnapshot {
        // aya already skips entries that vanish between listing a key and
        // reading it (the process exited); anything else is a real failure.
        let mut processes = Vec::new();
        let mut failures = 0;
        for entry in self.process_counts.iter() {
            match entry {
                Ok((pid, raw)) => {
                    let latency = self.latency_by_process.get(&pid, 0).ok();
                    processes.push(to_counts(pid, &raw, latency.as_ref()));
                }
                Err(e) => {
                    failures += 1;
                    if failures == 1 {
                        warn!("reading the kernel's process table failed: {e}; this snapshot may miss processes");
                    }
                }
            }
        }
        processes.sort_by_key(|p| p.pid);
        let mut drops = ProbeDrops::default();
        for (reason, total) in (0u32..).zip(drops.0.iter_mut()) {
            *total = self
                .probe_drops
                .get(&reason, 0)
                .map(|per_cpu| per_cpu.iter().sum())
                .unwrap_or(0);
        }
        CounterSnapshot {
            processes,
            drops,
            awaiting_connections: self.awaiting_response.keys().filter(Result::is_ok).count()
                as u64,
        }
    }
}

fn take_map(ebpf: &mut Ebpf, name: &str) -> Result<Map, String> {
    ebpf.take_map(name)
        .ok_or_else(|| format!("the probe has no map {name}"))
}

fn to_latency(raw: &RawLatencyStats) -> LatencyHistogram {
    LatencyHistogram {
        sum_ns: raw.sum_ns,
        le: raw.le,
        fine: raw.fine.to_vec(),
    }
}

fn to_counts(pid: u32, raw: &RawProcessCounts, latency: Option<&RawLatencyStats>) -> ProcessCounts {
    let mut responses = BTreeMap::new();
    for (&code, &count) in raw.codes.iter().zip(&raw.responses) {
        // Codes are 100..=599 (the probe checks); a slot is claimed just
        // before its first count lands, so it may still read zero.
        if let Ok(code) = u16::try_from(code) {
            if code != 0 && count != 0 {
                responses.insert(code, count);
            }
        }
    }
    let comm_len = raw
        .comm
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(raw.comm.len());
    ProcessCounts {
        pid,
        first_seen_ns: raw.first_seen_ns,
        comm: String::from_utf8_lossy(&raw.comm[..comm_len]).into_owned(),
        requests: raw.requests,
        responses,
        untracked_responses: raw.untracked_responses,
        latency: latency.map(to_latency).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::abi;

    #[test]
    fn raw_counts_convert() {
        let mut raw = RawProcessCounts {
            first_seen_ns: 9,
            requests: 3,
            untracked_responses: 1,
            codes: [0; abi::MAX_CODES_PER_PROCESS],
            responses: [0; abi::MAX_CODES_PER_PROCESS],
            comm: [0; abi::COMM_LEN],
        };
        raw.codes[0] = 200;
        raw.responses[0] = 2;
        raw.codes[1] = 404; // claimed, no count yet
        raw.comm[..5].copy_from_slice(b"nginx");
        let c = to_counts(77, &raw, None);
        assert_eq!(c.pid, 77);
        assert_eq!(c.comm, "nginx");
        assert_eq!(c.responses, BTreeMap::from([(200, 2)]));
        assert_eq!(
            (c.requests, c.untracked_responses, c.first_seen_ns),
            (3, 1, 9)
        );
    }
}
