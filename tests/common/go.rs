//! The Go net/http server of tests/fixtures/goserver, built at test time with
//! Debian's `go` (golang-go) and nothing outside the standard library.
//!
//! Included by the test files that use it with
//! `#[path = "common/go.rs"] mod go;` next to `mod common;`.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::thread;

use crate::common::TempDir;

/// Builds the fixture once per test binary, into cargo's scratch directory
/// for integration tests, with the Go build cache and GOPATH there too and
/// every network fetch refused (offline-safe: there is nothing to fetch).
pub fn go_server_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/goserver");
        let work = Path::new(env!("CARGO_TARGET_TMPDIR")).join("goserver");
        let binary = work.join("goserver");
        std::fs::create_dir_all(&work).unwrap();
        let output = Command::new("go")
            .arg("build")
            .arg("-o")
            .arg(&binary)
            .arg(".")
            .current_dir(&source)
            .env("GOCACHE", work.join("cache"))
            .env("GOPATH", work.join("gopath"))
            .env("GOFLAGS", "-mod=mod")
            .env("GOPROXY", "off")
            .env("GOTOOLCHAIN", "local")
            .env("CGO_ENABLED", "0")
            .output()
            .unwrap_or_else(|e| {
                panic!("run `go build` (install golang-go: apt-get install golang-go): {e}")
            });
        assert!(
            output.status.success(),
            "go build of {} failed ({}):\n{}",
            source.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        binary
    })
}

/// A running Go server; SIGKILLed and reaped on drop.
pub struct GoServer {
    child: Child,
    pub pid: u32,
    pub port: u16,
    dir: TempDir,
}

impl GoServer {
    pub fn start() -> GoServer {
        let dir = TempDir::new("goserver");
        let log = dir.path().join("server.log");
        let mut child = Command::new(go_server_binary())
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("start the Go server: {e}"));
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        let _ = stdout.read_line(&mut line);
        let Ok(port) = line.trim().parse() else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the Go server did not print its port (printed {line:?}); stderr:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        };
        thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        GoServer {
            pid: child.id(),
            child,
            port,
            dir,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

impl Drop for GoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
