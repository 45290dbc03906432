//! The repository: verified files under `<repository>/<station>/<root>/<path>`,
//! and the staging area where their bytes arrive first.
//!
//! Content is written to a staging file named after what was offered
//! (station, root, path, size, mtime), hashed as it is written, and on commit
//! fsynced and hard-linked under its final name. A hard link never replaces an
//! existing file, so nothing stored is ever overwritten: new content for a
//! path that is taken goes beside it, under a name carrying a short hash of
//! the content. A staging file survives disconnects and restarts, so a
//! transfer resumes from the bytes already staged.
//!
//! Files of [`DIRECT_MIN`] bytes or more (`direct_io_min_bytes`) are staged
//! with direct I/O (`O_DIRECT`): their blocks go from the session's buffer
//! to the device without passing through the page cache. The collector
//! never reads them back, and copying into freshly allocated cache pages was
//! most of its CPU for large files (see BENCHMARKS.md). The last partial
//! block of a file is written through the page cache, as is everything where
//! the filesystem refuses direct I/O.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use ferry_common::protocol::Sha256;
use ferry_common::station::StationId;

use crate::group_sync::{self, GroupSync};

/// Longest relative path accepted, in bytes.
pub const MAX_PATH: usize = 4096;
/// Longest single path component accepted, in bytes (the usual NAME_MAX).
pub const MAX_COMPONENT: usize = 255;
/// Hex digits of the content hash put in the name of a file stored beside
/// another with the same path.
const SHORT_HASH: usize = 12;

/// Why a path offered by a station is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path is empty")]
    Empty,
    #[error("path {0:?} is absolute")]
    Absolute(String),
    #[error("path {0:?} contains a NUL byte")]
    Nul(String),
    #[error("path {0:?} has a '.' or '..' component")]
    DotComponent(String),
    #[error("path {0:?} has an empty component")]
    EmptyComponent(String),
    #[error("path {0:?} contains a backslash")]
    Backslash(String),
    #[error("path is {len} bytes long, the limit is {MAX_PATH}")]
    TooLong { len: usize },
    #[error("path {path:?} has a component of {len} bytes, the limit is {MAX_COMPONENT}")]
    ComponentTooLong { path: String, len: usize },
    #[error("root name {0:?} is not valid: {1}")]
    Root(String, String),
}

/// Checks a station-relative path and returns it unchanged if it is safe to
/// join under the station's area. Nothing is rewritten: a path that would
/// need normalising is refused, so the stored name is always the offered one.
pub fn check_path(path: &str) -> Result<&str, PathError> {
    if path.is_empty() {
        return Err(PathError::Empty);
    }
    if path.len() > MAX_PATH {
        return Err(PathError::TooLong { len: path.len() });
    }
    if path.contains('\0') {
        return Err(PathError::Nul(path.into()));
    }
    if path.starts_with('/') {
        return Err(PathError::Absolute(path.into()));
    }
    if path.contains('\\') {
        // Not a separator here, but one on the systems that read the
        // repository over SMB; refuse rather than create ambiguous names.
        return Err(PathError::Backslash(path.into()));
    }
    for component in path.split('/') {
        match component {
            "" => return Err(PathError::EmptyComponent(path.into())),
            "." | ".." => return Err(PathError::DotComponent(path.into())),
            c if c.len() > MAX_COMPONENT => {
                return Err(PathError::ComponentTooLong {
                    path: path.into(),
                    len: c.len(),
                });
            }
            _ => {}
        }
    }
    Ok(path)
}

/// Checks a root name: the same rules as station ids (one safe component).
pub fn check_root(root: &str) -> Result<&str, PathError> {
    StationId::new(root).map_err(|e| PathError::Root(root.into(), e.to_string()))?;
    Ok(root)
}

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
    pub path: String,
    pub size: u64,
    pub mtime_ns: i64,
}

impl FileKey {
    /// The catalog path of the file: `<root>/<path>`.
    pub fn catalog_path(&self) -> String {
        format!("{}/{}", self.root, self.path)
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
}

/// A file being received: its staging file, open for appending, and the hash
/// of everything written so far.
pub struct Staged {
    pub key: FileKey,
    pub path: PathBuf,
    file: File,
    len: u64,
    hash: ring::digest::Context,
    /// Staged bytes before this offset have been handed to writeback.
    flushed: u64,
    /// Set while the file is written with direct I/O.
    direct: Option<Direct>,
}

/// Staging files this large or larger are written with direct I/O unless
/// configured otherwise (`direct_io_min_bytes`).
pub const DIRECT_MIN: u64 = 64 << 10;

/// Alignment of direct I/O: buffer address, file offset and length. 4096
/// covers the logical block size of every common device.
const ALIGN: usize = 4096;
// Chunks the codec copies out of their frames land at aligned addresses so
// that they are written from where they are (see `Staged::write_direct`).
const _: () = assert!(ferry_common::codec::CHUNK_ALIGN.is_multiple_of(ALIGN));

/// A staging file written past the page cache (`O_DIRECT`). Direct I/O
/// needs an aligned buffer, offset and length: a chunk that starts a block
/// at an aligned address is written from where it is, any other is copied
/// into an aligned bounce buffer; whole blocks are written at once and only the
/// bytes of a partial block (a chunk size that is not a multiple of
/// [`ALIGN`]) wait in memory for the next chunk. The file's length on disk
/// therefore stays a multiple of [`ALIGN`] until its last block, which is
/// written through the page cache; a resumed file starts from that length.
struct Direct {
    /// The bounce buffer: `buf[start..]` holds the bytes received and hashed
    /// but not yet written, always fewer than [`ALIGN`] between chunks.
    buf: Vec<u8>,
    /// Offset of the first aligned byte of `buf`'s allocation.
    start: usize,
    /// The repository's switch, cleared if the filesystem refuses a direct
    /// write.
    enabled: Arc<AtomicBool>,
}

impl Direct {
    /// Bytes waiting for the rest of their block.
    fn pending(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Appends `data` behind the waiting bytes, moving them to a larger
    /// aligned allocation first if needed. The buffer never grows past its
    /// capacity, so its address, and with it the alignment, stays put.
    fn append(&mut self, data: &[u8]) {
        let need = self.pending() + data.len();
        if self.buf.capacity() - self.start < need {
            let mut bigger: Vec<u8> = Vec::with_capacity(need + ALIGN);
            let start = bigger.as_ptr().align_offset(ALIGN);
            bigger.resize(start, 0);
            bigger.extend_from_slice(&self.buf[self.start..]);
            self.buf = bigger;
            self.start = start;
        }
        self.buf.extend_from_slice(data);
    }

    /// Drops the first `n` waiting bytes (written), keeping the rest at the
    /// aligned start.
    fn consume(&mut self, n: usize) {
        self.buf.copy_within(self.start + n.., self.start);
        self.buf.truncate(self.buf.len() - n);
    }
}

/// Staged bytes handed to the kernel's writeback at a time: a large file's
/// final fsync then waits for the last few MiB, not the whole file.
const WRITEBACK_STEP: u64 = 4 << 20;

/// Where committed content ended up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// Newly linked under `stored_as` (relative to the repository root).
    Stored { stored_as: String },
    /// The same content already sits at `stored_as`.
    AlreadyThere { stored_as: String },
}

impl Placement {
    /// Where the content is, relative to the repository root.
    pub fn stored_as(&self) -> &str {
        match self {
            Self::Stored { stored_as } | Self::AlreadyThere { stored_as } => stored_as,
        }
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
        })
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

    /// Bytes already staged for `key` (0 if none), without opening it.
    pub fn staged_len(&self, key: &FileKey) -> u64 {
        std::fs::metadata(self.staging_path(key))
            .map(|m| m.len())
            .unwrap_or(0)
            .min(key.size)
    }

    /// Opens the staging file for `key`, hashing what it already holds.
    pub fn stage(&self, key: FileKey) -> Result<Staged, RepositoryError> {
        let path = self.staging_path(&key);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io_err("create", dir))?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(io_err("open", &path))?;
        let mut len = file.metadata().map_err(io_err("stat", &path))?.len();
        if len > key.size {
            // Cannot be this offer's prefix; start over.
            file.set_len(0).map_err(io_err("truncate", &path))?;
            len = 0;
        }
        let mut hash = ring::digest::Context::new(&ring::digest::SHA256);
        // A buffer only for a resumed file: most staged files start empty,
        // and a fresh 256 KiB buffer per file costs page faults and zeroing.
        let mut buf = if len > 0 {
            vec![0u8; 256 * 1024]
        } else {
            Vec::new()
        };
        let mut left = len;
        while left > 0 {
            let n = file.read(&mut buf).map_err(io_err("read", &path))?;
            if n == 0 {
                break;
            }
            hash.update(&buf[..n]);
            left = left.saturating_sub(n as u64);
        }
        // Direct I/O from here on if the file is large enough and what is
        // staged ends on a block boundary (it does, unless it was staged
        // through the page cache).
        let direct = (self.direct_io.load(Ordering::Relaxed)
            && self.direct_min.is_some_and(|min| key.size - len >= min)
            && len % ALIGN as u64 == 0)
            .then(|| set_direct(&file, true))
            .and_then(|set| match set {
                Ok(()) => Some(Direct {
                    buf: Vec::new(),
                    start: 0,
                    enabled: self.direct_io.clone(),
                }),
                Err(error) => {
                    direct_refused(&self.direct_io, &path, &error);
                    None
                }
            });
        Ok(Staged {
            key,
            path,
            file,
            len,
            hash,
            flushed: len,
            direct,
        })
    }

    fn staging_path(&self, key: &FileKey) -> PathBuf {
        let mut id = ring::digest::Context::new(&ring::digest::SHA256);
        for part in [key.root.as_bytes(), key.path.as_bytes()] {
            id.update(&(part.len() as u64).to_le_bytes());
            id.update(part);
        }
        id.update(&key.size.to_le_bytes());
        id.update(&key.mtime_ns.to_le_bytes());
        self.staging
            .join(key.station.as_str())
            .join(format!("{}.part", hex(&id.finish().as_ref()[..16])))
    }

    /// Links verified, fsynced content under its final name, or finds the
    /// same content already there, and fsyncs the directory. `known`
    /// answers what content a stored name holds, if the journal knows (else
    /// the file is hashed).
    pub fn place(
        &self,
        staged: &Staged,
        sha256: &Sha256,
        known: impl Fn(&str) -> Option<Sha256>,
    ) -> Result<Placement, RepositoryError> {
        let placement = self.link(staged, sha256, known)?;
        self.sync_parent(placement.stored_as())?;
        Ok(placement)
    }

    /// [`Repository::place`] without the directory fsync: a batch links all
    /// its files, then makes the links durable together with
    /// [`Repository::sync_parents`] before anything is acknowledged.
    pub fn link(
        &self,
        staged: &Staged,
        sha256: &Sha256,
        known: impl Fn(&str) -> Option<Sha256>,
    ) -> Result<Placement, RepositoryError> {
        let key = &staged.key;
        let primary = format!("{}/{}/{}", key.station, key.root, key.path);
        let target = self.root.join(&primary);
        let dir = target.parent().unwrap_or(&self.root).to_owned();
        self.create_dirs(&dir)?;
        for stored_as in [primary.clone(), beside(&primary, sha256)] {
            let target = self.root.join(&stored_as);
            match std::fs::hard_link(&staged.path, &target) {
                Ok(()) => return Ok(Placement::Stored { stored_as }),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    let there = match known(&stored_as) {
                        Some(sha) => sha,
                        None => hash_file(&target)?,
                    };
                    if &there == sha256 {
                        return Ok(Placement::AlreadyThere { stored_as });
                    }
                }
                Err(e) => return Err(io_err("link", &target)(e)),
            }
        }
        // Both the path and its hashed sibling hold other content: only a
        // 48-bit hash-prefix collision gets here. Use the full hash.
        let stored_as = beside_full(&primary, sha256);
        let target = self.root.join(&stored_as);
        match std::fs::hard_link(&staged.path, &target) {
            Ok(()) => Ok(Placement::Stored { stored_as }),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                Ok(Placement::AlreadyThere { stored_as })
            }
            Err(e) => Err(io_err("link", &target)(e)),
        }
    }

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
    pub fn sync_parents(&self, stored: &[&str]) -> Vec<Result<(), RepositoryError>> {
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
    pub fn sync_parent(&self, stored_as: &str) -> Result<(), RepositoryError> {
        let target = self.root.join(stored_as);
        sync_dir(target.parent().unwrap_or(&self.root))
    }

    /// Removes the staging file of `key`, if any: its content turned out to
    /// be stored already (a crash came between the journal and the clean-up).
    pub fn drop_staged(&self, key: &FileKey) {
        let _ = std::fs::remove_file(self.staging_path(key));
    }

    /// Removes a staging file once its content is placed (or refused).
    pub fn discard(&self, staged: Staged) -> Result<(), RepositoryError> {
        let path = staged.path.clone();
        drop(staged);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("remove", &path)(e)),
        }
    }

    /// Creates `dir` and any missing parents, fsyncing each new entry's
    /// parent so the directories survive a crash.
    fn create_dirs(&self, dir: &Path) -> Result<(), RepositoryError> {
        if dir.is_dir() {
            return Ok(());
        }
        if let Some(parent) = dir.parent() {
            self.create_dirs(parent)?;
        }
        match std::fs::create_dir(dir) {
            Ok(()) => sync_dir(dir.parent().unwrap_or(dir)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(io_err("create", dir)(e)),
        }
    }
}

impl std::fmt::Debug for Staged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Staged")
            .field("key", &self.key)
            .field("path", &self.path)
            .field("len", &self.len)
            .finish()
    }
}

impl Staged {
    /// Bytes staged so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing is staged yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends a chunk that must start where the staged bytes end.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), RepositoryError> {
        if offset != self.len {
            return Err(RepositoryError::OutOfOrder {
                path: self.path.clone(),
                offset,
                expected: self.len,
            });
        }
        let got = self.len + data.len() as u64;
        if got > self.key.size {
            return Err(RepositoryError::Oversize {
                path: self.path.clone(),
                got,
                size: self.key.size,
            });
        }
        if let Some(mut direct) = self.direct.take() {
            let result = self.write_direct(&mut direct, data, got);
            // Direct I/O goes on unless the file is complete or fell back
            // to the page cache.
            if !matches!(result, Ok(false)) {
                self.direct = Some(direct);
            }
            return result.map(drop);
        }
        if let Err(e) = self.file.write_all(data) {
            // Leave no torn tail: the staged length must match the hash.
            let _ = self.file.set_len(self.len);
            return Err(io_err("write", &self.path)(e));
        }
        self.hash.update(data);
        self.len = got;
        if self.len - self.flushed >= WRITEBACK_STEP {
            self.start_writeback();
        }
        Ok(())
    }

    /// [`Staged::write`] with direct I/O: the chunk's whole blocks go to
    /// the device now, the bytes of a partial block wait for the next
    /// chunk, and the file's last partial block, once it has arrived, goes
    /// through the page cache. After an error the staged file holds only
    /// whole blocks that were written and must be staged again (the session
    /// drops it with the file's failure). Returns whether the file goes on
    /// with direct I/O.
    fn write_direct(
        &mut self,
        direct: &mut Direct,
        data: &[u8],
        got: u64,
    ) -> Result<bool, RepositoryError> {
        let on_disk = self.len - direct.pending() as u64;
        // A chunk that starts a block, at an aligned address (where the
        // codec copies chunks to), is written from where it is; any other
        // is copied behind the bytes waiting in the bounce buffer.
        let in_place = direct.pending() == 0 && data.as_ptr().align_offset(ALIGN) == 0;
        let unwritten: &[u8] = if in_place {
            data
        } else {
            direct.append(data);
            &direct.buf[direct.start..]
        };
        let whole = unwritten.len() / ALIGN * ALIGN;
        let overlap = self.key.size >= OVERLAP_FILE_MIN && data.len() >= OVERLAP_MIN;
        let (mut written, hashed) =
            write_hashing(&self.file, &unwritten[..whole], &self.hash, data, overlap);
        if let Err(e) = &written
            && e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error())
        {
            // The filesystem takes no direct I/O after all (alignment or
            // support): go through the page cache, here and from now on.
            direct_refused(&direct.enabled, &self.path, e);
            written = self
                .file
                .set_len(on_disk)
                .and_then(|()| set_direct(&self.file, false))
                .and_then(|()| (&self.file).write_all(unwritten));
            if written.is_ok() {
                advance(&mut self.hash, hashed, data);
                self.len = got;
                return Ok(false);
            }
        }
        if let Err(e) = written {
            let _ = self.file.set_len(on_disk);
            return Err(io_err("write", &self.path)(e));
        }
        if in_place {
            direct.append(&data[whole..]);
        } else {
            direct.consume(whole);
        }
        let complete = got == self.key.size;
        if complete && direct.pending() > 0 {
            // The tail block, through the page cache (direct I/O needs
            // whole blocks); the buffer goes with the direct state.
            let tail = set_direct(&self.file, false)
                .and_then(|()| self.file.write_all(&direct.buf[direct.start..]));
            if let Err(e) = tail {
                let _ = self.file.set_len(on_disk + whole as u64);
                return Err(io_err("write", &self.path)(e));
            }
        }
        advance(&mut self.hash, hashed, data);
        self.len = got;
        Ok(!complete)
    }

    /// Starts writing the staged bytes not yet handed to writeback, without
    /// waiting for them: `POSIX_FADV_DONTNEED` on dirty pages starts their
    /// writeback on Linux (and drops clean ones from the page cache, which
    /// the collector will not read again). Only a hint: the fsync before the
    /// ack is what makes the content durable, so a failure here is ignored.
    fn start_writeback(&mut self) {
        let len = std::num::NonZeroU64::new(self.len - self.flushed);
        let _ = rustix::fs::fadvise(&self.file, self.flushed, len, rustix::fs::Advice::DontNeed);
        self.flushed = self.len;
    }

    /// The SHA-256 of everything staged (the hash state goes on).
    pub fn sha256(&self) -> Sha256 {
        let mut out = [0u8; 32];
        out.copy_from_slice(self.hash.clone().finish().as_ref());
        out
    }

    /// Flushes the staged content to disk.
    pub fn sync(&self) -> Result<(), RepositoryError> {
        self.file.sync_data().map_err(io_err("fsync", &self.path))
    }
}

/// Chunks this large of files of [`OVERLAP_FILE_MIN`] or more are hashed on
/// a second thread while their blocks go to the device: a direct write of
/// 1 MiB waits about as long as hashing it takes, and a thread per chunk
/// costs a few tens of microseconds.
const OVERLAP_MIN: usize = 256 << 10;

/// Files this large are few at a time, so the session's lanes (one file
/// each) leave a core idle while one waits for the device. Smaller files
/// keep both lanes busy and a thread per chunk would only cost CPU (200
/// files of 5 MiB: 4% slower).
const OVERLAP_FILE_MIN: u64 = 64 << 20;

/// Writes `blocks` to `file`; if `overlap`, it meanwhile hashes the chunk
/// (`data`) into a copy of `hash` on a second thread. Returns the write's
/// result and the copy, once it holds the chunk (`None`: hash the chunk
/// after all).
fn write_hashing(
    file: &File,
    blocks: &[u8],
    hash: &ring::digest::Context,
    data: &[u8],
    overlap: bool,
) -> (io::Result<()>, Option<ring::digest::Context>) {
    if !overlap || blocks.is_empty() {
        return ((&*file).write_all(blocks), None);
    }
    let mut next = hash.clone();
    let (written, hashed) = std::thread::scope(|scope| {
        let hashing = std::thread::Builder::new().spawn_scoped(scope, || next.update(data));
        let written = (&*file).write_all(blocks);
        (written, hashing.is_ok_and(|h| h.join().is_ok()))
    });
    (written, hashed.then_some(next))
}

/// Moves `hash` past `data`: takes the copy [`write_hashing`] made, or
/// hashes `data` here.
fn advance(hash: &mut ring::digest::Context, hashed: Option<ring::digest::Context>, data: &[u8]) {
    match hashed {
        Some(next) => *hash = next,
        None => hash.update(data),
    }
}

/// Turns direct I/O off for the repository (`enabled`) after the
/// filesystem refused it for `path`.
fn direct_refused(enabled: &AtomicBool, path: &Path, error: &io::Error) {
    enabled.store(false, Ordering::Relaxed);
    tracing::warn!(path = %path.display(), %error, "direct I/O refused; staging through the page cache from now on");
}

/// Switches direct I/O (`O_DIRECT`) on or off for an open file.
fn set_direct(file: &File, on: bool) -> io::Result<()> {
    let flags = rustix::fs::fcntl_getfl(file)?;
    let flags = if on {
        flags | rustix::fs::OFlags::DIRECT
    } else {
        flags - rustix::fs::OFlags::DIRECT
    };
    rustix::fs::fcntl_setfl(file, flags).map_err(io::Error::from)
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

fn sync_dir(dir: &Path) -> Result<(), RepositoryError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync", dir))
}

fn hash_file(path: &Path) -> Result<Sha256, RepositoryError> {
    let mut file = File::open(path).map_err(io_err("open", path))?;
    let mut hash = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = file.read(&mut buf).map_err(io_err("read", path))?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(hash.finish().as_ref());
    Ok(out)
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `dir/name.ext` → `dir/name.<short hash>.ext` (or `name.<hash>` without an
/// extension), so the sibling still opens with the same tools.
fn beside(path: &str, sha256: &Sha256) -> String {
    with_tag(path, &hex(sha256)[..SHORT_HASH])
}

fn beside_full(path: &str, sha256: &Sha256) -> String {
    with_tag(path, &hex(sha256))
}

fn with_tag(path: &str, tag: &str) -> String {
    let (dir, name) = match path.rsplit_once('/') {
        Some((dir, name)) => (Some(dir), name),
        None => (None, path),
    };
    let tagged = match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => format!("{stem}.{tag}.{ext}"),
        _ => format!("{name}.{tag}"),
    };
    match dir {
        Some(dir) => format!("{dir}/{tagged}"),
        None => tagged,
    }
}

#[cfg(test)]
pub(crate) mod tests {
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

    pub(crate) fn sha(data: &[u8]) -> Sha256 {
        let mut out = [0u8; 32];
        out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, data).as_ref());
        out
    }

    #[test]
    fn hostile_paths_are_refused() {
        let long_component = "x".repeat(256);
        let long_path = "a/".repeat(2049);
        for (path, what) in [
            ("", "empty"),
            ("/etc/passwd", "absolute"),
            ("../other/x", "'..'"),
            ("a/../../x", "'..'"),
            ("a/./b", "'.'"),
            ("a//b", "empty component"),
            ("a/", "empty component"),
            ("a\0b", "NUL"),
            ("a\\..\\b", "backslash"),
            (long_component.as_str(), "component of 256"),
            (long_path.as_str(), "limit is 4096"),
        ] {
            let err = check_path(path).unwrap_err().to_string();
            assert!(err.contains(what), "{path:?}: {err}");
        }
        for path in [
            "a",
            "2022/03/rfeye002073_220307_T175758.bin",
            "ünï cödé/..x/x..",
            "line\nbreak",
        ] {
            assert_eq!(check_path(path), Ok(path));
        }
        assert!(check_root("..").is_err());
        assert!(check_root("spectrum").is_ok());
    }

    #[test]
    fn a_staged_file_resumes_with_its_hash_and_is_placed_under_its_final_name() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::open(&dir.path().join("repo"), &dir.path().join("staging")).unwrap();
        let data = b"hello ferry, this is a measurement".to_vec();
        let k = key("2022/a.bin", data.len() as u64);
        let mut staged = repo.stage(k.clone()).unwrap();
        staged.write(0, &data[..10]).unwrap();
        drop(staged);
        assert_eq!(repo.staged_len(&k), 10);

        let mut staged = repo.stage(k.clone()).unwrap();
        assert_eq!(staged.len(), 10);
        assert!(matches!(
            staged.write(0, &data[..5]),
            Err(RepositoryError::OutOfOrder { expected: 10, .. })
        ));
        staged.write(10, &data[10..]).unwrap();
        assert!(matches!(
            staged.write(data.len() as u64, b"x"),
            Err(RepositoryError::Oversize { .. })
        ));
        assert_eq!(staged.sha256(), sha(&data));
        staged.sync().unwrap();
        let placed = repo.place(&staged, &sha(&data), |_| None).unwrap();
        assert_eq!(
            placed,
            Placement::Stored {
                stored_as: "s1/spectrum/2022/a.bin".into()
            }
        );
        repo.discard(staged).unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("repo/s1/spectrum/2022/a.bin")).unwrap(),
            data
        );
        assert_eq!(repo.staged_len(&k), 0);
    }

    /// Syncs and places `staged`, which holds `data`, and checks that the
    /// stored file holds it.
    fn places_what_came(repo: &Repository, staged: Staged, data: &[u8]) {
        staged.sync().unwrap();
        let placed = repo.place(&staged, &sha(data), |_| None).unwrap();
        repo.discard(staged).unwrap();
        assert_eq!(
            std::fs::read(repo.root().join(placed.stored_as())).unwrap(),
            data
        );
    }

    fn is_direct(staged: &Staged) -> bool {
        rustix::fs::fcntl_getfl(&staged.file)
            .unwrap()
            .contains(rustix::fs::OFlags::DIRECT)
    }

    #[test]
    fn large_chunks_of_a_large_file_hashed_beside_their_direct_writes_hash_and_store_what_came() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::open(&dir.path().join("repo"), &dir.path().join("staging")).unwrap();
        // A small chunk first, so the large ones start mid-block; then
        // chunks over OVERLAP_MIN, the last one ending in a partial block,
        // all of a file of OVERLAP_FILE_MIN, of which this is the start.
        let data: Vec<u8> = (0..(3 << 20) + 5000u32)
            .map(|i| (i * 13 % 253) as u8)
            .collect();
        let k = key("large.bin", OVERLAP_FILE_MIN);
        let mut staged = repo.stage(k).unwrap();
        assert!(is_direct(&staged));
        let cuts = [0, 1000, 1000 + (1 << 20), 1000 + (2 << 20), data.len()];
        for pair in cuts.windows(2) {
            staged
                .write(pair[0] as u64, &data[pair[0]..pair[1]])
                .unwrap();
        }
        assert_eq!(staged.sha256(), sha(&data));
        assert_eq!(staged.len(), data.len() as u64);
        // On disk: every whole block, as it came (the partial last block
        // waits for the rest of the file); a resume hashes it the same.
        let path = staged.path.clone();
        drop(staged);
        let whole = data.len() / ALIGN * ALIGN;
        assert_eq!(std::fs::read(&path).unwrap(), &data[..whole]);
        let staged = repo.stage(key("large.bin", OVERLAP_FILE_MIN)).unwrap();
        assert_eq!(staged.sha256(), sha(&data[..whole]));
    }

    #[test]
    fn chunks_at_aligned_addresses_are_written_from_where_they_are_and_store_what_came() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::open(&dir.path().join("repo"), &dir.path().join("staging")).unwrap();
        let data: Vec<u8> = (0..50 * 4096 + 777u32)
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let k = key("aligned.bin", data.len() as u64);
        let mut staged = repo.stage(k).unwrap();
        assert!(is_direct(&staged));
        // Chunks copied to aligned addresses, as the codec hands them over:
        // whole blocks (written in place); one ending mid-block (written in
        // place, its tail waits); one behind that tail (through the bounce
        // buffer, ending on a block boundary); and the last, in place, whose
        // partial block goes through the page cache.
        let cuts = [0, 8 * 4096, 8 * 4096 + 5000, 12 * 4096, data.len()];
        for (n, pair) in cuts.windows(2).enumerate() {
            let chunk = ferry_common::codec::aligned_copy(&data[pair[0]..pair[1]]);
            assert_eq!(chunk.as_ptr().align_offset(ALIGN), 0);
            staged.write(pair[0] as u64, &chunk).unwrap();
            let on_disk = std::fs::metadata(&staged.path).unwrap().len();
            let expected = [8 * 4096, 9 * 4096, 12 * 4096, data.len() as u64][n];
            assert_eq!(on_disk, expected, "after chunk {n}");
        }
        assert!(!is_direct(&staged));
        assert_eq!(staged.sha256(), sha(&data));
        places_what_came(&repo, staged, &data);
    }

    #[test]
    fn a_large_file_is_staged_past_the_page_cache_and_resumes_from_its_last_whole_block() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::open(&dir.path().join("repo"), &dir.path().join("staging")).unwrap();
        // Not a multiple of the block size, so the file ends in a partial block.
        let data: Vec<u8> = (0..300_001u32).map(|i| (i * 31 % 251) as u8).collect();
        let k = key("big.bin", data.len() as u64);
        let mut staged = repo.stage(k.clone()).unwrap();
        assert!(
            is_direct(&staged),
            "a file of {} bytes is staged with O_DIRECT",
            data.len()
        );
        // Chunks that end mid-block: their partial blocks wait in memory.
        staged.write(0, &data[..5000]).unwrap();
        staged.write(5000, &data[5000..70_000]).unwrap();
        assert_eq!(staged.len(), 70_000);
        // 17 whole blocks of 4096 bytes are on disk, 368 bytes wait.
        assert_eq!(std::fs::metadata(&staged.path).unwrap().len(), 69_632);
        // Cut here: what was held in memory is gone, the whole blocks stay.
        drop(staged);
        assert_eq!(repo.staged_len(&k), 69_632);

        let mut staged = repo.stage(k.clone()).unwrap();
        assert_eq!(staged.len(), 69_632);
        assert!(is_direct(&staged));
        staged.write(69_632, &data[69_632..200_000]).unwrap();
        staged.write(200_000, &data[200_000..]).unwrap();
        // The last partial block went through the page cache.
        assert!(!is_direct(&staged));
        assert_eq!(staged.len(), data.len() as u64);
        assert_eq!(staged.sha256(), sha(&data));
        places_what_came(&repo, staged, &data);
    }

    #[test]
    fn small_files_and_files_resumed_mid_block_go_through_the_page_cache() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::open(&dir.path().join("repo"), &dir.path().join("staging")).unwrap();
        let small = repo.stage(key("small.csv", DIRECT_MIN - 1)).unwrap();
        assert!(!is_direct(&small));
        assert!(is_direct(
            &repo.stage(key("large.bin", DIRECT_MIN)).unwrap()
        ));
        // Configured off, even a large file goes through the page cache;
        // with a lower threshold, a smaller one goes past it.
        let off = repo.clone().with_direct_io(None);
        assert!(!is_direct(&off.stage(key("off.bin", 1 << 30)).unwrap()));
        let low = repo.clone().with_direct_io(Some(8192));
        assert!(is_direct(&low.stage(key("low.bin", 8192)).unwrap()));
        // A large file whose staged part ends mid-block (staged through the
        // page cache before) carries on through it, and arrives whole.
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 241) as u8).collect();
        let k = key("resumed.bin", data.len() as u64);
        std::fs::create_dir_all(repo.staging_path(&k).parent().unwrap()).unwrap();
        std::fs::write(repo.staging_path(&k), &data[..1000]).unwrap();
        let mut staged = repo.stage(k).unwrap();
        assert_eq!(staged.len(), 1000);
        assert!(!is_direct(&staged));
        staged.write(1000, &data[1000..]).unwrap();
        assert_eq!(staged.sha256(), sha(&data));
        assert_eq!(std::fs::read(&staged.path).unwrap(), data);
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

    #[test]
    fn file_by_file_syncing_gives_each_path_its_own_result() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::open(&dir.path().join("repo"), &dir.path().join("staging")).unwrap();
        std::fs::create_dir_all(dir.path().join("repo/s1/a")).unwrap();
        let paths = ["s1/a/x.bin", "s1/gone/y.bin", "s1/a/z.bin"];
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

    #[test]
    fn new_content_for_a_stored_path_goes_beside_it_and_nothing_is_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::open(&dir.path().join("repo"), &dir.path().join("staging")).unwrap();
        let place = |data: &[u8], mtime: i64| {
            let mut k = key("log.csv", data.len() as u64);
            k.mtime_ns = mtime;
            let mut staged = repo.stage(k).unwrap();
            staged.write(0, data).unwrap();
            let placed = repo.place(&staged, &sha(data), |_| None).unwrap();
            repo.discard(staged).unwrap();
            placed
        };
        assert_eq!(
            place(b"first", 1),
            Placement::Stored {
                stored_as: "s1/spectrum/log.csv".into()
            }
        );
        let second = place(b"second", 2);
        let tag = &hex(&sha(b"second"))[..12];
        assert_eq!(
            second,
            Placement::Stored {
                stored_as: format!("s1/spectrum/log.{tag}.csv")
            }
        );
        // The same content again is recognised, not stored a third time.
        assert_eq!(
            place(b"first", 3),
            Placement::AlreadyThere {
                stored_as: "s1/spectrum/log.csv".into()
            }
        );
        assert_eq!(place(b"second", 4), second.clone().into_already());
        assert_eq!(
            std::fs::read(dir.path().join("repo/s1/spectrum/log.csv")).unwrap(),
            b"first"
        );
    }

    impl Placement {
        fn into_already(self) -> Placement {
            match self {
                Placement::Stored { stored_as } | Placement::AlreadyThere { stored_as } => {
                    Placement::AlreadyThere { stored_as }
                }
            }
        }
    }

    #[test]
    fn tags_go_before_the_extension() {
        let s = [0xabu8; 32];
        assert_eq!(beside("a/b/x.bin", &s), "a/b/x.abababababab.bin");
        assert_eq!(beside("noext", &s), "noext.abababababab");
        assert_eq!(beside("d/.hidden", &s), "d/.hidden.abababababab");
    }
}
