//! The Go net/http server of tests/fixtures/goserver, built at test time with
//! Debian's `go` (golang-go) and nothing outside the standard library.
//!
//! Included by the test files that use it with
//! `#[path = "common/go.rs"] mod go;` next to `mod common;`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::common::{Server, TempDir};

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

/// Starts the Go server (built once per test run) on a free loopback port.
pub fn start_go_server() -> Server {
    Server::spawn_printing_port(
        Command::new(go_server_binary()),
        TempDir::new("goserver"),
        "the Go server",
    )
}
