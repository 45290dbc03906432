//! Workloads with a ground truth: files of random content written into
//! station roots (hashed as they are written), and the checks that the
//! repository and the catalogs hold exactly those files, once each, with
//! the same content.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use ferry_collector::journal::Record;
use ferry_common::protocol::Sha256;

use crate::agent::tree;
use crate::rng::Rng;

/// One file of a workload: where it goes and what it holds.
#[derive(Debug, Clone)]
pub struct FileSpec {
    /// Index of the station it belongs to.
    pub station: usize,
    /// Path below the station's root.
    pub rel: String,
    pub size: u64,
    /// Seed of its content.
    pub seed: u64,
    /// Written under a temporary name and renamed into place (as large
    /// files are, so that no agent sees them half written); otherwise
    /// written in place.
    pub atomic: bool,
}

/// Writes `spec`'s content under `root`, 1 MiB at a time (never whole in
/// memory), and returns its SHA-256. The content is a ChaCha20 key stream
/// keyed by the seed: random to any hash or compressor, and fast to make.
pub fn write_file(root: &Path, spec: &FileSpec) -> std::io::Result<Sha256> {
    let path = root.join(&spec.rel);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    // The agents of the harness exclude `*.tmp`.
    let target = if spec.atomic {
        path.with_extension("tmp")
    } else {
        path.clone()
    };
    let mut file = std::fs::File::create(&target)?;
    let key = {
        let mut rng = Rng::new(spec.seed);
        let key = ring::aead::UnboundKey::new(&ring::aead::CHACHA20_POLY1305, &rng.bytes(32))
            .map_err(|_| std::io::Error::other("chacha20 key"))?;
        ring::aead::LessSafeKey::new(key)
    };
    let mut hash = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    let mut left = spec.size;
    let mut piece = 0u64;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        buf[..n].fill(0);
        let mut nonce = [0u8; 12];
        nonce[..8].copy_from_slice(&piece.to_le_bytes());
        piece += 1;
        let _tag = key
            .seal_in_place_separate_tag(
                ring::aead::Nonce::assume_unique_for_key(nonce),
                ring::aead::Aad::empty(),
                &mut buf[..n],
            )
            .map_err(|_| std::io::Error::other("chacha20 stream"))?;
        hash.update(&buf[..n]);
        file.write_all(&buf[..n])?;
        left -= n as u64;
    }
    drop(file);
    if spec.atomic {
        std::fs::rename(&target, &path)?;
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(hash.finish().as_ref());
    Ok(out)
}

/// What every station should end up with: per (station, catalog path
/// `<root>/<rel>`), the size and hash of the file written.
#[derive(Debug, Clone, Default)]
pub struct GroundTruth {
    pub files: BTreeMap<(String, String), (u64, Sha256)>,
}

impl GroundTruth {
    /// Records a file written under root `data` of `station`.
    pub fn add(&mut self, station: &str, rel: &str, size: u64, sha256: Sha256) {
        self.files
            .insert((station.to_owned(), format!("data/{rel}")), (size, sha256));
    }

    /// Total bytes of every file.
    pub fn bytes(&self) -> u64 {
        self.files.values().map(|(size, _)| size).sum()
    }

    /// Compares the repository with the ground truth: every file present
    /// under `<repository>/<station>/<path>` with the right content, nothing
    /// else there (no sibling, no stray). Returns the problems found.
    pub fn check_repository(&self, repository: &Path) -> Problems {
        let mut problems = Problems::default();
        let expected: BTreeSet<PathBuf> = self
            .files
            .keys()
            .map(|(station, path)| Path::new(station).join(path))
            .collect();
        let present: BTreeSet<PathBuf> = tree(repository).into_iter().collect();
        for path in expected.difference(&present) {
            problems
                .lost
                .push(format!("missing from the repository: {}", path.display()));
        }
        for path in present.difference(&expected) {
            problems
                .extra
                .push(format!("not in the ground truth: {}", path.display()));
        }
        for ((station, path), (size, sha)) in &self.files {
            let stored = repository.join(station).join(path);
            if !stored.exists() {
                continue;
            }
            match hash_file(&stored) {
                Ok((len, got)) if len == *size && got == *sha => {}
                Ok((len, _)) => problems.wrong.push(format!(
                    "{}: {len} bytes stored, content differs from the {size} bytes written",
                    stored.display()
                )),
                Err(e) => problems
                    .wrong
                    .push(format!("{}: unreadable: {e}", stored.display())),
            }
        }
        problems
    }

    /// Compares catalog rows with the ground truth: one row per file, with
    /// its size, hash and stored name.
    pub fn check_catalog(&self, name: &str, rows: &[Record]) -> Problems {
        let mut problems = Problems::default();
        let mut seen: BTreeMap<(String, String), usize> = BTreeMap::new();
        for row in rows {
            let key = (row.station.clone(), row.path.clone());
            *seen.entry(key.clone()).or_default() += 1;
            match self.files.get(&key) {
                None => problems
                    .extra
                    .push(format!("{name}: row not in the ground truth: {key:?}")),
                Some((size, sha)) => {
                    if row.size != *size || row.sha256 != *sha {
                        problems.wrong.push(format!(
                            "{name}: row {key:?} has {} bytes / another hash than the {size} bytes written",
                            row.size
                        ));
                    }
                    let stored_as = format!("{}/{}", key.0, key.1);
                    if row.stored_as != stored_as {
                        problems.wrong.push(format!(
                            "{name}: row {key:?} stored as {}, expected {stored_as}",
                            row.stored_as
                        ));
                    }
                }
            }
        }
        for (key, count) in &seen {
            if *count > 1 {
                problems
                    .duplicates
                    .push(format!("{name}: {count} rows for {key:?}"));
            }
        }
        for key in self.files.keys() {
            if !seen.contains_key(key) {
                problems.lost.push(format!("{name}: no row for {key:?}"));
            }
        }
        problems
    }
}

/// What a check found wrong, by kind.
#[derive(Debug, Clone, Default)]
pub struct Problems {
    /// Files written but not stored or not catalogued.
    pub lost: Vec<String>,
    /// Files or rows more than once.
    pub duplicates: Vec<String>,
    /// Stored or catalogued with other content or under another name.
    pub wrong: Vec<String>,
    /// Present but never written.
    pub extra: Vec<String>,
}

impl Problems {
    pub fn is_empty(&self) -> bool {
        self.lost.is_empty()
            && self.duplicates.is_empty()
            && self.wrong.is_empty()
            && self.extra.is_empty()
    }

    /// Adds `other`'s problems to these.
    pub fn merge(&mut self, other: Problems) {
        self.lost.extend(other.lost);
        self.duplicates.extend(other.duplicates);
        self.wrong.extend(other.wrong);
        self.extra.extend(other.extra);
    }
}

impl std::fmt::Display for Problems {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for line in self
            .lost
            .iter()
            .chain(&self.duplicates)
            .chain(&self.wrong)
            .chain(&self.extra)
            .take(50)
        {
            writeln!(f, "{line}")?;
        }
        Ok(())
    }
}

/// Size and SHA-256 of a file, read in chunks.
pub fn hash_file(path: &Path) -> std::io::Result<(u64, Sha256)> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut hash = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        len += n as u64;
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(hash.finish().as_ref());
    Ok((len, out))
}
