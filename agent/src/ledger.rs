//! The agent's ledger: every file seen under the watched roots, its identity
//! (size, mtime, inode) and where it stands on its way to the collector, kept
//! in SQLite so that it survives `kill -9` and restarts.
//!
//! A file is `due` from the moment it is observed until the collector acks the
//! exact identity that was sent; then it is `done`. While a batch carrying it
//! is in flight it is `sent-pending`, so that it is not offered twice; a
//! process that dies leaves such rows behind and [`Ledger::open`] returns them
//! to `due` (the collector answers a repeated offer idempotently).
//!
//! A row also remembers whether its current content was ever offered. An
//! offer that got no answer (the link was cut, the agent was killed) may
//! still have been stored: the collector's ack can be lost after the fact.
//! Such a file is offered again with its hash, so the collector can say it
//! already holds it instead of asking for every byte once more.
//!
//! A rescan compares everything the filesystem offers: size, mtime and
//! ctime to the nanosecond, and the inode. That is not enough on its own: a
//! same-size rewrite within one tick of a coarse clock (filesystems with
//! one-second timestamps) keeps all of them. So a file the watcher saw
//! written (close-write, modify, rename onto it) counts as possibly changed
//! whatever its metadata says, and so does one whose metadata changed after
//! its backup; such a row is due with `verify` set, and the sender compares
//! its content with the last acknowledged SHA-256 (kept in `sha256`) before
//! anything is sent: equal content goes back to `done` without a transfer.
//!
//! Every row carries a `generation` that grows whenever the file's identity
//! changes (or it was seen written). Batches carry the [`FileKey`] (id and generation) they read, and
//! an ack or failure for an older generation does not touch the row: a file
//! rewritten while its previous content was on the wire stays due.
//!
//! Paths are stored relative to their root, as the raw bytes the kernel gave
//! (a BLOB), so names that are not UTF-8 survive unchanged. All methods are
//! synchronous; the daemon calls them from `spawn_blocking`. Every mutating
//! method is one transaction.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OpenFlags, OptionalExtension, Transaction, params};

/// The read-write connection's page cache: 512 KiB (`PRAGMA cache_size`
/// counts KiB when negative).
const CACHE_SIZE: i64 = -512;

/// The schema version this agent writes; `PRAGMA user_version` holds it.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// How long a call waits for a lock held by another connection (for example
/// `ferry-agent status` reading while the daemon writes).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the ledger could not be opened or used.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("cannot open ledger {}: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "ledger {} has schema version {found}, newer than this agent's {supported}; \
         run the newer agent or restore a matching backup",
        path.display()
    )]
    TooNew {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error(
        "ledger {} has schema version {found}, older than this agent's {supported}; \
         start the agent daemon once to migrate it",
        path.display()
    )]
    TooOld {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("ledger {} cannot use write-ahead logging (journal mode is {mode:?})", path.display())]
    NoWal { path: PathBuf, mode: String },
    #[error("ledger {}: {source}", path.display())]
    Sql {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("ledger {}: file {id} has an unknown state {state:?}", path.display())]
    BadState {
        path: PathBuf,
        id: i64,
        state: String,
    },
}

/// What identifies one version of a file on disk: when any of these change,
/// the content may have changed (see the module docs for when it changed
/// although none of these did).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Identity {
    /// Size in bytes.
    pub size: u64,
    /// Modification time in nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    /// Status change time in nanoseconds since the Unix epoch: moves on
    /// every write and every change of the inode, and unlike the mtime no
    /// writer can set it back. 0 in rows written before it was recorded,
    /// where it is not compared.
    pub ctime_ns: i64,
    /// Inode number (a file replaced by rename gets a new one).
    pub inode: u64,
}

/// A row and the generation of its identity, as a batch read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileKey {
    /// Row id.
    pub id: i64,
    /// Grows each time the file's identity changes.
    pub generation: i64,
}

/// Where a file stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileState {
    /// Waiting to be sent (or retried).
    Due,
    /// In a batch on its way to the collector.
    SentPending,
    /// Acknowledged by the collector.
    Done,
}

/// What [`Ledger::observe`] concluded about a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    /// Never seen before; now due.
    New,
    /// Same identity as last time; nothing changed.
    Unchanged,
    /// Changed before it was backed up; still due, with the new identity.
    Changed,
    /// Changed, or seen written, after it was backed up; due again, and
    /// compared with the acknowledged content before it is sent.
    ChangedAfterBackup,
}

/// One file seen by a scan or an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    /// Name of the configured root.
    pub root: String,
    /// Path below the root.
    pub rel_path: PathBuf,
    /// Size, mtimes and inode as seen.
    pub identity: Identity,
    /// Whether the watcher saw the file written (close-write, modify, a
    /// rename onto it) since it last looked: then the content may have
    /// changed even if the identity did not.
    pub written: bool,
}

/// A file waiting to be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueFile {
    /// What an ack or failure must name.
    pub key: FileKey,
    /// Name of the configured root.
    pub root: String,
    /// Path below the root.
    pub rel_path: PathBuf,
    /// Identity as last observed; the sender checks the file still has it.
    pub identity: Identity,
    /// Failed attempts so far (for the caller's growing retry delay).
    pub attempts: u32,
    /// When the file (in this identity) became due.
    pub due_since: SystemTime,
    /// Whether this content was offered before and its fate is unknown: the
    /// collector may hold it already (offer it with its hash).
    pub offered: bool,
    /// The SHA-256 last acknowledged for this path, when the file must be
    /// compared with it before it is sent (it was seen written, or its
    /// metadata changed, after that ack): equal content is not sent again
    /// ([`Ledger::mark_unchanged`]).
    pub compare_with: Option<[u8; 32]>,
}

/// The collector's acknowledgement of one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Acked {
    /// The row and generation that was sent.
    pub key: FileKey,
    /// SHA-256 of the content the collector stored.
    pub sha256: [u8; 32],
}

/// A file of a batch the collector could not store, for
/// [`Ledger::record_batch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The row and generation that was sent.
    pub key: FileKey,
    /// What went wrong.
    pub error: String,
    /// When it may be offered again; `None` for a refusal that cannot
    /// pass: not offered again until the file changes.
    pub retry_at: Option<SystemTime>,
}

/// A file that became done, for `BACKUP_DONE` and the post-ack action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckedFile {
    /// Name of the configured root.
    pub root: String,
    /// Path below the root.
    pub rel_path: PathBuf,
    /// The identity that was acked; delete or move the file only if it still
    /// has it.
    pub identity: Identity,
}

/// A backed-up file, for the periodic content re-check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DoneFile {
    /// The row and generation that was acked.
    pub key: FileKey,
    /// Name of the configured root.
    pub root: String,
    /// Path below the root.
    pub rel_path: PathBuf,
    /// The identity it was acked (or last seen unchanged) with.
    pub identity: Identity,
    /// SHA-256 of the acknowledged content.
    pub sha256: [u8; 32],
}

/// A due file that disappeared before it was backed up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vanished {
    /// Name of the configured root.
    pub root: String,
    /// Path below the root.
    pub rel_path: PathBuf,
    /// Size when last seen.
    pub size: u64,
    /// Since when it had been due.
    pub due_since: SystemTime,
}

/// The due set in numbers, for `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DueSummary {
    /// Files not yet acknowledged.
    pub files: u64,
    /// Their total size.
    pub bytes: u64,
    /// When the longest-waiting one became due.
    pub oldest: Option<SystemTime>,
    /// How many of them have failed at least once.
    pub failing: u64,
    /// How many of them the collector refused for good: they are not
    /// offered again until they change.
    pub refused: u64,
}

/// The last error of a file that failed to go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileError {
    /// Name of the configured root.
    pub root: String,
    /// Path below the root.
    pub rel_path: PathBuf,
    /// What went wrong the last time.
    pub error: String,
    /// Failed attempts so far.
    pub attempts: u32,
    /// When it last failed.
    pub at: SystemTime,
    /// When it will be tried again.
    pub retry_at: Option<SystemTime>,
    /// Whether the collector refused it for good: it is not tried again
    /// until it changes.
    pub permanent: bool,
}

/// The ledger: one SQLite connection.
#[derive(Debug)]
pub struct Ledger {
    conn: Connection,
    path: PathBuf,
}

impl Ledger {
    /// Opens (creating if needed) the ledger at `path`, migrates its schema
    /// and returns files left in flight by a previous process to `due`. Only
    /// the one agent daemon of a station may open its ledger this way.
    pub fn open(path: &Path) -> Result<Self, LedgerError> {
        let open_err = |source| LedgerError::Open {
            path: path.to_owned(),
            source,
        };
        let conn = Connection::open(path).map_err(open_err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .map_err(open_err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(LedgerError::NoWal {
                path: path.to_owned(),
                mode,
            });
        }
        // Durability. In WAL mode with synchronous=NORMAL a commit is a
        // write() into the WAL: it survives `kill -9` of the agent (the data
        // is in the kernel's page cache), and only a power loss or kernel
        // crash can roll back the last commits, never corrupt the database.
        // What could be rolled back is harmless for the guarantees:
        // - an observation: the rescan at start finds the file again;
        // - an ack: the file is due again, the collector already holds it and
        //   acks the repeated offer without a second catalog row.
        // The one visible consequence would be an ack forgotten after the
        // post-ack action deleted or moved the file: a spurious "vanished"
        // warning. To rule that out `mark_acked` commits with
        // synchronous=FULL (one fsync per acked batch, not per file), while
        // the frequent per-file writes stay cheap.
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_err)?;
        // SQLite's page cache fills up to its size as the ledger grows (2 MiB
        // by default, most of an idle agent's heap with 100,000 files in the
        // ledger). The kernel's page cache holds the file anyway, and the
        // ledger's work is index lookups of a few pages each.
        conn.pragma_update(None, "cache_size", CACHE_SIZE)
            .map_err(open_err)?;
        let mut ledger = Self {
            conn,
            path: path.to_owned(),
        };
        ledger.migrate()?;
        ledger
            .conn
            .execute(
                "UPDATE files SET state = 'due' WHERE state = 'sent-pending'",
                [],
            )
            .map_err(ledger.sql())?;
        Ok(ledger)
    }

    /// Opens an existing ledger for reading only (`ferry-agent status`
    /// while the daemon runs): no migration, and files in flight stay so.
    pub fn open_read_only(path: &Path) -> Result<Self, LedgerError> {
        let open_err = |source| LedgerError::Open {
            path: path.to_owned(),
            source,
        };
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags).map_err(open_err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        let found: u32 = conn
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(open_err)?;
        if found > SCHEMA_VERSION {
            return Err(LedgerError::TooNew {
                path: path.to_owned(),
                found,
                supported: SCHEMA_VERSION,
            });
        }
        if found < SCHEMA_VERSION {
            return Err(LedgerError::TooOld {
                path: path.to_owned(),
                found,
                supported: SCHEMA_VERSION,
            });
        }
        Ok(Self {
            conn,
            path: path.to_owned(),
        })
    }

    /// The file this ledger lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records that `rel_path` under `root` was seen with `identity` (by a
    /// scan: not known to be written since the last look).
    pub fn observe(
        &mut self,
        root: &str,
        rel_path: &Path,
        identity: Identity,
        now: SystemTime,
    ) -> Result<Observed, LedgerError> {
        let err = self.sql();
        let tx = self.conn.transaction().map_err(&err)?;
        let observed =
            observe_in(&tx, root, rel_path, identity, false, to_ms(now)).map_err(&err)?;
        tx.commit().map_err(&err)?;
        Ok(observed)
    }

    /// [`Ledger::observe`] for many files in one transaction (a rescan).
    pub fn observe_many(
        &mut self,
        observations: &[Observation],
        now: SystemTime,
    ) -> Result<Vec<Observed>, LedgerError> {
        let err = self.sql();
        let now = to_ms(now);
        let tx = self.conn.transaction().map_err(&err)?;
        let mut out = Vec::with_capacity(observations.len());
        for o in observations {
            out.push(
                observe_in(&tx, &o.root, &o.rel_path, o.identity, o.written, now).map_err(&err)?,
            );
        }
        tx.commit().map_err(&err)?;
        Ok(out)
    }

    /// Records files another program already copied (indexerD's
    /// `BACKUP_DONE`) as done in the identity observed now, without sending
    /// them and without post-ack work: a later change of one is new content
    /// and due like any other. Files the ledger knows already are left as
    /// they are. Returns how many were recorded.
    pub fn mark_copied(
        &mut self,
        observations: &[Observation],
        now: SystemTime,
    ) -> Result<usize, LedgerError> {
        let err = self.sql();
        let now = to_ms(now);
        let tx = self.conn.transaction().map_err(&err)?;
        let mut recorded = 0;
        for o in observations {
            if observe_in(&tx, &o.root, &o.rel_path, o.identity, o.written, now).map_err(&err)?
                == Observed::New
            {
                tx.prepare_cached(
                    "UPDATE files SET state = 'done', acked_at = ?3, post_ack_pending = 0
                     WHERE root = ?1 AND rel_path = ?2",
                )
                .and_then(|mut stmt| {
                    stmt.execute(params![o.root, o.rel_path.as_os_str().as_bytes(), now])
                })
                .map_err(&err)?;
                recorded += 1;
            }
        }
        tx.commit().map_err(&err)?;
        Ok(recorded)
    }

    /// Whether the ledger holds each file's content already: the same
    /// identity (compared as [`Ledger::observe`] does), and no write seen
    /// since it went on the wire or was backed up. Such a file is not new
    /// content (the watcher need not hold it for `min_age`).
    pub fn knows(&self, observations: &[Observation]) -> Result<Vec<bool>, LedgerError> {
        let err = self.sql();
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT size, mtime_ns, ctime_ns, inode, state
                 FROM files WHERE root = ?1 AND rel_path = ?2",
            )
            .map_err(&err)?;
        let mut out = Vec::with_capacity(observations.len());
        for o in observations {
            let known: Option<(i64, i64, i64, i64, String)> = stmt
                .query_row(params![o.root, o.rel_path.as_os_str().as_bytes()], |row| {
                    Ok((
                        row.get(0)?,
                        row.get(1)?,
                        row.get(2)?,
                        row.get(3)?,
                        row.get(4)?,
                    ))
                })
                .optional()
                .map_err(&err)?;
            let i = o.identity;
            out.push(known.is_some_and(|(size, mtime, ctime, inode, state)| {
                (size, mtime, inode) == (to_sql_u64(i.size), i.mtime_ns, to_sql_u64(i.inode))
                    && (ctime == 0 || ctime == i.ctime_ns)
                    && !(o.written && state != "due")
            }));
        }
        Ok(out)
    }

    /// Up to `limit` due files whose retry time has come, longest-waiting
    /// first.
    pub fn due(&self, limit: usize, now: SystemTime) -> Result<Vec<DueFile>, LedgerError> {
        let err = self.sql();
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT id, generation, root, rel_path, size, mtime_ns, ctime_ns, inode, attempts,
                        due_since, offered, CASE WHEN verify = 1 THEN sha256 END
                 FROM files
                 WHERE state = 'due' AND refused = 0
                   AND (next_attempt_at IS NULL OR next_attempt_at <= ?1)
                 ORDER BY due_since, id
                 LIMIT ?2",
            )
            .map_err(&err)?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = stmt
            .query_map(params![to_ms(now), limit], |row| {
                Ok(DueFile {
                    key: FileKey {
                        id: row.get(0)?,
                        generation: row.get(1)?,
                    },
                    root: row.get(2)?,
                    rel_path: path_from_blob(row.get(3)?),
                    identity: Identity {
                        size: from_sql_u64(row.get(4)?),
                        mtime_ns: row.get(5)?,
                        ctime_ns: row.get(6)?,
                        inode: from_sql_u64(row.get(7)?),
                    },
                    attempts: u32::try_from(row.get::<_, i64>(8)?).unwrap_or(u32::MAX),
                    due_since: from_ms(row.get(9)?),
                    offered: row.get::<_, i64>(10)? != 0,
                    compare_with: row
                        .get::<_, Option<Vec<u8>>>(11)?
                        .and_then(|h| <[u8; 32]>::try_from(h).ok()),
                })
            })
            .map_err(&err)?;
        rows.collect::<Result<_, _>>().map_err(&err)
    }

    /// Marks files as being in a batch on the wire, so [`Ledger::due`] does
    /// not offer them again, and as offered (until acked, the collector may
    /// hold them without the agent knowing). Returns how many were still due
    /// in the generation given.
    pub fn mark_sending(&mut self, keys: &[FileKey]) -> Result<usize, LedgerError> {
        let err = self.sql();
        let tx = self.conn.transaction().map_err(&err)?;
        let mut marked = 0;
        {
            let mut stmt = tx
                .prepare_cached(
                    "UPDATE files SET state = 'sent-pending', offered = 1
                     WHERE id = ?1 AND generation = ?2 AND state = 'due'",
                )
                .map_err(&err)?;
            for key in keys {
                marked += stmt
                    .execute(params![key.id, key.generation])
                    .map_err(&err)?;
            }
        }
        tx.commit().map_err(&err)?;
        Ok(marked)
    }

    /// Returns files of a batch that did not complete to `due` without
    /// counting a failure (the connection dropped, the agent is stopping).
    pub fn unmark_sending(&mut self, keys: &[FileKey]) -> Result<usize, LedgerError> {
        let err = self.sql();
        let tx = self.conn.transaction().map_err(&err)?;
        let mut reverted = 0;
        {
            let mut stmt = tx
                .prepare_cached(
                    "UPDATE files SET state = 'due'
                     WHERE id = ?1 AND generation = ?2 AND state = 'sent-pending'",
                )
                .map_err(&err)?;
            for key in keys {
                reverted += stmt
                    .execute(params![key.id, key.generation])
                    .map_err(&err)?;
            }
        }
        tx.commit().map_err(&err)?;
        Ok(reverted)
    }

    /// Returns files of a batch to `done` whose content turned out equal to
    /// the last acknowledged one ([`DueFile::compare_with`]): nothing to
    /// send, and no new `BACKUP_DONE` line. Returns how many.
    pub fn mark_unchanged(&mut self, keys: &[FileKey]) -> Result<usize, LedgerError> {
        let err = self.sql();
        let tx = self.conn.transaction().map_err(&err)?;
        let mut done = 0;
        {
            let mut stmt = tx
                .prepare_cached(
                    "UPDATE files SET state = 'done', verify = 0, offered = 0
                     WHERE id = ?1 AND generation = ?2 AND state = 'sent-pending'
                       AND verify = 1",
                )
                .map_err(&err)?;
            for key in keys {
                done += stmt
                    .execute(params![key.id, key.generation])
                    .map_err(&err)?;
            }
        }
        tx.commit().map_err(&err)?;
        Ok(done)
    }

    /// Records the collector's acks durably (this commit is fsynced) and
    /// returns the files that became done. An ack for an older generation
    /// (the file changed meanwhile) or a repeated ack is not returned, so
    /// `BACKUP_DONE` never gets a line twice; the older generation's hash is
    /// kept, though, as what the collector last stored for the path, and the
    /// newer content is compared with it before it is sent. The files'
    /// post-ack work is [`Ledger::post_ack_pending`] until
    /// [`Ledger::post_ack_done`].
    pub fn mark_acked(
        &mut self,
        acks: &[Acked],
        now: SystemTime,
    ) -> Result<Vec<AckedFile>, LedgerError> {
        self.record_batch(acks, &[], now)
    }

    /// A batch's results in one transaction: [`Ledger::mark_acked`] for the
    /// acks and [`Ledger::mark_failed`] for the failures. All or nothing, so
    /// a batch whose results could not be recorded (a full disk) can be
    /// recorded again later as a whole.
    pub fn record_batch(
        &mut self,
        acks: &[Acked],
        failures: &[Failure],
        now: SystemTime,
    ) -> Result<Vec<AckedFile>, LedgerError> {
        let err = self.sql();
        self.conn
            .pragma_update(None, "synchronous", "FULL")
            .map_err(&err)?;
        let result = self.record_batch_in(acks, failures, to_ms(now));
        let restored = self
            .conn
            .pragma_update(None, "synchronous", "NORMAL")
            .map_err(&err);
        let acked = result?;
        restored?;
        Ok(acked)
    }

    fn record_batch_in(
        &mut self,
        acks: &[Acked],
        failures: &[Failure],
        now: i64,
    ) -> Result<Vec<AckedFile>, LedgerError> {
        let err = self.sql();
        let tx = self.conn.transaction().map_err(&err)?;
        let mut done = Vec::new();
        for f in failures {
            mark_failed_in(&tx, f.key, &f.error, now, f.retry_at.map(to_ms)).map_err(&err)?;
        }
        {
            let mut stmt = tx
                .prepare_cached(
                    "UPDATE files SET state = 'done', sha256 = ?3, acked_at = ?4, attempts = 0,
                         offered = 0, verify = 0, post_ack_pending = 1,
                         last_error = NULL, last_error_at = NULL, next_attempt_at = NULL
                     WHERE id = ?1 AND generation = ?2 AND state <> 'done'
                     RETURNING root, rel_path, size, mtime_ns, ctime_ns, inode",
                )
                .map_err(&err)?;
            let mut older = tx
                .prepare_cached(
                    "UPDATE files SET sha256 = ?3, verify = 1
                     WHERE id = ?1 AND generation > ?2 AND state <> 'done'",
                )
                .map_err(&err)?;
            for ack in acks {
                let row = stmt
                    .query_row(
                        params![ack.key.id, ack.key.generation, &ack.sha256[..], now],
                        acked_file,
                    )
                    .optional()
                    .map_err(&err)?;
                if row.is_none() {
                    older
                        .execute(params![ack.key.id, ack.key.generation, &ack.sha256[..]])
                        .map_err(&err)?;
                }
                done.extend(row);
            }
            if !done.is_empty() {
                set_marker_in(&tx, LAST_ACK, now).map_err(&err)?;
            }
        }
        tx.commit().map_err(&err)?;
        Ok(done)
    }

    /// Done files whose post-ack work (their `BACKUP_DONE` line, the
    /// configured action) is not recorded as done: just acked, or left so by
    /// a stop or a failed write. Oldest ack first.
    pub fn post_ack_pending(&self) -> Result<Vec<AckedFile>, LedgerError> {
        let err = self.sql();
        let mut stmt = self
            .conn
            .prepare_cached(
                // The partial index holds only the few pending rows; the
                // planner cannot know it beats the state index.
                "SELECT root, rel_path, size, mtime_ns, ctime_ns, inode
                 FROM files INDEXED BY files_post_ack_pending
                 WHERE post_ack_pending = 1 AND state = 'done' ORDER BY acked_at, id",
            )
            .map_err(&err)?;
        let rows = stmt.query_map([], acked_file).map_err(&err)?;
        rows.collect::<Result<_, _>>().map_err(&err)
    }

    /// Records that the post-ack work of `files` is done.
    pub fn post_ack_done(&mut self, files: &[AckedFile]) -> Result<(), LedgerError> {
        let err = self.sql();
        let tx = self.conn.transaction().map_err(&err)?;
        {
            let mut stmt = tx
                .prepare_cached(
                    "UPDATE files SET post_ack_pending = 0 WHERE root = ?1 AND rel_path = ?2",
                )
                .map_err(&err)?;
            for f in files {
                stmt.execute(params![f.root, f.rel_path.as_os_str().as_bytes()])
                    .map_err(&err)?;
            }
        }
        tx.commit().map_err(&err)
    }

    /// Records that sending a file failed; it stays due and is not offered
    /// again before `retry_at`. Returns false if the file changed meanwhile
    /// (its new identity is due without delay) or is gone.
    pub fn mark_failed(
        &mut self,
        key: FileKey,
        error: &str,
        now: SystemTime,
        retry_at: SystemTime,
    ) -> Result<bool, LedgerError> {
        let err = self.sql();
        let tx = self.conn.transaction().map_err(&err)?;
        let changed =
            mark_failed_in(&tx, key, error, to_ms(now), Some(to_ms(retry_at))).map_err(&err)?;
        tx.commit().map_err(&err)?;
        Ok(changed)
    }

    /// Records that the collector refused a file for good (a retry cannot
    /// succeed): it stays due (it is not backed up) but is not offered
    /// again until its identity changes. Returns false if the file changed
    /// meanwhile or is gone.
    pub fn mark_refused(
        &mut self,
        key: FileKey,
        error: &str,
        now: SystemTime,
    ) -> Result<bool, LedgerError> {
        let err = self.sql();
        let tx = self.conn.transaction().map_err(&err)?;
        let changed = mark_failed_in(&tx, key, error, to_ms(now), None).map_err(&err)?;
        tx.commit().map_err(&err)?;
        Ok(changed)
    }

    /// Records that files were seen on disk without judging their identity
    /// (they are still being written, or not old enough yet): their rows
    /// stay out of the next [`Ledger::sweep`]. Unknown files are ignored.
    pub fn still_there(
        &mut self,
        seen: &[Observation],
        now: SystemTime,
    ) -> Result<usize, LedgerError> {
        let err = self.sql();
        let tx = self.conn.transaction().map_err(&err)?;
        let mut touched = 0;
        {
            let mut stmt = tx
                .prepare_cached("UPDATE files SET last_seen = ?3 WHERE root = ?1 AND rel_path = ?2")
                .map_err(&err)?;
            for o in seen {
                touched += stmt
                    .execute(params![
                        o.root,
                        o.rel_path.as_os_str().as_bytes(),
                        to_ms(now)
                    ])
                    .map_err(&err)?;
            }
        }
        tx.commit().map_err(&err)?;
        Ok(touched)
    }

    /// Forgets a file that no longer exists. Returns it if it was still due,
    /// so the caller can warn that it disappeared before it was backed up; a
    /// done file (deleted or moved after its ack) is forgotten silently.
    pub fn vanished(
        &mut self,
        root: &str,
        rel_path: &Path,
    ) -> Result<Option<Vanished>, LedgerError> {
        let err = self.sql();
        let tx = self.conn.transaction().map_err(&err)?;
        let row = tx
            .query_row(
                "DELETE FROM files WHERE root = ?1 AND rel_path = ?2
                 RETURNING root, rel_path, size, due_since, state",
                params![root, rel_path.as_os_str().as_bytes()],
                vanished_row,
            )
            .optional()
            .map_err(&err)?;
        tx.commit().map_err(&err)?;
        Ok(row.and_then(|(vanished, was_due)| was_due.then_some(vanished)))
    }

    /// After a full scan of `root` that started at `scan_started`, forgets
    /// every file of that root not observed since, and returns those that
    /// were still due (see [`Ledger::vanished`]).
    pub fn sweep(
        &mut self,
        root: &str,
        scan_started: SystemTime,
    ) -> Result<Vec<Vanished>, LedgerError> {
        let err = self.sql();
        let tx = self.conn.transaction().map_err(&err)?;
        let gone = {
            let mut stmt = tx
                .prepare(
                    "DELETE FROM files WHERE root = ?1 AND last_seen < ?2
                     RETURNING root, rel_path, size, due_since, state",
                )
                .map_err(&err)?;
            let rows = stmt
                .query_map(params![root, to_ms(scan_started)], vanished_row)
                .map_err(&err)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(&err)?
        };
        tx.commit().map_err(&err)?;
        let mut due: Vec<Vanished> = gone
            .into_iter()
            .filter_map(|(vanished, was_due)| was_due.then_some(vanished))
            .collect();
        due.sort_by(|a, b| a.rel_path.as_os_str().cmp(b.rel_path.as_os_str()));
        Ok(due)
    }

    /// Up to `limit` backed-up files with row ids above `after`, in id
    /// order, with their acknowledged hash: a page of the periodic content
    /// re-check.
    pub fn done_page(&self, after: i64, limit: usize) -> Result<Vec<DoneFile>, LedgerError> {
        let err = self.sql();
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT id, generation, root, rel_path, size, mtime_ns, ctime_ns, inode, sha256
                 FROM files
                 WHERE id > ?1 AND state = 'done' AND sha256 IS NOT NULL
                 ORDER BY id LIMIT ?2",
            )
            .map_err(&err)?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = stmt
            .query_map(params![after, limit], |row| {
                Ok((
                    FileKey {
                        id: row.get(0)?,
                        generation: row.get(1)?,
                    },
                    row.get::<_, String>(2)?,
                    path_from_blob(row.get(3)?),
                    Identity {
                        size: from_sql_u64(row.get(4)?),
                        mtime_ns: row.get(5)?,
                        ctime_ns: row.get(6)?,
                        inode: from_sql_u64(row.get(7)?),
                    },
                    row.get::<_, Vec<u8>>(8)?,
                ))
            })
            .map_err(&err)?;
        let mut out = Vec::new();
        for row in rows {
            let (key, root, rel_path, identity, sha) = row.map_err(&err)?;
            if let Ok(sha256) = <[u8; 32]>::try_from(sha) {
                out.push(DoneFile {
                    key,
                    root,
                    rel_path,
                    identity,
                    sha256,
                });
            }
        }
        Ok(out)
    }

    /// Makes a backed-up file due again because its content no longer
    /// matches the acknowledged hash (the periodic re-check found it
    /// rewritten behind identical metadata). Whether it was still done in
    /// that generation.
    pub fn content_changed(&mut self, key: FileKey, now: SystemTime) -> Result<bool, LedgerError> {
        let err = self.sql();
        let changed = self
            .conn
            .execute(
                "UPDATE files SET generation = generation + 1, state = 'due', verify = 0,
                     offered = 0, attempts = 0, due_since = ?3
                 WHERE id = ?1 AND generation = ?2 AND state = 'done'",
                params![key.id, key.generation, to_ms(now)],
            )
            .map_err(&err)?;
        Ok(changed == 1)
    }

    /// Where a file stands, if the ledger knows it.
    pub fn state(&self, root: &str, rel_path: &Path) -> Result<Option<FileState>, LedgerError> {
        let err = self.sql();
        let row: Option<(i64, String)> = self
            .conn
            .query_row(
                "SELECT id, state FROM files WHERE root = ?1 AND rel_path = ?2",
                params![root, rel_path.as_os_str().as_bytes()],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()
            .map_err(&err)?;
        row.map(|(id, state)| self.parse_state(id, state))
            .transpose()
    }

    /// Files not yet acknowledged, their bytes and the oldest.
    pub fn due_summary(&self) -> Result<DueSummary, LedgerError> {
        let err = self.sql();
        let (files, bytes, oldest, failing, refused): (i64, i64, Option<i64>, i64, i64) = self
            .conn
            .query_row(
                "SELECT count(*), coalesce(sum(size), 0), min(due_since),
                        count(*) FILTER (WHERE attempts > 0), count(*) FILTER (WHERE refused = 1)
                 FROM files WHERE state IN ('due', 'sent-pending')",
                [],
                |row| {
                    Ok((
                        row.get(0)?,
                        row.get(1)?,
                        row.get(2)?,
                        row.get(3)?,
                        row.get(4)?,
                    ))
                },
            )
            .map_err(&err)?;
        Ok(DueSummary {
            files: from_sql_u64(files),
            bytes: from_sql_u64(bytes),
            oldest: oldest.map(from_ms),
            failing: from_sql_u64(failing),
            refused: from_sql_u64(refused),
        })
    }

    /// Hands `each` the absolute path of every file not yet acknowledged,
    /// for `DUE_BACKUP`, in byte order, one row at a time (the due set is
    /// never held in memory). `roots` maps root names to their
    /// directories; files of roots no longer configured are left out.
    pub fn for_each_due_path(
        &self,
        roots: &BTreeMap<String, PathBuf>,
        mut each: impl FnMut(&Path),
    ) -> Result<(), LedgerError> {
        let err = self.sql();
        // Roots never overlap, so no root's directory with its slash is a
        // prefix of another's: ordering the roots by that, then each root's
        // paths by their bytes (the order of the unique index), orders the
        // absolute paths by their bytes.
        let mut ordered: Vec<(Vec<u8>, &String, &PathBuf)> = roots
            .iter()
            .map(|(name, dir)| {
                let mut prefix = dir.as_os_str().as_bytes().to_vec();
                if prefix.last() != Some(&b'/') {
                    prefix.push(b'/');
                }
                (prefix, name, dir)
            })
            .collect();
        ordered.sort();
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT rel_path FROM files
                 WHERE root = ?1 AND state IN ('due', 'sent-pending')
                 ORDER BY rel_path",
            )
            .map_err(&err)?;
        for (_, name, dir) in ordered {
            let mut rows = stmt.query(params![name]).map_err(&err)?;
            while let Some(row) = rows.next().map_err(&err)? {
                let rel = row.get_ref(0).map_err(&err)?;
                let rel = rel.as_blob().map_err(|e| err(e.into()))?;
                each(&dir.join(OsStr::from_bytes(rel)));
            }
        }
        Ok(())
    }

    /// The `n` most recent errors of files still due, newest first.
    pub fn recent_errors(&self, n: usize) -> Result<Vec<FileError>, LedgerError> {
        let err = self.sql();
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT root, rel_path, last_error, attempts, last_error_at, next_attempt_at, refused
                 FROM files
                 WHERE last_error IS NOT NULL AND state <> 'done'
                 ORDER BY last_error_at DESC, id DESC
                 LIMIT ?1",
            )
            .map_err(&err)?;
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        let rows = stmt
            .query_map(params![n], |row| {
                Ok(FileError {
                    root: row.get(0)?,
                    rel_path: path_from_blob(row.get(1)?),
                    error: row.get(2)?,
                    attempts: u32::try_from(row.get::<_, i64>(3)?).unwrap_or(u32::MAX),
                    at: from_ms(row.get::<_, Option<i64>>(4)?.unwrap_or(0)),
                    retry_at: row.get::<_, Option<i64>>(5)?.map(from_ms),
                    permanent: row.get::<_, i64>(6)? != 0,
                })
            })
            .map_err(&err)?;
        rows.collect::<Result<_, _>>().map_err(&err)
    }

    /// When the collector last acknowledged a file.
    pub fn last_ack(&self) -> Result<Option<SystemTime>, LedgerError> {
        self.marker(LAST_ACK)
    }

    /// A named moment kept across restarts (for example when the legacy
    /// `DUE_BACKUP` was imported).
    pub fn marker(&self, name: &str) -> Result<Option<SystemTime>, LedgerError> {
        self.conn
            .query_row(
                "SELECT value FROM markers WHERE name = ?1",
                params![name],
                |row| row.get::<_, i64>(0),
            )
            .optional()
            .map(|ms| ms.map(from_ms))
            .map_err(self.sql())
    }

    /// Sets a named moment (see [`Ledger::marker`]).
    pub fn set_marker(&mut self, name: &str, at: SystemTime) -> Result<(), LedgerError> {
        set_marker_in(&self.conn, name, to_ms(at)).map_err(self.sql())
    }

    fn migrate(&mut self) -> Result<(), LedgerError> {
        let err = self.sql();
        let found: u32 = self
            .conn
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(&err)?;
        if found > SCHEMA_VERSION {
            return Err(LedgerError::TooNew {
                path: self.path.clone(),
                found,
                supported: SCHEMA_VERSION,
            });
        }
        for (version, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
            let tx = self.conn.transaction().map_err(&err)?;
            tx.execute_batch(sql).map_err(&err)?;
            let next = u32::try_from(version + 1).unwrap_or(u32::MAX);
            tx.pragma_update(None, "user_version", next).map_err(&err)?;
            tx.commit().map_err(&err)?;
        }
        Ok(())
    }

    fn parse_state(&self, id: i64, state: String) -> Result<FileState, LedgerError> {
        match state.as_str() {
            "due" => Ok(FileState::Due),
            "sent-pending" => Ok(FileState::SentPending),
            "done" => Ok(FileState::Done),
            _ => Err(LedgerError::BadState {
                path: self.path.clone(),
                id,
                state,
            }),
        }
    }

    fn sql(&self) -> impl Fn(rusqlite::Error) -> LedgerError + use<> {
        let path = self.path.clone();
        move |source| LedgerError::Sql {
            path: path.clone(),
            source,
        }
    }
}

/// Marker name of the last ack.
const LAST_ACK: &str = "last-ack";

/// Schema migrations; entry `n` takes `user_version` from `n` to `n + 1`.
/// Append only: never edit a migration that has shipped.
const MIGRATIONS: &[&str] = &[
    // 1: files and markers. Times are milliseconds since the Unix epoch.
    "CREATE TABLE files (
         id INTEGER PRIMARY KEY,
         root TEXT NOT NULL,
         rel_path BLOB NOT NULL,
         size INTEGER NOT NULL,
         mtime_ns INTEGER NOT NULL,
         inode INTEGER NOT NULL,
         generation INTEGER NOT NULL DEFAULT 1,
         sha256 BLOB,
         state TEXT NOT NULL CHECK (state IN ('due', 'sent-pending', 'done')),
         attempts INTEGER NOT NULL DEFAULT 0,
         last_error TEXT,
         last_error_at INTEGER,
         next_attempt_at INTEGER,
         acked_at INTEGER,
         first_seen INTEGER NOT NULL,
         due_since INTEGER NOT NULL,
         last_seen INTEGER NOT NULL,
         UNIQUE (root, rel_path)
     ) STRICT;
     CREATE INDEX files_by_state ON files (state, due_since, id);
     CREATE INDEX files_by_last_seen ON files (root, last_seen);
     CREATE TABLE markers (
         name TEXT PRIMARY KEY,
         value INTEGER NOT NULL
     ) STRICT;",
    // 2: whether the current content was offered and not yet acked (rows
    // left in flight by the previous agent were).
    "ALTER TABLE files ADD COLUMN offered INTEGER NOT NULL DEFAULT 0;
     UPDATE files SET offered = 1 WHERE state = 'sent-pending';",
    // 3: whether a done file still waits for its BACKUP_DONE line and its
    // post-ack action.
    "ALTER TABLE files ADD COLUMN post_ack_pending INTEGER NOT NULL DEFAULT 0;
     CREATE INDEX files_post_ack_pending ON files (acked_at, id) WHERE post_ack_pending = 1;",
    // 4: the ctime (0: not yet seen, not compared), and whether a due
    // file's content must be compared with the last acked hash (`sha256`,
    // from now on kept when the file changes) before it is sent.
    "ALTER TABLE files ADD COLUMN ctime_ns INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE files ADD COLUMN verify INTEGER NOT NULL DEFAULT 0;",
    // 5: whether the collector refused the current content for good (not
    // offered again until the file changes).
    "ALTER TABLE files ADD COLUMN refused INTEGER NOT NULL DEFAULT 0;",
];

fn observe_in(
    tx: &Transaction<'_>,
    root: &str,
    rel_path: &Path,
    identity: Identity,
    written: bool,
    now: i64,
) -> rusqlite::Result<Observed> {
    let rel = rel_path.as_os_str().as_bytes();
    let size = to_sql_u64(identity.size);
    let inode = to_sql_u64(identity.inode);
    let known: Option<(i64, i64, i64, i64, i64, String)> = tx
        .prepare_cached(
            "SELECT id, size, mtime_ns, ctime_ns, inode, state
             FROM files WHERE root = ?1 AND rel_path = ?2",
        )?
        .query_row(params![root, rel], |row| {
            Ok((
                row.get(0)?,
                row.get(1)?,
                row.get(2)?,
                row.get(3)?,
                row.get(4)?,
                row.get(5)?,
            ))
        })
        .optional()?;
    let Some((id, old_size, old_mtime, old_ctime, old_inode, state)) = known else {
        tx.prepare_cached(
            "INSERT INTO files (root, rel_path, size, mtime_ns, ctime_ns, inode, state,
                                first_seen, due_since, last_seen)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'due', ?7, ?7, ?7)",
        )?
        .execute(params![
            root,
            rel,
            size,
            identity.mtime_ns,
            identity.ctime_ns,
            inode,
            now
        ])?;
        return Ok(Observed::New);
    };
    // A row from before ctimes were recorded compares without one.
    let same = (old_size, old_mtime, old_inode) == (size, identity.mtime_ns, inode)
        && (old_ctime == 0 || old_ctime == identity.ctime_ns);
    // A due file is read as it is when it goes: a write needs no new
    // generation. One on the wire or backed up may have new content.
    if same && !(written && state != "due") {
        tx.prepare_cached("UPDATE files SET last_seen = ?2, ctime_ns = ?3 WHERE id = ?1")?
            .execute(params![id, now, identity.ctime_ns])?;
        return Ok(Observed::Unchanged);
    }
    // Maybe new content: a new generation, due now, with a clean slate of
    // attempts (the old errors were about the old content). The hash of the
    // last acked content stays, and the new content is compared with it.
    tx.prepare_cached(
        "UPDATE files SET size = ?2, mtime_ns = ?3, ctime_ns = ?4, inode = ?5,
             generation = generation + 1, verify = (sha256 IS NOT NULL),
             state = 'due', offered = 0, refused = 0, attempts = 0, last_error = NULL,
             last_error_at = NULL, next_attempt_at = NULL,
             due_since = ?6, last_seen = ?6
         WHERE id = ?1",
    )?
    .execute(params![
        id,
        size,
        identity.mtime_ns,
        identity.ctime_ns,
        inode,
        now
    ])?;
    Ok(if state == "done" {
        Observed::ChangedAfterBackup
    } else {
        Observed::Changed
    })
}

/// Records a failure of the generation `key`; `retry_at` `None` is a
/// refusal for good (`refused`: not offered until the file changes).
fn mark_failed_in(
    tx: &Transaction<'_>,
    key: FileKey,
    error: &str,
    now: i64,
    retry_at: Option<i64>,
) -> rusqlite::Result<bool> {
    let changed = tx
        .prepare_cached(
            "UPDATE files SET state = 'due', attempts = attempts + 1, last_error = ?3,
                 last_error_at = ?4, next_attempt_at = ?5, refused = (?5 IS NULL)
             WHERE id = ?1 AND generation = ?2 AND state <> 'done'",
        )?
        .execute(params![key.id, key.generation, error, now, retry_at])?;
    Ok(changed == 1)
}

fn vanished_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<(Vanished, bool)> {
    let state: String = row.get(4)?;
    Ok((
        Vanished {
            root: row.get(0)?,
            rel_path: path_from_blob(row.get(1)?),
            size: from_sql_u64(row.get(2)?),
            due_since: from_ms(row.get(3)?),
        },
        state != "done",
    ))
}

fn set_marker_in(conn: &Connection, name: &str, value: i64) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO markers (name, value) VALUES (?1, ?2)
         ON CONFLICT (name) DO UPDATE SET value = excluded.value",
    )?
    .execute(params![name, value])?;
    Ok(())
}

/// An [`AckedFile`] from a row of `root, rel_path, size, mtime_ns,
/// ctime_ns, inode`.
fn acked_file(row: &rusqlite::Row<'_>) -> rusqlite::Result<AckedFile> {
    Ok(AckedFile {
        root: row.get(0)?,
        rel_path: path_from_blob(row.get(1)?),
        identity: Identity {
            size: from_sql_u64(row.get(2)?),
            mtime_ns: row.get(3)?,
            ctime_ns: row.get(4)?,
            inode: from_sql_u64(row.get(5)?),
        },
    })
}

fn path_from_blob(bytes: Vec<u8>) -> PathBuf {
    PathBuf::from(OsStr::from_bytes(&bytes))
}

/// SQLite integers are signed; sizes and inodes are stored bit for bit.
fn to_sql_u64(value: u64) -> i64 {
    i64::from_ne_bytes(value.to_ne_bytes())
}

fn from_sql_u64(value: i64) -> u64 {
    u64::from_ne_bytes(value.to_ne_bytes())
}

fn to_ms(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_millis()).map_or(i64::MIN, |ms| -ms),
    }
}

fn from_ms(ms: i64) -> SystemTime {
    let magnitude = Duration::from_millis(ms.unsigned_abs());
    if ms >= 0 {
        UNIX_EPOCH + magnitude
    } else {
        UNIX_EPOCH - magnitude
    }
}

#[cfg(test)]
mod tests;
