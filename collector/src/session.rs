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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_common::codec;
use ferry_common::link::{Incoming, Peer, ServerLink, ServerSender, admit_hello, malformed};
use ferry_common::name;
use ferry_common::protocol::*;
use ferry_common::station::StationId;
use tokio::sync::{Mutex, Notify, mpsc, watch};
use tokio::task::JoinSet;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::journal::{Journal, Previous, Record};
use crate::metrics::Metrics;
use crate::repository::{self, FileKey, Placement, Repository, RepositoryError, Staged};
use crate::writer::{Done, FileId, Writers, repository_error};

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

struct SessionHandle {
    tx: mpsc::UnboundedSender<Message>,
    /// Weight of the messages queued for the session and not yet handled,
    /// chunk bytes until they are written.
    queued: Arc<AtomicU64>,
    station: StationId,
}

/// Reads frames from `link` and runs a session per station until `shutdown`.
pub async fn serve(mut link: ServerLink, shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let sender = link.sender();
    let mut sessions: HashMap<Bytes, SessionHandle> = HashMap::new();
    let mut station_locks: HashMap<StationId, Arc<Mutex<()>>> = HashMap::new();
    // What a station may have queued here: its window of chunk data plus a
    // couple of frames of anything else. Bytes, not messages, are what the
    // window bounds (a window of small files is many messages).
    let queue_limit = shared.window + 2 * codec::MAX_FRAME as u64;
    let mut sweep = tokio::time::interval(Duration::from_secs(2));
    loop {
        let Incoming { peer, frame } = tokio::select! {
            incoming = link.recv() => match incoming {
                Some(incoming) => incoming,
                None => break,
            },
            _ = sweep.tick() => {
                // Sessions whose connection is gone end here.
                sessions.retain(|identity, _| link.is_connected(identity));
                continue;
            }
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        let message = match frame {
            Ok(frame) => frame.message,
            Err(error) => {
                warn!(station = %peer.station, %error, "bad frame; disconnecting");
                let error = malformed(&error);
                shared.metrics.error(error.code);
                let _ = sender.send(&peer, Message::Error(error)).await;
                sessions.remove(&peer.identity);
                // Let the error frame go out first; never stall the others.
                link.disconnect_later(&peer, Duration::from_millis(50));
                continue;
            }
        };
        if let Some(handle) = sessions.get(&peer.identity) {
            let weight = weight(&message);
            if handle.queued.fetch_add(weight, Ordering::SeqCst) + weight > queue_limit {
                warn!(station = %peer.station, "station exceeded its window; disconnecting");
                let error = ErrorFrame::new(ErrorCode::TooLarge, "flow-control window exceeded");
                shared.metrics.error(error.code);
                let _ = sender.send(&peer, Message::Error(error)).await;
                sessions.remove(&peer.identity);
                link.disconnect_later(&peer, Duration::from_millis(50));
            } else if handle.tx.send(message).is_err() {
                sessions.remove(&peer.identity);
            }
            continue;
        }
        // A connection without a session gets one answer: a Welcome, or an
        // error and the end of the connection (after the error has left).
        let Message::Hello(hello) = message else {
            let error = ErrorFrame::new(
                ErrorCode::UnexpectedMessage,
                "the session starts with Hello",
            );
            warn!(station = %peer.station, %error, "hello refused; disconnecting");
            shared.metrics.error(error.code);
            let _ = sender.send(&peer, Message::Error(error)).await;
            link.disconnect_later(&peer, Duration::from_millis(50));
            continue;
        };
        let version = match admit_hello(&peer, &hello) {
            Ok(version) => version,
            Err(error) => {
                warn!(station = %peer.station, %error, "hello refused; disconnecting");
                shared.metrics.error(error.code);
                let _ = sender.send(&peer, Message::Error(error)).await;
                link.disconnect_later(&peer, Duration::from_millis(50));
                continue;
            }
        };
        // A station reconnecting replaces its previous session.
        let stale: Vec<Bytes> = sessions
            .iter()
            .filter(|(_, h)| h.station == peer.station)
            .map(|(id, _)| id.clone())
            .collect();
        for identity in stale {
            sessions.remove(&identity);
            link.disconnect_identity(&identity);
        }
        if sessions.len() >= shared.max_sessions {
            let error = ErrorFrame::new(ErrorCode::Busy, "collector at its session limit");
            shared.metrics.error(error.code);
            let _ = sender.send(&peer, Message::Error(error)).await;
            link.disconnect_later(&peer, Duration::from_millis(50));
            continue;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicU64::new(0));
        let lock = station_locks
            .entry(peer.station.clone())
            .or_default()
            .clone();
        let span = info_span!("session", station = %peer.station, session = %format!("{:016x}", hello.session));
        let session = Session::new(
            peer.clone(),
            shared.clone(),
            sender.clone(),
            hello.session,
            queued.clone(),
            span.clone(),
        );
        let welcome = Welcome {
            version,
            software: format!("ferry-collector {}", env!("CARGO_PKG_VERSION")),
            max_chunk: shared.max_chunk,
            window: shared.window,
            heartbeat_ms: u32::try_from(shared.heartbeat.as_millis()).unwrap_or(u32::MAX),
        };
        let metrics = shared.metrics.clone();
        tokio::spawn(
            async move {
                // The previous session of this station (if any) finishes
                // before this one touches its staging files.
                let _guard = lock.lock().await;
                let _counted = metrics.session();
                info!(software = %hello.software, "session open");
                session.run(welcome, rx).await;
                info!("session closed");
            }
            .instrument(span),
        );
        link.admitted(&peer);
        sessions.insert(
            peer.identity.clone(),
            SessionHandle {
                tx,
                queued,
                station: peer.station.clone(),
            },
        );
    }
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
    committed: Vec<(u32, Staged, Sha256)>,
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
                batch.committed.push((file, *staged, sha256));
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

    async fn offer(&mut self, offer: Offer) {
        let span = info_span!("batch", batch = offer.batch, files = offer.files.len());
        let _enter = span.enter();
        let full = self.disk_full();
        let mut needs = Vec::with_capacity(offer.files.len());
        let mut batch = Batch::new();
        let mut paths = HashSet::new();
        for file in offer.files {
            let refuse = |batch: &mut Batch, error: ErrorFrame| {
                batch.results.push(FileResult {
                    id: file.id,
                    outcome: Outcome::Failed(error.clone()),
                });
                FileNeed {
                    id: file.id,
                    need: Need::Refused(error),
                }
            };
            if let Err(e) =
                repository::check_root(&file.root).and_then(|_| repository::check_path(&file.path))
            {
                warn!(root = %file.root, path = %name::encode(&file.path), error = %e, "path refused");
                needs.push(refuse(
                    &mut batch,
                    ErrorFrame::new(ErrorCode::PathRefused, e.to_string()),
                ));
                continue;
            }
            if batch.waiting.contains(&file.id)
                || self.offered.contains_key(&(offer.batch, file.id))
            {
                needs.push(refuse(
                    &mut batch,
                    ErrorFrame::new(ErrorCode::UnexpectedMessage, "file id offered twice"),
                ));
                continue;
            }
            // Two versions of one path in one batch cannot both be the
            // latest; the agent offers a path once per batch.
            if !paths.insert((file.root.clone(), file.path.clone())) {
                needs.push(refuse(
                    &mut batch,
                    ErrorFrame::new(
                        ErrorCode::UnexpectedMessage,
                        "path offered twice in one batch",
                    ),
                ));
                continue;
            }
            let key = FileKey {
                station: self.peer.station.clone(),
                root: file.root,
                path: file.path,
                size: file.size,
                mtime_ns: file.mtime_ns,
            };
            if let Some(sha) = file.sha256 {
                let journal = self.shared.journal.clone();
                let (station, path) = (key.station.to_string(), key.catalog_path());
                let found =
                    tokio::task::spawn_blocking(move || journal.lookup(&station, &path, &sha))
                        .await;
                if let Ok(Ok(Some(stored_as))) = found {
                    Metrics::add(&self.shared.metrics.already_stored, 1);
                    tokio::task::block_in_place(|| self.shared.repository.drop_staged(&key));
                    batch.results.push(FileResult {
                        id: file.id,
                        outcome: Outcome::AlreadyStored {
                            sha256: sha,
                            stored_as: stored_bytes(&stored_as),
                        },
                    });
                    needs.push(FileNeed {
                        id: file.id,
                        need: Need::AlreadyHave,
                    });
                    continue;
                }
            }
            if full {
                needs.push(refuse(
                    &mut batch,
                    ErrorFrame::new(
                        ErrorCode::DiskFull,
                        "repository is below its free-space reserve; retry later",
                    ),
                ));
                continue;
            }
            let offset = self.shared.repository.staged_len(&key);
            batch.waiting.insert(file.id);
            self.offered
                .insert((offer.batch, file.id), Offered { key, from: offset });
            needs.push(FileNeed {
                id: file.id,
                need: Need::From { offset },
            });
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
                journal.record_failure(&station, &path, &message, now_ms())
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
        let finish = finish_batch(
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

/// Places a complete batch (on a blocking thread), logs it and sends its ack.
async fn finish_batch(
    shared: Arc<Shared>,
    sender: ServerSender,
    peer: Peer,
    transfer: String,
    batch_id: u64,
    mut batch: Batch,
) {
    let committed = std::mem::take(&mut batch.committed);
    let bytes: u64 = committed.iter().map(|(_, staged, _)| staged.key.size).sum();
    let placing = Instant::now();
    let placed = {
        let shared = shared.clone();
        // The blocking thread logs within this session's span (station).
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || {
            span.in_scope(|| place_batch(&shared, committed, &transfer))
        })
        .await
    };
    match placed {
        Ok(results) => batch.results.extend(results),
        Err(e) => warn!(error = %e, "placing a batch failed"),
    }
    for wake in &shared.applied_wake {
        wake.notify_one();
    }
    batch.results.sort_by_key(|r| r.id);
    let (mut stored, mut already, mut failed) = (0usize, 0usize, 0usize);
    for result in &batch.results {
        match &result.outcome {
            Outcome::Stored { .. } => stored += 1,
            Outcome::AlreadyStored { .. } => already += 1,
            Outcome::Failed(error) => {
                failed += 1;
                shared.metrics.error(error.code);
            }
        }
    }
    Metrics::add(&shared.metrics.batches, 1);
    info!(
        batch = batch_id,
        files = batch.results.len(),
        stored,
        already,
        failed,
        bytes,
        ms = batch.started.elapsed().as_millis() as u64,
        place_ms = placing.elapsed().as_millis() as u64,
        "batch acknowledged"
    );
    let _ = sender
        .send(
            &peer,
            Message::Ack(Ack {
                batch: batch_id,
                results: batch.results,
            }),
        )
        .await;
}

/// Fsyncs and places each committed file, journals the records of the batch
/// in one transaction, and returns each file's result. A file whose record
/// is not in the journal is never reported stored.
///
/// Durability is grouped, never one flush per file: one group `syncfs`
/// makes the staged content durable (shared with every batch syncing at the
/// same time), then the files are linked, then a second one makes the links
/// durable. Content the journal already holds for its path (an older
/// version sent again) is not placed again. From placing to journaling, the
/// batch holds its plain names, so no other batch places another version of
/// one of its paths in between.
fn place_batch(
    shared: &Shared,
    committed: Vec<(u32, Staged, Sha256)>,
    transfer: &str,
) -> Vec<FileResult> {
    let repository = &shared.repository;
    let journal = &shared.journal;
    let now = now_ms();
    let staged: Vec<&Staged> = committed.iter().map(|(_, staged, _)| staged).collect();
    let synced = repository.sync_staged(&staged);
    let _claim = repository.claim(staged.iter().map(|s| s.key.plain_name()));
    // What the journal already holds, asked for the whole batch at once.
    let names: Vec<(String, String)> = committed
        .iter()
        .map(|(_, staged, _)| (staged.key.station.to_string(), staged.key.catalog_path()))
        .collect();
    let keys: Vec<(&str, &str, &Sha256)> = committed
        .iter()
        .zip(&names)
        .map(|((_, _, sha256), (station, path))| (station.as_str(), path.as_str(), sha256))
        .collect();
    let known_all = journal
        .lookup_all(&keys)
        .unwrap_or_else(|_| vec![None; keys.len()]);
    let mut placed = Vec::with_capacity(committed.len());
    for (((id, staged, sha256), synced), known) in committed.into_iter().zip(synced).zip(known_all)
    {
        let placement = match known {
            Some(stored_as) => Ok(Known::Journaled(stored_bytes(&stored_as))),
            None => synced
                .and_then(|()| {
                    repository.link(&staged, &sha256, |name| {
                        journal.owner_of(name).ok().flatten()
                    })
                })
                .map(Known::Placed),
        };
        placed.push((id, staged, sha256, placement));
    }
    // Each directory once, named by one of the files linked into it.
    let dirs: BTreeMap<&[u8], &[u8]> = placed
        .iter()
        .filter_map(|(.., p)| match p {
            Ok(Known::Placed(p)) => Some(p.stored_as()),
            _ => None,
        })
        .map(|stored_as| (parent_of(stored_as), stored_as))
        .collect();
    let files: Vec<&[u8]> = dirs.values().copied().collect();
    let dir_errors: HashMap<&[u8], RepositoryError> = dirs
        .keys()
        .zip(repository.sync_parents(&files))
        .filter_map(|(dir, r)| r.err().map(|e| (*dir, e)))
        .collect();
    let mut results = Vec::new();
    let mut records = Vec::new();
    let mut done = Vec::new();
    for ((id, staged, sha256, placement), (station, catalog_path)) in placed.iter().zip(names) {
        let (id, sha256) = (*id, *sha256);
        let placement = match placement {
            Ok(Known::Placed(p)) => match dir_errors.get(parent_of(p.stored_as())) {
                Some(e) => Err(e),
                None => Ok(Known::Placed(p.clone())),
            },
            Ok(known) => Ok(known.clone()),
            Err(e) => Err(e),
        };
        match placement {
            Ok(Known::Placed(placement)) => {
                let (stored_as, replaced) = match placement {
                    Placement::Stored {
                        stored_as,
                        replaced,
                    } => (stored_as, replaced),
                    Placement::AlreadyThere { stored_as } => (stored_as, None),
                };
                records.push((
                    id,
                    Record {
                        station,
                        path: catalog_path,
                        size: staged.key.size,
                        mtime_ns: staged.key.mtime_ns,
                        sha256,
                        stored_as: name::encode(&stored_as),
                        received_at: now,
                        transfer: transfer.to_owned(),
                        latest: true,
                        previous: replaced.map(|r| Previous {
                            sha256: r.sha256,
                            stored_as: name::encode(&r.stored_as),
                        }),
                    },
                ));
                results.push(FileResult {
                    id,
                    outcome: Outcome::Stored { sha256, stored_as },
                });
                done.push(id);
            }
            Ok(Known::Journaled(stored_as)) => {
                Metrics::add(&shared.metrics.already_stored, 1);
                results.push(FileResult {
                    id,
                    outcome: Outcome::AlreadyStored { sha256, stored_as },
                });
                done.push(id);
            }
            Err(e) => {
                warn!(path = %catalog_path, error = %e, "storing failed");
                let _ = journal.record_failure(&station, &catalog_path, &e.to_string(), now);
                results.push(FileResult {
                    id,
                    outcome: Outcome::Failed(repository_error(e)),
                });
            }
        }
    }
    let done: HashSet<u32> = done.into_iter().collect();
    let done: Vec<Staged> = placed
        .into_iter()
        .filter(|(id, ..)| done.contains(id))
        .map(|(_, staged, ..)| staged)
        .collect();
    if !records.is_empty() {
        let batch: Vec<Record> = records.iter().map(|(_, r)| r.clone()).collect();
        if let Err(e) = journal.append(&batch) {
            warn!(error = %e, files = records.len(), "journal append failed; the batch is not acknowledged as stored");
            let failed: HashSet<u32> = records.iter().map(|(id, _)| *id).collect();
            for result in &mut results {
                if failed.contains(&result.id) {
                    let code = if e.is_disk_full() {
                        ErrorCode::DiskFull
                    } else {
                        ErrorCode::Internal
                    };
                    result.outcome =
                        Outcome::Failed(ErrorFrame::new(code, format!("journal: {e}")));
                }
            }
            // Staging files stay: the retry resumes at their full length.
            return results;
        }
        Metrics::add(&shared.metrics.files_stored, records.len() as u64);
        Metrics::add(
            &shared.metrics.bytes_stored,
            records.iter().map(|(_, r)| r.size).sum(),
        );
    }
    for staged in done {
        if let Err(e) = repository.discard(staged) {
            debug!(error = %e, "staging file left behind");
        }
    }
    results
}

/// How a committed file stands after placing.
#[derive(Clone)]
enum Known {
    /// The journal holds this content for the path already, here.
    Journaled(Vec<u8>),
    /// Placed now.
    Placed(Placement),
}

/// The bytes of a stored name the journal holds in text form.
fn stored_bytes(stored_as: &str) -> Vec<u8> {
    name::decode(stored_as).unwrap_or_else(|_| stored_as.as_bytes().to_vec())
}

/// The directory part of a repository-relative path.
fn parent_of(stored_as: &[u8]) -> &[u8] {
    match stored_as.iter().rposition(|&b| b == b'/') {
        Some(i) => &stored_as[..i],
        None => b"",
    }
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

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
