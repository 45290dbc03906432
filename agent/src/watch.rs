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

use notify::event::{AccessKind, AccessMode, CreateKind, EventKind, ModifyKind, RenameMode};
use tokio::sync::mpsc;
use tracing::{debug, warn};

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
            }
        }
    }
    Ok(out)
}

/// Files waiting to settle, by absolute path.
#[derive(Debug, Default)]
pub struct Settler {
    pending: HashMap<PathBuf, (Seen, SystemTime)>,
}

impl Settler {
    /// Notes a file that is not known to be finished; it becomes ready when
    /// seen unchanged for `settle`. That it was seen written is kept until
    /// it is ready.
    pub fn note(&mut self, mut seen: Seen, now: SystemTime) {
        match self.pending.get_mut(&seen.abs_path) {
            Some((old, _)) if old.identity == seen.identity => old.written |= seen.written,
            old => {
                seen.written |= old.is_some_and(|(old, _)| old.written);
                self.pending.insert(seen.abs_path.clone(), (seen, now));
            }
        }
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

    /// Re-stats every waiting file: those unchanged for `settle` are returned
    /// ready; changed ones start waiting again; vanished ones are dropped.
    pub fn ripe(&mut self, roots: &[Root], settle: Duration, now: SystemTime) -> Vec<Seen> {
        let mut ready = Vec::new();
        self.pending.retain(|abs, (seen, since)| {
            let Some(root) = roots.iter().find(|r| r.name == seen.root) else {
                return false;
            };
            match stat(root, abs) {
                None => false,
                Some(mut current) if current.identity != seen.identity => {
                    current.written = seen.written;
                    *seen = current;
                    *since = now;
                    true
                }
                Some(mut current) => {
                    current.written = seen.written;
                    if now.duration_since(*since).unwrap_or_default() >= settle {
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

/// Starts inotify watches on every root not in poll mode. Returns the
/// watcher (keep it alive) and the names of roots that fell back to polling
/// because inotify could not watch them (e.g. out of watches).
pub fn watch(
    roots: &[Root],
    events: mpsc::UnboundedSender<Change>,
) -> (Option<notify::RecommendedWatcher>, Vec<String>) {
    use notify::Watcher;
    let mut fallback = Vec::new();
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
    let mut watcher = match notify::recommended_watcher(handler) {
        Ok(watcher) => watcher,
        Err(error) => {
            warn!(%error, "inotify unavailable; every root is polled");
            return (None, roots.iter().map(|r| r.name.clone()).collect());
        }
    };
    for root in roots.iter().filter(|r| r.poll.is_none()) {
        if let Err(error) = watcher.watch(&root.path, notify::RecursiveMode::Recursive) {
            let hint = match &error.kind {
                notify::ErrorKind::MaxFilesWatch => {
                    " (out of inotify watches: raise fs.inotify.max_user_watches)"
                }
                _ => "",
            };
            warn!(root = %root.name, path = %root.path.display(), %error, "cannot watch{hint}; polling this root instead");
            fallback.push(root.name.clone());
        } else {
            debug!(root = %root.name, "watching");
        }
    }
    (Some(watcher), fallback)
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
                    t0 + Duration::from_secs(4)
                )
                .is_empty()
        );
        assert!(
            settler
                .ripe(
                    std::slice::from_ref(&r),
                    settle,
                    t0 + Duration::from_secs(8)
                )
                .is_empty()
        );
        let ready = settler.ripe(
            std::slice::from_ref(&r),
            settle,
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
        assert!(settler.ripe(&[r], Duration::ZERO, t0).is_empty());
        assert!(settler.is_empty());
    }
}
