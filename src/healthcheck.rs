//! `--healthcheck`: a client that polls the daemon as Scope would.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// Budget Scope gives a plugin for connect plus the whole answer.
const SCOPE_POLL_BUDGET: Duration = Duration::from_millis(500);

/// Asks the daemon on `socket` for its report, as Scope would: Ok when it
/// answers 200 within Scope's budget.
pub fn health_check(socket: &Path) -> Result<(), String> {
    let started = Instant::now();
    let mut stream = UnixStream::connect(socket)
        .map_err(|e| format!("cannot connect to {}: {e}", socket.display()))?;
    let io_err = |e: io::Error| format!("{}: {e}", socket.display());
    stream
        .set_read_timeout(Some(SCOPE_POLL_BUDGET))
        .map_err(io_err)?;
    stream
        .set_write_timeout(Some(SCOPE_POLL_BUDGET))
        .map_err(io_err)?;
    stream
        .write_all(
            b"GET /report?api_version=1 HTTP/1.1\r\nHost: plugin\r\nConnection: close\r\n\r\n",
        )
        .map_err(io_err)?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).map_err(io_err)?;
    let elapsed = started.elapsed();
    let status_line = answer.split(|&b| b == b'\r').next().unwrap_or_default();
    if !status_line.starts_with(b"HTTP/1.1 200 ") {
        return Err(format!(
            "GET /report answered {:?}",
            String::from_utf8_lossy(status_line)
        ));
    }
    if elapsed > SCOPE_POLL_BUDGET {
        return Err(format!(
            "GET /report took {} ms, over Scope's 500 ms",
            elapsed.as_millis()
        ));
    }
    Ok(())
}
