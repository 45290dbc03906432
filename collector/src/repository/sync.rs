//! Sync: making staged content and the links placed durable, with one group
//! `syncfs` shared by every batch that asks at once, or file by file where
//! `syncfs` cannot stand in for each file's fsync.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::Ordering;

use crate::group_sync::GroupSync;

use super::staging::Staged;
use super::{Repository, RepositoryError, io_err};

impl Repository {
    /// Makes the content of `staged` files durable with one group `syncfs`
    /// of the staging filesystem (shared with other batches syncing at the
    /// same time). If that fails, or `syncfs` is not in use, each file is
    /// fsynced on its own, so each gets its own result (one full disk need
    /// not fail them all).
    pub fn sync_staged(&self, staged: &[&Staged]) -> Vec<Result<(), RepositoryError>> {
        if self.group_commit(&self.staging_sync) {
            return staged.iter().map(|_| Ok(())).collect();
        }
        in_parallel(staged, |s| s.sync())
    }

    /// Makes the links made for `stored` (paths relative to the root)
    /// durable with one group `syncfs` of the repository's filesystem, or
    /// else by fsyncing each path's directory.
    pub fn sync_parents(&self, stored: &[&[u8]]) -> Vec<Result<(), RepositoryError>> {
        if self.group_commit(&self.root_sync) {
            return stored.iter().map(|_| Ok(())).collect();
        }
        in_parallel(stored, |s| self.sync_parent(s))
    }

    /// One group `syncfs` round; false if the caller must fsync file by
    /// file instead. A `syncfs` refused outright (a seccomp filter, an
    /// unsupported filesystem) is not tried again.
    fn group_commit(&self, sync: &GroupSync) -> bool {
        if self.file_by_file.load(Ordering::Relaxed) {
            return false;
        }
        match sync.sync() {
            Ok(()) => true,
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::PermissionDenied | io::ErrorKind::Unsupported
                ) =>
            {
                self.file_by_file.store(true, Ordering::Relaxed);
                tracing::warn!(%error, "syncfs refused; stored files are fsynced one by one from now on");
                false
            }
            Err(error) => {
                tracing::warn!(%error, "syncfs failed; syncing file by file");
                false
            }
        }
    }

    /// Fsyncs the directory holding `stored_as` (relative to the root), so
    /// a link made in it survives a crash.
    pub fn sync_parent(&self, stored_as: &[u8]) -> Result<(), RepositoryError> {
        let target = self.root.join(OsStr::from_bytes(stored_as));
        sync_dir(target.parent().unwrap_or(&self.root))
    }
}

/// Runs `f` on every item, on up to eight threads at once, and returns the
/// results in order. Fsyncs issued together let the filesystem group them.
fn in_parallel<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    const THREADS: usize = 8;
    if items.len() <= 1 {
        return items.iter().map(&f).collect();
    }
    let per_thread = items.len().div_ceil(THREADS);
    std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .chunks(per_thread)
            .map(|part| scope.spawn(|| part.iter().map(&f).collect::<Vec<R>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| {
                h.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    })
}

pub(super) fn sync_dir(dir: &Path) -> Result<(), RepositoryError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync", dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repository::tests::{key, scratch};

    #[test]
    fn file_by_file_syncing_gives_each_path_its_own_result() {
        let (dir, repo) = scratch();
        std::fs::create_dir_all(dir.path().join("repo/s1/a")).unwrap();
        let paths: [&[u8]; 3] = [b"s1/a/x.bin", b"s1/gone/y.bin", b"s1/a/z.bin"];
        // A group syncfs covers the whole filesystem: one result for all.
        repo.file_by_file.store(false, Ordering::Relaxed);
        assert!(repo.sync_parents(&paths).iter().all(Result::is_ok));
        // File by file, only the path whose directory is missing fails.
        repo.file_by_file.store(true, Ordering::Relaxed);
        let results = repo.sync_parents(&paths);
        assert_eq!(results.len(), 3);
        assert!(results[0].is_ok() && results[2].is_ok(), "{results:?}");
        assert!(results[1].is_err(), "{results:?}");

        let k = key("b.bin", 4);
        let mut staged = repo.stage(k).unwrap();
        staged.write(0, b"data").unwrap();
        assert_eq!(repo.sync_staged(&[&staged]).len(), 1);
        assert!(repo.sync_staged(&[&staged])[0].is_ok());
    }
}
