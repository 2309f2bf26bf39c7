//! Whether this host can run the probe, checked before anything is loaded:
//! privileges, tracefs (mounted when missing) and kernel BTF.

use std::ffi::CString;
use std::io;
use std::path::Path;

use aya::programs::ProgramType;
use aya::sys::{is_helper_supported, BpfHelper};
use log::{debug, info};

/// Checks the host, in the order an operator would fix it; mounts tracefs
/// when no tracefs is mounted. One line saying what is missing otherwise.
pub(super) fn check_host() -> Result<(), String> {
    check_privileges()?;
    raise_memlock();
    ensure_tracefs()?;
    check_btf()?;
    check_helpers()
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK (64 KiB by default
/// under many init systems) instead of the memory cgroup: lift it where we
/// may. Where we may not (no CAP_SYS_RESOURCE), a kernel that needs it says
/// so when the maps are created.
fn raise_memlock() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit only reads the struct it is given.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        debug!(
            "cannot lift RLIMIT_MEMLOCK ({}): fine on Linux 5.11+",
            io::Error::last_os_error()
        );
    }
}

/// Capabilities that let a non-root process load and attach the probe
/// (bit numbers from linux/capability.h).
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Whether the effective capability set (the hex `CapEff:` of
/// /proc/self/status) allows loading the probe.
fn capabilities_suffice(status: &str) -> bool {
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
    privileges_verdict(std::fs::read_to_string("/proc/self/status"))
}

/// Whether the process may load the probe, from what reading
/// /proc/self/status gave: a read failure is reported as that, not as a
/// lack of privileges.
fn privileges_verdict(status: io::Result<String>) -> Result<(), String> {
    let status =
        status.map_err(|e| format!("cannot read /proc/self/status to check privileges: {e}"))?;
    if capabilities_suffice(&status) {
        Ok(())
    } else {
        Err("not enough privileges to load the eBPF probe: run as root, or with CAP_BPF and CAP_PERFMON \
             (CAP_SYS_ADMIN on kernels older than 5.8)"
            .to_string())
    }
}

/// The probe's CO-RE reads are relocated against the kernel's own BTF.
fn check_btf() -> Result<(), String> {
    if Path::new("/sys/kernel/btf/vmlinux").exists() {
        return Ok(());
    }
    Err(format!(
        "Linux {} has no BTF (/sys/kernel/btf/vmlinux is missing): the probe needs Linux \
         {MINIMUM_KERNEL} or later built with CONFIG_DEBUG_INFO_BTF",
        kernel_release()
    ))
}

/// The oldest kernel the probe is tested on: CI boots it (scripts/test-kernels.sh).
pub(super) const MINIMUM_KERNEL: &str = "5.10";

/// This kernel's release, for messages only: what the kernel can do is asked
/// of it, never read from its version.
fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|r| r.trim().to_string())
        .unwrap_or_else(|_| "(unknown release)".to_string())
}

/// Kernels older than the minimum lack helpers every program uses; one line
/// saying so beats the verifier's. The newest of them, bpf_probe_read_user
/// (5.5), is asked of the kernel with a tiny program; when that cannot be
/// told, loading the probe says what is missing.
fn check_helpers() -> Result<(), String> {
    match is_helper_supported(ProgramType::TracePoint, BpfHelper::BPF_FUNC_probe_read_user) {
        Ok(false) => Err(format!(
            "Linux {} lacks the BPF helper bpf_probe_read_user (Linux 5.5): the probe needs \
             Linux {MINIMUM_KERNEL} or later",
            kernel_release()
        )),
        Ok(true) => Ok(()),
        Err(e) => {
            debug!("probing bpf_probe_read_user failed ({e}); loading the probe will tell");
            Ok(())
        }
    }
}

const TRACEFS_MOUNTS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

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
pub(super) fn tracepoint_exists(category: &str, name: &str) -> bool {
    TRACEFS_MOUNTS.iter().any(|m| {
        Path::new(m)
            .join("events")
            .join(category)
            .join(name)
            .join("id")
            .is_file()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn an_unreadable_status_is_reported_as_such() {
        let denied = io::Error::from(io::ErrorKind::PermissionDenied);
        let err = privileges_verdict(Err(denied)).unwrap_err();
        assert!(
            err.starts_with("cannot read /proc/self/status to check privileges: "),
            "{err}"
        );
    }
}
