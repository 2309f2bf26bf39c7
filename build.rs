//! Compiles the eBPF probe (probe/*.bpf.c) with clang into OUT_DIR; the daemon
//! embeds the object, so nothing but the binary is needed at run time.
//!
//! Also compiles and runs probe/abi_export.c for the build host: it prints,
//! from probe/http_stats.h, the constants, struct layouts and drop reasons
//! that src/probe/abi.rs includes and checks its mirrors against, and the
//! C fine_bucket() results that src/latency.rs's twin is tested against.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const PROBE_DIR: &str = "probe";
const PROBE_SOURCE: &str = "probe/http_stats.bpf.c";
const ABI_EXPORT_SOURCE: &str = "probe/abi_export.c";

fn main() {
    // The directory: any file added, removed or changed under probe/ (the
    // source and every header it includes) rebuilds the probe.
    println!("cargo:rerun-if-changed={PROBE_DIR}");
    println!("cargo:rerun-if-env-changed=CLANG");

    // The probe reads x86-64 registers, syscall numbers and user structs
    // (probe/kernel.h): on another target it would load and count nothing
    // right, so the build stops here instead.
    let target_arch = env::var("CARGO_CFG_TARGET_ARCH").expect("cargo sets CARGO_CFG_TARGET_ARCH");
    if target_arch != "x86_64" {
        panic!(
            "the eBPF probe supports x86_64 targets only (it reads x86-64 registers and syscall \
             numbers; see probe/kernel.h); this build targets {target_arch}"
        );
    }

    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".to_string());
    build_probe(&clang, &out_dir);
    export_abi(&clang, &out_dir);
}

fn build_probe(clang: &str, out_dir: &Path) {
    // The libbpf headers include <asm/types.h>, which Debian keeps under the
    // multiarch directory; clang -target bpf does not search it by itself.
    let multiarch = format!("/usr/include/{}-linux-gnu", env::consts::ARCH);
    run_clang(
        Command::new(clang)
            .args([
                "-target", "bpf", "-mcpu=v3", "-g", "-O2", "-Wall", "-Werror",
            ])
            // What libbpf's bpf_tracing.h expects; probe/kernel.h checks it.
            .arg("-D__TARGET_ARCH_x86")
            .arg(format!("-I{multiarch}"))
            .args(["-c", PROBE_SOURCE, "-o"])
            .arg(out_dir.join("http_stats.bpf.o")),
        clang,
        PROBE_SOURCE,
    );
}

/// Builds probe/abi_export.c for this host and writes what it prints:
/// abi.rs (constants, layouts, drop reasons) and fine_bucket_samples.rs.
fn export_abi(clang: &str, out_dir: &Path) {
    let program = out_dir.join("abi_export");
    run_clang(
        Command::new(clang)
            .args(["-O1", "-Wall", "-Wextra", "-Werror", "-I", PROBE_DIR])
            .arg(ABI_EXPORT_SOURCE)
            .arg("-o")
            .arg(&program),
        clang,
        ABI_EXPORT_SOURCE,
    );
    for (arg, file) in [
        (None, "abi.rs"),
        (Some("fine_bucket_samples"), "fine_bucket_samples.rs"),
    ] {
        let output = Command::new(&program)
            .args(arg)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
        assert!(
            output.status.success(),
            "{} failed: {}",
            program.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        let path = out_dir.join(file);
        fs::write(&path, &output.stdout)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    }
}

fn run_clang(command: &mut Command, clang: &str, source: &str) {
    let status = command.status().unwrap_or_else(|e| {
        panic!(
            "cannot run {clang} to build {source} ({e}); install clang and libbpf-dev (make deps)"
        )
    });
    assert!(
        status.success(),
        "{clang} failed to compile {source}; install clang and libbpf-dev (make deps)"
    );
}
