//! The optional periodic content re-check (`content_recheck_secs`): every
//! backed-up file whose metadata still matches its ledger row is read and
//! hashed, and one whose content differs from what the collector
//! acknowledged is due again.
//!
//! Events and rescans find every rewrite the agent could see (see
//! `ledger`), but not one made while it was stopped that left size, mtime,
//! ctime and inode as they were (ctime moves on every write, so that needs
//! a coarse clock or a restored ctime), nor a same-size rewrite within one
//! tick of a poll-mode root's clock. Reading every file is costly, so the
//! re-check is off by default and paced: a page of files at a time, on a
//! blocking thread, the ledger locked only to read a page or record a
//! change.

use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use tracing::info;

use crate::config::Settings;
use crate::ledger::{DoneFile, Ledger};
use crate::metrics::{ErrorKind, Metrics};
use crate::sender::{OutgoingFile, hash_unchanged};
use crate::watch;

/// Files read per page.
const PAGE: usize = 256;

/// Re-checks every backed-up file each `every`, until `shutdown`; calls
/// `changed` after a pass that made files due. Ledger errors are logged
/// and counted in `metrics`.
pub async fn run(
    settings: Arc<Settings>,
    ledger: Arc<Mutex<Ledger>>,
    metrics: Arc<Metrics>,
    every: Duration,
    changed: impl Fn() + Send + Sync + 'static,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let changed = Arc::new(changed);
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        let (settings, ledger, metrics, changed, stop) = (
            settings.clone(),
            ledger.clone(),
            metrics.clone(),
            changed.clone(),
            shutdown.clone(),
        );
        let pass = tokio::task::spawn_blocking(move || {
            let found = pass(&settings, &ledger, &metrics, &stop);
            if found > 0 {
                changed();
            }
        });
        tokio::select! {
            _ = pass => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}

/// One pass over every backed-up file. Returns how many became due.
/// Blocking.
fn pass(
    settings: &Settings,
    ledger: &Mutex<Ledger>,
    metrics: &Metrics,
    shutdown: &tokio::sync::watch::Receiver<bool>,
) -> usize {
    let roots = settings.root_dirs();
    let mut after = 0;
    let mut found = 0;
    loop {
        if *shutdown.borrow() {
            return found;
        }
        let page = match lock(ledger).done_page(after, PAGE) {
            Ok(page) if !page.is_empty() => page,
            Ok(_) => return found,
            Err(error) => {
                crate::warn_counted!(metrics, ErrorKind::Ledger, %error, "ledger unreadable; content re-check postponed");
                return found;
            }
        };
        after = page.last().map_or(after, |f| f.key.id);
        for file in page {
            let Some(dir) = roots.get(&file.root) else {
                continue;
            };
            if differs(settings, &dir.join(&file.rel_path), &file) {
                match lock(ledger).content_changed(file.key, SystemTime::now()) {
                    Ok(true) => {
                        found += 1;
                        info!(root = %file.root, path = %ferry_common::name::encode(file.rel_path.as_os_str().as_bytes()), "content changed behind unchanged metadata; due again");
                    }
                    Ok(false) => {}
                    Err(error) => {
                        crate::warn_counted!(metrics, ErrorKind::Ledger, %error, "ledger update failed");
                    }
                }
            }
        }
    }
}

/// Whether `path` still has the metadata of its row but other content.
/// A file whose metadata changed is left to the rescan and the events.
fn differs(settings: &Settings, path: &Path, file: &DoneFile) -> bool {
    let Some(root) = settings.roots.iter().find(|r| r.name == file.root) else {
        return false;
    };
    match watch::stat(root, path) {
        Some(seen) if seen.identity == file.identity => {}
        _ => return false,
    }
    let outgoing = OutgoingFile {
        root: file.root.clone(),
        rel_path: Vec::new(),
        abs_path: path.to_owned(),
        size: file.identity.size,
        mtime_ns: file.identity.mtime_ns,
        sha256: None,
    };
    hash_unchanged(&outgoing).is_some_and(|sha| sha != file.sha256)
}

fn lock(ledger: &Mutex<Ledger>) -> MutexGuard<'_, Ledger> {
    ledger.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{Acked, FileState};

    #[test]
    fn a_pass_makes_due_only_the_file_whose_content_differs_from_its_ack() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let text = format!(
            "collectors = [\"c:1\"]\ncontent_recheck_secs = 60\n[tls]\nca = \"/a\"\ncert = \"/b\"\nkey = \"/c\"\n[[roots]]\nname = \"r\"\npath = {data:?}\n"
        );
        let settings = crate::config::parse(&text, Path::new("/etc/ferry/agent.toml")).unwrap();
        assert_eq!(settings.content_recheck, Some(Duration::from_secs(60)));
        let ledger = Mutex::new(Ledger::open(&dir.path().join("ledger.sqlite")).unwrap());
        let now = SystemTime::now();
        // Both hold "same"; the ledger says one was acked with other
        // content, as if rewritten unseen with its metadata as recorded.
        let mut hash = ring::digest::Context::new(&ring::digest::SHA256);
        hash.update(b"same");
        let same: [u8; 32] = hash.finish().as_ref().try_into().unwrap();
        for (name, sha256) in [("kept.bin", same), ("rewritten.bin", [9; 32])] {
            std::fs::write(data.join(name), b"same").unwrap();
            let seen = watch::stat(&settings.roots[0], &data.join(name)).unwrap();
            let mut l = lock(&ledger);
            l.observe("r", Path::new(name), seen.identity, now).unwrap();
            let key = l.due(10, now).unwrap()[0].key;
            l.mark_sending(&[key]).unwrap();
            l.mark_acked(&[Acked { key, sha256 }], now).unwrap();
        }
        let (_stop, shutdown) = tokio::sync::watch::channel(false);
        // A ledger that cannot be written: the change found is not
        // recorded, and the error is counted as well as logged.
        let read_only =
            Mutex::new(Ledger::open_read_only(&dir.path().join("ledger.sqlite")).unwrap());
        let metrics = Metrics::new();
        assert_eq!(pass(&settings, &read_only, &metrics, &shutdown), 0);
        assert_eq!(metrics.errors(ErrorKind::Ledger), 1);
        assert_eq!(pass(&settings, &ledger, &metrics, &shutdown), 1);
        assert_eq!(metrics.errors(ErrorKind::Ledger), 1);
        let l = lock(&ledger);
        assert_eq!(
            l.state("r", Path::new("kept.bin")).unwrap(),
            Some(FileState::Done)
        );
        assert_eq!(
            l.state("r", Path::new("rewritten.bin")).unwrap(),
            Some(FileState::Due)
        );
    }
}
