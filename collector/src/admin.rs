//! The admin commands' work: `status`, `reconcile` and `migrate`, reading the
//! collector's journal and catalogs as the running collector leaves them.

use std::fmt::Write as _;

use serde::Serialize;

use crate::CATALOGS;
use crate::config::{CatalogUrl, Settings};
use crate::journal::{CatalogHealth, CatalogState, Journal};
use crate::reconcile::{self, Report};
use crate::store::{AnyStore, CatalogStore, StationSummary};

/// Failures of an admin command.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(transparent)]
    Journal(#[from] crate::journal::JournalError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("cannot create the state directory {path}: {source}")]
    StateDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// One station's status, with the legacy monitoring keys; as JSON, an
/// element of `status --json` and the answer of `/status/<station>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StationStatus {
    pub station: String,
    /// Files of the station stored in the repository (`host_files`).
    pub host_files: u64,
    pub bytes: u64,
    /// Stored files whose catalog record is not yet in both catalogs
    /// (`pending_backup`): the larger of the two catalogs' backlogs.
    pub pending_backup: u64,
    pub pending_primary: u64,
    pub pending_backup_catalog: u64,
    /// Files that failed in the last 24 hours, plus the station's records
    /// waiting for a catalog that is down (`backup_error`): the larger of
    /// the down catalogs' backlogs of this station. Zero only while
    /// nothing of the station is failing.
    pub backup_error: u64,
    /// Unix seconds of the newest stored file (`last_backup`).
    pub last_backup: Option<i64>,
}

fn store(name: &str, url: &CatalogUrl) -> Result<AnyStore, AdminError> {
    Ok(AnyStore::open(name, url)?)
}

/// The journal, creating the state directory first (`migrate` and
/// `reconcile` on a fresh install).
fn journal(settings: &Settings) -> Result<Journal, AdminError> {
    std::fs::create_dir_all(&settings.state_dir).map_err(|source| AdminError::StateDir {
        path: settings.state_dir.clone(),
        source,
    })?;
    Ok(Journal::open(&settings.state_dir.join("journal.sqlite"))?)
}

/// One catalog's health and lag, for status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogStatus {
    pub catalog: &'static str,
    /// `None` until a collector has run its applier.
    pub health: Option<CatalogHealth>,
    /// Rows the catalog lacks as far as the collector knows: journal
    /// records not applied yet, plus, during a backfill, the other
    /// catalog's rows not yet looked at.
    pub lag: u64,
}

/// Everything `status` shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub stations: Vec<StationStatus>,
    pub catalogs: Vec<CatalogStatus>,
}

/// Status of every station (or one) and of both catalogs, read from the
/// journal; a collector that has never run has an empty status.
pub fn status(
    settings: &Settings,
    station: Option<&str>,
    now_ms: i64,
) -> Result<Status, AdminError> {
    match Journal::open_existing(&settings.state_dir.join("journal.sqlite"))? {
        Some(journal) => status_of(&journal, station, now_ms),
        None => Ok(Status {
            stations: Vec::new(),
            catalogs: CATALOGS
                .iter()
                .map(|catalog| CatalogStatus {
                    catalog,
                    health: None,
                    lag: 0,
                })
                .collect(),
        }),
    }
}

/// Both catalogs' health and lag, from an open journal.
pub fn catalogs_of(journal: &Journal) -> Result<Vec<CatalogStatus>, AdminError> {
    CATALOGS
        .iter()
        .map(|catalog| {
            let health = journal.health(catalog)?;
            let unseen = health
                .as_ref()
                .filter(|h| h.state == CatalogState::Backfilling)
                .and_then(|h| h.backfill)
                .map_or(0, |b| b.total.saturating_sub(b.scanned));
            Ok(CatalogStatus {
                catalog,
                health,
                lag: journal.lag(catalog)? + unseen,
            })
        })
        .collect()
}

/// Status of every station (or one) from an open journal (the running
/// collector's status endpoint uses its own connection).
pub fn status_of(
    journal: &Journal,
    station: Option<&str>,
    now_ms: i64,
) -> Result<Status, AdminError> {
    let catalogs = catalogs_of(journal)?;
    let down = |catalog: &str| {
        catalogs.iter().any(|c| {
            c.catalog == catalog
                && c.health
                    .as_ref()
                    .is_some_and(|h| h.state == CatalogState::Down)
        })
    };
    let (primary_down, backup_down) = (down(CATALOGS[0]), down(CATALOGS[1]));
    let stations = match station {
        Some(s) => vec![s.to_owned()],
        None => journal.stations()?,
    };
    let mut out = Vec::new();
    for station in stations {
        let stats = journal.station_stats(&station)?;
        let (p, b) = (stats.pending_primary, stats.pending_backup);
        let failed = journal
            .failures(&station, now_ms - 86_400_000, 1_000_000)?
            .len() as u64;
        let waiting = if primary_down { p } else { 0 }.max(if backup_down { b } else { 0 });
        out.push(StationStatus {
            station,
            host_files: stats.files,
            bytes: stats.bytes,
            pending_backup: p.max(b),
            pending_primary: p,
            pending_backup_catalog: b,
            backup_error: failed + waiting,
            last_backup: stats.last_stored_ms.map(|ms| ms / 1000),
        });
    }
    Ok(Status {
        stations: out,
        catalogs,
    })
}

/// Human-readable status: a table of stations, then one of catalogs.
pub fn status_text(status: &Status, now_ms: i64) -> String {
    let rows = &status.stations;
    let mut out = format!(
        "{:<24} {:>10} {:>14} {:>10} {:>8} {:>12}\n",
        "station", "files", "bytes", "pending", "errors", "last backup"
    );
    for r in rows {
        let last = r
            .last_backup
            .map_or_else(|| "never".to_owned(), |s| s.to_string());
        let _ = writeln!(
            out,
            "{:<24} {:>10} {:>14} {:>10} {:>8} {:>12}",
            r.station, r.host_files, r.bytes, r.pending_backup, r.backup_error, last
        );
    }
    let _ = writeln!(
        out,
        "\n{:<10} {:<12} {:<28} {:>10}  last error",
        "catalog", "state", "since", "lag"
    );
    for c in &status.catalogs {
        let Some(h) = &c.health else {
            let _ = writeln!(
                out,
                "{:<10} {:<12} {:<28} {:>10}  -",
                c.catalog, "unknown", "(the collector has not run)", c.lag
            );
            continue;
        };
        let since = format!(
            "{} ({} ago)",
            timestamp(h.since_ms),
            age(now_ms - h.since_ms)
        );
        let error = match (&h.error, h.error_at_ms) {
            (Some(error), Some(at)) => format!("{} ago: {error}", age(now_ms - at)),
            (Some(error), None) => error.clone(),
            _ => "-".to_owned(),
        };
        let _ = writeln!(
            out,
            "{:<10} {:<12} {:<28} {:>10}  {error}",
            c.catalog,
            h.state.as_str(),
            since,
            c.lag
        );
        if let Some(b) = h.backfill {
            let _ = writeln!(
                out,
                "{:<10} backfill: {} of {} rows of the other catalog looked at, {} copied{}",
                "",
                b.scanned,
                b.total,
                b.copied,
                if h.state == CatalogState::Backfilling {
                    ""
                } else {
                    " (done)"
                }
            );
        }
    }
    out
}

/// `ms` (Unix milliseconds) as `2026-12-04T17:40:12Z`.
fn timestamp(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}

/// A duration in milliseconds, roughly: `42s`, `5m`, `3h`, `2d`.
fn age(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86_400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// Status as JSON: `{"stations":[...],"catalogs":[...]}`, an object per
/// station with the legacy keys and one per catalog; one line.
pub fn status_json(status: &Status) -> String {
    #[derive(Serialize)]
    struct StatusJson<'a> {
        stations: &'a [StationStatus],
        catalogs: Vec<CatalogJson<'a>>,
    }
    ferry_common::json::line(&StatusJson {
        stations: &status.stations,
        catalogs: status.catalogs.iter().map(catalog_json).collect(),
    })
}

/// One catalog's status as JSON: its state (`unknown` before the collector
/// first ran), whether it is reachable, since when (Unix seconds), lag,
/// last error and when, outages, and its last backfill.
#[derive(Debug, Serialize)]
pub struct CatalogJson<'a> {
    catalog: &'a str,
    state: &'a str,
    up: bool,
    since: Option<i64>,
    lag: u64,
    error: Option<&'a str>,
    error_at: Option<i64>,
    outages: u64,
    backfill: Option<BackfillJson>,
}

/// A catalog's last backfill, in [`CatalogJson`].
#[derive(Debug, Serialize)]
struct BackfillJson {
    copied: u64,
    scanned: u64,
    total: u64,
    running: bool,
}

/// One catalog's status, for [`status_json`] and `/healthz`.
pub fn catalog_json(c: &CatalogStatus) -> CatalogJson<'_> {
    let h = c.health.as_ref();
    let running = h.is_some_and(|h| h.state == CatalogState::Backfilling);
    CatalogJson {
        catalog: c.catalog,
        state: h.map_or("unknown", |h| h.state.as_str()),
        up: h.is_some_and(|h| matches!(h.state, CatalogState::Up | CatalogState::Backfilling)),
        since: h.map(|h| h.since_ms / 1000),
        lag: c.lag,
        error: h.and_then(|h| h.error.as_deref()),
        error_at: h.and_then(|h| h.error_at_ms).map(|ms| ms / 1000),
        outages: h.map_or(0, |h| h.outages),
        backfill: h.and_then(|h| h.backfill).map(|b| BackfillJson {
            copied: b.copied,
            scanned: b.scanned,
            total: b.total,
            running,
        }),
    }
}

/// Runs reconcile between the configured catalogs.
pub async fn reconcile(settings: &Settings, dry_run: bool) -> Result<Report, AdminError> {
    journal(settings)?;
    let primary = store("primary", &settings.primary)?;
    let backup = store("backup", &settings.backup)?;
    Ok(reconcile::reconcile(&primary, &backup, dry_run).await?)
}

/// Human-readable reconcile report.
pub fn report_text(report: &Report) -> String {
    let mut out = format!(
        "{:<24} {:>10} {:>10}  {}\n",
        "station", "primary", "backup", "digest"
    );
    for s in &report.stations {
        let digest = if s.primary_digest == s.backup_digest {
            format!(
                "{} (same)",
                &s.primary_digest[..16.min(s.primary_digest.len())]
            )
        } else {
            "DIFFERENT".to_owned()
        };
        let _ = writeln!(
            out,
            "{:<24} {:>10} {:>10}  {}",
            s.station, s.primary_rows, s.backup_rows, digest
        );
    }
    if report.dry_run {
        let _ = writeln!(
            out,
            "would copy: {} rows into primary, {} rows into backup (dry run: nothing copied)",
            report.missing_primary, report.missing_backup
        );
    } else {
        let _ = writeln!(
            out,
            "repaired: {} rows into primary, {} rows into backup",
            report.repaired_primary, report.repaired_backup
        );
    }
    for conflict in &report.conflicts {
        let _ = writeln!(out, "conflict: {conflict}");
    }
    out.push_str(if report.identical() {
        "catalogs identical\n"
    } else {
        "catalogs differ\n"
    });
    out
}

/// Runs the journal's and both catalogs' migrations.
pub async fn migrate(settings: &Settings) -> Result<(), AdminError> {
    journal(settings)?;
    store("primary", &settings.primary)?.migrate().await?;
    store("backup", &settings.backup)?.migrate().await?;
    Ok(())
}

/// Per-station totals from one catalog (for tests and diagnostics).
pub async fn catalog_summary(
    settings: &Settings,
    catalog: &str,
) -> Result<Vec<StationSummary>, AdminError> {
    let url = if catalog == "backup" {
        &settings.backup
    } else {
        &settings.primary
    };
    Ok(store(catalog, url)?.summary().await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::Backfill;

    /// Monitoring (the Zabbix template, `/status`, `/healthz`) reads these
    /// objects as text: every key, its order and `null` stay as they are.
    #[test]
    fn the_json_status_keeps_its_exact_form() {
        let status = Status {
            stations: vec![StationStatus {
                station: "st-1".into(),
                host_files: 2,
                bytes: 20,
                pending_backup: 1,
                pending_primary: 0,
                pending_backup_catalog: 1,
                backup_error: 0,
                last_backup: None,
            }],
            catalogs: vec![
                CatalogStatus {
                    catalog: "primary",
                    health: None,
                    lag: 0,
                },
                CatalogStatus {
                    catalog: "backup",
                    health: Some(CatalogHealth {
                        state: CatalogState::Backfilling,
                        since_ms: 5_999,
                        error: Some("down \"x\"\u{2028}".into()),
                        error_at_ms: Some(7_000),
                        outages: 3,
                        backfill: Some(Backfill {
                            copied: 1,
                            scanned: 2,
                            total: 3,
                        }),
                    }),
                    lag: 9,
                },
            ],
        };
        assert_eq!(
            status_json(&status),
            "{\"stations\":[{\"station\":\"st-1\",\"host_files\":2,\"bytes\":20,\
             \"pending_backup\":1,\"pending_primary\":0,\"pending_backup_catalog\":1,\
             \"backup_error\":0,\"last_backup\":null}],\"catalogs\":[{\"catalog\":\
             \"primary\",\"state\":\"unknown\",\"up\":false,\"since\":null,\"lag\":0,\
             \"error\":null,\"error_at\":null,\"outages\":0,\"backfill\":null},\
             {\"catalog\":\"backup\",\"state\":\"backfilling\",\"up\":true,\"since\":5,\
             \"lag\":9,\"error\":\"down \\\"x\\\"\\u2028\",\"error_at\":7,\"outages\":3,\
             \"backfill\":{\"copied\":1,\"scanned\":2,\"total\":3,\"running\":true}}]}\n"
        );
        let mut row = status.stations[0].clone();
        row.last_backup = Some(1_700_000_000);
        assert!(ferry_common::json::to_string(&row).ends_with(",\"last_backup\":1700000000}"));
    }
}
