//! Test harness for Ferry: PKI fixtures, temp dirs, real processes.
#![forbid(unsafe_code)]
