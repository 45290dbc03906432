//! Group commit for the repository's durability: one `syncfs` makes a whole
//! batch (and every batch of other sessions waiting at the same time)
//! durable, instead of one `fdatasync` per file.
//!
//! A caller's data is written before it calls [`GroupSync::sync`], so only a
//! round that *starts* after the call covers it: a round already running
//! may have begun before those writes. Callers arriving while a round runs
//! wait for it and are then served together by the next one. One round runs
//! at a time.
//!
//! Per file, `fdatasync` on ext4 writes the file's inode block and flushes
//! the disk's cache each time; a round writes each dirty inode-table block
//! once and flushes once. Measured in BENCHMARKS.md.

use std::io;
use std::path::Path;
use std::sync::{Condvar, Mutex, MutexGuard};

/// Whether `syncfs` reports write errors on the running kernel: only since
/// Linux 5.8 (before, it returned success even when writeback had failed,
/// so it cannot stand in for each file's own fsync). `release` is
/// `/proc/sys/kernel/osrelease`; anything unreadable counts as no.
pub fn syncfs_reports_errors(release: &str) -> bool {
    let mut parts = release.trim().split(['.', '-']);
    let number = |part: Option<&str>| part.and_then(|p| p.parse::<u32>().ok());
    match (number(parts.next()), number(parts.next())) {
        (Some(major), Some(minor)) => (major, minor) >= (5, 8),
        _ => false,
    }
}

/// [`syncfs_reports_errors`] for this machine.
pub fn kernel_syncfs_reports_errors() -> bool {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .is_ok_and(|release| syncfs_reports_errors(&release))
}

/// Flushes one filesystem, coalescing concurrent requests.
pub struct GroupSync {
    flush: Box<dyn Fn() -> io::Result<()> + Send + Sync>,
    state: Mutex<State>,
    done: Condvar,
}

#[derive(Default)]
struct State {
    /// Rounds started so far.
    started: u64,
    /// The last round that finished, and its result.
    finished: u64,
    result: Option<(io::ErrorKind, String)>,
    running: bool,
}

impl GroupSync {
    /// Syncs the filesystem holding `dir` (`syncfs(2)`). The directory is
    /// opened once and kept open.
    pub fn filesystem_of(dir: &Path) -> io::Result<Self> {
        let handle = std::fs::File::open(dir)?;
        Ok(Self::new(move || {
            rustix::fs::syncfs(&handle).map_err(io::Error::from)
        }))
    }

    /// Coalesces calls of `flush`.
    pub fn new(flush: impl Fn() -> io::Result<()> + Send + Sync + 'static) -> Self {
        Self {
            flush: Box::new(flush),
            state: Mutex::new(State::default()),
            done: Condvar::new(),
        }
    }

    /// Returns once a flush that started after this call has finished, with
    /// that flush's result.
    pub fn sync(&self) -> io::Result<()> {
        let mut state = self.lock();
        let wanted = state.started + 1;
        loop {
            if state.finished >= wanted {
                return match &state.result {
                    None => Ok(()),
                    Some((kind, message)) => Err(io::Error::new(*kind, message.clone())),
                };
            }
            if state.running {
                state = self.done.wait(state).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            state.running = true;
            state.started += 1;
            let round = state.started;
            drop(state);
            let result = (self.flush)();
            state = self.lock();
            state.running = false;
            state.finished = round;
            state.result = result.err().map(|e| (e.kind(), e.to_string()));
            self.done.notify_all();
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl std::fmt::Debug for GroupSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.lock();
        f.debug_struct("GroupSync")
            .field("rounds", &state.finished)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    /// A flush that takes `ms` and counts its rounds.
    fn slow(ms: u64, rounds: Arc<AtomicU64>) -> GroupSync {
        GroupSync::new(move || {
            rounds.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(ms));
            Ok(())
        })
    }

    #[test]
    fn callers_waiting_together_share_one_round() {
        let rounds = Arc::new(AtomicU64::new(0));
        let sync = Arc::new(slow(100, rounds.clone()));
        let barrier = Arc::new(std::sync::Barrier::new(16));
        let threads: Vec<_> = (0..16)
            .map(|_| {
                let (sync, barrier) = (sync.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    sync.sync()
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap().unwrap();
        }
        // One round for whoever came first, one for everyone who arrived
        // while it ran (allowing a straggler a third).
        let rounds = rounds.load(Ordering::SeqCst);
        assert!((2..=3).contains(&rounds), "{rounds} rounds for 16 callers");
    }

    #[test]
    fn a_round_already_running_does_not_count_for_a_later_caller() {
        let rounds = Arc::new(AtomicU64::new(0));
        let sync = Arc::new(slow(150, rounds.clone()));
        let first = {
            let sync = sync.clone();
            std::thread::spawn(move || sync.sync())
        };
        // Arrive while the first round runs: its writes may have missed it.
        while rounds.load(Ordering::SeqCst) == 0 {
            std::thread::yield_now();
        }
        sync.sync().unwrap();
        assert_eq!(rounds.load(Ordering::SeqCst), 2);
        first.join().unwrap().unwrap();
    }

    #[test]
    fn a_failed_round_fails_all_its_callers_and_the_next_round_can_succeed() {
        let calls = Arc::new(AtomicU64::new(0));
        let sync = {
            let calls = calls.clone();
            GroupSync::new(move || match calls.fetch_add(1, Ordering::SeqCst) {
                0 => Err(io::Error::other("device gone")),
                _ => Ok(()),
            })
        };
        let error = sync.sync().unwrap_err();
        assert!(error.to_string().contains("device gone"), "{error}");
        sync.sync().unwrap();
    }

    #[test]
    fn syncfs_stands_in_for_fsync_only_from_linux_5_8() {
        for (release, reports) in [
            ("6.1.0-28-amd64", true),
            ("5.8.0", true),
            ("5.15.0-91-generic", true),
            ("10.0", true),
            ("5.7.19", false),
            ("4.18.0-553.el8_10.x86_64", false),
            ("3.10.0-1160.el7.x86_64", false),
            ("", false),
            ("garbage", false),
        ] {
            assert_eq!(syncfs_reports_errors(release), reports, "{release:?}");
        }
    }

    #[test]
    fn the_real_syncfs_runs_on_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), b"data").unwrap();
        GroupSync::filesystem_of(dir.path())
            .unwrap()
            .sync()
            .unwrap();
        assert!(GroupSync::filesystem_of(&dir.path().join("missing")).is_err());
    }
}
