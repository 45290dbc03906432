//! The repository: verified files under `<repository>/<station>/<root>/<path>`,
//! and the staging area where their bytes arrive first.
//!
//! Content is written to a staging file named after what was offered
//! (station, root, path, size, mtime), hashed as it is written, and on commit
//! fsynced and hard-linked under its final name. Paths are bytes: a name is
//! stored exactly as the station has it, UTF-8 or not.
//!
//! No stored version is ever lost, and the plain name holds the latest: new
//! content for a path whose plain name holds an older version first gives
//! that version its version name (`name.<12 hex of its sha256>.ext`, see
//! [`version_name`]) with a hard link, makes that link durable, and only then
//! renames the new content over the plain name. Every step can be repeated:
//! a collector killed between them finds, on the retry, the version name
//! already holding the old content and the plain name holding the old or the
//! new one, and completes the move. A staging file survives disconnects and
//! restarts, so a transfer resumes from the bytes already staged.
//!
//! Files of [`DIRECT_MIN`] bytes or more (`direct_io_min_bytes`) are staged
//! with direct I/O (`O_DIRECT`): their blocks go from the session's buffer
//! to the device without passing through the page cache. The collector
//! never reads them back, and copying into freshly allocated cache pages was
//! most of its CPU for large files (see BENCHMARKS.md). The last partial
//! block of a file is written through the page cache, as is everything where
//! the filesystem refuses direct I/O.
//!
//! Its parts: `path_check` (what a station may name), `staging` (staging
//! files, written through the page cache), `direct_io` (written past it),
//! `placement` (linking under the plain name or a version name),
//! `version_name`, and `sync` (group commits, or file by file). This module
//! holds the repository itself, the key a file is staged under, the claims
//! on plain names and the errors.

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Condvar, Mutex};

use ferry_common::name;
use ferry_common::station::StationId;

use crate::group_sync::{self, GroupSync};

mod direct_io;
mod path_check;
mod placement;
mod staging;
mod sync;
mod version_name;

pub use direct_io::DIRECT_MIN;
pub use path_check::{MAX_COMPONENT, MAX_PATH, PathError, check_path, check_root};
pub use placement::{Owner, Placement, Replaced};
pub use staging::Staged;
pub use version_name::version_name;

/// Failures of the repository's file operations.
#[derive(Debug, thiserror::Error)]
pub enum RepositoryError {
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error(
        "the repository {root} and the staging area {staging} are on different filesystems: staged files are hard-linked into the repository, so `repository` and `state_dir` must be on one filesystem"
    )]
    SplitFilesystems { root: PathBuf, staging: PathBuf },
    #[error("chunk at offset {offset} for {path} but {expected} bytes are staged")]
    OutOfOrder {
        path: PathBuf,
        offset: u64,
        expected: u64,
    },
    #[error("{path}: {got} bytes would exceed the offered size of {size}")]
    Oversize { path: PathBuf, got: u64, size: u64 },
}

impl RepositoryError {
    /// Whether the error is the disk (or quota) being full.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, RepositoryError::Io { source, .. }
            if matches!(source.raw_os_error(), Some(28) | Some(122)))
    }
}

fn io_err<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> RepositoryError + 'a {
    move |source| RepositoryError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// What a station offered, enough to name its staging file.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FileKey {
    pub station: StationId,
    pub root: String,
    /// The path below the root, as bytes.
    pub path: Vec<u8>,
    pub size: u64,
    pub mtime_ns: i64,
}

impl FileKey {
    /// The catalog path of the file: `<root>/<path>`, in the text form of
    /// names ([`ferry_common::name`]).
    pub fn catalog_path(&self) -> String {
        format!("{}/{}", self.root, name::encode(&self.path))
    }

    /// The plain name of the file in the repository:
    /// `<station>/<root>/<path>`, as bytes.
    pub fn plain_name(&self) -> Vec<u8> {
        let mut out = format!("{}/{}/", self.station, self.root).into_bytes();
        out.extend_from_slice(&self.path);
        out
    }
}

/// The repository root and its staging area.
#[derive(Debug, Clone)]
pub struct Repository {
    root: PathBuf,
    staging: PathBuf,
    /// Group commits of the staging area's and the root's filesystems.
    staging_sync: Arc<GroupSync>,
    root_sync: Arc<GroupSync>,
    /// Set where `syncfs` cannot stand in for each file's fsync (a kernel
    /// before 5.8, or `syncfs` refused): then every file and directory is
    /// fsynced on its own.
    file_by_file: Arc<AtomicBool>,
    /// Cleared once the filesystem refused direct I/O: files are then
    /// staged through the page cache.
    direct_io: Arc<AtomicBool>,
    /// Smallest file staged with direct I/O (configured; [`DIRECT_MIN`]
    /// unless set), `None` for none.
    direct_min: Option<u64>,
    /// Plain names being placed and journaled ([`Repository::claim`]).
    claims: Arc<(Mutex<HashSet<Vec<u8>>>, Condvar)>,
}

/// Plain names a batch places; released on drop.
#[derive(Debug)]
pub struct Claim<'a> {
    claims: &'a (Mutex<HashSet<Vec<u8>>>, Condvar),
    names: Vec<Vec<u8>>,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        let mut held = self.claims.0.lock().unwrap_or_else(|p| p.into_inner());
        for name in &self.names {
            held.remove(name);
        }
        self.claims.1.notify_all();
    }
}

impl Repository {
    /// Opens (creating if needed) a repository and its staging area.
    pub fn open(root: &Path, staging: &Path) -> Result<Self, RepositoryError> {
        for dir in [root, staging] {
            std::fs::create_dir_all(dir).map_err(io_err("create", dir))?;
        }
        let device = |dir: &Path| {
            std::fs::metadata(dir)
                .map(|m| std::os::unix::fs::MetadataExt::dev(&m))
                .map_err(io_err("stat", dir))
        };
        if device(root)? != device(staging)? {
            return Err(RepositoryError::SplitFilesystems {
                root: root.to_owned(),
                staging: staging.to_owned(),
            });
        }
        let group_sync = |dir: &Path| {
            GroupSync::filesystem_of(dir)
                .map_err(io_err("open", dir))
                .map(Arc::new)
        };
        let file_by_file = !group_sync::kernel_syncfs_reports_errors();
        if file_by_file {
            tracing::info!(
                "this kernel's syncfs does not report write errors (before Linux 5.8): stored files are fsynced one by one"
            );
        }
        Ok(Self {
            root: root.to_owned(),
            staging: staging.to_owned(),
            staging_sync: group_sync(staging)?,
            root_sync: group_sync(root)?,
            file_by_file: Arc::new(AtomicBool::new(file_by_file)),
            direct_io: Arc::new(AtomicBool::new(true)),
            direct_min: Some(DIRECT_MIN),
            claims: Arc::default(),
        })
    }

    /// Waits until none of the plain names `names` is being placed by
    /// another batch, and claims them until the returned guard drops.
    /// Placing a version and journaling it must not interleave with another
    /// version of the same path (the second would move the first before
    /// the journal knows it). Blocking.
    pub fn claim(&self, names: impl IntoIterator<Item = Vec<u8>>) -> Claim<'_> {
        let names: HashSet<Vec<u8>> = names.into_iter().collect();
        let (lock, freed) = &*self.claims;
        let mut held = lock.lock().unwrap_or_else(|p| p.into_inner());
        while names.iter().any(|n| held.contains(n)) {
            held = freed.wait(held).unwrap_or_else(|p| p.into_inner());
        }
        held.extend(names.iter().cloned());
        Claim {
            claims: &self.claims,
            names: names.into_iter().collect(),
        }
    }

    /// Stages files of `min` bytes or more with direct I/O, or none with
    /// `None`.
    pub fn with_direct_io(mut self, min: Option<u64>) -> Self {
        self.direct_min = min;
        self
    }

    /// The repository root.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use ferry_common::protocol::Sha256;

    use super::*;

    /// The key of `path` (of `size` bytes) under station s1's root
    /// "spectrum".
    pub(crate) fn key(path: &str, size: u64) -> FileKey {
        FileKey {
            station: StationId::new("s1").unwrap(),
            root: "spectrum".into(),
            path: path.into(),
            size,
            mtime_ns: 5,
        }
    }

    /// A repository in a fresh temporary directory (`repo`, staging in
    /// `staging`), and the directory, which removes both when dropped.
    pub(crate) fn scratch() -> (tempfile::TempDir, Repository) {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::open(&dir.path().join("repo"), &dir.path().join("staging")).unwrap();
        (dir, repo)
    }

    pub(crate) fn sha(data: &[u8]) -> Sha256 {
        let mut out = [0u8; 32];
        out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, data).as_ref());
        out
    }

    #[test]
    fn a_staging_area_on_another_filesystem_is_refused_at_open() {
        let dir = tempfile::tempdir().unwrap();
        // /dev/shm is a tmpfs of its own on Linux.
        let other = tempfile::tempdir_in("/dev/shm").unwrap();
        let device = |p: &Path| std::os::unix::fs::MetadataExt::dev(&std::fs::metadata(p).unwrap());
        assert_ne!(
            device(dir.path()),
            device(other.path()),
            "the test needs /dev/shm on a filesystem other than the temp dir's"
        );
        let error =
            Repository::open(&dir.path().join("repo"), &other.path().join("staging")).unwrap_err();
        assert!(
            matches!(error, RepositoryError::SplitFilesystems { .. }),
            "{error}"
        );
        assert!(error.to_string().contains("state_dir"), "{error}");
    }
}
