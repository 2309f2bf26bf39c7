//! `scope-http-statistics top`: a live table of the busiest processes, read
//! from the running daemon's socket. Counters come from `GET /metrics`
//! (rates are their deltas over the daemon's own snapshot times, so they are
//! exact however the polls fall); p50/p99 come from `GET /report`, which the
//! daemon computes from its fine histograms. Parsing, rates, sorting, column
//! layout and rendering are pure functions; the socket client and the
//! terminal (raw mode via termios, size via TIOCGWINSZ) come after them.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::daemon_client;
use crate::metrics::{REQUESTS_TOTAL, RESPONSES_TOTAL, SNAPSHOT_TIMESTAMP};
use crate::rates;
use crate::report::{LATENCY_P50_METRIC, LATENCY_P99_METRIC};

/// The response classes shown, as the first digit of the code.
const CLASSES: [u16; 4] = [2, 3, 4, 5];

// ---------------------------------------------------------------------------
// Pure: parsing what the daemon serves
// ---------------------------------------------------------------------------

/// Cumulative counters of one process, as /metrics shows them.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ProcessTotals {
    pub comm: String,
    pub requests: u64,
    /// Responses in classes 2xx, 3xx, 4xx, 5xx.
    pub by_class: [u64; 4],
    /// Every response, also 1xx and codes beyond the kernel's slots.
    pub responses: u64,
}

/// One reading of /metrics.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MetricsSample {
    /// When the daemon read the kernel's counters (Unix seconds); absent
    /// from daemons that predate the gauge.
    pub snapshot_time: Option<f64>,
    pub processes: BTreeMap<u32, ProcessTotals>,
}

/// Label names and their unescaped values.
type Labels<'a> = Vec<(&'a str, String)>;

/// A sample line `name{labels} value`: its name, labels and value. Label
/// values are unescaped (`\\`, `\"`, `\n`). None for comments and lines that
/// are not samples.
fn parse_sample(line: &str) -> Option<(&str, Labels<'_>, f64)> {
    if line.starts_with('#') {
        return None;
    }
    let name_end = line.find(['{', ' '])?;
    let name = &line[..name_end];
    let mut labels = Vec::new();
    let mut rest = &line[name_end..];
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices();
        loop {
            // label name up to '=', or the closing brace
            let (start, c) = chars.next()?;
            if c == '}' {
                rest = &inner[start + 1..];
                break;
            }
            if c == ',' {
                continue;
            }
            let eq = start + inner[start..].find('=')?;
            let label = &inner[start..eq];
            while chars.next()?.0 < eq {}
            if chars.next()?.1 != '"' {
                return None;
            }
            let mut value = String::new();
            loop {
                match chars.next()?.1 {
                    '"' => break,
                    '\\' => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    other => value.push(other),
                }
            }
            labels.push((label, value));
        }
    }
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some((name, labels, value))
}

fn label<'a>(labels: &'a [(&str, String)], name: &str) -> Option<&'a str> {
    labels
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.as_str())
}

/// Reads the per-process counters and the snapshot time out of a /metrics
/// page; everything else on it is ignored.
pub fn parse_metrics(text: &str) -> MetricsSample {
    let mut sample = MetricsSample::default();
    for line in text.lines() {
        let Some((name, labels, value)) = parse_sample(line) else {
            continue;
        };
        if name == SNAPSHOT_TIMESTAMP {
            sample.snapshot_time = Some(value);
            continue;
        }
        if name != REQUESTS_TOTAL && name != RESPONSES_TOTAL {
            continue;
        }
        let Some(pid) = label(&labels, "pid").and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        let totals = sample.processes.entry(pid).or_default();
        if let Some(comm) = label(&labels, "comm") {
            if totals.comm.is_empty() {
                totals.comm = comm.to_string();
            }
        }
        let count = value as u64;
        if name == REQUESTS_TOTAL {
            totals.requests = count;
            continue;
        }
        totals.responses += count;
        let class = label(&labels, "code")
            .and_then(|c| c.parse::<u16>().ok())
            .map(|c| c / 100);
        if let Some(i) = CLASSES.iter().position(|&c| Some(c) == class) {
            totals.by_class[i] += count;
        }
    }
    sample
}

/// Latency quantiles by pid from a /report: the daemon's p50 and p99 over
/// its last interval, in milliseconds.
pub fn parse_report_quantiles(report: &Value) -> HashMap<u32, (Option<f64>, Option<f64>)> {
    let mut out = HashMap::new();
    let Some(nodes) = report
        .get("Process")
        .and_then(|p| p.get("nodes"))
        .and_then(Value::as_object)
    else {
        return out;
    };
    let value = |metrics: &Value, id: &str| {
        metrics
            .get(id)?
            .get("samples")?
            .get(0)?
            .get("value")?
            .as_f64()
    };
    for (id, node) in nodes {
        let Some(pid) = id.rsplit(';').next().and_then(|p| p.parse().ok()) else {
            continue;
        };
        let Some(metrics) = node.get("metrics") else {
            continue;
        };
        out.insert(
            pid,
            (
                value(metrics, LATENCY_P50_METRIC),
                value(metrics, LATENCY_P99_METRIC),
            ),
        );
    }
    out
}

// ---------------------------------------------------------------------------
// Pure: rows, sorting, layout, rendering
// ---------------------------------------------------------------------------

/// One process in the table: rates over the last interval.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub pid: u32,
    pub comm: String,
    pub requests: f64,
    /// Responses per second in classes 2xx, 3xx, 4xx, 5xx.
    pub by_class: [f64; 4],
    /// 5xx among all responses, in percent; None without responses.
    pub error_pct: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// Rates of the processes that received requests or sent responses between
/// two samples `elapsed` seconds apart. A pid absent before (or whose counters
/// went backwards: a new process under a reused pid) counts from zero.
pub fn rows(
    before: &MetricsSample,
    now: &MetricsSample,
    elapsed: f64,
    quantiles: &HashMap<u32, (Option<f64>, Option<f64>)>,
) -> Vec<Row> {
    if !(elapsed > 0.0 && elapsed.is_finite()) {
        return Vec::new();
    }
    let empty = ProcessTotals::default();
    let mut out = Vec::new();
    for (&pid, totals) in &now.processes {
        let mut then = before.processes.get(&pid).unwrap_or(&empty);
        if totals.requests < then.requests || totals.responses < then.responses {
            then = &empty;
        }
        let per_second = |now: u64, then: u64| rates::rate(then, now, elapsed);
        let requests = per_second(totals.requests, then.requests);
        let responses = per_second(totals.responses, then.responses);
        if requests == 0.0 && responses == 0.0 {
            continue;
        }
        let mut by_class = [0.0; 4];
        for (i, rate) in by_class.iter_mut().enumerate() {
            *rate = per_second(totals.by_class[i], then.by_class[i]);
        }
        let (p50_ms, p99_ms) = quantiles.get(&pid).copied().unwrap_or((None, None));
        out.push(Row {
            pid,
            comm: totals.comm.clone(),
            requests,
            by_class,
            error_pct: (responses > 0.0).then(|| 100.0 * by_class[3] / responses),
            p50_ms,
            p99_ms,
        });
    }
    out
}

/// What the table is sorted by (descending); keys r, e and p choose it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortKey {
    Requests,
    Errors,
    P99,
}

impl SortKey {
    pub fn from_key(key: u8) -> Option<SortKey> {
        match key {
            b'r' | b'R' => Some(SortKey::Requests),
            b'e' | b'E' => Some(SortKey::Errors),
            b'p' | b'P' => Some(SortKey::P99),
            _ => None,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            SortKey::Requests => "requests/s",
            SortKey::Errors => "error %",
            SortKey::P99 => "p99",
        }
    }
}

/// What a key typed in the live view does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAction {
    Quit,
    Sort(SortKey),
}

/// The actions of the bytes one read of the terminal returned: `q` (or the
/// Ctrl-C byte) quits, `r`/`e`/`p` sort. From an escape byte on, the rest of
/// the read is a key sequence (arrows, F1 = ESC O P) and does nothing.
pub fn key_actions(bytes: &[u8]) -> Vec<KeyAction> {
    bytes
        .iter()
        .take_while(|&&b| b != 0x1b)
        .filter_map(|&b| match b {
            b'q' | b'Q' | 0x03 => Some(KeyAction::Quit),
            other => SortKey::from_key(other).map(KeyAction::Sort),
        })
        .collect()
}

/// Sorts busiest first by `key`; ties by requests/s, then pid, so that the
/// order is stable from one second to the next. Missing values sort last.
pub fn sort_rows(rows: &mut [Row], key: SortKey) {
    let missing_last = |v: Option<f64>| v.unwrap_or(f64::NEG_INFINITY);
    rows.sort_by(|a, b| {
        let primary = match key {
            SortKey::Requests => b.requests.total_cmp(&a.requests),
            SortKey::Errors => missing_last(b.error_pct).total_cmp(&missing_last(a.error_pct)),
            SortKey::P99 => missing_last(b.p99_ms).total_cmp(&missing_last(a.p99_ms)),
        };
        primary
            .then(b.requests.total_cmp(&a.requests))
            .then(a.pid.cmp(&b.pid))
    });
}

/// The table's columns, in display order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Column {
    Pid,
    Command,
    Requests,
    Class(usize),
    ErrorPct,
    P50,
    P99,
}

const ALL_COLUMNS: [Column; 10] = [
    Column::Pid,
    Column::Command,
    Column::Requests,
    Column::Class(0),
    Column::Class(1),
    Column::Class(2),
    Column::Class(3),
    Column::ErrorPct,
    Column::P50,
    Column::P99,
];

/// Dropped first to last when the terminal is too narrow; pid, command and
/// requests/s always stay.
const DROP_ORDER: [Column; 7] = [
    Column::Class(1),
    Column::Class(2),
    Column::Class(0),
    Column::P50,
    Column::Class(3),
    Column::ErrorPct,
    Column::P99,
];

impl Column {
    fn title(self) -> &'static str {
        match self {
            Column::Pid => "PID",
            Column::Command => "COMMAND",
            Column::Requests => "REQ/S",
            Column::Class(0) => "2XX/S",
            Column::Class(1) => "3XX/S",
            Column::Class(2) => "4XX/S",
            Column::Class(_) => "5XX/S",
            Column::ErrorPct => "ERR%",
            Column::P50 => "P50 MS",
            Column::P99 => "P99 MS",
        }
    }

    fn width(self) -> usize {
        match self {
            Column::Pid => 7,
            // The kernel's comm is at most 15 bytes.
            Column::Command => 15,
            Column::Requests => 9,
            _ => 8,
        }
    }

    fn sorted_by(self, key: SortKey) -> bool {
        matches!(
            (self, key),
            (Column::Requests, SortKey::Requests)
                | (Column::ErrorPct, SortKey::Errors)
                | (Column::P99, SortKey::P99)
        )
    }

    fn cell(self, row: &Row) -> String {
        match self {
            Column::Pid => row.pid.to_string(),
            Column::Command => printable(&row.comm),
            Column::Requests => rate(row.requests),
            Column::Class(i) => rate(row.by_class[i]),
            Column::ErrorPct => optional(row.error_pct),
            Column::P50 => optional(row.p50_ms),
            Column::P99 => optional(row.p99_ms),
        }
    }
}

/// A process name as the terminal may show it: printable ASCII only, so that
/// a process cannot send escape sequences to whoever runs `top`.
fn printable(comm: &str) -> String {
    comm.chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect()
}

fn rate(value: f64) -> String {
    format!("{value:.1}")
}

fn optional(value: Option<f64>) -> String {
    match value {
        Some(v) if v >= 1000.0 => format!("{v:.0}"),
        Some(v) => format!("{v:.1}"),
        None => "-".to_string(),
    }
}

fn line_width(columns: &[Column]) -> usize {
    columns.iter().map(|c| c.width()).sum::<usize>() + columns.len().saturating_sub(1)
}

/// The columns that fit in `width` characters: all of them when they fit,
/// else the first of DROP_ORDER left out, and so on.
pub fn visible_columns(width: usize) -> Vec<Column> {
    let mut columns = ALL_COLUMNS.to_vec();
    for dropped in DROP_ORDER {
        if line_width(&columns) <= width {
            break;
        }
        columns.retain(|&c| c != dropped);
    }
    columns
}

/// Cuts `line` to at most `width` characters: narrow terminals lose the end
/// of a line, never wrap it.
fn fit(mut line: String, width: usize) -> String {
    if let Some((i, _)) = line.char_indices().nth(width) {
        line.truncate(i);
    }
    line.trim_end().to_string()
}

fn format_line(columns: &[Column], cell: impl Fn(Column) -> String) -> String {
    let cells: Vec<String> = columns
        .iter()
        .map(|&c| {
            let text = cell(c);
            let w = c.width();
            let text: String = text.chars().take(w).collect();
            if matches!(c, Column::Command) {
                format!("{text:<w$}")
            } else {
                format!("{text:>w$}")
            }
        })
        .collect();
    cells.join(" ")
}

/// The table: a header line (the sort column marked with `*`) and one line
/// per row, each at most `width` characters. With `height`, at most that many
/// lines: rows that do not fit are summed up in a last `(N more)` line.
pub fn render_table(
    rows: &[Row],
    key: SortKey,
    width: usize,
    height: Option<usize>,
) -> Vec<String> {
    let columns = visible_columns(width);
    let header = format_line(&columns, |c| {
        let mark = if c.sorted_by(key) { "*" } else { "" };
        format!("{}{mark}", c.title())
    });
    let mut lines = vec![fit(header, width)];
    let room = height.map_or(usize::MAX, |h| h.saturating_sub(1));
    let shown = if rows.len() > room {
        room.saturating_sub(1)
    } else {
        rows.len()
    };
    for row in &rows[..shown] {
        lines.push(fit(format_line(&columns, |c| c.cell(row)), width));
    }
    if shown < rows.len() && room > 0 {
        lines.push(fit(format!("({} more)", rows.len() - shown), width));
    }
    if let Some(h) = height {
        lines.truncate(h);
    }
    lines
}

/// The live screen: a title line, the table, and a status line when there
/// is something to say (e.g. the daemon stopped answering).
pub fn render_screen(
    rows: &[Row],
    key: SortKey,
    width: usize,
    height: usize,
    status: Option<&str>,
) -> Vec<String> {
    let title = format!(
        "scope-http-statistics top: {} busy processes, by {} (r requests, e errors, p p99, q quit)",
        rows.len(),
        key.describe()
    );
    let mut lines = vec![fit(title, width)];
    let reserved = 1 + usize::from(status.is_some());
    lines.extend(render_table(
        rows,
        key,
        width,
        Some(height.saturating_sub(reserved)),
    ));
    if let Some(status) = status {
        lines.push(fit(status.to_string(), width));
    }
    lines.truncate(height);
    lines
}

// ---------------------------------------------------------------------------
// The daemon's socket
// ---------------------------------------------------------------------------

/// How long one request to the daemon may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// `GET path` on the daemon's socket; the body of a 200 answer.
fn get(socket: &Path, path: &str) -> Result<String, String> {
    let answer = daemon_client::get(socket, path, REQUEST_TIMEOUT)?;
    if !answer.is_ok() {
        return Err(format!(
            "{}: GET {path} answered {:?}",
            socket.display(),
            answer.status_line
        ));
    }
    Ok(answer.body)
}

/// A reading of the daemon: counters, quantiles and when they were read.
struct Reading {
    sample: MetricsSample,
    quantiles: HashMap<u32, (Option<f64>, Option<f64>)>,
    /// When this client got it: the interval's length when the daemon does
    /// not say when it took its snapshot.
    fetched: Instant,
}

fn read_daemon(socket: &Path) -> Result<Reading, String> {
    let metrics = get(socket, "/metrics")?;
    let report = get(socket, "/report")?;
    let report: Value = serde_json::from_str(&report)
        .map_err(|e| format!("{}: GET /report: not JSON: {e}", socket.display()))?;
    Ok(Reading {
        sample: parse_metrics(&metrics),
        quantiles: parse_report_quantiles(&report),
        fetched: Instant::now(),
    })
}

/// Whether `now` holds a newer snapshot than `before`.
fn is_newer(before: &Reading, now: &Reading) -> bool {
    match (before.sample.snapshot_time, now.sample.snapshot_time) {
        (Some(a), Some(b)) => b > a,
        _ => before.sample != now.sample,
    }
}

fn interval(before: &Reading, now: &Reading) -> f64 {
    match (before.sample.snapshot_time, now.sample.snapshot_time) {
        (Some(a), Some(b)) => b - a,
        _ => now.fetched.duration_since(before.fetched).as_secs_f64(),
    }
}

fn rows_between(before: &Reading, now: &Reading) -> Vec<Row> {
    rows(
        &before.sample,
        &now.sample,
        interval(before, now),
        &now.quantiles,
    )
}

/// How often to look for the daemon's next snapshot once one is late.
const RETRY: Duration = Duration::from_millis(200);
/// The daemon snapshots once a second; a reading this old means it stalled.
const SNAPSHOT_WAIT: Duration = Duration::from_secs(5);

/// Waits for the daemon's next snapshot after `first`.
fn next_reading(socket: &Path, first: &Reading) -> Result<Reading, String> {
    let deadline = Instant::now() + SNAPSHOT_WAIT;
    std::thread::sleep(Duration::from_secs(1));
    loop {
        let now = read_daemon(socket)?;
        if is_newer(first, &now) {
            return Ok(now);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{}: the daemon's counters did not change in {} s",
                socket.display(),
                SNAPSHOT_WAIT.as_secs()
            ));
        }
        std::thread::sleep(RETRY);
    }
}

// ---------------------------------------------------------------------------
// The terminal
// ---------------------------------------------------------------------------

fn is_terminal(fd: libc::c_int) -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(fd) == 1 }
}

/// The terminal's (columns, rows), when `fd` is one.
fn terminal_size(fd: libc::c_int) -> Option<(usize, usize)> {
    // SAFETY: winsize is plain data; TIOCGWINSZ fills it or fails.
    let mut size: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes one winsize through the pointer, which is
    // valid for the call.
    let ok = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut size) } == 0;
    (ok && size.ws_col > 0 && size.ws_row > 0)
        .then(|| (usize::from(size.ws_col), usize::from(size.ws_row)))
}

/// The terminal in "top mode": no echo, keys delivered one at a time, the
/// alternate screen, no cursor. Dropping it restores all of that.
struct Screen {
    saved: libc::termios,
}

const STDIN: libc::c_int = libc::STDIN_FILENO;

impl Screen {
    fn enter() -> Result<Screen, String> {
        // SAFETY: termios is plain data, filled by tcgetattr below.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: tcgetattr writes one termios through a valid pointer.
        if unsafe { libc::tcgetattr(STDIN, &mut saved) } != 0 {
            return Err(format!(
                "cannot read the terminal's settings: {}",
                io::Error::last_os_error()
            ));
        }
        let mut raw = saved;
        // Keys arrive at once and are not echoed; ISIG stays, so Ctrl-C
        // is a SIGINT, which the loop turns into a clean exit.
        raw.c_lflag &= !(libc::ICANON | libc::ECHO);
        raw.c_cc[libc::VMIN] = 0;
        raw.c_cc[libc::VTIME] = 0;
        // SAFETY: tcsetattr reads one termios through a valid pointer.
        if unsafe { libc::tcsetattr(STDIN, libc::TCSAFLUSH, &raw) } != 0 {
            return Err(format!(
                "cannot set the terminal's mode: {}",
                io::Error::last_os_error()
            ));
        }
        let screen = Screen { saved };
        // Alternate screen, cursor hidden.
        let mut out = io::stdout().lock();
        let _ = out.write_all(b"\x1b[?1049h\x1b[?25l");
        let _ = out.flush();
        Ok(screen)
    }

    fn draw(&self, lines: &[String]) {
        let mut frame = String::from("\x1b[H");
        for (i, line) in lines.iter().enumerate() {
            if i > 0 {
                frame.push_str("\r\n");
            }
            // Bold title and header.
            if i < 2 {
                frame.push_str("\x1b[1m");
                frame.push_str(line);
                frame.push_str("\x1b[0m");
            } else {
                frame.push_str(line);
            }
            frame.push_str("\x1b[K");
        }
        frame.push_str("\x1b[J");
        let mut out = io::stdout().lock();
        let _ = out.write_all(frame.as_bytes());
        let _ = out.flush();
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        let mut out = io::stdout().lock();
        let _ = out.write_all(b"\x1b[?25h\x1b[?1049l");
        let _ = out.flush();
        // SAFETY: tcsetattr reads the saved termios through a valid pointer.
        unsafe {
            libc::tcsetattr(STDIN, libc::TCSAFLUSH, &self.saved);
        }
    }
}

/// Waits up to `timeout` for keys; returns the bytes typed (empty on timeout
/// or when a signal interrupted the wait).
fn read_keys(timeout: Duration) -> Vec<u8> {
    let mut fd = libc::pollfd {
        fd: STDIN,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: one valid pollfd, for the duration of the call.
    let ready = unsafe { libc::poll(&mut fd, 1, ms) };
    if ready <= 0 || fd.revents & libc::POLLIN == 0 {
        return Vec::new();
    }
    let mut buf = [0u8; 64];
    // SAFETY: reads at most buf.len() bytes into buf.
    let n = unsafe { libc::read(STDIN, buf.as_mut_ptr().cast(), buf.len()) };
    if n <= 0 {
        return Vec::new();
    }
    buf[..n as usize].to_vec()
}

// ---------------------------------------------------------------------------
// Entry points
// ---------------------------------------------------------------------------

/// `top --once`: one table on stdout, rates over the daemon's next interval.
/// Fits the terminal's width when stdout is one; plain text in any case.
fn once(socket: &Path) -> Result<(), String> {
    let first = read_daemon(socket)?;
    let second = next_reading(socket, &first)?;
    let mut rows = rows_between(&first, &second);
    sort_rows(&mut rows, SortKey::Requests);
    let width = terminal_size(libc::STDOUT_FILENO).map_or(usize::MAX, |(w, _)| w);
    let mut out = io::stdout().lock();
    for line in render_table(&rows, SortKey::Requests, width, None) {
        writeln!(out, "{line}").map_err(|e| format!("cannot write the table: {e}"))?;
    }
    Ok(())
}

/// The live view, until `q`, Ctrl-C or SIGTERM.
fn live(socket: &Path) -> Result<(), String> {
    // Fail before touching the terminal when the daemon is not there.
    let mut previous = read_daemon(socket)?;
    if !is_terminal(STDIN) || !is_terminal(libc::STDOUT_FILENO) {
        return Err("top needs a terminal (use --once for scripts and pipes)".into());
    }
    let stop = Arc::new(AtomicBool::new(false));
    let resized = Arc::new(AtomicBool::new(false));
    for (signal, flag) in [
        (libc::SIGINT, &stop),
        (libc::SIGTERM, &stop),
        (libc::SIGHUP, &stop),
        (libc::SIGWINCH, &resized),
    ] {
        signal_hook::flag::register(signal, Arc::clone(flag))
            .map_err(|e| format!("cannot handle signal {signal}: {e}"))?;
    }
    let screen = Screen::enter()?;
    let mut key = SortKey::Requests;
    let mut rows: Vec<Row> = Vec::new();
    let mut status: Option<String> = Some("waiting for the daemon's next snapshot".into());
    let mut next_fetch = Instant::now() + Duration::from_secs(1);
    let mut dirty = true;
    while !stop.load(Ordering::Relaxed) {
        if resized.swap(false, Ordering::Relaxed) {
            dirty = true;
        }
        let now = Instant::now();
        if now >= next_fetch {
            match read_daemon(socket) {
                Ok(reading) if is_newer(&previous, &reading) => {
                    rows = rows_between(&previous, &reading);
                    previous = reading;
                    status = None;
                    dirty = true;
                    next_fetch = now + Duration::from_secs(1);
                }
                // Polled just before the daemon's snapshot: look again soon.
                Ok(_) => next_fetch = now + RETRY,
                Err(e) => {
                    status = Some(e);
                    dirty = true;
                    next_fetch = now + Duration::from_secs(1);
                }
            }
        }
        if dirty {
            sort_rows(&mut rows, key);
            let (width, height) = terminal_size(libc::STDOUT_FILENO).unwrap_or((80, 24));
            screen.draw(&render_screen(&rows, key, width, height, status.as_deref()));
            dirty = false;
        }
        let wait = next_fetch.saturating_duration_since(Instant::now());
        for action in key_actions(&read_keys(wait)) {
            match action {
                KeyAction::Quit => stop.store(true, Ordering::Relaxed),
                KeyAction::Sort(k) => {
                    key = k;
                    dirty = true;
                }
            }
        }
    }
    drop(screen);
    Ok(())
}

/// What `scope-http-statistics top` was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopOptions {
    pub socket: PathBuf,
    pub once: bool,
}

pub fn run(options: &TopOptions) -> Result<(), String> {
    if options.once {
        once(&options.socket)
    } else {
        live(&options.socket)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS: &str = r#"# HELP http_server_requests_total x
# TYPE http_server_requests_total counter
http_server_requests_total{pid="42",comm="nginx"} 100
http_server_requests_total{pid="7",comm="we\"ird\\ {x}"} 10
http_server_responses_total{pid="42",comm="nginx",code="200"} 90
http_server_responses_total{pid="42",comm="nginx",code="304"} 5
http_server_responses_total{pid="42",comm="nginx",code="404"} 3
http_server_responses_total{pid="42",comm="nginx",code="503"} 1
http_server_responses_total{pid="42",comm="nginx",code="101"} 1
http_server_responses_total{pid="42",comm="nginx",code="other"} 2
http_server_request_duration_seconds_bucket{pid="42",comm="nginx",le="0.005"} 7
scope_http_statistics_inflight_requests 4
scope_http_statistics_snapshot_timestamp_seconds 1700000000.25
"#;

    #[test]
    fn parses_counters_by_pid_and_class() {
        let s = parse_metrics(METRICS);
        assert_eq!(s.snapshot_time, Some(1_700_000_000.25));
        assert_eq!(
            s.processes[&42],
            ProcessTotals {
                comm: "nginx".into(),
                requests: 100,
                by_class: [90, 5, 3, 1],
                responses: 102,
            }
        );
        assert_eq!(s.processes[&7].comm, "we\"ird\\ {x}");
        assert_eq!(s.processes[&7].requests, 10);
        assert_eq!(s.processes.len(), 2);
    }

    #[test]
    fn garbage_lines_are_skipped() {
        let s = parse_metrics(
            "http_server_requests_total{pid=\"1\",comm=\"a\"} notanumber\n\
             http_server_requests_total{pid=\"x\",comm=\"a\"} 3\n\
             http_server_requests_total{pid=\"2\",comm=\"unterminated} 3\n\
             http_server_requests_total{pid=\"3\",comm=\"ok\"} 3\n",
        );
        assert_eq!(s.processes.keys().copied().collect::<Vec<_>>(), vec![3]);
        assert_eq!(s.snapshot_time, None);
    }

    #[test]
    fn quantiles_come_from_the_report_by_pid() {
        let report = serde_json::json!({"Process": {"nodes": {
            "host;42": {"metrics": {
                "http_request_duration_p50_ms": {"samples": [{"date": "d", "value": 20.5}]},
                "http_request_duration_p99_ms": {"samples": [{"date": "d", "value": 80.0}]},
            }},
            "host;7": {"metrics": {"http_requests_per_second": {"samples": [{"value": 1.0}]}}},
        }}});
        let q = parse_report_quantiles(&report);
        assert_eq!(q[&42], (Some(20.5), Some(80.0)));
        assert_eq!(q[&7], (None, None));
        assert!(parse_report_quantiles(&serde_json::json!({})).is_empty());
    }

    fn sample(time: f64, processes: &[(u32, &str, u64, [u64; 4], u64)]) -> MetricsSample {
        MetricsSample {
            snapshot_time: Some(time),
            processes: processes
                .iter()
                .map(|&(pid, comm, requests, by_class, responses)| {
                    (
                        pid,
                        ProcessTotals {
                            comm: comm.into(),
                            requests,
                            by_class,
                            responses,
                        },
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn rows_are_rates_over_the_interval() {
        let before = sample(
            10.0,
            &[
                (1, "a", 10, [10, 0, 0, 0], 10),
                (2, "idle", 5, [5, 0, 0, 0], 5),
            ],
        );
        let now = sample(
            12.0,
            &[
                (1, "a", 50, [30, 0, 2, 8], 40),
                (2, "idle", 5, [5, 0, 0, 0], 5),
                (3, "new", 4, [4, 0, 0, 0], 4),
            ],
        );
        let q = HashMap::from([(1, (Some(3.0), Some(9.0)))]);
        let r = rows(&before, &now, 2.0, &q);
        assert_eq!(r.len(), 2, "{r:?}");
        assert_eq!(
            r[0],
            Row {
                pid: 1,
                comm: "a".into(),
                requests: 20.0,
                by_class: [10.0, 0.0, 1.0, 4.0],
                error_pct: Some(100.0 * 4.0 / 15.0),
                p50_ms: Some(3.0),
                p99_ms: Some(9.0),
            }
        );
        assert_eq!(
            (r[1].pid, r[1].requests, r[1].error_pct),
            (3, 2.0, Some(0.0))
        );
    }

    #[test]
    fn reused_pid_counts_from_zero_and_bad_intervals_give_nothing() {
        let before = sample(1.0, &[(1, "old", 1000, [1000, 0, 0, 0], 1000)]);
        let now = sample(2.0, &[(1, "new", 3, [3, 0, 0, 0], 3)]);
        let r = rows(&before, &now, 1.0, &HashMap::new());
        assert_eq!((r[0].requests, r[0].by_class[0]), (3.0, 3.0));
        assert!(rows(&before, &now, 0.0, &HashMap::new()).is_empty());
        assert!(rows(&before, &now, f64::NAN, &HashMap::new()).is_empty());
    }

    fn row(pid: u32, requests: f64, error_pct: Option<f64>, p99_ms: Option<f64>) -> Row {
        Row {
            pid,
            comm: format!("proc{pid}"),
            requests,
            by_class: [requests, 0.0, 0.0, 0.0],
            error_pct,
            p50_ms: p99_ms.map(|p| p / 2.0),
            p99_ms,
        }
    }

    #[test]
    fn sorting_by_each_key() {
        let table = [
            (SortKey::Requests, vec![2, 3, 1, 4]),
            (SortKey::Errors, vec![1, 3, 2, 4]),
            (SortKey::P99, vec![3, 1, 2, 4]),
        ];
        for (key, expected) in table {
            let mut r = vec![
                row(1, 5.0, Some(50.0), Some(30.0)),
                row(2, 50.0, Some(0.0), Some(2.0)),
                row(3, 10.0, Some(10.0), Some(90.0)),
                row(4, 1.0, None, None),
            ];
            sort_rows(&mut r, key);
            let order: Vec<u32> = r.iter().map(|r| r.pid).collect();
            assert_eq!(order, expected, "{key:?}");
        }
    }

    #[test]
    fn keys_choose_the_sort() {
        assert_eq!(SortKey::from_key(b'r'), Some(SortKey::Requests));
        assert_eq!(SortKey::from_key(b'e'), Some(SortKey::Errors));
        assert_eq!(SortKey::from_key(b'P'), Some(SortKey::P99));
        assert_eq!(SortKey::from_key(b'x'), None);
    }

    #[test]
    fn keys_become_actions_and_escape_sequences_nothing() {
        use KeyAction::*;
        let table: [(&[u8], Vec<KeyAction>); 6] = [
            (b"q", vec![Quit]),
            (b"\x03", vec![Quit]),
            (b"ep", vec![Sort(SortKey::Errors), Sort(SortKey::P99)]),
            (b"x", vec![]),
            (b"\x1bOP", vec![]),
            (b"r\x1b[A", vec![Sort(SortKey::Requests)]),
        ];
        for (bytes, expected) in table {
            assert_eq!(key_actions(bytes), expected, "{bytes:?}");
        }
    }

    #[test]
    fn narrow_terminals_drop_columns_in_order() {
        let titles = |w| -> Vec<&str> { visible_columns(w).iter().map(|c| c.title()).collect() };
        let all = line_width(&ALL_COLUMNS);
        assert_eq!(titles(all).len(), 10);
        assert_eq!(titles(200).len(), 10);
        assert!(!titles(all - 1).contains(&"3XX/S"));
        assert_eq!(titles(all - 1).len(), 9);
        // Down to the three that always stay.
        assert_eq!(titles(10), vec!["PID", "COMMAND", "REQ/S"]);
        for w in 0..=all {
            let cols = visible_columns(w);
            let minimum = line_width(&cols[..3]);
            assert!(line_width(&cols) <= w.max(minimum), "width {w}");
        }
    }

    #[test]
    fn table_lines_never_exceed_the_width() {
        let rows = vec![row(123_456, 1234.5, Some(12.5), Some(1500.0)); 3];
        for width in [10, 33, 40, 60, 80, 120, 200] {
            let lines = render_table(&rows, SortKey::Requests, width, None);
            assert_eq!(lines.len(), 4);
            for l in &lines {
                assert!(l.chars().count() <= width, "{width}: {l:?}");
            }
        }
    }

    #[test]
    fn table_has_a_marked_header_and_aligned_cells() {
        let rows = vec![row(42, 12.0, Some(0.0), Some(25.0))];
        let lines = render_table(&rows, SortKey::P99, 200, None);
        assert_eq!(
            lines,
            vec![
                "    PID COMMAND             REQ/S    2XX/S    3XX/S    4XX/S    5XX/S     ERR%   P50 MS  P99 MS*",
                "     42 proc42               12.0     12.0      0.0      0.0      0.0      0.0     12.5     25.0",
            ]
        );
        let lines = render_table(&[row(1, 1.0, None, None)], SortKey::Requests, 200, None);
        assert!(lines[0].contains("REQ/S*"), "{}", lines[0]);
        assert!(lines[1].ends_with("   -        -        -"), "{}", lines[1]);
    }

    #[test]
    fn short_terminals_show_what_fits_and_say_how_many_more() {
        let rows: Vec<Row> = (1..=10).map(|p| row(p, p as f64, None, None)).collect();
        let lines = render_table(&rows, SortKey::Requests, 80, Some(5));
        assert_eq!(lines.len(), 5);
        assert_eq!(lines[4], "(7 more)");
        let screen = render_screen(&rows, SortKey::Requests, 80, 6, Some("daemon gone"));
        assert_eq!(screen.len(), 6);
        assert!(screen[0].starts_with("scope-http-statistics top: 10 busy"));
        assert_eq!(screen[5], "daemon gone");
        assert_eq!(
            render_screen(&rows, SortKey::Requests, 80, 1, None).len(),
            1
        );
        assert_eq!(render_table(&rows, SortKey::Requests, 80, Some(0)).len(), 0);
    }

    #[test]
    fn process_names_cannot_send_escape_sequences() {
        let mut r = row(1, 1.0, None, None);
        r.comm = "evil\x1b[2J\u{e9}".into();
        let lines = render_table(&[r], SortKey::Requests, 200, None);
        assert!(lines[1].contains("evil?[2J?"), "{}", lines[1]);
        assert!(!lines.concat().contains('\x1b'));
    }
}
