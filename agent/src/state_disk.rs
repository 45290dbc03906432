//! Whether the agent can write its state (the ledger, `BACKUP_DONE`,
//! `DUE_BACKUP`): when a write fails (the state disk is full, most often)
//! the sender stops offering files, since it could not record their acks,
//! and retries what it must record with a growing delay. One warning when
//! the trouble starts, one when it ends, whatever happens in between.
//!
//! What could not be recorded waits here or in the sender: files to return
//! to due after a batch that did not complete ([`StateDisk::unmark_later`]),
//! and whether the watcher lost observations (it rescans once the state can
//! be written again).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use tracing::warn;

use crate::ledger::FileKey;

/// Shared by the watcher and the sender.
#[derive(Debug, Default)]
pub struct StateDisk {
    /// A write failed and none has succeeded since.
    failing: AtomicBool,
    /// The watcher could not record what it saw: rescan once writable.
    missed: AtomicBool,
    /// Files of batches that did not complete, still `sent-pending` in the
    /// ledger because returning them to due failed.
    unmark: Mutex<Vec<FileKey>>,
}

impl StateDisk {
    /// A write of the agent's state failed: the first failure is logged,
    /// later ones are not until [`StateDisk::recovered`].
    pub fn failed(&self, error: &dyn std::fmt::Display) {
        if !self.failing.swap(true, Ordering::SeqCst) {
            warn!(%error, "cannot write the agent's state; sending paused until it can (retrying with backoff)");
        }
    }

    /// A write succeeded after failures: logged once.
    pub fn recovered(&self) {
        if self.failing.swap(false, Ordering::SeqCst) {
            warn!("the agent's state can be written again; sending resumes");
        }
    }

    /// Whether writes are failing.
    pub fn is_failing(&self) -> bool {
        self.failing.load(Ordering::SeqCst)
    }

    /// The watcher could not record an observation.
    pub fn missed(&self, error: &dyn std::fmt::Display) {
        self.failed(error);
        self.missed.store(true, Ordering::SeqCst);
    }

    /// Whether the watcher should rescan now: it missed observations and
    /// the state can be written again. Clears the request.
    pub fn rescan_now(&self) -> bool {
        !self.is_failing() && self.missed.swap(false, Ordering::SeqCst)
    }

    /// Files to return to due once the ledger can be written.
    pub fn unmark_later(&self, keys: &[FileKey]) {
        self.unmark_list().extend_from_slice(keys);
    }

    /// The files waiting to be returned to due (taken out of the list).
    pub fn take_unmark(&self) -> Vec<FileKey> {
        std::mem::take(&mut *self.unmark_list())
    }

    /// Row ids waiting to be returned to due: not to be offered meanwhile.
    pub fn unmark_ids(&self) -> Vec<i64> {
        self.unmark_list().iter().map(|k| k.id).collect()
    }

    fn unmark_list(&self) -> std::sync::MutexGuard<'_, Vec<FileKey>> {
        self.unmark.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Whether an I/O error means the disk (or the quota) is full.
pub fn is_full(error: &std::io::Error) -> bool {
    matches!(
        error.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
}
