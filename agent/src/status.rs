//! `ferry-agent status`: the due set from the ledger, the `HALT_FLAG`
//! holder, and what the running daemon last knew of the collector (a small
//! `agent.state` file it rewrites atomically).

use std::fmt::Write as _;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferry_common::clock::unix_secs;
use ferry_common::{json, name};
use serde::{Deserialize, Serialize};

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

fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

/// The version of `agent.state` this agent writes.
pub const STATE_VERSION: u32 = 1;

/// `agent.state` as written since [`STATE_VERSION`] 1: one JSON object
/// (the daemon writes it, `status` reads it). Earlier agents wrote
/// unversioned `key=value` lines, still read.
#[derive(Serialize, Deserialize)]
struct StateFile {
    version: u32,
    connected: bool,
    revoked: bool,
    collector: Option<String>,
    last_error: Option<String>,
    /// Unix seconds.
    last_ack: Option<u64>,
    halted_by: Option<String>,
}

/// Only the version, read first so that a file of a later version is
/// recognised before its fields are.
#[derive(Deserialize)]
struct Versioned {
    version: u32,
}

/// Writes `state` atomically (temp file + rename); errors are ignored: the
/// state file is informational. Texts are kept to one line, as `status`
/// shows them.
pub fn write(path: &Path, state: &LinkState) {
    let file = StateFile {
        version: STATE_VERSION,
        connected: state.connected,
        revoked: state.revoked,
        collector: state.collector.as_deref().map(one_line),
        last_error: state.last_error.as_deref().map(one_line),
        last_ack: state.last_ack.map(unix_secs),
        halted_by: state.halted_by.as_deref().map(one_line),
    };
    let tmp = path.with_extension("state.tmp");
    if std::fs::write(&tmp, json::line(&file)).is_ok() {
        let _ = std::fs::rename(&tmp, path);
    }
}

/// Reads the state file: the current version, or the unversioned form of
/// earlier agents (defaults if missing, garbled or of a later version).
pub fn read(path: &Path) -> LinkState {
    let Ok(text) = std::fs::read_to_string(path) else {
        return LinkState::default();
    };
    if !text.trim_start().starts_with('{') {
        return read_unversioned(&text);
    }
    match serde_json::from_str::<Versioned>(&text) {
        Ok(Versioned { version: 1 }) => match serde_json::from_str::<StateFile>(&text) {
            Ok(file) => LinkState {
                connected: file.connected,
                revoked: file.revoked,
                collector: file.collector,
                last_error: file.last_error,
                last_ack: file.last_ack.map(|s| UNIX_EPOCH + Duration::from_secs(s)),
                halted_by: file.halted_by,
            },
            Err(_) => LinkState::default(),
        },
        _ => LinkState::default(),
    }
}

/// The `key=value` lines agents wrote before the state file had a version.
fn read_unversioned(text: &str) -> LinkState {
    let mut state = LinkState::default();
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
        let _ = writeln!(text, "held_next_ready={}", unix_secs(t));
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
    t.map_or_else(|| "never".to_owned(), |t| unix_secs(t).to_string())
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

/// `status --json`, as written: times as Unix seconds, `null` for what
/// is unknown.
#[derive(Serialize)]
struct JsonReport<'a> {
    due_files: u64,
    due_bytes: u64,
    oldest_due: Option<u64>,
    failing: u64,
    refused_files: u64,
    last_ack: Option<u64>,
    halt_flag: Option<&'a str>,
    collector_connected: bool,
    revoked: bool,
    collector: Option<&'a str>,
    last_error: Option<&'a str>,
    recent_errors: Vec<JsonError<'a>>,
    held: Option<JsonHeld>,
    roots: Option<Vec<JsonRoot<'a>>>,
    legacy_import: Option<JsonImport<'a>>,
}

#[derive(Serialize)]
struct JsonError<'a> {
    path: &'a str,
    error: &'a str,
    attempts: u32,
    permanent: bool,
}

#[derive(Serialize)]
struct JsonHeld {
    files: usize,
    future_mtimes: usize,
    min_age_secs: u64,
    next_ready: Option<u64>,
}

#[derive(Serialize)]
struct JsonRoot<'a> {
    name: &'a str,
    path: String,
    state: &'static str,
}

#[derive(Serialize)]
struct JsonImport<'a> {
    at: Option<u64>,
    imported: usize,
    not_found: usize,
    refused: usize,
    already_copied: usize,
    changed_since_copy: usize,
    history_sent: bool,
    refused_lines: Vec<JsonRefusedLine<'a>>,
}

#[derive(Serialize)]
struct JsonRefusedLine<'a> {
    line: usize,
    reason: String,
    text: &'a str,
}

/// JSON report (times as Unix seconds), one line.
pub fn json(r: &Report) -> String {
    let report = JsonReport {
        due_files: r.due_files,
        due_bytes: r.due_bytes,
        oldest_due: r.oldest_due.map(unix_secs),
        failing: r.failing,
        refused_files: r.refused,
        last_ack: r.last_ack.map(unix_secs),
        halt_flag: r.halt_flag.as_deref(),
        collector_connected: r.collector_connected,
        revoked: r.revoked,
        collector: r.collector.as_deref(),
        last_error: r.last_error.as_deref(),
        recent_errors: r
            .recent_errors
            .iter()
            .map(|(path, error, attempts, permanent)| JsonError {
                path,
                error,
                attempts: *attempts,
                permanent: *permanent,
            })
            .collect(),
        held: r.watch.as_ref().map(|w| JsonHeld {
            files: w.held.files,
            future_mtimes: w.held.future_mtimes,
            min_age_secs: w.min_age_secs,
            next_ready: w.held.next_ready.map(unix_secs),
        }),
        roots: r.watch.as_ref().map(|w| {
            w.roots
                .iter()
                .map(|(name, dir, watch)| JsonRoot {
                    name,
                    path: dir.to_string_lossy().into_owned(),
                    state: watch.as_str(),
                })
                .collect()
        }),
        legacy_import: r.legacy_import.as_ref().map(|i| JsonImport {
            at: i.at.map(unix_secs),
            imported: i.imported,
            not_found: i.not_found,
            refused: i.refused,
            already_copied: i.already_copied,
            changed_since_copy: i.changed_since_copy,
            history_sent: i.history_sent,
            refused_lines: i
                .refused_lines
                .iter()
                .map(|l| JsonRefusedLine {
                    line: l.line,
                    reason: l.reason.to_string(),
                    text: &l.text,
                })
                .collect(),
        }),
    };
    json::line(&report)
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
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("{\"version\":1,"), "{text}");
    }

    /// An agent updated in place finds the unversioned `key=value` file
    /// its predecessor wrote, and reads it; its first write replaces it.
    #[test]
    fn an_unversioned_state_file_is_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = state_path(dir.path());
        std::fs::write(
            &path,
            "connected=true\nrevoked=true\ncollector=c:1\nlast_error=refused: x=y\n\
             last_ack=42\nhalted_by=indexerD pid 7\n",
        )
        .unwrap();
        let old = read(&path);
        assert_eq!(
            old,
            LinkState {
                connected: true,
                revoked: true,
                collector: Some("c:1".into()),
                last_error: Some("refused: x=y".into()),
                last_ack: Some(UNIX_EPOCH + Duration::from_secs(42)),
                halted_by: Some("indexerD pid 7".into()),
            }
        );
        write(&path, &old);
        assert_eq!(read(&path), old);
        assert!(std::fs::read_to_string(&path).unwrap().starts_with('{'));
        // A later version is not misread as this one.
        std::fs::write(&path, "{\"version\":2,\"connected\":true}").unwrap();
        assert_eq!(read(&path), LinkState::default());
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

    /// Monitoring and tests read `status --json` as text: every key, its
    /// order, `null` for what is unknown and the escapes stay as they are.
    #[test]
    fn the_json_report_keeps_its_exact_form() {
        let at = |s| Some(UNIX_EPOCH + Duration::from_secs(s));
        let mut r = Report {
            due_files: 3,
            due_bytes: 300,
            oldest_due: at(10),
            failing: 1,
            refused: 2,
            last_ack: None,
            halt_flag: Some("operator \"x\"".into()),
            collector_connected: false,
            revoked: true,
            collector: None,
            last_error: Some("line\u{2028}sep\u{1}\ttab".into()),
            recent_errors: vec![("data/a\\b".into(), "gone".into(), 4, true)],
            legacy_import: None,
            watch: None,
        };
        assert_eq!(
            json(&r),
            "{\"due_files\":3,\"due_bytes\":300,\"oldest_due\":10,\"failing\":1,\
             \"refused_files\":2,\"last_ack\":null,\"halt_flag\":\"operator \\\"x\\\"\",\
             \"collector_connected\":false,\"revoked\":true,\"collector\":null,\
             \"last_error\":\"line\\u2028sep\\u0001\\ttab\",\"recent_errors\":[{\"path\":\
             \"data/a\\\\b\",\"error\":\"gone\",\"attempts\":4,\"permanent\":true}],\
             \"held\":null,\"roots\":null,\"legacy_import\":null}\n"
        );
        r.recent_errors.clear();
        r.watch = Some(WatchState {
            min_age_secs: 60,
            held: Held {
                files: 2,
                future_mtimes: 1,
                next_ready: None,
            },
            roots: vec![("nfs".into(), PathBuf::from("/mnt/n"), RootWatch::Missing)],
        });
        r.legacy_import = Some(takeover::Report {
            at: at(5),
            imported: 1,
            not_found: 2,
            refused: 3,
            refused_lines: vec![crate::due_list::RefusedLine {
                line: 7,
                text: "rel/x".into(),
                reason: crate::due_list::Refusal::Relative,
            }],
            already_copied: 4,
            changed_since_copy: 5,
            history_sent: false,
        });
        let text = json(&r);
        let tail = text.split_once("\"recent_errors\"").unwrap().1;
        assert_eq!(
            tail,
            ":[],\"held\":{\"files\":2,\"future_mtimes\":1,\"min_age_secs\":60,\
             \"next_ready\":null},\"roots\":[{\"name\":\"nfs\",\"path\":\"/mnt/n\",\
             \"state\":\"missing\"}],\"legacy_import\":{\"at\":5,\"imported\":1,\
             \"not_found\":2,\"refused\":3,\"already_copied\":4,\"changed_since_copy\":5,\
             \"history_sent\":false,\"refused_lines\":[{\"line\":7,\"reason\":\"not an absolute path\",\
             \"text\":\"rel/x\"}]}}\n"
        );
    }
}
