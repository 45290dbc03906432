//! The messages agent and collector exchange, one per ZMQ message.
//!
//! A session is: `Hello` → `Welcome` (version negotiated), then any number of
//! batches: `Offer` → `OfferReply` (what the collector needs of each file),
//! `Chunk`s from the offset it asked for, one `Commit` per file, and an `Ack`
//! with a result per file. `Ping`/`Pong` keep the session alive (ZMTP
//! heartbeats must stay off, see ARCHITECTURE.md), `StatusQuery` asks for the
//! station's catalog summary, and `Error` carries a code and a human message.
//!
//! Every type here crosses a process boundary, so every type derives serde;
//! the byte encoding lives in [`crate::codec`] alone.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::station::StationId;

/// The protocol version this build speaks natively (and the newest it knows).
///
/// Version 2 carries paths as bytes (names need not be UTF-8). Version 1
/// carried them as UTF-8 text, which an agent could only fill by replacing
/// what was not UTF-8, so two names could arrive as one; it is no longer
/// spoken (see ARCHITECTURE.md, "Names are bytes").
pub const PROTOCOL_VERSION: u16 = 2;
/// The oldest protocol version this build still speaks.
pub const MIN_PROTOCOL_VERSION: u16 = 2;

/// A SHA-256 digest.
pub type Sha256 = [u8; 32];

/// One protocol message, as carried in one frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    Hello(Hello),
    Welcome(Welcome),
    Offer(Offer),
    OfferReply(OfferReply),
    Chunk(Chunk),
    Credit(Credit),
    Commit(Commit),
    Ack(Ack),
    StatusQuery(StatusQuery),
    StatusReply(StatusReply),
    Ping(Ping),
    Pong(Ping),
    Error(ErrorFrame),
}

/// First message of a session, from the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The station the agent believes it is; the collector checks it against
    /// the certificate and refuses a mismatch, it never trusts it.
    pub station: StationId,
    /// Oldest protocol version the agent speaks.
    pub min_version: u16,
    /// Newest protocol version the agent speaks.
    pub max_version: u16,
    /// Agent software version, for the operator's eyes only.
    pub software: String,
    /// Random per-session number; lets the collector tell a reconnect from a
    /// second concurrent session of the same station.
    pub session: u64,
}

/// The collector's answer to `Hello`: the session is open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// The protocol version both sides use from now on.
    pub version: u16,
    /// Collector software version, for the operator's eyes only.
    pub software: String,
    /// Largest chunk payload the collector accepts, in bytes.
    pub max_chunk: u32,
    /// Bytes of chunk payload the agent may have unacknowledged in flight.
    pub window: u64,
    /// How often the agent should ping an idle session, in milliseconds.
    pub heartbeat_ms: u32,
}

/// An agent's offer of a batch of files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offer {
    /// Agent-chosen batch number, unique within the session.
    pub batch: u64,
    pub files: Vec<FileOffer>,
}

/// One file in an offer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileOffer {
    /// Index of the file within its batch; chunks and results refer to it.
    pub id: u32,
    /// Name of the configured root the file lives under.
    pub root: String,
    /// Path relative to the root, `/`-separated: the exact bytes of the
    /// station's file names (not necessarily UTF-8).
    #[serde(with = "serde_bytes")]
    pub path: Vec<u8>,
    pub size: u64,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    /// Content hash, when the agent already knows it (lets the collector
    /// answer "already have it" without a byte sent).
    pub sha256: Option<Sha256>,
}

/// The collector's answer to an offer, one entry per offered file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OfferReply {
    pub batch: u64,
    pub files: Vec<FileNeed>,
}

/// What the collector needs of one offered file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileNeed {
    pub id: u32,
    pub need: Need,
}

/// What the collector needs of one offered file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Need {
    /// Send the content from this byte offset (0, or what is already staged).
    From { offset: u64 },
    /// The collector already holds this content at this path; nothing to send.
    AlreadyHave,
    /// The file is refused; see the code for whether a retry can help.
    Refused(ErrorFrame),
}

/// A piece of a file's content.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunk {
    pub batch: u64,
    pub file: u32,
    /// Byte offset of `data` within the file.
    pub offset: u64,
    #[serde(with = "chunk_data")]
    pub data: Bytes,
}

/// A chunk's bytes: written as serde bytes. Read by borrowing them from the
/// frame: [`crate::codec::decode_shared`] then hands out a slice of the
/// received frame, with no copy; any other decode copies them once, to an
/// aligned address ([`crate::codec::CHUNK_ALIGN`]). (Asking
/// for an owned buffer instead makes bincode zero a new one and then copy
/// into it: a `memset` of every byte received, 6% of the collector's CPU on
/// a 1 GiB file.)
mod chunk_data {
    use bytes::Bytes;
    use serde::de::{Deserializer, Error, Visitor};
    use serde::ser::Serializer;

    pub fn serialize<S: Serializer>(data: &Bytes, serializer: S) -> Result<S::Ok, S::Error> {
        serde_bytes::serialize(&data[..], serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Bytes, D::Error> {
        deserializer.deserialize_bytes(ChunkBytes)
    }

    struct ChunkBytes;

    impl<'de> Visitor<'de> for ChunkBytes {
        type Value = Bytes;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("chunk bytes")
        }

        fn visit_borrowed_bytes<E: Error>(self, v: &'de [u8]) -> Result<Bytes, E> {
            Ok(crate::codec::chunk_bytes(v))
        }

        fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Bytes, E> {
            Ok(crate::codec::aligned_copy(v))
        }

        fn visit_byte_buf<E: Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
            Ok(Bytes::from(v))
        }
    }
}

impl std::fmt::Debug for Chunk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chunk")
            .field("batch", &self.batch)
            .field("file", &self.file)
            .field("offset", &self.offset)
            .field("len", &self.data.len())
            .finish()
    }
}

/// Flow control: the collector has consumed (written to staging) this many
/// bytes of chunk payload in the session so far. The agent keeps at most
/// `Welcome::window` bytes sent beyond the latest `consumed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credit {
    pub consumed: u64,
}

/// The agent has sent all of a file; here is what it read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Commit {
    pub batch: u64,
    pub file: u32,
    pub size: u64,
    pub sha256: Sha256,
}

/// The collector's results for a batch. Sent only once every result is
/// durable (content fsynced under its final name, record in the journal).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    pub batch: u64,
    pub results: Vec<FileResult>,
}

/// The outcome for one file of a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileResult {
    pub id: u32,
    pub outcome: Outcome,
}

/// The outcome for one file of a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Stored and catalogued; the agent may forget the file. `stored_as`
    /// is the path in the repository, as bytes.
    Stored {
        sha256: Sha256,
        #[serde(with = "serde_bytes")]
        stored_as: Vec<u8>,
    },
    /// The same content was already stored and catalogued.
    AlreadyStored {
        sha256: Sha256,
        #[serde(with = "serde_bytes")]
        stored_as: Vec<u8>,
    },
    /// Not stored; `ErrorFrame::retryable` tells whether to try again.
    Failed(ErrorFrame),
}

/// A request for the station's catalog summary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusQuery {}

/// The collector's view of one station, with the legacy monitoring meanings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReply {
    pub station: StationId,
    /// Files catalogued for the station.
    pub files: u64,
    /// Bytes catalogued for the station.
    pub bytes: u64,
    /// Catalog records of the station not yet applied to (primary, backup).
    pub pending: (u64, u64),
    /// Files that failed in the last day.
    pub errors: u64,
    /// Unix seconds of the last stored file, if any.
    pub last_backup: Option<i64>,
}

/// A liveness probe; the peer echoes it back as `Pong`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ping {
    pub nonce: u64,
}

/// An error with a machine-readable code and a human message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorFrame {
    pub code: ErrorCode,
    pub message: String,
}

impl ErrorFrame {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// Whether trying the same thing later can succeed.
    pub fn retryable(&self) -> bool {
        self.code.retryable()
    }
}

impl std::fmt::Display for ErrorFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

/// Machine-readable error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorCode {
    /// No protocol version in common.
    UnsupportedVersion,
    /// A frame that does not decode.
    Malformed,
    /// A frame or file over a limit.
    TooLarge,
    /// A message that makes no sense in the session's state.
    UnexpectedMessage,
    /// The peer claimed a station other than its certificate's.
    IdentityMismatch,
    /// A path that is absolute, escapes its root, or is otherwise unusable.
    PathRefused,
    /// The content did not hash to what the agent committed.
    HashMismatch,
    /// The collector is short of disk space; retry later.
    DiskFull,
    /// The collector is at its session or load limit; retry later.
    Busy,
    /// Something failed inside the collector; retry later.
    Internal,
    /// The station is revoked: the collector refuses it until an operator
    /// lifts the revocation. Sent before a revoked station's connection is
    /// ended (new since the first release, at the end so that earlier codes
    /// keep their encoding).
    Revoked,
}

impl ErrorCode {
    /// Whether trying the same thing later can succeed.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::DiskFull | ErrorCode::Busy | ErrorCode::Internal | ErrorCode::HashMismatch
        )
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            ErrorCode::UnsupportedVersion => "unsupported version",
            ErrorCode::Malformed => "malformed frame",
            ErrorCode::TooLarge => "too large",
            ErrorCode::UnexpectedMessage => "unexpected message",
            ErrorCode::IdentityMismatch => "identity mismatch",
            ErrorCode::PathRefused => "path refused",
            ErrorCode::HashMismatch => "hash mismatch",
            ErrorCode::DiskFull => "disk full",
            ErrorCode::Busy => "busy",
            ErrorCode::Internal => "internal error",
            ErrorCode::Revoked => "station revoked",
        };
        f.write_str(name)
    }
}

/// Picks the protocol version for a session from the agent's range, or says
/// why there is none.
pub fn negotiate(hello: &Hello) -> Result<u16, ErrorFrame> {
    let version = hello.max_version.min(PROTOCOL_VERSION);
    if hello.min_version > hello.max_version
        || version < hello.min_version.max(MIN_PROTOCOL_VERSION)
    {
        return Err(ErrorFrame::new(
            ErrorCode::UnsupportedVersion,
            format!(
                "agent speaks protocol {}..={}, collector speaks {}..={}",
                hello.min_version, hello.max_version, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION
            ),
        ));
    }
    Ok(version)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(min_version: u16, max_version: u16) -> Hello {
        Hello {
            station: StationId::new("s1").unwrap(),
            min_version,
            max_version,
            software: "test".into(),
            session: 1,
        }
    }

    #[test]
    fn negotiation_picks_the_newest_common_version() {
        assert_eq!(negotiate(&hello(2, 2)), Ok(2));
        assert_eq!(negotiate(&hello(1, 9)), Ok(PROTOCOL_VERSION));
        // Version 1 (paths as text) is no longer spoken.
        assert!(negotiate(&hello(1, 1)).is_err());
    }

    #[test]
    fn negotiation_refuses_disjoint_ranges() {
        for (min, max) in [(PROTOCOL_VERSION + 1, PROTOCOL_VERSION + 5), (0, 0), (3, 2)] {
            let err = negotiate(&hello(min, max)).unwrap_err();
            assert_eq!(err.code, ErrorCode::UnsupportedVersion, "{min}..={max}");
            assert!(err.message.contains("collector speaks"), "{}", err.message);
        }
    }
}
