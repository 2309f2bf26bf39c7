//! `scope-http-statistics top`, used as a person would: in a real terminal
//! (tmux), against a daemon watching real servers under load at known
//! rates; and `--once` through a pipe.

mod common;
#[path = "common/tmux.rs"]
mod tmux;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use tmux::Tmux;

/// Latencies are bounded below by the handlers' sleeps, less the daemon's
/// quantile resolution (the middle of a fine bucket, within 1/32 of the
/// value); above, a loaded machine adds scheduling delays, so the upper
/// bounds leave 50 ms and the sleeps are far enough apart (30 ms, 150 ms)
/// that the p99 order holds.
const RESOLUTION: f64 = 1.0 / 32.0;
const SLACK_MS: f64 = 50.0;
/// Requests per second each server gets.
const FAST_RATE: f64 = 40.0;
const FAILING_RATE: f64 = 20.0;
const SLOW_RATE: f64 = 4.0;
/// How long the table may take to show a process (load start, two snapshots).
const SHOW_TIMEOUT: Duration = Duration::from_secs(15);

/// A daemon watching three servers under steady load:
/// - fast: python, `FAST_RATE` GET / per second, all 200, sub-millisecond;
/// - failing: node, `FAILING_RATE`/s, half 500s, half 200s after 30 ms;
/// - slow: node, `SLOW_RATE`/s, 200s after 150 ms.
///
/// By requests/s: fast, failing, slow. By error %: failing first. By p99:
/// slow, failing, fast.
struct BusyHost {
    // Stopped first (fields drop in order), before the servers go away.
    _loads: Vec<TrafficLoop>,
    daemon: Daemon,
    fast: Server,
    failing: Server,
    slow: Server,
}

fn busy_host() -> BusyHost {
    let daemon = Daemon::start();
    let fast = start_python_http11();
    let failing = start_node();
    let slow = start_node();
    let (fast_port, failing_port, slow_port) = (fast.port, failing.port, slow.port);
    let mut flip = false;
    let loads = vec![
        TrafficLoop::paced(FAST_RATE, move || {
            assert_eq!(http_get(fast_port, "/"), 200);
        }),
        TrafficLoop::paced(FAILING_RATE, move || {
            flip = !flip;
            if flip {
                assert_eq!(http_get(failing_port, "/status/500"), 500);
            } else {
                assert_eq!(http_get(failing_port, "/delay/30"), 200);
            }
        }),
        TrafficLoop::paced(SLOW_RATE, move || {
            assert_eq!(http_get(slow_port, "/delay/150"), 200);
        }),
    ];
    BusyHost {
        daemon,
        fast,
        failing,
        slow,
        _loads: loads,
    }
}

fn top_command(socket: &std::path::Path) -> String {
    format!("{DAEMON} top --socket {}", socket.display())
}

/// The exit status a shell line `...; echo EXIT=$?` printed, once it has
/// (after a prompt, when the line was typed ahead).
fn exit_line(screen: &str) -> Option<&str> {
    screen
        .lines()
        .map(|l| l.strip_prefix("$ ").unwrap_or(l))
        .find(|l| l.starts_with("EXIT="))
}

/// The titles of the table's header on `screen`.
fn header_of(screen: &str) -> Vec<&str> {
    screen
        .lines()
        .find(|l| l.trim_start().starts_with("PID "))
        .map(|l| l.split_whitespace().collect())
        .unwrap_or_default()
}

/// Waits for a frame showing the three servers, then for the next one: the
/// first covers an interval in which the load was only starting.
fn steady_frame(term: &Tmux, pids: &[u32]) -> String {
    term.wait_for("the three servers", SHOW_TIMEOUT, |s| shows_all(s, pids));
    std::thread::sleep(Duration::from_millis(2500));
    term.wait_for("the three servers", SHOW_TIMEOUT, |s| shows_all(s, pids))
}

/// The cells of the table row of `pid` on `screen`, if it shows one.
fn row_of(screen: &str, pid: u32) -> Option<Vec<String>> {
    screen.lines().find_map(|line| {
        let cells: Vec<String> = line.split_whitespace().map(String::from).collect();
        (cells.first() == Some(&pid.to_string())).then_some(cells)
    })
}

/// The order in which `pids` appear as rows on `screen`.
fn order_of(screen: &str, pids: &[u32]) -> Vec<u32> {
    screen
        .lines()
        .filter_map(|line| line.split_whitespace().next()?.parse::<u32>().ok())
        .filter(|pid| pids.contains(pid))
        .collect()
}

fn shows_all(screen: &str, pids: &[u32]) -> bool {
    pids.iter().all(|&pid| row_of(screen, pid).is_some())
}

fn assert_rate(what: &str, shown: &str, expected: f64) {
    let shown: f64 = shown
        .parse()
        .unwrap_or_else(|_| panic!("{what}: {shown:?} is not a rate"));
    assert!(
        (shown - expected).abs() <= expected * 0.1,
        "{what}: shows {shown}/s, expected {expected}/s within 10 %"
    );
}

#[test]
fn live_view_shows_each_busy_process_at_its_rate() {
    let host = busy_host();
    let term = Tmux::start(120, 40);
    term.type_line(&top_command(&host.daemon.socket));
    let pids = [host.fast.pid, host.failing.pid, host.slow.pid];
    let screen = steady_frame(&term, &pids);
    assert_eq!(
        header_of(&screen),
        [
            "PID", "COMMAND", "REQ/S*", "2XX/S", "3XX/S", "4XX/S", "5XX/S", "ERR%", "P50", "MS",
            "P99", "MS"
        ],
        "{screen}"
    );
    let fast = row_of(&screen, host.fast.pid).unwrap();
    assert_eq!(fast[1], comm_of(host.fast.pid), "{screen}");
    assert_rate("fast requests", &fast[2], FAST_RATE);
    assert_rate("fast 2xx", &fast[3], FAST_RATE);
    assert_eq!(&fast[4..8], ["0.0", "0.0", "0.0", "0.0"], "{screen}");

    let failing = row_of(&screen, host.failing.pid).unwrap();
    assert_rate("failing requests", &failing[2], FAILING_RATE);
    assert_rate("failing 5xx", &failing[6], FAILING_RATE / 2.0);
    let error_pct: f64 = failing[7].parse().unwrap();
    assert!(
        (40.0..=60.0).contains(&error_pct),
        "error % {error_pct}:\n{screen}"
    );
    let p99: f64 = failing[9].parse().unwrap();
    assert!(
        (30.0 * (1.0 - RESOLUTION)..30.0 + SLACK_MS).contains(&p99),
        "failing p99 {p99} ms:\n{screen}"
    );

    let slow = row_of(&screen, host.slow.pid).unwrap();
    assert_rate("slow requests", &slow[2], SLOW_RATE);
    let p50: f64 = slow[8].parse().unwrap();
    assert!(
        (150.0 * (1.0 - RESOLUTION)..150.0 + SLACK_MS).contains(&p50),
        "slow p50 {p50} ms:\n{screen}"
    );
    term.press("q");
}

#[test]
fn keys_change_the_sort_order() {
    let host = busy_host();
    let term = Tmux::start(120, 40);
    term.type_line(&top_command(&host.daemon.socket));
    let (fast, failing, slow) = (host.fast.pid, host.failing.pid, host.slow.pid);
    let pids = [fast, failing, slow];
    steady_frame(&term, &pids);
    let table = [
        ("e", "ERR%*", vec![failing, fast, slow]),
        ("p", "P99 MS*", vec![slow, failing, fast]),
        ("r", "REQ/S*", vec![fast, failing, slow]),
    ];
    for (key, marked, expected) in table {
        term.press(key);
        let screen = term.wait_for(marked, Duration::from_secs(5), |s| {
            s.contains(marked) && shows_all(s, &pids)
        });
        assert_eq!(
            order_of(&screen, &pids),
            expected,
            "after {key:?} (fast {fast}, failing {failing}, slow {slow}):\n{screen}"
        );
    }
    term.press("q");
}

/// Every line of a frame is the title, the header, a row starting with a
/// pid, or "(N more)": a wrapped line would leave a fragment that is none.
fn assert_no_wrapped_lines(screen: &str, width: usize) {
    for line in screen.lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            line.chars().count() <= width,
            "{line:?} is wider than {width}"
        );
        let first = line.split_whitespace().next().unwrap();
        assert!(
            line.starts_with("scope-http-statistics top")
                || first == "PID"
                || first.parse::<u32>().is_ok()
                || (line.starts_with('(') && line.ends_with(" more)")),
            "a line that is no part of the table (wrapped?): {line:?} in\n{screen}"
        );
    }
}

#[test]
fn narrow_and_short_terminals_drop_columns_and_rows_not_wrap() {
    let host = busy_host();
    let term = Tmux::start(120, 40);
    term.type_line(&top_command(&host.daemon.socket));
    let pids = [host.fast.pid, host.failing.pid, host.slow.pid];
    steady_frame(&term, &pids);

    // Narrow: the columns that always stay, on one line each.
    term.resize(40, 40);
    // (tmux first crops the wide frame; top redraws on SIGWINCH)
    let screen = term.wait_for("the narrow table", Duration::from_secs(5), |s| {
        header_of(s) == ["PID", "COMMAND", "REQ/S*"] && shows_all(s, &pids)
    });
    assert_no_wrapped_lines(&screen, 40);
    assert_rate(
        "fast requests, narrow",
        &row_of(&screen, host.fast.pid).unwrap()[2],
        FAST_RATE,
    );

    // Medium: all but the 3xx and 4xx columns.
    term.resize(80, 40);
    // (tmux first shows what the narrow frame had hidden; top redraws)
    let medium = [
        "PID", "COMMAND", "REQ/S*", "2XX/S", "5XX/S", "ERR%", "P50", "MS", "P99", "MS",
    ];
    let screen = term.wait_for("the medium table", Duration::from_secs(5), |s| {
        header_of(s) == medium && shows_all(s, &pids)
    });
    assert_no_wrapped_lines(&screen, 80);

    // Short: title, header, one row and the count of the rest.
    term.resize(80, 4);
    let screen = term.wait_for("the short table", Duration::from_secs(5), |s| {
        s.lines().any(|l| l.ends_with(" more)"))
    });
    let lines: Vec<&str> = screen.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 4, "{screen}");
    assert!(lines[3].starts_with('('), "{screen}");
    let more: usize = lines[3]
        .trim_start_matches('(')
        .trim_end_matches(" more)")
        .parse()
        .unwrap();
    assert!(more >= 2, "{screen}");
    term.press("q");
}

#[test]
fn quitting_restores_the_terminal() {
    let daemon = Daemon::start();
    for key in ["q", "C-c"] {
        let term = Tmux::start(100, 30);
        term.type_line("echo BEFORE-TOP");
        term.wait_for("the echo", Duration::from_secs(5), |s| {
            s.lines().any(|l| l == "BEFORE-TOP")
        });
        term.type_line(&format!("{}; echo EXIT=$?", top_command(&daemon.socket)));
        term.wait_for("top's header", Duration::from_secs(10), |s| {
            s.contains("PID COMMAND")
        });
        term.press(key);
        let screen = term.wait_for("the shell again", Duration::from_secs(5), |s| {
            exit_line(s).is_some()
        });
        assert_eq!(exit_line(&screen), Some("EXIT=0"), "{key}:\n{screen}");
        // The alternate screen is gone: the shell's screen is back as it was.
        assert!(screen.contains("BEFORE-TOP"), "{key}:\n{screen}");
        assert!(!screen.contains("COMMAND"), "{key}: table left:\n{screen}");
        // Echo and line editing are back.
        term.type_line(
            "stty -a | tr ' ' '\\n' | grep -x -e '-*icanon' -e '-*echo' | tr '\\n' ' '; echo",
        );
        let screen = term.wait_for("stty's answer", Duration::from_secs(5), |s| {
            s.contains("icanon echo")
        });
        assert!(
            !screen.contains("-icanon") && !screen.contains("-echo "),
            "{key}: terminal left in raw mode:\n{screen}"
        );
    }
}

#[test]
fn a_daemon_that_goes_away_is_shown_and_q_still_restores() {
    let mut daemon = Daemon::start();
    let term = Tmux::start(200, 20);
    term.type_line(&format!("{}; echo EXIT=$?", top_command(&daemon.socket)));
    term.wait_for("top's header", Duration::from_secs(10), |s| {
        s.contains("PID COMMAND")
    });
    daemon.stop();
    let screen = term.wait_for("the daemon gone", Duration::from_secs(10), |s| {
        s.contains("cannot connect to the daemon on")
    });
    assert!(
        screen.contains("PID COMMAND"),
        "the table went away:\n{screen}"
    );
    term.press("q");
    let screen = term.wait_for("the shell again", Duration::from_secs(5), |s| {
        exit_line(s).is_some()
    });
    assert_eq!(exit_line(&screen), Some("EXIT=0"), "{screen}");
}

#[test]
fn once_through_a_pipe_prints_one_plain_table() {
    let host = busy_host();
    // Let the load run for a snapshot or two first.
    let warm = wait_until(SHOW_TIMEOUT, || {
        host.daemon.counts_for(host.fast.pid).requests >= Some(2 * FAST_RATE as u64)
    });
    assert!(warm, "the fast server was not counted");
    let output = Command::new(DAEMON)
        .args(["top", "--once", "--socket"])
        .arg(&host.daemon.socket)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(output.status.success(), "{}: {text}", output.status);
    assert!(
        output.stderr.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!text.contains('\x1b'), "escape codes in a pipe: {text:?}");
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(header[..3], ["PID", "COMMAND", "REQ/S*"], "{text}");
    assert_eq!(header.len(), 12, "all columns in a pipe: {text}");
    let fast = row_of(&text, host.fast.pid).unwrap_or_else(|| panic!("no fast row:\n{text}"));
    assert_rate("fast requests, --once", &fast[2], FAST_RATE);
    assert_eq!(
        order_of(&text, &[host.fast.pid, host.failing.pid, host.slow.pid]),
        [host.fast.pid, host.failing.pid, host.slow.pid],
        "{text}"
    );
}

#[test]
fn without_a_daemon_it_says_so_in_one_line_and_exits_1() {
    let dir = TempDir::new("top-nodaemon");
    let socket = dir.path().join("http-statistics.sock");
    // Through a pipe.
    let output = Command::new(DAEMON)
        .args(["top", "--once", "--socket"])
        .arg(&socket)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(output.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("scope-http-statistics: cannot connect to the daemon on ")
            && stderr.contains(&socket.display().to_string()),
        "{stderr}"
    );
    // In a terminal, the live view says the same and leaves the screen alone.
    let term = Tmux::start(200, 20);
    term.type_line(&format!("{}; echo EXIT=$?", top_command(&socket)));
    let screen = term.wait_for("the exit status", Duration::from_secs(10), |s| {
        exit_line(s).is_some()
    });
    assert_eq!(exit_line(&screen), Some("EXIT=1"), "{screen}");
    assert!(
        screen.contains("scope-http-statistics: cannot connect to the daemon on"),
        "{screen}"
    );
}
