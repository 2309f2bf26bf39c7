//! Start-up on kernels that lack what the probe needs, simulated on this one:
//! the daemon runs in a private mount namespace (`unshare --mount`) where a
//! tmpfs hides /sys/kernel/btf or one tracefs events directory. It must say
//! what is missing in one line and exit 1, or, for `--hooks auto` without the
//! socket-layer tracepoints, fall back to the syscall path and say why.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::*;

const TRACEFS: &str = "/sys/kernel/tracing";

/// Runs the daemon with `args` after `hide` is covered by an empty tmpfs in a
/// mount namespace of its own; `timeout` stops a daemon that starts.
fn run_hiding(hide: &str, args: &[&str], timeout_secs: u32) -> Output {
    require_root();
    assert!(
        Path::new(TRACEFS).join("events").is_dir(),
        "tracefs must be mounted at {TRACEFS} for these tests"
    );
    // An empty `hide`: the kernel really lacks what the test is about.
    let mount = if hide.is_empty() {
        String::new()
    } else {
        format!("mount -t tmpfs none {hide} && ")
    };
    let script = format!(
        "mount --make-rprivate / && {mount}exec timeout --preserve-status -s INT {timeout_secs} \"$0\" \"$@\""
    );
    Command::new("unshare")
        .args(["--mount", "sh", "-c", &script, DAEMON])
        .args(args)
        .output()
        .expect("run unshare (util-linux)")
}

fn stderr_lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .map(str::to_string)
        .collect()
}

/// GET /metrics over the daemon's socket, None while it is not serving.
fn try_metrics(socket: &str) -> Option<String> {
    let out = Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "1",
            "--unix-socket",
            socket,
            "http://plugin/metrics",
        ])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The pid of the daemon started with `--socket socket`.
fn daemon_serving(socket: &str) -> Option<i32> {
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
            let is_daemon = args.first()? == &DAEMON.as_bytes()
                && args
                    .windows(2)
                    .any(|w| w[0] == b"--socket" && w[1] == socket.as_bytes());
            is_daemon.then_some(pid)
        })
}

fn socket_in(dir: &TempDir) -> String {
    dir.path()
        .join("plugins/http-statistics.sock")
        .display()
        .to_string()
}

#[test]
fn missing_btf_is_one_line_and_exit_1() {
    let dir = TempDir::new("nobtf");
    let socket = socket_in(&dir);
    let out = run_hiding("/sys/kernel/btf", &["--socket", &socket], 20);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_eq!(
        stderr_lines(&out),
        vec![format!(
            "scope-http-statistics: Linux {} has no BTF (/sys/kernel/btf/vmlinux is missing): \
              the probe needs Linux 5.10 or later built with CONFIG_DEBUG_INFO_BTF",
            release.trim()
        )]
    );
    assert!(!Path::new(&socket).exists());
}

#[test]
fn a_missing_cleanup_tracepoint_is_one_line_and_exit_1() {
    let dir = TempDir::new("nosched");
    let socket = socket_in(&dir);
    let out = run_hiding(
        &format!("{TRACEFS}/events/sched"),
        &["--socket", &socket],
        20,
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(
        stderr_lines(&out),
        vec![
            "scope-http-statistics: tracepoint sched/sched_process_exit is missing on this kernel"
                .to_string()
        ]
    );
    assert!(!Path::new(&socket).exists());
}

#[test]
fn missing_syscall_tracepoints_fail_the_syscall_path() {
    let dir = TempDir::new("nosys");
    let socket = socket_in(&dir);
    let out = run_hiding(
        &format!("{TRACEFS}/events/syscalls"),
        &["--socket", &socket, "--hooks", "syscalls"],
        20,
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(
        stderr_lines(&out),
        vec![
            "scope-http-statistics: tracepoint syscalls/sys_enter_read is missing on this kernel"
                .to_string()
        ]
    );
}

/// A kernel before 6.3 has no sock_recv_length/sock_send_length: hiding the
/// whole `sock` events directory also hides inet_sock_set_state, which the
/// probe needs on both paths, so those are hidden one by one instead.
fn hide_socket_layer_tracepoints() -> String {
    if !Path::new(TRACEFS)
        .join("events/sock/sock_recv_length")
        .exists()
    {
        return String::new(); // before 6.3: nothing to hide
    }
    format!(
        "{TRACEFS}/events/sock/sock_recv_length && mount -t tmpfs none {TRACEFS}/events/sock/sock_send_length"
    )
}

#[test]
fn forcing_the_socket_path_without_its_tracepoints_is_one_line_and_exit_1() {
    let dir = TempDir::new("nosock");
    let socket = socket_in(&dir);
    let out = run_hiding(
        &hide_socket_layer_tracepoints(),
        &["--socket", &socket, "--hooks", "socket"],
        20,
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(
        stderr_lines(&out),
        vec![
            "scope-http-statistics: --hooks socket: this kernel has no sock/sock_recv_length and \
              sock/sock_send_length tracepoints (Linux 6.3 or later); use --hooks syscalls"
                .to_string()
        ]
    );
    assert!(!Path::new(&socket).exists());
}

#[test]
fn auto_falls_back_to_syscalls_without_the_socket_layer_and_says_why() {
    let dir = TempDir::new("fallback");
    let socket = socket_in(&dir);
    // The test reads the daemon's hooks gauge, then stops it with SIGINT (a
    // clean exit 0); `timeout` stops it anyway after 40 s.
    let reader = {
        let socket = socket.clone();
        std::thread::spawn(move || {
            let mut metrics = String::new();
            wait_until(Duration::from_secs(30), || {
                metrics = try_metrics(&socket).unwrap_or_default();
                metrics.contains("hooks_info")
            });
            if let Some(pid) = daemon_serving(&socket) {
                // SAFETY: kill has no memory-safety preconditions.
                unsafe { libc::kill(pid, libc::SIGINT) };
            }
            metrics
        })
    };
    let out = run_hiding(&hide_socket_layer_tracepoints(), &["--socket", &socket], 40);
    let metrics = reader.join().expect("the reader thread");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let info = metrics
        .lines()
        .find(|l| l.starts_with("scope_http_statistics_hooks_info"))
        .unwrap_or_default()
        .to_string();
    // Before 5.13 (booted by scripts/test-kernels.sh) the reason also says
    // what the probe left out.
    let reason =
        "auto: the kernel has no sock_recv_length/sock_send_length tracepoints (Linux 6.3+)";
    let without_walk = format!(
        "{reason}; no bpf_for_each_map_elem (Linux 5.13+): an exited process's connections \
         are forgotten at the next snapshot, not at its exit"
    );
    let gauge =
        |r: &str| format!("scope_http_statistics_hooks_info{{path=\"syscalls\",reason=\"{r}\"}} 1");
    assert!(
        info == gauge(reason) || info == gauge(&without_walk),
        "{info}"
    );
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains(&format!("probe attached on the syscalls path ({reason})"))
            || log.contains(&format!(
                "probe attached on the syscalls path ({without_walk})"
            )),
        "{log}"
    );
    assert!(
        !Path::new(&socket).exists(),
        "SIGINT left the socket behind"
    );
}
