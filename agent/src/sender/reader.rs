//! Reading a batch's files for the sender: each file is opened, read in
//! chunks straight into their frames and hashed there. Reads block, so they
//! run within `block_in_place`, which hands the runtime thread's other work
//! to another thread each time; the reader therefore reads a group of
//! chunks, up to [`GROUP_BYTES`] (many small files, or one large chunk), per
//! hand-off instead of one chunk.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;

use ferry_common::codec::ChunkFrame;
use ferry_common::protocol::Sha256;

/// Bytes read per group. Small files then cost one hand-off per group, not
/// one per file. Each small file's chunk is an allocation of its own that
/// lives until it is sent: with 1 MiB groups of 1 KiB files the heap they
/// fragmented stayed with the idle agent (about 1 MiB more resident).
const GROUP_BYTES: usize = 256 << 10;

/// Read buffer for re-hashing a prefix the collector already holds.
const PREFIX_BUFFER: usize = 256 * 1024;

/// A file the collector asked for, from `offset`.
#[derive(Debug)]
pub(super) struct Wanted {
    /// Its id in the batch.
    pub id: u32,
    pub path: PathBuf,
    /// The size it was offered with: no more is read.
    pub size: u64,
    pub offset: u64,
}

/// What the reader gives the sender, in file order.
#[derive(Debug)]
pub(super) enum Piece {
    /// The next chunk of file `id`, `len` bytes, hashed.
    Chunk {
        id: u32,
        frame: ChunkFrame,
        len: u64,
    },
    /// File `id` is read: the bytes read (from its start; fewer than
    /// offered if it shrank or could not be read) and their SHA-256.
    End { id: u32, size: u64, sha256: Sha256 },
    /// No frame could be made (a chunk size beyond the protocol's limit).
    Failed(String),
}

/// Reads the wanted files of a batch in order, a group at a time.
pub(super) struct Reader {
    batch: u64,
    chunk: usize,
    files: VecDeque<Wanted>,
    /// The file being read.
    open: Option<Open>,
}

struct Open {
    id: u32,
    size: u64,
    file: File,
    hash: ring::digest::Context,
    position: u64,
}

impl Reader {
    /// A reader of `files` of `batch` in chunks of `chunk` bytes.
    pub fn new(batch: u64, files: Vec<Wanted>, chunk: usize) -> Self {
        Self {
            batch,
            chunk,
            files: files.into(),
            open: None,
        }
    }

    /// The next group of pieces, empty once every file is read. Blocks.
    pub fn next_group(&mut self) -> Vec<Piece> {
        let mut group = Vec::new();
        let mut bytes = 0;
        while bytes < GROUP_BYTES {
            let Some(open) = self.open.as_mut() else {
                let Some(wanted) = self.files.pop_front() else {
                    break;
                };
                match open_at(wanted, self.chunk) {
                    Ok(open) => self.open = Some(open),
                    Err(end) => group.push(end),
                }
                continue;
            };
            let want = open
                .size
                .saturating_sub(open.position)
                .min(self.chunk as u64) as usize;
            let mut read = 0;
            if want > 0 {
                let mut frame = match ChunkFrame::new(self.batch, open.id, open.position, want) {
                    Ok(frame) => frame,
                    Err(e) => {
                        group.push(Piece::Failed(e.to_string()));
                        break;
                    }
                };
                read = frame.read_from(&mut open.file).unwrap_or(0);
                if read > 0 {
                    open.hash.update(frame.data());
                    open.position += read as u64;
                    bytes += read;
                    group.push(Piece::Chunk {
                        id: open.id,
                        frame,
                        len: read as u64,
                    });
                }
            }
            if (read == 0 || open.position == open.size)
                && let Some(done) = self.open.take()
            {
                group.push(end(done.id, done.position, done.hash));
            }
        }
        group
    }
}

/// Opens `wanted` and hashes the prefix the collector holds (re-read, not
/// sent). A file that cannot be opened, or is shorter than that prefix, is
/// read already: its end.
fn open_at(wanted: Wanted, chunk: usize) -> Result<Open, Piece> {
    let mut hash = ring::digest::Context::new(&ring::digest::SHA256);
    let Ok(mut file) = File::open(&wanted.path) else {
        // Unreadable now: commit what was read (nothing), which the
        // collector refuses, and the file is retried later.
        return Err(end(wanted.id, 0, hash));
    };
    let mut position = 0u64;
    if wanted.offset > 0 {
        let mut buf = vec![0u8; chunk.min(PREFIX_BUFFER)];
        while position < wanted.offset {
            let want = (wanted.offset - position).min(buf.len() as u64) as usize;
            let n = file.read(&mut buf[..want]).unwrap_or(0);
            if n == 0 {
                return Err(end(wanted.id, position, hash));
            }
            hash.update(&buf[..n]);
            position += n as u64;
        }
        let _ = file.seek(SeekFrom::Start(wanted.offset));
    }
    Ok(Open {
        id: wanted.id,
        size: wanted.size,
        file,
        hash,
        position,
    })
}

fn end(id: u32, size: u64, hash: ring::digest::Context) -> Piece {
    Piece::End {
        id,
        size,
        sha256: finish(hash),
    }
}

/// The digest of `hash`.
pub(super) fn finish(hash: ring::digest::Context) -> Sha256 {
    let mut out = [0u8; 32];
    out.copy_from_slice(hash.finish().as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(data: &[u8]) -> Sha256 {
        finish({
            let mut hash = ring::digest::Context::new(&ring::digest::SHA256);
            hash.update(data);
            hash
        })
    }

    /// What a group holds: ("chunk", id, offset, len) or ("end", id, size, 0).
    fn shape(group: &[Piece]) -> Vec<(&'static str, u32, u64, u64)> {
        group
            .iter()
            .map(|piece| match piece {
                Piece::Chunk { id, frame, len } => {
                    assert_eq!(frame.data().len() as u64, *len);
                    ("chunk", *id, 0, *len)
                }
                Piece::End { id, size, .. } => ("end", *id, *size, 0),
                Piece::Failed(reason) => panic!("{reason}"),
            })
            .collect()
    }

    #[test]
    fn small_files_share_a_group_and_a_large_one_comes_a_chunk_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let mut wanted = Vec::new();
        let mut contents = Vec::new();
        // Twelve files of 100 KiB, then one of 2.5 MiB, in 1 MiB chunks.
        for id in 0..13u32 {
            let len = if id < 12 { 100 << 10 } else { 5 << 19 };
            let data: Vec<u8> = (0..len).map(|i| (i as u32 ^ id) as u8).collect();
            let path = dir.path().join(format!("{id}.bin"));
            std::fs::write(&path, &data).unwrap();
            wanted.push(Wanted {
                id,
                path,
                size: len as u64,
                offset: 0,
            });
            contents.push(data);
        }
        let mut reader = Reader::new(7, wanted, 1 << 20);
        let mut groups = Vec::new();
        loop {
            let group = reader.next_group();
            if group.is_empty() {
                break;
            }
            groups.push(group);
        }
        let shapes: Vec<_> = groups.iter().map(|g| shape(g)).collect();
        // Small files go into a group until it holds 256 KiB (three of
        // them); then the large file, a chunk a group.
        let small = |id: u32| [("chunk", id, 0, 100 << 10), ("end", id, 100 << 10, 0)];
        for g in 0..4u32 {
            let three: Vec<_> = (g * 3..g * 3 + 3).flat_map(small).collect();
            assert_eq!(shapes[g as usize], three);
        }
        assert_eq!(shapes[4], [("chunk", 12, 0, 1 << 20)]);
        assert_eq!(shapes[5], [("chunk", 12, 0, 1 << 20)]);
        assert_eq!(
            shapes[6],
            [("chunk", 12, 0, 1 << 19), ("end", 12, 5 << 19, 0)]
        );
        assert_eq!(groups.len(), 7);
        // Every file's bytes arrive whole and in order, and hash as they
        // should.
        let mut got: Vec<Vec<u8>> = vec![Vec::new(); 13];
        for piece in groups.iter().flatten() {
            match piece {
                Piece::Chunk { id, frame, .. } => got[*id as usize].extend_from_slice(frame.data()),
                Piece::End { id, sha256, .. } => assert_eq!(*sha256, sha(&contents[*id as usize])),
                Piece::Failed(reason) => panic!("{reason}"),
            }
        }
        assert_eq!(got, contents);
    }

    #[test]
    fn a_resumed_file_sends_its_rest_and_hashes_all_of_it_and_a_missing_one_ends_empty() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let path = dir.path().join("resumed.bin");
        std::fs::write(&path, &data).unwrap();
        let shrunk = dir.path().join("shrunk.bin");
        std::fs::write(&shrunk, &data[..1000]).unwrap();
        let wanted = vec![
            Wanted {
                id: 0,
                path,
                size: data.len() as u64,
                offset: 200_000,
            },
            Wanted {
                id: 1,
                path: dir.path().join("gone.bin"),
                size: 10,
                offset: 0,
            },
            Wanted {
                id: 2,
                path: shrunk,
                size: data.len() as u64,
                offset: 0,
            },
        ];
        let group = Reader::new(1, wanted, 64 << 10).next_group();
        let mut rest = Vec::new();
        let mut ends = Vec::new();
        for piece in &group {
            match piece {
                Piece::Chunk { id: 0, frame, .. } => rest.extend_from_slice(frame.data()),
                Piece::Chunk { id: 2, .. } => {}
                Piece::End { id, size, sha256 } => ends.push((*id, *size, *sha256)),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(rest, &data[200_000..]);
        assert_eq!(
            ends,
            [
                (0, 300_000, sha(&data)),
                (1, 0, sha(b"")),
                (2, 1000, sha(&data[..1000]))
            ]
        );
    }

    /// Regression: an offset past the offered size (a file that grew, and a
    /// collector asking for more than was offered) underflowed the bytes
    /// left to read.
    #[test]
    fn an_offset_past_the_offered_size_sends_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let data = vec![7u8; 8000];
        let path = dir.path().join("grew.bin");
        std::fs::write(&path, &data).unwrap();
        let wanted = vec![Wanted {
            id: 0,
            path,
            size: 1000,
            offset: 5000,
        }];
        let group = Reader::new(1, wanted, 4096).next_group();
        assert_eq!(shape(&group), [("end", 0, 5000, 0)]);
        match &group[0] {
            Piece::End { sha256, .. } => assert_eq!(*sha256, sha(&data[..5000])),
            other => panic!("{other:?}"),
        }
    }
}
