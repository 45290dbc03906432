//! The data sets, made once from a fixed seed and reused: D1 one 1 GiB
//! file, D2 10,000 files of 100 KiB in 10 directories, D3 200 files of
//! 5 MiB; plus the small-file sets of the fan-in and the apply rate.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

/// One of the three transfer data sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataSet {
    D1,
    D2,
    D3,
}

impl DataSet {
    pub const ALL: [DataSet; 3] = [DataSet::D1, DataSet::D2, DataSet::D3];

    pub fn parse(text: &str) -> Result<Self> {
        Ok(match text {
            "d1" | "D1" => Self::D1,
            "d2" | "D2" => Self::D2,
            "d3" | "D3" => Self::D3,
            other => bail!("unknown data set {other:?} (d1, d2 or d3)"),
        })
    }

    /// Files (relative path, size).
    pub fn files(self) -> Vec<(String, usize)> {
        match self {
            Self::D1 => vec![("rfeye002073_220307_T175758.bin".into(), 1 << 30)],
            Self::D2 => (0..10_000)
                .map(|i| (format!("dir{:02}/file-{i:05}.bin", i / 1000), 100 << 10))
                .collect(),
            Self::D3 => (0..200)
                .map(|i| (format!("rfeye002073_220307_T{i:06}.bin"), 5 << 20))
                .collect(),
        }
    }
}

impl std::fmt::Display for DataSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::D1 => "D1 1 × 1 GiB",
            Self::D2 => "D2 10,000 × 100 KiB",
            Self::D3 => "D3 200 × 5 MiB",
        })
    }
}

/// The directory holding `set`, made (once) under `base`.
pub fn ensure(base: &Path, set: DataSet) -> Result<PathBuf> {
    let name = format!("{set:?}").to_lowercase();
    make(base, &name, &set.files(), 0x00f3_7272 ^ set as u64)
}

/// A set of `files` under `base/name`, made once: a marker beside the
/// directory records that it is complete.
pub fn make(base: &Path, name: &str, files: &[(String, usize)], seed: u64) -> Result<PathBuf> {
    let dir = base.join(name);
    let marker = base.join(format!("{name}.complete"));
    if marker.exists() {
        return Ok(dir);
    }
    clear(&dir)?;
    eprintln!("making data set {name} in {}", dir.display());
    let mut rng = Rng(seed | 1);
    let mut buf = Vec::new();
    for (rel, size) in files {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let mut file = std::io::BufWriter::new(std::fs::File::create(&path)?);
        let mut left = *size;
        while left > 0 {
            let n = left.min(1 << 20);
            buf.resize(n, 0);
            rng.fill(&mut buf);
            file.write_all(&buf)?;
            left -= n;
        }
        file.flush()?;
    }
    std::fs::write(&marker, format!("{} files\n", files.len()))?;
    Ok(dir)
}

/// Removes `dir` and everything in it, if it exists.
pub fn clear(dir: &Path) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    Ok(())
}

/// xorshift64: random-looking, incompressible, repeatable content.
#[derive(Debug)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let bytes = self.next().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}
