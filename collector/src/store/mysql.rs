//! The MySQL/MariaDB catalog store (`mysql://user:pass@host:port/db`), on a
//! mysql_async connection pool, TLS optional.
//!
//! Same semantics as the SQLite store: rows unique by (station, path,
//! content hash), counters moved only by rows actually inserted, and the
//! applied position kept in the same transaction as the rows. The unique key
//! holds a SHA-256 of the path (`path_hash`) because InnoDB keys cannot hold
//! a 4 KiB path.
//!
//! A batch is applied with few round trips: per chunk of up to
//! [`CHUNK_ROWS`] rows one multi-row `INSERT … ON DUPLICATE KEY UPDATE id =
//! id`, whose affected-row count says how many rows were new. When all were,
//! the chunk is done; when some were present (a batch re-applied after a
//! crash, a repair), the chunk is rolled back to a savepoint, the present
//! rows are looked up, and only the others are inserted, whose count must
//! then match exactly, or another writer (several collectors sharing a
//! catalog) got in between and the transaction fails for the caller to
//! retry. Counters are added from exactly the inserted rows, never
//! recounted, so a re-applied batch changes nothing.
//!
//! Every call fails fast: a connection is given [`CONNECT_TIMEOUT`] and an
//! operation [`OPERATION_TIMEOUT`]; retrying is the applier's business. The
//! pool checks idle connections before handing them out, so the same store
//! works again once the server is back.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use mysql_async::prelude::{FromValue, Queryable};
use mysql_async::{Conn, Opts, OptsBuilder, Pool, Row, SslOpts, Transaction, TxOpts, Value};
use ring::digest::{SHA256, digest};

use super::{CatalogRow, CatalogStore, StationSummary, StoreError};
use crate::journal::Record;

/// Time allowed to open (or check) a connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time allowed to one store operation once connected.
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(120);
/// Most rows per multi-row statement.
pub const CHUNK_ROWS: usize = 1000;
/// Most parameter bytes per multi-row statement (well under the smallest
/// `max_allowed_packet` a server ships with).
const CHUNK_BYTES: usize = 2 << 20;

/// Connection attempts refused with "access denied" before the refusal is
/// believed. mysql_common (0.37) drops a trailing zero byte of the 32-byte
/// nonce that MariaDB's ed25519 authentication sends, so about one
/// connection in 256 of an ed25519 account is refused although the password
/// is right; the next attempt gets a new nonce. A wrong password is still
/// reported, after three quick refusals.
const ACCESS_DENIED_TRIES: u32 = 3;

/// The server's "access denied" (`ER_ACCESS_DENIED_ERROR`).
const ER_ACCESS_DENIED: u16 = 1045;
/// How long `migrate` waits for another collector's migration.
const MIGRATE_LOCK_SECS: u32 = 30;

/// One statement of a schema step.
enum Statement {
    /// Run as it is; must be idempotent.
    Sql(&'static str),
    /// `ALTER TABLE <table> ADD COLUMN <column> <definition>` unless the
    /// column exists (MySQL has no `ADD COLUMN IF NOT EXISTS`).
    AddColumn(&'static str, &'static str, &'static str),
}

/// Versioned schema steps; each statement is idempotent, because MySQL
/// commits DDL implicitly and a step cut short is run again.
const SCHEMA: &[&[Statement]] = &[
    // Version 1.
    &[
        Statement::Sql("CREATE TABLE IF NOT EXISTS stations (
            station VARCHAR(64) NOT NULL PRIMARY KEY,
            files BIGINT NOT NULL DEFAULT 0,
            bytes BIGINT NOT NULL DEFAULT 0,
            last_backup BIGINT NULL
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"),
        Statement::Sql("CREATE TABLE IF NOT EXISTS files (
            id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
            station VARCHAR(64) NOT NULL,
            path VARCHAR(4200) NOT NULL,
            path_hash BINARY(32) NOT NULL COMMENT 'SHA-256 of path, for the unique key',
            size BIGINT NOT NULL,
            mtime_ns BIGINT NOT NULL,
            sha256 BINARY(32) NOT NULL,
            stored_as VARCHAR(4400) NOT NULL,
            received_at BIGINT NOT NULL,
            transfer VARCHAR(64) NOT NULL,
            UNIQUE KEY files_identity (station, path_hash, sha256)
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"),
        Statement::Sql("CREATE TABLE IF NOT EXISTS transfers (
            transfer VARCHAR(64) NOT NULL PRIMARY KEY,
            station VARCHAR(64) NOT NULL,
            files BIGINT NOT NULL,
            bytes BIGINT NOT NULL,
            first_at BIGINT NOT NULL,
            last_at BIGINT NOT NULL
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"),
        Statement::Sql("CREATE TABLE IF NOT EXISTS applied (
            id TINYINT NOT NULL PRIMARY KEY,
            seq BIGINT NOT NULL
        ) ENGINE=InnoDB"),
        Statement::Sql("INSERT IGNORE INTO applied (id, seq) VALUES (1, 0)"),
    ],
    // Version 2: names are bytes, and versions. `path` holds the text form
    // of the path (up to four characters per byte, hence TEXT; rows written
    // before were UTF-8 without backslashes, their own text form),
    // `path_bytes` its exact bytes; `latest` marks the newest version of
    // each path.
    &[
        Statement::AddColumn("files", "path_bytes", "VARBINARY(4096) NULL"),
        Statement::AddColumn("files", "latest", "TINYINT NOT NULL DEFAULT 0"),
        Statement::Sql("ALTER TABLE files MODIFY path TEXT NOT NULL"),
        Statement::Sql("ALTER TABLE files MODIFY stored_as TEXT NOT NULL"),
        Statement::Sql(
            "UPDATE files SET path_bytes = CAST(path AS BINARY) WHERE path_bytes IS NULL",
        ),
        Statement::Sql(
            "UPDATE files AS f JOIN (SELECT MAX(id) AS id FROM files GROUP BY station, path_hash) AS m
               ON f.id = m.id SET f.latest = 1",
        ),
    ],
];

/// A MySQL or MariaDB catalog.
#[derive(Clone)]
pub struct MySqlStore {
    name: String,
    /// The URL with its password hidden, for messages.
    shown_url: String,
    pool: Pool,
    connect_timeout: Duration,
    operation_timeout: Duration,
    /// Whether the last chunk applied was all new: then the next one is
    /// inserted without looking up first (see [`insert_missing`]).
    fresh: Arc<AtomicBool>,
}

impl fmt::Debug for MySqlStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MySqlStore")
            .field("name", &self.name)
            .field("url", &self.shown_url)
            .finish_non_exhaustive()
    }
}

impl MySqlStore {
    /// A store for the database at `url`: `mysql://user:pass@host:port/db`
    /// (`mariadb://` is the same), with mysql_async's URL parameters
    /// (`require_ssl=true`, `verify_ca`, `verify_identity`, `pool_max`, …)
    /// and Ferry's `ssl_ca=<PEM file>`, which trusts only that CA and implies
    /// `require_ssl=true`. Nothing is connected until used.
    pub fn new(name: &str, url: &str) -> Result<Self, StoreError> {
        let shown_url = redact(url);
        let refuse = |reason: String| StoreError::Url {
            url: shown_url.clone(),
            reason,
        };
        let url = match url.strip_prefix("mariadb://") {
            Some(rest) => format!("mysql://{rest}"),
            None => url.to_owned(),
        };
        // The credentials are taken out before the driver sees the URL, so
        // that none of its messages can hold a piece of the password.
        let Credentials {
            user,
            password,
            rest,
        } = Credentials::split(&url).map_err(refuse)?;
        let (url, ssl_ca) = take_param(&rest, "ssl_ca");
        let ssl_ca = ssl_ca
            .map(|ca| {
                decode(&ca)
                    .ok_or_else(|| refuse("ssl_ca is not a valid percent-encoded path".into()))
            })
            .transpose()?;
        let opts = Opts::from_url(&url).map_err(|e| refuse(e.to_string()))?;
        if opts.db_name().is_none_or(str::is_empty) {
            return Err(refuse(
                "the URL names no database (mysql://user:pass@host:port/db)".into(),
            ));
        }
        let mut builder = OptsBuilder::from_opts(opts.clone())
            .user(user)
            .pass(password);
        if opts.tcp_keepalive().is_none() {
            // Notices a server that vanished while a connection sat idle.
            builder = builder.tcp_keepalive(Some(Duration::from_secs(30)));
        }
        if let Some(ca) = ssl_ca {
            if ca.is_empty() {
                return Err(refuse("ssl_ca needs the path of a PEM file".into()));
            }
            let ssl = opts
                .ssl_opts()
                .cloned()
                .unwrap_or_default()
                .with_root_certs(vec![std::path::PathBuf::from(ca).into()])
                .with_disable_built_in_roots(true);
            builder = builder.ssl_opts(Some::<SslOpts>(ssl));
        }
        Ok(Self {
            name: name.to_owned(),
            shown_url,
            pool: Pool::new(builder),
            connect_timeout: CONNECT_TIMEOUT,
            operation_timeout: OPERATION_TIMEOUT,
            fresh: Arc::new(AtomicBool::new(true)),
        })
    }

    /// Replaces the connect and operation time limits.
    pub fn with_timeouts(mut self, connect: Duration, operation: Duration) -> Self {
        self.connect_timeout = connect;
        self.operation_timeout = operation;
        self
    }

    /// The URL with its password hidden.
    pub fn url(&self) -> &str {
        &self.shown_url
    }

    /// Closes the pool's connections.
    pub async fn close(self) -> Result<(), StoreError> {
        let name = self.name.clone();
        self.pool.disconnect().await.map_err(|e| StoreError::Other {
            catalog: name,
            reason: driver_message(&e),
        })
    }

    fn other(&self, reason: impl fmt::Display) -> StoreError {
        StoreError::Other {
            catalog: self.name.clone(),
            reason: reason.to_string(),
        }
    }

    /// A pooled connection, within the connect timeout.
    async fn conn(&self) -> Result<Conn, StoreError> {
        let connect = async {
            let mut tries = 1;
            loop {
                match self.pool.get_conn().await {
                    Err(mysql_async::Error::Server(e))
                        if e.code == ER_ACCESS_DENIED && tries < ACCESS_DENIED_TRIES =>
                    {
                        tries += 1;
                    }
                    connected => return connected,
                }
            }
        };
        match tokio::time::timeout(self.connect_timeout, connect).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(self.other(format_args!(
                "cannot connect to {}: {}",
                self.shown_url,
                driver_message(&e)
            ))),
            Err(_) => Err(self.other(format_args!(
                "cannot connect to {} within {:?}",
                self.shown_url, self.connect_timeout
            ))),
        }
    }

    /// Runs `op` within the operation timeout, mapping its error.
    async fn timed<T>(
        &self,
        what: &str,
        op: impl Future<Output = Result<T, Failure>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.operation_timeout, op).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(Failure::Db(e))) => {
                Err(self.other(format_args!("{what}: {}", driver_message(&e))))
            }
            Ok(Err(Failure::Data(reason))) => Err(self.other(format_args!("{what}: {reason}"))),
            Err(_) => Err(self.other(format_args!(
                "{what} took longer than {:?}",
                self.operation_timeout
            ))),
        }
    }
}

impl CatalogStore for MySqlStore {
    fn name(&self) -> &str {
        &self.name
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        self.timed("migrating", async {
            // Several collectors may share the catalog: one migrates at a time.
            let locked: Option<Option<i64>> = conn
                .query_first(format!(
                    "SELECT GET_LOCK(CONCAT('ferry_migrate.', DATABASE()), {MIGRATE_LOCK_SECS})"
                ))
                .await?;
            if locked.flatten() != Some(1) {
                return Err(Failure::Data(format!(
                    "another collector held the migration lock for {MIGRATE_LOCK_SECS} s"
                )));
            }
            let result = migrate_locked(&mut conn).await;
            let released = conn
                .query_drop("SELECT RELEASE_LOCK(CONCAT('ferry_migrate.', DATABASE()))")
                .await;
            result?;
            released?;
            Ok(())
        })
        .await
    }

    async fn position(&self) -> Result<u64, StoreError> {
        let mut conn = self.conn().await?;
        self.timed("reading the applied position", async {
            let seq: Option<i64> = conn
                .query_first("SELECT seq FROM applied WHERE id = 1")
                .await?;
            Ok(seq.unwrap_or(0).max(0) as u64)
        })
        .await
    }

    async fn apply(&self, records: Vec<(u64, Record)>) -> Result<(), StoreError> {
        let Some(last) = records.last().map(|(seq, _)| *seq) else {
            return Ok(());
        };
        let rows = Keyed::dedup(records.iter().map(|(_, r)| r));
        let mut conn = self.conn().await?;
        self.timed("applying", async {
            let mut tx = conn.start_transaction(TxOpts::default()).await?;
            let inserted = insert_missing(&mut tx, &rows, &self.fresh).await?;
            add_counters(&mut tx, &inserted).await?;
            // Earlier versions (rare): no longer the latest, and where the
            // record says, in journal order.
            for (_, r) in &records {
                if let Some(previous) = &r.previous {
                    tx.exec_drop(
                        "UPDATE files SET latest = 0, stored_as = ?
                         WHERE station = ? AND path_hash = ? AND sha256 = ?",
                        (
                            previous.stored_as.as_str(),
                            r.station.as_str(),
                            path_hash(&r.path).to_vec(),
                            previous.sha256.to_vec(),
                        ),
                    )
                    .await?;
                }
            }
            tx.exec_drop(
                "UPDATE applied SET seq = GREATEST(seq, ?) WHERE id = 1",
                (last as i64,),
            )
            .await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    async fn rows(&self) -> Result<Vec<CatalogRow>, StoreError> {
        let mut conn = self.conn().await?;
        self.timed("reading rows", async {
            let raw: Vec<Row> = conn
                .query(
                    "SELECT station, path, size, mtime_ns, sha256, stored_as, received_at, transfer, latest FROM files",
                )
                .await?;
            let mut rows = raw.into_iter().map(read_row).collect::<Result<Vec<_>, _>>()?;
            // Sorted here, not by SQL: the order must not depend on a collation.
            rows.sort_by(|a, b| (&a.station, &a.path, &a.sha256).cmp(&(&b.station, &b.path, &b.sha256)));
            Ok(rows)
        })
        .await
    }

    async fn insert_rows(&self, rows: Vec<CatalogRow>) -> Result<u64, StoreError> {
        let rows = Keyed::dedup(rows.iter());
        if rows.is_empty() {
            return Ok(0);
        }
        let mut conn = self.conn().await?;
        self.timed("inserting rows", async {
            let mut tx = conn.start_transaction(TxOpts::default()).await?;
            let inserted = insert_missing(&mut tx, &rows, &self.fresh).await?;
            add_counters(&mut tx, &inserted).await?;
            // Present rows that the other catalog has seen superseded
            // (rare): versions only ever stop being the latest.
            let new: HashSet<_> = inserted.iter().map(|k| k.key()).collect();
            let mut superseded = 0;
            for k in rows
                .iter()
                .filter(|k| !k.record.latest && !new.contains(&k.key()))
            {
                tx.exec_drop(
                    "UPDATE files SET latest = 0, stored_as = ?
                     WHERE station = ? AND path_hash = ? AND sha256 = ? AND latest = 1",
                    (
                        k.record.stored_as.as_str(),
                        k.record.station.as_str(),
                        k.path_hash.to_vec(),
                        k.record.sha256.to_vec(),
                    ),
                )
                .await?;
                superseded += tx.affected_rows();
            }
            tx.commit().await?;
            Ok(inserted.len() as u64 + superseded)
        })
        .await
    }

    async fn summary(&self) -> Result<Vec<StationSummary>, StoreError> {
        let mut conn = self.conn().await?;
        self.timed("reading the summary", async {
            let raw: Vec<Row> = conn
                .query("SELECT station, files, bytes, last_backup FROM stations")
                .await?;
            let mut summary = raw
                .into_iter()
                .map(|mut row| {
                    Ok(StationSummary {
                        station: take(&mut row, 0, "station")?,
                        files: take::<i64>(&mut row, 1, "files")?.max(0) as u64,
                        bytes: take::<i64>(&mut row, 2, "bytes")?.max(0) as u64,
                        last_backup: take(&mut row, 3, "last_backup")?,
                    })
                })
                .collect::<Result<Vec<_>, Failure>>()?;
            summary.sort_by(|a, b| a.station.cmp(&b.station));
            Ok(summary)
        })
        .await
    }

    async fn count_rows(&self) -> Result<u64, StoreError> {
        let mut conn = self.conn().await?;
        self.timed("counting rows", async {
            let n: Option<i64> = conn.query_first("SELECT COUNT(*) FROM files").await?;
            Ok(n.unwrap_or(0).max(0) as u64)
        })
        .await
    }

    async fn rows_after(
        &self,
        after: i64,
        limit: usize,
    ) -> Result<Vec<(i64, CatalogRow)>, StoreError> {
        let mut conn = self.conn().await?;
        self.timed("reading rows", async {
            let raw: Vec<Row> = conn
                .exec(
                    "SELECT id, station, path, size, mtime_ns, sha256, stored_as, received_at, transfer, latest
                     FROM files WHERE id > ? ORDER BY id LIMIT ?",
                    (after, limit as u64),
                )
                .await?;
            raw.into_iter()
                .map(|mut row| {
                    let id: i64 = take(&mut row, 0, "id")?;
                    Ok((id, read_record(&mut row, 1)?))
                })
                .collect()
        })
        .await
    }

    async fn mark_applied(&self, seq: u64) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        self.timed("moving the applied position", async {
            conn.exec_drop(
                "UPDATE applied SET seq = GREATEST(seq, ?) WHERE id = 1",
                (seq as i64,),
            )
            .await?;
            Ok(())
        })
        .await
    }
}

/// A driver error as a message: mysql_async wraps an I/O error twice and
/// each layer prefixes "Input/output error: ", so it is said once here.
fn driver_message(e: &mysql_async::Error) -> String {
    match e {
        mysql_async::Error::Io(mysql_async::IoError::Io(io)) => {
            format!("Input/output error: {io}")
        }
        mysql_async::Error::Io(mysql_async::IoError::Tls(tls)) => format!("TLS error: {tls}"),
        other => other.to_string(),
    }
}

/// Why an operation failed, before it is named for the catalog.
enum Failure {
    Db(mysql_async::Error),
    /// The database answered something this build cannot read.
    Data(String),
}

impl From<mysql_async::Error> for Failure {
    fn from(e: mysql_async::Error) -> Self {
        Self::Db(e)
    }
}

/// A record with the hash of its path, which the unique key uses.
struct Keyed<'a> {
    record: &'a Record,
    path_hash: [u8; 32],
}

impl<'a> Keyed<'a> {
    /// Hashes each record's path and keeps the first of records with the
    /// same key, as the unique key would.
    fn dedup(records: impl Iterator<Item = &'a Record>) -> Vec<Self> {
        let mut seen = HashSet::new();
        records
            .filter(|r| seen.insert((r.station.as_str(), r.path.as_str(), r.sha256)))
            .map(|record| Keyed {
                record,
                path_hash: path_hash(&record.path),
            })
            .collect()
    }

    fn key(&self) -> (&str, [u8; 32], [u8; 32]) {
        (&self.record.station, self.path_hash, self.record.sha256)
    }

    /// Rough size of the row's parameters.
    fn weight(&self) -> usize {
        let r = self.record;
        r.station.len() + 2 * r.path.len() + r.stored_as.len() + r.transfer.len() + 130
    }
}

/// The SHA-256 of a path's text form, which the unique key holds.
fn path_hash(path: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, path.as_bytes()).as_ref());
    out
}

async fn migrate_locked(conn: &mut Conn) -> Result<(), Failure> {
    conn.query_drop(
        "CREATE TABLE IF NOT EXISTS ferry_migrations (
            version INT NOT NULL PRIMARY KEY,
            applied_at BIGINT NOT NULL
        ) ENGINE=InnoDB",
    )
    .await?;
    let version: Option<i64> = conn
        .query_first("SELECT COALESCE(MAX(version), 0) FROM ferry_migrations")
        .await?;
    let version = version.unwrap_or(0);
    let known = SCHEMA.len() as i64;
    if version > known {
        return Err(Failure::Data(format!(
            "schema version {version} is newer than this build's {known}"
        )));
    }
    for (i, step) in SCHEMA.iter().enumerate().skip(version.max(0) as usize) {
        for statement in *step {
            match statement {
                Statement::Sql(sql) => conn.query_drop(*sql).await?,
                Statement::AddColumn(table, column, definition) => {
                    let present: Option<i64> = conn
                        .exec_first(
                            "SELECT COUNT(*) FROM information_schema.COLUMNS
                             WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? AND COLUMN_NAME = ?",
                            (*table, *column),
                        )
                        .await?;
                    if present.unwrap_or(0) == 0 {
                        conn.query_drop(format!(
                            "ALTER TABLE {table} ADD COLUMN {column} {definition}"
                        ))
                        .await?;
                    }
                }
            }
        }
        conn.exec_drop(
            "INSERT IGNORE INTO ferry_migrations (version, applied_at) VALUES (?, ?)",
            (i as i64 + 1, ferry_common::clock::now_ms()),
        )
        .await?;
    }
    Ok(())
}

/// Inserts the rows of `rows` the catalog lacks; returns them.
///
/// Fresh rows, the usual case, cost one statement per chunk: the whole
/// chunk is inserted, and if every row counted as inserted, that is the
/// answer. Otherwise the insert is rolled back to a savepoint, the rows
/// present are looked up, and only the others are inserted; their count
/// must then match, or another writer got in between and the caller
/// retries. After a chunk with present rows, the next chunks are looked up
/// first until one is all new again (a batch re-applied after a crash is
/// usually present as a whole, and the next one likely too).
async fn insert_missing<'a, 'r>(
    tx: &mut Transaction<'_>,
    rows: &'r [Keyed<'a>],
    fresh: &AtomicBool,
) -> Result<Vec<&'r Keyed<'a>>, Failure> {
    let mut inserted = Vec::new();
    let mut start = 0;
    while start < rows.len() {
        let mut end = start;
        let mut bytes = 0;
        while end < rows.len() && end - start < CHUNK_ROWS && (end == start || bytes < CHUNK_BYTES)
        {
            bytes += rows[end].weight();
            end += 1;
        }
        let chunk: Vec<&Keyed<'_>> = rows[start..end].iter().collect();
        start = end;
        if fresh.load(Ordering::Relaxed) {
            tx.query_drop("SAVEPOINT ferry_chunk").await?;
            if insert_files(tx, &chunk).await? == chunk.len() as u64 {
                inserted.extend(chunk);
                continue;
            }
            tx.query_drop("ROLLBACK TO SAVEPOINT ferry_chunk").await?;
        }
        let present = present_keys(tx, &chunk).await?;
        // Chunks after one with present rows likely have some too.
        fresh.store(present.is_empty(), Ordering::Relaxed);
        let missing: Vec<&Keyed<'_>> = chunk
            .into_iter()
            .filter(|k| {
                !present.contains(&(k.record.station.clone(), k.path_hash, k.record.sha256))
            })
            .collect();
        if missing.is_empty() {
            continue;
        }
        let affected = insert_files(tx, &missing).await?;
        if affected != missing.len() as u64 {
            return Err(Failure::Data(format!(
                "{} of {} new rows were inserted meanwhile by another writer; retry",
                missing.len() as u64 - affected.min(missing.len() as u64),
                missing.len()
            )));
        }
        inserted.extend(missing);
    }
    Ok(inserted)
}

/// One multi-row insert into `files`; returns how many rows were new (a
/// row already present changes nothing and counts 0).
async fn insert_files(tx: &mut Transaction<'_>, rows: &[&Keyed<'_>]) -> Result<u64, Failure> {
    let mut sql = String::with_capacity(200 + rows.len() * 20);
    sql.push_str(
        "INSERT INTO files (station, path, path_hash, size, mtime_ns, sha256, stored_as, received_at, transfer, path_bytes, latest) VALUES ",
    );
    let mut params = Vec::with_capacity(rows.len() * 11);
    for (i, k) in rows.iter().enumerate() {
        sql.push_str(if i == 0 {
            "(?,?,?,?,?,?,?,?,?,?,?)"
        } else {
            ",(?,?,?,?,?,?,?,?,?,?,?)"
        });
        let r = k.record;
        params.extend([
            Value::from(r.station.as_str()),
            Value::from(r.path.as_str()),
            Value::Bytes(k.path_hash.to_vec()),
            Value::Int(r.size as i64),
            Value::Int(r.mtime_ns),
            Value::Bytes(r.sha256.to_vec()),
            Value::from(r.stored_as.as_str()),
            Value::Int(r.received_at),
            Value::from(r.transfer.as_str()),
            Value::Bytes(r.path_bytes()),
            Value::Int(i64::from(r.latest)),
        ]);
    }
    sql.push_str(" ON DUPLICATE KEY UPDATE id = id");
    tx.exec_drop(sql, params).await?;
    Ok(tx.affected_rows())
}

/// The keys of `chunk` the catalog already holds.
async fn present_keys(
    tx: &mut Transaction<'_>,
    chunk: &[&Keyed<'_>],
) -> Result<HashSet<(String, [u8; 32], [u8; 32])>, Failure> {
    let mut by_station: BTreeMap<&str, Vec<&Keyed<'_>>> = BTreeMap::new();
    for k in chunk {
        by_station.entry(k.key().0).or_default().push(k);
    }
    let mut sql = String::from("SELECT station, path_hash, sha256 FROM files WHERE ");
    let mut params = Vec::with_capacity(chunk.len() + by_station.len());
    for (i, (station, keys)) in by_station.iter().enumerate() {
        sql.push_str(if i == 0 {
            "(station = ? AND path_hash IN ("
        } else {
            " OR (station = ? AND path_hash IN ("
        });
        params.push(Value::from(*station));
        for (j, k) in keys.iter().enumerate() {
            sql.push_str(if j == 0 { "?" } else { ",?" });
            params.push(Value::Bytes(k.path_hash.to_vec()));
        }
        sql.push_str("))");
    }
    let found: Vec<Row> = tx.exec(sql, params).await?;
    found
        .into_iter()
        .map(|mut row| {
            Ok((
                take::<String>(&mut row, 0, "station")?,
                hash32(take(&mut row, 1, "path_hash")?, "path_hash")?,
                hash32(take(&mut row, 2, "sha256")?, "sha256")?,
            ))
        })
        .collect()
}

/// Adds the inserted rows to the station and transfer counters, in key
/// order so that concurrent writers lock rows in the same order.
async fn add_counters(tx: &mut Transaction<'_>, inserted: &[&Keyed<'_>]) -> Result<(), Failure> {
    if inserted.is_empty() {
        return Ok(());
    }
    // station -> (files, bytes, newest)
    let mut stations: BTreeMap<&str, (i64, i64, i64)> = BTreeMap::new();
    // transfer -> (station, files, bytes, first, last)
    let mut transfers: BTreeMap<&str, (&str, i64, i64, i64, i64)> = BTreeMap::new();
    for k in inserted {
        let r = k.record;
        let s = stations.entry(&r.station).or_insert((0, 0, i64::MIN));
        s.0 += 1;
        s.1 += r.size as i64;
        s.2 = s.2.max(r.received_at);
        let t = transfers
            .entry(&r.transfer)
            .or_insert((&r.station, 0, 0, i64::MAX, i64::MIN));
        t.1 += 1;
        t.2 += r.size as i64;
        t.3 = t.3.min(r.received_at);
        t.4 = t.4.max(r.received_at);
    }
    let stations: Vec<_> = stations.into_iter().collect();
    for chunk in stations.chunks(CHUNK_ROWS) {
        let mut sql =
            String::from("INSERT INTO stations (station, files, bytes, last_backup) VALUES ");
        let mut params = Vec::with_capacity(chunk.len() * 4);
        for (i, (station, (files, bytes, newest))) in chunk.iter().enumerate() {
            sql.push_str(if i == 0 { "(?,?,?,?)" } else { ",(?,?,?,?)" });
            params.extend([
                Value::from(*station),
                Value::Int(*files),
                Value::Int(*bytes),
                Value::Int(*newest),
            ]);
        }
        sql.push_str(
            " ON DUPLICATE KEY UPDATE files = files + VALUES(files), bytes = bytes + VALUES(bytes),
              last_backup = GREATEST(COALESCE(last_backup, 0), VALUES(last_backup))",
        );
        tx.exec_drop(sql, params).await?;
    }
    let transfers: Vec<_> = transfers.into_iter().collect();
    for chunk in transfers.chunks(CHUNK_ROWS) {
        let mut sql = String::from(
            "INSERT INTO transfers (transfer, station, files, bytes, first_at, last_at) VALUES ",
        );
        let mut params = Vec::with_capacity(chunk.len() * 6);
        for (i, (transfer, (station, files, bytes, first, last))) in chunk.iter().enumerate() {
            sql.push_str(if i == 0 {
                "(?,?,?,?,?,?)"
            } else {
                ",(?,?,?,?,?,?)"
            });
            params.extend([
                Value::from(*transfer),
                Value::from(*station),
                Value::Int(*files),
                Value::Int(*bytes),
                Value::Int(*first),
                Value::Int(*last),
            ]);
        }
        sql.push_str(
            " ON DUPLICATE KEY UPDATE files = files + VALUES(files), bytes = bytes + VALUES(bytes),
              first_at = LEAST(first_at, VALUES(first_at)), last_at = GREATEST(last_at, VALUES(last_at))",
        );
        tx.exec_drop(sql, params).await?;
    }
    Ok(())
}

fn read_row(mut row: Row) -> Result<CatalogRow, Failure> {
    read_record(&mut row, 0)
}

/// A record from columns `first..first + 9` (station, path, size,
/// mtime_ns, sha256, stored_as, received_at, transfer, latest).
fn read_record(row: &mut Row, first: usize) -> Result<CatalogRow, Failure> {
    Ok(Record {
        station: take(row, first, "station")?,
        path: take(row, first + 1, "path")?,
        size: take::<i64>(row, first + 2, "size")? as u64,
        mtime_ns: take(row, first + 3, "mtime_ns")?,
        sha256: hash32(take(row, first + 4, "sha256")?, "sha256")?,
        stored_as: take(row, first + 5, "stored_as")?,
        received_at: take(row, first + 6, "received_at")?,
        transfer: take(row, first + 7, "transfer")?,
        latest: take::<i64>(row, first + 8, "latest")? != 0,
        previous: None,
    })
}

/// Column `index` of `row` as a `T`, or a readable error (never a panic).
fn take<T: FromValue>(row: &mut Row, index: usize, column: &str) -> Result<T, Failure> {
    match row.take_opt::<T, usize>(index) {
        Some(Ok(value)) => Ok(value),
        Some(Err(e)) => Err(Failure::Data(format!("column {column} holds {:?}", e.0))),
        None => Err(Failure::Data(format!("column {column} is missing"))),
    }
}

fn hash32(bytes: Vec<u8>, column: &str) -> Result<[u8; 32], Failure> {
    bytes.try_into().map_err(|b: Vec<u8>| {
        Failure::Data(format!("column {column} holds {} bytes, not 32", b.len()))
    })
}

/// `url` without `key=value` in its query, and that value.
fn take_param(url: &str, key: &str) -> (String, Option<String>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_owned(), None);
    };
    let mut value = None;
    let rest: Vec<&str> = query
        .split('&')
        .filter(|pair| match pair.split_once('=') {
            Some((k, v)) if k == key => {
                value = Some(v.to_owned());
                false
            }
            _ => true,
        })
        .collect();
    if rest.is_empty() {
        (base.to_owned(), value)
    } else {
        (format!("{base}?{}", rest.join("&")), value)
    }
}

/// `url` with everything between the user name and the host hidden: the
/// password, in any form it was written. The credentials end at the last
/// `@` of the URL (a password may hold `@`, `/`, `?` or `#` unencoded), and
/// the user name at the first `:` before it. A URL that is not
/// `scheme://...` but holds an `@` loses everything before its last `@`.
pub fn redact(url: &str) -> String {
    let Some(at) = url.rfind('@') else {
        return url.to_owned();
    };
    let host = &url[at..];
    match url.split_once("://") {
        Some((scheme, rest)) if scheme.len() < at => {
            let userinfo = &rest[..at - scheme.len() - 3];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{scheme}://{user}:***{host}"),
                None => format!("{scheme}://{userinfo}{host}"),
            }
        }
        _ => format!("***{host}"),
    }
}

/// A URL's user name and password, percent-decoded, and the URL without
/// them.
#[derive(PartialEq, Eq)]
struct Credentials {
    user: Option<String>,
    password: Option<String>,
    /// `scheme://host...`: what the driver parses.
    rest: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("rest", &self.rest)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// Splits `url` as [`redact`] does. Each part is percent-decoded; a `%`
    /// must start an escape (`%25` for `%` itself), since `%41` could not
    /// be told from an encoded `A` otherwise. Messages never quote the
    /// password.
    fn split(url: &str) -> Result<Self, String> {
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err("the URL does not start with mysql://".into());
        };
        let Some(at) = rest.rfind('@') else {
            return Ok(Self {
                user: None,
                password: None,
                rest: url.to_owned(),
            });
        };
        let (userinfo, host) = (&rest[..at], &rest[at + 1..]);
        let (user, password) = match userinfo.split_once(':') {
            Some((user, password)) => (user, Some(password)),
            None => (userinfo, None),
        };
        let user = decode(user).ok_or_else(|| {
            "the user name is not valid percent-encoded UTF-8 (write % as %25)".to_owned()
        })?;
        let password = password
            .map(|p| {
                decode(p).ok_or_else(|| {
                    "the password is not valid percent-encoded UTF-8: a % must start an escape \
                     such as %25 for % itself (percent-encode the password)"
                        .to_owned()
                })
            })
            .transpose()?;
        Ok(Self {
            user: (!user.is_empty()).then_some(user),
            password,
            rest: format!("{scheme}://{host}"),
        })
    }
}

/// `text` percent-decoded; `None` when a `%` is not followed by two hex
/// digits or the bytes are not UTF-8.
fn decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(
            redact("mysql://ferry:s3cr%40t@db:3306/ferry?require_ssl=true"),
            "mysql://ferry:***@db:3306/ferry?require_ssl=true"
        );
        assert_eq!(redact("mysql://ferry@db/ferry"), "mysql://ferry@db/ferry");
        let Err(StoreError::Url { url, .. }) =
            MySqlStore::new("primary", "mysql://u:hunter2@db:3306/")
        else {
            panic!("a URL without a database must be refused");
        };
        assert!(!url.contains("hunter2"), "{url}");
    }

    #[test]
    fn ferry_parameters_are_taken_out_of_the_url() {
        assert_eq!(
            take_param(
                "mysql://u:p@h/db?ssl_ca=/etc/ferry/db-ca.pem&pool_max=4",
                "ssl_ca"
            ),
            (
                "mysql://u:p@h/db?pool_max=4".to_owned(),
                Some("/etc/ferry/db-ca.pem".to_owned())
            )
        );
        assert_eq!(
            take_param("mysql://u:p@h/db?ssl_ca=ca.pem", "ssl_ca"),
            ("mysql://u:p@h/db".to_owned(), Some("ca.pem".to_owned()))
        );
        assert_eq!(
            take_param("mysql://u:p@h/db", "ssl_ca"),
            ("mysql://u:p@h/db".to_owned(), None)
        );
    }

    #[test]
    fn bad_urls_are_refused_up_front() {
        for url in [
            "mysql://u:p@h:notaport/db",
            "mysql://u:p@h/db?require_ssl=maybe",
            "postgres://h/db",
        ] {
            assert!(
                matches!(MySqlStore::new("primary", url), Err(StoreError::Url { .. })),
                "{url}"
            );
        }
    }

    #[test]
    fn batches_keep_the_first_of_duplicate_keys() {
        let record = |path: &str, sha: u8, size: u64| Record {
            station: "s1".into(),
            path: path.into(),
            size,
            mtime_ns: 1,
            sha256: [sha; 32],
            stored_as: path.into(),
            received_at: 1,
            transfer: "t".into(),
            latest: true,
            previous: None,
        };
        let records = [
            record("a", 1, 10),
            record("a", 1, 99),
            record("a", 2, 5),
            record("b", 1, 1),
        ];
        let keyed = Keyed::dedup(records.iter());
        let sizes: Vec<u64> = keyed.iter().map(|k| k.record.size).collect();
        assert_eq!(sizes, vec![10, 5, 1]);
        assert_ne!(keyed[0].path_hash, keyed[2].path_hash);
        assert_eq!(keyed[0].path_hash, keyed[1].path_hash);
    }
}
