//! Sending a batch of files over an open session: offer, stream what the
//! collector needs within the flow-control window, commit each file with the
//! SHA-256 of what was read, and wait for the batch's ack. The daemon starts
//! the next batch before waiting for the ack ([`start_batch`], then
//! [`finish_batch`]), so one batch streams while the collector fsyncs the
//! one before.
//!
//! Files are read in chunks and hashed as they are read, never loaded whole;
//! a transfer that resumes at an offset re-reads (and hashes) the prefix
//! without sending it. A file offered before whose fate is unknown is hashed
//! before the offer ([`hash_unchanged`]), so the collector can answer that
//! it already holds that content.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::PathBuf;

use ferry_common::link::{ClientLink, LinkError};
use ferry_common::protocol::*;

use reader::{Piece, Reader, Wanted, finish};

mod reader;

/// One file to offer.
#[derive(Debug, Clone)]
pub struct OutgoingFile {
    /// Name of the configured root the file lives under.
    pub root: String,
    /// Path relative to the root, `/`-separated: the file's exact name
    /// bytes (names need not be UTF-8).
    pub rel_path: Vec<u8>,
    /// Where to read it.
    pub abs_path: PathBuf,
    pub size: u64,
    pub mtime_ns: i64,
    /// Content hash, if already known (lets the collector skip the transfer).
    pub sha256: Option<Sha256>,
}

/// What happened to one file of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileReport {
    /// Index of the file in the slice given to [`send_batch`].
    pub index: usize,
    pub outcome: Outcome,
    /// Bytes of content this batch actually sent for the file.
    pub sent: u64,
}

/// Why a batch did not complete; the session should be rebuilt.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error("collector error: {0}")]
    Collector(ErrorFrame),
    #[error("collector broke the protocol: {0}")]
    Protocol(String),
}

/// Per-session state: bytes sent and credited so far (flow control), and
/// acks that arrived while the session was busy with a later batch.
#[derive(Debug, Default, Clone)]
pub struct Flow {
    sent: u64,
    consumed: u64,
    acks: HashMap<u64, Ack>,
}

/// A batch whose files are all streamed and committed, waiting for its ack.
#[derive(Debug)]
pub struct InFlight {
    batch: u64,
    /// Bytes sent per file.
    sent: Vec<u64>,
}

impl InFlight {
    /// The batch number.
    pub fn batch(&self) -> u64 {
        self.batch
    }
}

/// Offers `files` as batch `batch` and sees it through to the ack.
pub async fn send_batch(
    link: &mut ClientLink,
    flow: &mut Flow,
    batch: u64,
    files: &[OutgoingFile],
) -> Result<Vec<FileReport>, SendError> {
    let in_flight = start_batch(link, flow, batch, files).await?;
    finish_batch(link, flow, in_flight).await
}

/// Offers `files` as batch `batch`, streams what the collector asks for and
/// commits every file, without waiting for the ack: the caller may start
/// the next batch (with other files) first, then [`finish_batch`] this one.
/// An ack of an earlier batch that arrives meanwhile is kept for its
/// `finish_batch`.
pub async fn start_batch(
    link: &mut ClientLink,
    flow: &mut Flow,
    batch: u64,
    files: &[OutgoingFile],
) -> Result<InFlight, SendError> {
    let offers = files
        .iter()
        .enumerate()
        .map(|(i, f)| FileOffer {
            id: i as u32,
            root: f.root.clone(),
            path: f.rel_path.clone(),
            size: f.size,
            mtime_ns: f.mtime_ns,
            sha256: f.sha256,
        })
        .collect();
    link.send(Message::Offer(Offer {
        batch,
        files: offers,
    }))
    .await?;
    let reply = match recv(link, flow).await? {
        Message::OfferReply(reply) if reply.batch == batch => reply,
        other => {
            return Err(SendError::Protocol(format!(
                "expected an offer reply, got {other:?}"
            )));
        }
    };
    let mut sent = vec![0u64; files.len()];
    let window = link.welcome.window.min(MAX_WINDOW);
    let chunk = (link.welcome.max_chunk as usize).clamp(4096, ferry_common::codec::MAX_CHUNK);
    let mut wanted = Vec::new();
    for need in &reply.files {
        let Need::From { offset } = need.need else {
            continue;
        };
        let Some(file) = files.get(need.id as usize) else {
            return Err(SendError::Protocol(format!(
                "reply names file {} that was not offered",
                need.id
            )));
        };
        wanted.push(Wanted {
            id: need.id,
            path: file.abs_path.clone(),
            size: file.size,
            offset,
        });
    }
    // Each chunk goes once it fits in the window, each file's commit after
    // its last chunk.
    let mut reader = Reader::new(batch, wanted, chunk);
    loop {
        let group = tokio::task::block_in_place(|| reader.next_group());
        if group.is_empty() {
            break;
        }
        for piece in group {
            match piece {
                Piece::Chunk { id, frame, len } => {
                    wait_for_credit(link, flow, len, window).await?;
                    link.send_chunk(frame).await?;
                    flow.sent += len;
                    sent[id as usize] += len;
                }
                Piece::End { id, size, sha256 } => {
                    link.send(Message::Commit(Commit {
                        batch,
                        file: id,
                        size,
                        sha256,
                    }))
                    .await?;
                }
                Piece::Failed(reason) => return Err(SendError::Protocol(reason)),
            }
        }
    }
    Ok(InFlight { batch, sent })
}

/// Waits for the ack of a batch [`start_batch`] sent, and reports each file.
pub async fn finish_batch(
    link: &mut ClientLink,
    flow: &mut Flow,
    in_flight: InFlight,
) -> Result<Vec<FileReport>, SendError> {
    let InFlight { batch, sent } = in_flight;
    let ack = loop {
        if let Some(ack) = flow.acks.remove(&batch) {
            break ack;
        }
        if let Some(other) = next(link, flow).await? {
            return Err(SendError::Protocol(format!(
                "expected the ack of batch {batch}, got {other:?}"
            )));
        }
    };
    Ok(ack
        .results
        .into_iter()
        .map(|r| FileReport {
            index: r.id as usize,
            sent: sent.get(r.id as usize).copied().unwrap_or(0),
            outcome: r.outcome,
        })
        .collect())
}

/// The SHA-256 of `file` as it is on disk, if it still has the size and
/// mtime it is offered with (before and after reading); `None` if it
/// changed or cannot be read. Blocking: reads the whole file in chunks.
pub fn hash_unchanged(file: &OutgoingFile) -> Option<Sha256> {
    let unchanged = || {
        std::fs::metadata(&file.abs_path).is_ok_and(|m| {
            use std::os::unix::fs::MetadataExt;
            m.len() == file.size && m.mtime() * 1_000_000_000 + m.mtime_nsec() == file.mtime_ns
        })
    };
    if !unchanged() {
        return None;
    }
    let mut reader = File::open(&file.abs_path).ok()?;
    let mut hash = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 256 * 1024];
    let mut read = 0u64;
    loop {
        let n = reader.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        read += n as u64;
    }
    (read == file.size && unchanged()).then(|| finish(hash))
}

/// Most bytes the agent sends ahead of the collector's credit, whatever
/// window the collector grants: what is not yet credited sits mostly in the
/// agent's own queues (its resident memory) and a larger lead does not move
/// data faster.
const MAX_WINDOW: u64 = 8 << 20;

/// Acks kept at most: more batches than this in flight is a caller's bug,
/// or a collector acking batches never sent.
const MAX_KEPT_ACKS: usize = 8;

/// Next message that is neither flow control nor an ack.
async fn recv(link: &mut ClientLink, flow: &mut Flow) -> Result<Message, SendError> {
    loop {
        if let Some(message) = next(link, flow).await? {
            return Ok(message);
        }
    }
}

/// One message from the collector. A credit updates `flow` and an ack is
/// kept in it for [`finish_batch`] (both give `None`); an error frame ends
/// the batch.
async fn next(link: &mut ClientLink, flow: &mut Flow) -> Result<Option<Message>, SendError> {
    match link.recv().await? {
        Message::Credit(credit) => flow.consumed = flow.consumed.max(credit.consumed),
        Message::Error(error) => return Err(SendError::Collector(error)),
        Message::Ack(ack) => {
            if flow.acks.len() >= MAX_KEPT_ACKS {
                return Err(SendError::Protocol(format!(
                    "ack of batch {} while {} acks wait unclaimed",
                    ack.batch,
                    flow.acks.len()
                )));
            }
            flow.acks.insert(ack.batch, ack);
        }
        other => return Ok(Some(other)),
    }
    Ok(None)
}

/// Waits until `more` bytes fit in the window.
async fn wait_for_credit(
    link: &mut ClientLink,
    flow: &mut Flow,
    more: u64,
    window: u64,
) -> Result<(), SendError> {
    while flow.sent + more > flow.consumed + window {
        if let Some(other) = next(link, flow).await? {
            return Err(SendError::Protocol(format!(
                "unexpected {other:?} while streaming"
            )));
        }
    }
    Ok(())
}
