//! Reading the probe's maps into a [`CounterSnapshot`], once a second.

use std::collections::BTreeMap;

use aya::maps::{HashMap, Map, MapData, MapError, PerCpuArray};
use aya::Ebpf;
use log::warn;

use super::abi::{RawConnection, RawLatencyStats, RawProcessCounts};
use super::describe;
use crate::latency::LatencyHistogram;
use crate::rates::{CounterSnapshot, ProbeDrops, ProcessCounts};

/// The maps the daemon reads, taken out of the loaded probe.
pub(super) struct ProbeMaps {
    process_counts: HashMap<MapData, u32, RawProcessCounts>,
    latency_by_process: HashMap<MapData, u32, RawLatencyStats>,
    connections: HashMap<MapData, u64, RawConnection>,
    probe_drops: PerCpuArray<MapData, u64>,
    /// The kernel does not forget an exited process's connections (no
    /// bpf_for_each_map_elem): each snapshot does.
    forget_exited: bool,
}

impl ProbeMaps {
    pub(super) fn take(ebpf: &mut Ebpf, forget_exited: bool) -> Result<ProbeMaps, String> {
        Ok(ProbeMaps {
            process_counts: HashMap::try_from(take_map(ebpf, "process_counts")?)
                .map_err(|e| describe("map process_counts", &e))?,
            latency_by_process: HashMap::try_from(take_map(ebpf, "latency_by_process")?)
                .map_err(|e| describe("map latency_by_process", &e))?,
            connections: HashMap::try_from(take_map(ebpf, "connections")?)
                .map_err(|e| describe("map connections", &e))?,
            probe_drops: PerCpuArray::try_from(take_map(ebpf, "probe_drops")?)
                .map_err(|e| describe("map probe_drops", &e))?,
            forget_exited,
        })
    }

    /// Reads every process's counters, the drop counters and the requests in
    /// flight. A map that cannot be read is warned about once per snapshot,
    /// which then misses what it could not read.
    pub(super) fn snapshot(&mut self) -> CounterSnapshot {
        let mut failures = ReadFailures::default();
        // aya already skips entries that vanish between listing a key and
        // reading it (the process exited); anything else is a real failure.
        let mut processes = Vec::new();
        for entry in self.process_counts.iter() {
            match entry {
                Ok((pid, raw)) => {
                    let latency = match self.latency_by_process.get(&pid, 0) {
                        Ok(latency) => Some(latency),
                        // No request answered yet, or the process just exited.
                        Err(MapError::KeyNotFound) => None,
                        Err(e) => {
                            failures.note("latency_by_process", "latencies", e);
                            None
                        }
                    };
                    processes.push(to_counts(pid, &raw, latency.as_ref()));
                }
                Err(e) => failures.note("process_counts", "processes", e),
            }
        }
        processes.sort_by_key(|p| p.pid);
        let mut drops = ProbeDrops::default();
        for (reason, total) in (0u32..).zip(drops.0.iter_mut()) {
            match self.probe_drops.get(&reason, 0) {
                Ok(per_cpu) => *total = per_cpu.iter().sum(),
                Err(e) => failures.note("probe_drops", "drop counts", e),
            }
        }
        // Connections stay in the map for their life: in flight are those
        // with requests queued.
        let mut awaiting_connections = 0;
        let mut exited = Vec::new();
        for entry in self.connections.iter() {
            match entry {
                Ok((sk, c)) if c.tail != c.head => {
                    // The owner read the queued requests, so it had a
                    // process_counts entry; its exit deleted that entry.
                    if self.forget_exited
                        && matches!(
                            self.process_counts.get(&c.tgid, 0),
                            Err(MapError::KeyNotFound)
                        )
                    {
                        exited.push(sk);
                    } else {
                        awaiting_connections += 1;
                    }
                }
                Ok(_) => {}
                Err(e) => failures.note("connections", "requests in flight", e),
            }
        }
        for sk in exited {
            // Gone already if its socket closed meanwhile.
            let _ = self.connections.remove(&sk);
        }
        for message in failures.messages() {
            warn!("{message}");
        }
        CounterSnapshot {
            processes,
            drops,
            awaiting_connections,
        }
    }
}

fn take_map(ebpf: &mut Ebpf, name: &str) -> Result<Map, String> {
    ebpf.take_map(name)
        .ok_or_else(|| format!("the probe has no map {name}"))
}

/// The read errors of one snapshot: the first of each map, and how many.
#[derive(Default)]
struct ReadFailures {
    /// (map, what the snapshot then misses, first error, count).
    maps: Vec<(&'static str, &'static str, MapError, u32)>,
}

impl ReadFailures {
    fn note(&mut self, map: &'static str, misses: &'static str, error: MapError) {
        match self.maps.iter_mut().find(|(m, ..)| *m == map) {
            Some((.., count)) => *count += 1,
            None => self.maps.push((map, misses, error, 1)),
        }
    }

    /// One line per map that failed.
    fn messages(self) -> Vec<String> {
        self.maps
            .into_iter()
            .map(|(map, misses, error, count)| {
                let times = if count == 1 {
                    String::new()
                } else {
                    format!(" {count} times")
                };
                let what = format!("reading the kernel's {map} map failed{times}");
                format!(
                    "{}; this snapshot may miss {misses}",
                    describe(&what, &error)
                )
            })
            .collect()
    }
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
    fn read_failures_are_one_line_per_map() {
        let mut failures = ReadFailures::default();
        failures.note("process_counts", "processes", MapError::ElementNotFound);
        failures.note("latency_by_process", "latencies", MapError::ElementNotFound);
        failures.note("process_counts", "processes", MapError::KeyNotFound);
        assert_eq!(
            failures.messages(),
            [
                "reading the kernel's process_counts map failed 2 times: element not found; \
                 this snapshot may miss processes",
                "reading the kernel's latency_by_process map failed: element not found; \
                 this snapshot may miss latencies",
            ]
        );
    }

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
