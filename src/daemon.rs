//! The main thread: load the probe, serve the socket, and once a second turn
//! the kernel's counters into a fresh report and metrics page.

use std::env::{self, VarError};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use log::{debug, info, warn, LevelFilter};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

use crate::cli::Config;
use crate::metrics::DaemonFacts;
use crate::probe::Probe;
use crate::rates::{CounterSnapshot, ProbeDrops, RateTracker};
use crate::server::{self, Page, PageSlot, SocketServer, MAX_CONNECTIONS};
use crate::socket_path::{self, plugin_id};
use crate::tls::{TlsChoice, TlsHooks};
use crate::{fd_budget, metrics, metrics_listener, report};

const SNAPSHOT_INTERVAL: Duration = Duration::from_secs(1);
/// Fewest connections worth starting with (Scope needs one at a time).
const MIN_CONNECTIONS: usize = 16;
/// How often the loop looks at the signal flags while waiting.
const SIGNAL_POLL: Duration = Duration::from_millis(50);

/// `$SCOPE_HOSTNAME` (as Scope's own probe does), else the machine's name;
/// `--hostname` overrides both.
fn resolve_hostname(
    flag: Option<&str>,
    scope_hostname: Result<String, VarError>,
) -> Result<String, String> {
    if let Some(h) = flag {
        return Ok(h.to_string());
    }
    match scope_hostname {
        Ok(h) if !h.is_empty() => return Ok(h),
        // Falling back to the machine's name would give Scope node ids
        // that match none of its own.
        Err(VarError::NotUnicode(h)) => {
            return Err(format!(
                "$SCOPE_HOSTNAME {h:?} is not valid UTF-8 (use --hostname)"
            ))
        }
        _ => {}
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .map_err(|e| format!("cannot read the hostname: {e} (use --hostname)"))
}

fn init_logging(level: LevelFilter) {
    // Fails only when a logger is already set, which cannot happen here.
    let _ = simple_logger::SimpleLogger::new()
        .with_level(level)
        .with_utc_timestamps()
        .init();
}

/// Logs once when a drop counter starts growing, and once when it stops:
/// a full map would otherwise log on every snapshot.
#[derive(Default)]
struct DropEpisodes {
    last: ProbeDrops,
    growing: [bool; ProbeDrops::REASONS],
}

impl DropEpisodes {
    fn observe(&mut self, now: ProbeDrops, max_processes: u32) {
        for (i, ((reason, count), (_, before))) in
            now.by_reason().zip(self.last.by_reason()).enumerate()
        {
            let grew = count > before;
            // Expected, not a fault (e.g. nginx's sendfile bodies): not logged.
            if reason.hint.is_empty() {
                continue;
            }
            let label = reason.label;
            if grew && !self.growing[i] {
                let hint = reason
                    .hint
                    .replace("{max_processes}", &max_processes.to_string());
                warn!("probe drops ({label}) started, {count} so far: {hint}");
            } else if !grew && self.growing[i] {
                info!("probe drops ({label}) stopped at {count}");
            }
            self.growing[i] = grew;
        }
        self.last = now;
    }
}

/// The socket's pages, from one snapshot: `/report` for Scope, `/metrics`
/// for Prometheus.
fn render(
    plugin_id: &str,
    hostname: &str,
    snapshot: CounterSnapshot,
    tracker: &mut RateTracker,
    elapsed: f64,
    facts: &DaemonFacts,
) -> Vec<Page> {
    let now = SystemTime::now();
    let taken_at = now
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let metrics = Arc::from(metrics::render(&snapshot, taken_at, facts).into_bytes());
    let rates = tracker.update(snapshot, elapsed);
    let date = report::rfc3339(now);
    vec![
        Page {
            path: "/report",
            content_type: "application/json",
            body: Arc::from(report::render(plugin_id, hostname, &rates, &date).into_bytes()),
        },
        Page {
            path: "/metrics",
            content_type: metrics::CONTENT_TYPE,
            body: metrics,
        },
    ]
}

/// The TLS hooks unless `--tls off`; a kernel without uprobes leaves the
/// daemon counting plaintext only, and says so. Hooks what runs already.
fn start_tls(choice: TlsChoice, probe: &mut Probe) -> Option<TlsHooks> {
    if choice == TlsChoice::Off {
        info!("tls: off (--tls off): HTTPS through OpenSSL is not counted");
        return None;
    }
    match TlsHooks::start(probe.ebpf_mut()) {
        Ok(tls) => Some(tls),
        Err(e) => {
            warn!("tls: HTTPS through OpenSSL is not counted: {e}");
            None
        }
    }
}

pub fn run(config: Config) -> Result<(), String> {
    init_logging(config.log_level);
    // Before anything opens descriptors; see fd_budget.
    let (open_files, was) = fd_budget::raise_open_files_limit()?;
    if let Some(was) = was {
        debug!("raised the open-files limit from {was} to {open_files}");
    }
    let plugin_id = plugin_id(&config.socket)?;
    let hostname = resolve_hostname(config.hostname.as_deref(), env::var("SCOPE_HOSTNAME"))?;

    // Registered before anything is created, so that a signal during
    // start-up still ends in a clean exit.
    let stop = Arc::new(AtomicBool::new(false));
    let hup = Arc::new(AtomicBool::new(false));
    for (signal, flag) in [(SIGTERM, &stop), (SIGINT, &stop), (SIGHUP, &hup)] {
        signal_hook::flag::register(signal, Arc::clone(flag))
            .map_err(|e| format!("cannot install a handler for signal {signal}: {e}"))?;
    }

    // Refuse an unusable socket path before the seconds the verifier takes,
    // and change nothing on disk until the probe is in.
    socket_path::check(&config.socket)?;
    let metrics_listener = config
        .metrics_address
        .map(metrics_listener::bind)
        .transpose()?;
    let mut probe = Probe::load(config.max_processes, config.hooks)?;
    info!(
        "probe attached on the {} path ({}), up to {} processes",
        probe.hook_path.name(),
        probe.hook_reason,
        config.max_processes
    );
    let mut tls = start_tls(config.tls, &mut probe);
    let mut facts = DaemonFacts {
        tracked_limit: config.max_processes,
        hook_path: probe.hook_path.name(),
        hook_reason: probe.hook_reason.clone(),
        tls_libraries: tls.as_ref().map_or(0, TlsHooks::hooked_files),
    };
    let mut tracker = RateTracker::default();
    let mut last = Instant::now();
    let first = render(
        &plugin_id,
        &hostname,
        CounterSnapshot::default(),
        &mut tracker,
        0.0,
        &facts,
    );
    let tcp_slot: PageSlot = Arc::new(Mutex::new(metrics_listener::metrics_only(&first)));
    let slot: PageSlot = Arc::new(Mutex::new(first));
    // Counted once the probe holds its maps, programs and links, with room
    // for the TLS hooks of files found later.
    let max_connections = fd_budget::connection_cap(
        open_files,
        fd_budget::open_descriptors()? + tls.as_ref().map_or(0, TlsHooks::descriptors_to_come),
        MAX_CONNECTIONS,
        MIN_CONNECTIONS,
    )?;
    debug!("serving at most {max_connections} connections at once");
    // The TCP listener gets its own share, so that a flood of scrapers
    // cannot take the connections Scope's polls need.
    let (socket_connections, tcp_connections) = if metrics_listener.is_some() {
        (max_connections - max_connections / 2, max_connections / 2)
    } else {
        (max_connections, 0)
    };
    let tcp_server = metrics_listener
        .map(|l| metrics_listener::start(l, Arc::clone(&tcp_slot), tcp_connections))
        .transpose()?;
    let server = SocketServer::start(&config.socket, Arc::clone(&slot), socket_connections)?;
    info!("serving plugin {plugin_id:?} for host {hostname:?}");

    let mut episodes = DropEpisodes::default();
    let mut next = last + SNAPSHOT_INTERVAL;
    while !stop.load(Ordering::Relaxed) {
        if hup.swap(false, Ordering::Relaxed) {
            info!("SIGHUP: nothing to reload, carrying on");
        }
        // Between snapshots too: a server that just started is hooked as
        // soon as the inspector has found its OpenSSL.
        if let Some(tls) = tls.as_mut() {
            tls.poll(probe.ebpf_mut());
            facts.tls_libraries = tls.hooked_files();
        }
        let now = Instant::now();
        if now < next {
            std::thread::sleep((next - now).min(SIGNAL_POLL));
            continue;
        }
        let snapshot = probe.snapshot();
        let elapsed = now.duration_since(last).as_secs_f64();
        last = now;
        // Keep to the one-second grid; after a stall, start afresh from now.
        next = if now > next + SNAPSHOT_INTERVAL {
            now + SNAPSHOT_INTERVAL
        } else {
            next + SNAPSHOT_INTERVAL
        };
        episodes.observe(snapshot.drops, config.max_processes);
        let rendered = render(
            &plugin_id,
            &hostname,
            snapshot,
            &mut tracker,
            elapsed,
            &facts,
        );
        if tcp_server.is_some() {
            server::publish(&tcp_slot, metrics_listener::metrics_only(&rendered));
        }
        server::publish(&slot, rendered);
    }
    info!("stopping: removing {}", config.socket.display());
    drop(server);
    drop(tcp_server);
    if let Some(tls) = tls {
        tls.detach(probe.ebpf_mut());
    }
    drop(probe);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostname_flag_wins() {
        assert_eq!(
            resolve_hostname(Some("h1"), Ok("h2".to_string())).unwrap(),
            "h1"
        );
    }

    #[test]
    fn scope_hostname_comes_next_and_must_be_utf8() {
        use std::os::unix::ffi::OsStringExt;
        assert_eq!(resolve_hostname(None, Ok("h2".to_string())).unwrap(), "h2");
        let bad = std::ffi::OsString::from_vec(b"h\xff".to_vec());
        let e = resolve_hostname(None, Err(VarError::NotUnicode(bad))).unwrap_err();
        assert!(
            e.contains("$SCOPE_HOSTNAME") && e.contains("--hostname"),
            "{e}"
        );
    }

    #[test]
    fn drop_episodes_track_growth() {
        let mut e = DropEpisodes::default();
        let full = |n| {
            let mut drops = ProbeDrops::default();
            drops.0[crate::probe::abi::DROP_PROCESS_MAP_FULL] = n;
            drops
        };
        e.observe(full(5), 10);
        assert!(e.growing[0]);
        e.observe(full(9), 10);
        assert!(e.growing[0]);
        e.observe(full(9), 10);
        assert!(!e.growing[0]);
    }
}
