//! Station sessions: one task per connected station, fed by a dispatcher
//! that reads the ROUTER.
//!
//! A session answers offers with what it needs (the staged offset, or
//! nothing for content the repository already holds), hands chunks and
//! commits to its staging writers ([`crate::writer`]), and when every file
//! of a batch is verified, fsyncs and places them, appends their catalog
//! records to the journal in one transaction, and only then sends the
//! batch's ack. That placing runs beside the session (up to [`PLACING`]
//! batches at once), so the next batch's chunks keep arriving while the
//! previous one is fsynced.
//!
//! Fairness and memory: each session's queue and writers hold at most the
//! flow-control window's worth of chunks; the dispatcher never waits on a
//! session, and a station that sends beyond its window is disconnected.
//!
//! The dispatcher lives in `dispatcher`, the placing of a complete batch in
//! `placing`; this module holds the session itself.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ferry_common::clock::now_ms;
use ferry_common::link::{Peer, ServerSender};
use ferry_common::name;
use ferry_common::protocol::*;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinSet;
use tracing::{Instrument, debug, info_span, warn};

use crate::journal::Journal;
use crate::metrics::Metrics;
use crate::repository::{self, FileKey, Repository};
use crate::writer::{Done, FileId, Writers};

mod dispatcher;
mod placing;

pub use dispatcher::serve;

use placing::Committed;

/// Complete batches of one session placed at once. Two let the transfer of
/// a batch overlap the fsyncs of the one before (an agent keeps two batches
/// in flight); more would only queue behind the disk.
const PLACING: usize = 2;

/// What every session shares.
#[derive(Debug)]
pub struct Shared {
    /// Shared with the sessions' staging writers.
    pub repository: Arc<Repository>,
    pub journal: Journal,
    /// Counters for the metrics endpoint.
    pub metrics: Arc<Metrics>,
    /// Notified after every journal append, to wake the appliers.
    pub applied_wake: Vec<Arc<Notify>>,
    /// Largest chunk payload accepted.
    pub max_chunk: u32,
    /// Bytes a station may send beyond the last credit.
    pub window: u64,
    /// Ping interval asked of agents.
    pub heartbeat: Duration,
    /// Free bytes the repository's filesystem must keep; below it offers are
    /// refused with a retryable "disk full".
    pub reserve: u64,
    /// Most sessions at once; more are told to retry later.
    pub max_sessions: usize,
}

struct Offered {
    key: FileKey,
    /// Where the content was asked to start (what was staged already).
    from: u64,
}

struct Batch {
    /// When the offer came.
    started: Instant,
    /// Files still expected to commit.
    waiting: HashSet<u32>,
    /// Results decided so far.
    results: Vec<FileResult>,
    /// Committed files, verified, to be placed when the batch completes.
    committed: Vec<Committed>,
}

impl Batch {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            waiting: HashSet::new(),
            results: Vec::new(),
            committed: Vec::new(),
        }
    }

    /// Refuses file `id`: its result is the error, and nothing of it is
    /// needed.
    fn refuse(&mut self, id: u32, error: ErrorFrame) -> Need {
        self.results.push(FileResult {
            id,
            outcome: Outcome::Failed(error.clone()),
        });
        Need::Refused(error)
    }
}

struct Session {
    peer: Peer,
    shared: Arc<Shared>,
    sender: ServerSender,
    session: u64,
    offered: HashMap<FileId, Offered>,
    /// Stage, write and verify the offered files beside the session.
    writers: Writers,
    /// What the writers report.
    done: mpsc::UnboundedReceiver<Done>,
    batches: HashMap<u64, Batch>,
    consumed: u64,
    credited: u64,
    /// Shared with the dispatcher: weight of this session's queued messages.
    queued: Arc<AtomicU64>,
    /// Complete batches being placed and acked in the background.
    placing: JoinSet<()>,
}

impl Session {
    fn new(
        peer: Peer,
        shared: Arc<Shared>,
        sender: ServerSender,
        session: u64,
        queued: Arc<AtomicU64>,
        span: tracing::Span,
    ) -> Self {
        let (done_tx, done) = mpsc::unbounded_channel();
        let writers = Writers::new(shared.repository.clone(), done_tx, span);
        Self {
            peer,
            shared,
            sender,
            session,
            offered: HashMap::new(),
            writers,
            done,
            batches: HashMap::new(),
            consumed: 0,
            credited: 0,
            queued,
            placing: JoinSet::new(),
        }
    }

    async fn send(&self, message: Message) {
        let _ = self.sender.send(&self.peer, message).await;
    }

    async fn run(mut self, welcome: Welcome, mut rx: mpsc::UnboundedReceiver<Message>) {
        self.send(Message::Welcome(welcome)).await;
        loop {
            let message = tokio::select! {
                biased;
                Some(done) = self.done.recv() => {
                    self.written(done).await;
                    continue;
                }
                message = rx.recv() => match message {
                    Some(message) => message,
                    None => break,
                },
            };
            // A chunk's bytes stay counted until its writer is done with
            // them (`Done::Consumed`), so what waits in the lanes is bounded
            // like what waits here.
            let held = match &message {
                Message::Chunk(chunk) => chunk.data.len() as u64,
                _ => 0,
            };
            self.queued
                .fetch_sub(weight(&message) - held, Ordering::SeqCst);
            match message {
                Message::Offer(offer) => self.offer(offer).await,
                Message::Chunk(chunk) => self.chunk(chunk).await,
                Message::Commit(commit) => self.commit(commit).await,
                Message::StatusQuery(_) => self.status().await,
                Message::Pong(_) | Message::Ping(_) => {}
                other => {
                    self.shared.metrics.error(ErrorCode::UnexpectedMessage);
                    let what = format!("{other:?}");
                    let error = ErrorFrame::new(
                        ErrorCode::UnexpectedMessage,
                        format!(
                            "{} not expected from a station",
                            what.split('(').next().unwrap_or("message")
                        ),
                    );
                    self.send(Message::Error(error)).await;
                }
            }
        }
        // The station's next session waits for this one (it takes the same
        // staging files): let the writers finish and close theirs, and
        // finish what is being placed.
        self.writers.close().await;
        while self.placing.join_next().await.is_some() {}
    }

    /// Takes what a writer reports.
    async fn written(&mut self, done: Done) {
        match done {
            Done::Consumed(len) => {
                self.queued.fetch_sub(len, Ordering::SeqCst);
                self.consumed += len;
                self.credit().await;
            }
            Done::Failed {
                file: (batch, file),
                error,
            } => {
                let path = self
                    .offered
                    .get(&(batch, file))
                    .map(|o| o.key.catalog_path())
                    .unwrap_or_default();
                warn!(batch, file, %path, %error, "file refused");
                self.fail(batch, file, error).await;
            }
            Done::Verified {
                file: (batch_id, file),
                staged,
                sha256,
            } => {
                let Some(batch) = self.batches.get_mut(&batch_id) else {
                    return;
                };
                if !batch.waiting.remove(&file) {
                    return;
                }
                batch.committed.push(Committed {
                    id: file,
                    staged: *staged,
                    sha256,
                });
                if let Some(offered) = self.offered.remove(&(batch_id, file)) {
                    debug!(
                        path = %offered.key.catalog_path(),
                        size = offered.key.size,
                        from = offered.from,
                        "file received"
                    );
                }
                self.maybe_finish(batch_id).await;
            }
        }
    }

    fn disk_full(&self) -> bool {
        match rustix::fs::statvfs(self.shared.repository.root()) {
            Ok(st) => st.f_bavail.saturating_mul(st.f_frsize) < self.shared.reserve,
            Err(_) => false,
        }
    }

    /// Answers an offer, file by file, and starts its batch.
    async fn offer(&mut self, offer: Offer) {
        let span = info_span!("batch", batch = offer.batch, files = offer.files.len());
        let _enter = span.enter();
        let full = self.disk_full();
        let mut needs = Vec::with_capacity(offer.files.len());
        let mut batch = Batch::new();
        let mut paths = HashSet::new();
        for file in offer.files {
            let id = file.id;
            let need = self
                .answer(offer.batch, file, full, &mut batch, &mut paths)
                .await;
            needs.push(FileNeed { id, need });
        }
        if full {
            warn!("repository below its free-space reserve; offers refused");
        }
        self.send(Message::OfferReply(OfferReply {
            batch: offer.batch,
            files: needs,
        }))
        .await;
        let id = offer.batch;
        self.batches.insert(id, batch);
        drop(_enter);
        self.maybe_finish(id).await;
    }

    /// What the session needs of one offered file of `batch` (`batch_id`):
    /// nothing (refused, or already stored), or its content from the staged
    /// offset on. `full`: the repository is below its free-space reserve;
    /// `paths`: the paths offered in the batch so far.
    async fn answer(
        &mut self,
        batch_id: u64,
        file: FileOffer,
        full: bool,
        batch: &mut Batch,
        paths: &mut HashSet<(String, Vec<u8>)>,
    ) -> Need {
        if let Err(error) = self.admissible(batch_id, &file, batch, paths) {
            return batch.refuse(file.id, error);
        }
        let key = FileKey {
            station: self.peer.station.clone(),
            root: file.root,
            path: file.path,
            size: file.size,
            mtime_ns: file.mtime_ns,
        };
        if let Some(sha256) = file.sha256
            && let Some(stored_as) = self.stored_as(&key, sha256).await
        {
            Metrics::add(&self.shared.metrics.already_stored, 1);
            tokio::task::block_in_place(|| self.shared.repository.drop_staged(&key));
            batch.results.push(FileResult {
                id: file.id,
                outcome: Outcome::AlreadyStored { sha256, stored_as },
            });
            return Need::AlreadyHave;
        }
        if full {
            let error = ErrorFrame::new(
                ErrorCode::DiskFull,
                "repository is below its free-space reserve; retry later",
            );
            return batch.refuse(file.id, error);
        }
        let offset = self.shared.repository.staged_len(&key);
        batch.waiting.insert(file.id);
        self.offered
            .insert((batch_id, file.id), Offered { key, from: offset });
        Need::From { offset }
    }

    /// Refuses a file whose path is not one a station may name, whose id
    /// the batch (`batch_id`) has already, or whose path it offers twice
    /// (two versions of one path in one batch cannot both be the latest;
    /// the agent offers a path once per batch).
    fn admissible(
        &self,
        batch_id: u64,
        file: &FileOffer,
        batch: &Batch,
        paths: &mut HashSet<(String, Vec<u8>)>,
    ) -> Result<(), ErrorFrame> {
        if let Err(e) =
            repository::check_root(&file.root).and_then(|_| repository::check_path(&file.path))
        {
            warn!(root = %file.root, path = %name::encode(&file.path), error = %e, "path refused");
            return Err(ErrorFrame::new(ErrorCode::PathRefused, e.to_string()));
        }
        if batch.waiting.contains(&file.id) || self.offered.contains_key(&(batch_id, file.id)) {
            return Err(ErrorFrame::new(
                ErrorCode::UnexpectedMessage,
                "file id offered twice",
            ));
        }
        if !paths.insert((file.root.clone(), file.path.clone())) {
            return Err(ErrorFrame::new(
                ErrorCode::UnexpectedMessage,
                "path offered twice in one batch",
            ));
        }
        Ok(())
    }

    /// Where the journal holds content `sha256` for `key`'s path, if it
    /// does.
    async fn stored_as(&self, key: &FileKey, sha256: Sha256) -> Option<Vec<u8>> {
        let journal = self.shared.journal.clone();
        let (station, path) = (key.station.to_string(), key.catalog_path());
        let found =
            tokio::task::spawn_blocking(move || journal.lookup(&station, &path, &sha256)).await;
        match found {
            Ok(Ok(Some(stored_as))) => Some(stored_bytes(&stored_as)),
            _ => None,
        }
    }

    async fn chunk(&mut self, chunk: Chunk) {
        let len = chunk.data.len() as u64;
        Metrics::add(&self.shared.metrics.bytes_received, len);
        let Some(offered) = self.offered.get(&(chunk.batch, chunk.file)) else {
            // Not (or no longer) expected: typically the file already failed
            // and the rest of its chunks were in flight. Drop them, but still
            // credit them so the window does not shrink.
            debug!(
                batch = chunk.batch,
                file = chunk.file,
                "chunk for a settled file dropped"
            );
            self.queued.fetch_sub(len, Ordering::SeqCst);
            self.consumed += len;
            self.credit().await;
            return;
        };
        // Credited once the writer is done with it.
        self.writers.write(
            (chunk.batch, chunk.file),
            &offered.key,
            chunk.offset,
            chunk.data,
        );
    }

    /// Grants credit once a quarter of the window has been consumed.
    async fn credit(&mut self) {
        if self.consumed - self.credited >= self.shared.window / 4 {
            self.credited = self.consumed;
            self.send(Message::Credit(Credit {
                consumed: self.consumed,
            }))
            .await;
        }
    }

    /// Ends a file with an error result (once); its writer has closed (or,
    /// for wrong content, removed) what it staged.
    async fn fail(&mut self, batch: u64, file: u32, error: ErrorFrame) {
        let Some(state) = self.batches.get_mut(&batch) else {
            return;
        };
        if !state.waiting.remove(&file) {
            return;
        }
        self.writers.forget((batch, file));
        if let Some(offered) = self.offered.remove(&(batch, file)) {
            let journal = self.shared.journal.clone();
            let (station, path, message) = (
                self.peer.station.to_string(),
                offered.key.catalog_path(),
                error.to_string(),
            );
            tokio::task::spawn_blocking(move || {
                if let Err(error) = journal.record_failure(&station, &path, &message, now_ms()) {
                    warn!(%station, %path, %error, "file failure not recorded in the journal");
                }
            });
        }
        state.results.push(FileResult {
            id: file,
            outcome: Outcome::Failed(error),
        });
        self.maybe_finish(batch).await;
    }

    async fn commit(&mut self, commit: Commit) {
        let Some(offered) = self.offered.get(&(commit.batch, commit.file)) else {
            // Settled already (failed mid-stream) or never offered: the
            // batch's ack carries (or carried) its result.
            debug!(
                batch = commit.batch,
                file = commit.file,
                "commit for a settled file ignored"
            );
            return;
        };
        // The writer verifies it after its chunks and says how it went.
        self.writers.commit(
            (commit.batch, commit.file),
            &offered.key,
            commit.size,
            commit.sha256,
        );
    }

    /// Once no file of `batch` is outstanding: place, journal and ack it in
    /// the background, so that the next batch's transfer overlaps this one's
    /// fsyncs. At most [`PLACING`] batches of a session are placed at once;
    /// the session waits for the oldest before starting another.
    async fn maybe_finish(&mut self, batch_id: u64) {
        match self.batches.get(&batch_id) {
            Some(batch) if batch.waiting.is_empty() => {}
            _ => return,
        }
        let Some(batch) = self.batches.remove(&batch_id) else {
            return;
        };
        while self.placing.len() >= PLACING {
            let _ = self.placing.join_next().await;
        }
        let finish = placing::finish_batch(
            self.shared.clone(),
            self.sender.clone(),
            self.peer.clone(),
            format!("{:016x}/{batch_id}", self.session),
            batch_id,
            batch,
        );
        self.placing
            .spawn(finish.instrument(tracing::Span::current()));
    }

    /// Answers a status query, after every chunk received before it is
    /// written: what the station sent before asking is staged by the time
    /// it has the answer.
    async fn status(&self) {
        self.writers.flush().await;
        let journal = self.shared.journal.clone();
        let station = self.peer.station.to_string();
        let stats = tokio::task::spawn_blocking(move || {
            let failures = journal
                .failures(&station, now_ms() - 86_400_000, 100_000)?
                .len() as u64;
            journal.station_stats(&station).map(|s| (s, failures))
        })
        .await;
        let (stats, errors) = match stats {
            Ok(Ok(stats)) => stats,
            _ => (Default::default(), 0),
        };
        self.send(Message::StatusReply(StatusReply {
            station: self.peer.station.clone(),
            files: stats.files,
            bytes: stats.bytes,
            pending: (stats.pending_primary, stats.pending_backup),
            errors,
            last_backup: stats.last_stored_ms.map(|ms| ms / 1000),
        }))
        .await;
    }
}

/// The bytes of a stored name the journal holds in text form.
fn stored_bytes(stored_as: &str) -> Vec<u8> {
    name::decode(stored_as).unwrap_or_else(|_| stored_as.as_bytes().to_vec())
}

/// What a queued message costs in memory, roughly: its payload, or a small
/// constant for control messages.
fn weight(message: &Message) -> u64 {
    match message {
        Message::Chunk(chunk) => chunk.data.len() as u64 + 64,
        Message::Offer(offer) => {
            offer
                .files
                .iter()
                .map(|f| (f.root.len() + f.path.len()) as u64 + 64)
                .sum::<u64>()
                + 64
        }
        _ => 64,
    }
}
