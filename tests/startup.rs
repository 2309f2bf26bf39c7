//! Start-up failures: each prints one clear line on stderr, exits with status
//! 1 (2 for usage errors) and leaves no socket behind; a stale socket is
//! replaced and a live daemon's socket is left alone.

mod common;

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::Command;

use common::*;

/// The uid and gid of `nobody`.
const NOBODY: u32 = 65534;

/// Nothing at all exists at `path` (not even a dangling socket).
fn assert_no_socket(what: &str, path: &Path) {
    let meta = fs::symlink_metadata(path);
    assert!(
        meta.is_err(),
        "{what}: {} was left behind ({:?})",
        path.display(),
        meta.map(|m| m.file_type())
    );
}

#[test]
fn without_privileges_it_fails_with_one_line_and_no_socket() {
    require_root();
    let setpriv_works = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "id",
            "-u",
        ])
        .output()
        .map(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "65534");
    assert!(
        matches!(setpriv_works, Ok(true)),
        "setpriv (util-linux) cannot run a command as uid {NOBODY}: {setpriv_works:?}"
    );

    // A directory nobody can write to, so that only privileges are missing.
    let dir = TempDir::new("nonroot");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
    let socket = dir.path().join("plugins").join("http-statistics.sock");
    let mut command = Command::new("setpriv");
    command
        .arg(format!("--reuid={NOBODY}"))
        .arg(format!("--regid={NOBODY}"))
        .args(["--clear-groups", "--inh-caps=-all", DAEMON, "--socket"])
        .arg(&socket)
        .args(["--hostname", "testhost"]);
    let outcome = run_to_exit(command);

    assert_fails(
        "as uid 65534 without capabilities",
        &outcome,
        1,
        &["privileges", "CAP_BPF", "CAP_PERFMON"],
    );
    assert_no_socket("as uid 65534", &socket);
}

#[test]
fn a_socket_path_under_a_regular_file_fails_with_one_line_and_no_socket() {
    require_root();
    let dir = TempDir::new("parentfile");
    let file = dir.path().join("file");
    fs::write(&file, "a regular file\n").unwrap();
    let socket = file.join("s.sock");

    let outcome = run_to_exit(daemon_at(&socket));

    assert_fails(
        "socket under a regular file",
        &outcome,
        1,
        &[&file.display().to_string(), "not a directory"],
    );
    assert_no_socket("socket under a regular file", &socket);
    assert_eq!(fs::read_to_string(&file).unwrap(), "a regular file\n");
}

#[test]
fn a_regular_file_at_the_socket_path_is_left_untouched() {
    require_root();
    let dir = TempDir::new("regular");
    let path = dir.path().join("http-statistics.sock");
    let contents = "not a socket: precious data\n";
    fs::write(&path, contents).unwrap();
    let before = fs::metadata(&path).unwrap();

    let outcome = run_to_exit(daemon_at(&path));

    assert_fails(
        "regular file at the socket path",
        &outcome,
        1,
        &[&path.display().to_string(), "not a socket"],
    );
    let after = fs::symlink_metadata(&path).expect("the regular file was removed");
    assert!(after.file_type().is_file(), "{:?}", after.file_type());
    assert_eq!(after.ino(), before.ino(), "the file was replaced");
    assert_eq!(fs::read_to_string(&path).unwrap(), contents);
}

#[test]
fn a_second_daemon_on_a_live_socket_fails_and_the_first_keeps_serving() {
    let mut first = Daemon::start();
    let inode = fs::metadata(&first.socket).unwrap().ino();

    let outcome = run_to_exit(daemon_at(&first.socket));

    assert_fails(
        "second daemon on the same socket",
        &outcome,
        1,
        &["already serving", &first.socket.display().to_string()],
    );
    let meta = fs::symlink_metadata(&first.socket).expect("the first daemon's socket is gone");
    assert!(meta.file_type().is_socket(), "{:?}", meta.file_type());
    assert_eq!(meta.ino(), inode, "the first daemon's socket was replaced");
    assert_eq!(first.try_exit_status(), None, "the first daemon exited");
    let report = first.report();
    assert_eq!(
        report["Plugins"][0]["id"], "http-statistics",
        "the first daemon's /report: {report}"
    );
    assert_eq!(
        first.metrics().types.get(DROPS).map(String::as_str),
        Some("counter")
    );
}

#[test]
fn a_stale_socket_is_replaced() {
    let dir = TempDir::new("stale");
    let socket = dir.path().join("plugins").join("http-statistics.sock");
    fs::create_dir_all(socket.parent().unwrap()).unwrap();
    // A socket nobody listens on any more, as a crashed daemon leaves it.
    drop(UnixListener::bind(&socket).unwrap());
    let stale = fs::symlink_metadata(&socket).expect("the stale socket file");
    assert!(stale.file_type().is_socket());
    let refused = UnixStream::connect(&socket)
        .map(|_| ())
        .map_err(|e| e.kind());
    assert_eq!(
        refused,
        Err(io::ErrorKind::ConnectionRefused),
        "stale socket"
    );

    let mut daemon = Daemon::start_at(&socket);

    let meta = fs::symlink_metadata(&socket).unwrap();
    assert!(meta.file_type().is_socket());
    // (The new socket may well get the stale one's inode number back, so the
    // proof of the replacement is that it answers and the log says so.)
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "socket mode");
    let report = daemon.report();
    assert_eq!(
        report["Plugins"][0]["id"], "http-statistics",
        "/report: {report}"
    );
    let log = daemon.log();
    assert_eq!(
        log.lines()
            .filter(|l| l.contains(&format!("replaced stale socket {}", socket.display())))
            .count(),
        1,
        "log:\n{log}"
    );

    let status = daemon.stop().expect("no exit within 5 s of SIGTERM");
    assert!(status.success(), "exit status after SIGTERM: {status}");
    assert_no_socket("after SIGTERM", &socket);
}

#[test]
fn a_socket_name_that_is_not_a_plugin_id_is_refused() {
    require_root();
    let dir = TempDir::new("badid");
    let socket = dir.path().join("plugins").join("bad_name.sock");

    let outcome = run_to_exit(daemon_at(&socket));

    assert_fails(
        "socket named bad_name.sock",
        &outcome,
        1,
        &["\"bad_name\" is not a valid id"],
    );
    assert_no_socket("socket named bad_name.sock", &socket);
}

#[test]
fn usage_errors_exit_2_with_one_line() {
    let dir = TempDir::new("usage");
    let socket = dir.path().join("http-statistics.sock");
    let socket_arg = socket.display().to_string();
    for (args, needle) in [
        (vec!["--socket", &socket_arg, "--bogus"], "\"--bogus\""),
        (
            vec!["--socket", &socket_arg, "--log-level", "loud"],
            "--log-level",
        ),
    ] {
        let mut command = Command::new(DAEMON);
        command.args(&args);
        let outcome = run_to_exit(command);
        let what = format!("{args:?}");
        assert_fails(&what, &outcome, 2, &[needle]);
        // Usage errors come before the logger: nothing else on stderr.
        assert_eq!(outcome.stderr.lines().count(), 1, "{what}: stderr");
        assert_no_socket(&what, &socket);
    }
}
