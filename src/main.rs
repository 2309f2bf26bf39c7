//! scope-http-statistics: parses the command line and hands over to the
//! daemon, the health check or `top`. Errors are reported once, here.

use std::process::ExitCode;

use scope_http_statistics::{cli, daemon, healthcheck, top};

fn main() -> ExitCode {
    let command = match cli::parse_os(std::env::args_os().skip(1)) {
        Ok(command) => command,
        Err(e) => {
            eprintln!("scope-http-statistics: {e}");
            return ExitCode::from(2);
        }
    };
    let outcome = match command {
        cli::Command::Run(config) => daemon::run(config),
        cli::Command::HealthCheck(socket) => {
            healthcheck::health_check(&socket).map_err(|e| format!("unhealthy: {e}"))
        }
        cli::Command::Top(options) => top::run(&options),
        cli::Command::Help => {
            print!("{}", cli::USAGE);
            Ok(())
        }
        cli::Command::Version => {
            println!("scope-http-statistics {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One plain line: the daemon's logger writes to stderr too, so
            // errors are printed here and not also logged.
            eprintln!("scope-http-statistics: {e}");
            ExitCode::FAILURE
        }
    }
}
