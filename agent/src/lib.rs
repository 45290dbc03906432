//! The Ferry station agent library.
#![forbid(unsafe_code)]
pub mod sender;
