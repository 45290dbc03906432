//! The Ferry station agent library.
#![forbid(unsafe_code)]

pub mod config;
pub mod daemon;
pub mod due_list;
pub mod halt_flag;
pub mod ledger;
pub mod metrics;
pub mod recheck;
pub mod sandbox;
pub mod sender;
pub mod state_disk;
pub mod status;
pub mod takeover;
pub mod watch;
