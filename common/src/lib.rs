//! Ferry common: wire protocol, codec, station identities, TLS, PKI and the
//! ZMQ-over-TLS bridge that agent and collector share.
#![forbid(unsafe_code)]

pub mod pki;
pub mod station;
