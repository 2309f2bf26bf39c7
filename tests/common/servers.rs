//! Real HTTP servers under test (python, node, nginx), each on a free
//! loopback port in its own temp dir, stopped on drop.

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
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

    /// Spawns `command` (stdout piped, stderr to server.log) and reads the
    /// port it prints as its first line.
    fn spawn_printing_port(mut command: Command, dir: TempDir, what: &str) -> Server {
        let log = dir.path().join("server.log");
        let mut child = command
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("start {what}: {e}"));
        let mut first_line = String::new();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let _ = stdout.read_line(&mut first_line);
        let port = parse_port(&first_line).unwrap_or_else(|| {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{what} did not print its port (printed {first_line:?}); stderr:\n{}",
                fs::read_to_string(&log).unwrap_or_default()
            )
        });
        // Keep draining stdout so the server never blocks on a full pipe.
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
    const SCRIPT: &str = r#"
import functools, http.server
class Handler(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(
    ("127.0.0.1", 0), functools.partial(Handler, directory="www"))
print(server.server_address[1], flush=True)
server.serve_forever()
"#;
    let dir = TempDir::new("py11");
    write_file(&dir.path().join("www/index.html"), INDEX_HTML);
    let mut command = Command::new(python());
    command.args(["-u", "-c", SCRIPT]);
    Server::spawn_printing_port(command, dir, "python HTTP/1.1 server")
}

/// A raw-socket python server that answers every request with a 200 whose
/// status line + headers go out in one send and the body in two later sends.
pub const SPLIT_BODY: &str = "hello, split world\n";

pub fn start_python_split_writer() -> Server {
    const SCRIPT: &str = r#"
import socket, sys, threading, time
body = sys.argv[1].encode()
def serve(conn):
    with conn:
        buf = b""
        while True:
            while b"\r\n\r\n" not in buf:
                data = conn.recv(4096)
                if not data:
                    return
                buf += data
            head, buf = buf.split(b"\r\n\r\n", 1)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % len(body))
            time.sleep(0.02)
            conn.sendall(body[:5])
            time.sleep(0.02)
            conn.sendall(body[5:])
            if b"connection: close" in head.lower():
                return
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", 0))
listener.listen(64)
print(listener.getsockname()[1], flush=True)
while True:
    conn, _ = listener.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"#;
    let dir = TempDir::new("pysplit");
    let mut command = Command::new(python());
    command.args(["-u", "-c", SCRIPT, SPLIT_BODY]);
    Server::spawn_printing_port(command, dir, "python split-write server")
}

/// A raw-socket python server that answers all the pipelined GETs it got in
/// one read with ONE write: a single `sendall` of all responses, or, for
/// requests to `/iov`, a single `sendmsg` whose iovecs are each response's
/// head and body (nginx, by contrast, writes one response per writev).
pub fn start_python_batching_writer() -> Server {
    const SCRIPT: &str = r#"
import socket, threading
body = b"batched\n"
head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % len(body)
def serve(conn):
    with conn:
        buf = b""
        while True:
            data = conn.recv(65536)
            if not data:
                return
            buf += data
            n = buf.count(b"\r\n\r\n")  # GETs without bodies only
            if n == 0:
                continue
            end = buf.rfind(b"\r\n\r\n") + 4
            batch, buf = buf[:end], buf[end:]
            if batch.startswith(b"GET /iov "):
                sent = conn.sendmsg([part for _ in range(n) for part in (head, body)])
                assert sent == n * (len(head) + len(body)), sent
            else:
                conn.sendall((head + body) * n)
            if b"connection: close" in batch.lower():
                return
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", 0))
listener.listen(64)
print(listener.getsockname()[1], flush=True)
while True:
    conn, _ = listener.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"#;
    let dir = TempDir::new("pybatch");
    let mut command = Command::new(python());
    command.args(["-u", "-c", SCRIPT]);
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
    const SCRIPT: &str = r#"
const http = require('http');
const server = http.createServer((req, res) => {
  let m;
  if ((m = /^\/status\/(\d{3})$/.exec(req.url))) {
    res.writeHead(Number(m[1]));
    res.end();
  } else if (req.url === '/split') {
    res.writeHead(200, { 'Content-Type': 'text/plain', 'Content-Length': '2' });
    res.write('a');
    setTimeout(() => res.end('b'), 10);
  } else if (req.url === '/echo') {
    const chunks = [];
    req.on('data', (chunk) => chunks.push(chunk));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      res.writeHead(200, { 'Content-Type': 'text/plain', 'Content-Length': String(body.length) });
      res.end(body);
    });
  } else if ((m = /^\/delay\/(\d+)$/.exec(req.url))) {
    setTimeout(() => res.end('late'), Number(m[1]));
  } else {
    let length = 0;
    req.on('data', (chunk) => { length += chunk.length; });
    req.on('end', () => res.end('ok ' + length));
  }
});
server.listen(0, '127.0.0.1', () => console.log(server.address().port));
"#;
    let dir = TempDir::new("node");
    let mut command = Command::new("node");
    command.args(["-e", SCRIPT]);
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
        let config = format!(
            "worker_processes 1;\n\
             pid {root}/nginx.pid;\n\
             error_log {root}/logs/error.log warn;\n\
             events {{ worker_connections 128; }}\n\
             http {{\n\
               access_log off;\n\
               client_body_temp_path {root}/tmp_body;\n\
               proxy_temp_path {root}/tmp_proxy;\n\
               fastcgi_temp_path {root}/tmp_fastcgi;\n\
               uwsgi_temp_path {root}/tmp_uwsgi;\n\
               scgi_temp_path {root}/tmp_scgi;\n\
               server {{\n\
                 listen 127.0.0.1:{port};\n\
                 root {root}/html;\n\
                 location / {{ }}\n\
               }}\n\
             }}\n",
            root = root.display()
        );
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
