//! scope-http-statistics as a library: everything but the wiring in
//! `main.rs`, so that the socket worker, the HTTP parsing and the rendering
//! are tested without root and without the probe.
//!
//! Errors are `String`s on purpose: every error is reported once, as one
//! line, by `main`, and nothing matches on a kind of error to recover from
//! it; so each layer adds its context to the message (`format!("cannot X:
//! {e}")`) rather than wrapping an error type no caller would look into.
//! Where a library error carries a source chain (aya's), it is flattened
//! into the message where it arises (`probe::describe`).

pub mod cli;
pub mod daemon;
pub mod daemon_client;
pub mod fd_budget;
pub mod healthcheck;
pub mod http;
pub mod latency;
pub mod metrics;
pub mod metrics_listener;
pub mod probe;
pub mod rates;
pub mod report;
pub mod server;
pub mod socket_path;
pub mod tls;
pub mod top;
