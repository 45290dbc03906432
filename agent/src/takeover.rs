//! Taking a station over from indexerD, once, at the agent's first start:
//! its `DUE_BACKUP` is imported as due, the files its `BACKUP_DONE` lists as
//! copied are recorded as done without being sent, and what was done is
//! kept in a small report (`<state_dir>/legacy-import`) for `status`.
//!
//! "Already copied" means: listed in `BACKUP_DONE`, not listed in
//! `DUE_BACKUP` (indexerD lists a copied file there again when it changes),
//! present under a root, and not modified after `BACKUP_DONE` was last
//! written (a later mtime proves the copy is older than the content). Such a
//! file is recorded in the ledger with the identity it has now, so a later
//! change is sent like any other. `[legacy] resend_backup_done` sends them
//! all instead.

use std::fmt::Write as _;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferry_common::clock;
use tracing::{info, warn};

use crate::config::Settings;
use crate::due_list::{self, DueListError, Refusal, RefusedLine};
use crate::ledger::{Ledger, LedgerError, Observation};
use crate::watch;

/// Refused lines logged (and kept for `status`) one by one; the rest are
/// counted.
pub const REFUSED_SHOWN: usize = 20;

/// Files of `BACKUP_DONE` recorded per ledger transaction.
const CHUNK: usize = 1000;

/// Why the take-over failed (it is tried again at the next start).
#[derive(Debug, thiserror::Error)]
pub enum TakeoverError {
    #[error(transparent)]
    List(#[from] DueListError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

/// What the take-over did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Report {
    /// When it ran.
    pub at: Option<SystemTime>,
    /// Files of `DUE_BACKUP` entered as due.
    pub imported: usize,
    /// Lines of `DUE_BACKUP` naming no file under a root (missing,
    /// excluded, or outside every root).
    pub not_found: usize,
    /// Lines of `DUE_BACKUP` refused.
    pub refused: usize,
    /// The first [`REFUSED_SHOWN`] of them.
    pub refused_lines: Vec<RefusedLine>,
    /// Files of `BACKUP_DONE` recorded as done without being sent.
    pub already_copied: usize,
    /// Files of `BACKUP_DONE` modified after its last write: sent.
    pub changed_since_copy: usize,
    /// Whether `resend_backup_done` asked to send the history too.
    pub history_sent: bool,
}

/// Where the report is kept.
pub fn report_path(state_dir: &Path) -> PathBuf {
    state_dir.join("legacy-import")
}

/// Imports indexerD's lists into `ledger` and logs what it did; `Ok(None)`
/// when there is no `DUE_BACKUP` nor `BACKUP_DONE` to take over.
pub fn take_over(
    settings: &Settings,
    ledger: &mut Ledger,
    now: SystemTime,
) -> Result<Option<Report>, TakeoverError> {
    let legacy = &settings.legacy;
    let import = due_list::import_due_backup(&legacy.due_backup)?;
    let done_exists = legacy.backup_done.exists();
    if import.is_none() && !done_exists {
        return Ok(None);
    }
    let import = import.unwrap_or_default();
    let mut report = Report {
        at: Some(now),
        refused: import.refused_count,
        history_sent: legacy.resend_backup_done,
        ..Report::default()
    };
    let mut observations = Vec::new();
    for path in &import.paths {
        match seen(settings, path) {
            Some(o) => observations.push(o),
            None => report.not_found += 1,
        }
    }
    ledger.observe_many(&observations, now)?;
    report.imported = observations.len();
    for refused in &import.refused {
        if report.refused_lines.len() < REFUSED_SHOWN {
            warn!(
                path = %legacy.due_backup.display(),
                line = refused.line,
                reason = %refused.reason,
                text = %refused.text,
                "DUE_BACKUP line refused"
            );
            report.refused_lines.push(refused.clone());
        }
    }
    if import.refused_count > REFUSED_SHOWN {
        warn!(
            path = %legacy.due_backup.display(),
            more = import.refused_count - REFUSED_SHOWN,
            "more DUE_BACKUP lines refused (not logged one by one)"
        );
    }
    if !legacy.resend_backup_done {
        record_copied(settings, ledger, &import.paths, now, &mut report)?;
    }
    info!(
        imported = report.imported,
        not_found = report.not_found,
        refused = report.refused,
        already_copied = report.already_copied,
        changed_since_copy = report.changed_since_copy,
        history_sent = report.history_sent,
        path = %legacy.due_backup.display(),
        "imported indexerD DUE_BACKUP and BACKUP_DONE (not found: missing, unwanted or outside every root)"
    );
    Ok(Some(report))
}

/// Records the files of `BACKUP_DONE` not in `due` (sorted by bytes) as
/// done, streaming the list in chunks.
fn record_copied(
    settings: &Settings,
    ledger: &mut Ledger,
    due: &[PathBuf],
    now: SystemTime,
    report: &mut Report,
) -> Result<(), TakeoverError> {
    let path = &settings.legacy.backup_done;
    // A file modified after this was not copied as it is now.
    let written = std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let mut chunk = Vec::with_capacity(CHUNK);
    let mut failed = None;
    due_list::read_backup_done(path, |listed| {
        if failed.is_some()
            || due
                .binary_search_by(|p| p.as_os_str().as_bytes().cmp(listed.as_os_str().as_bytes()))
                .is_ok()
        {
            return;
        }
        let Some((observation, mtime)) = seen_with_mtime(settings, &listed) else {
            return;
        };
        if written.is_some_and(|w| mtime > w) {
            report.changed_since_copy += 1;
            return;
        }
        chunk.push(observation);
        if chunk.len() >= CHUNK {
            match ledger.mark_copied(&chunk, now) {
                Ok(n) => report.already_copied += n,
                Err(error) => failed = Some(error),
            }
            chunk.clear();
        }
    })?;
    if let Some(error) = failed {
        return Err(error.into());
    }
    report.already_copied += ledger.mark_copied(&chunk, now)?;
    Ok(())
}

fn seen(settings: &Settings, path: &Path) -> Option<Observation> {
    seen_with_mtime(settings, path).map(|(o, _)| o)
}

fn seen_with_mtime(settings: &Settings, path: &Path) -> Option<(Observation, SystemTime)> {
    let root = settings.roots.iter().find(|r| path.starts_with(&r.path))?;
    let seen = watch::stat(root, path)?;
    Some((
        Observation {
            root: seen.root,
            rel_path: seen.rel_path,
            identity: seen.identity,
            written: false,
        },
        seen.mtime,
    ))
}

/// Writes `report` to `path` atomically (errors are ignored: the report is
/// informational).
pub fn write_report(path: &Path, report: &Report) {
    let mut text = String::new();
    if let Some(at) = report.at {
        let _ = writeln!(text, "at={}", clock::unix_secs(at));
    }
    for (key, value) in [
        ("imported", report.imported),
        ("not_found", report.not_found),
        ("refused", report.refused),
        ("already_copied", report.already_copied),
        ("changed_since_copy", report.changed_since_copy),
    ] {
        let _ = writeln!(text, "{key}={value}");
    }
    let _ = writeln!(text, "history_sent={}", report.history_sent);
    for r in &report.refused_lines {
        // The text is escaped ASCII: no tab, no newline.
        let _ = writeln!(
            text,
            "refused_line={}\t{}\t{}",
            r.line,
            r.reason.key(),
            r.text
        );
    }
    let tmp = path.with_extension("tmp");
    if std::fs::write(&tmp, text).is_ok() {
        let _ = std::fs::rename(&tmp, path);
    }
}

/// Reads the report; `None` if there is none (no take-over happened).
pub fn read_report(path: &Path) -> Option<Report> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut report = Report::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let count = || value.parse().unwrap_or(0);
        match key {
            "at" => {
                report.at = value
                    .parse()
                    .ok()
                    .map(|s| UNIX_EPOCH + Duration::from_secs(s))
            }
            "imported" => report.imported = count(),
            "not_found" => report.not_found = count(),
            "refused" => report.refused = count(),
            "already_copied" => report.already_copied = count(),
            "changed_since_copy" => report.changed_since_copy = count(),
            "history_sent" => report.history_sent = value == "true",
            "refused_line" => {
                let mut parts = value.splitn(3, '\t');
                if let (Some(Ok(line)), Some(Some(reason)), Some(text)) = (
                    parts.next().map(str::parse),
                    parts.next().map(Refusal::from_key),
                    parts.next(),
                ) {
                    report.refused_lines.push(RefusedLine {
                        line,
                        text: text.to_owned(),
                        reason,
                    });
                }
            }
            _ => {}
        }
    }
    Some(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::FileState;

    /// Settings with one root `data` and the legacy files, all in `dir`.
    fn settings(dir: &Path) -> Settings {
        let text = format!(
            "collectors = [\"c:1\"]\nstate_dir = {state:?}\n[tls]\nca = \"/a\"\ncert = \"/b\"\nkey = \"/c\"\n\
             [[roots]]\nname = \"data\"\npath = {root:?}\n",
            state = dir.join("state"),
            root = dir.join("data"),
        );
        crate::config::parse(&text, Path::new("/etc/ferry/agent.toml")).unwrap()
    }

    fn set_mtime(path: &Path, t: SystemTime) {
        std::fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(t)
            .unwrap();
    }

    #[test]
    fn refused_lines_are_kept_up_to_a_bound_and_a_file_changed_after_its_copy_is_sent() {
        let dir = tempfile::tempdir().unwrap();
        let settings = settings(dir.path());
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::create_dir_all(&settings.state_dir).unwrap();
        let now = SystemTime::now();
        let hour = Duration::from_secs(3600);
        for name in ["copied.bin", "changed.bin"] {
            std::fs::write(data.join(name), name).unwrap();
            set_mtime(&data.join(name), now - 2 * hour);
        }
        // Rewritten after indexerD's server last wrote BACKUP_DONE.
        set_mtime(&data.join("changed.bin"), now);
        let legacy = &settings.legacy;
        let bad: String = (0..REFUSED_SHOWN + 10)
            .map(|i| format!("relative/{i}.bin\n"))
            .collect();
        std::fs::write(&legacy.due_backup, bad).unwrap();
        let done = format!(
            "{}\0/copied.bin\0\n{}/changed.bin\n/elsewhere/gone.bin\n",
            data.display(),
            data.display()
        );
        std::fs::write(&legacy.backup_done, done).unwrap();
        set_mtime(&legacy.backup_done, now - hour);

        let mut ledger = Ledger::open(&settings.ledger).unwrap();
        let report = take_over(&settings, &mut ledger, now).unwrap().unwrap();
        assert_eq!(report.refused, REFUSED_SHOWN + 10);
        assert_eq!(report.refused_lines.len(), REFUSED_SHOWN);
        assert_eq!(report.refused_lines[0].line, 1);
        assert_eq!(report.refused_lines[0].reason, Refusal::Relative);
        assert_eq!((report.imported, report.not_found), (0, 0));
        assert_eq!(report.already_copied, 1);
        assert_eq!(report.changed_since_copy, 1);
        assert_eq!(
            ledger.state("data", Path::new("copied.bin")).unwrap(),
            Some(FileState::Done)
        );
        // Not recorded: the first scan finds it and it is due.
        assert_eq!(
            ledger.state("data", Path::new("changed.bin")).unwrap(),
            None
        );
    }

    #[test]
    fn without_indexerd_lists_there_is_nothing_to_take_over() {
        let dir = tempfile::tempdir().unwrap();
        let settings = settings(dir.path());
        std::fs::create_dir_all(&settings.state_dir).unwrap();
        let mut ledger = Ledger::open(&settings.ledger).unwrap();
        assert_eq!(
            take_over(&settings, &mut ledger, SystemTime::now()).unwrap(),
            None
        );
    }

    #[test]
    fn the_report_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = report_path(dir.path());
        assert_eq!(read_report(&path), None);
        let report = Report {
            at: Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
            imported: 5,
            not_found: 1,
            refused: 2,
            refused_lines: vec![RefusedLine {
                line: 7,
                text: "/a\\x00b\\x00c\\x00".into(),
                reason: Refusal::Nul,
            }],
            already_copied: 3,
            changed_since_copy: 4,
            history_sent: false,
        };
        write_report(&path, &report);
        assert_eq!(read_report(&path), Some(report));
    }
}
