//! The client side of the daemon's socket: one `GET`, for `--healthcheck`
//! and `top`, so that both ask the same way and fail with the same words.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// The daemon's answer to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// e.g. `HTTP/1.1 200 OK`.
    pub status_line: String,
    pub body: String,
}

impl Answer {
    pub fn is_ok(&self) -> bool {
        self.status_line.starts_with("HTTP/1.1 200 ")
    }
}

/// `GET path` on the daemon's socket, on a connection of its own; connecting
/// and each read and write may take up to `timeout`. Err when the daemon is
/// not there, does not answer in time, or answers no whole head.
pub fn get(socket: &Path, path: &str, timeout: Duration) -> Result<Answer, String> {
    let fail = |e: io::Error| format!("{}: GET {path}: {e}", socket.display());
    let mut stream = UnixStream::connect(socket).map_err(|e| {
        format!(
            "cannot connect to the daemon on {}: {e} (is it running? see --socket)",
            socket.display()
        )
    })?;
    stream.set_read_timeout(Some(timeout)).map_err(fail)?;
    stream.set_write_timeout(Some(timeout)).map_err(fail)?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: plugin\r\nConnection: close\r\n\r\n"
    )
    .map_err(fail)?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).map_err(fail)?;
    parse_answer(&answer)
        .ok_or_else(|| format!("{}: GET {path}: no complete answer", socket.display()))
}

/// The status line and body of a whole answer; None without a whole head.
fn parse_answer(bytes: &[u8]) -> Option<Answer> {
    let answer = String::from_utf8_lossy(bytes);
    let (head, body) = answer.split_once("\r\n\r\n")?;
    Some(Answer {
        status_line: head.lines().next().unwrap_or_default().to_string(),
        body: body.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_is_its_status_line_and_body() {
        let answer = parse_answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}").unwrap();
        assert_eq!(answer.status_line, "HTTP/1.1 200 OK");
        assert_eq!(answer.body, "{}");
        assert!(answer.is_ok());
        let refused = parse_answer(b"HTTP/1.1 404 Not Found\r\n\r\n").unwrap();
        assert!(!refused.is_ok());
        assert_eq!(refused.body, "");
    }

    #[test]
    fn a_head_cut_short_is_no_answer() {
        assert_eq!(parse_answer(b"HTTP/1.1 200 OK\r\nContent-"), None);
        assert_eq!(parse_answer(b""), None);
    }

    #[test]
    fn no_daemon_says_so() {
        let e = get(
            Path::new("/nonexistent/shs-test.sock"),
            "/metrics",
            Duration::from_millis(100),
        )
        .unwrap_err();
        assert!(
            e.starts_with("cannot connect to the daemon on /nonexistent/shs-test.sock: "),
            "{e}"
        );
    }
}
