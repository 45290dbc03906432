//! Staging: the file a station's content is appended to, hashed as it is
//! written, named after what was offered so that a transfer resumes from
//! what is staged; written through the page cache unless `direct_io` takes
//! it.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::PathBuf;

use ferry_common::protocol::Sha256;

use super::direct_io::Direct;
use super::{FileKey, Repository, RepositoryError, hex, io_err};

/// A file being received: its staging file, open for appending, and the hash
/// of everything written so far.
pub struct Staged {
    pub key: FileKey,
    pub path: PathBuf,
    pub(super) file: File,
    pub(super) len: u64,
    pub(super) hash: ring::digest::Context,
    /// Staged bytes before this offset have been handed to writeback.
    pub(super) flushed: u64,
    /// Set while the file is written with direct I/O.
    pub(super) direct: Option<Direct>,
}

/// Staged bytes handed to the kernel's writeback at a time: a large file's
/// final fsync then waits for the last few MiB, not the whole file.
const WRITEBACK_STEP: u64 = 4 << 20;

impl Repository {
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
        let direct = self.direct_for(&file, &path, key.size, len);
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

    /// The staging file of `key`: below the station's folder, named after a
    /// hash of the root, path, size and mtime offered.
    pub(super) fn staging_path(&self, key: &FileKey) -> PathBuf {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repository::Placement;
    use crate::repository::tests::{key, scratch, sha};

    #[test]
    fn a_staged_file_resumes_with_its_hash_and_is_placed_under_its_final_name() {
        let (dir, repo) = scratch();
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
}
