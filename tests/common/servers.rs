//! Real HTTP servers under test (python, node, nginx), each on a free
//! loopback port in its own temp dir, stopped on drop.

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::thread;
use std::time::Duration;

use super::process::{children_of, free_port, signal, terminate, wait_until, TempDir};

/// A server process the test started; killed (with its children) on drop.
pub struct Server {
    child: Child,
    /// The process that reads requests and writes responses (for nginx the
    /// single worker; otherwise the process itself).
    pub pid: u32,
    pub port: u16,
    dir: TempDir,
}

impl Server {
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Stops the server (SIGTERM, then SIGKILL) and reaps it.
    pub fn stop(&mut self) {
        let workers = children_of(self.child.id());
        terminate(&mut self.child, Duration::from_secs(3));
        for pid in workers {
            signal(pid, libc::SIGKILL);
        }
    }

    pub fn server_log(&self) -> String {
        fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Runs `command` as a server that prints its port first; keeps
    /// draining its stdout so that it never blocks on a full pipe.
    pub fn spawn_printing_port(mut command: Command, dir: TempDir, what: &str) -> Server {
        let (child, port, mut stdout) = spawn_printing_port(&mut command, dir.path(), what);
        thread::spawn(move || io::copy(&mut stdout, &mut io::sink()));
        let pid = child.id();
        Server {
            child,
            pid,
            port,
            dir,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Spawns `command` in `dir` (stdout piped, stderr to `dir`/server.log) and
/// reads the port it prints as its first line; returns the child, the port
/// and the rest of its stdout. Panics with the server's stderr if it prints
/// no port.
pub fn spawn_printing_port(
    command: &mut Command,
    dir: &Path,
    what: &str,
) -> (Child, u16, BufReader<ChildStdout>) {
    let log = dir.join("server.log");
    let mut child = command
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(File::create(&log).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("start {what}: {e}"));
    let mut first_line = String::new();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let _ = stdout.read_line(&mut first_line);
    let Some(port) = parse_port(&first_line) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "{what} did not print its port (printed {first_line:?}); stderr:\n{}",
            fs::read_to_string(&log).unwrap_or_default()
        )
    };
    (child, port, stdout)
}

/// The port in a line like "41234" or "Serving HTTP on 127.0.0.1 port 41234 (...)".
fn parse_port(line: &str) -> Option<u16> {
    let line = line.trim();
    if let Ok(port) = line.parse() {
        return Some(port);
    }
    let after = line.split(" port ").nth(1)?;
    after.split_whitespace().next()?.parse().ok()
}

/// Debian's python3 when present (the one on PATH may be a pyenv shim).
pub fn python() -> &'static str {
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

fn write_file(path: &Path, contents: &str) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    fs::write(path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// A file under tests/fixtures/ (servers and configs shared with scripts/).
pub fn fixture(name: &str) -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures")).join(name)
}

/// The body every static server serves at `/`.
pub const INDEX_HTML: &str = "<html><body>hello from the test server</body></html>\n";

/// `python3 -m http.server` as shipped: HTTP/1.0, one connection per request,
/// serving a directory that holds index.html.
pub fn start_python_http10() -> Server {
    let dir = TempDir::new("py10");
    write_file(&dir.path().join("www/index.html"), INDEX_HTML);
    let mut command = Command::new(python());
    command.args([
        "-u",
        "-m",
        "http.server",
        "0",
        "--bind",
        "127.0.0.1",
        "--directory",
        "www",
    ]);
    Server::spawn_printing_port(command, dir, "python3 -m http.server")
}

/// python's http.server with `protocol_version = "HTTP/1.1"`: keep-alive.
pub fn start_python_http11() -> Server {
    let dir = TempDir::new("py11");
    write_file(&dir.path().join("www/index.html"), INDEX_HTML);
    let mut command = Command::new(python());
    command.arg("-u").arg(fixture("http11_server.py"));
    Server::spawn_printing_port(command, dir, "python HTTP/1.1 server")
}

/// A raw-socket python server that answers every request with a 200 whose
/// status line + headers go out in one send and the body in two later sends.
pub const SPLIT_BODY: &str = "hello, split world\n";

pub fn start_python_split_writer() -> Server {
    let dir = TempDir::new("pysplit");
    let mut command = Command::new(python());
    command.args([
        "-u".as_ref(),
        fixture("split_writer.py").as_os_str(),
        SPLIT_BODY.as_ref(),
    ]);
    Server::spawn_printing_port(command, dir, "python split-write server")
}

/// A raw-socket python server that answers all the pipelined GETs it got in
/// one read with ONE write: a single `sendall` of all responses, or, for
/// requests to `/iov`, a single `sendmsg` whose iovecs are each response's
/// head and body (nginx, by contrast, writes one response per writev).
pub fn start_python_batching_writer() -> Server {
    let dir = TempDir::new("pybatch");
    let mut command = Command::new(python());
    command.arg("-u").arg(fixture("batching_writer.py"));
    Server::spawn_printing_port(command, dir, "python batching server")
}

/// node's http server:
/// - `/status/NNN`: answers with status NNN (no body);
/// - `/split`: head + first body byte, then the last byte 10 ms later;
/// - `/echo`: answers 200 with the request body as its body (Content-Length);
/// - `/delay/MS`: answers 200 after MS milliseconds;
/// - anything else (any method): reads the whole request body, answers 200
///   with `ok <body length>`.
pub fn start_node() -> Server {
    let dir = TempDir::new("node");
    let mut command = Command::new("node");
    command.arg(fixture("server.js"));
    Server::spawn_printing_port(command, dir, "node http server")
}

/// nginx with one worker, in the foreground, on a private prefix and a free
/// port, serving index.html. `Server::pid` is the worker's pid.
pub fn start_nginx() -> Server {
    let dir = TempDir::new("nginx");
    let root = dir.path();
    write_file(&root.join("html/index.html"), INDEX_HTML);
    fs::create_dir_all(root.join("logs")).unwrap();
    // The port is only free until someone else takes it: retry on bind errors.
    for _attempt in 0..5 {
        let port = free_port();
        let config = fs::read_to_string(fixture("nginx.conf.in"))
            .expect("read tests/fixtures/nginx.conf.in")
            .replace("@PREFIX@", &root.display().to_string())
            .replace("@PORT@", &port.to_string());
        let config_path = root.join("nginx.conf");
        write_file(&config_path, &config);
        let mut child = Command::new("nginx")
            .arg("-p")
            .arg(root)
            .arg("-e")
            .arg(root.join("logs/error.log"))
            .arg("-c")
            .arg(&config_path)
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(root.join("server.log")).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("start nginx (apt-get install nginx): {e}"));
        let master = child.id();
        let mut workers = Vec::new();
        let started = wait_until(Duration::from_secs(5), || {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return true;
            }
            workers = children_of(master);
            workers.len() == 1
        });
        if let Ok(Some(_)) = child.try_wait() {
            let errors = fs::read_to_string(root.join("logs/error.log")).unwrap_or_default()
                + &fs::read_to_string(root.join("server.log")).unwrap_or_default();
            if errors.contains("Address already in use") {
                continue;
            }
            panic!("nginx exited at start-up:\n{errors}");
        }
        assert!(
            started,
            "nginx master {master} did not fork exactly one worker: {workers:?}"
        );
        return Server {
            child,
            pid: workers[0],
            port,
            dir,
        };
    }
    panic!("nginx could not bind a free port in 5 attempts");
}
