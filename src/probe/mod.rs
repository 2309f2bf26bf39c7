//! The eBPF probe (embedded in the binary): checking the host, loading and
//! attaching it on one of its hook paths, and reading its counters.
//!
//! - `preflight`: privileges, tracefs, BTF, before anything is loaded;
//! - `hooks`: the hook paths, which one to use, loading and attaching;
//! - `abi`: the structs and constants shared with probe/http_stats.h,
//!   generated and checked at build time;
//! - `maps`: reading the kernel maps into a snapshot.

use std::io;

use aya::{Ebpf, EbpfLoader};

use crate::rates::CounterSnapshot;

pub mod abi;
mod hooks;
mod maps;
mod preflight;

pub use hooks::{HookChoice, HookPath};

/// The compiled probe, built by build.rs from probe/http_stats.bpf.c.
static PROBE_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/http_stats.bpf.o"));

/// The loaded and attached probe. Dropping it detaches everything.
pub struct Probe {
    // Owns the programs and their links; the maps were taken out of it.
    ebpf: Ebpf,
    maps: maps::ProbeMaps,
    pub hook_path: HookPath,
    /// Why this path: forced, or what auto found.
    pub hook_reason: String,
}

impl Probe {
    /// Loads the embedded probe, sizes its process table and attaches every
    /// hook. Fails, with one line saying why, before anything is attached
    /// when the host cannot run it.
    pub fn load(max_processes: u32, choice: HookChoice) -> Result<Probe, String> {
        preflight::check_host()?;
        hooks::check_tracepoints(&hooks::COMMON_HOOKS)?;
        let has_socket_tracepoints = hooks::check_tracepoints(&hooks::SOCKET_HOOKS).is_ok();
        let (first, may_fall_back) = hooks::plan(choice, has_socket_tracepoints)?;
        let mut ebpf = EbpfLoader::new()
            .map_max_entries("process_counts", max_processes)
            .map_max_entries("latency_by_process", max_processes)
            .load(PROBE_OBJECT)
            .map_err(|e| describe("cannot load the eBPF probe", &e))?;
        let (path, mut reason) = hooks::load_path(&mut ebpf, choice, first, may_fall_back)?;
        let cleanup = hooks::ExitCleanup::probe();
        if let Some(note) = cleanup.note() {
            reason.push_str("; ");
            reason.push_str(note);
        }
        hooks::attach(&mut ebpf, path, cleanup)?;
        let maps = maps::ProbeMaps::take(&mut ebpf, cleanup == hooks::ExitCleanup::AtSnapshot)?;
        Ok(Probe {
            ebpf,
            maps,
            hook_path: path,
            hook_reason: reason,
        })
    }

    /// The loaded object, for the TLS hooks (src/tls/), which load and
    /// attach programs of their own.
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// Reads every process's counters and the drop counters.
    pub fn snapshot(&mut self) -> CounterSnapshot {
        self.maps.snapshot()
    }
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
