//! Compiles the eBPF probe (probe/*.bpf.c) with clang into OUT_DIR; the daemon
//! embeds the object, so nothing but the binary is needed at run time.

use std::env;
use std::path::PathBuf;
use std::process::Command;

const PROBE_SOURCE: &str = "probe/http_stats.bpf.c";
const PROBE_HEADER: &str = "probe/http_stats.h";

fn main() {
    println!("cargo:rerun-if-changed={PROBE_SOURCE}");
    println!("cargo:rerun-if-changed={PROBE_HEADER}");
    println!("cargo:rerun-if-env-changed=CLANG");

    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let object = out_dir.join("http_stats.bpf.o");
    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".to_string());
    // The libbpf headers include <asm/types.h>, which Debian keeps under the
    // multiarch directory; clang -target bpf does not search it by itself.
    let multiarch = format!("/usr/include/{}-linux-gnu", env::consts::ARCH);

    let status = Command::new(&clang)
        .args(["-target", "bpf", "-mcpu=v3", "-g", "-O2", "-Wall", "-Werror"])
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
