//! `reconcile`: proves the primary and backup catalogs hold the same
//! catalog, row by row, and repairs the side that lacks rows.
//!
//! Rows are keyed by (station, path, sha256), the path in the text form of
//! names ([`ferry_common::name`]), which is reversible: two paths never share
//! a key. A row missing on one side is copied from the other, as it is
//! (where it is stored, whether it is the latest); a key present on both
//! sides with different contents is a conflict, reported and never
//! overwritten, with one exception: a row one side shows no longer the
//! latest (a newer version was applied there and moved it) while the other
//! still shows it latest is repaired on that other side, since a version
//! only ever stops being the latest.

use std::collections::BTreeMap;

use crate::journal::Record;
use crate::repository::hex;
use crate::store::{CatalogStore, StoreError};

/// One station's rows on each side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StationComparison {
    pub station: String,
    pub primary_rows: u64,
    pub backup_rows: u64,
    /// SHA-256 over the station's sorted rows, per side.
    pub primary_digest: String,
    pub backup_digest: String,
}

/// What reconcile found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub stations: Vec<StationComparison>,
    /// Rows each side lacks: found missing before any copy.
    pub missing_primary: u64,
    pub missing_backup: u64,
    /// Rows copied into the primary / backup (none in a dry run).
    pub repaired_primary: u64,
    pub repaired_backup: u64,
    /// Whether this was a dry run, which copies nothing.
    pub dry_run: bool,
    /// Keys whose rows differ between the catalogs.
    pub conflicts: Vec<String>,
}

impl Report {
    /// Whether both catalogs now hold exactly the same rows.
    pub fn identical(&self) -> bool {
        self.conflicts.is_empty()
            && self
                .stations
                .iter()
                .all(|s| s.primary_rows == s.backup_rows && s.primary_digest == s.backup_digest)
    }
}

type Key = (String, String, [u8; 32]);

fn keyed(rows: Vec<Record>) -> BTreeMap<Key, Record> {
    rows.into_iter()
        .map(|r| ((r.station.clone(), r.path.clone(), r.sha256), r))
        .collect()
}

/// Digest of one station's rows: every column, in key order.
fn digests(rows: &BTreeMap<Key, Record>) -> BTreeMap<String, (u64, String)> {
    let mut per_station: BTreeMap<String, (u64, ring::digest::Context)> = BTreeMap::new();
    for r in rows.values() {
        let entry = per_station
            .entry(r.station.clone())
            .or_insert_with(|| (0, ring::digest::Context::new(&ring::digest::SHA256)));
        entry.0 += 1;
        let line = format!(
            "{}\0{}\0{}\0{}\0{}\0{}\0{}\0{}\0{}\n",
            r.station,
            r.path,
            r.size,
            r.mtime_ns,
            hex(&r.sha256),
            r.stored_as,
            r.received_at,
            r.transfer,
            u8::from(r.latest)
        );
        entry.1.update(line.as_bytes());
    }
    per_station
        .into_iter()
        .map(|(station, (n, ctx))| (station, (n, hex(ctx.finish().as_ref()))))
        .collect()
}

/// Whether `row` is `other` after a newer version of its path moved it:
/// no longer the latest, everything else but where it is stored the same.
fn superseded(row: &Record, other: &Record) -> bool {
    !row.latest
        && other.latest
        && Record {
            stored_as: other.stored_as.clone(),
            latest: true,
            ..row.clone()
        } == *other
}

/// Compares both catalogs and, unless `dry_run`, copies missing rows each way
/// (and moves a version the other catalog saw superseded).
pub async fn reconcile<P: CatalogStore, B: CatalogStore>(
    primary: &P,
    backup: &B,
    dry_run: bool,
) -> Result<Report, StoreError> {
    primary.migrate().await?;
    backup.migrate().await?;
    let mut p = keyed(primary.rows().await?);
    let mut b = keyed(backup.rows().await?);
    let mut report = Report::default();
    let mut to_primary = Vec::new();
    let mut to_backup = Vec::new();
    for (key, row) in &p {
        match b.get(key) {
            None => to_backup.push(row.clone()),
            // One side applied a newer version of the path, whose record
            // the other no longer gets: it learns the move.
            Some(other) if superseded(row, other) => to_backup.push(row.clone()),
            Some(other) if superseded(other, row) => to_primary.push(other.clone()),
            Some(other) if other != row => report.conflicts.push(format!(
                "{} {} {}: primary {:?} / backup {:?}",
                key.0,
                key.1,
                hex(&key.2),
                (row.size, row.mtime_ns, &row.stored_as, row.latest),
                (other.size, other.mtime_ns, &other.stored_as, other.latest)
            )),
            Some(_) => {}
        }
    }
    for (key, row) in &b {
        if !p.contains_key(key) {
            to_primary.push(row.clone());
        }
    }
    report.dry_run = dry_run;
    report.missing_primary = to_primary.len() as u64;
    report.missing_backup = to_backup.len() as u64;
    if !dry_run {
        report.repaired_primary = primary.insert_rows(to_primary.clone()).await?;
        report.repaired_backup = backup.insert_rows(to_backup.clone()).await?;
        for row in to_primary {
            p.insert((row.station.clone(), row.path.clone(), row.sha256), row);
        }
        for row in to_backup {
            b.insert((row.station.clone(), row.path.clone(), row.sha256), row);
        }
    }
    let (dp, db) = (digests(&p), digests(&b));
    let stations: std::collections::BTreeSet<&String> = dp.keys().chain(db.keys()).collect();
    for station in stations {
        let (pn, pd) = dp.get(station).cloned().unwrap_or((0, String::new()));
        let (bn, bd) = db.get(station).cloned().unwrap_or((0, String::new()));
        report.stations.push(StationComparison {
            station: station.clone(),
            primary_rows: pn,
            backup_rows: bn,
            primary_digest: pd,
            backup_digest: bd,
        });
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SqliteStore;

    fn record(station: &str, path: &str, sha: u8) -> Record {
        Record {
            station: station.into(),
            path: path.into(),
            size: 1,
            mtime_ns: 2,
            sha256: [sha; 32],
            stored_as: format!("{station}/{path}"),
            received_at: 3,
            transfer: "t".into(),
            latest: true,
            previous: None,
        }
    }

    #[tokio::test]
    async fn gaps_on_either_side_are_repaired_and_then_identical() {
        let dir = tempfile::tempdir().unwrap();
        let primary = SqliteStore::new("primary", &dir.path().join("p.sqlite"));
        let backup = SqliteStore::new("backup", &dir.path().join("b.sqlite"));
        primary.migrate().await.unwrap();
        backup.migrate().await.unwrap();
        primary
            .apply(vec![(1, record("s1", "a", 1)), (2, record("s1", "b", 2))])
            .await
            .unwrap();
        backup
            .apply(vec![(1, record("s1", "a", 1)), (3, record("s2", "c", 3))])
            .await
            .unwrap();

        let dry = reconcile(&primary, &backup, true).await.unwrap();
        assert!(!dry.identical());
        assert_eq!(dry.repaired_primary + dry.repaired_backup, 0);
        assert_eq!((dry.missing_primary, dry.missing_backup), (1, 1));

        let report = reconcile(&primary, &backup, false).await.unwrap();
        assert_eq!((report.repaired_primary, report.repaired_backup), (1, 1));
        assert!(report.identical(), "{report:#?}");
        assert_eq!(primary.rows().await.unwrap(), backup.rows().await.unwrap());
        assert!(
            reconcile(&primary, &backup, false)
                .await
                .unwrap()
                .identical()
        );
    }

    #[tokio::test]
    async fn differing_rows_for_one_key_are_conflicts_not_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let primary = SqliteStore::new("primary", &dir.path().join("p.sqlite"));
        let backup = SqliteStore::new("backup", &dir.path().join("b.sqlite"));
        primary.migrate().await.unwrap();
        backup.migrate().await.unwrap();
        primary
            .apply(vec![(1, record("s1", "a", 1))])
            .await
            .unwrap();
        let mut odd = record("s1", "a", 1);
        odd.size = 99;
        backup.apply(vec![(1, odd)]).await.unwrap();
        let report = reconcile(&primary, &backup, false).await.unwrap();
        assert_eq!(report.conflicts.len(), 1);
        assert!(!report.identical());
        assert_eq!(backup.rows().await.unwrap()[0].size, 99);
    }

    #[tokio::test]
    async fn a_catalog_that_missed_a_move_learns_it_from_the_other() {
        let dir = tempfile::tempdir().unwrap();
        let primary = SqliteStore::new("primary", &dir.path().join("p.sqlite"));
        let backup = SqliteStore::new("backup", &dir.path().join("b.sqlite"));
        primary.migrate().await.unwrap();
        backup.migrate().await.unwrap();
        let first = record("s1", "a", 1);
        let mut second = record("s1", "a", 2);
        second.previous = Some(crate::journal::Previous {
            sha256: [1; 32],
            stored_as: "s1/a.010101010101".into(),
        });
        primary
            .apply(vec![(1, first.clone()), (2, second)])
            .await
            .unwrap();
        // The backup has only the first version, still as the latest.
        backup.apply(vec![(1, first)]).await.unwrap();
        let report = reconcile(&primary, &backup, false).await.unwrap();
        assert!(report.conflicts.is_empty(), "{report:#?}");
        assert_eq!(report.repaired_backup, 2, "one row added, one moved");
        assert!(report.identical(), "{report:#?}");
        assert_eq!(primary.rows().await.unwrap(), backup.rows().await.unwrap());
        // Never the other way: a latest row does not undo a move.
        let again = reconcile(&primary, &backup, false).await.unwrap();
        assert_eq!((again.repaired_primary, again.repaired_backup), (0, 0));
    }
}
