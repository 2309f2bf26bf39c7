//! tracefs is not mounted at boot on many hosts: the daemon mounts it itself
//! and says so. The scenario unmounts tracefs, which every other daemon on the
//! host needs, so it never runs in the host's mount namespace: the test runs
//! itself again under `unshare --mount --propagation private`, where what it
//! unmounts and what the daemon mounts stay invisible to the host.

mod common;

use std::process::Command;

use common::*;

/// Set, to the mount namespace of the test that started it, in the
/// environment of the run inside the private mount namespace.
const IN_PRIVATE_NAMESPACE: &str = "SHS_TEST_IN_PRIVATE_MOUNT_NAMESPACE";
const TEST: &str = "a_missing_tracefs_is_mounted_and_logged";

/// Where tracefs is mounted in this process's mount namespace.
fn tracefs_mounts() -> Vec<String> {
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .lines()
        .filter(|l| l.split(' ').nth(2) == Some("tracefs"))
        .filter_map(|l| l.split(' ').nth(1).map(str::to_string))
        .collect()
}

/// This process's mount namespace, as `mnt:[inode]`.
fn mount_namespace() -> String {
    std::fs::read_link("/proc/self/ns/mnt")
        .expect("read /proc/self/ns/mnt")
        .display()
        .to_string()
}

#[test]
fn a_missing_tracefs_is_mounted_and_logged() {
    require_root();
    if let Ok(host_namespace) = std::env::var(IN_PRIVATE_NAMESPACE) {
        without_tracefs_the_daemon_mounts_it_and_says_so_once(&host_namespace);
        return;
    }
    let host_mounts = tracefs_mounts();
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private"])
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", TEST, "--nocapture", "--test-threads=1"])
        .env(IN_PRIVATE_NAMESPACE, mount_namespace())
        .output()
        .expect("run unshare (util-linux)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the scenario failed in its mount namespace ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains("test result: ok. 1 passed"),
        "the scenario did not run in its mount namespace:\n{stdout}\n{stderr}"
    );
    assert_eq!(
        tracefs_mounts(),
        host_mounts,
        "the host's tracefs mounts changed"
    );
}

/// Runs in the private mount namespace only.
fn without_tracefs_the_daemon_mounts_it_and_says_so_once(host_namespace: &str) {
    assert_ne!(
        mount_namespace(),
        host_namespace,
        "refusing to unmount tracefs in the host's mount namespace"
    );
    // Every tracefs mount (it can be at /sys/kernel/tracing and under
    // debugfs, and stacked), the last mounted first; attached probes keep
    // working without it.
    for target in tracefs_mounts().iter().rev() {
        let unmounted = Command::new("umount")
            .arg(target)
            .status()
            .unwrap_or_else(|e| panic!("umount: {e}"))
            .success();
        assert!(unmounted, "umount {target}");
    }
    assert_eq!(
        tracefs_mounts(),
        Vec::<String>::new(),
        "tracefs still mounted"
    );

    let daemon = Daemon::start();
    assert!(
        tracefs_mounts().iter().any(|m| m == "/sys/kernel/tracing"),
        "the daemon did not mount tracefs at /sys/kernel/tracing: {:?}",
        tracefs_mounts()
    );
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
