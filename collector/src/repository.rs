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

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use ferry_common::name;
use ferry_common::protocol::Sha256;
use ferry_common::station::StationId;

use crate::group_sync::{self, GroupSync};

/// Longest relative path accepted, in bytes.
pub const MAX_PATH: usize = 4096;
/// Longest single path component accepted, in bytes (the usual NAME_MAX).
pub const MAX_COMPONENT: usize = 255;
/// Hex digits of the content hash put in a version name.
const SHORT_HASH: usize = 12;
/// Longest extension kept after the tag of a version name: a longer "extension"
/// is part of the stem (so a cut stem always leaves room).
const MAX_EXT: usize = 32;

/// Why a path offered by a station is refused. Paths are shown in their
/// text form ([`ferry_common::name`]).
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
    #[error("path is {len} bytes long, the limit is {MAX_PATH}")]
    TooLong { len: usize },
    #[error("path {path:?} has a component of {len} bytes, the limit is {MAX_COMPONENT}")]
    ComponentTooLong { path: String, len: usize },
    #[error("root name {0:?} is not valid: {1}")]
    Root(String, String),
}

/// Checks a station-relative path (bytes, not necessarily UTF-8) and
/// returns it unchanged if it is safe to join under the station's area.
/// Every name Linux allows is accepted (any byte but `/` and NUL, up to
/// [`MAX_COMPONENT`] bytes; a backslash is an ordinary byte); what is
/// refused is what could leave the area or is no name at all: absolute
/// paths, `.`/`..` and empty components. Nothing is rewritten: a path that
/// would need normalising is refused, so the stored name is always the
/// offered one.
pub fn check_path(path: &[u8]) -> Result<&[u8], PathError> {
    let shown = || name::encode(path);
    if path.is_empty() {
        return Err(PathError::Empty);
    }
    if path.len() > MAX_PATH {
        return Err(PathError::TooLong { len: path.len() });
    }
    if path.contains(&0) {
        return Err(PathError::Nul(shown()));
    }
    if path.starts_with(b"/") {
        return Err(PathError::Absolute(shown()));
    }
    for component in path.split(|&b| b == b'/') {
        match component {
            b"" => return Err(PathError::EmptyComponent(shown())),
            b"." | b".." => return Err(PathError::DotComponent(shown())),
            c if c.len() > MAX_COMPONENT => {
                return Err(PathError::ComponentTooLong {
                    path: shown(),
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

/// What the catalog knows about a name in the repository: the catalog
/// path (text form) whose version it holds, and that version's content.
pub type Owner = (String, Sha256);

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
    /// Newly linked under `stored_as` (relative to the repository root, as
    /// bytes). `replaced`: the catalogued version that held the plain name
    /// before, and its version name now.
    Stored {
        stored_as: Vec<u8>,
        replaced: Option<Replaced>,
    },
    /// The same content already sits at `stored_as`.
    AlreadyThere { stored_as: Vec<u8> },
}

/// A catalogued version moved from the plain name to its version name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replaced {
    /// Its content.
    pub sha256: Sha256,
    /// Its version name (relative to the repository root, as bytes).
    pub stored_as: Vec<u8>,
}

impl Placement {
    /// Where the content is, relative to the repository root.
    pub fn stored_as(&self) -> &[u8] {
        match self {
            Self::Stored { stored_as, .. } | Self::AlreadyThere { stored_as } => stored_as,
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
        for part in [key.root.as_bytes(), &key.path[..]] {
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
    /// answers, for a stored name (text form), which catalogued version it
    /// holds, if the journal knows (else the file is hashed).
    pub fn place(
        &self,
        staged: &Staged,
        sha256: &Sha256,
        known: impl Fn(&str) -> Option<Owner>,
    ) -> Result<Placement, RepositoryError> {
        let placement = self.link(staged, sha256, known)?;
        self.sync_parent(placement.stored_as())?;
        Ok(placement)
    }

    /// [`Repository::place`] without the final directory fsync: a batch
    /// links all its files, then makes the links durable together with
    /// [`Repository::sync_parents`] before anything is acknowledged.
    ///
    /// The content goes under the plain name. If that name holds an older
    /// version of the same path, the older version is first linked under
    /// its version name and that link made durable, then the new content
    /// replaces the plain name (a rename: atomic). If it holds what another
    /// path stored there (a name that looks like a version name), the new
    /// content takes its own version name instead. The caller must make sure
    /// no other placement of the same path runs at the same time.
    pub fn link(
        &self,
        staged: &Staged,
        sha256: &Sha256,
        known: impl Fn(&str) -> Option<Owner>,
    ) -> Result<Placement, RepositoryError> {
        let key = &staged.key;
        let catalog_path = key.catalog_path();
        let plain = key.plain_name();
        let target = self.root.join(OsStr::from_bytes(&plain));
        let dir = target.parent().unwrap_or(&self.root).to_owned();
        self.create_dirs(&dir)?;
        match std::fs::hard_link(&staged.path, &target) {
            Ok(()) => {
                return Ok(Placement::Stored {
                    stored_as: plain,
                    replaced: None,
                });
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err("link", &target)(e)),
        }
        let owner = known(&name::encode(&plain));
        if let Some((path, _)) = &owner
            && *path != catalog_path
        {
            // Another path's version sits under this name: leave it.
            return self.link_version(&staged.path, &plain, sha256, &catalog_path, &known);
        }
        let there = match &owner {
            Some((_, sha)) => *sha,
            None => hash_file(&target)?,
        };
        if there == *sha256 {
            return Ok(Placement::AlreadyThere { stored_as: plain });
        }
        // An older version holds the plain name: give it its version name,
        // durably, before the plain name changes.
        let kept = match self.link_version(&target, &plain, &there, &catalog_path, &known)? {
            Placement::Stored { stored_as, .. } | Placement::AlreadyThere { stored_as } => {
                stored_as
            }
        };
        sync_dir(&dir)?;
        let fresh = dir.join(format!(".ferry-{}.new", hex(sha256)));
        match std::fs::remove_file(&fresh) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("remove", &fresh)(e)),
        }
        std::fs::hard_link(&staged.path, &fresh).map_err(io_err("link", &fresh))?;
        std::fs::rename(&fresh, &target).map_err(io_err("rename", &target))?;
        // A rename between two links of one file (the retry of a placement
        // whose rename had been done) leaves both in place.
        match std::fs::remove_file(&fresh) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("remove", &fresh)(e)),
        }
        Ok(Placement::Stored {
            stored_as: plain,
            replaced: owner.map(|(_, sha256)| Replaced {
                sha256,
                stored_as: kept,
            }),
        })
    }

    /// Links `source` (holding `sha256`, a version of `catalog_path`) under
    /// its version name beside `plain`: the short one, or the one with the
    /// whole hash if the short one holds something else. A name that already
    /// holds this version (a repeated placement) is taken as it is.
    fn link_version(
        &self,
        source: &Path,
        plain: &[u8],
        sha256: &Sha256,
        catalog_path: &str,
        known: &impl Fn(&str) -> Option<Owner>,
    ) -> Result<Placement, RepositoryError> {
        let mut last = None;
        for full in [false, true] {
            let stored_as = version_name(plain, sha256, full);
            let target = self.root.join(OsStr::from_bytes(&stored_as));
            match std::fs::hard_link(source, &target) {
                Ok(()) => {
                    return Ok(Placement::Stored {
                        stored_as,
                        replaced: None,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    let ours = match known(&name::encode(&stored_as)) {
                        Some((path, sha)) => path == catalog_path && sha == *sha256,
                        None => hash_file(&target)? == *sha256,
                    };
                    if ours {
                        return Ok(Placement::AlreadyThere { stored_as });
                    }
                    last = Some(target);
                }
                Err(e) => return Err(io_err("link", &target)(e)),
            }
        }
        // Both version names hold other content: only a name made to look
        // like this version's gets here.
        let target = last.unwrap_or_else(|| self.root.join(OsStr::from_bytes(plain)));
        Err(io_err("link", &target)(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "both version names of this content hold other files",
        )))
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

/// The version name of `path` (bytes, `/`-separated) for content
/// `sha256`: `dir/name.<12 hex>.ext`, or with all 64 hex digits if `full`
/// (`name.<hex>` without an extension), so a version still opens with the
/// tools its extension calls for.
///
/// The last component always fits in [`MAX_COMPONENT`] bytes: where it
/// would not, the stem is cut and followed by `~` and 16 hex digits of the
/// SHA-256 of the whole name, so two long names that share their first
/// bytes keep different version names. The cut backs off to the start of a
/// UTF-8 character it would split; in a name that is not UTF-8 it falls
/// where it falls (names are bytes, any byte but `/` and NUL is allowed).
pub fn version_name(path: &[u8], sha256: &Sha256, full: bool) -> Vec<u8> {
    let hash = hex(sha256);
    let tag = if full { &hash[..] } else { &hash[..SHORT_HASH] };
    let (dir, name) = match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..=i], &path[i + 1..]),
        None => (&path[..0], path),
    };
    let (stem, ext) = match name.iter().rposition(|&b| b == b'.') {
        Some(i) if i > 0 && name.len() - i - 1 <= MAX_EXT => (&name[..i], Some(&name[i + 1..])),
        _ => (name, None),
    };
    let tail = |out: &mut Vec<u8>| {
        out.push(b'.');
        out.extend_from_slice(tag.as_bytes());
        if let Some(ext) = ext {
            out.push(b'.');
            out.extend_from_slice(ext);
        }
    };
    let mut tagged = stem.to_vec();
    tail(&mut tagged);
    if tagged.len() > MAX_COMPONENT {
        let mut mark = ring::digest::Context::new(&ring::digest::SHA256);
        mark.update(name);
        let mark = format!("~{}", &hex(mark.finish().as_ref())[..16]);
        let room = MAX_COMPONENT - (tagged.len() - stem.len()) - mark.len();
        let mut cut = room.min(stem.len());
        if let Err(e) = std::str::from_utf8(&stem[..cut])
            && e.error_len().is_none()
        {
            // The cut splits a character that was whole: back off to it.
            cut = e.valid_up_to();
        }
        tagged = stem[..cut].to_vec();
        tagged.extend_from_slice(mark.as_bytes());
        tail(&mut tagged);
    }
    let mut out = dir.to_vec();
    out.extend_from_slice(&tagged);
    out
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
            (long_component.as_str(), "component of 256"),
            (long_path.as_str(), "limit is 4096"),
        ] {
            let err = check_path(path.as_bytes()).unwrap_err().to_string();
            assert!(err.contains(what), "{path:?}: {err}");
        }
        // Every name Linux allows is accepted, as it is.
        let longest = vec![b'y'; 255];
        for path in [
            &b"a"[..],
            b"2022/03/rfeye002073_220307_T175758.bin",
            "ünï cödé/..x/x..".as_bytes(),
            b"line\nbreak",
            b"a\\..\\b",
            b"..\\x",
            b"caf\xe9.bin",
            b"\x01\x7f\xff/\x1b[31m",
            &longest,
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
                stored_as: "s1/spectrum/2022/a.bin".into(),
                replaced: None,
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
            std::fs::read(repo.root().join(OsStr::from_bytes(placed.stored_as()))).unwrap(),
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

    /// Stages `data` as `path` (mtime `mtime`) and places it, with the
    /// catalog knowing what `catalog` lists (stored name, catalog path,
    /// content); leaves the staging file for the caller.
    fn place_in(
        repo: &Repository,
        path: &[u8],
        data: &[u8],
        mtime: i64,
        catalog: &[(Vec<u8>, String, Sha256)],
    ) -> (Staged, Placement) {
        let mut k = key("", data.len() as u64);
        k.path = path.to_vec();
        k.mtime_ns = mtime;
        let mut staged = repo.stage(k).unwrap();
        staged.write(0, data).unwrap();
        let placed = repo
            .place(&staged, &sha(data), |name| {
                catalog
                    .iter()
                    .find(|(stored, ..)| name::encode(stored) == name)
                    .map(|(_, path, sha)| (path.clone(), *sha))
            })
            .unwrap();
        (staged, placed)
    }

    fn read(repo: &Repository, stored_as: &[u8]) -> Vec<u8> {
        std::fs::read(repo.root().join(OsStr::from_bytes(stored_as))).unwrap()
    }

    #[test]
    fn the_plain_name_holds_the_latest_version_and_every_version_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::open(&dir.path().join("repo"), &dir.path().join("staging")).unwrap();
        let plain = b"s1/spectrum/log.csv".to_vec();
        let mut catalog = Vec::new();
        let mut place = |data: &[u8], mtime: i64| {
            let (staged, placed) = place_in(&repo, b"log.csv", data, mtime, &catalog);
            repo.discard(staged).unwrap();
            // The catalog learns what the journal would.
            if let Placement::Stored {
                stored_as,
                replaced,
            } = &placed
            {
                if let Some(r) = replaced {
                    let moved = catalog.iter_mut().find(|(_, _, s)| *s == r.sha256).unwrap();
                    moved.0 = r.stored_as.clone();
                }
                catalog.push((stored_as.clone(), "spectrum/log.csv".into(), sha(data)));
            }
            placed
        };
        let first = place(b"first, partial", 1);
        assert_eq!(
            first,
            Placement::Stored {
                stored_as: plain.clone(),
                replaced: None
            }
        );
        let second = place(b"first, partial, then whole", 2);
        let first_version = version_name(&plain, &sha(b"first, partial"), false);
        assert_eq!(
            second,
            Placement::Stored {
                stored_as: plain.clone(),
                replaced: Some(Replaced {
                    sha256: sha(b"first, partial"),
                    stored_as: first_version.clone()
                })
            }
        );
        assert_eq!(read(&repo, &plain), b"first, partial, then whole");
        assert_eq!(read(&repo, &first_version), b"first, partial");
        // The same content again is recognised where it is.
        assert_eq!(
            place(b"first, partial, then whole", 3),
            Placement::AlreadyThere {
                stored_as: plain.clone()
            }
        );
        assert_eq!(tree_of(&repo).len(), 2);
    }

    #[test]
    fn a_placement_cut_short_at_any_step_is_completed_by_the_retry() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::open(&dir.path().join("repo"), &dir.path().join("staging")).unwrap();
        let plain = b"s1/spectrum/a.bin".to_vec();
        let old_version = version_name(&plain, &sha(b"old"), false);
        let (staged, _) = place_in(&repo, b"a.bin", b"old", 1, &[]);
        repo.discard(staged).unwrap();
        let catalog = vec![(plain.clone(), "spectrum/a.bin".to_owned(), sha(b"old"))];
        let moved = Placement::Stored {
            stored_as: plain.clone(),
            replaced: Some(Replaced {
                sha256: sha(b"old"),
                stored_as: old_version.clone(),
            }),
        };
        // Killed after the old version got its version name, before the
        // rename: the retry finds the name holding it and goes on.
        std::fs::hard_link(
            repo.root().join(OsStr::from_bytes(&plain)),
            repo.root().join(OsStr::from_bytes(&old_version)),
        )
        .unwrap();
        let (staged, placed) = place_in(&repo, b"a.bin", b"new", 2, &catalog);
        assert_eq!(placed, moved);
        assert_eq!(read(&repo, &plain), b"new");
        assert_eq!(read(&repo, &old_version), b"old");
        // Killed after the rename, before the journal: the journal still
        // says the plain name holds the old version; the retry moves the
        // row, and nothing is linked twice.
        let placed = repo
            .place(&staged, &sha(b"new"), |name| {
                catalog
                    .iter()
                    .find(|(stored, ..)| name::encode(stored) == name)
                    .map(|(_, path, sha)| (path.clone(), *sha))
            })
            .unwrap();
        assert_eq!(placed, moved);
        assert_eq!(read(&repo, &plain), b"new");
        assert_eq!(read(&repo, &old_version), b"old");
        repo.discard(staged).unwrap();
        assert_eq!(tree_of(&repo).len(), 2, "{:?}", tree_of(&repo));
    }

    #[test]
    fn a_plain_name_holding_another_paths_version_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::open(&dir.path().join("repo"), &dir.path().join("staging")).unwrap();
        // x.bin's version sits where a file named like it would go.
        let taken = version_name(b"s1/spectrum/x.bin", &sha(b"x1"), false);
        let name = taken.strip_prefix(b"s1/spectrum/".as_slice()).unwrap();
        let (staged, _) = place_in(&repo, name, b"x1", 1, &[]);
        repo.discard(staged).unwrap();
        let catalog = vec![(taken.clone(), "spectrum/x.bin".to_owned(), sha(b"x1"))];
        let (staged, placed) = place_in(&repo, name, b"look-alike", 2, &catalog);
        repo.discard(staged).unwrap();
        assert_eq!(read(&repo, &taken), b"x1");
        assert_eq!(read(&repo, placed.stored_as()), b"look-alike");
        assert_ne!(placed.stored_as(), &taken[..]);
    }

    fn tree_of(repo: &Repository) -> Vec<PathBuf> {
        fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
            for entry in std::fs::read_dir(dir).unwrap().flatten() {
                if entry.path().is_dir() {
                    walk(&entry.path(), out);
                } else {
                    out.push(entry.path());
                }
            }
        }
        let mut out = Vec::new();
        walk(repo.root(), &mut out);
        out
    }

    #[test]
    fn version_names_keep_the_extension_and_always_fit_in_255_bytes() {
        let s = [0xabu8; 32];
        let v = |p: &[u8]| version_name(p, &s, false);
        assert_eq!(v(b"a/b/x.bin"), b"a/b/x.abababababab.bin");
        assert_eq!(v(b"noext"), b"noext.abababababab");
        assert_eq!(v(b"d/.hidden"), b"d/.hidden.abababababab");
        assert_eq!(v(b"caf\xe9.bin"), b"caf\xe9.abababababab.bin");
        // A name of 250 bytes: cut, marked, still under 255.
        let long = [vec![b'n'; 246], b".bin".to_vec()].concat();
        for full in [false, true] {
            let name = version_name(&long, &s, full);
            assert!(name.len() <= MAX_COMPONENT, "{} bytes", name.len());
            assert!(name.ends_with(b".bin"));
            assert!(name.starts_with(b"nnnn"));
        }
        // Cut inside a character of a UTF-8 name: the character goes whole.
        let accents = [vec![b'a'], "é".repeat(125).into_bytes(), b".csv".to_vec()].concat();
        assert_eq!(accents.len(), 255);
        let name = version_name(&accents, &s, false);
        assert!(name.len() <= MAX_COMPONENT);
        assert!(std::str::from_utf8(&name).is_ok(), "{name:?}");
        // A name that is not UTF-8 is cut where it is cut, and stays a name.
        let latin1 = vec![0xe9; 255];
        let name = version_name(&latin1, &s, true);
        assert!(name.len() <= MAX_COMPONENT && !name.contains(&b'/') && !name.contains(&0));
    }

    #[test]
    fn version_names_are_unique_and_fit_for_any_name() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut seen = std::collections::HashMap::new();
        for _ in 0..20_000 {
            // Names of 1..=255 bytes, any byte but '/' and NUL, many long
            // and sharing a prefix, many with dots.
            let len = match next() % 3 {
                0 => 1 + (next() % 20) as usize,
                _ => 200 + (next() % 56) as usize,
            };
            let mut name: Vec<u8> = (0..len)
                .map(|i| match next() % 8 {
                    _ if i < 190 && len > 100 => b'p',
                    0 => b'.',
                    1 => 0xc3,
                    2 => 0xa9,
                    _ => (next() % 254 + 1) as u8,
                })
                .map(|b| if b == b'/' { b'_' } else { b })
                .collect();
            name.truncate(255);
            let content = [(next() % 3) as u8; 32];
            for full in [false, true] {
                let version = version_name(&name, &content, full);
                assert!(version.len() <= MAX_COMPONENT, "{} bytes", version.len());
                assert!(check_path(&version).is_ok());
                if let Some(other) = seen.insert(version.clone(), (name.clone(), content))
                    && other != (name.clone(), content)
                {
                    panic!("{name:?} and {other:?} share the version name {version:?}");
                }
            }
        }
    }
}
