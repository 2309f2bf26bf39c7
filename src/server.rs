//! Serves pre-rendered pages by path, and nothing else: one worker thread per
//! listener answers every connection from the page table it was given, never
//! doing work per request. The worker multiplexes connections with poll(2)
//! over non-blocking sockets, so idle, slow or hostile clients cost a buffer
//! each and never hold up the others; every read and write has a deadline,
//! the connections it holds are capped below what the process can open, and
//! running out of descriptors sheds or pauses, never spins.
//!
//! The worker is generic over its listener ([`Listener`]): the Unix socket
//! Scope polls is [`SocketServer`]; another listener (e.g. TCP for
//! Prometheus) runs the same worker with a page table of its own through
//! [`Worker::start`].

use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use log::{debug, info, warn};

use crate::http::{self, Parse};
use crate::socket_path;

/// Connections one worker serves at most, whatever the descriptor limit:
/// each may buffer up to `MAX_BUFFERED` bytes. Past its cap the worker drops
/// the connection idle longest, so a flood of idle connections cannot lock
/// Scope out.
pub const MAX_CONNECTIONS: usize = 1024;
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
/// How long the listener is left alone when accepting fails with nothing to
/// shed (out of descriptors host-wide, say): a listener with a pending
/// connection stays readable, and polling it again at once would spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Bytes buffered from one connection before it must have formed a request.
const MAX_BUFFERED: usize = http::MAX_HEAD + http::MAX_BODY + 4;
/// Content type of refusals (404, 405, 4xx on bad requests).
const REFUSAL_TYPE: &str = "text/plain; charset=utf-8";

/// One page a listener serves: `GET path` answers `body` as `content_type`.
#[derive(Clone, Debug)]
pub struct Page {
    pub path: &'static str,
    pub content_type: &'static str,
    pub body: Arc<[u8]>,
}

/// The pages a listener serves, replaced whole (bodies are shared, not
/// copied) by whoever renders them. A path not in the table is 404.
pub type PageSlot = Arc<Mutex<Vec<Page>>>;

/// The pages in `slot`, locked. A thread that panicked while holding the
/// lock left a whole table behind (tables are replaced, never edited), so
/// a poisoned lock is used as it is.
fn lock_pages(slot: &PageSlot) -> MutexGuard<'_, Vec<Page>> {
    slot.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Replaces the pages `slot` serves, for the requests that come next.
pub fn publish(slot: &PageSlot, pages: Vec<Page>) {
    *lock_pages(slot) = pages;
}

/// A listening socket the worker can accept from.
pub trait Listener: AsRawFd + Send + 'static {
    type Stream: Stream;
    /// Accepts one pending connection and makes it non-blocking.
    fn accept_nonblocking(&self) -> io::Result<Self::Stream>;
}

/// A connected socket the worker can serve.
pub trait Stream: Read + Write + AsRawFd + Send + 'static {
    /// Stops sending (the answer is complete); errors are of no interest.
    fn shutdown_write(&self);
}

impl Listener for UnixListener {
    type Stream = UnixStream;
    fn accept_nonblocking(&self) -> io::Result<UnixStream> {
        let (stream, _) = self.accept()?;
        stream.set_nonblocking(true)?;
        Ok(stream)
    }
}

impl Stream for UnixStream {
    fn shutdown_write(&self) {
        let _ = self.shutdown(std::net::Shutdown::Write);
    }
}

/// A worker thread serving one listener; stops it when dropped.
pub struct Worker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    /// Starts a thread named `name` answering connections on `listener`
    /// (already non-blocking) from `pages`, holding at most `max_connections`
    /// at once: the caller sizes that from the descriptors the process may
    /// still open (see `fd_budget`), shared among its listeners.
    pub fn start<L: Listener>(
        name: &str,
        listener: L,
        pages: PageSlot,
        max_connections: usize,
    ) -> Result<Worker, String> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || serve(&listener, &pages, &flag, max_connections.max(1)))
            .map_err(|e| format!("cannot start the HTTP worker {name}: {e}"))?;
        Ok(Worker {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The Unix socket Scope polls, bound at a checked path (mode 0600 in a 0700
/// directory, see `socket_path`), and its worker; stops the worker and
/// removes the socket file when dropped.
pub struct SocketServer {
    path: PathBuf,
    worker: Option<Worker>,
}

impl SocketServer {
    /// Prepares `path`, binds the socket (mode 0600) and starts the worker
    /// (thread `http-worker`) on `pages`.
    pub fn start(
        path: &Path,
        pages: PageSlot,
        max_connections: usize,
    ) -> Result<SocketServer, String> {
        socket_path::prepare(path)?;
        let listener = UnixListener::bind(path)
            .map_err(|e| format!("cannot listen on {}: {e}", path.display()))?;
        // From here on, dropping `this` removes the socket file.
        let mut this = SocketServer {
            path: path.to_path_buf(),
            worker: None,
        };
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("cannot set mode 0600 on {}: {e}", path.display()))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("cannot make {} non-blocking: {e}", path.display()))?;
        this.worker = Some(Worker::start(
            "http-worker",
            listener,
            pages,
            max_connections,
        )?);
        info!("listening on {}", path.display());
        Ok(this)
    }
}

impl Drop for SocketServer {
    fn drop(&mut self) {
        // The worker first: no connection is accepted on a removed path.
        drop(self.worker.take());
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

struct Connection<S> {
    stream: S,
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

/// Status, content type and body answering `head` from `pages`.
fn answer_for(head: &http::RequestHead, pages: &PageSlot) -> (u16, &'static str, Arc<[u8]>) {
    // Clone the Arc under the lock; write outside it.
    let table = lock_pages(pages);
    let paths: Vec<&str> = table.iter().map(|p| p.path).collect();
    match http::route(&head.method, &head.target, &paths) {
        http::Route::Page(i) => (200, table[i].content_type, Arc::clone(&table[i].body)),
        http::Route::Refuse(404) => (
            404,
            REFUSAL_TYPE,
            Arc::from(http::not_found_body(&paths).as_bytes()),
        ),
        http::Route::Refuse(status) => (
            status,
            REFUSAL_TYPE,
            Arc::from(http::error_body(status).as_bytes()),
        ),
    }
}

impl<S: Stream> Connection<S> {
    fn new(stream: S, now: Instant) -> Connection<S> {
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
        self.stream.shutdown_write();
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
        self.queue(status, REFUSAL_TYPE, body, false, false);
    }

    /// Turns the next buffered request, if whole, into an answer. One answer
    /// at a time: pipelined requests wait in `input` until it is written.
    fn take_request(&mut self, pages: &PageSlot, now: Instant) {
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
                let (status, content_type, body) = answer_for(&head, pages);
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

    fn read(&mut self, pages: &PageSlot, now: Instant) {
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
        self.take_request(pages, now);
        if self.peer_done && self.answer.is_none() {
            // A half-closed client gets the answers to what it sent; once
            // nothing whole is left, the connection is done.
            self.closed = true;
        }
    }

    fn write(&mut self, pages: &PageSlot, now: Instant) {
        while let Some(answer) = &mut self.answer {
            let (head, body) = answer.remaining();
            if head.is_empty() && body.is_empty() {
                self.answer = None;
                if self.close_after_answer {
                    self.finish(now);
                    return;
                }
                self.take_request(pages, now);
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

/// Whether accept failed for want of a descriptor (this process's or the
/// host's).
fn out_of_descriptors(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// Drops the connection idle longest; false when there is none.
fn shed_idle_longest<S>(connections: &mut Vec<Connection<S>>) -> bool {
    let oldest = (0..connections.len()).min_by_key(|&i| connections[i].last_progress);
    if let Some(i) = oldest {
        connections.swap_remove(i);
    }
    oldest.is_some()
}

/// Accepts every pending connection. Returns when the listener should next
/// be polled, if not at once: accepting failed and shedding a connection did
/// not help.
fn accept_all<L: Listener>(
    listener: &L,
    connections: &mut Vec<Connection<L::Stream>>,
    max_connections: usize,
    now: Instant,
) -> Option<Instant> {
    let mut shed = false;
    loop {
        match listener.accept_nonblocking() {
            Ok(stream) => {
                if connections.len() >= max_connections {
                    debug!("{max_connections} connections open: dropping the one idle longest");
                    shed_idle_longest(connections);
                }
                connections.push(Connection::new(stream, now));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                ) => {}
            // Out of descriptors although the cap sits below the limit:
            // something else holds them. Make room once with an idle
            // connection, as the cap would.
            Err(e) if out_of_descriptors(&e) && !shed && shed_idle_longest(connections) => {
                debug!("accept failed ({e}): dropped the connection idle longest");
                shed = true;
            }
            Err(e) => {
                debug!("accept failed ({e}): pausing the listener");
                return Some(now + ACCEPT_BACKOFF);
            }
        }
    }
}

fn serve<L: Listener>(listener: &L, pages: &PageSlot, stop: &AtomicBool, max_connections: usize) {
    let mut connections: Vec<Connection<L::Stream>> = Vec::new();
    let mut fds: Vec<libc::pollfd> = Vec::new();
    let mut accept_paused_until: Option<Instant> = None;
    while !stop.load(Ordering::Relaxed) {
        let accepting = accept_paused_until.is_none_or(|t| Instant::now() >= t);
        fds.clear();
        fds.push(libc::pollfd {
            fd: listener.as_raw_fd(),
            events: if accepting { libc::POLLIN } else { 0 },
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
                c.write(pages, now);
            } else if fd.revents & (libc::POLLIN | libc::POLLHUP) != 0 {
                c.read(pages, now);
            }
            // Answer at once what a read made ready.
            if c.answer.is_some() && !c.closed && fd.revents & libc::POLLOUT == 0 {
                c.write(pages, now);
            }
            if !c.closed {
                c.enforce_deadlines(now);
            }
        }
        connections.retain(|c| !c.closed);
        if accepting && fds[0].revents & libc::POLLIN != 0 {
            accept_paused_until = accept_all(listener, &mut connections, max_connections, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A listener that has a connection pending and no descriptor to take
    /// it with.
    struct OutOfDescriptors(UnixListener);

    impl AsRawFd for OutOfDescriptors {
        fn as_raw_fd(&self) -> std::os::fd::RawFd {
            self.0.as_raw_fd()
        }
    }

    impl Listener for OutOfDescriptors {
        type Stream = UnixStream;
        fn accept_nonblocking(&self) -> io::Result<UnixStream> {
            Err(io::Error::from_raw_os_error(libc::EMFILE))
        }
    }

    #[test]
    fn out_of_descriptors_sheds_the_idle_longest_once_then_pauses_the_listener() {
        let dir = std::env::temp_dir().join(format!("shs-accept-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let listener = OutOfDescriptors(UnixListener::bind(dir.join("s.sock")).unwrap());
        let now = Instant::now();
        let (older, _older_peer) = UnixStream::pair().unwrap();
        let (newer, _newer_peer) = UnixStream::pair().unwrap();
        let (newest, _newest_peer) = UnixStream::pair().unwrap();
        let mut connections = vec![
            Connection::new(newer, now - Duration::from_secs(1)),
            Connection::new(older, now - Duration::from_secs(2)),
            Connection::new(newest, now),
        ];
        let paused_until = accept_all(&listener, &mut connections, MAX_CONNECTIONS, now);
        assert_eq!(paused_until, Some(now + ACCEPT_BACKOFF));
        let left: Vec<Instant> = connections.iter().map(|c| c.last_progress).collect();
        assert_eq!(left, [now - Duration::from_secs(1), now]);
        // With nothing to shed, it pauses at once.
        let mut none: Vec<Connection<UnixStream>> = Vec::new();
        assert_eq!(
            accept_all(&listener, &mut none, MAX_CONNECTIONS, now),
            Some(now + ACCEPT_BACKOFF)
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
