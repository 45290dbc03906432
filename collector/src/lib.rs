//! The Ferry collector library.
#![forbid(unsafe_code)]
