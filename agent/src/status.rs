//! `ferry-agent status`: the due set from the ledger, the `HALT_FLAG`
//! holder, and what the running daemon last knew of the collector (a small
//! `agent.state` file it rewrites atomically).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferry_common::json;

use crate::config::Settings;
use crate::halt_flag::HaltFlag;
use crate::ledger::Ledger;
use crate::takeover;

/// What the daemon knows about its link, as of its last write.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkState {
    pub connected: bool,
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

/// The status report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub due_files: u64,
    pub due_bytes: u64,
    pub oldest_due: Option<SystemTime>,
    pub failing: u64,
    pub last_ack: Option<SystemTime>,
    pub halt_flag: Option<String>,
    pub collector_connected: bool,
    pub collector: Option<String>,
    pub last_error: Option<String>,
    /// Recent file errors: (path, error, attempts).
    pub recent_errors: Vec<(String, String, u32)>,
    /// What the take-over from indexerD did, if one happened.
    pub legacy_import: Option<takeover::Report>,
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
                format!("{}/{}", e.root, e.rel_path.display()),
                e.error,
                e.attempts,
            )
        })
        .collect();
    Ok(Report {
        due_files: summary.files,
        due_bytes: summary.bytes,
        oldest_due: summary.oldest,
        failing: summary.failing,
        last_ack: ledger.last_ack()?.or(state.last_ack),
        halt_flag: holder,
        collector_connected: state.connected,
        collector: state.collector,
        last_error: state.last_error,
        recent_errors,
        legacy_import: takeover::read_report(&takeover::report_path(&settings.state_dir)),
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
    let _ = writeln!(out, "last ack:       {}", when(r.last_ack));
    let _ = writeln!(
        out,
        "halt flag:      {}",
        r.halt_flag.as_deref().unwrap_or("not raised")
    );
    let link = match (&r.collector, r.collector_connected) {
        (Some(c), true) => format!("connected to {c}"),
        (_, false) => "not connected".to_owned(),
        (None, true) => "connected".to_owned(),
    };
    let _ = writeln!(out, "collector:      {link}");
    if let Some(e) = &r.last_error {
        let _ = writeln!(out, "last error:     {e}");
    }
    for (path, error, attempts) in &r.recent_errors {
        let _ = writeln!(out, "error:          {path}: {error} ({attempts} attempts)");
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
            "indexerD import: at {}: {} due imported, {} not found, {} refused; {history}",
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
        .map(|(p, e, a)| {
            format!(
                "{{\"path\":{},\"error\":{},\"attempts\":{a}}}",
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
    format!(
        "{{\"due_files\":{},\"due_bytes\":{},\"oldest_due\":{},\"failing\":{},\"last_ack\":{},\"halt_flag\":{},\"collector_connected\":{},\"collector\":{},\"last_error\":{},\"recent_errors\":[{}],\"legacy_import\":{legacy_import}}}\n",
        r.due_files,
        r.due_bytes,
        json_time(r.oldest_due),
        r.failing,
        json_time(r.last_ack),
        json::string_or_null(r.halt_flag.as_deref()),
        r.collector_connected,
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
}
