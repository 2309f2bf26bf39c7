//! The Unix socket Scope polls: preparing its path, and one worker thread
//! that answers every connection from the last rendered snapshot, never doing
//! work per request. The worker multiplexes connections with poll(2) over
//! non-blocking sockets, so idle, slow or hostile clients cost a buffer each
//! and never hold up the others; every read and write has a deadline.

use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use log::{debug, info, warn};

use crate::http::{self, Parse, Route};
use crate::metrics;
use crate::report::is_valid_plugin_id;

/// Connections served at once; past it the one idle longest is dropped, so a
/// flood of idle connections cannot lock Scope out.
const MAX_CONNECTIONS: usize = 1024;
/// A request must arrive whole within this time of its first byte (slowloris).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// An answer must make progress at least this often (clients that stop reading).
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// A kept-alive connection with nothing going on is closed after this.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How often the worker wakes to check deadlines and the stop flag.
const POLL_INTERVAL_MS: i32 = 100;
/// After the last answer of a connection, what the client still sends is read
/// and dropped for this long before closing: closing a Unix socket with
/// unread bytes makes the client's next read fail with ECONNRESET, which can
/// cost it the answer it was sent.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// Bytes buffered from one connection before it must have formed a request.
const MAX_BUFFERED: usize = http::MAX_HEAD + http::MAX_BODY + 4;

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

/// The bound socket and its worker; stops the worker and removes the socket
/// file when dropped.
pub struct SocketServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    worker: Option<JoinHandle<()>>,
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// What stands at the socket path now, once found usable.
struct PathState {
    /// The socket's directory is missing and must be created.
    create_dir: bool,
    /// The directory is ours but with this looser mode.
    loose_mode: Option<u32>,
    /// A socket left by a crashed run is there.
    stale_socket: bool,
}

/// Looks at the socket path without changing anything. Refuses, rather than
/// follows or chmods, a directory that is a symlink, not a directory, or
/// someone else's; refuses a live daemon's socket and anything that is not a
/// socket.
fn inspect_path(path: &Path) -> Result<PathState, String> {
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut state = PathState {
        create_dir: false,
        loose_mode: None,
        stale_socket: false,
    };
    match fs::symlink_metadata(parent) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => state.create_dir = true,
        Err(e) => return Err(format!("cannot inspect socket directory {}: {e}", parent.display())),
        Ok(meta) if meta.file_type().is_symlink() => {
            return Err(format!(
                "socket directory {} is a symlink; refusing to follow it",
                parent.display()
            ))
        }
        Ok(meta) if !meta.is_dir() => {
            return Err(format!("socket directory {} is not a directory", parent.display()))
        }
        Ok(meta) if meta.uid() != euid() => {
            return Err(format!(
                "socket directory {} belongs to uid {}, not to this daemon's uid {}; refusing to use it",
                parent.display(),
                meta.uid(),
                euid()
            ))
        }
        Ok(meta) => state.loose_mode = Some(meta.mode() & 0o777).filter(|&m| m != 0o700),
    }
    if state.create_dir {
        return Ok(state);
    }
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(format!(
                "cannot inspect socket path {}: {e}",
                path.display()
            ))
        }
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(format!(
                "socket path {} exists and is not a socket; refusing to replace it",
                path.display()
            ))
        }
        Ok(_) if UnixStream::connect(path).is_ok() => {
            return Err(format!(
                "another process is already serving on {}; refusing to take it over",
                path.display()
            ))
        }
        Ok(_) => state.stale_socket = true,
    }
    Ok(state)
}

/// Checks that the daemon could serve on `path`, changing nothing: done
/// before the probe loads, so that a bad path fails fast and leaves the
/// filesystem as it was.
pub fn check_path(path: &Path) -> Result<(), String> {
    inspect_path(path).map(|_| ())
}

/// Makes the socket's directory (0700, ancestors 0755), tightens its mode,
/// and clears a stale socket left by a crashed run.
fn prepare_path(path: &Path) -> Result<(), String> {
    let state = inspect_path(path)?;
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if state.create_dir {
        if let Some(grandparent) = parent.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(grandparent)
                .map_err(|e| format!("cannot create {}: {e}", grandparent.display()))?;
        }
        fs::DirBuilder::new()
            .mode(0o700)
            .create(parent)
            .map_err(|e| format!("cannot create socket directory {}: {e}", parent.display()))?;
        info!("created socket directory {} (mode 0700)", parent.display());
    }
    if let Some(mode) = state.loose_mode {
        fs::set_permissions(parent, fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("cannot set mode 0700 on {}: {e}", parent.display()))?;
        info!(
            "socket directory {} had mode {mode:o}: set it to 0700",
            parent.display()
        );
    }
    if state.stale_socket {
        fs::remove_file(path)
            .map_err(|e| format!("cannot remove stale socket {}: {e}", path.display()))?;
        info!("replaced stale socket {}", path.display());
    }
    Ok(())
}

impl SocketServer {
    /// Binds the socket (mode 0600) and starts the worker.
    pub fn start(path: &Path, slot: RenderedSlot) -> Result<SocketServer, String> {
        prepare_path(path)?;
        let listener = UnixListener::bind(path)
            .map_err(|e| format!("cannot listen on {}: {e}", path.display()))?;
        // From here on, dropping `this` removes the socket file.
        let mut this = SocketServer {
            path: path.to_path_buf(),
            stop: Arc::new(AtomicBool::new(false)),
            worker: None,
        };
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("cannot set mode 0600 on {}: {e}", path.display()))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("cannot make {} non-blocking: {e}", path.display()))?;
        let stop = Arc::clone(&this.stop);
        let worker = std::thread::Builder::new()
            .name("http-worker".into())
            .spawn(move || serve(&listener, &slot, &stop))
            .map_err(|e| format!("cannot start the HTTP worker: {e}"))?;
        this.worker = Some(worker);
        info!("listening on {}", path.display());
        Ok(this)
    }
}

impl Drop for SocketServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
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

/// An answer being written: head, then body (absent for HEAD requests).
struct Answer {
    head: Vec<u8>,
    body: Arc<[u8]>,
    written: usize,
}

impl Answer {
    fn remaining(&self) -> (&[u8], &[u8]) {
        let head_left = &self.head[self.written.min(self.head.len())..];
        let body_from = self.written.saturating_sub(self.head.len());
        (head_left, &self.body[body_from.min(self.body.len())..])
    }
}

struct Connection {
    stream: UnixStream,
    input: Vec<u8>,
    answer: Option<Answer>,
    /// When the first byte of the request being read arrived.
    request_started: Option<Instant>,
    /// Last read or write that moved bytes.
    last_progress: Instant,
    close_after_answer: bool,
    /// The client has shut its sending side: answer what it sent, then close.
    peer_done: bool,
    /// Answered for the last time: discarding input until EOF or the deadline.
    draining_since: Option<Instant>,
    closed: bool,
}

fn answer_for(head: &http::RequestHead, slot: &RenderedSlot) -> (u16, &'static str, Arc<[u8]>) {
    match http::route(&head.method, &head.target) {
        Route::Refuse(status, text) => (
            status,
            "text/plain; charset=utf-8",
            Arc::from(text.as_bytes()),
        ),
        page => {
            // Clone the Arc under the lock; write outside it.
            let rendered = match slot.lock() {
                Ok(r) => r.clone(),
                Err(poisoned) => poisoned.into_inner().clone(),
            };
            if page == Route::Report {
                (200, "application/json", rendered.report)
            } else {
                (200, metrics::CONTENT_TYPE, rendered.metrics)
            }
        }
    }
}

impl Connection {
    fn new(stream: UnixStream, now: Instant) -> Connection {
        Connection {
            stream,
            input: Vec::new(),
            answer: None,
            request_started: None,
            last_progress: now,
            close_after_answer: false,
            peer_done: false,
            draining_since: None,
            closed: false,
        }
    }

    /// The last answer is out: stop sending, and drain until the client
    /// closes (see DRAIN_TIMEOUT).
    fn finish(&mut self, now: Instant) {
        let _ = self.stream.shutdown(std::net::Shutdown::Write);
        self.input.clear();
        self.answer = None;
        self.request_started = None;
        if self.peer_done {
            self.closed = true;
        } else {
            self.draining_since = Some(now);
        }
    }

    fn queue(
        &mut self,
        status: u16,
        content_type: &str,
        body: Arc<[u8]>,
        head_only: bool,
        keep_alive: bool,
    ) {
        let head = http::response_head(status, content_type, body.len(), keep_alive);
        let body = if head_only { Arc::from(&[][..]) } else { body };
        self.answer = Some(Answer {
            head,
            body,
            written: 0,
        });
        self.close_after_answer = !keep_alive;
    }

    fn refuse(&mut self, status: u16) {
        self.input.clear();
        self.request_started = None;
        let body: Arc<[u8]> = Arc::from(http::error_body(status).as_bytes());
        self.queue(status, "text/plain; charset=utf-8", body, false, false);
    }

    /// Turns the next buffered request, if whole, into an answer. One answer
    /// at a time: pipelined requests wait in `input` until it is written.
    fn take_request(&mut self, slot: &RenderedSlot, now: Instant) {
        if self.answer.is_some() || self.closed {
            return;
        }
        match http::parse_request(&self.input) {
            Parse::Incomplete => {
                if self.input.is_empty() {
                    self.request_started = None;
                } else if self.input.len() >= MAX_BUFFERED {
                    self.refuse(413);
                } else {
                    self.request_started.get_or_insert(now);
                }
            }
            Parse::Error(status) => {
                debug!("refused a request with {status}");
                self.refuse(status);
            }
            Parse::Request(head) => {
                self.input.drain(..head.length);
                self.request_started = (!self.input.is_empty()).then_some(now);
                let (status, content_type, body) = answer_for(&head, slot);
                self.queue(
                    status,
                    content_type,
                    body,
                    head.method == "HEAD",
                    head.keep_alive,
                );
            }
        }
    }

    fn read(&mut self, slot: &RenderedSlot, now: Instant) {
        let mut chunk = [0u8; 4096];
        let draining = self.draining_since.is_some();
        while draining || self.input.len() < MAX_BUFFERED {
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    self.peer_done = true;
                    break;
                }
                Ok(_) if draining => {}
                Ok(n) => {
                    self.input.extend_from_slice(&chunk[..n]);
                    self.last_progress = now;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.closed = true;
                    return;
                }
            }
        }
        if draining {
            self.closed = self.peer_done;
            return;
        }
        self.take_request(slot, now);
        if self.peer_done && self.answer.is_none() {
            // A half-closed client gets the answers to what it sent; once
            // nothing whole is left, the connection is done.
            self.closed = true;
        }
    }

    fn write(&mut self, slot: &RenderedSlot, now: Instant) {
        while let Some(answer) = &mut self.answer {
            let (head, body) = answer.remaining();
            if head.is_empty() && body.is_empty() {
                self.answer = None;
                if self.close_after_answer {
                    self.finish(now);
                    return;
                }
                self.take_request(slot, now);
                if self.peer_done && self.answer.is_none() {
                    self.finish(now);
                    return;
                }
                continue;
            }
            let bufs = [io::IoSlice::new(head), io::IoSlice::new(body)];
            match self.stream.write_vectored(&bufs) {
                Ok(0) => {
                    self.closed = true;
                    return;
                }
                Ok(n) => {
                    answer.written += n;
                    self.last_progress = now;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // EPIPE and friends: the client went away mid-answer.
                    debug!("client went away: {e}");
                    self.closed = true;
                    return;
                }
            }
        }
    }

    /// Applies the deadlines; a request that did not arrive in time is
    /// answered 408 and the connection closed.
    fn enforce_deadlines(&mut self, now: Instant) {
        if let Some(since) = self.draining_since {
            if now.duration_since(since) > DRAIN_TIMEOUT {
                self.closed = true;
            }
        } else if self.answer.is_some() {
            if now.duration_since(self.last_progress) > WRITE_TIMEOUT {
                debug!("closing a connection whose client stopped reading");
                self.closed = true;
            }
        } else if let Some(started) = self.request_started {
            if now.duration_since(started) > REQUEST_TIMEOUT {
                debug!("refusing a request that did not arrive in time");
                self.refuse(408);
            }
        } else if now.duration_since(self.last_progress) > IDLE_TIMEOUT {
            self.closed = true;
        }
    }
}

fn accept_all(listener: &UnixListener, connections: &mut Vec<Connection>, now: Instant) {
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                if stream.set_nonblocking(true).is_err() {
                    continue;
                }
                if connections.len() >= MAX_CONNECTIONS {
                    if let Some(oldest) =
                        (0..connections.len()).min_by_key(|&i| connections[i].last_progress)
                    {
                        debug!("{MAX_CONNECTIONS} connections open: dropping the one idle longest");
                        connections.swap_remove(oldest);
                    }
                }
                connections.push(Connection::new(stream, now));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                // Out of fds, most likely: keep serving the open connections.
                debug!("accept failed: {e}");
                return;
            }
        }
    }
}

fn serve(listener: &UnixListener, slot: &RenderedSlot, stop: &AtomicBool) {
    let mut connections: Vec<Connection> = Vec::new();
    let mut fds: Vec<libc::pollfd> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        fds.clear();
        fds.push(libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        });
        for c in &connections {
            // While an answer is pending, read nothing more: backpressure.
            let events = if c.answer.is_some() {
                libc::POLLOUT
            } else {
                libc::POLLIN
            };
            fds.push(libc::pollfd {
                fd: c.stream.as_raw_fd(),
                events,
                revents: 0,
            });
        }
        // SAFETY: fds points to fds.len() initialised pollfd structs that
        // live across the call; the fds stay open while `connections` holds them.
        let ready = unsafe {
            libc::poll(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                POLL_INTERVAL_MS,
            )
        };
        if ready < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                warn!("poll failed: {e}");
                std::thread::sleep(Duration::from_millis(POLL_INTERVAL_MS as u64));
            }
            continue;
        }
        let now = Instant::now();
        for (c, fd) in connections.iter_mut().zip(&fds[1..]) {
            if fd.revents & (libc::POLLERR | libc::POLLNVAL) != 0 {
                c.closed = true;
            } else if fd.revents & libc::POLLOUT != 0 {
                c.write(slot, now);
            } else if fd.revents & (libc::POLLIN | libc::POLLHUP) != 0 {
                c.read(slot, now);
            }
            // Answer at once what a read made ready.
            if c.answer.is_some() && !c.closed && fd.revents & libc::POLLOUT == 0 {
                c.write(slot, now);
            }
            if !c.closed {
                c.enforce_deadlines(now);
            }
        }
        connections.retain(|c| !c.closed);
        if fds[0].revents & libc::POLLIN != 0 {
            accept_all(listener, &mut connections, now);
        }
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
