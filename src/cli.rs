//! Command-line parsing: a pure function from arguments to what to do.

use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use log::LevelFilter;

pub use crate::tls::TlsChoice;

pub const DEFAULT_SOCKET: &str = "/var/run/scope/plugins/http-statistics/http-statistics.sock";

/// The port `--metrics-address` listens on when it names none. Prometheus's
/// list of default exporter ports (its wiki, "Default port allocations") had
/// 9100-9999 fully taken by 2023, new exporters going on from 10000; the
/// live list could not be read where this was written, so this is a port
/// above the ones known taken then, to be registered there before a release.
pub const DEFAULT_METRICS_PORT: u16 = 10230;

/// Default bound of the kernel's per-process table (process_counts).
pub const DEFAULT_MAX_PROCESSES: u32 = 16384;

pub const USAGE: &str = "\
scope-http-statistics: per-process HTTP request and response-code rates, measured
in the kernel with eBPF, served as a Weave Scope plugin on a Unix socket.

Usage: scope-http-statistics [OPTIONS]
       scope-http-statistics top [--socket PATH] [--once]

Options:
  --socket PATH          Unix socket to serve GET /report and GET /metrics on
                         [default: /var/run/scope/plugins/http-statistics/http-statistics.sock]
                         The plugin id Scope shows is the file name without extension.
  --hostname NAME        Host part of Scope node ids (<host>;<pid>)
                         [default: $SCOPE_HOSTNAME, else the machine's hostname]
  --max-processes N      Processes the kernel table holds at once [default: 16384]
  --hooks PATH           auto, socket or syscalls: where the probe hooks in [default: auto]
                         socket: sock_recv_length/sock_send_length (Linux 6.3+), costs
                         nothing to I/O that is not on a socket; syscalls: syscall
                         tracepoints, for older kernels. auto takes socket when it can.
  --metrics-address HOST[:PORT]
                         Also serve GET /metrics (only) over TCP, for Prometheus: an IP
                         address and port, e.g. 0.0.0.0:10230, [::]:10230, :10230 (all
                         IPv4 addresses) [default: off; port 10230, unregistered on
                         Prometheus's default port list, where 9100-9999 is taken]
  --tls MODE             auto or off: count HTTPS served through OpenSSL (uprobes on
                         libssl and on executables that export it, like node) [default: auto]
  --log-level LEVEL      error, warn, info, debug or trace [default: info]
  -h, --help             Print this help and exit
  --healthcheck          Ask the daemon on --socket for its report and exit 0 when it
                         answers 200 within 500 ms, else 1 (for container probes)
  -V, --version          Print the version and exit

top: a live table of the busiest processes from the daemon on --socket (keys: r, e, p
sort by requests/s, error %, p99; q quits); --once prints one table and exits.

Needs root (or CAP_BPF and CAP_PERFMON). SIGINT/SIGTERM remove the socket and exit 0.
";

pub use crate::probe::HookChoice;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub socket: PathBuf,
    pub hostname: Option<String>,
    pub max_processes: u32,
    pub hooks: HookChoice,
    pub tls: TlsChoice,
    pub log_level: LevelFilter,
    /// Where to serve /metrics over TCP as well, if anywhere.
    pub metrics_address: Option<SocketAddr>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    Run(Config),
    /// Check that the daemon serving on the socket answers.
    HealthCheck(PathBuf),
    /// Show the daemon's busiest processes (`top`).
    Top(crate::top::TopOptions),
    Help,
    Version,
}

/// [`parse`] for arguments as the OS passes them (`std::env::args_os`): one
/// that is not UTF-8 is an error, where `std::env::args` would panic, and
/// is not made "lossy" either (that would be another socket path).
pub fn parse_os<I>(args: I) -> Result<Command, String>
where
    I: IntoIterator<Item = OsString>,
{
    let args = args
        .into_iter()
        .map(|a| {
            a.into_string()
                .map_err(|a| format!("argument {a:?} is not valid UTF-8"))
        })
        .collect::<Result<Vec<String>, String>>()?;
    parse(args)
}

/// Parses the arguments after the program name. Accepts `--opt value` and
/// `--opt=value`.
pub fn parse<I, S>(args: I) -> Result<Command, String>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    let mut config = Config {
        socket: PathBuf::from(DEFAULT_SOCKET),
        hostname: None,
        max_processes: DEFAULT_MAX_PROCESSES,
        hooks: HookChoice::Auto,
        tls: TlsChoice::Auto,
        log_level: LevelFilter::Info,
        metrics_address: None,
    };
    let mut health_check = false;
    let mut args = args.into_iter().map(Into::into).peekable();
    let top = args.next_if(|a| a == "top").is_some();
    let mut once = false;
    while let Some(arg) = args.next() {
        let (name, inline_value) = match arg.split_once('=') {
            Some((name, value)) if name.starts_with("--") => {
                (name.to_string(), Some(value.to_string()))
            }
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| -> Result<String, String> {
            match inline_value.clone().or_else(|| args.next()) {
                Some(v) if !v.is_empty() => Ok(v),
                _ => Err(format!("{name} needs a value")),
            }
        };
        match name.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "-V" | "--version" => return Ok(Command::Version),
            "--healthcheck" if !top => health_check = true,
            "--once" if top => once = true,
            "--hostname" | "--max-processes" | "--hooks" | "--log-level" | "--metrics-address"
                if top =>
            {
                return Err(format!("top takes --socket and --once, not {name}"))
            }
            "--socket" => config.socket = PathBuf::from(value("--socket")?),
            "--hostname" => config.hostname = Some(value("--hostname")?),
            "--max-processes" => {
                let v = value("--max-processes")?;
                config.max_processes = match v.parse::<u32>() {
                    Ok(n) if (1..=1 << 22).contains(&n) => n,
                    _ => {
                        return Err(format!(
                            "--max-processes: {v:?} is not a number from 1 to 4194304"
                        ))
                    }
                };
            }
            "--hooks" => {
                let v = value("--hooks")?;
                config.hooks = match v.as_str() {
                    "auto" => HookChoice::Auto,
                    "socket" => HookChoice::Socket,
                    "syscalls" => HookChoice::Syscalls,
                    _ => {
                        return Err(format!(
                            "--hooks: {v:?} is not one of auto, socket, syscalls"
                        ))
                    }
                };
            }
            "--metrics-address" => {
                config.metrics_address = Some(metrics_address(&value("--metrics-address")?)?)
            }
            "--tls" => {
                let v = value("--tls")?;
                config.tls = match v.as_str() {
                    "auto" => TlsChoice::Auto,
                    "off" => TlsChoice::Off,
                    _ => return Err(format!("--tls: {v:?} is not one of auto, off")),
                };
            }
            "--log-level" => {
                let v = value("--log-level")?;
                config.log_level = match v.to_ascii_lowercase().as_str() {
                    "error" => LevelFilter::Error,
                    "warn" | "warning" => LevelFilter::Warn,
                    "info" => LevelFilter::Info,
                    "debug" => LevelFilter::Debug,
                    "trace" => LevelFilter::Trace,
                    _ => {
                        return Err(format!(
                            "--log-level: {v:?} is not one of error, warn, info, debug, trace"
                        ))
                    }
                };
            }
            _ => return Err(format!("unknown argument {arg:?} (see --help)")),
        }
    }
    if top {
        let socket = config.socket;
        return Ok(Command::Top(crate::top::TopOptions { socket, once }));
    }
    if health_check {
        return Ok(Command::HealthCheck(config.socket));
    }
    Ok(Command::Run(config))
}

/// `HOST[:PORT]` with HOST an IP address (IPv6 in brackets when a port
/// follows), or `:PORT` for every IPv4 address; the port defaults to
/// [`DEFAULT_METRICS_PORT`]. Names are refused: what a name resolves to can
/// change under a running daemon.
fn metrics_address(v: &str) -> Result<SocketAddr, String> {
    let bad = || {
        format!(
            "--metrics-address: {v:?} is not an IP address with an optional port \
             (e.g. 127.0.0.1:{DEFAULT_METRICS_PORT}, [::]:{DEFAULT_METRICS_PORT}, :{DEFAULT_METRICS_PORT})"
        )
    };
    let address = if let Ok(ip) = v
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    {
        SocketAddr::new(ip, DEFAULT_METRICS_PORT)
    } else if let Some(port) = v.strip_prefix(':') {
        SocketAddr::new(
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            port.parse().map_err(|_| bad())?,
        )
    } else {
        v.parse::<SocketAddr>().map_err(|_| bad())?
    };
    if address.port() == 0 {
        return Err(format!(
            "--metrics-address: {v:?}: port 0 would be a different port each start"
        ));
    }
    Ok(address)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Config {
        match parse(args.iter().copied()) {
            Ok(Command::Run(c)) => c,
            other => panic!("expected a run config, got {other:?}"),
        }
    }

    #[test]
    fn defaults() {
        let c = run(&[]);
        assert_eq!(c.socket, PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(c.hostname, None);
        assert_eq!(c.max_processes, DEFAULT_MAX_PROCESSES);
        assert_eq!(c.hooks, HookChoice::Auto);
        assert_eq!(c.tls, TlsChoice::Auto);
        assert_eq!(c.log_level, LevelFilter::Info);
        assert_eq!(c.metrics_address, None);
    }

    #[test]
    fn metrics_addresses() {
        let table: [(&str, &str); 7] = [
            ("127.0.0.1:9999", "127.0.0.1:9999"),
            ("0.0.0.0", "0.0.0.0:10230"),
            (":8080", "0.0.0.0:8080"),
            ("[::1]:8080", "[::1]:8080"),
            ("::", "[::]:10230"),
            ("[::]", "[::]:10230"),
            ("10.1.2.3:1", "10.1.2.3:1"),
        ];
        for (arg, expected) in table {
            let c = run(&["--metrics-address", arg]);
            assert_eq!(c.metrics_address, Some(expected.parse().unwrap()), "{arg}");
        }
        for bad in [
            "localhost:80",
            "1.2.3.4:99999",
            ":x",
            "1.2.3.4:",
            "[::1]80",
            "1.2.3.4:0",
        ] {
            assert!(
                parse(["--metrics-address", bad])
                    .unwrap_err()
                    .contains("--metrics-address"),
                "{bad}"
            );
        }
        assert!(parse(["--metrics-address"])
            .unwrap_err()
            .contains("needs a value"));
    }

    #[test]
    fn options_with_space_or_equals() {
        let c = run(&[
            "--socket",
            "/tmp/a/x.sock",
            "--hostname=h1",
            "--log-level",
            "DEBUG",
            "--max-processes=10",
        ]);
        assert_eq!(c.socket, PathBuf::from("/tmp/a/x.sock"));
        assert_eq!(c.hostname.as_deref(), Some("h1"));
        assert_eq!(c.log_level, LevelFilter::Debug);
        assert_eq!(c.max_processes, 10);
    }

    #[test]
    fn every_log_level_is_accepted_and_in_the_help() {
        let levels = [
            ("error", LevelFilter::Error),
            ("warn", LevelFilter::Warn),
            ("info", LevelFilter::Info),
            ("debug", LevelFilter::Debug),
            ("trace", LevelFilter::Trace),
        ];
        for (name, level) in levels {
            assert_eq!(run(&["--log-level", name]).log_level, level, "{name}");
            let help = USAGE.lines().find(|l| l.contains("--log-level")).unwrap();
            assert!(help.contains(name), "--help does not name {name}: {help}");
        }
    }

    #[test]
    fn hook_choices() {
        assert_eq!(run(&["--hooks", "socket"]).hooks, HookChoice::Socket);
        assert_eq!(run(&["--hooks=syscalls"]).hooks, HookChoice::Syscalls);
        assert!(parse(["--hooks", "kprobes"])
            .unwrap_err()
            .contains("--hooks"));
    }

    #[test]
    fn tls_choices() {
        assert_eq!(run(&["--tls", "off"]).tls, TlsChoice::Off);
        assert_eq!(run(&["--tls=auto"]).tls, TlsChoice::Auto);
        assert!(parse(["--tls", "on"]).unwrap_err().contains("--tls"));
    }

    #[test]
    fn help_and_version() {
        assert_eq!(parse(["--help"]), Ok(Command::Help));
        assert_eq!(parse(["-V"]), Ok(Command::Version));
    }

    #[test]
    fn healthcheck_uses_the_socket_option() {
        assert_eq!(
            parse(["--healthcheck", "--socket", "/tmp/s.sock"]),
            Ok(Command::HealthCheck(PathBuf::from("/tmp/s.sock")))
        );
        assert_eq!(
            parse(["--healthcheck"]),
            Ok(Command::HealthCheck(PathBuf::from(DEFAULT_SOCKET)))
        );
    }

    #[test]
    fn top_takes_the_socket_and_once() {
        use crate::top::TopOptions;
        let top = |socket: &str, once| {
            Ok(Command::Top(TopOptions {
                socket: PathBuf::from(socket),
                once,
            }))
        };
        assert_eq!(parse(["top"]), top(DEFAULT_SOCKET, false));
        assert_eq!(
            parse(["top", "--once", "--socket=/tmp/s.sock"]),
            top("/tmp/s.sock", true)
        );
        assert!(parse(["top", "--hooks", "socket"])
            .unwrap_err()
            .contains("top takes --socket and --once"));
        assert!(parse(["top", "--healthcheck"])
            .unwrap_err()
            .contains("unknown argument"));
        // Only as the first argument, and --once only with it.
        assert!(parse(["--socket", "/tmp/s", "top"]).is_err());
        assert!(parse(["--once"]).is_err());
    }

    #[test]
    fn bad_input_is_an_error() {
        assert!(parse(["--socket"]).unwrap_err().contains("needs a value"));
        assert_eq!(
            parse(["--log-level", "loud"]),
            Err(r#"--log-level: "loud" is not one of error, warn, info, debug, trace"#.to_string())
        );
        assert!(parse(["--max-processes", "0"])
            .unwrap_err()
            .contains("--max-processes"));
        assert!(parse(["--max-processes", "-5"])
            .unwrap_err()
            .contains("--max-processes"));
        assert!(parse(["--bogus"]).unwrap_err().contains("unknown argument"));
        assert!(parse(["--hostname="])
            .unwrap_err()
            .contains("needs a value"));
    }

    #[test]
    fn an_argument_that_is_not_utf8_is_an_error() {
        use std::os::unix::ffi::OsStringExt;
        let socket = OsString::from_vec(b"/tmp/\xff.sock".to_vec());
        let e = parse_os([OsString::from("--socket"), socket]).unwrap_err();
        assert!(e.contains("is not valid UTF-8"), "{e}");
        assert_eq!(
            parse_os([OsString::from("--socket=/tmp/s.sock")]),
            parse(["--socket=/tmp/s.sock"])
        );
    }
}
