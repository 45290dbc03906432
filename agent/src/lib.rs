//! The Ferry station agent library.
#![forbid(unsafe_code)]

pub mod config;
pub mod due_list;
pub mod halt_flag;
pub mod ledger;
pub mod sender;
