//! tracefs is not mounted at boot on many hosts: the daemon mounts it itself
//! and says so. Alone in its test binary because it unmounts tracefs, which
//! every other daemon starting at that moment would need.

mod common;

use std::process::Command;

use common::*;

fn tracefs_mounted() -> bool {
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(2) == Some("tracefs"))
}

fn run(cmd: &str, args: &[&str]) -> bool {
    Command::new(cmd)
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"))
        .success()
}

#[test]
fn a_missing_tracefs_is_mounted_and_logged() {
    require_root();
    // Every tracefs mount (it can be at /sys/kernel/tracing and under
    // debugfs); attached probes keep working without it.
    while tracefs_mounted() {
        let target = std::fs::read_to_string("/proc/self/mounts")
            .unwrap()
            .lines()
            .find(|l| l.split(' ').nth(2) == Some("tracefs"))
            .and_then(|l| l.split(' ').nth(1).map(str::to_string))
            .unwrap();
        assert!(run("umount", &[&target]), "umount {target}");
    }
    let daemon = Daemon::start();
    assert!(tracefs_mounted(), "the daemon did not mount tracefs");
    let mounted = daemon
        .log()
        .lines()
        .filter(|l| l.contains("tracefs was not mounted: mounted it at /sys/kernel/tracing"))
        .count();
    assert_eq!(mounted, 1, "log:\n{}", daemon.log());
    assert_eq!(daemon.request("GET", "/report").status, 200);

    // Mounted now: a second start says nothing about it.
    let again = Daemon::start();
    assert!(
        !again.log().contains("tracefs was not mounted"),
        "{}",
        again.log()
    );
}
