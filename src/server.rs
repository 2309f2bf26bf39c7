//! The Unix socket Scope polls: preparing its path, and one tiny_http worker
//! that answers from the last rendered snapshot (never doing work per request).

use std::fs;
use std::io::{self, Cursor, Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use tiny_http::{Header, Method, Request, Response, Server, StatusCode};

use crate::metrics;
use crate::report::is_valid_plugin_id;

/// What the worker serves: the last rendered report and metrics.
#[derive(Clone)]
pub struct Rendered {
    pub report: Arc<[u8]>,
    pub metrics: Arc<[u8]>,
}

pub type RenderedSlot = Arc<Mutex<Rendered>>;

/// The plugin id Scope derives from the socket: its file name without the
/// extension. Refuses names Scope would skip.
pub fn plugin_id(socket: &Path) -> Result<String, String> {
    let stem = socket
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default();
    if is_valid_plugin_id(stem) {
        Ok(stem.to_string())
    } else {
        Err(format!(
            "socket {}: Scope takes the plugin id from the file name without extension, and {stem:?} is not a \
             valid id (letters, digits and single dashes, e.g. http-statistics.sock)",
            socket.display()
        ))
    }
}

/// The bound socket; removes its file when dropped.
pub struct SocketServer {
    path: PathBuf,
    server: Arc<Server>,
    worker: Option<JoinHandle<()>>,
}

/// Makes the socket's directory (0700) and clears a stale socket left by a
/// crashed run. A live daemon on the path, or a path that is not a socket,
/// is refused.
fn prepare_path(path: &Path) -> Result<(), String> {
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !parent.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(|e| format!("cannot create socket directory {}: {e}", parent.display()))?;
        info!("created socket directory {} (mode 0700)", parent.display());
    } else if !parent.is_dir() {
        return Err(format!(
            "socket directory {} is not a directory",
            parent.display()
        ));
    }
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!(
            "cannot inspect socket path {}: {e}",
            path.display()
        )),
        Ok(meta) if !meta.file_type().is_socket() => Err(format!(
            "socket path {} exists and is not a socket; refusing to replace it",
            path.display()
        )),
        Ok(_) => match UnixStream::connect(path) {
            Ok(_) => Err(format!(
                "another process is already serving on {}",
                path.display()
            )),
            Err(_) => {
                fs::remove_file(path)
                    .map_err(|e| format!("cannot remove stale socket {}: {e}", path.display()))?;
                info!("replaced stale socket {}", path.display());
                Ok(())
            }
        },
    }
}

impl SocketServer {
    /// Binds the socket (mode 0600) and starts the worker.
    pub fn start(path: &Path, slot: RenderedSlot) -> Result<SocketServer, String> {
        prepare_path(path)?;
        let server = Server::http_unix(path)
            .map_err(|e| format!("cannot listen on {}: {e}", path.display()))?;
        let mut this = SocketServer {
            path: path.to_path_buf(),
            server: Arc::new(server),
            worker: None,
        };
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("cannot set mode 0600 on {}: {e}", path.display()))?;
        let server = Arc::clone(&this.server);
        let worker = std::thread::Builder::new()
            .name("http-worker".into())
            .spawn(move || {
                for request in server.incoming_requests() {
                    answer(request, &slot);
                }
            })
            .map_err(|e| format!("cannot start the HTTP worker: {e}"))?;
        this.worker = Some(worker);
        info!("listening on {}", path.display());
        Ok(this)
    }
}

impl Drop for SocketServer {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
        match fs::remove_file(&self.path) {
            Ok(()) => debug!("removed {}", self.path.display()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => warn!("cannot remove {}: {e}", self.path.display()),
        }
    }
}

/// Status and content type for a request line; pure so it can be tested.
pub fn route(method: &Method, url: &str) -> (u16, &'static str) {
    let path = url.split(['?', '#']).next().unwrap_or_default();
    let known = matches!(path, "/report" | "/metrics");
    match (known, method) {
        (false, _) => (404, "not found: try GET /report or GET /metrics\n"),
        (true, Method::Get | Method::Head) => (
            200,
            if path == "/report" {
                "report"
            } else {
                "metrics"
            },
        ),
        (true, _) => (405, "method not allowed: use GET\n"),
    }
}

fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name, value).expect("static header names and values are valid")
}

fn answer(request: Request, slot: &RenderedSlot) {
    let (status, what) = route(request.method(), request.url());
    let response = if status == 200 {
        // Clone the Arcs under the lock, write outside it.
        let rendered = match slot.lock() {
            Ok(r) => r.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        let (body, content_type) = if what == "report" {
            (rendered.report, "application/json")
        } else {
            (rendered.metrics, metrics::CONTENT_TYPE)
        };
        let len = body.len();
        Response::new(
            StatusCode(200),
            vec![header("Content-Type", content_type)],
            Cursor::new(body),
            Some(len),
            None,
        )
    } else {
        let mut headers = vec![header("Content-Type", "text/plain; charset=utf-8")];
        if status == 405 {
            headers.push(header("Allow", "GET, HEAD"));
        }
        let body: Arc<[u8]> = Arc::from(what.as_bytes());
        let len = body.len();
        Response::new(
            StatusCode(status),
            headers,
            Cursor::new(body),
            Some(len),
            None,
        )
    };
    if let Err(e) = request.respond(response) {
        debug!("client went away: {e}");
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(route(&Method::Get, "/report").0, 200);
        assert_eq!(
            route(&Method::Get, "/report?api_version=1&probe_id=abc").1,
            "report"
        );
        assert_eq!(route(&Method::Head, "/metrics").1, "metrics");
        assert_eq!(route(&Method::Post, "/report").0, 405);
        assert_eq!(route(&Method::Get, "/").0, 404);
        assert_eq!(route(&Method::Delete, "/nope").0, 404);
        assert_eq!(route(&Method::Get, "/reports").0, 404);
    }

    #[test]
    fn plugin_id_follows_the_socket_name() {
        assert_eq!(
            plugin_id(Path::new("/var/run/scope/plugins/x/http-statistics.sock")).unwrap(),
            "http-statistics"
        );
        assert_eq!(plugin_id(Path::new("/tmp/my-plugin")).unwrap(), "my-plugin");
        assert!(plugin_id(Path::new("/tmp/my_plugin.sock"))
            .unwrap_err()
            .contains("not a valid id"));
        assert!(plugin_id(Path::new("/tmp/a.b.sock")).is_err());
        assert!(plugin_id(Path::new("/")).is_err());
    }

    #[test]
    fn stale_socket_is_replaced_and_live_one_refused() {
        let dir = std::env::temp_dir().join(format!("shs-unit-{}", std::process::id()));
        let path = dir.join("s.sock");
        fs::create_dir_all(&dir).unwrap();
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        assert!(prepare_path(&path).unwrap_err().contains("already serving"));
        drop(listener); // the file stays: a stale socket
        prepare_path(&path).unwrap();
        assert!(!path.exists());
        fs::write(&path, b"x").unwrap();
        assert!(prepare_path(&path).unwrap_err().contains("not a socket"));
        fs::remove_dir_all(&dir).unwrap();
    }
}
