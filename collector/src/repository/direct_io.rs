//! Direct I/O (`O_DIRECT`) for staging files of [`DIRECT_MIN`] bytes or
//! more: whole blocks go from the chunk (or an aligned bounce buffer) to
//! the device, hashed beside the write for very large files.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::staging::Staged;
use super::{Repository, RepositoryError, io_err};

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
pub(super) struct Direct {
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

impl Repository {
    /// The direct I/O state for a staging file (`file` at `path`) of `size`
    /// bytes that holds `len` already, or `None` to go through the page
    /// cache: direct I/O from here on if what is left is large enough and
    /// what is staged ends on a block boundary (it does, unless it was
    /// staged through the page cache).
    pub(super) fn direct_for(
        &self,
        file: &File,
        path: &Path,
        size: u64,
        len: u64,
    ) -> Option<Direct> {
        (self.direct_io.load(Ordering::Relaxed)
            && self.direct_min.is_some_and(|min| size - len >= min)
            && len.is_multiple_of(ALIGN as u64))
        .then(|| set_direct(file, true))
        .and_then(|set| match set {
            Ok(()) => Some(Direct {
                buf: Vec::new(),
                start: 0,
                enabled: self.direct_io.clone(),
            }),
            Err(error) => {
                direct_refused(&self.direct_io, path, &error);
                None
            }
        })
    }
}

impl Staged {
    /// [`Staged::write`] with direct I/O: the chunk's whole blocks go to
    /// the device now, the bytes of a partial block wait for the next
    /// chunk, and the file's last partial block, once it has arrived, goes
    /// through the page cache. After an error the staged file holds only
    /// whole blocks that were written and must be staged again (the session
    /// drops it with the file's failure). Returns whether the file goes on
    /// with direct I/O.
    pub(super) fn write_direct(
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

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;

    use super::*;
    use crate::repository::tests::{key, scratch, sha};

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
        let (_dir, repo) = scratch();
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
        let (_dir, repo) = scratch();
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
        let (_dir, repo) = scratch();
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
        let (_dir, repo) = scratch();
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
}
