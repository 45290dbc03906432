//! Finding finished files: full scans of each root (at start, periodically,
//! after an inotify overflow, and as the poll mode for NFS/CIFS roots),
//! inotify events through `notify`, and the settle rule.
//!
//! A file is ready when its writer closed it (close-write) or renamed it into
//! the root, or when its size and mtime stayed the same for the settle time.
//! Symbolic links are not followed: a link could lead out of the root.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use notify::Watcher as _;
use notify::event::{AccessKind, AccessMode, CreateKind, EventKind, ModifyKind, RenameMode};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::config::Root;
use crate::ledger::Identity;

/// A file as seen on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub root: String,
    pub rel_path: PathBuf,
    pub abs_path: PathBuf,
    pub identity: Identity,
    pub mtime: SystemTime,
    /// Whether an event said the file was written (close-write, modify,
    /// rename onto it): its content may have changed even if its identity
    /// did not (a same-size rewrite within one tick of a coarse clock, or
    /// a writer that put the mtime back).
    pub written: bool,
}

/// Why a root could not be scanned (the scan goes on with the others).
#[derive(Debug, thiserror::Error)]
#[error("cannot scan {path}: {source}")]
pub struct ScanError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

/// Stats one path under `root`, if it is a regular file the root wants.
pub fn stat(root: &Root, abs_path: &Path) -> Option<Seen> {
    let rel_path = abs_path.strip_prefix(&root.path).ok()?.to_owned();
    if rel_path.as_os_str().is_empty() || !root.wants(&rel_path) {
        return None;
    }
    let meta = std::fs::symlink_metadata(abs_path).ok()?;
    if !meta.file_type().is_file() {
        return None;
    }
    let mtime = meta.modified().ok()?;
    Some(Seen {
        root: root.name.clone(),
        rel_path,
        abs_path: abs_path.to_owned(),
        identity: Identity {
            size: meta.len(),
            mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
            ctime_ns: meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
            inode: meta.ino(),
        },
        mtime,
        written: false,
    })
}

/// Walks `root` and returns every wanted regular file. Unreadable
/// directories are skipped with a warning; a missing root is an error.
pub fn scan(root: &Root) -> Result<Vec<Seen>, ScanError> {
    let mut out = Vec::new();
    scan_chunks(root, usize::MAX, |chunk| out.extend(chunk))?;
    Ok(out)
}

/// Walks `root` like [`scan`], handing the files found to `each` in chunks
/// of at most `chunk` files: a tree of any size is walked in bounded
/// memory (the directories still to visit, and one chunk).
pub fn scan_chunks(
    root: &Root,
    chunk: usize,
    mut each: impl FnMut(Vec<Seen>),
) -> Result<(), ScanError> {
    let mut out = Vec::new();
    let mut stack = vec![root.path.clone()];
    let mut first = true;
    while let Some(dir) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(source) if first => return Err(ScanError { path: dir, source }),
            Err(error) => {
                warn!(dir = %dir.display(), %error, "directory skipped");
                continue;
            }
        };
        first = false;
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                let rel = path.strip_prefix(&root.path).unwrap_or(&path);
                if !root.skips_dir(rel) {
                    stack.push(path);
                }
            } else if let Some(seen) = kind.is_file().then(|| stat(root, &path)).flatten() {
                out.push(seen);
                if out.len() >= chunk {
                    each(std::mem::take(&mut out));
                }
            }
        }
    }
    if !out.is_empty() {
        each(out);
    }
    Ok(())
}

/// Files waiting, by absolute path: to settle (no close was seen, so size
/// and mtime must stay unchanged for the settle time), and to be old enough
/// (`min_age_secs`). Both count on the agent's own clock from when it first
/// saw the file with its current size, mtime and inode, never from the
/// file's mtime: a station whose clock was ahead when it wrote the file
/// gives it an mtime in the future, and counting from there held it until
/// the clock caught up (a day, for a clock a day ahead). A restarted agent
/// starts counting again.
#[derive(Debug, Default)]
pub struct Settler {
    pending: HashMap<PathBuf, Waiting>,
    /// When a scan that found more young files than [`SCAN_WAITING_MAX`]
    /// wants the rest found by another scan.
    rescan_at: Option<SystemTime>,
}

/// Most young files a scan leaves waiting here; it leaves any more to a
/// scan after the settle time ([`Settler::defer_to_rescan`]), so that a
/// tree written just before the agent started does not sit in memory.
pub const SCAN_WAITING_MAX: usize = 1024;

/// One waiting file.
#[derive(Debug)]
struct Waiting {
    seen: Seen,
    /// When it was first seen with this identity.
    since: SystemTime,
    /// Known finished (closed after writing, or renamed in): only
    /// `min_age` is left to wait for.
    finished: bool,
}

/// The files a [`Settler`] holds back though they are finished, waiting
/// for `min_age`: what `status` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Held {
    /// Files finished (or settled) and not yet old enough.
    pub files: usize,
    /// How many of them have an mtime in the future (a clock ahead).
    pub future_mtimes: usize,
    /// When the first of them is old enough.
    pub next_ready: Option<SystemTime>,
}

impl Settler {
    /// Notes a file that is not known to be finished; it becomes ready when
    /// seen unchanged for the settle time (and `min_age`). That it was seen
    /// written is kept until it is ready.
    pub fn note(&mut self, mut seen: Seen, now: SystemTime) {
        match self.pending.get_mut(&seen.abs_path) {
            Some(old) if old.seen.identity == seen.identity => {
                old.seen.written |= seen.written;
            }
            old => {
                seen.written |= old.is_some_and(|old| old.seen.written);
                self.pending.insert(
                    seen.abs_path.clone(),
                    Waiting {
                        seen,
                        since: now,
                        finished: false,
                    },
                );
            }
        }
    }

    /// Holds a finished file until it has been seen unchanged for
    /// `min_age`, counted from when it was first seen as it is now. That it
    /// was seen written is kept until it is ready.
    pub fn hold(&mut self, mut seen: Seen, now: SystemTime) {
        match self.pending.get_mut(&seen.abs_path) {
            Some(old) if old.seen.identity == seen.identity => {
                old.finished = true;
                old.seen.written |= seen.written;
            }
            old => {
                seen.written |= old.is_some_and(|old| old.seen.written);
                self.pending.insert(
                    seen.abs_path.clone(),
                    Waiting {
                        seen,
                        since: now,
                        finished: true,
                    },
                );
            }
        }
    }

    /// Asks for a rescan at `at`: a scan found more young files than it
    /// keeps waiting.
    pub fn defer_to_rescan(&mut self, at: SystemTime) {
        self.rescan_at = Some(self.rescan_at.map_or(at, |t| t.max(at)));
    }

    /// Whether a deferred rescan is due at `now` (the request is cleared).
    pub fn rescan_due(&mut self, now: SystemTime) -> bool {
        let due = self.rescan_at.is_some_and(|at| now >= at);
        if due {
            self.rescan_at = None;
        }
        due
    }

    /// Forgets a path (it was deleted, or became ready by an event).
    pub fn forget(&mut self, abs_path: &Path) {
        self.pending.remove(abs_path);
    }

    /// Files waiting.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Re-stats every waiting file: those unchanged for long enough (the
    /// settle time unless finished, and `min_age`) are returned ready;
    /// changed ones start waiting again; vanished ones are dropped.
    pub fn ripe(
        &mut self,
        roots: &[Root],
        settle: Duration,
        min_age: Duration,
        now: SystemTime,
    ) -> Vec<Seen> {
        let mut ready = Vec::new();
        self.pending.retain(|abs, waiting| {
            let Some(root) = roots.iter().find(|r| r.name == waiting.seen.root) else {
                return false;
            };
            match stat(root, abs) {
                None => false,
                Some(mut current) if current.identity != waiting.seen.identity => {
                    current.written = waiting.seen.written;
                    *waiting = Waiting {
                        seen: current,
                        since: now,
                        finished: false,
                    };
                    true
                }
                Some(mut current) => {
                    current.written = waiting.seen.written;
                    let wait = if waiting.finished {
                        min_age
                    } else {
                        settle.max(min_age)
                    };
                    if now.duration_since(waiting.since).unwrap_or_default() >= wait {
                        ready.push(current);
                        false
                    } else {
                        true
                    }
                }
            }
        });
        ready
    }

    /// The files held back only by `min_age` (finished, or unchanged for
    /// the settle time).
    pub fn held(&self, settle: Duration, min_age: Duration, now: SystemTime) -> Held {
        let mut held = Held::default();
        for w in self.pending.values() {
            let waited = now.duration_since(w.since).unwrap_or_default();
            if (w.finished || waited >= settle) && waited < min_age {
                held.files += 1;
                if w.seen.mtime > now {
                    held.future_mtimes += 1;
                }
                let ready = w.since + min_age;
                held.next_ready = Some(held.next_ready.map_or(ready, |t| t.min(ready)));
            }
        }
        held
    }
}

/// What the watcher tells the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Written and closed, or renamed into a root: ready now.
    Finished(PathBuf),
    /// Created or modified: may still be written.
    Touched(PathBuf),
    /// Removed or renamed away.
    Gone(PathBuf),
    /// Events were lost (queue overflow): rescan everything.
    Rescan,
}

/// Maps a notify event to changes.
pub fn changes(event: &notify::Event) -> Vec<Change> {
    if event.need_rescan() {
        return vec![Change::Rescan];
    }
    let all = |f: fn(PathBuf) -> Change| event.paths.iter().cloned().map(f).collect();
    match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => all(Change::Finished),
        EventKind::Modify(ModifyKind::Name(RenameMode::To)) => all(Change::Finished),
        EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => {
            let mut out = Vec::new();
            if let Some(from) = event.paths.first() {
                out.push(Change::Gone(from.clone()));
            }
            if let Some(to) = event.paths.get(1) {
                out.push(Change::Finished(to.clone()));
            }
            out
        }
        EventKind::Modify(ModifyKind::Name(RenameMode::From)) | EventKind::Remove(_) => {
            all(Change::Gone)
        }
        EventKind::Create(CreateKind::Folder) => vec![Change::Rescan],
        EventKind::Create(_) | EventKind::Modify(_) => all(Change::Touched),
        _ => Vec::new(),
    }
}

/// How a root is being followed, for `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootWatch {
    /// inotify events, recursively.
    Watched,
    /// Rescanned every poll interval (poll mode, or inotify failed).
    Polled,
    /// Does not exist yet: its nearest existing ancestor is watched, and it
    /// is watched itself as soon as it appears.
    Missing,
}

impl RootWatch {
    /// The word `status` shows.
    pub fn as_str(self) -> &'static str {
        match self {
            RootWatch::Watched => "watched",
            RootWatch::Polled => "polled",
            RootWatch::Missing => "missing",
        }
    }

    /// The state of [`RootWatch::as_str`].
    pub fn parse(word: &str) -> Option<Self> {
        [RootWatch::Watched, RootWatch::Polled, RootWatch::Missing]
            .into_iter()
            .find(|w| w.as_str() == word)
    }
}

/// The inotify watches of the roots. A root that does not exist at the
/// start (a mount not there yet, a directory the station software creates
/// later) is not left to polling: the nearest directory above it that
/// exists is watched (not recursively, by a second inotify instance whose
/// events only say "look again"), following it down as directories appear,
/// and the root is watched itself the moment it exists.
pub struct Watches {
    watcher: Option<notify::RecommendedWatcher>,
    /// Watches the nearest existing ancestors of missing roots.
    ancestors: Option<notify::RecommendedWatcher>,
    /// Something changed in a watched ancestor.
    ancestor_events: mpsc::UnboundedReceiver<()>,
    /// Roots (not in poll mode) that inotify could not watch: polled.
    fallback: Vec<String>,
    /// Roots that do not exist yet, with the ancestor watched for each.
    missing: Vec<(String, Option<PathBuf>)>,
    /// When missing roots are looked at without an event.
    recheck_at: Option<tokio::time::Instant>,
}

impl std::fmt::Debug for Watches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watches")
            .field("fallback", &self.fallback)
            .field("missing", &self.missing)
            .finish_non_exhaustive()
    }
}

impl Watches {
    /// Starts inotify watches on every root not in poll mode, sending what
    /// happens to `events`. A root inotify cannot watch (e.g. out of
    /// watches) falls back to polling; a missing one waits to appear.
    pub fn start(roots: &[Root], events: mpsc::UnboundedSender<Change>) -> Self {
        let handler = move |result: notify::Result<notify::Event>| match result {
            Ok(event) => {
                for change in changes(&event) {
                    let _ = events.send(change);
                }
            }
            Err(error) => {
                warn!(%error, "watch error; rescanning");
                let _ = events.send(Change::Rescan);
            }
        };
        let (ancestor_tx, ancestor_events) = mpsc::unbounded_channel();
        let mut watches = Self {
            watcher: None,
            ancestors: None,
            ancestor_events,
            fallback: Vec::new(),
            missing: Vec::new(),
            recheck_at: None,
        };
        let mut watcher = match notify::recommended_watcher(handler) {
            Ok(watcher) => watcher,
            Err(error) => {
                warn!(%error, "inotify unavailable; every root is polled");
                watches.fallback = roots.iter().map(|r| r.name.clone()).collect();
                return watches;
            }
        };
        watches.ancestors = notify::recommended_watcher(move |_| {
            let _ = ancestor_tx.send(());
        })
        .map_err(|error| warn!(%error, "cannot watch for missing roots; checking every 30 s"))
        .ok();
        for root in roots
            .iter()
            .filter(|r| r.poll.is_some() && !r.path.is_dir())
        {
            warn!(root = %root.name, path = %root.path.display(), "root does not exist (yet); it is polled until it appears");
        }
        for root in roots.iter().filter(|r| r.poll.is_none()) {
            if !root.path.is_dir() {
                warn!(root = %root.name, path = %root.path.display(), "root does not exist (yet); it is picked up when it appears");
                watches.missing.push((root.name.clone(), None));
                continue;
            }
            watches.watch_root(&mut watcher, root);
        }
        watches.watcher = Some(watcher);
        watches.appeared(roots);
        watches
    }

    /// Names of the roots rescanned every poll interval.
    pub fn polled(&self, roots: &[Root]) -> Vec<String> {
        roots
            .iter()
            .filter(|r| r.poll.is_some() || self.fallback.contains(&r.name))
            .map(|r| r.name.clone())
            .collect()
    }

    /// How each root is followed, in configuration order.
    pub fn states(&self, roots: &[Root]) -> Vec<(String, PathBuf, RootWatch)> {
        roots
            .iter()
            .map(|r| {
                let state = if self.missing.iter().any(|(name, _)| name == &r.name) {
                    RootWatch::Missing
                } else if r.poll.is_some() || self.fallback.contains(&r.name) {
                    RootWatch::Polled
                } else {
                    RootWatch::Watched
                };
                (r.name.clone(), r.path.clone(), state)
            })
            .collect()
    }

    /// Whether a root is waiting to appear.
    pub fn any_missing(&self) -> bool {
        !self.missing.is_empty()
    }

    /// Waits until something changes in a watched ancestor of a missing
    /// root, or `every` passed since the last time this returned for want
    /// of an event.
    pub async fn ancestor_changed(&mut self, every: Duration) {
        let now = tokio::time::Instant::now();
        let deadline = *self.recheck_at.get_or_insert(now + every);
        tokio::select! {
            Some(()) = self.ancestor_events.recv() => {
                while self.ancestor_events.try_recv().is_ok() {}
            }
            () = tokio::time::sleep_until(deadline) => self.recheck_at = None,
        }
    }

    /// Looks again at the missing roots: watches those that exist now and
    /// returns their names (rescan them: files may have arrived before the
    /// watch), and moves the ancestor watch of the others down to the
    /// nearest directory that exists.
    pub fn appeared(&mut self, roots: &[Root]) -> Vec<String> {
        let mut appeared = Vec::new();
        let mut missing = std::mem::take(&mut self.missing);
        missing.retain_mut(|(name, watched)| {
            let Some(root) = roots.iter().find(|r| &r.name == name) else {
                return false;
            };
            // Directories can appear while the watch moves: look again
            // until what exists stops changing.
            loop {
                if root.path.is_dir() {
                    if let (Some(ancestors), Some(old)) = (self.ancestors.as_mut(), watched.take())
                    {
                        let _ = ancestors.unwatch(&old);
                    }
                    if let Some(mut watcher) = self.watcher.take() {
                        self.watch_root(&mut watcher, root);
                        self.watcher = Some(watcher);
                    }
                    info!(root = %root.name, path = %root.path.display(), "root appeared");
                    appeared.push(root.name.clone());
                    return false;
                }
                let nearest = root.path.ancestors().skip(1).find(|a| a.is_dir());
                if nearest.map(Path::to_path_buf) == *watched {
                    return true;
                }
                if let (Some(ancestors), Some(old)) = (self.ancestors.as_mut(), watched.take()) {
                    let _ = ancestors.unwatch(&old);
                }
                if let (Some(ancestors), Some(dir)) = (self.ancestors.as_mut(), nearest) {
                    match ancestors.watch(dir, notify::RecursiveMode::NonRecursive) {
                        Ok(()) => {
                            debug!(root = %root.name, dir = %dir.display(), "watching for the root to appear");
                            *watched = Some(dir.to_owned());
                        }
                        Err(error) => {
                            debug!(root = %root.name, dir = %dir.display(), %error, "cannot watch for the root; checked periodically");
                            return true;
                        }
                    }
                } else {
                    return true;
                }
            }
        });
        self.missing = missing;
        appeared
    }

    /// Watches `root` recursively, or puts it in `fallback`.
    fn watch_root(&mut self, watcher: &mut notify::RecommendedWatcher, root: &Root) {
        if let Err(error) = watcher.watch(&root.path, notify::RecursiveMode::Recursive) {
            let hint = match &error.kind {
                notify::ErrorKind::MaxFilesWatch => {
                    " (out of inotify watches: raise fs.inotify.max_user_watches)"
                }
                _ => "",
            };
            warn!(root = %root.name, path = %root.path.display(), %error, "cannot watch{hint}; polling this root instead");
            self.fallback.push(root.name.clone());
        } else {
            debug!(root = %root.name, "watching");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root(dir: &Path) -> Root {
        let text = format!(
            "collectors = [\"c:1\"]\n[tls]\nca = \"/a\"\ncert = \"/b\"\nkey = \"/c\"\n[[roots]]\nname = \"r\"\npath = {:?}\n",
            dir
        );
        crate::config::parse(&text, Path::new("/etc/ferry/agent.toml"))
            .unwrap()
            .roots
            .remove(0)
    }

    #[test]
    fn scan_finds_wanted_files_and_skips_excluded_ones_and_links() {
        let dir = tempfile::tempdir().unwrap();
        let r = root(dir.path());
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::write(dir.path().join("a/b/x.bin"), b"1").unwrap();
        std::fs::write(dir.path().join("y.tmp"), b"1").unwrap();
        std::fs::write(dir.path().join(".hidden"), b"1").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("link")).unwrap();
        let mut found: Vec<PathBuf> = scan(&r).unwrap().into_iter().map(|s| s.rel_path).collect();
        found.sort();
        assert_eq!(found, vec![PathBuf::from("a/b/x.bin")]);
    }

    #[test]
    fn a_file_is_ready_after_staying_unchanged_for_the_settle_time() {
        let dir = tempfile::tempdir().unwrap();
        let r = root(dir.path());
        let path = dir.path().join("f.bin");
        std::fs::write(&path, b"part").unwrap();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let settle = Duration::from_secs(5);
        let mut settler = Settler::default();
        settler.note(stat(&r, &path).unwrap(), t0);
        assert!(
            settler
                .ripe(
                    std::slice::from_ref(&r),
                    settle,
                    Duration::ZERO,
                    t0 + Duration::from_secs(2)
                )
                .is_empty()
        );
        // Still being written: the clock starts again.
        std::fs::write(&path, b"part two").unwrap();
        assert!(
            settler
                .ripe(
                    std::slice::from_ref(&r),
                    settle,
                    Duration::ZERO,
                    t0 + Duration::from_secs(4)
                )
                .is_empty()
        );
        assert!(
            settler
                .ripe(
                    std::slice::from_ref(&r),
                    settle,
                    Duration::ZERO,
                    t0 + Duration::from_secs(8)
                )
                .is_empty()
        );
        let ready = settler.ripe(
            std::slice::from_ref(&r),
            settle,
            Duration::ZERO,
            t0 + Duration::from_secs(9),
        );
        assert_eq!(ready.len(), 1);
        assert_eq!(ready[0].identity.size, 8);
        assert!(settler.is_empty());
    }

    #[test]
    fn a_vanished_file_stops_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let r = root(dir.path());
        let path = dir.path().join("f.bin");
        std::fs::write(&path, b"x").unwrap();
        let mut settler = Settler::default();
        let t0 = SystemTime::UNIX_EPOCH;
        settler.note(stat(&r, &path).unwrap(), t0);
        std::fs::remove_file(&path).unwrap();
        assert!(
            settler
                .ripe(&[r], Duration::ZERO, Duration::ZERO, t0)
                .is_empty()
        );
        assert!(settler.is_empty());
    }

    #[test]
    fn min_age_counts_from_first_sight_whatever_the_mtime_says() {
        let dir = tempfile::tempdir().unwrap();
        let r = root(dir.path());
        let roots = std::slice::from_ref(&r);
        let t0 = SystemTime::now();
        let day = Duration::from_secs(24 * 3600);
        let (settle, min_age) = (Duration::from_secs(5), Duration::from_secs(60));
        let ahead = dir.path().join("ahead.bin");
        std::fs::write(&ahead, b"from a clock a day ahead").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&ahead)
            .unwrap()
            .set_modified(t0 + day)
            .unwrap();
        let old = dir.path().join("old.bin");
        std::fs::write(&old, b"closed long ago").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(t0 - day)
            .unwrap();
        let mut settler = Settler::default();
        settler.note(stat(&r, &ahead).unwrap(), t0);
        settler.hold(stat(&r, &old).unwrap(), t0);
        let secs = |s| t0 + Duration::from_secs(s);
        // Settled after 5 s, but both wait for min_age: shown as held.
        assert!(settler.ripe(roots, settle, min_age, secs(10)).is_empty());
        let held = settler.held(settle, min_age, secs(10));
        assert_eq!(
            held,
            Held {
                files: 2,
                future_mtimes: 1,
                next_ready: Some(secs(60)),
            }
        );
        // A second close of the same content does not start the count again.
        settler.hold(stat(&r, &old).unwrap(), secs(30));
        let mut ready: Vec<PathBuf> = settler
            .ripe(roots, settle, min_age, secs(60))
            .into_iter()
            .map(|s| s.rel_path)
            .collect();
        ready.sort();
        assert_eq!(
            ready,
            [PathBuf::from("ahead.bin"), PathBuf::from("old.bin")]
        );
        assert_eq!(settler.held(settle, min_age, secs(60)), Held::default());
    }
}
