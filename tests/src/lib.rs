//! Test harness for Ferry: a throw-away PKI, real collector and agent
//! processes, MariaDB servers, a minimal receiving collector, a
//! fault-injecting TCP proxy and a seeded random generator, all on loopback
//! in temp dirs.
#![forbid(unsafe_code)]

pub mod agent;
pub mod collector;
pub mod http;
pub mod mariadb;
pub mod pki;
pub mod process;
pub mod prometheus;
pub mod proxy;
pub mod raw;
pub mod receiver;
pub mod rng;
pub mod station;
pub mod workload;

/// Sends `tracing` output to the test's captured output (RUST_LOG filters;
/// warnings by default). Safe to call from every test.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}
