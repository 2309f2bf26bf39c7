//! `--healthcheck`: a client that polls the daemon as Scope would.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::daemon_client;

/// Budget Scope gives a plugin for connect plus the whole answer.
const SCOPE_POLL_BUDGET: Duration = Duration::from_millis(500);

/// Asks the daemon on `socket` for its report, as Scope would: Ok when it
/// answers 200 within Scope's budget.
pub fn health_check(socket: &Path) -> Result<(), String> {
    let started = Instant::now();
    let answer = daemon_client::get(socket, "/report?api_version=1", SCOPE_POLL_BUDGET)?;
    let elapsed = started.elapsed();
    if !answer.is_ok() {
        return Err(format!("GET /report answered {:?}", answer.status_line));
    }
    if elapsed > SCOPE_POLL_BUDGET {
        return Err(format!(
            "GET /report took {} ms, over Scope's 500 ms",
            elapsed.as_millis()
        ));
    }
    Ok(())
}
