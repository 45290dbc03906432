//! `ferry-agent status`: the due set from the ledger, the `HALT_FLAG`
//! holder, and what the running daemon last knew of the collector (a small
//! `agent.state` file it rewrites atomically).

use std::fmt::Write as _;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferry_common::{json, name};

use crate::config::Settings;
use crate::halt_flag::HaltFlag;
use crate::ledger::Ledger;
use crate::takeover;
use crate::watch::{Held, RootWatch};

/// What the daemon knows about its link, as of its last write.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkState {
    pub connected: bool,
    /// The collector refuses this station as revoked (the daemon retries
    /// only every [`crate::daemon::REVOKED_RETRY`]).
    pub revoked: bool,
    pub collector: Option<String>,
    pub last_error: Option<String>,
    pub last_ack: Option<SystemTime>,
    /// Who held HALT_FLAG when the daemon last found it busy.
    pub halted_by: Option<String>,
}

/// Where the daemon keeps its link state.
pub fn state_path(state_dir: &Path) -> PathBuf {
    state_dir.join("agent.state")
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

/// Writes `state` atomically (temp file + rename); errors are ignored: the
/// state file is informational.
pub fn write(path: &Path, state: &LinkState) {
    let mut text = format!("connected={}\n", state.connected);
    if state.revoked {
        text.push_str("revoked=true\n");
    }
    if let Some(c) = &state.collector {
        let _ = writeln!(text, "collector={}", one_line(c));
    }
    if let Some(e) = &state.last_error {
        let _ = writeln!(text, "last_error={}", one_line(e));
    }
    if let Some(t) = state.last_ack {
        let _ = writeln!(text, "last_ack={}", secs(t));
    }
    if let Some(h) = &state.halted_by {
        let _ = writeln!(text, "halted_by={}", one_line(h));
    }
    let tmp = path.with_extension("state.tmp");
    if std::fs::write(&tmp, text).is_ok() {
        let _ = std::fs::rename(&tmp, path);
    }
}

/// Reads the state file (defaults if missing or garbled).
pub fn read(path: &Path) -> LinkState {
    let mut state = LinkState::default();
    let Ok(text) = std::fs::read_to_string(path) else {
        return state;
    };
    for line in text.lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        match key {
            "connected" => state.connected = value == "true",
            "revoked" => state.revoked = value == "true",
            "collector" => state.collector = Some(value.to_owned()),
            "last_error" => state.last_error = Some(value.to_owned()),
            "last_ack" => {
                state.last_ack = value
                    .parse()
                    .ok()
                    .map(|s| UNIX_EPOCH + Duration::from_secs(s))
            }
            "halted_by" => state.halted_by = Some(value.to_owned()),
            _ => {}
        }
    }
    state
}

/// What the daemon's watcher knows, as of its last write (a second small
/// file, `watch.state`, written only by the watcher task so that it and the
/// sender never overwrite each other's news).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchState {
    /// `min_age_secs` of the running daemon.
    pub min_age_secs: u64,
    /// Files held back by `min_age_secs`.
    pub held: Held,
    /// Each root: name, path, how it is followed.
    pub roots: Vec<(String, PathBuf, RootWatch)>,
}

/// Where the daemon's watcher keeps its state.
pub fn watch_state_path(state_dir: &Path) -> PathBuf {
    state_dir.join("watch.state")
}

/// Writes `state` atomically; errors are ignored (informational).
pub fn write_watch(path: &Path, state: &WatchState) {
    let mut text = format!(
        "min_age_secs={}\nheld_files={}\nheld_future_mtimes={}\n",
        state.min_age_secs, state.held.files, state.held.future_mtimes
    );
    if let Some(t) = state.held.next_ready {
        let _ = writeln!(text, "held_next_ready={}", secs(t));
    }
    for (name, dir, watch) in &state.roots {
        let _ = writeln!(
            text,
            "root={}\t{}\t{}",
            watch.as_str(),
            name,
            one_line(&dir.to_string_lossy())
        );
    }
    let tmp = path.with_extension("state.tmp");
    if std::fs::write(&tmp, text).is_ok() {
        let _ = std::fs::rename(&tmp, path);
    }
}

/// Reads the watcher's state file (`None` if missing).
pub fn read_watch(path: &Path) -> Option<WatchState> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut state = WatchState::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        match key {
            "min_age_secs" => state.min_age_secs = value.parse().unwrap_or(0),
            "held_files" => state.held.files = value.parse().unwrap_or(0),
            "held_future_mtimes" => state.held.future_mtimes = value.parse().unwrap_or(0),
            "held_next_ready" => {
                state.held.next_ready = value
                    .parse()
                    .ok()
                    .map(|s| UNIX_EPOCH + Duration::from_secs(s))
            }
            "root" => {
                let mut parts = value.splitn(3, '\t');
                if let (Some(Some(watch)), Some(name), Some(dir)) = (
                    parts.next().map(RootWatch::parse),
                    parts.next(),
                    parts.next(),
                ) {
                    state
                        .roots
                        .push((name.to_owned(), PathBuf::from(dir), watch));
                }
            }
            _ => {}
        }
    }
    Some(state)
}

/// The status report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub due_files: u64,
    pub due_bytes: u64,
    pub oldest_due: Option<SystemTime>,
    pub failing: u64,
    /// Due files the collector refused for good (not offered again until
    /// they change).
    pub refused: u64,
    pub last_ack: Option<SystemTime>,
    pub halt_flag: Option<String>,
    pub collector_connected: bool,
    /// The collector refuses this station as revoked.
    pub revoked: bool,
    pub collector: Option<String>,
    pub last_error: Option<String>,
    /// Recent file errors: path (text form of names), error, attempts and
    /// whether the refusal is permanent.
    pub recent_errors: Vec<(String, String, u32, bool)>,
    /// What the take-over from indexerD did, if one happened.
    pub legacy_import: Option<takeover::Report>,
    /// Files held back and how each root is followed, if the daemon ran.
    pub watch: Option<WatchState>,
}

/// Why status could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error(transparent)]
    Ledger(#[from] crate::ledger::LedgerError),
    #[error(transparent)]
    Halt(#[from] crate::halt_flag::HaltFlagError),
}

/// Builds the report from the ledger (read-only), the flag and the state file.
pub fn report(settings: &Settings) -> Result<Report, StatusError> {
    let ledger = Ledger::open_read_only(&settings.ledger)?;
    let summary = ledger.due_summary()?;
    let state = read(&state_path(&settings.state_dir));
    let flag = HaltFlag::new(&settings.legacy.halt_flag, settings.legacy.halt_timeout);
    let holder = flag.holder()?.map(|h| h.to_string());
    let recent_errors = ledger
        .recent_errors(10)?
        .into_iter()
        .map(|e| {
            (
                format!(
                    "{}/{}",
                    e.root,
                    name::encode(e.rel_path.as_os_str().as_bytes())
                ),
                e.error,
                e.attempts,
                e.permanent,
            )
        })
        .collect();
    Ok(Report {
        due_files: summary.files,
        due_bytes: summary.bytes,
        oldest_due: summary.oldest,
        failing: summary.failing,
        refused: summary.refused,
        last_ack: ledger.last_ack()?.or(state.last_ack),
        halt_flag: holder,
        collector_connected: state.connected,
        revoked: state.revoked,
        collector: state.collector,
        last_error: state.last_error,
        recent_errors,
        legacy_import: takeover::read_report(&takeover::report_path(&settings.state_dir)),
        watch: read_watch(&watch_state_path(&settings.state_dir)),
    })
}

fn when(t: Option<SystemTime>) -> String {
    t.map_or_else(|| "never".to_owned(), |t| secs(t).to_string())
}

/// Human-readable report.
pub fn text(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "due:            {} files, {} bytes",
        r.due_files, r.due_bytes
    );
    let _ = writeln!(out, "oldest due:     {}", when(r.oldest_due));
    let _ = writeln!(out, "failing:        {}", r.failing);
    if r.refused > 0 {
        let _ = writeln!(
            out,
            "refused:        {} (permanent: not offered again until they change)",
            r.refused
        );
    }
    let _ = writeln!(out, "last ack:       {}", when(r.last_ack));
    let _ = writeln!(
        out,
        "halt flag:      {}",
        r.halt_flag.as_deref().unwrap_or("not raised")
    );
    let retry = crate::daemon::REVOKED_RETRY.as_secs() / 60;
    let link = match (&r.collector, r.collector_connected) {
        (Some(c), true) => format!("connected to {c}"),
        (_, false) if r.revoked => {
            format!("revoked: the collector refuses this station (retried every {retry} minutes)")
        }
        (_, false) => "not connected".to_owned(),
        (None, true) => "connected".to_owned(),
    };
    let _ = writeln!(out, "collector:      {link}");
    if let Some(e) = &r.last_error {
        let _ = writeln!(out, "last error:     {e}");
    }
    for (path, error, attempts, permanent) in &r.recent_errors {
        if *permanent {
            let _ = writeln!(
                out,
                "error:          {path}: {error} (permanent: not offered again until it changes)"
            );
        } else {
            let _ = writeln!(out, "error:          {path}: {error} ({attempts} attempts)");
        }
    }
    if let Some(w) = &r.watch {
        let held = &w.held;
        if held.files > 0 {
            let _ = write!(
                out,
                "held:           {} files, waiting to be seen unchanged for min_age_secs ({} s)",
                held.files, w.min_age_secs
            );
            if held.future_mtimes > 0 {
                let _ = write!(
                    out,
                    "; {} with an mtime in the future (clock ahead when written)",
                    held.future_mtimes
                );
            }
            let _ = writeln!(out, "; next ready at {}", when(held.next_ready));
        }
        for (name, dir, watch) in &w.roots {
            let how = match watch {
                RootWatch::Watched => "watched (inotify)",
                RootWatch::Polled => "polled",
                RootWatch::Missing => "missing: picked up when it appears",
            };
            let _ = writeln!(out, "root:           {name} {}: {how}", dir.display());
        }
    }
    if let Some(i) = &r.legacy_import {
        let history = if i.history_sent {
            "BACKUP_DONE sent again as asked".to_owned()
        } else {
            format!(
                "{} already copied (not sent), {} changed since their copy",
                i.already_copied, i.changed_since_copy
            )
        };
        let _ = writeln!(
            out,
            "indexerD:       imported at {}: {} due, {} not found, {} lines refused; {history}",
            when(i.at),
            i.imported,
            i.not_found,
            i.refused
        );
        for l in &i.refused_lines {
            let _ = writeln!(out, "refused line:   {}: {}: {}", l.line, l.reason, l.text);
        }
        if i.refused > i.refused_lines.len() {
            let _ = writeln!(
                out,
                "refused line:   ... and {} more",
                i.refused - i.refused_lines.len()
            );
        }
    }
    out
}

fn json_time(t: Option<SystemTime>) -> String {
    t.map_or_else(|| "null".to_owned(), |t| secs(t).to_string())
}

/// JSON report (times as Unix seconds).
pub fn json(r: &Report) -> String {
    let errors: Vec<String> = r
        .recent_errors
        .iter()
        .map(|(p, e, a, permanent)| {
            format!(
                "{{\"path\":{},\"error\":{},\"attempts\":{a},\"permanent\":{permanent}}}",
                json::string(p),
                json::string(e)
            )
        })
        .collect();
    let legacy_import = r.legacy_import.as_ref().map_or_else(
        || "null".to_owned(),
        |i| {
            let lines: Vec<String> = i
                .refused_lines
                .iter()
                .map(|l| {
                    format!(
                        "{{\"line\":{},\"reason\":{},\"text\":{}}}",
                        l.line,
                        json::string(&l.reason.to_string()),
                        json::string(&l.text)
                    )
                })
                .collect();
            format!(
                "{{\"at\":{},\"imported\":{},\"not_found\":{},\"refused\":{},\"already_copied\":{},\"changed_since_copy\":{},\"history_sent\":{},\"refused_lines\":[{}]}}",
                json_time(i.at),
                i.imported,
                i.not_found,
                i.refused,
                i.already_copied,
                i.changed_since_copy,
                i.history_sent,
                lines.join(",")
            )
        },
    );
    let watch = r.watch.as_ref().map_or_else(
        || "\"held\":null,\"roots\":null".to_owned(),
        |w| {
            let roots: Vec<String> = w
                .roots
                .iter()
                .map(|(name, dir, watch)| {
                    format!(
                        "{{\"name\":{},\"path\":{},\"state\":\"{}\"}}",
                        json::string(name),
                        json::string(&dir.to_string_lossy()),
                        watch.as_str()
                    )
                })
                .collect();
            format!(
                "\"held\":{{\"files\":{},\"future_mtimes\":{},\"min_age_secs\":{},\"next_ready\":{}}},\"roots\":[{}]",
                w.held.files,
                w.held.future_mtimes,
                w.min_age_secs,
                json_time(w.held.next_ready),
                roots.join(",")
            )
        },
    );
    format!(
        "{{\"due_files\":{},\"due_bytes\":{},\"oldest_due\":{},\"failing\":{},\"refused_files\":{},\"last_ack\":{},\"halt_flag\":{},\"collector_connected\":{},\"revoked\":{},\"collector\":{},\"last_error\":{},\"recent_errors\":[{}],{watch},\"legacy_import\":{legacy_import}}}\n",
        r.due_files,
        r.due_bytes,
        json_time(r.oldest_due),
        r.failing,
        r.refused,
        json_time(r.last_ack),
        json::string_or_null(r.halt_flag.as_deref()),
        r.collector_connected,
        r.revoked,
        json::string_or_null(r.collector.as_deref()),
        json::string_or_null(r.last_error.as_deref()),
        errors.join(",")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_file_round_trips_and_survives_newlines() {
        let dir = tempfile::tempdir().unwrap();
        let path = state_path(dir.path());
        let state = LinkState {
            connected: true,
            revoked: true,
            collector: Some("c:1".into()),
            last_error: Some("two\nlines".into()),
            last_ack: Some(UNIX_EPOCH + Duration::from_secs(42)),
            halted_by: None,
        };
        write(&path, &state);
        let back = read(&path);
        assert_eq!(back.last_error.as_deref(), Some("two lines"));
        assert_eq!(back.last_ack, state.last_ack);
        assert!(back.connected);
        assert_eq!(read(&dir.path().join("missing")), LinkState::default());
    }

    #[test]
    fn the_watch_state_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = watch_state_path(dir.path());
        assert_eq!(read_watch(&path), None);
        let state = WatchState {
            min_age_secs: 3600,
            held: Held {
                files: 2,
                future_mtimes: 1,
                next_ready: Some(UNIX_EPOCH + Duration::from_secs(99)),
            },
            roots: vec![
                ("data".into(), PathBuf::from("/srv/a b"), RootWatch::Watched),
                ("nfs".into(), PathBuf::from("/mnt/nfs"), RootWatch::Missing),
            ],
        };
        write_watch(&path, &state);
        assert_eq!(read_watch(&path), Some(state));
    }
}
