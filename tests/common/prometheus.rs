//! A real Prometheus (Debian's `prometheus` package) for tests: started on a
//! free loopback port with a temporary storage directory, scraping the given
//! targets once a second, queried through its HTTP API (with curl), and
//! stopped on drop. Its log is kept at debug level, where failed scrapes
//! show.

// Each test file includes this on its own and uses only part of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use super::common::{free_port, TempDir};

/// The job name the scrape config gives the daemon's targets.
pub const JOB: &str = "scope-http-statistics";
const START_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Prometheus {
    child: Child,
    pub port: u16,
    dir: TempDir,
}

/// One series of an instant vector: its labels and value.
pub type Sample = (BTreeMap<String, String>, f64);

/// Now, in Unix seconds (what the API's `time` parameter takes).
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

impl Prometheus {
    /// Starts Prometheus scraping `targets` (host:port) every second as job
    /// [`JOB`]; returns once its API answers.
    pub fn start(targets: &[String]) -> Prometheus {
        let dir = TempDir::new("prometheus");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: {JOB}\n    static_configs:\n      - targets: {}\n",
            serde_json::to_string(targets).unwrap()
        );
        let config_path = dir.path().join("prometheus.yml");
        fs::write(&config_path, config).unwrap();
        let log_path = dir.path().join("prometheus.log");
        for _attempt in 0..5 {
            let port = free_port();
            let log = File::create(&log_path).unwrap();
            let mut child = Command::new("prometheus")
                .arg(format!("--config.file={}", config_path.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .arg("--log.level=debug")
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("start prometheus (apt-get install prometheus): {e}"));
            if wait_ready(&mut child, port) {
                return Prometheus { child, port, dir };
            }
            let log = fs::read_to_string(&log_path).unwrap_or_default();
            let _ = child.kill();
            let _ = child.wait();
            // The port was taken in the meantime: try another one.
            assert!(
                log.contains("address already in use"),
                "prometheus did not start:\n{log}"
            );
        }
        panic!("prometheus found no free port in 5 attempts");
    }

    /// Prometheus's own log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// The log lines that report a scrape gone wrong (failed, rejected
    /// samples, bad exposition), at any level.
    pub fn scrape_problems(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| {
                let lower = l.to_ascii_lowercase();
                lower.contains("scrape")
                    && (lower.contains("level=warn")
                        || lower.contains("level=error")
                        || lower.contains("failed")
                        || lower.contains(" err="))
            })
            .map(String::from)
            .collect()
    }

    /// GET `path` on the API with `params` URL-encoded; the parsed answer,
    /// whatever its status (the caller checks `status`).
    pub fn api(&self, path: &str, params: &[(&str, String)]) -> Value {
        let mut command = Command::new("curl");
        command.args(["-sS", "-G"]);
        for (name, value) in params {
            command
                .arg("--data-urlencode")
                .arg(format!("{name}={value}"));
        }
        let output = command
            .arg(format!("http://127.0.0.1:{}{path}", self.port))
            .stdin(Stdio::null())
            .output()
            .expect("run curl");
        assert!(
            output.status.success(),
            "curl {path}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
            panic!(
                "{path}: not JSON ({e}): {}",
                String::from_utf8_lossy(&output.stdout)
            )
        })
    }

    /// Evaluates `promql` at `time` (Unix seconds); panics with Prometheus's
    /// error if it does not parse or evaluate.
    pub fn query(&self, promql: &str, time: f64) -> Value {
        let answer = self.api(
            "/api/v1/query",
            &[
                ("query", promql.to_string()),
                ("time", format!("{time:.3}")),
            ],
        );
        assert_eq!(
            answer["status"], "success",
            "query {promql:?} failed: {answer}"
        );
        answer["data"].clone()
    }

    /// The series of the instant vector `promql` evaluates to at `time`.
    pub fn vector(&self, promql: &str, time: f64) -> Vec<Sample> {
        let data = self.query(promql, time);
        assert_eq!(
            data["resultType"], "vector",
            "{promql:?} is not an instant vector: {data}"
        );
        data["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|series| {
                let labels = series["metric"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                    .collect();
                let value = series["value"][1].as_str().unwrap().parse().unwrap();
                (labels, value)
            })
            .collect()
    }

    /// The value of `promql` at `time`, which must be exactly one series.
    pub fn scalar(&self, promql: &str, time: f64) -> f64 {
        let v = self.vector(promql, time);
        assert_eq!(v.len(), 1, "{promql:?}: expected one series, got {v:?}");
        v[0].1
    }

    /// Polls `promql` (at the current time) until it has exactly one series
    /// equal to `expected`, within `timeout`.
    pub fn wait_for_value(&self, promql: &str, expected: f64, timeout: Duration) {
        let mut last = Vec::new();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            last = self.vector(promql, unix_now());
            if last.len() == 1 && last[0].1 == expected {
                return;
            }
            thread::sleep(Duration::from_millis(250));
        }
        panic!(
            "{promql:?}: expected {expected} within {timeout:?}, last {last:?}; prometheus log:\n{}",
            self.log()
        );
    }

    pub fn stop(&mut self) {
        // SAFETY: kill(2) on the pid of a child we started and have not reaped.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until Prometheus on `port` is ready; false if it exited first.
fn wait_ready(child: &mut Child, port: u16) -> bool {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        let ready = Command::new("curl")
            .args(["-sf", "-o", "/dev/null"])
            .arg(format!("http://127.0.0.1:{port}/-/ready"))
            .status()
            .is_ok_and(|s| s.success());
        if ready {
            return true;
        }
        assert!(
            Instant::now() < deadline,
            "prometheus not ready within {START_TIMEOUT:?}"
        );
        thread::sleep(Duration::from_millis(200));
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.stop();
        if thread::panicking() {
            eprintln!("---- prometheus log ----\n{}", self.log());
        }
    }
}
