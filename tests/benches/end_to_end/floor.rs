//! The floor: the CPU that the work no verified, encrypted and durable
//! transfer can leave out costs on this machine, measured in the same run
//! as Ferry and its baselines.
//!
//! One thread takes each file through what the two ends of a transfer must
//! do with it: read it, hash it (SHA-256), seal it in TLS-sized records
//! (AES-256-GCM, 16 KiB, in place), open the records again, hash the result
//! and compare the digests, and write it with direct I/O (the collector's
//! way for files of 64 KiB or more); then one `syncfs` makes the lot
//! durable. Every stage is timed in the thread's CPU clock.
//!
//! Left out: moving the bytes between the two ends (timed over loopback TCP
//! between two threads, that part cost more than all of Ferry's TCP, so it
//! would not bound anything), and what Ferry's design adds: the ZMQ framing and the bridge's
//! Unix socket on each side, the staging name and rename of each file, the
//! journal and the two catalogs, the station's ledger and `DUE_BACKUP`,
//! watching the roots, acknowledgements and flow control.

use std::io::{Read as _, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use rustix::fs::OFlags;
use rustix::time::{ClockId, clock_gettime};

use crate::data;
use crate::stats::Measured;

/// Bytes read from a file at a time.
const CHUNK: usize = 1 << 20;
/// Plaintext per sealed record: the largest a TLS record holds.
const RECORD: usize = 16 << 10;
/// Direct I/O takes whole blocks from block-aligned memory.
const BLOCK: usize = 4096;

/// CPU seconds each stage took.
#[derive(Debug, Clone, Default)]
pub struct Stages {
    pub read: f64,
    pub hash_sent: f64,
    pub seal: f64,
    pub open: f64,
    pub hash_received: f64,
    pub write: f64,
    pub sync: f64,
}

/// One pass of a data set through the floor.
#[derive(Debug)]
pub struct Floor {
    pub measured: Measured,
    pub stages: Stages,
}

/// Passes every file under `root` through the floor, writing under `work`.
pub fn measure(root: &Path, work: &Path) -> Result<Floor> {
    let files = data::files(root)?;
    let dir = work.join("floor");
    data::clear(&dir)?;
    std::fs::create_dir_all(&dir)?;
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[0x42; 32]).unwrap());
    let mut stages = Stages::default();
    // Block-aligned room for one chunk.
    let mut raw = vec![0u8; CHUNK + BLOCK];
    let shift = raw.as_ptr().align_offset(BLOCK);
    let buf = &mut raw[shift..shift + CHUNK];
    let mut tags = Vec::with_capacity(CHUNK / RECORD);
    let mut records = 0u64;
    let started = Instant::now();
    for (rel, len) in &files {
        let source = root.join(rel);
        let target = dir.join(rel);
        let mut input = timed(&mut stages.read, || std::fs::File::open(&source))?;
        let mut output = timed(&mut stages.write, || {
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .custom_flags(OFlags::DIRECT.bits() as i32)
                .open(&target)
        })
        .with_context(|| format!("cannot create {} for direct I/O", target.display()))?;
        let mut sent = ring::digest::Context::new(&ring::digest::SHA256);
        let mut received = ring::digest::Context::new(&ring::digest::SHA256);
        let mut left = *len as usize;
        while left > 0 {
            let n = left.min(CHUNK);
            let chunk = &mut buf[..n];
            timed(&mut stages.read, || input.read_exact(chunk))?;
            timed(&mut stages.hash_sent, || sent.update(chunk));
            tags.clear();
            let first = records;
            timed(&mut stages.seal, || {
                for record in chunk.chunks_mut(RECORD) {
                    tags.push(
                        key.seal_in_place_separate_tag(nonce(records), Aad::empty(), record)
                            .unwrap(),
                    );
                    records += 1;
                }
            });
            timed(&mut stages.open, || -> Result<()> {
                for (i, (record, tag)) in chunk.chunks_mut(RECORD).zip(&tags).enumerate() {
                    key.open_in_place_separate_tag(
                        nonce(first + i as u64),
                        Aad::empty(),
                        *tag,
                        record,
                        0..,
                    )
                    .map_err(|_| anyhow::anyhow!("a record of {} failed to open", rel.display()))?;
                }
                Ok(())
            })?;
            timed(&mut stages.hash_received, || received.update(chunk));
            ensure!(
                n.is_multiple_of(BLOCK) || left == n,
                "a chunk that is not whole blocks before the end of {}",
                target.display()
            );
            timed(&mut stages.write, || {
                write_direct(&mut output, &target, chunk)
            })?;
            left -= n;
        }
        let (sent, received) = timed(&mut stages.hash_received, || {
            (sent.finish(), received.finish())
        });
        ensure!(
            sent.as_ref() == received.as_ref(),
            "{} came out with another SHA-256 than went in",
            rel.display()
        );
    }
    let handle = std::fs::File::open(&dir)?;
    timed(&mut stages.sync, || rustix::fs::syncfs(&handle))?;
    let seconds = started.elapsed().as_secs_f64();
    let measured = Measured {
        seconds,
        files: files.len(),
        bytes: files.iter().map(|(_, len)| len).sum(),
        sender_cpu: stages.read + stages.hash_sent + stages.seal,
        receiver_cpu: stages.open + stages.hash_received + stages.write + stages.sync,
        rss: None,
    };
    let written = crate::ferry::count(&dir)?;
    ensure!(
        written == (measured.files, measured.bytes),
        "the floor wrote {written:?} (files, bytes) of {:?}",
        (measured.files, measured.bytes)
    );
    data::retire(&dir, work)?;
    Ok(Floor { measured, stages })
}

/// A line naming each stage's CPU seconds (medians over `floors`).
pub fn stages_line(floors: &[Floor]) -> String {
    let m = |f: fn(&Stages) -> f64| {
        crate::stats::median(&floors.iter().map(|x| f(&x.stages)).collect::<Vec<_>>())
    };
    format!(
        "read {:.2}, SHA-256 {:.2} + {:.2}, AES-GCM seal {:.2} and open {:.2}, direct write {:.2}, syncfs {:.2}",
        m(|s| s.read),
        m(|s| s.hash_sent),
        m(|s| s.hash_received),
        m(|s| s.seal),
        m(|s| s.open),
        m(|s| s.write),
        m(|s| s.sync),
    )
}

/// This thread's CPU clock, in seconds.
fn thread_cpu() -> f64 {
    let t = clock_gettime(ClockId::ThreadCPUTime);
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
}

/// Runs `f`, adding its CPU seconds to `stage`.
fn timed<T>(stage: &mut f64, f: impl FnOnce() -> T) -> T {
    let start = thread_cpu();
    let out = f();
    *stage += thread_cpu() - start;
    out
}

/// The nonce of the `n`th record of a connection, as TLS 1.3 counts them.
fn nonce(n: u64) -> Nonce {
    let mut bytes = [0u8; NONCE_LEN];
    bytes[4..].copy_from_slice(&n.to_be_bytes());
    Nonce::assume_unique_for_key(bytes)
}

/// Writes `data`'s whole blocks with direct I/O and a partial last block
/// through the page cache, as the collector stages a file.
fn write_direct(file: &mut std::fs::File, path: &Path, data: &[u8]) -> std::io::Result<()> {
    let whole = data.len() / BLOCK * BLOCK;
    file.write_all(&data[..whole])?;
    if whole < data.len() {
        let mut tail = std::fs::OpenOptions::new().append(true).open(path)?;
        tail.write_all(&data[whole..])?;
    }
    Ok(())
}
