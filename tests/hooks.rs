//! The hook paths (issue 9): which kernel hooks each attaches, checked from
//! the kernel's own listing (`bpftool perf`), and how the daemon reports the
//! choice. The counting suites run on both paths through `SHS_HOOKS` (see
//! the Makefile); this file checks what only the choice itself decides.

mod common;

use std::collections::BTreeSet;
use std::fs;

use common::*;

/// Tracepoints the kernel lists as holding one of `pid`'s BPF programs: the
/// `tp_name` of every perf link in the process's fdinfo (bpftool 7.1's
/// `perf show` lists nothing on this kernel).
fn tracepoints_held_by(pid: u32) -> BTreeSet<String> {
    let mut held = BTreeSet::new();
    for entry in fs::read_dir(format!("/proc/{pid}/fd")).expect("list the daemon's fds") {
        let entry = entry.unwrap();
        let Ok(target) = fs::read_link(entry.path()) else {
            continue; // closed meanwhile
        };
        if target.to_string_lossy() != "anon_inode:bpf_link" {
            continue;
        }
        let fd = entry.file_name();
        let info = fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", fd.to_string_lossy()))
            .unwrap_or_default();
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_string())
        };
        // The TLS hooks' uprobes are perf links too (tests/tls.rs checks them).
        let uprobe = matches!(
            field("event_type:").as_deref(),
            Some("uprobe" | "uretprobe")
        );
        if field("link_type:").as_deref() == Some("perf") && !uprobe {
            assert_eq!(
                field("event_type:").as_deref(),
                Some("tracepoint"),
                "{info}"
            );
            held.insert(field("tp_name:").unwrap_or_else(|| panic!("no tp_name in {info}")));
        }
    }
    held
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// On both paths: cleanup. (The daemons here run with `--tls off`: what
/// the TLS hooks hold, uprobes and sched_process_exec, is checked in
/// tests/tls.rs, on kernels that allow them.)
const COMMON: [&str; 3] = [
    "sched_process_exit",
    "inet_sock_set_state",
    "tcp_destroy_sock",
];

fn hooks_info(daemon: &Daemon) -> String {
    let text = daemon.request("GET", "/metrics").text();
    text.lines()
        .find(|l| l.starts_with("scope_http_statistics_hooks_info{"))
        .unwrap_or_else(|| panic!("no hooks_info in /metrics:\n{text}"))
        .to_string()
}

#[test]
fn socket_path_hooks_no_syscall_tracepoint() {
    let daemon = Daemon::start_args(&["--hooks", "socket", "--tls", "off"]);
    let held = tracepoints_held_by(daemon.pid());
    let mut expected = set(&["sock_recv_length", "sock_send_length"]);
    expected.extend(set(&COMMON));
    assert_eq!(held, expected);
    assert!(
        held.iter()
            .all(|t| !t.starts_with("sys_") && t != "sys_enter" && t != "sys_exit"),
        "a syscall is hooked on the socket path: {held:?}"
    );
    assert!(hooks_info(&daemon).starts_with(
        "scope_http_statistics_hooks_info{path=\"socket\",reason=\"forced by --hooks socket\"} 1"
    ));
}

#[test]
fn syscall_path_hooks_the_eight_socket_syscalls() {
    let daemon = Daemon::start_args(&["--hooks", "syscalls", "--tls", "off"]);
    let mut expected = BTreeSet::new();
    for call in [
        "read", "recvfrom", "readv", "recvmsg", "write", "sendto", "writev", "sendmsg",
    ] {
        expected.insert(format!("sys_enter_{call}"));
        expected.insert(format!("sys_exit_{call}"));
    }
    expected.extend(set(&COMMON));
    assert_eq!(tracepoints_held_by(daemon.pid()), expected);
    assert_eq!(
        hooks_info(&daemon),
        "scope_http_statistics_hooks_info{path=\"syscalls\",reason=\"forced by --hooks syscalls\"} 1"
    );
}

#[test]
fn auto_takes_the_socket_path_on_this_kernel_and_says_why() {
    // This kernel (6.18) has the socket-layer tracepoints.
    let daemon = Daemon::start_args(&["--hooks", "auto"]);
    assert_eq!(
        hooks_info(&daemon),
        "scope_http_statistics_hooks_info{path=\"socket\",reason=\"auto: the kernel has the socket-layer tracepoints\"} 1"
    );
    assert!(
        daemon.log().contains(
            "probe attached on the socket path (auto: the kernel has the socket-layer tracepoints)"
        ),
        "{}",
        daemon.log()
    );
}
