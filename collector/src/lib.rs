//! The Ferry collector library.
#![forbid(unsafe_code)]

pub mod pki_cli;
