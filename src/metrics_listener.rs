//! `--metrics-address`: GET /metrics over TCP, for Prometheus, which cannot
//! scrape a Unix socket. The same worker as the Unix socket's (same limits,
//! same refusals), on a page table that holds /metrics and nothing else, so
//! that the Scope report is not exposed on the network.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};

use log::info;

use crate::server::{Listener, Page, PageSlot, Stream, Worker};

/// The one page served over TCP.
pub const METRICS_PATH: &str = "/metrics";

impl Listener for TcpListener {
    type Stream = TcpStream;
    fn accept_nonblocking(&self) -> io::Result<TcpStream> {
        let (stream, _) = self.accept()?;
        stream.set_nonblocking(true)?;
        // Answers are one write of a rendered page: no reason to wait for
        // more to coalesce.
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}

impl Stream for TcpStream {
    fn shutdown_write(&self) {
        let _ = self.shutdown(std::net::Shutdown::Write);
    }
}

/// The pages of `pages` that the TCP listener serves: /metrics only.
pub fn metrics_only(pages: &[Page]) -> Vec<Page> {
    pages
        .iter()
        .filter(|p| p.path == METRICS_PATH)
        .cloned()
        .collect()
}

/// Binds `address` (non-blocking). Done before the probe loads: a port in
/// use fails start-up at once, and binding leaves nothing on disk.
pub fn bind(address: SocketAddr) -> Result<TcpListener, String> {
    let listener = TcpListener::bind(address)
        .map_err(|e| format!("--metrics-address {address}: cannot listen: {e}"))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("--metrics-address {address}: cannot make it non-blocking: {e}"))?;
    Ok(listener)
}

/// Starts the worker (thread `metrics-worker`) on a bound listener.
pub fn start(
    listener: TcpListener,
    pages: PageSlot,
    max_connections: usize,
) -> Result<Worker, String> {
    let address = listener
        .local_addr()
        .map_or_else(|_| "?".to_string(), |a| a.to_string());
    let worker = Worker::start("metrics-worker", listener, pages, max_connections)?;
    info!("serving GET {METRICS_PATH} on tcp {address}");
    Ok(worker)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::sync::{Arc, Mutex};

    fn page(path: &'static str, body: &str) -> Page {
        Page {
            path,
            content_type: "text/plain",
            body: Arc::from(body.as_bytes()),
        }
    }

    #[test]
    fn only_metrics_is_served() {
        let pages = [page("/report", "{}"), page("/metrics", "m 1\n")];
        let only = metrics_only(&pages);
        assert_eq!(only.len(), 1);
        assert_eq!(only[0].path, "/metrics");
        assert!(Arc::ptr_eq(&only[0].body, &pages[1].body), "copied a body");
    }

    fn exchange(address: SocketAddr, request: &str) -> String {
        let mut stream = TcpStream::connect(address).unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        answer
    }

    #[test]
    fn answers_metrics_and_refuses_the_rest_over_loopback() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let address = listener.local_addr().unwrap();
        let pages = [page("/report", "{}"), page("/metrics", "m 1\n")];
        let slot: PageSlot = Arc::new(Mutex::new(metrics_only(&pages)));
        let worker = start(listener, slot, 16).unwrap();
        let table = [
            ("GET /metrics", "HTTP/1.1 200 ", true),
            ("GET /report", "HTTP/1.1 404 ", false),
            ("POST /metrics", "HTTP/1.1 405 ", false),
        ];
        for (request, status, has_body) in table {
            let answer = exchange(
                address,
                &format!("{request} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
            );
            assert!(answer.starts_with(status), "{request}: {answer:?}");
            assert_eq!(
                answer.ends_with("\r\n\r\nm 1\n"),
                has_body,
                "{request}: {answer:?}"
            );
        }
        drop(worker);
    }

    #[test]
    fn a_port_in_use_is_a_clear_error() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = taken.local_addr().unwrap();
        let e = bind(address).unwrap_err();
        assert!(
            e.starts_with(&format!("--metrics-address {address}: cannot listen: ")),
            "{e}"
        );
    }
}
