//! Compiles the eBPF probe (probe/*.bpf.c) with clang into OUT_DIR; the daemon
//! embeds the object, so nothing but the binary is needed at run time.

use std::env;
use std::path::PathBuf;
use std::process::Command;

const PROBE_DIR: &str = "probe";
const PROBE_SOURCE: &str = "probe/http_stats.bpf.c";

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
    let object = out_dir.join("http_stats.bpf.o");
    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".to_string());
    // The libbpf headers include <asm/types.h>, which Debian keeps under the
    // multiarch directory; clang -target bpf does not search it by itself.
    let multiarch = format!("/usr/include/{}-linux-gnu", env::consts::ARCH);

    let status = Command::new(&clang)
        .args(["-target", "bpf", "-mcpu=v3", "-g", "-O2", "-Wall", "-Werror"])
        // What libbpf's bpf_tracing.h expects; probe/kernel.h checks it.
        .arg("-D__TARGET_ARCH_x86")
        .arg(format!("-I{multiarch}"))
        .args(["-c", PROBE_SOURCE, "-o"])
        .arg(&object)
        .status()
        .unwrap_or_else(|e| {
            panic!("cannot run {clang} to build the eBPF probe ({e}); install clang and libbpf-dev (make deps)")
        });
    assert!(
        status.success(),
        "{clang} failed to compile {PROBE_SOURCE}; install clang and libbpf-dev (make deps)"
    );
}
