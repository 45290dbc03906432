//! Ferry common: wire protocol, codec, station identities, TLS, PKI and the
//! ZMQ-over-TLS bridge that agent and collector share.
#![forbid(unsafe_code)]

pub mod backoff;
pub mod bridge;
pub mod clock;
pub mod codec;
pub mod http;
pub mod json;
pub mod link;
pub mod logging;
pub mod malloc;
pub mod metrics;
pub mod name;
pub mod pki;
pub mod protocol;
pub mod readiness;
pub mod revocation;
pub mod station;
pub mod tls;
pub mod zmtp;
