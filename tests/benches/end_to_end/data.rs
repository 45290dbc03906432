//! The data sets, made once from a fixed seed and reused: D1 one 1 GiB
//! file, D2 10,000 files of 100 KiB in 10 directories, D3 200 files of
//! 5 MiB; plus the small-file sets of the fan-in and the apply rate.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

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

/// Sets a finished run's output aside instead of deleting it: every file in
/// it is truncated to nothing (its space returns at once) and the emptied
/// tree is moved under `<work>/retired`, which the benchmark never deletes
/// (delete it by hand when you like; it holds only empty files).
///
/// Why not delete: on an ext4 file system without a journal (this project's
/// VMs), inode allocation passes over inodes freed in the last minute (six
/// minutes if their inode-table block is dirty), scanning from the start of
/// the group on every allocation. A run that follows the deletion of 10,000
/// files spends most of its file-creating CPU in that scan (a profile of D2
/// showed it as most of the receiver's kernel time), and how much depends
/// on which tool ran before. Truncating frees the blocks but no inode.
pub fn retire(dir: &Path, work: &Path) -> Result<()> {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    empty_files(dir)?;
    let retired = work.join("retired");
    std::fs::create_dir_all(&retired)?;
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = dir.file_name().unwrap_or_default().to_string_lossy();
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    std::fs::rename(dir, retired.join(format!("{name}-{stamp}-{n}")))?;
    Ok(())
}

/// Truncates every regular file under `dir` to length 0, except logs (kept
/// to look into a slow run).
fn empty_files(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            empty_files(&entry.path())?;
        } else if kind.is_file() && entry.path().extension().is_none_or(|e| e != "log") {
            std::fs::OpenOptions::new()
                .write(true)
                .open(entry.path())?
                .set_len(0)?;
        }
    }
    Ok(())
}

/// Puts the machine in the same state before every timed run: dirty pages
/// written out, then (as root) the page, dentry and inode caches dropped
/// and the data set read back in, so each tool starts with its source in
/// memory and the same cold caches for everything else. Returns whether the
/// caches could be dropped.
pub fn settle(source: &Path) -> Result<bool> {
    let dropped = drop_caches()?;
    if dropped {
        warm(source)?;
    }
    Ok(dropped)
}

/// Writes dirty pages out, then (as root) drops the page, dentry and inode
/// caches. Returns whether they could be dropped.
fn drop_caches() -> Result<bool> {
    anyhow::ensure!(
        std::process::Command::new("sync").status()?.success(),
        "sync failed"
    );
    Ok(std::fs::write("/proc/sys/vm/drop_caches", "3\n").is_ok())
}

/// Reads every file under `dir` once, to bring it into the page cache.
fn warm(dir: &Path) -> Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            warm(&path)?;
        } else {
            let mut file = std::fs::File::open(&path)?;
            while std::io::Read::read(&mut file, &mut buf)? > 0 {}
        }
    }
    Ok(())
}

/// What writing new data through the page cache costs on this machine right
/// now, in MB/s: `mib` MiB written into a new file in `dir` and fsynced, a
/// few seconds after the caches were dropped (as before every timed run),
/// then the same again at once into the pages just freed.
///
/// Where a guest hands memory it has freed back to its host, the first
/// costs a fault in the host for every page; that cost moves with the host,
/// from run to run. rsync and sftp write every byte they receive through the
/// page cache; Ferry's collector writes the files of 64 KiB or more with
/// direct I/O. A baseline's receiver CPU is read beside these figures.
pub fn page_cache_rates(dir: &Path, mib: usize) -> Result<(f64, f64)> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join("page-cache-probe");
    let buf = vec![0x5au8; 1 << 20];
    let write = || -> Result<f64> {
        let start = std::time::Instant::now();
        let mut file = std::fs::File::create(&path)?;
        for _ in 0..mib {
            file.write_all(&buf)?;
        }
        file.sync_all()?;
        let seconds = start.elapsed().as_secs_f64();
        Ok((mib << 20) as f64 / 1e6 / seconds)
    };
    drop_caches()?;
    // Freed memory is handed back a couple of seconds after it is freed.
    std::thread::sleep(std::time::Duration::from_secs(3));
    let fresh = write()?;
    std::fs::remove_file(&path)?;
    let reused = write()?;
    std::fs::remove_file(&path)?;
    Ok((fresh, reused))
}

/// Regular files under `root` (path relative to it, length), sorted.
pub fn files(root: &Path) -> Result<Vec<(PathBuf, u64)>> {
    let mut files = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let here = root.join(&rel);
        for entry in
            std::fs::read_dir(&here).with_context(|| format!("cannot list {}", here.display()))?
        {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_dir() {
                stack.push(rel.join(entry.file_name()));
            } else if meta.is_file() {
                files.push((rel.join(entry.file_name()), meta.len()));
            }
        }
    }
    files.sort();
    Ok(files)
}
