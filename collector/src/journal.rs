//! The collector's durable journal (SQLite, WAL): every stored file's catalog
//! record, committed before the station's ack, kept until both catalogs have
//! applied it; and the index of what the repository holds.
//!
//! The journal is what makes either catalog database optional for a while:
//! an ack never waits for a catalog, only for this file. Each catalog's
//! applier reads records after its own applied position (kept in that
//! catalog) and reports it back here, and records every catalog has applied
//! are pruned.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use ferry_common::protocol::Sha256;
use rusqlite::{Connection, OptionalExtension, params};

/// One file's catalog record (one version of a path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub station: String,
    /// `<root>/<relative path>` as offered by the station, in the text form
    /// of names ([`ferry_common::name`]): reversible, so the exact bytes are
    /// [`Record::path_bytes`].
    pub path: String,
    pub size: u64,
    pub mtime_ns: i64,
    pub sha256: Sha256,
    /// Where the content is, relative to the repository root (text form).
    pub stored_as: String,
    /// Unix milliseconds when the collector stored the file.
    pub received_at: i64,
    /// The batch that carried it: `<session hex>/<batch>`.
    pub transfer: String,
    /// Whether this is the latest stored version of its path. A journal
    /// record always is when it is written; a catalog row stops being when
    /// a newer version of the path is applied.
    pub latest: bool,
    /// In a journal record: the version of the path that was the latest
    /// before this one, and where it is stored now (its version name, if
    /// this one took the plain name from it). Applying the record marks
    /// that row no longer latest and sets its `stored_as`. When a session
    /// hands a record to [`Journal::append`], the version it moved off the
    /// plain name, if any. Always `None` in a catalog row.
    pub previous: Option<Previous>,
}

/// An earlier version of a path, and where it is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Previous {
    /// Its content.
    pub sha256: Sha256,
    /// Where it is, relative to the repository root (text form).
    pub stored_as: String,
}

impl Record {
    /// The exact bytes of the path (`path` is their text form).
    pub fn path_bytes(&self) -> Vec<u8> {
        // A path that is not a valid text form (never written by this
        // collector) is kept as its own bytes rather than lost.
        ferry_common::name::decode(&self.path).unwrap_or_else(|_| self.path.clone().into_bytes())
    }

    /// Reads a record from SQLite columns `first..first + 8`, in the order
    /// station, path, size, mtime_ns, sha256, stored_as, received_at,
    /// transfer (the journal's and the SQLite catalog's layout).
    pub(crate) fn from_sqlite_row(r: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<Self> {
        let sha: Vec<u8> = r.get(first + 4)?;
        let sha256 = sha.try_into().map_err(|_| {
            rusqlite::Error::FromSqlConversionFailure(
                first + 4,
                rusqlite::types::Type::Blob,
                "sha256 is not 32 bytes".into(),
            )
        })?;
        Ok(Record {
            station: r.get(first)?,
            path: r.get(first + 1)?,
            size: r.get::<_, i64>(first + 2)? as u64,
            mtime_ns: r.get(first + 3)?,
            sha256,
            stored_as: r.get(first + 5)?,
            received_at: r.get(first + 6)?,
            transfer: r.get(first + 7)?,
            latest: true,
            previous: None,
        })
    }
}

/// Runs the schema `steps` an SQLite database has not applied yet, each in
/// its own transaction, tracking the version in `PRAGMA user_version`.
/// Returns the version found when it is newer than this build knows.
pub(crate) fn migrate_sqlite(
    conn: &mut Connection,
    steps: &[&str],
) -> rusqlite::Result<Option<i64>> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > steps.len() as i64 {
        return Ok(Some(version));
    }
    for (i, step) in steps.iter().enumerate().skip(version as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(step)?;
        tx.execute_batch(&format!("PRAGMA user_version = {}", i + 1))?;
        tx.commit()?;
    }
    Ok(None)
}

/// One station's files in the repository and records in the journal.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StationStats {
    pub files: u64,
    pub bytes: u64,
    /// Unix milliseconds of the newest stored file.
    pub last_stored_ms: Option<i64>,
    /// Records not yet applied to the primary catalog.
    pub pending_primary: u64,
    /// Records not yet applied to the backup catalog.
    pub pending_backup: u64,
}

/// A catalog's state, as its applier last saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatalogState {
    /// Not tried yet since the collector started.
    Starting,
    /// Reachable and applying the journal.
    Up,
    /// Failing: the journal keeps its records until it returns.
    Down,
    /// Reachable, but lacking rows the journal no longer holds: they are
    /// being copied from the other catalog.
    Backfilling,
    /// The collector that fed it stopped.
    Stopped,
}

impl CatalogState {
    /// The word used in status, logs and the journal.
    pub fn as_str(self) -> &'static str {
        match self {
            CatalogState::Starting => "starting",
            CatalogState::Up => "up",
            CatalogState::Down => "down",
            CatalogState::Backfilling => "backfilling",
            CatalogState::Stopped => "stopped",
        }
    }

    fn parse(text: &str) -> Self {
        match text {
            "up" => CatalogState::Up,
            "down" => CatalogState::Down,
            "backfilling" => CatalogState::Backfilling,
            "stopped" => CatalogState::Stopped,
            _ => CatalogState::Starting,
        }
    }
}

/// A backfill's progress: rows of the other catalog read, and copied
/// because this one lacked them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backfill {
    pub copied: u64,
    pub scanned: u64,
    /// Rows of the other catalog when the backfill began.
    pub total: u64,
}

/// A catalog's health: what `status`, `/healthz` and the metrics show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogHealth {
    pub state: CatalogState,
    /// Unix milliseconds when the state began.
    pub since_ms: i64,
    /// The last error (its URL without the password), kept after the
    /// catalog recovers.
    pub error: Option<String>,
    /// Unix milliseconds of the last error.
    pub error_at_ms: Option<i64>,
    /// Outages since the journal was created.
    pub outages: u64,
    /// While (or since) rows are copied from the other catalog.
    pub backfill: Option<Backfill>,
}

impl CatalogHealth {
    /// A catalog not tried yet.
    pub fn starting(now_ms: i64) -> Self {
        Self {
            state: CatalogState::Starting,
            since_ms: now_ms,
            error: None,
            error_at_ms: None,
            outages: 0,
            backfill: None,
        }
    }
}

/// Journal failures.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {path}: {source}")]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("cannot open the journal {path}: {reason}")]
    Open { path: PathBuf, reason: String },
    #[error("journal {path} has schema version {found}, this build knows up to {known}")]
    TooNew {
        path: PathBuf,
        found: i64,
        known: i64,
    },
}

impl JournalError {
    /// Whether the journal failed because its disk is full.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, JournalError::Sqlite { source: rusqlite::Error::SqliteFailure(e, _), .. }
            if e.code == rusqlite::ErrorCode::DiskFull)
    }
}

const SCHEMA: &[&str] = &[
    // Version 1.
    "CREATE TABLE records (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        station TEXT NOT NULL,
        path TEXT NOT NULL,
        size INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL,
        sha256 BLOB NOT NULL,
        stored_as TEXT NOT NULL,
        received_at INTEGER NOT NULL,
        transfer TEXT NOT NULL
    );
    CREATE TABLE stored (
        station TEXT NOT NULL,
        path TEXT NOT NULL,
        sha256 BLOB NOT NULL,
        stored_as TEXT NOT NULL UNIQUE,
        size INTEGER NOT NULL,
        stored_at INTEGER NOT NULL,
        PRIMARY KEY (station, path, sha256)
    ) WITHOUT ROWID;
    CREATE TABLE failures (
        station TEXT NOT NULL,
        at INTEGER NOT NULL,
        path TEXT NOT NULL,
        message TEXT NOT NULL
    );
    CREATE INDEX failures_by_station ON failures (station, at);
    CREATE TABLE positions (
        catalog TEXT PRIMARY KEY,
        seq INTEGER NOT NULL
    ) WITHOUT ROWID;",
    // Version 2: each catalog's health as its applier last saw it, for the
    // `status` command, which runs in another process than the daemon.
    "CREATE TABLE catalog_health (
        catalog TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        since INTEGER NOT NULL,
        error TEXT,
        error_at INTEGER,
        outages INTEGER NOT NULL,
        backfill_copied INTEGER,
        backfill_scanned INTEGER,
        backfill_total INTEGER,
        updated INTEGER NOT NULL
    ) WITHOUT ROWID;",
    // Version 3: versions. A record names the version of its path that was
    // the latest before it and where that one is now (moved off the plain
    // name to its version name, if this one took it), and the index says
    // which version of a path is the latest (for rows from before, the
    // newest one stored).
    "ALTER TABLE records ADD COLUMN replaced_sha256 BLOB;
    ALTER TABLE records ADD COLUMN replaced_stored_as TEXT;
    ALTER TABLE stored ADD COLUMN latest INTEGER NOT NULL DEFAULT 0;
    UPDATE stored SET latest = 1 WHERE NOT EXISTS (
        SELECT 1 FROM stored AS newer WHERE newer.station = stored.station
            AND newer.path = stored.path AND newer.stored_at > stored.stored_at);",
];

/// The journal; cheap to clone, safe to share between tasks (calls block:
/// run them on a blocking thread).
#[derive(Debug, Clone)]
pub struct Journal {
    path: PathBuf,
    conn: Arc<Mutex<Connection>>,
}

impl Journal {
    /// Opens (creating and migrating) the journal at `path`.
    pub fn open(path: &Path) -> Result<Self, JournalError> {
        let err = |source: rusqlite::Error| {
            // SQLite names the file in its own message: say it once.
            let message = source.to_string();
            let suffix = format!(": {}", path.display());
            JournalError::Open {
                path: path.to_owned(),
                reason: message.strip_suffix(&suffix).unwrap_or(&message).to_owned(),
            }
        };
        let mut conn = Connection::open(path).map_err(err)?;
        // FULL: an ack promises the record survives power loss, not only a
        // crash of the process.
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA busy_timeout=5000;",
        )
        .map_err(err)?;
        if let Some(found) = migrate_sqlite(&mut conn, SCHEMA).map_err(err)? {
            return Err(JournalError::TooNew {
                path: path.to_owned(),
                found,
                known: SCHEMA.len() as i64,
            });
        }
        Ok(Self {
            path: path.to_owned(),
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Opens the journal at `path` if there is one: a reader such as
    /// `status` must not create it (nor its directory) before the
    /// collector has run.
    pub fn open_existing(path: &Path) -> Result<Option<Self>, JournalError> {
        if !path.exists() {
            return Ok(None);
        }
        Self::open(path).map(Some)
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn err(&self) -> impl Fn(rusqlite::Error) -> JournalError + '_ {
        |source| JournalError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// Appends `records` and indexes their content, in one transaction:
    /// each is the latest version of its path from now on, and a version it
    /// moved off the plain name (`previous`, as the session hands it) is
    /// indexed under its version name. Each record is written with the
    /// version it follows, for the catalogs. Returns the sequence number of
    /// the last record.
    pub fn append(&self, records: &[Record]) -> Result<u64, JournalError> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(self.err())?;
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO records (station, path, size, mtime_ns, sha256, stored_as, received_at, transfer,
                                          replaced_sha256, replaced_stored_as)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                )
                .map_err(self.err())?;
            let mut moved = tx
                .prepare_cached(
                    "UPDATE stored SET stored_as = ?4 WHERE station = ?1 AND path = ?2 AND sha256 = ?3",
                )
                .map_err(self.err())?;
            let mut latest = tx
                .prepare_cached(
                    "SELECT sha256, stored_as FROM stored
                     WHERE station = ?1 AND path = ?2 AND latest = 1 AND sha256 <> ?3",
                )
                .map_err(self.err())?;
            let mut older = tx
                .prepare_cached(
                    "UPDATE stored SET latest = 0 WHERE station = ?1 AND path = ?2 AND latest = 1",
                )
                .map_err(self.err())?;
            let mut index = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO stored (station, path, sha256, stored_as, size, stored_at, latest)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, 1)",
                )
                .map_err(self.err())?;
            for r in records {
                // The move first: the plain name is unique in the index.
                if let Some(m) = &r.previous {
                    moved
                        .execute(params![r.station, r.path, &m.sha256[..], m.stored_as])
                        .map_err(self.err())?;
                }
                let previous: Option<(Vec<u8>, String)> = latest
                    .query_row(params![r.station, r.path, &r.sha256[..]], |row| {
                        Ok((row.get(0)?, row.get(1)?))
                    })
                    .optional()
                    .map_err(self.err())?;
                older
                    .execute(params![r.station, r.path])
                    .map_err(self.err())?;
                index
                    .execute(params![
                        r.station,
                        r.path,
                        &r.sha256[..],
                        r.stored_as,
                        r.size as i64,
                        r.received_at
                    ])
                    .map_err(self.err())?;
                let (previous_sha, previous_as) = previous.unzip();
                insert
                    .execute(params![
                        r.station,
                        r.path,
                        r.size as i64,
                        r.mtime_ns,
                        &r.sha256[..],
                        r.stored_as,
                        r.received_at,
                        r.transfer,
                        previous_sha,
                        previous_as
                    ])
                    .map_err(self.err())?;
            }
        }
        let last: i64 = tx
            .query_row("SELECT COALESCE(MAX(seq), 0) FROM records", [], |r| {
                r.get(0)
            })
            .map_err(self.err())?;
        tx.commit().map_err(self.err())?;
        Ok(last as u64)
    }

    /// Where the repository holds this content for this path, if it does.
    pub fn lookup(
        &self,
        station: &str,
        path: &str,
        sha256: &Sha256,
    ) -> Result<Option<String>, JournalError> {
        Ok(self.lookup_all(&[(station, path, sha256)])?.pop().flatten())
    }

    /// [`Journal::lookup`] for each of `keys` (station, path, content),
    /// under one lock: a batch asks for all its files at once. (The
    /// statement is cached: preparing it for every file showed in the
    /// collector's profile.)
    pub fn lookup_all(
        &self,
        keys: &[(&str, &str, &Sha256)],
    ) -> Result<Vec<Option<String>>, JournalError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached(
                "SELECT stored_as FROM stored WHERE station = ?1 AND path = ?2 AND sha256 = ?3",
            )
            .map_err(self.err())?;
        keys.iter()
            .map(|(station, path, sha256)| {
                stmt.query_row(params![station, path, &sha256[..]], |r| r.get(0))
                    .optional()
                    .map_err(self.err())
            })
            .collect()
    }

    /// Which catalogued version a stored name (text form) holds, if the
    /// index knows: its catalog path and content.
    pub fn owner_of(&self, stored_as: &str) -> Result<Option<(String, Sha256)>, JournalError> {
        let row: Option<(String, Vec<u8>)> = self
            .lock()
            .prepare_cached("SELECT path, sha256 FROM stored WHERE stored_as = ?1")
            .and_then(|mut stmt| {
                stmt.query_row(params![stored_as], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()
            })
            .map_err(self.err())?;
        Ok(row.and_then(|(path, b)| Some((path, b.try_into().ok()?))))
    }

    /// The versions of a path the index knows, oldest first: where each is
    /// stored, its content and whether it is the latest.
    pub fn versions(
        &self,
        station: &str,
        path: &str,
    ) -> Result<Vec<(String, Sha256, bool)>, JournalError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached(
                "SELECT stored_as, sha256, latest FROM stored WHERE station = ?1 AND path = ?2
                 ORDER BY stored_at, stored_as",
            )
            .map_err(self.err())?;
        let rows = stmt
            .query_map(params![station, path], |r| {
                let sha: Vec<u8> = r.get(1)?;
                Ok((r.get(0)?, sha, r.get(2)?))
            })
            .map_err(self.err())?;
        rows.map(|row| {
            let (stored_as, sha, latest): (String, Vec<u8>, bool) = row.map_err(self.err())?;
            let sha = sha.try_into().unwrap_or([0; 32]);
            Ok((stored_as, sha, latest))
        })
        .collect()
    }

    /// Up to `limit` records after sequence number `after`, oldest first.
    pub fn read_after(&self, after: u64, limit: usize) -> Result<Vec<(u64, Record)>, JournalError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached(
                "SELECT seq, station, path, size, mtime_ns, sha256, stored_as, received_at, transfer,
                        replaced_sha256, replaced_stored_as
                 FROM records WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            )
            .map_err(self.err())?;
        let rows = stmt
            .query_map(params![after as i64, limit as i64], |r| {
                let mut record = Record::from_sqlite_row(r, 1)?;
                let sha: Option<Vec<u8>> = r.get(9)?;
                let stored_as: Option<String> = r.get(10)?;
                if let (Some(sha), Some(stored_as)) = (sha, stored_as) {
                    record.previous = Some(Previous {
                        sha256: sha.try_into().map_err(|_| {
                            rusqlite::Error::FromSqlConversionFailure(
                                9,
                                rusqlite::types::Type::Blob,
                                "replaced_sha256 is not 32 bytes".into(),
                            )
                        })?,
                        stored_as,
                    });
                }
                Ok((r.get::<_, i64>(0)? as u64, record))
            })
            .map_err(self.err())?;
        rows.collect::<Result<_, _>>().map_err(self.err())
    }

    /// Registers the catalogs whose positions govern pruning.
    pub fn register(&self, catalogs: &[&str]) -> Result<(), JournalError> {
        let conn = self.lock();
        for catalog in catalogs {
            conn.execute(
                "INSERT OR IGNORE INTO positions (catalog, seq) VALUES (?1, 0)",
                params![catalog],
            )
            .map_err(self.err())?;
        }
        Ok(())
    }

    /// Records that `catalog` has applied everything up to `seq`, and prunes
    /// what every registered catalog has applied.
    pub fn applied(&self, catalog: &str, seq: u64) -> Result<(), JournalError> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(self.err())?;
        tx.execute(
            "INSERT INTO positions (catalog, seq) VALUES (?1, ?2)
             ON CONFLICT (catalog) DO UPDATE SET seq = MAX(seq, excluded.seq)",
            params![catalog, seq as i64],
        )
        .map_err(self.err())?;
        tx.execute(
            "DELETE FROM records WHERE seq <= (SELECT MIN(seq) FROM positions)",
            [],
        )
        .map_err(self.err())?;
        tx.commit().map_err(self.err())
    }

    /// Lowers `catalog`'s position to `seq` when the catalog itself holds
    /// less than the journal thought (it was replaced or restored): the
    /// records it lacks are kept from now on, and its lag says so.
    pub fn rewind(&self, catalog: &str, seq: u64) -> Result<(), JournalError> {
        self.lock()
            .execute(
                "UPDATE positions SET seq = ?2 WHERE catalog = ?1 AND seq > ?2",
                params![catalog, seq as i64],
            )
            .map(|_| ())
            .map_err(self.err())
    }

    /// Records `catalog` has not applied yet, per station.
    pub fn pending(&self, catalog: &str) -> Result<Vec<(String, u64)>, JournalError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached(
                "SELECT station, COUNT(*) FROM records
                 WHERE seq > COALESCE((SELECT seq FROM positions WHERE catalog = ?1), 0)
                 GROUP BY station ORDER BY station",
            )
            .map_err(self.err())?;
        let rows = stmt
            .query_map(params![catalog], |r| {
                Ok((r.get(0)?, r.get::<_, i64>(1)? as u64))
            })
            .map_err(self.err())?;
        rows.collect::<Result<_, _>>().map_err(self.err())
    }

    /// What the repository holds for `station`, and its records not yet
    /// applied to each catalog.
    pub fn station_stats(&self, station: &str) -> Result<StationStats, JournalError> {
        let conn = self.lock();
        let (files, bytes, last): (i64, i64, Option<i64>) = conn
            .query_row(
                "SELECT COUNT(*), COALESCE(SUM(size), 0), MAX(stored_at) FROM stored WHERE station = ?1",
                params![station],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .map_err(self.err())?;
        let pending = |catalog: &str| -> Result<u64, JournalError> {
            conn.query_row(
                "SELECT COUNT(*) FROM records WHERE station = ?1
                 AND seq > COALESCE((SELECT seq FROM positions WHERE catalog = ?2), 0)",
                params![station, catalog],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n as u64)
            .map_err(self.err())
        };
        Ok(StationStats {
            files: files as u64,
            bytes: bytes as u64,
            last_stored_ms: last,
            pending_primary: pending("primary")?,
            pending_backup: pending("backup")?,
        })
    }

    /// Notes a file that failed for `station` (for status), keeping a week.
    pub fn record_failure(
        &self,
        station: &str,
        path: &str,
        message: &str,
        at_ms: i64,
    ) -> Result<(), JournalError> {
        let conn = self.lock();
        conn.execute(
            "INSERT INTO failures (station, at, path, message) VALUES (?1, ?2, ?3, ?4)",
            params![station, at_ms, path, message],
        )
        .map_err(self.err())?;
        conn.execute(
            "DELETE FROM failures WHERE at < ?1",
            params![at_ms - 7 * 86_400_000],
        )
        .map_err(self.err())?;
        Ok(())
    }

    /// Failures of `station` since `since_ms`, newest first (at most `limit`).
    pub fn failures(
        &self,
        station: &str,
        since_ms: i64,
        limit: usize,
    ) -> Result<Vec<(i64, String, String)>, JournalError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached(
                "SELECT at, path, message FROM failures WHERE station = ?1 AND at >= ?2 ORDER BY at DESC LIMIT ?3",
            )
            .map_err(self.err())?;
        let rows = stmt
            .query_map(params![station, since_ms, limit as i64], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .map_err(self.err())?;
        rows.collect::<Result<_, _>>().map_err(self.err())
    }

    /// Every station the repository holds files of.
    pub fn stations(&self) -> Result<Vec<String>, JournalError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached("SELECT DISTINCT station FROM stored UNION SELECT DISTINCT station FROM failures ORDER BY 1")
            .map_err(self.err())?;
        let rows = stmt.query_map([], |r| r.get(0)).map_err(self.err())?;
        rows.collect::<Result<_, _>>().map_err(self.err())
    }

    /// The highest sequence number pruned: every record up to it has left
    /// the journal, so a catalog whose position is lower lacks rows only
    /// the other catalog can give it.
    pub fn pruned_through(&self) -> Result<u64, JournalError> {
        let conn = self.lock();
        let first: Option<i64> = conn
            .query_row("SELECT MIN(seq) FROM records", [], |r| r.get(0))
            .map_err(self.err())?;
        let pruned = match first {
            Some(first) => first - 1,
            // Empty: everything ever appended was pruned.
            None => conn
                .query_row(
                    "SELECT seq FROM sqlite_sequence WHERE name = 'records'",
                    [],
                    |r| r.get(0),
                )
                .optional()
                .map_err(self.err())?
                .unwrap_or(0),
        };
        Ok(pruned.max(0) as u64)
    }

    /// Keeps `health` as `catalog`'s (at `now_ms`).
    pub fn set_health(
        &self,
        catalog: &str,
        health: &CatalogHealth,
        now_ms: i64,
    ) -> Result<(), JournalError> {
        let backfill = health.backfill;
        self.lock()
            .prepare_cached(
                "INSERT OR REPLACE INTO catalog_health (catalog, state, since, error, error_at,
                   outages, backfill_copied, backfill_scanned, backfill_total, updated)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )
            .and_then(|mut stmt| {
                stmt.execute(params![
                    catalog,
                    health.state.as_str(),
                    health.since_ms,
                    health.error,
                    health.error_at_ms,
                    health.outages as i64,
                    backfill.map(|b| b.copied as i64),
                    backfill.map(|b| b.scanned as i64),
                    backfill.map(|b| b.total as i64),
                    now_ms
                ])
            })
            .map(|_| ())
            .map_err(self.err())
    }

    /// `catalog`'s health as last kept, if ever.
    pub fn health(&self, catalog: &str) -> Result<Option<CatalogHealth>, JournalError> {
        self.lock()
            .prepare_cached(
                "SELECT state, since, error, error_at, outages, backfill_copied,
                   backfill_scanned, backfill_total
                 FROM catalog_health WHERE catalog = ?1",
            )
            .and_then(|mut stmt| {
                stmt.query_row(params![catalog], |r| {
                    let state: String = r.get(0)?;
                    let copied: Option<i64> = r.get(5)?;
                    let scanned: Option<i64> = r.get(6)?;
                    let total: Option<i64> = r.get(7)?;
                    Ok(CatalogHealth {
                        state: CatalogState::parse(&state),
                        since_ms: r.get(1)?,
                        error: r.get(2)?,
                        error_at_ms: r.get(3)?,
                        outages: r.get::<_, i64>(4)?.max(0) as u64,
                        backfill: copied.map(|copied| Backfill {
                            copied: copied.max(0) as u64,
                            scanned: scanned.unwrap_or(0).max(0) as u64,
                            total: total.unwrap_or(0).max(0) as u64,
                        }),
                    })
                })
                .optional()
            })
            .map_err(self.err())
    }

    /// Records `catalog` has not applied yet, for every station together.
    pub fn lag(&self, catalog: &str) -> Result<u64, JournalError> {
        self.lock()
            .query_row(
                "SELECT COUNT(*) FROM records
                 WHERE seq > COALESCE((SELECT seq FROM positions WHERE catalog = ?1), 0)",
                params![catalog],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n as u64)
            .map_err(self.err())
    }

    /// Whether the repository holds files of `station` or failures of it
    /// were recorded.
    pub fn knows_station(&self, station: &str) -> Result<bool, JournalError> {
        self.lock()
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM stored WHERE station = ?1)
                     OR EXISTS (SELECT 1 FROM failures WHERE station = ?1)",
                params![station],
                |r| r.get(0),
            )
            .map_err(self.err())
    }

    /// Proves the journal can be written now: takes its write lock and
    /// lets go without changing anything.
    pub fn check_writable(&self) -> Result<(), JournalError> {
        self.lock()
            .execute_batch("BEGIN IMMEDIATE; ROLLBACK;")
            .map_err(self.err())
    }

    /// Records held in the journal (not yet applied everywhere).
    pub fn len(&self) -> Result<u64, JournalError> {
        self.lock()
            .query_row("SELECT COUNT(*) FROM records", [], |r| r.get::<_, i64>(0))
            .map(|n| n as u64)
            .map_err(self.err())
    }

    /// Whether the journal holds no record.
    pub fn is_empty(&self) -> Result<bool, JournalError> {
        Ok(self.len()? == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(path: &str, sha: u8) -> Record {
        Record {
            station: "s1".into(),
            path: path.into(),
            size: 3,
            mtime_ns: 7,
            sha256: [sha; 32],
            stored_as: format!("s1/{path}"),
            received_at: 1000,
            transfer: "00/1".into(),
            latest: true,
            previous: None,
        }
    }

    #[test]
    fn records_stay_until_every_catalog_applied_them() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(&dir.path().join("j.sqlite")).unwrap();
        journal.register(&["primary", "backup"]).unwrap();
        let last = journal
            .append(&[record("a/1", 1), record("a/2", 2), record("a/3", 3)])
            .unwrap();
        assert_eq!(last, 3);
        journal.applied("primary", 3).unwrap();
        assert_eq!(journal.len().unwrap(), 3, "backup has applied nothing yet");
        assert_eq!(
            journal.pending("backup").unwrap(),
            vec![("s1".to_owned(), 3)]
        );
        assert!(journal.pending("primary").unwrap().is_empty());
        assert_eq!(journal.lag("backup").unwrap(), 3);
        assert_eq!(journal.lag("primary").unwrap(), 0);
        assert!(journal.knows_station("s1").unwrap());
        assert!(!journal.knows_station("s2").unwrap());
        journal.check_writable().unwrap();
        journal.applied("backup", 2).unwrap();
        assert_eq!(journal.len().unwrap(), 1);
        assert_eq!(journal.lag("backup").unwrap(), 1);
        let rest = journal.read_after(0, 10).unwrap();
        assert_eq!(rest, vec![(3, record("a/3", 3))]);
        // Positions never go backwards.
        journal.applied("backup", 1).unwrap();
        assert_eq!(
            journal.pending("backup").unwrap(),
            vec![("s1".to_owned(), 1)]
        );
    }

    #[test]
    fn the_index_outlives_pruning_and_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.sqlite");
        {
            let journal = Journal::open(&path).unwrap();
            journal.register(&["primary"]).unwrap();
            journal.append(&[record("a/1", 1)]).unwrap();
            journal.applied("primary", 1).unwrap();
            assert!(journal.is_empty().unwrap());
        }
        let journal = Journal::open(&path).unwrap();
        assert_eq!(
            journal.lookup("s1", "a/1", &[1; 32]).unwrap().as_deref(),
            Some("s1/a/1")
        );
        assert_eq!(journal.lookup("s1", "a/1", &[2; 32]).unwrap(), None);
        assert_eq!(
            journal.owner_of("s1/a/1").unwrap(),
            Some(("a/1".to_owned(), [1; 32]))
        );
        // Sequence numbers keep growing after pruning (AUTOINCREMENT).
        assert_eq!(journal.append(&[record("a/2", 2)]).unwrap(), 2);
    }

    #[test]
    fn each_record_names_the_version_it_follows_and_the_index_follows_the_moves() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(&dir.path().join("j.sqlite")).unwrap();
        journal.append(&[record("a", 1)]).unwrap();
        // The second version took the plain name; the first moved.
        let mut second = record("a", 2);
        second.previous = Some(Previous {
            sha256: [1; 32],
            stored_as: "s1/a.v1".into(),
        });
        journal.append(&[second.clone()]).unwrap();
        // A third stored under its version name (the plain name held
        // another path's file): the second stays where it is.
        let mut third = record("a", 3);
        third.stored_as = "s1/a.v3".into();
        journal.append(&[third]).unwrap();
        let records = journal.read_after(1, 10).unwrap();
        assert_eq!(records[0].1.previous, second.previous);
        assert_eq!(
            records[1].1.previous,
            Some(Previous {
                sha256: [2; 32],
                stored_as: "s1/a".into()
            })
        );
        assert_eq!(
            journal.owner_of("s1/a.v1").unwrap(),
            Some(("a".to_owned(), [1; 32]))
        );
        assert_eq!(
            journal.versions("s1", "a").unwrap(),
            vec![
                ("s1/a".to_owned(), [2; 32], false),
                ("s1/a.v1".to_owned(), [1; 32], false),
                ("s1/a.v3".to_owned(), [3; 32], true),
            ]
        );
    }
}
