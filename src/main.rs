//! scope-http-statistics: parses the command line and hands over to the
//! daemon, the health check or `top`. Errors are reported once, here.

use std::process::ExitCode;

use scope_http_statistics::{cli, daemon, healthcheck, top};

fn main() -> ExitCode {
    let config = match cli::parse(std::env::args().skip(1)) {
        Ok(cli::Command::Run(config)) => config,
        Ok(cli::Command::HealthCheck(socket)) => {
            return match healthcheck::health_check(&socket) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("scope-http-statistics: unhealthy: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        Ok(cli::Command::Top(options)) => {
            return match top::run(&options) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("scope-http-statistics: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        Ok(cli::Command::Help) => {
            print!("{}", cli::USAGE);
            return ExitCode::SUCCESS;
        }
        Ok(cli::Command::Version) => {
            println!("scope-http-statistics {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("scope-http-statistics: {e}");
            return ExitCode::from(2);
        }
    };
    match daemon::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One plain line: the logger writes to stderr too, so not both.
            eprintln!("scope-http-statistics: {e}");
            ExitCode::FAILURE
        }
    }
}
