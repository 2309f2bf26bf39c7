//! Test harness shared by the integration tests: starts the daemon on a
//! private Unix socket, starts real HTTP servers (python, nginx, node) on free
//! loopback ports, talks HTTP to both, and parses `/metrics` and `/report`.
//!
//! The probe counts host-wide, so every assertion is about the pid of a server
//! the test itself started; tests can therefore run in parallel, each with its
//! own daemon and servers. Everything a test starts is owned by a guard that
//! stops it on drop, also when the test panics.

// Each test file compiles this module on its own and uses only part of it.
#![allow(dead_code)]

mod client;
mod daemon;
mod process;
mod prom;
mod servers;
mod unix_client;

// Test files `use common::*`; each uses only some of these modules.
#[allow(unused_imports)]
pub use {client::*, daemon::*, process::*, prom::*, servers::*, unix_client::*};
