//! A terminal a test can type into and read, as a person would: a private
//! tmux server (its own `-L` socket, no config file) with one session
//! running `sh`; keys go in with `send-keys`, the screen comes out with
//! `capture-pane`. The server is killed on drop.

// Each test file includes this on its own and uses only part of it.
#![allow(dead_code)]

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

const SESSION: &str = "main";

pub struct Tmux {
    server: String,
}

impl Tmux {
    /// A `width` x `height` terminal running `sh` with the prompt `$ `.
    pub fn start(width: u16, height: u16) -> Tmux {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let server = format!(
            "shs-test-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let tmux = Tmux { server };
        tmux.run(&[
            "-f",
            "/dev/null",
            "new-session",
            "-d",
            "-s",
            SESSION,
            "-x",
            &width.to_string(),
            "-y",
            &height.to_string(),
            "env PS1='$ ' sh",
        ]);
        // (capture-pane drops the prompt's trailing space)
        tmux.wait_for("the shell's prompt", Duration::from_secs(10), |s| {
            s.lines().any(|l| l.trim_end() == "$")
        });
        tmux
    }

    fn run(&self, args: &[&str]) -> String {
        let output = Command::new("tmux")
            .arg("-L")
            .arg(&self.server)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run tmux (apt-get install tmux): {e}"));
        assert!(
            output.status.success(),
            "tmux {args:?}: {}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Types `line` and presses Enter.
    pub fn type_line(&self, line: &str) {
        self.run(&["send-keys", "-t", SESSION, "-l", line]);
        self.run(&["send-keys", "-t", SESSION, "Enter"]);
    }

    /// Presses one key, in tmux's names (`q`, `C-c`, `Enter`).
    pub fn press(&self, key: &str) {
        self.run(&["send-keys", "-t", SESSION, key]);
    }

    /// What the screen shows now, one line per row.
    pub fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", SESSION])
    }

    /// The screen and everything scrolled off it.
    pub fn history(&self) -> String {
        self.run(&["capture-pane", "-p", "-S", "-", "-t", SESSION])
    }

    pub fn resize(&self, width: u16, height: u16) {
        self.run(&[
            "resize-window",
            "-t",
            SESSION,
            "-x",
            &width.to_string(),
            "-y",
            &height.to_string(),
        ]);
    }

    /// Polls the screen until `cond` holds on it; returns that screen.
    pub fn wait_for(&self, what: &str, timeout: Duration, cond: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let screen = self.screen();
            if cond(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "the terminal did not show {what} within {timeout:?}; it shows:\n{screen}"
            );
            thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .arg("-L")
            .arg(&self.server)
            .arg("kill-server")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
