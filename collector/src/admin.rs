//! The admin commands' work: `status`, `reconcile` and `migrate`, reading the
//! collector's journal and catalogs as the running collector leaves them.

use std::fmt::Write as _;

use crate::config::{CatalogUrl, Settings};
use crate::journal::Journal;
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

/// One station's status, with the legacy monitoring keys.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// Files that failed in the last 24 hours (`backup_error`).
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

/// Status of every station (or one), read from the journal.
pub fn status(
    settings: &Settings,
    station: Option<&str>,
    now_ms: i64,
) -> Result<Vec<StationStatus>, AdminError> {
    status_of(&journal(settings)?, station, now_ms)
}

/// Status of every station (or one) from an open journal (the running
/// collector's status endpoint uses its own connection).
pub fn status_of(
    journal: &Journal,
    station: Option<&str>,
    now_ms: i64,
) -> Result<Vec<StationStatus>, AdminError> {
    let stations = match station {
        Some(s) => vec![s.to_owned()],
        None => journal.stations()?,
    };
    let mut out = Vec::new();
    for station in stations {
        let stats = journal.station_stats(&station)?;
        let (p, b) = (stats.pending_primary, stats.pending_backup);
        let errors = journal
            .failures(&station, now_ms - 86_400_000, 1_000_000)?
            .len() as u64;
        out.push(StationStatus {
            station,
            host_files: stats.files,
            bytes: stats.bytes,
            pending_backup: p.max(b),
            pending_primary: p,
            pending_backup_catalog: b,
            backup_error: errors,
            last_backup: stats.last_stored_ms.map(|ms| ms / 1000),
        });
    }
    Ok(out)
}

/// Human-readable status table.
pub fn status_text(rows: &[StationStatus]) -> String {
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
    out
}

/// Status as JSON: an object per station with the legacy keys.
pub fn status_json(rows: &[StationStatus]) -> String {
    let items: Vec<String> = rows.iter().map(station_json).collect();
    format!("[{}]\n", items.join(","))
}

/// One station's status as a JSON object (an element of [`status_json`]).
pub fn station_json(r: &StationStatus) -> String {
    format!(
        "{{\"station\":{},\"host_files\":{},\"bytes\":{},\"pending_backup\":{},\"pending_primary\":{},\"pending_backup_catalog\":{},\"backup_error\":{},\"last_backup\":{}}}",
        ferry_common::json::string(&r.station),
        r.host_files,
        r.bytes,
        r.pending_backup,
        r.pending_primary,
        r.pending_backup_catalog,
        r.backup_error,
        r.last_backup
            .map_or_else(|| "null".to_owned(), |s| s.to_string())
    )
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
