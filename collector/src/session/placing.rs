//! Placing a complete batch beside its session: its staged files are made
//! durable and linked under their names, their records journaled in one
//! transaction, and only then is the batch acknowledged.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use ferry_common::clock::now_ms;
use ferry_common::link::{Peer, ServerSender};
use ferry_common::name;
use ferry_common::protocol::*;
use tracing::{debug, info, warn};

use crate::journal::{Previous, Record};
use crate::metrics::Metrics;
use crate::repository::{Placement, Repository, RepositoryError, Staged};
use crate::writer::repository_error;

use super::{Batch, Shared, stored_bytes};

/// A file of a batch, committed and verified, waiting for the rest of its
/// batch to be placed with it.
pub(super) struct Committed {
    /// Its id in the batch.
    pub(super) id: u32,
    pub(super) staged: Staged,
    /// The content it was verified to hold.
    pub(super) sha256: Sha256,
}

/// Places a complete batch (on a blocking thread), logs it and sends its ack.
pub(super) async fn finish_batch(
    shared: Arc<Shared>,
    sender: ServerSender,
    peer: Peer,
    transfer: String,
    batch_id: u64,
    mut batch: Batch,
) {
    let committed = std::mem::take(&mut batch.committed);
    let bytes: u64 = committed.iter().map(|c| c.staged.key.size).sum();
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
fn place_batch(shared: &Shared, committed: Vec<Committed>, transfer: &str) -> Vec<FileResult> {
    let repository = &shared.repository;
    let now = now_ms();
    let synced = {
        let staged: Vec<&Staged> = committed.iter().map(|c| &c.staged).collect();
        repository.sync_staged(&staged)
    };
    let _claim = repository.claim(committed.iter().map(|c| c.staged.key.plain_name()));
    let linked = link_all(shared, committed, synced);
    let dir_errors = sync_dirs(repository, &linked);
    let mut settled = Settled::default();
    for file in linked {
        settled.settle(shared, file, &dir_errors, now, transfer);
    }
    settled.journal(shared)
}

/// A committed file and the names the journal keys it by.
struct Named {
    file: Committed,
    /// The station.
    station: String,
    /// `<root>/<path>`, in the text form of names.
    catalog_path: String,
}

impl Named {
    fn new(file: Committed) -> Self {
        Self {
            station: file.staged.key.station.to_string(),
            catalog_path: file.staged.key.catalog_path(),
            file,
        }
    }
}

/// A committed file once its batch is linked.
struct Linked {
    named: Named,
    /// Journaled already, placed now, or failed.
    standing: Result<Known, RepositoryError>,
}

/// How a committed file stands after placing.
enum Known {
    /// The journal holds this content for the path already, here.
    Journaled(Vec<u8>),
    /// Placed now.
    Placed(Placement),
}

/// Links each committed file whose content synced, unless the journal
/// already holds that content for its path (asked for the whole batch at
/// once); `synced` holds each file's sync result, in order.
fn link_all(
    shared: &Shared,
    committed: Vec<Committed>,
    synced: Vec<Result<(), RepositoryError>>,
) -> Vec<Linked> {
    let journal = &shared.journal;
    let named: Vec<Named> = committed.into_iter().map(Named::new).collect();
    let keys: Vec<(&str, &str, &Sha256)> = named
        .iter()
        .map(|n| (n.station.as_str(), n.catalog_path.as_str(), &n.file.sha256))
        .collect();
    let known_all = journal
        .lookup_all(&keys)
        .unwrap_or_else(|_| vec![None; keys.len()]);
    let found = synced.into_iter().zip(known_all);
    named
        .into_iter()
        .zip(found)
        .map(|(named, (synced, known))| {
            let standing = match known {
                Some(stored_as) => Ok(Known::Journaled(stored_bytes(&stored_as))),
                None => synced
                    .and_then(|()| {
                        let file = &named.file;
                        shared.repository.link(&file.staged, &file.sha256, |name| {
                            journal.owner_of(name).ok().flatten()
                        })
                    })
                    .map(Known::Placed),
            };
            Linked { named, standing }
        })
        .collect()
}

/// Makes the links of the files placed durable: each directory once, named
/// by one of the files linked into it. Returns the errors, by directory.
fn sync_dirs(repository: &Repository, linked: &[Linked]) -> HashMap<Vec<u8>, RepositoryError> {
    let dirs: BTreeMap<&[u8], &[u8]> = linked
        .iter()
        .filter_map(|file| match &file.standing {
            Ok(Known::Placed(p)) => Some(p.stored_as()),
            _ => None,
        })
        .map(|stored_as| (parent_of(stored_as), stored_as))
        .collect();
    let files: Vec<&[u8]> = dirs.values().copied().collect();
    dirs.keys()
        .zip(repository.sync_parents(&files))
        .filter_map(|(dir, r)| r.err().map(|e| (dir.to_vec(), e)))
        .collect()
}

/// What placing decided for a batch.
#[derive(Default)]
struct Settled {
    /// Each file's result.
    results: Vec<FileResult>,
    /// The records of the files placed, journaled together.
    records: Vec<Record>,
    /// Staging files to remove once the records are journaled.
    done: Vec<Staged>,
}

impl Settled {
    /// Decides a file's result: stored (with its record), already stored,
    /// or failed.
    fn settle(
        &mut self,
        shared: &Shared,
        file: Linked,
        dir_errors: &HashMap<Vec<u8>, RepositoryError>,
        now: i64,
        transfer: &str,
    ) {
        let Linked { named, standing } = file;
        let placement = match standing {
            Ok(Known::Placed(placement)) => {
                match dir_errors.get(parent_of(placement.stored_as())) {
                    Some(error) => return self.fail(shared, &named, error, now),
                    None => placement,
                }
            }
            Ok(Known::Journaled(stored_as)) => {
                Metrics::add(&shared.metrics.already_stored, 1);
                self.results.push(FileResult {
                    id: named.file.id,
                    outcome: Outcome::AlreadyStored {
                        sha256: named.file.sha256,
                        stored_as,
                    },
                });
                self.done.push(named.file.staged);
                return;
            }
            Err(error) => return self.fail(shared, &named, &error, now),
        };
        let Named {
            file: Committed { id, staged, sha256 },
            station,
            catalog_path,
        } = named;
        let (stored_as, replaced) = match placement {
            Placement::Stored {
                stored_as,
                replaced,
            } => (stored_as, replaced),
            Placement::AlreadyThere { stored_as } => (stored_as, None),
        };
        self.records.push(Record {
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
        });
        self.results.push(FileResult {
            id,
            outcome: Outcome::Stored { sha256, stored_as },
        });
        self.done.push(staged);
    }

    /// Fails a file that could not be placed, recording the failure in the
    /// journal; its staging file stays.
    fn fail(&mut self, shared: &Shared, named: &Named, error: &RepositoryError, now: i64) {
        let (station, catalog_path) = (&named.station, &named.catalog_path);
        warn!(path = %catalog_path, error = %error, "storing failed");
        if let Err(journal_error) =
            shared
                .journal
                .record_failure(station, catalog_path, &error.to_string(), now)
        {
            warn!(path = %catalog_path, error = %journal_error, "file failure not recorded in the journal");
        }
        self.results.push(FileResult {
            id: named.file.id,
            outcome: Outcome::Failed(repository_error(error)),
        });
    }

    /// Journals the records in one transaction and removes the staging
    /// files of what is stored; returns each file's result. If the journal
    /// refuses the records, the files placed are reported failed and their
    /// staging files stay: the retry resumes at their full length.
    fn journal(self, shared: &Shared) -> Vec<FileResult> {
        let Settled {
            mut results,
            records,
            done,
        } = self;
        if !records.is_empty() {
            if let Err(e) = shared.journal.append(&records) {
                warn!(error = %e, files = records.len(), "journal append failed; the batch is not acknowledged as stored");
                let code = if e.is_disk_full() {
                    ErrorCode::DiskFull
                } else {
                    ErrorCode::Internal
                };
                // The files with a record are those reported stored.
                for result in &mut results {
                    if matches!(result.outcome, Outcome::Stored { .. }) {
                        result.outcome =
                            Outcome::Failed(ErrorFrame::new(code, format!("journal: {e}")));
                    }
                }
                return results;
            }
            Metrics::add(&shared.metrics.files_stored, records.len() as u64);
            Metrics::add(
                &shared.metrics.bytes_stored,
                records.iter().map(|r| r.size).sum(),
            );
        }
        for staged in done {
            if let Err(e) = shared.repository.discard(staged) {
                debug!(error = %e, "staging file left behind");
            }
        }
        results
    }
}

/// The directory part of a repository-relative path.
fn parent_of(stored_as: &[u8]) -> &[u8] {
    match stored_as.iter().rposition(|&b| b == b'/') {
        Some(i) => &stored_as[..i],
        None => b"",
    }
}
