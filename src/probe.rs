//! Loading the eBPF probe (embedded in the binary), attaching it to the
//! syscall tracepoints, and reading its counters.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io;
use std::path::Path;

use aya::maps::{HashMap, MapData, PerCpuArray};
use aya::programs::TracePoint;
use aya::{Ebpf, EbpfLoader};
use log::{debug, info, warn};

use crate::cli::HookChoice;
use crate::latency::LatencyHistogram;
use crate::rates::{CounterSnapshot, ProbeDrops, ProcessCounts};

pub mod abi;

use abi::{RawAwaiting, RawLatencyStats, RawProcessCounts};

/// The compiled probe, built by build.rs from probe/http_stats.bpf.c.
static PROBE_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/http_stats.bpf.o"));

/// (program, tracepoint category, tracepoint names it is attached to).
type Hook = (&'static str, &'static str, &'static [&'static str]);

/// The socket-layer path (Linux 6.3+): unrelated syscalls pay nothing.
const SOCKET_HOOKS: [Hook; 2] = [
    ("sock_recv", "sock", &["sock_recv_length"]),
    ("sock_send", "sock", &["sock_send_length"]),
];

/// The syscall-tracepoint path. The eight exits share one program: the
/// kernel verifies it once.
const SYSCALL_HOOKS: [Hook; 9] = [
    ("enter_read", "syscalls", &["sys_enter_read"]),
    ("enter_recvfrom", "syscalls", &["sys_enter_recvfrom"]),
    ("enter_readv", "syscalls", &["sys_enter_readv"]),
    ("enter_recvmsg", "syscalls", &["sys_enter_recvmsg"]),
    ("enter_write", "syscalls", &["sys_enter_write"]),
    ("enter_sendto", "syscalls", &["sys_enter_sendto"]),
    ("enter_writev", "syscalls", &["sys_enter_writev"]),
    ("enter_sendmsg", "syscalls", &["sys_enter_sendmsg"]),
    (
        "exit_socket_io",
        "syscalls",
        &[
            "sys_exit_read",
            "sys_exit_recvfrom",
            "sys_exit_readv",
            "sys_exit_recvmsg",
            "sys_exit_write",
            "sys_exit_sendto",
            "sys_exit_writev",
            "sys_exit_sendmsg",
        ],
    ),
];

/// Needed on both paths: cleanup when processes exit and sockets close.
const COMMON_HOOKS: [Hook; 2] = [
    ("process_exit", "sched", &["sched_process_exit"]),
    ("socket_state", "sock", &["inet_sock_set_state"]),
];

/// The hook path in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookPath {
    Socket,
    Syscalls,
}

impl HookPath {
    pub fn name(self) -> &'static str {
        match self {
            HookPath::Socket => "socket",
            HookPath::Syscalls => "syscalls",
        }
    }

    fn hooks(self) -> &'static [Hook] {
        match self {
            HookPath::Socket => &SOCKET_HOOKS,
            HookPath::Syscalls => &SYSCALL_HOOKS,
        }
    }
}

/// What to try, given the choice and whether the kernel has the socket-layer
/// tracepoints: the path to load first, and whether syscalls may replace it
/// when the kernel refuses it. Pure, so the rules are tested.
pub fn plan(choice: HookChoice, has_socket_tracepoints: bool) -> Result<(HookPath, bool), String> {
    match (choice, has_socket_tracepoints) {
        (HookChoice::Syscalls, _) => Ok((HookPath::Syscalls, false)),
        (HookChoice::Socket, true) => Ok((HookPath::Socket, false)),
        (HookChoice::Socket, false) => Err(
            "--hooks socket: this kernel has no sock/sock_recv_length and \
             sock/sock_send_length tracepoints (Linux 6.3 or later); use --hooks syscalls"
                .to_string(),
        ),
        (HookChoice::Auto, true) => Ok((HookPath::Socket, true)),
        (HookChoice::Auto, false) => Ok((HookPath::Syscalls, false)),
    }
}

fn check_tracepoints(hooks: &[Hook]) -> Result<(), String> {
    for (_, category, names) in hooks {
        for name in names.iter() {
            if !tracepoint_exists(category, name) {
                return Err(format!(
                    "tracepoint {category}/{name} is missing on this kernel"
                ));
            }
        }
    }
    Ok(())
}

fn tracepoint_program<'a>(ebpf: &'a mut Ebpf, program: &str) -> Result<&'a mut TracePoint, String> {
    ebpf.program_mut(program)
        .ok_or_else(|| format!("the probe has no program {program}"))?
        .try_into()
        .map_err(|e| describe(&format!("program {program}"), &e))
}

/// Loads every program of `hooks` (the verifier runs here).
fn load_programs(ebpf: &mut Ebpf, hooks: &[Hook]) -> Result<(), String> {
    for (program, _, _) in hooks {
        tracepoint_program(ebpf, program)?
            .load()
            .map_err(|e| describe(&format!("the kernel refused program {program}"), &e))?;
    }
    Ok(())
}

fn attach_programs(ebpf: &mut Ebpf, hooks: &[Hook]) -> Result<(), String> {
    for (program, category, names) in hooks {
        let tp = tracepoint_program(ebpf, program)?;
        for name in names.iter() {
            tp.attach(category, name).map_err(|e| {
                describe(&format!("cannot attach {program} to {category}/{name}"), &e)
            })?;
            debug!("attached {program} to {category}/{name}");
        }
    }
    Ok(())
}

const TRACEFS_MOUNTS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// The loaded and attached probe. Dropping it detaches everything.
pub struct Probe {
    // Owns the programs and their links; the maps below were taken out of it.
    _ebpf: Ebpf,
    process_counts: HashMap<MapData, u32, RawProcessCounts>,
    latency_by_process: HashMap<MapData, u32, RawLatencyStats>,
    awaiting_response: HashMap<MapData, u64, RawAwaiting>,
    probe_drops: PerCpuArray<MapData, u64>,
    pub hook_path: HookPath,
    /// Why this path: forced, or what auto found.
    pub hook_reason: String,
}

/// Capabilities that let a non-root process load and attach the probe
/// (bit numbers from linux/capability.h).
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Whether the effective capability set (the hex `CapEff:` of
/// /proc/self/status) allows loading the probe.
pub fn capabilities_suffice(status: &str) -> bool {
    let Some(caps) = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
    else {
        return false;
    };
    let has = |bit: u32| caps & (1u64 << bit) != 0;
    has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON))
}

fn check_privileges() -> Result<(), String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    if capabilities_suffice(&status) {
        Ok(())
    } else {
        Err("not enough privileges to load the eBPF probe: run as root, or with CAP_BPF and CAP_PERFMON \
             (CAP_SYS_ADMIN on kernels older than 5.8)"
            .to_string())
    }
}

fn tracefs_mounted() -> bool {
    TRACEFS_MOUNTS
        .iter()
        .any(|m| Path::new(m).join("events").is_dir())
}

/// Mounts tracefs at /sys/kernel/tracing when no tracefs is mounted: the
/// tracepoints are attached through it, and many hosts do not mount it.
fn ensure_tracefs() -> Result<(), String> {
    if tracefs_mounted() {
        return Ok(());
    }
    let target = TRACEFS_MOUNTS[0];
    let c = |s: &str| CString::new(s).expect("static string without NUL");
    let (source, dir, fstype) = (c("nodev"), c(target), c("tracefs"));
    // SAFETY: every pointer is a valid NUL-terminated string that outlives the
    // call; a null data argument is allowed for tracefs.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            dir.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(format!(
            "tracefs is not mounted and mounting it at {target} failed: {}",
            io::Error::last_os_error()
        ));
    }
    info!("tracefs was not mounted: mounted it at {target}");
    Ok(())
}

/// Whether tracefs lists the tracepoint (its `id` is what attaching reads).
fn tracepoint_exists(category: &str, name: &str) -> bool {
    TRACEFS_MOUNTS.iter().any(|m| {
        Path::new(m)
            .join("events")
            .join(category)
            .join(name)
            .join("id")
            .is_file()
    })
}

/// Describes a load/attach error with its whole source chain, and says what
/// to do when the kernel refused for lack of permission.
fn describe(what: &str, err: &dyn std::error::Error) -> String {
    let mut msg = format!("{what}: {err}");
    let mut source = err.source();
    let mut denied = false;
    while let Some(s) = source {
        msg.push_str(&format!(": {s}"));
        if let Some(io) = s.downcast_ref::<io::Error>() {
            denied |= matches!(io.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES));
        }
        source = s.source();
    }
    if denied {
        msg.push_str(" (the kernel refused: run as root, or with CAP_BPF and CAP_PERFMON)");
    }
    msg
}

impl Probe {
    /// Loads the embedded probe, sizes its process table and attaches every
    /// hook. Fails, with one line saying why, before anything is attached
    /// when the host cannot run it.
    pub fn load(max_processes: u32, choice: HookChoice) -> Result<Probe, String> {
        check_privileges()?;
        ensure_tracefs()?;
        if !Path::new("/sys/kernel/btf/vmlinux").exists() {
            return Err(
                "the kernel has no BTF (/sys/kernel/btf/vmlinux is missing): \
                        the probe needs a kernel built with CONFIG_DEBUG_INFO_BTF"
                    .to_string(),
            );
        }
        check_tracepoints(&COMMON_HOOKS)?;
        let (first, may_fall_back) = plan(choice, check_tracepoints(&SOCKET_HOOKS).is_ok())?;
        let mut ebpf = EbpfLoader::new()
            .map_max_entries("process_counts", max_processes)
            .map_max_entries("latency_by_process", max_processes)
            .load(PROBE_OBJECT)
            .map_err(|e| describe("cannot load the eBPF probe", &e))?;
        let (path, reason) = match (first, load_programs(&mut ebpf, first.hooks())) {
            (HookPath::Socket, Ok(())) if choice == HookChoice::Auto => (
                HookPath::Socket,
                "auto: the kernel has the socket-layer tracepoints".to_string(),
            ),
            (HookPath::Socket, Ok(())) => {
                (HookPath::Socket, "forced by --hooks socket".to_string())
            }
            (HookPath::Socket, Err(e)) if may_fall_back => {
                check_tracepoints(&SYSCALL_HOOKS)?;
                load_programs(&mut ebpf, &SYSCALL_HOOKS)?;
                (
                    HookPath::Syscalls,
                    format!("auto: socket-layer programs refused ({e})"),
                )
            }
            (HookPath::Socket, Err(e)) => return Err(format!("--hooks socket: {e}")),
            (HookPath::Syscalls, result) => {
                check_tracepoints(&SYSCALL_HOOKS)?;
                result?;
                let reason = if choice == HookChoice::Syscalls {
                    "forced by --hooks syscalls"
                } else {
                    "auto: the kernel has no sock_recv_length/sock_send_length tracepoints (Linux 6.3+)"
                };
                (HookPath::Syscalls, reason.to_string())
            }
        };
        load_programs(&mut ebpf, &COMMON_HOOKS)?;
        attach_programs(&mut ebpf, path.hooks())?;
        attach_programs(&mut ebpf, &COMMON_HOOKS)?;
        let process_counts = HashMap::try_from(take_map(&mut ebpf, "process_counts")?)
            .map_err(|e| describe("map process_counts", &e))?;
        let latency_by_process = HashMap::try_from(take_map(&mut ebpf, "latency_by_process")?)
            .map_err(|e| describe("map latency_by_process", &e))?;
        let awaiting_response = HashMap::try_from(take_map(&mut ebpf, "awaiting_response")?)
            .map_err(|e| describe("map awaiting_response", &e))?;
        let probe_drops = PerCpuArray::try_from(take_map(&mut ebpf, "probe_drops")?)
            .map_err(|e| describe("map probe_drops", &e))?;
        Ok(Probe {
            _ebpf: ebpf,
            process_counts,
            latency_by_process,
            awaiting_response,
            probe_drops,
            hook_path: path,
            hook_reason: reason,
        })
    }

    /// Reads every process's counters and the drop counters.
    pub fn snapshot(&self) -> CounterSnapshot {
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

fn take_map(ebpf: &mut Ebpf, name: &str) -> Result<aya::maps::Map, String> {
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

    #[test]
    fn hook_plans() {
        assert_eq!(plan(HookChoice::Auto, true), Ok((HookPath::Socket, true)));
        assert_eq!(
            plan(HookChoice::Auto, false),
            Ok((HookPath::Syscalls, false))
        );
        assert_eq!(
            plan(HookChoice::Socket, true),
            Ok((HookPath::Socket, false))
        );
        assert!(plan(HookChoice::Socket, false)
            .unwrap_err()
            .contains("Linux 6.3"));
        assert_eq!(
            plan(HookChoice::Syscalls, true),
            Ok((HookPath::Syscalls, false))
        );
        assert_eq!(
            plan(HookChoice::Syscalls, false),
            Ok((HookPath::Syscalls, false))
        );
    }

    #[test]
    fn capability_check() {
        let status = |caps: &str| format!("Name:\tx\nCapInh:\t0\nCapEff:\t{caps}\n");
        assert!(capabilities_suffice(&status("000001ffffffffff"))); // root
        assert!(capabilities_suffice(&status("000000c000000000"))); // BPF + PERFMON
        assert!(capabilities_suffice(&status("0000000000200000"))); // SYS_ADMIN
        assert!(!capabilities_suffice(&status("0000008000000000"))); // BPF alone
        assert!(!capabilities_suffice(&status("0000000000000000")));
        assert!(!capabilities_suffice("garbage"));
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
