//! The indexerD-compatible text files: `DUE_BACKUP` (the due set, one
//! absolute path per line, sorted and unique) and `BACKUP_DONE` (appended
//! with every acknowledged file), and the import of a `DUE_BACKUP` left by
//! indexerD.
//!
//! The ledger is the truth; these files are views of it kept for the legacy
//! tools that read them.
//!
//! - `DUE_BACKUP` is replaced atomically: written to a temporary file in the
//!   same directory, fsynced, renamed over the old one, and the directory
//!   fsynced. A reader sees the old or the new list, never a mix.
//! - Lines are raw path bytes followed by `\n`, sorted by byte value (the
//!   order of `LC_ALL=C sort`), without duplicates. Duplicates are equal
//!   bytes too, not equal `Path`s: `Path` equality takes `//a` and `/a` for
//!   one path, which after a byte sort need not be neighbours, so
//!   deduplicating by it kept or dropped a spelling by chance.
//! - **Names containing a newline** cannot be written to a line-based file
//!   without a reader splitting them in two, and **names ending in `\r`**
//!   would lose it to the CRLF handling of the import below. Such a path is
//!   left out of both files and returned to the caller to warn about; the
//!   file stays in the ledger and is sent like any other. Quoting or escaping
//!   was rejected because legacy readers would take the escaped text for a
//!   real path.
//! - **Import** reads the file line by line (memory bounded by one line of at
//!   most [`MAX_LINE`] bytes plus the result). It strips one `\r` before the
//!   `\n` (CRLF files), skips blank lines and duplicates, and keeps every
//!   other byte as part of the name: legacy files hold plain paths written by
//!   a program, so a trailing space is far more likely part of a name than
//!   an accident, and trimming it would point at a file that does not exist.
//!   Lines come in two forms, both taken: the plain one (the path) and the
//!   one indexerD itself writes, the directory, a NUL byte, `/` and the file
//!   name, and a NUL byte (`/data\0/a.bin\0`; its own server drops the NULs
//!   when it reads the list). A path is bytes throughout: nothing is decoded.
//!   Relative paths, NUL bytes anywhere else and over-long lines are refused
//!   line by line (reported with the line's number and reason, not fatal), so
//!   one bad line does not lose the rest of the list.
//! - `BACKUP_DONE` left by indexerD is read the same way, streamed
//!   ([`read_backup_done`]): it can hold a station's whole history.

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Longest line accepted on import (Linux `PATH_MAX`, with its NUL).
pub const MAX_LINE: usize = 4096;

/// At most this many refused lines are kept in an [`Import`] (all are
/// counted).
pub const MAX_REFUSED_KEPT: usize = 100;

/// Why a list file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum DueListError {
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} has no parent directory and no file name", path.display())]
    BadPath { path: PathBuf },
}

impl DueListError {
    /// Whether a write failed for want of space (or quota).
    pub fn is_disk_full(&self) -> bool {
        matches!(self, Self::Write { source, .. } if crate::state_disk::is_full(source))
    }
}

/// What [`write_due_backup`] wrote.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Written {
    /// Lines in the file now.
    pub lines: usize,
    /// Paths left out because a line cannot hold them (see
    /// [`representable`]).
    pub unrepresentable: Vec<PathBuf>,
}

/// The result of [`import_due_backup`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Import {
    /// Absolute paths, sorted by bytes and unique.
    pub paths: Vec<PathBuf>,
    /// The first [`MAX_REFUSED_KEPT`] refused lines.
    pub refused: Vec<RefusedLine>,
    /// How many lines were refused in all.
    pub refused_count: usize,
}

/// A line of an imported file that is not an absolute path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedLine {
    /// 1-based line number.
    pub line: usize,
    /// The line's first 200 bytes for the warning, in the text form of
    /// names (`ferry_common::name`), with control characters escaped the
    /// same way (`\x00` for a NUL) so that none is invisible.
    pub text: String,
    /// Why it was refused.
    pub reason: Refusal,
}

/// Why an imported line was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not an absolute path.
    Relative,
    /// Has a NUL byte other than where indexerD puts them (no path can
    /// hold one).
    Nul,
    /// Longer than [`MAX_LINE`] bytes.
    TooLong,
}

impl Refusal {
    /// A short stable name (`relative`, `nul`, `too-long`) for files and
    /// machine-readable output.
    pub fn key(self) -> &'static str {
        match self {
            Refusal::Relative => "relative",
            Refusal::Nul => "nul",
            Refusal::TooLong => "too-long",
        }
    }

    /// The refusal of [`Refusal::key`].
    pub fn from_key(key: &str) -> Option<Self> {
        [Refusal::Relative, Refusal::Nul, Refusal::TooLong]
            .into_iter()
            .find(|r| r.key() == key)
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refusal::Relative => "not an absolute path",
            Refusal::Nul => "a NUL byte outside indexerD's directory\\0/name\\0 form",
            Refusal::TooLong => "longer than the longest possible path",
        })
    }
}

/// Replaces `path` atomically with the sorted, unique list of `paths`, one
/// per line. Paths a line cannot hold ([`representable`]) are left out
/// and returned.
pub fn write_due_backup<I, P>(path: &Path, paths: I) -> Result<Written, DueListError>
where
    I: IntoIterator<Item = P>,
    P: Into<PathBuf>,
{
    let mut lines: Vec<PathBuf> = paths.into_iter().map(Into::into).collect();
    lines.sort_unstable_by(|a, b| bytes(a).cmp(bytes(b)));
    let mut writer = DueBackupWriter::create(path)?;
    for line in &lines {
        writer.push(line);
    }
    writer.commit()
}

/// A new `DUE_BACKUP` written as paths come, in byte order, so that a due
/// set of any size is never held in memory; it replaces the old list
/// atomically at [`DueBackupWriter::commit`] (dropped before that, it
/// leaves the old list in place).
#[derive(Debug)]
pub struct DueBackupWriter {
    path: PathBuf,
    dir: PathBuf,
    tmp: PathBuf,
    out: Option<BufWriter<File>>,
    /// The last line written (a repeated path is written once).
    last: Vec<u8>,
    lines: usize,
    unrepresentable: Vec<PathBuf>,
    /// The first write error; [`DueBackupWriter::commit`] returns it.
    failed: Option<io::Error>,
}

impl DueBackupWriter {
    /// Starts a new list beside `path` (a temporary file in its directory).
    pub fn create(path: &Path) -> Result<Self, DueListError> {
        let write_err = |source| DueListError::Write {
            path: path.to_owned(),
            source,
        };
        let (dir, name) = match (path.parent(), path.file_name()) {
            (Some(dir), Some(name)) => (dir, name),
            _ => {
                return Err(DueListError::BadPath {
                    path: path.to_owned(),
                });
            }
        };
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        let mut tmp_name = b".".to_vec();
        tmp_name.extend_from_slice(name.as_bytes());
        tmp_name.extend_from_slice(format!(".{}.tmp", std::process::id()).as_bytes());
        let tmp = dir.join(OsStr::from_bytes(&tmp_name));
        // A leftover from a process with our pid that died mid-write.
        match fs::remove_file(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(write_err(e)),
        }
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(write_err)?;
        Ok(Self {
            path: path.to_owned(),
            dir: dir.to_owned(),
            tmp,
            out: Some(BufWriter::new(file)),
            last: Vec::new(),
            lines: 0,
            unrepresentable: Vec::new(),
            failed: None,
        })
    }

    /// Adds one path; paths must come in byte order. One a line cannot
    /// hold is left out (and reported by [`DueBackupWriter::commit`]).
    pub fn push(&mut self, path: &Path) {
        if !representable(path) {
            self.unrepresentable.push(path.to_owned());
            return;
        }
        let line = bytes(path);
        if self.lines > 0 && line == self.last.as_slice() {
            return;
        }
        if self.failed.is_some() {
            return;
        }
        if let Some(out) = self.out.as_mut()
            && let Err(e) = out.write_all(line).and_then(|()| out.write_all(b"\n"))
        {
            self.failed = Some(e);
            return;
        }
        self.last.clear();
        self.last.extend_from_slice(line);
        self.lines += 1;
    }

    /// Makes the new list durable and puts it in place of the old one.
    pub fn commit(mut self) -> Result<Written, DueListError> {
        let result = (|| {
            if let Some(error) = self.failed.take() {
                return Err(error);
            }
            let Some(out) = self.out.take() else {
                return Err(io::Error::other("list already committed"));
            };
            let file = out.into_inner().map_err(io::IntoInnerError::into_error)?;
            file.sync_all()?;
            drop(file);
            fs::rename(&self.tmp, &self.path)?;
            sync_dir(&self.dir)
        })();
        if let Err(source) = result {
            let _ = fs::remove_file(&self.tmp);
            return Err(DueListError::Write {
                path: self.path.clone(),
                source,
            });
        }
        let mut unrepresentable = std::mem::take(&mut self.unrepresentable);
        unrepresentable.sort_unstable_by(|a, b| bytes(a).cmp(bytes(b)));
        unrepresentable.dedup_by(|a, b| bytes(a) == bytes(b));
        Ok(Written {
            lines: self.lines,
            unrepresentable,
        })
    }
}

impl Drop for DueBackupWriter {
    fn drop(&mut self) {
        if self.out.take().is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Appends `paths` to `BACKUP_DONE`, one per line in the order given, and
/// fsyncs. Paths a line cannot hold ([`representable`]) are left out and
/// returned.
pub fn append_backup_done<I, P>(path: &Path, paths: I) -> Result<Vec<PathBuf>, DueListError>
where
    I: IntoIterator<Item = P>,
    P: AsRef<Path>,
{
    let mut text = Vec::new();
    let mut unrepresentable = Vec::new();
    for p in paths {
        let p = p.as_ref();
        if representable(p) {
            text.extend_from_slice(bytes(p));
            text.push(b'\n');
        } else {
            unrepresentable.push(p.to_owned());
        }
    }
    if text.is_empty() {
        return Ok(unrepresentable);
    }
    let append = || -> io::Result<()> {
        let mut file = OpenOptions::new().append(true).create(true).open(path)?;
        // One write: with O_APPEND the lines land together even if another
        // process appends too.
        file.write_all(&text)?;
        file.sync_data()
    };
    append().map_err(|source| DueListError::Write {
        path: path.to_owned(),
        source,
    })?;
    Ok(unrepresentable)
}

/// The paths on the last lines of `BACKUP_DONE`, reading at most
/// `max_bytes` from its end (a first, partial line is dropped); none if the
/// file does not exist. A restarted agent uses it to tell the acked files
/// it had written there before it stopped from those it had not.
pub fn backup_done_tail(path: &Path, max_bytes: u64) -> Result<Vec<PathBuf>, DueListError> {
    let read_err = |source| DueListError::Read {
        path: path.to_owned(),
        source,
    };
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(read_err(e)),
    };
    let len = file.metadata().map_err(read_err)?.len();
    let start = len.saturating_sub(max_bytes);
    io::Seek::seek(&mut file, io::SeekFrom::Start(start)).map_err(read_err)?;
    let mut text = Vec::new();
    file.read_to_end(&mut text).map_err(read_err)?;
    let mut lines = text.split(|&b| b == b'\n');
    if start > 0 {
        lines.next();
    }
    Ok(lines
        .filter(|line| !line.is_empty())
        .map(|line| PathBuf::from(OsStr::from_bytes(line)))
        .collect())
}

/// Reads a `DUE_BACKUP` left by indexerD. `Ok(None)` if there is none.
pub fn import_due_backup(path: &Path) -> Result<Option<Import>, DueListError> {
    let read_err = |source| DueListError::Read {
        path: path.to_owned(),
        source,
    };
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(read_err(e)),
    };
    parse_due_backup(BufReader::new(file))
        .map(Some)
        .map_err(read_err)
}

/// Reads an indexerD `BACKUP_DONE` line by line, by the import rules of
/// the module documentation, handing each path to `each` as it is read
/// (unsorted, duplicates kept). Returns how many lines were refused;
/// `Ok(None)` if there is no such file.
pub fn read_backup_done(
    path: &Path,
    mut each: impl FnMut(PathBuf),
) -> Result<Option<usize>, DueListError> {
    let read_err = |source| DueListError::Read {
        path: path.to_owned(),
        source,
    };
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(read_err(e)),
    };
    let mut lines = Lines::new(BufReader::new(file));
    let mut refused = 0;
    while let Some(line) = lines.next_line().map_err(read_err)? {
        match line {
            Line::Path(path) => each(path),
            Line::Refused(_) => refused += 1,
        }
    }
    Ok(Some(refused))
}

/// Parses the text of a `DUE_BACKUP` from `reader`, by the import rules of
/// the module documentation; [`import_due_backup`] is this over the file.
/// Holds at most one line of [`MAX_LINE`] bytes besides the result, however
/// long the input. Errors only when `reader` does.
pub fn parse_due_backup(reader: impl BufRead) -> io::Result<Import> {
    let mut import = Import::default();
    let mut lines = Lines::new(reader);
    while let Some(line) = lines.next_line()? {
        match line {
            Line::Path(path) => import.paths.push(path),
            Line::Refused(refused) => {
                import.refused_count += 1;
                if import.refused.len() < MAX_REFUSED_KEPT {
                    import.refused.push(refused);
                }
            }
        }
    }
    import.paths.sort_unstable_by(|a, b| bytes(a).cmp(bytes(b)));
    import.paths.dedup_by(|a, b| bytes(a) == bytes(b));
    Ok(import)
}

/// One non-blank line of a list file.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Line {
    Path(PathBuf),
    Refused(RefusedLine),
}

/// The lines of a list file, read one at a time into one buffer.
struct Lines<R> {
    reader: R,
    line: Vec<u8>,
    number: usize,
}

impl<R: BufRead> Lines<R> {
    fn new(reader: R) -> Self {
        Self {
            reader,
            line: Vec::with_capacity(256),
            number: 0,
        }
    }

    /// The next non-blank line; `None` at the end.
    fn next_line(&mut self) -> io::Result<Option<Line>> {
        // One byte more than the limit tells an over-long line apart.
        let limit = u64::try_from(MAX_LINE + 1).unwrap_or(u64::MAX);
        loop {
            let line = &mut self.line;
            line.clear();
            self.number += 1;
            let n = self.reader.by_ref().take(limit).read_until(b'\n', line)?;
            if n == 0 {
                return Ok(None);
            }
            let complete = line.last() == Some(&b'\n');
            if complete {
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
            }
            if !complete && line.len() > MAX_LINE {
                self.reader.skip_until(b'\n')?;
                return Ok(Some(refused(self.number, line, Refusal::TooLong)));
            }
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            return Ok(Some(match path_of_line(line) {
                Ok(path) => Line::Path(path),
                Err(reason) => refused(self.number, line, reason),
            }));
        }
    }
}

/// The path a (non-blank) line names, in either form.
fn path_of_line(line: &[u8]) -> Result<PathBuf, Refusal> {
    let path = match line.iter().position(|&b| b == 0) {
        None => line.to_vec(),
        Some(first) => {
            // indexerD's form: `<dir>\0/<name>\0` (the last NUL optional).
            let (dir, rest) = (&line[..first], &line[first + 1..]);
            let name = rest.strip_suffix(b"\0").unwrap_or(rest);
            if dir.is_empty() || name.len() < 2 || name[0] != b'/' || name.contains(&0) {
                return Err(Refusal::Nul);
            }
            // A file in `/` has the directory `/`; any other is kept byte
            // for byte (`/a/` and `/b` make `/a//b`).
            let mut path = if dir == b"/" {
                Vec::new()
            } else {
                dir.to_vec()
            };
            path.extend_from_slice(name);
            path
        }
    };
    if path.first() != Some(&b'/') {
        return Err(Refusal::Relative);
    }
    Ok(PathBuf::from(OsStr::from_bytes(&path)))
}

/// Whether `path` can be one line of a list file and read back the same:
/// no newline in it, and no `\r` at its end (the import takes a `\r`
/// before the newline for a CRLF line end).
pub fn representable(path: &Path) -> bool {
    let bytes = bytes(path);
    !bytes.contains(&b'\n') && bytes.last() != Some(&b'\r')
}

fn refused(line: usize, text: &[u8], reason: Refusal) -> Line {
    let shown = &text[..text.len().min(200)];
    Line::Refused(RefusedLine {
        line,
        text: visible(shown),
        reason,
    })
}

/// `bytes` in the text form of names, with control characters written
/// `\xhh` too: for a person to read (a NUL in the form of names would be
/// invisible), not to decode.
fn visible(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for c in ferry_common::name::encode(bytes).chars() {
        if c.is_ascii_control() {
            out.push_str(&format!("\\x{:02x}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    out
}

fn bytes(path: &Path) -> &[u8] {
    path.as_os_str().as_bytes()
}

/// Makes a rename in `dir` durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests;
