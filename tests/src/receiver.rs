//! A minimal receiving side for link tests: it admits stations, hashes the
//! chunks it is sent and acknowledges each batch once every file of it is
//! committed (or refused), keeping what it received for the test to
//! compare. It stores nothing on disk; the real
//! collector does that.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use ferry_common::link::{Incoming, Peer, ServerLink, ServerLinkConfig, admit_hello, malformed};
use ferry_common::name;
use ferry_common::protocol::*;
use ferry_common::station::StationId;

use crate::pki::TestPki;

/// A file as the receiver got it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub station: StationId,
    /// The path in the text form of names.
    pub path: String,
    pub len: u64,
    pub sha256: Sha256,
}

/// What the receiver saw, for assertions.
#[derive(Debug, Default)]
pub struct Seen {
    pub files: Vec<Received>,
    pub sessions: Vec<StationId>,
    pub errors: Vec<(StationId, ErrorFrame)>,
    /// Offered paths containing one of these bytes strings are refused for
    /// good (`PathRefused`), as a collector refuses a path it never takes.
    pub refuse: Vec<Vec<u8>>,
    /// How many offers were refused so.
    pub refused: u64,
}

/// A running receiver; stops when dropped.
#[derive(Debug)]
pub struct Receiver {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Seen>>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    /// Starts on `listen` (port 0 for a free one) with the given heartbeat.
    pub async fn start(
        pki: &TestPki,
        listen: SocketAddr,
        heartbeat: Duration,
    ) -> anyhow::Result<Self> {
        let link = ServerLink::bind(ServerLinkConfig {
            listen,
            tls: pki.server_config()?,
            runtime_dir: pki.scratch("collector-run"),
            limits: ServerLinkConfig::default_limits(),
            handshake_timeout: Duration::from_secs(5),
            revoked: Default::default(),
        })
        .await?;
        let addr = link.local_addr();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let task = tokio::spawn(serve(link, seen.clone(), heartbeat));
        Ok(Self { addr, seen, task })
    }

    /// The address stations dial.
    pub fn endpoint(&self) -> String {
        self.addr.to_string()
    }

    /// Runs `f` on what was seen so far.
    pub fn seen<T>(&self, f: impl FnOnce(&Seen) -> T) -> T {
        f(&self.seen.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Refuses for good every offered path containing `marker`.
    pub fn refuse_paths_containing(&self, marker: &[u8]) {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .refuse
            .push(marker.to_vec());
    }

    /// Stops the receiver; every station connection closes.
    pub async fn stop(self) {
        self.task.abort();
        while !self.task.is_finished() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct InFlight {
    path: Vec<u8>,
    hash: ring::digest::Context,
    len: u64,
}

async fn serve(mut link: ServerLink, seen: Arc<Mutex<Seen>>, heartbeat: Duration) {
    let sender = link.sender();
    let mut sessions: HashMap<Bytes, HashMap<(u64, u32), InFlight>> = HashMap::new();
    let mut offers: HashMap<(Bytes, u64, u32), Vec<u8>> = HashMap::new();
    // Per batch: files still to commit, and the results so far.
    let mut batches: HashMap<(Bytes, u64), (usize, Vec<FileResult>)> = HashMap::new();
    while let Some(Incoming { peer, frame }) = link.recv().await {
        let reply_error = |error: ErrorFrame, peer: &Peer| {
            seen.lock()
                .unwrap_or_else(|p| p.into_inner())
                .errors
                .push((peer.station.clone(), error.clone()));
            Message::Error(error)
        };
        let message = match frame {
            Ok(frame) => frame.message,
            Err(error) => {
                let reply = reply_error(malformed(&error), &peer);
                let _ = sender.send(&peer, reply).await;
                continue;
            }
        };
        let Some(files) = sessions.get_mut(&peer.identity) else {
            let reply = match &message {
                Message::Hello(hello) => match admit_hello(&peer, hello) {
                    Ok(version) => {
                        link.admitted(&peer);
                        sessions.insert(peer.identity.clone(), HashMap::new());
                        seen.lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .sessions
                            .push(peer.station.clone());
                        Message::Welcome(Welcome {
                            version,
                            software: "ferry-tests receiver".into(),
                            max_chunk: 1 << 20,
                            window: 8 << 20,
                            heartbeat_ms: heartbeat.as_millis() as u32,
                        })
                    }
                    Err(error) => reply_error(error, &peer),
                },
                other => reply_error(
                    ErrorFrame::new(
                        ErrorCode::UnexpectedMessage,
                        format!("{other:?} before Hello"),
                    ),
                    &peer,
                ),
            };
            let _ = sender.send(&peer, reply).await;
            continue;
        };
        let reply = match message {
            Message::Offer(offer) => {
                let mut needs = Vec::new();
                let mut refused = Vec::new();
                for file in offer.files {
                    let refuse = {
                        let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
                        let hit = seen.refuse.iter().any(|m| {
                            !m.is_empty() && file.path.windows(m.len()).any(|w| w == &m[..])
                        });
                        seen.refused += u64::from(hit);
                        hit
                    };
                    if refuse {
                        let error = ErrorFrame::new(ErrorCode::PathRefused, "refused by the test");
                        refused.push(FileResult {
                            id: file.id,
                            outcome: Outcome::Failed(error.clone()),
                        });
                        needs.push(FileNeed {
                            id: file.id,
                            need: Need::Refused(error),
                        });
                        continue;
                    }
                    offers.insert((peer.identity.clone(), offer.batch, file.id), file.path);
                    needs.push(FileNeed {
                        id: file.id,
                        need: Need::From { offset: 0 },
                    });
                }
                let batch = offer.batch;
                let waiting = needs.len() - refused.len();
                let _ = sender
                    .send(
                        &peer,
                        Message::OfferReply(OfferReply {
                            batch,
                            files: needs,
                        }),
                    )
                    .await;
                if waiting == 0 {
                    Some(Message::Ack(Ack {
                        batch,
                        results: refused,
                    }))
                } else {
                    batches.insert((peer.identity.clone(), batch), (waiting, refused));
                    None
                }
            }
            Message::Chunk(chunk) => {
                let key = (chunk.batch, chunk.file);
                let path = offers
                    .get(&(peer.identity.clone(), chunk.batch, chunk.file))
                    .cloned();
                let entry = files.entry(key).or_insert_with(|| InFlight {
                    path: path.unwrap_or_default(),
                    hash: ring::digest::Context::new(&ring::digest::SHA256),
                    len: 0,
                });
                if chunk.offset != entry.len {
                    Some(reply_error(
                        ErrorFrame::new(ErrorCode::UnexpectedMessage, "chunk out of order"),
                        &peer,
                    ))
                } else {
                    entry.hash.update(&chunk.data);
                    entry.len += chunk.data.len() as u64;
                    None
                }
            }
            Message::Commit(commit) => {
                let done = files.remove(&(commit.batch, commit.file));
                let outcome = match done {
                    Some(InFlight { path, hash, len }) => {
                        let mut sha256 = [0u8; 32];
                        sha256.copy_from_slice(hash.finish().as_ref());
                        if sha256 == commit.sha256 && len == commit.size {
                            seen.lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .files
                                .push(Received {
                                    station: peer.station.clone(),
                                    path: name::encode(&path),
                                    len,
                                    sha256,
                                });
                            Outcome::Stored {
                                sha256,
                                stored_as: path,
                            }
                        } else {
                            Outcome::Failed(ErrorFrame::new(
                                ErrorCode::HashMismatch,
                                "content differs",
                            ))
                        }
                    }
                    None => Outcome::Failed(ErrorFrame::new(
                        ErrorCode::UnexpectedMessage,
                        "nothing sent",
                    )),
                };
                let result = FileResult {
                    id: commit.file,
                    outcome,
                };
                match batches.get_mut(&(peer.identity.clone(), commit.batch)) {
                    Some((waiting, results)) => {
                        results.push(result);
                        *waiting = waiting.saturating_sub(1);
                        if *waiting == 0 {
                            let (_, results) = batches
                                .remove(&(peer.identity.clone(), commit.batch))
                                .unwrap_or_default();
                            Some(Message::Ack(Ack {
                                batch: commit.batch,
                                results,
                            }))
                        } else {
                            None
                        }
                    }
                    None => Some(Message::Ack(Ack {
                        batch: commit.batch,
                        results: vec![result],
                    })),
                }
            }
            Message::StatusQuery(_) => {
                let files = seen
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .files
                    .iter()
                    .filter(|f| f.station == peer.station)
                    .count() as u64;
                Some(Message::StatusReply(StatusReply {
                    station: peer.station.clone(),
                    files,
                    bytes: 0,
                    pending: (0, 0),
                    errors: 0,
                    last_backup: None,
                }))
            }
            other => Some(reply_error(
                ErrorFrame::new(
                    ErrorCode::UnexpectedMessage,
                    format!("{other:?} not expected"),
                ),
                &peer,
            )),
        };
        if let Some(reply) = reply {
            let _ = sender.send(&peer, reply).await;
        }
    }
}
