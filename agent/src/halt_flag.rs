//! The legacy `HALT_FLAG` lock cookie: whoever holds the file owns
//! `DUE_BACKUP` (the station's indexerD, the central backup job or this
//! agent); the others wait a random time and retry.
//!
//! The flag holds `key=value` lines:
//!
//! ```text
//! owner=ferry-agent
//! pid=4242
//! host=station-01
//! time=2026-04-20T12:00:00Z
//! purpose=transfer
//! token=9f0c2b4a1d7e3355
//! ```
//!
//! Rules, all on the file system (so they hold against other processes):
//!
//! - **Raise** creates the flag exclusively with its whole content: the
//!   content is written and fsynced under a private name, then hard-linked to
//!   the flag's name, which fails if the flag exists (the NFS-safe form of
//!   `O_CREAT|O_EXCL`, and a crash can never leave a half-written flag).
//!   Where hard links are not supported it falls back to `O_CREAT|O_EXCL`.
//! - **Someone else's flag** makes [`HaltFlag::raise`] return
//!   [`Raise::Busy`]; the caller waits [`retry_delay`] (random, between half
//!   the maximum and the maximum) and tries again.
//! - **Stale flags** (modified longer ago than the halt timeout) are taken
//!   over with a warning naming the previous holder. Age is the file's mtime,
//!   as for indexerD: the `time=` line is informative only (a foreign holder
//!   may not write one, and a wrong one must not pin a flag forever). A
//!   holder keeps a long hold fresh with [`Held::refresh`].
//! - **A flag left by a dead ferry-agent** of this host (its pid no longer
//!   runs, e.g. after `kill -9`, or the flag predates the last boot, since
//!   pids repeat across boots) is taken over at once rather than after the
//!   timeout.
//! - **Operator halts** (`ferry-agent halt`, purpose `operator-halt`) never
//!   go stale and are never taken over: an operator's pause lasts until
//!   `ferry-agent resume`, however long that is.
//! - **Lower** removes the flag only if it still holds our exact content, so
//!   a flag taken over by someone else is never deleted by us. Removal (on
//!   lower, take-over and resume) first renames the flag to a private name,
//!   checks what it moved, and puts back anything that is not what it meant
//!   to remove.

use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferry_common::backoff::{self, random_u64};

/// The `owner=` value this agent writes.
pub const OWNER: &str = "ferry-agent";

/// The purpose of an operator's pause; such a flag never goes stale.
pub const OPERATOR_HALT: &str = "operator-halt";

/// Flag content read at most (a flag is a few short lines).
const MAX_CONTENT: u64 = 4096;

/// Why the flag could not be raised, inspected or lowered.
#[derive(Debug, thiserror::Error)]
pub enum HaltFlagError {
    #[error("cannot raise halt flag {}: {source}", path.display())]
    Raise {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read halt flag {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot remove halt flag {}: {source}", path.display())]
    Remove {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("halt flag {} is held by {holder}, not by an operator halt; leaving it", path.display())]
    NotOperatorHalt { path: PathBuf, holder: Box<Holder> },
}

/// The halt flag of one station: where it is and when it goes stale.
#[derive(Debug, Clone)]
pub struct HaltFlag {
    path: PathBuf,
    timeout: Duration,
    pid: u32,
    host: String,
    booted: Option<SystemTime>,
}

/// What a flag file says about its holder, as far as it could be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// `owner=`: which program raised it.
    pub owner: Option<String>,
    /// `pid=`: the holding process.
    pub pid: Option<u32>,
    /// `host=`: where that process runs.
    pub host: Option<String>,
    /// `time=`: when it was raised, as written.
    pub time: Option<String>,
    /// `purpose=`: why.
    pub purpose: Option<String>,
    /// The file's modification time, which decides staleness.
    pub modified: SystemTime,
    /// The content, lossily decoded (at most 4 KiB), for messages.
    pub content: String,
}

/// The outcome of [`HaltFlag::raise`].
#[derive(Debug)]
pub enum Raise {
    /// We hold the flag.
    Raised(Held),
    /// We hold the flag after removing one that was stale or whose holder
    /// is gone (already logged as a warning).
    TookOver {
        /// Our flag.
        held: Held,
        /// Who held it before.
        previous: Holder,
        /// Why it could be taken.
        why: TakeOver,
    },
    /// Someone else holds it; wait [`retry_delay`] and try again.
    Busy(Holder),
}

/// Why a foreign flag was taken over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TakeOver {
    /// Not modified for longer than the halt timeout.
    Stale,
    /// Raised by a ferry-agent of this host whose process no longer runs.
    HolderGone,
}

/// What [`Held::lower`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lowered {
    /// Our flag was removed.
    Removed,
    /// There was no flag any more.
    Gone,
    /// The flag is someone else's now (ours was taken over); left alone.
    NotOurs(Holder),
}

/// What [`HaltFlag::resume`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resumed {
    /// The operator halt was removed.
    Removed(Holder),
    /// There was no flag.
    NotHalted,
}

/// A flag we raised. Dropping it lowers it (best effort); call
/// [`Held::lower`] to see the outcome, or [`Held::keep`] to leave it raised.
#[derive(Debug)]
pub struct Held {
    path: PathBuf,
    content: Vec<u8>,
    active: bool,
}

impl HaltFlag {
    /// The flag at `path`, stale when unmodified for longer than `timeout`.
    pub fn new(path: impl Into<PathBuf>, timeout: Duration) -> Self {
        Self {
            path: path.into(),
            timeout,
            pid: std::process::id(),
            host: hostname(),
            booted: boot_time(),
        }
    }

    /// The flag's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tries to take the flag for `purpose`.
    pub fn raise(&self, purpose: &str, now: SystemTime) -> Result<Raise, HaltFlagError> {
        let content = self.content(purpose, now);
        let mut took_over = None;
        // A few rounds: each lost race means someone else made progress.
        for _ in 0..4 {
            if create_exclusive(&self.path, &content).map_err(|source| HaltFlagError::Raise {
                path: self.path.clone(),
                source,
            })? {
                let held = Held {
                    path: self.path.clone(),
                    content,
                    active: true,
                };
                return Ok(match took_over {
                    Some((previous, why)) => Raise::TookOver {
                        held,
                        previous,
                        why,
                    },
                    None => Raise::Raised(held),
                });
            }
            let Some((holder, raw)) = read_flag(&self.path)? else {
                continue;
            };
            let Some(why) = self.may_take_over(&holder, now) else {
                return Ok(Raise::Busy(holder));
            };
            match seize(&self.path, &raw, Some(holder.modified)).map_err(|source| {
                HaltFlagError::Remove {
                    path: self.path.clone(),
                    source,
                }
            })? {
                Seized::Removed => {
                    tracing::warn!(
                        path = %self.path.display(),
                        previous = %holder,
                        reason = ?why,
                        "halt flag taken over"
                    );
                    took_over = Some((holder, why));
                }
                Seized::Gone | Seized::Changed => {}
            }
        }
        match read_flag(&self.path)? {
            Some((holder, _)) => Ok(Raise::Busy(holder)),
            None => Err(HaltFlagError::Raise {
                path: self.path.clone(),
                source: io::Error::other("the flag kept changing while trying to raise it"),
            }),
        }
    }

    /// Raises an operator halt (`ferry-agent halt`). It is kept raised when
    /// this process ends: the returned [`Held`] is already kept. Busy if
    /// anyone holds the flag (including this station's agent between its
    /// own holds: retry until it lets go).
    pub fn raise_operator_halt(&self, now: SystemTime) -> Result<Raise, HaltFlagError> {
        let mut raise = self.raise(OPERATOR_HALT, now)?;
        if let Raise::Raised(held) | Raise::TookOver { held, .. } = &mut raise {
            held.active = false;
        }
        Ok(raise)
    }

    /// Removes an operator halt (`ferry-agent resume`). Any other flag is
    /// left alone and reported as an error.
    pub fn resume(&self) -> Result<Resumed, HaltFlagError> {
        for _ in 0..4 {
            let Some((holder, raw)) = read_flag(&self.path)? else {
                return Ok(Resumed::NotHalted);
            };
            if !holder.is_operator_halt() {
                return Err(HaltFlagError::NotOperatorHalt {
                    path: self.path.clone(),
                    holder: Box::new(holder),
                });
            }
            let seized = seize(&self.path, &raw, None).map_err(|source| HaltFlagError::Remove {
                path: self.path.clone(),
                source,
            })?;
            match seized {
                Seized::Removed => return Ok(Resumed::Removed(holder)),
                Seized::Gone => return Ok(Resumed::NotHalted),
                Seized::Changed => {}
            }
        }
        Err(HaltFlagError::Remove {
            path: self.path.clone(),
            source: io::Error::other("the flag kept changing while trying to remove it"),
        })
    }

    /// Who holds the flag now, if anyone (for `status`).
    pub fn holder(&self) -> Result<Option<Holder>, HaltFlagError> {
        Ok(read_flag(&self.path)?.map(|(holder, _)| holder))
    }

    /// Whether `holder`'s flag would be taken over at `now`, and why.
    pub fn may_take_over(&self, holder: &Holder, now: SystemTime) -> Option<TakeOver> {
        if holder.is_operator_halt() {
            return None;
        }
        // A ferry-agent of this host that no longer runs: its pid is gone,
        // or the flag predates the last boot (pids repeat across boots).
        if holder.owner.as_deref() == Some(OWNER)
            && holder.host.as_deref() == Some(self.host.as_str())
            && (holder
                .pid
                .is_some_and(|pid| pid != self.pid && !process_runs(pid))
                || self.booted.is_some_and(|booted| holder.modified < booted))
        {
            return Some(TakeOver::HolderGone);
        }
        (holder.age(now) > self.timeout).then_some(TakeOver::Stale)
    }

    fn content(&self, purpose: &str, now: SystemTime) -> Vec<u8> {
        let purpose: String = purpose
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        format!(
            "owner={OWNER}\npid={}\nhost={}\ntime={}\npurpose={purpose}\ntoken={:016x}\n",
            self.pid,
            self.host,
            rfc3339(now),
            random_u64()
        )
        .into_bytes()
    }

    /// Pretends to be process `pid` on `host`, booted at `booted`.
    #[cfg(test)]
    fn with_process(mut self, pid: u32, host: &str, booted: Option<SystemTime>) -> Self {
        self.pid = pid;
        self.host = host.to_owned();
        self.booted = booted;
        self
    }
}

impl Held {
    /// Removes the flag if it is still ours.
    pub fn lower(mut self) -> Result<Lowered, HaltFlagError> {
        self.active = false;
        self.lower_now()
    }

    /// Marks the flag as still in use (sets its mtime to `now`) so that a
    /// long hold is not taken for stale. Returns false, changing nothing, if
    /// the flag is no longer ours.
    pub fn refresh(&self, now: SystemTime) -> Result<bool, HaltFlagError> {
        let read_err = |source| HaltFlagError::Read {
            path: self.path.clone(),
            source,
        };
        // Read-only is enough: setting times needs ownership, not write
        // access, and a foreign flag we may not write is simply not ours.
        let file = match File::open(&self.path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(read_err(e)),
        };
        let mut raw = Vec::new();
        (&file)
            .take(MAX_CONTENT)
            .read_to_end(&mut raw)
            .map_err(read_err)?;
        if raw != self.content {
            return Ok(false);
        }
        file.set_modified(now).map_err(read_err)?;
        Ok(true)
    }

    /// Leaves the flag raised after this value is gone (operator halt).
    pub fn keep(mut self) {
        self.active = false;
    }

    /// The flag's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lower_now(&self) -> Result<Lowered, HaltFlagError> {
        let seized =
            seize(&self.path, &self.content, None).map_err(|source| HaltFlagError::Remove {
                path: self.path.clone(),
                source,
            })?;
        Ok(match seized {
            Seized::Removed => Lowered::Removed,
            Seized::Gone => Lowered::Gone,
            Seized::Changed => match read_flag(&self.path)? {
                Some((holder, _)) => Lowered::NotOurs(holder),
                None => Lowered::Gone,
            },
        })
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if self.active {
            self.active = false;
            if let Err(error) = self.lower_now() {
                tracing::warn!(%error, "halt flag not lowered");
            }
        }
    }
}

impl Holder {
    /// Reads `key=value` lines; anything else is ignored, so any content
    /// (even none) is a holder, just a less known one.
    pub fn parse(raw: &[u8], modified: SystemTime) -> Self {
        let content = String::from_utf8_lossy(raw).into_owned();
        let mut holder = Holder {
            owner: None,
            pid: None,
            host: None,
            time: None,
            purpose: None,
            modified,
            content,
        };
        for line in holder.content.lines() {
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            let value = value.trim();
            let value_owned = || Some(value.to_owned());
            match key.trim() {
                "owner" => holder.owner = value_owned(),
                "pid" => holder.pid = value.parse().ok(),
                "host" => holder.host = value_owned(),
                "time" => holder.time = value_owned(),
                "purpose" => holder.purpose = value_owned(),
                _ => {}
            }
        }
        holder
    }

    /// Whether this is an operator's pause.
    pub fn is_operator_halt(&self) -> bool {
        self.purpose.as_deref() == Some(OPERATOR_HALT)
    }

    /// Time since the flag was last modified (zero if in the future).
    pub fn age(&self, now: SystemTime) -> Duration {
        now.duration_since(self.modified).unwrap_or_default()
    }
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.owner.is_none() && self.pid.is_none() && self.purpose.is_none() {
            let shown: String = self.content.chars().take(120).collect();
            return write!(f, "an unknown holder (content {shown:?})");
        }
        f.write_str(self.owner.as_deref().unwrap_or("an unknown program"))?;
        if let Some(pid) = self.pid {
            write!(f, " pid {pid}")?;
        }
        if let Some(host) = &self.host {
            write!(f, " on {host}")?;
        }
        if let Some(purpose) = &self.purpose {
            write!(f, " for {purpose}")?;
        }
        if let Some(time) = &self.time {
            write!(f, " since {time}")?;
        }
        Ok(())
    }
}

/// A random wait between half of `max` and `max`, as the legacy protocol
/// asks of whoever finds the flag held.
pub fn retry_delay(max: Duration) -> Duration {
    retry_delay_from(max, random_u64())
}

fn retry_delay_from(max: Duration, random: u64) -> Duration {
    backoff::jittered(max, random)
}

/// Reads the flag at `path`: its holder and raw content, `None` if absent.
fn read_flag(path: &Path) -> Result<Option<(Holder, Vec<u8>)>, HaltFlagError> {
    let read_err = |source| HaltFlagError::Read {
        path: path.to_owned(),
        source,
    };
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(read_err(e)),
    };
    let modified = file
        .metadata()
        .and_then(|m| m.modified())
        .map_err(read_err)?;
    let mut raw = Vec::new();
    file.take(MAX_CONTENT)
        .read_to_end(&mut raw)
        .map_err(read_err)?;
    Ok(Some((Holder::parse(&raw, modified), raw)))
}

/// Creates `path` with `content` unless it exists. Returns false if it
/// exists.
fn create_exclusive(path: &Path, content: &[u8]) -> io::Result<bool> {
    let dir = parent(path);
    let private = private_name(path, "new");
    let written = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&private)?;
        file.write_all(content)?;
        file.sync_all()
    })();
    let linked = written.and_then(|()| fs::hard_link(&private, path));
    let _ = fs::remove_file(&private);
    match linked {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
        Err(e) if links_unsupported(&e) => {
            let mut file = match OpenOptions::new().write(true).create_new(true).open(path) {
                Ok(file) => file,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
                Err(e) => return Err(e),
            };
            if let Err(e) = file.write_all(content).and_then(|()| file.sync_all()) {
                let _ = fs::remove_file(path);
                return Err(e);
            }
        }
        Err(e) => return Err(e),
    }
    File::open(dir)?.sync_all()?;
    Ok(true)
}

fn links_unsupported(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::Unsupported | io::ErrorKind::PermissionDenied
    )
}

/// What [`seize`] found under the flag's name.
enum Seized {
    /// It held what we expected and is removed.
    Removed,
    /// There was nothing.
    Gone,
    /// It held something else, and was put back (or replaced meanwhile).
    Changed,
}

/// Removes the flag only if it holds `expected` (and, if given, still has
/// mtime `modified`): renames it to a private name, checks, and puts back
/// what it should not have moved.
fn seize(path: &Path, expected: &[u8], modified: Option<SystemTime>) -> io::Result<Seized> {
    let private = private_name(path, "old");
    match fs::rename(path, &private) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Seized::Gone),
        Err(e) => return Err(e),
    }
    let check = (|| -> io::Result<bool> {
        let file = File::open(&private)?;
        let mtime = file.metadata()?.modified()?;
        let mut raw = Vec::new();
        file.take(MAX_CONTENT).read_to_end(&mut raw)?;
        Ok(raw == expected && modified.is_none_or(|m| m == mtime))
    })();
    if let Ok(true) = check {
        fs::remove_file(&private)?;
        File::open(parent(path))?.sync_all()?;
        return Ok(Seized::Removed);
    }
    // Not what we meant to remove: put it back, unless a new flag was
    // raised meanwhile (then the one we moved had lost anyway).
    match fs::hard_link(&private, path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            tracing::warn!(path = %path.display(), "halt flag replaced while being checked");
        }
        Err(e) => {
            // Without hard links, rename back (the window stays tiny).
            if !path.exists() {
                fs::rename(&private, path)?;
                check?;
                return Ok(Seized::Changed);
            }
            return Err(e);
        }
    }
    let _ = fs::remove_file(&private);
    check?;
    Ok(Seized::Changed)
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// A name beside the flag that only this call uses.
fn private_name(path: &Path, what: &str) -> PathBuf {
    let mut name = OsString::from(".");
    name.push(path.file_name().unwrap_or_default());
    name.push(format!(
        ".{what}.{}.{:08x}",
        std::process::id(),
        random_u64() as u32
    ));
    parent(path).join(name)
}

/// Whether process `pid` runs on this host. When that cannot be told (no
/// `/proc`), it is assumed to run: the flag then waits for its timeout.
fn process_runs(pid: u32) -> bool {
    let proc = Path::new("/proc");
    !proc.join("self").exists() || proc.join(pid.to_string()).exists()
}

/// When this host booted (`btime` in `/proc/stat`), if known.
fn boot_time() -> Option<SystemTime> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    let secs = stat
        .lines()
        .find_map(|line| line.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    Some(UNIX_EPOCH + Duration::from_secs(secs))
}

/// This host's name, for the `host=` line.
fn hostname() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|path| {
            let name = fs::read_to_string(path).ok()?;
            let name = name.trim();
            (!name.is_empty()).then(|| name.chars().filter(|c| !c.is_control()).collect())
        })
        .unwrap_or_else(|| "unknown-host".to_owned())
}

/// `t` as an RFC 3339 UTC time with seconds (`2026-04-20T12:00:00Z`).
fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests;
