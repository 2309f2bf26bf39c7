//! Command line and process life cycle of the daemon.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};

use common::*;

fn run(args: &[&str]) -> std::process::Output {
    Command::new(DAEMON)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {DAEMON}: {e}"))
}

#[test]
fn help_describes_the_options() {
    let output = run(&["--help"]);
    assert!(output.status.success(), "--help: {}", output.status);
    let text = String::from_utf8_lossy(&output.stdout);
    for option in [
        "--socket",
        "--hostname",
        "--log-level",
        "--help",
        "--version",
    ] {
        assert!(
            text.contains(option),
            "--help does not mention {option}:\n{text}"
        );
    }
}

#[test]
fn version_prints_the_crate_version() {
    let output = run(&["--version"]);
    assert!(output.status.success(), "--version: {}", output.status);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains(env!("CARGO_PKG_VERSION")),
        "--version printed {text:?}"
    );
}

#[test]
fn unknown_option_is_rejected() {
    let output = run(&["--no-such-option"]);
    assert!(!output.status.success(), "an unknown option was accepted");
    assert!(!output.stderr.is_empty(), "no error message on stderr");
}

#[test]
fn socket_directory_is_private_and_sigterm_removes_the_socket() {
    let mut daemon = Daemon::start();
    let dir = daemon.socket.parent().unwrap().to_path_buf();
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(
        mode,
        0o700,
        "mode of the socket directory {}",
        dir.display()
    );

    let status = daemon
        .stop()
        .expect("the daemon did not exit within 5 s of SIGTERM");
    assert!(status.success(), "exit status after SIGTERM: {status}");
    assert!(
        !daemon.socket.exists(),
        "the socket is still there after SIGTERM"
    );
}

#[test]
fn sigint_removes_the_socket_and_exits_zero() {
    let mut daemon = Daemon::start();
    // SAFETY: kill(2) on the daemon we started.
    unsafe {
        libc::kill(daemon.pid() as libc::pid_t, libc::SIGINT);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let status = loop {
        if let Some(status) = daemon.try_exit_status() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no exit within 5 s of SIGINT"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(status.success(), "exit status after SIGINT: {status}");
    assert!(
        !daemon.socket.exists(),
        "the socket is still there after SIGINT"
    );
}
