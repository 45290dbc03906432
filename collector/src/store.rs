//! Catalog stores: the databases that hold the catalog, behind one trait.
//!
//! Every store applies journal records idempotently (rows are unique by
//! station, path and content hash) and keeps its applied journal position in
//! the same transaction as the rows, so a store that crashes mid-batch
//! re-applies exactly what it lacks.
//!
//! Paths are bytes: `path` holds their reversible text form
//! ([`ferry_common::name`]), which is the key and what a person reads, and
//! `path_bytes` the exact bytes. A row is one version of a path; `latest`
//! marks the newest stored, whose `stored_as` is the plain name. Applying a
//! record makes it the latest of its path and, if it took the plain name
//! from an older version, moves that row's `stored_as` to the older
//! version's name, in the same transaction as the position, so each catalog
//! learns each move exactly once.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::{Connection, OptionalExtension, params};

use crate::journal::{Record, migrate_sqlite};

pub mod mysql;

/// A row of the `files` table, as compared by `reconcile`.
pub type CatalogRow = Record;

/// Per-station totals, with the legacy monitoring meanings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StationSummary {
    pub station: String,
    pub files: u64,
    pub bytes: u64,
    /// Unix milliseconds of the newest stored file.
    pub last_backup: Option<i64>,
}

/// Why a store operation failed. Every failure is retried by the caller.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("catalog {catalog}: {source}")]
    Sqlite {
        catalog: String,
        source: rusqlite::Error,
    },
    #[error("catalog {catalog}: {reason}")]
    Other { catalog: String, reason: String },
    #[error("catalog url {url:?} is not supported: {reason}")]
    Url { url: String, reason: String },
}

/// A catalog database.
pub trait CatalogStore: Send + Sync + 'static {
    /// The catalog's name in logs and the journal (`primary`, `backup`).
    fn name(&self) -> &str;
    /// Runs the versioned schema migrations this build knows.
    fn migrate(&self) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// The last journal sequence number applied.
    fn position(&self) -> impl Future<Output = Result<u64, StoreError>> + Send;
    /// Applies `records` (journal order) and moves the position to the last
    /// one, in one transaction. Rows already present are left as they are.
    fn apply(
        &self,
        records: Vec<(u64, Record)>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Every file row, ordered by station, path, hash.
    fn rows(&self) -> impl Future<Output = Result<Vec<CatalogRow>, StoreError>> + Send;
    /// Inserts rows that are missing (repair), and marks present rows no
    /// longer latest (with their new `stored_as`) where the given row says
    /// so; returns how many rows it inserted or changed.
    fn insert_rows(
        &self,
        rows: Vec<CatalogRow>,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;
    /// Per-station totals.
    fn summary(&self) -> impl Future<Output = Result<Vec<StationSummary>, StoreError>> + Send;
    /// How many file rows the catalog holds.
    fn count_rows(&self) -> impl Future<Output = Result<u64, StoreError>> + Send;
    /// Up to `limit` file rows after row id `after`, in id order, with
    /// their ids: a backfill reads a whole catalog a page at a time.
    fn rows_after(
        &self,
        after: i64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<(i64, CatalogRow)>, StoreError>> + Send;
    /// Moves the applied position up to `seq` (never down), for a catalog
    /// that was given the rows up to `seq` otherwise (a backfill).
    fn mark_applied(&self, seq: u64) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// Either kind of store, chosen by the catalog URL.
#[derive(Debug, Clone)]
pub enum AnyStore {
    Sqlite(SqliteStore),
    MySql(mysql::MySqlStore),
}

impl AnyStore {
    /// The store a catalog URL names.
    pub fn open(name: &str, url: &crate::config::CatalogUrl) -> Result<Self, StoreError> {
        Ok(match url {
            crate::config::CatalogUrl::Sqlite(path) => {
                AnyStore::Sqlite(SqliteStore::new(name, path))
            }
            crate::config::CatalogUrl::MySql(url) => {
                AnyStore::MySql(mysql::MySqlStore::new(name, url)?)
            }
        })
    }
}

macro_rules! delegate {
    ($self:ident, $store:ident => $call:expr) => {
        match $self {
            AnyStore::Sqlite($store) => $call,
            AnyStore::MySql($store) => $call,
        }
    };
}

impl CatalogStore for AnyStore {
    fn name(&self) -> &str {
        delegate!(self, s => s.name())
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        delegate!(self, s => s.migrate().await)
    }

    async fn position(&self) -> Result<u64, StoreError> {
        delegate!(self, s => s.position().await)
    }

    async fn apply(&self, records: Vec<(u64, Record)>) -> Result<(), StoreError> {
        delegate!(self, s => s.apply(records).await)
    }

    async fn rows(&self) -> Result<Vec<CatalogRow>, StoreError> {
        delegate!(self, s => s.rows().await)
    }

    async fn insert_rows(&self, rows: Vec<CatalogRow>) -> Result<u64, StoreError> {
        delegate!(self, s => s.insert_rows(rows).await)
    }

    async fn summary(&self) -> Result<Vec<StationSummary>, StoreError> {
        delegate!(self, s => s.summary().await)
    }

    async fn count_rows(&self) -> Result<u64, StoreError> {
        delegate!(self, s => s.count_rows().await)
    }

    async fn rows_after(
        &self,
        after: i64,
        limit: usize,
    ) -> Result<Vec<(i64, CatalogRow)>, StoreError> {
        delegate!(self, s => s.rows_after(after, limit).await)
    }

    async fn mark_applied(&self, seq: u64) -> Result<(), StoreError> {
        delegate!(self, s => s.mark_applied(seq).await)
    }
}

const SQLITE_SCHEMA: &[&str] = &[
    // Version 1.
    "CREATE TABLE stations (
        station TEXT PRIMARY KEY,
        files INTEGER NOT NULL DEFAULT 0,
        bytes INTEGER NOT NULL DEFAULT 0,
        last_backup INTEGER
    );
    CREATE TABLE files (
        id INTEGER PRIMARY KEY,
        station TEXT NOT NULL,
        path TEXT NOT NULL,
        size INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL,
        sha256 BLOB NOT NULL,
        stored_as TEXT NOT NULL,
        received_at INTEGER NOT NULL,
        transfer TEXT NOT NULL,
        UNIQUE (station, path, sha256)
    );
    CREATE TABLE transfers (
        transfer TEXT PRIMARY KEY,
        station TEXT NOT NULL,
        files INTEGER NOT NULL,
        bytes INTEGER NOT NULL,
        first_at INTEGER NOT NULL,
        last_at INTEGER NOT NULL
    );
    CREATE TABLE applied (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        seq INTEGER NOT NULL
    );
    INSERT INTO applied (id, seq) VALUES (1, 0);",
    // Version 2: names are bytes, and versions. `path` is the text form of
    // the path (rows written before were UTF-8 without backslashes: their
    // own text form), `path_bytes` its exact bytes; `latest` marks the
    // newest version of each path.
    "ALTER TABLE files ADD COLUMN path_bytes BLOB;
    ALTER TABLE files ADD COLUMN latest INTEGER NOT NULL DEFAULT 0;
    UPDATE files SET path_bytes = CAST(path AS BLOB);
    UPDATE files SET latest = 1 WHERE id IN (SELECT MAX(id) FROM files GROUP BY station, path);",
];

/// The embedded default: a SQLite catalog file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    name: String,
    path: PathBuf,
    /// The open connection and the identity (device, inode) of the file
    /// it opened: a file deleted or replaced under it is opened anew.
    conn: Arc<Mutex<Option<Opened>>>,
}

/// A connection and the (device, inode) of the file it opened.
type Opened = (Connection, (u64, u64));

impl SqliteStore {
    /// A store for the SQLite file at `path`; nothing is opened until used.
    pub fn new(name: &str, path: &Path) -> Self {
        Self {
            name: name.to_owned(),
            path: path.to_owned(),
            conn: Arc::new(Mutex::new(None)),
        }
    }

    fn err(&self) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
        |source| StoreError::Sqlite {
            catalog: self.name.clone(),
            source,
        }
    }

    /// Runs `f` on the connection on a blocking thread, opening it first.
    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection, &dyn Fn(rusqlite::Error) -> StoreError) -> Result<T, StoreError>
        + Send
        + 'static,
    ) -> Result<T, StoreError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard: MutexGuard<'_, Option<Opened>> =
                this.conn.lock().unwrap_or_else(|p| p.into_inner());
            let identity = || {
                use std::os::unix::fs::MetadataExt;
                std::fs::metadata(&this.path)
                    .ok()
                    .map(|m| (m.dev(), m.ino()))
            };
            if guard
                .as_ref()
                .is_some_and(|(_, opened)| identity() != Some(*opened))
            {
                *guard = None;
            }
            if guard.is_none() {
                let conn = Connection::open(&this.path).map_err(this.err())?;
                conn.execute_batch(
                    "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=5000;",
                )
                .map_err(this.err())?;
                let opened = identity().ok_or_else(|| StoreError::Other {
                    catalog: this.name.clone(),
                    reason: format!("{} vanished as it was opened", this.path.display()),
                })?;
                *guard = Some((conn, opened));
            }
            let (conn, _) = guard.as_mut().ok_or_else(|| StoreError::Other {
                catalog: this.name.clone(),
                reason: "connection lost".into(),
            })?;
            let result = f(conn, &this.err());
            if result.is_err() {
                // Reopen next time: the file may have been replaced or repaired.
                *guard = None;
            }
            result
        })
        .await
        .map_err(|e| StoreError::Other {
            catalog: self.name.clone(),
            reason: format!("worker failed: {e}"),
        })?
    }
}

fn read_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<CatalogRow> {
    let mut row = Record::from_sqlite_row(r, 0)?;
    row.latest = r.get(8)?;
    Ok(row)
}

/// Applies one journal record: the version it follows is no longer the
/// latest and is where the record says (moved off the plain name, if this
/// one took it), and its row is inserted unless present. Repeating it
/// changes nothing.
fn apply_sqlite(tx: &rusqlite::Transaction<'_>, r: &Record) -> rusqlite::Result<bool> {
    if let Some(previous) = &r.previous {
        tx.prepare_cached(
            "UPDATE files SET latest = 0, stored_as = ?4
             WHERE station = ?1 AND path = ?2 AND sha256 = ?3",
        )?
        .execute(params![
            r.station,
            r.path,
            &previous.sha256[..],
            previous.stored_as
        ])?;
    }
    insert_sqlite(tx, r)
}

/// Repair of a present row from a row of the other catalog that is no
/// longer the latest of its path (a newer version was applied there, and
/// the record that said so is gone from the journal): this one stops being
/// the latest too and takes that row's `stored_as`. Versions only ever stop
/// being the latest, so this never undoes a move. Whether it changed.
fn supersede_sqlite(tx: &rusqlite::Transaction<'_>, r: &Record) -> rusqlite::Result<bool> {
    if r.latest {
        return Ok(false);
    }
    let changed = tx
        .prepare_cached(
            "UPDATE files SET latest = 0, stored_as = ?4
             WHERE station = ?1 AND path = ?2 AND sha256 = ?3 AND latest = 1",
        )?
        .execute(params![r.station, r.path, &r.sha256[..], r.stored_as])?;
    Ok(changed == 1)
}

/// Inserts a row as it is, unless present; moves the counters if it was new.
fn insert_sqlite(tx: &rusqlite::Transaction<'_>, r: &Record) -> rusqlite::Result<bool> {
    let inserted = tx
        .prepare_cached(
            "INSERT OR IGNORE INTO files (station, path, size, mtime_ns, sha256, stored_as, received_at,
                                          transfer, path_bytes, latest)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )?
        .execute(params![
            r.station,
            r.path,
            r.size as i64,
            r.mtime_ns,
            &r.sha256[..],
            r.stored_as,
            r.received_at,
            r.transfer,
            r.path_bytes(),
            r.latest
        ])?;
    if inserted == 0 {
        return Ok(false);
    }
    tx.prepare_cached(
        "INSERT INTO stations (station, files, bytes, last_backup) VALUES (?1, 1, ?2, ?3)
         ON CONFLICT (station) DO UPDATE SET files = files + 1, bytes = bytes + excluded.bytes,
           last_backup = MAX(COALESCE(last_backup, 0), excluded.last_backup)",
    )?
    .execute(params![r.station, r.size as i64, r.received_at])?;
    tx.prepare_cached(
        "INSERT INTO transfers (transfer, station, files, bytes, first_at, last_at) VALUES (?1, ?2, 1, ?3, ?4, ?4)
         ON CONFLICT (transfer) DO UPDATE SET files = files + 1, bytes = bytes + excluded.bytes,
           first_at = MIN(first_at, excluded.first_at), last_at = MAX(last_at, excluded.last_at)",
    )?
    .execute(params![r.transfer, r.station, r.size as i64, r.received_at])?;
    Ok(true)
}

impl CatalogStore for SqliteStore {
    fn name(&self) -> &str {
        &self.name
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let name = self.name.clone();
        self.with(
            move |conn, err| match migrate_sqlite(conn, SQLITE_SCHEMA).map_err(err)? {
                Some(version) => Err(StoreError::Other {
                    catalog: name,
                    reason: format!(
                        "schema version {version} is newer than this build's {}",
                        SQLITE_SCHEMA.len()
                    ),
                }),
                None => Ok(()),
            },
        )
        .await
    }

    async fn position(&self) -> Result<u64, StoreError> {
        self.with(|conn, err| {
            let seq: Option<i64> = conn
                .query_row("SELECT seq FROM applied WHERE id = 1", [], |r| r.get(0))
                .optional()
                .map_err(err)?;
            Ok(seq.unwrap_or(0) as u64)
        })
        .await
    }

    async fn apply(&self, records: Vec<(u64, Record)>) -> Result<(), StoreError> {
        self.with(move |conn, err| {
            let Some(last) = records.last().map(|(seq, _)| *seq) else {
                return Ok(());
            };
            let tx = conn.transaction().map_err(err)?;
            for (_, record) in &records {
                apply_sqlite(&tx, record).map_err(err)?;
            }
            tx.execute(
                "UPDATE applied SET seq = MAX(seq, ?1) WHERE id = 1",
                params![last as i64],
            )
            .map_err(err)?;
            tx.commit().map_err(err)
        })
        .await
    }

    async fn rows(&self) -> Result<Vec<CatalogRow>, StoreError> {
        self.with(|conn, err| {
            let mut stmt = conn
                .prepare(
                    "SELECT station, path, size, mtime_ns, sha256, stored_as, received_at, transfer,
                            latest
                     FROM files ORDER BY station, path, sha256",
                )
                .map_err(err)?;
            let rows = stmt.query_map([], read_row).map_err(err)?;
            rows.collect::<Result<_, _>>().map_err(err)
        })
        .await
    }

    async fn insert_rows(&self, rows: Vec<CatalogRow>) -> Result<u64, StoreError> {
        self.with(move |conn, err| {
            let tx = conn.transaction().map_err(err)?;
            let mut added = 0;
            for row in &rows {
                let changed = insert_sqlite(&tx, row).map_err(err)?
                    || supersede_sqlite(&tx, row).map_err(err)?;
                added += u64::from(changed);
            }
            tx.commit().map_err(err)?;
            Ok(added)
        })
        .await
    }

    async fn summary(&self) -> Result<Vec<StationSummary>, StoreError> {
        self.with(|conn, err| {
            let mut stmt = conn
                .prepare("SELECT station, files, bytes, last_backup FROM stations ORDER BY station")
                .map_err(err)?;
            let rows = stmt
                .query_map([], |r| {
                    Ok(StationSummary {
                        station: r.get(0)?,
                        files: r.get::<_, i64>(1)? as u64,
                        bytes: r.get::<_, i64>(2)? as u64,
                        last_backup: r.get(3)?,
                    })
                })
                .map_err(err)?;
            rows.collect::<Result<_, _>>().map_err(err)
        })
        .await
    }

    async fn count_rows(&self) -> Result<u64, StoreError> {
        self.with(|conn, err| {
            conn.query_row("SELECT COUNT(*) FROM files", [], |r| r.get::<_, i64>(0))
                .map(|n| n.max(0) as u64)
                .map_err(err)
        })
        .await
    }

    async fn rows_after(
        &self,
        after: i64,
        limit: usize,
    ) -> Result<Vec<(i64, CatalogRow)>, StoreError> {
        self.with(move |conn, err| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT id, station, path, size, mtime_ns, sha256, stored_as, received_at, transfer,
                            latest
                     FROM files WHERE id > ?1 ORDER BY id LIMIT ?2",
                )
                .map_err(err)?;
            let rows = stmt
                .query_map(params![after, limit as i64], |r| {
                    let mut row = Record::from_sqlite_row(r, 1)?;
                    row.latest = r.get(9)?;
                    Ok((r.get(0)?, row))
                })
                .map_err(err)?;
            rows.collect::<Result<_, _>>().map_err(err)
        })
        .await
    }

    async fn mark_applied(&self, seq: u64) -> Result<(), StoreError> {
        self.with(move |conn, err| {
            conn.execute(
                "UPDATE applied SET seq = MAX(seq, ?1) WHERE id = 1",
                params![seq as i64],
            )
            .map(|_| ())
            .map_err(err)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(path: &str, sha: u8, size: u64) -> Record {
        Record {
            station: "s1".into(),
            path: path.into(),
            size,
            mtime_ns: 7,
            sha256: [sha; 32],
            stored_as: format!("s1/{path}"),
            received_at: 1000 + i64::from(sha),
            transfer: "00/1".into(),
            latest: true,
            previous: None,
        }
    }

    #[tokio::test]
    async fn applying_twice_creates_no_second_row() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::new("primary", &dir.path().join("c.sqlite"));
        store.migrate().await.unwrap();
        store.migrate().await.unwrap();
        let batch = vec![(1, record("a", 1, 10)), (2, record("b", 2, 20))];
        store.apply(batch.clone()).await.unwrap();
        store.apply(batch).await.unwrap();
        store.apply(vec![(3, record("a", 1, 10))]).await.unwrap();
        assert_eq!(store.position().await.unwrap(), 3);
        let rows = store.rows().await.unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(
            store.summary().await.unwrap(),
            vec![StationSummary {
                station: "s1".into(),
                files: 2,
                bytes: 30,
                last_backup: Some(1002)
            }]
        );
        // The position never goes backwards.
        store.apply(vec![(2, record("c", 3, 1))]).await.unwrap();
        assert_eq!(store.position().await.unwrap(), 3);
    }

    #[tokio::test]
    async fn repair_inserts_only_missing_rows() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::new("backup", &dir.path().join("c.sqlite"));
        store.migrate().await.unwrap();
        store.apply(vec![(1, record("a", 1, 10))]).await.unwrap();
        let added = store
            .insert_rows(vec![record("a", 1, 10), record("b", 2, 5)])
            .await
            .unwrap();
        assert_eq!(added, 1);
        assert_eq!(store.summary().await.unwrap()[0].files, 2);
    }

    #[tokio::test]
    async fn a_newer_version_moves_the_older_row_once_and_replaying_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::new("primary", &dir.path().join("c.sqlite"));
        store.migrate().await.unwrap();
        let first = record("a", 1, 10);
        let mut second = record("a", 2, 20);
        second.previous = Some(crate::journal::Previous {
            sha256: [1; 32],
            stored_as: "s1/a.010101010101".into(),
        });
        let batch = vec![(1, first), (2, second)];
        store.apply(batch.clone()).await.unwrap();
        store.apply(batch).await.unwrap();
        let rows: Vec<(String, bool)> = store
            .rows()
            .await
            .unwrap()
            .into_iter()
            .map(|r| (r.stored_as, r.latest))
            .collect();
        assert_eq!(
            rows,
            vec![
                ("s1/a.010101010101".to_owned(), false),
                ("s1/a".to_owned(), true)
            ]
        );
        assert_eq!(store.summary().await.unwrap()[0].files, 2);
    }

    #[tokio::test]
    async fn a_version_1_catalog_migrates_its_rows_to_bytes_and_latest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sqlite");
        {
            let mut conn = Connection::open(&path).unwrap();
            assert_eq!(
                migrate_sqlite(&mut conn, &SQLITE_SCHEMA[..1]).unwrap(),
                None
            );
            for (path, sha) in [("data/é.bin", 1u8), ("data/é.bin", 2), ("data/b", 3)] {
                conn.execute(
                    "INSERT INTO files (station, path, size, mtime_ns, sha256, stored_as, received_at, transfer)
                     VALUES ('s1', ?1, 1, 1, ?2, ?1, 1, 't')",
                    params![path, &[sha; 32][..]],
                )
                .unwrap();
            }
        }
        let store = SqliteStore::new("primary", &path);
        store.migrate().await.unwrap();
        let latest: Vec<(String, u8, bool)> = store
            .rows()
            .await
            .unwrap()
            .into_iter()
            .map(|r| (r.path, r.sha256[0], r.latest))
            .collect();
        assert_eq!(
            latest,
            vec![
                ("data/b".to_owned(), 3, true),
                ("data/é.bin".to_owned(), 1, false),
                ("data/é.bin".to_owned(), 2, true)
            ]
        );
        let conn = Connection::open(&path).unwrap();
        let bytes: Vec<u8> = conn
            .query_row(
                "SELECT path_bytes FROM files WHERE path = 'data/é.bin' LIMIT 1",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(bytes, "data/é.bin".as_bytes());
    }
}
