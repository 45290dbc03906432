//! The agent's counters (atomics the daemon's tasks share) and their
//! Prometheus exposition, together with what is read when scraped: the due
//! backlog and last ack from the ledger, and who holds `HALT_FLAG`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use ferry_common::metrics::{Counts, Exposition, Kind, Label};

use crate::halt_flag::{self, HaltFlag};
use crate::ledger::Ledger;

/// Logs a warning and counts it under its kind of
/// `ferry_agent_errors_total`, in one call, so that no logged error goes
/// uncounted: `warn_counted!(metrics, ErrorKind::Ledger, %error, "...")`
/// takes the metrics, the kind, then what `tracing::warn!` takes.
#[macro_export]
macro_rules! warn_counted {
    ($metrics:expr, $kind:expr, $($event:tt)+) => {{
        $metrics.error($kind);
        ::tracing::warn!($($event)+);
    }};
}

/// What went wrong, as the `kind` label of `ferry_agent_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// No collector endpoint could be reached.
    Connect,
    /// A batch broke off (link lost, collector error); it is resent.
    Link,
    /// The collector did not store a file; it is retried later.
    File,
    /// The ledger could not be read or written.
    Ledger,
    /// `HALT_FLAG` could not be raised or read.
    HaltFlag,
    /// `DUE_BACKUP` or `BACKUP_DONE` could not be written.
    LegacyFiles,
    /// The post-ack delete or move failed.
    AfterAck,
    /// A root could not be scanned.
    Scan,
}

impl Label for ErrorKind {
    const ALL: &'static [Self] = &[
        ErrorKind::Connect,
        ErrorKind::Link,
        ErrorKind::File,
        ErrorKind::Ledger,
        ErrorKind::HaltFlag,
        ErrorKind::LegacyFiles,
        ErrorKind::AfterAck,
        ErrorKind::Scan,
    ];

    fn label(self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::Link => "link",
            ErrorKind::File => "file",
            ErrorKind::Ledger => "ledger",
            ErrorKind::HaltFlag => "halt_flag",
            ErrorKind::LegacyFiles => "legacy_files",
            ErrorKind::AfterAck => "after_ack",
            ErrorKind::Scan => "scan",
        }
    }
}

/// Counters since the agent started.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Files the collector acknowledged (stored or already held).
    pub files_sent: AtomicU64,
    /// Bytes of those files.
    pub bytes_sent: AtomicU64,
    /// Bytes of file content put on the wire (resumed prefixes and files
    /// the collector already held cost none).
    pub bytes_transferred: AtomicU64,
    /// Batch acks received.
    pub acks: AtomicU64,
    /// Files put back for a later attempt: ones that failed for a passing
    /// reason and every file of a batch that broke off.
    pub retries: AtomicU64,
    /// Files the collector refused for good (not offered again until they
    /// change).
    pub refused: AtomicU64,
    /// Whether a session with a collector is open.
    pub connected: AtomicBool,
    /// Finished files held back by `min_age_secs` (set by the watcher).
    pub held_files: AtomicU64,
    /// Roots that do not exist (yet), waited for by the watcher.
    pub missing_roots: AtomicU64,
    /// Whether the agent's state can be written; what waits to be
    /// recorded (shared by the watcher and the sender with the counters).
    pub state_disk: crate::state_disk::StateDisk,
    errors: Counts<ErrorKind>,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Adds `n` to `counter`.
    pub fn add(counter: &AtomicU64, n: u64) {
        ferry_common::metrics::add(counter, n);
    }

    /// Counts an error (see [`warn_counted`](crate::warn_counted) to log it
    /// in the same call).
    pub fn error(&self, kind: ErrorKind) {
        self.errors.count(kind);
    }

    /// Errors of `kind` so far.
    pub fn errors(&self, kind: ErrorKind) -> u64 {
        self.errors.get(kind)
    }

    pub fn set_connected(&self, connected: bool) {
        self.connected.store(connected, Ordering::Relaxed);
    }

    /// A line for the service manager's status.
    pub fn summary(&self) -> String {
        let link = if self.connected.load(Ordering::Relaxed) {
            "connected"
        } else {
            "not connected"
        };
        format!(
            "{link}; {} files ({} bytes) sent since start",
            self.files_sent.load(Ordering::Relaxed),
            self.bytes_sent.load(Ordering::Relaxed)
        )
    }
}

/// Who holds `HALT_FLAG`, as far as sending is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Halt {
    /// Nobody, or this agent itself.
    No,
    /// An operator's `ferry-agent halt`.
    Operator,
    /// Another program (the legacy indexer, a central job).
    Other,
}

/// What is read when scraped, besides the counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readings {
    pub due_files: Option<u64>,
    pub due_bytes: Option<u64>,
    /// Due files that failed at least once.
    pub failing: Option<u64>,
    /// Due files refused for good, waiting for a change.
    pub refused: Option<u64>,
    pub last_ack: Option<SystemTime>,
    pub halt: Option<Halt>,
}

/// Renders the exposition from the counters and fresh readings of the
/// ledger and the flag; cheap to share.
#[derive(Debug)]
pub struct Source {
    pub metrics: Arc<Metrics>,
    ledger_path: PathBuf,
    flag: HaltFlag,
    /// A read-only connection of its own, opened on first use.
    ledger: Mutex<Option<Ledger>>,
}

impl Source {
    pub fn new(metrics: Arc<Metrics>, ledger_path: PathBuf, flag: HaltFlag) -> Arc<Self> {
        Arc::new(Self {
            metrics,
            ledger_path,
            flag,
            ledger: Mutex::new(None),
        })
    }

    /// The exposition text (reads the ledger: call off the async threads).
    pub fn render_blocking(&self) -> String {
        render(&self.metrics, &self.read())
    }

    /// The exposition text, read on a blocking thread.
    pub async fn render(self: &Arc<Self>) -> String {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.render_blocking())
            .await
            .unwrap_or_default()
    }

    fn read(&self) -> Readings {
        let mut guard = self.ledger.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            *guard = Ledger::open_read_only(&self.ledger_path).ok();
        }
        let summary = guard.as_ref().and_then(|l| l.due_summary().ok());
        let last_ack = guard.as_ref().and_then(|l| l.last_ack().ok().flatten());
        if summary.is_none() {
            // Reopen next time.
            *guard = None;
        }
        drop(guard);
        let halt = self.flag.holder().ok().map(|holder| match holder {
            None => Halt::No,
            Some(h) if h.is_operator_halt() => Halt::Operator,
            Some(h)
                if h.owner.as_deref() == Some(halt_flag::OWNER)
                    && h.pid == Some(std::process::id()) =>
            {
                Halt::No
            }
            Some(_) => Halt::Other,
        });
        Readings {
            due_files: summary.as_ref().map(|s| s.files),
            due_bytes: summary.as_ref().map(|s| s.bytes),
            failing: summary.as_ref().map(|s| s.failing),
            refused: summary.as_ref().map(|s| s.refused),
            last_ack,
            halt,
        }
    }
}

/// The exposition text.
pub fn render(m: &Metrics, r: &Readings) -> String {
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let mut e = Exposition::new();
    e.family(
        "ferry_agent_build_info",
        Kind::Gauge,
        "Version of the running agent",
    )
    .sample(&[("version", env!("CARGO_PKG_VERSION"))], 1.0);
    e.counter(
        "ferry_agent_files_sent_total",
        "Files the collector acknowledged (stored, or already held)",
        load(&m.files_sent),
    );
    e.counter(
        "ferry_agent_bytes_sent_total",
        "Bytes of the files the collector acknowledged",
        load(&m.bytes_sent),
    );
    e.counter(
        "ferry_agent_bytes_transferred_total",
        "Bytes of file content put on the wire",
        load(&m.bytes_transferred),
    );
    e.counter(
        "ferry_agent_acks_total",
        "Batch acknowledgements received",
        load(&m.acks),
    );
    e.counter(
        "ferry_agent_retries_total",
        "Files put back for a later attempt",
        load(&m.retries),
    );
    e.counter(
        "ferry_agent_refused_total",
        "Files the collector refused for good (a retry cannot succeed)",
        load(&m.refused),
    );
    m.errors
        .expose(&mut e, "ferry_agent_errors_total", "Errors by kind", "kind");
    e.gauge(
        "ferry_agent_connected",
        "Whether a session with a collector is open",
        u64::from(m.connected.load(Ordering::Relaxed)),
    );
    e.gauge(
        "ferry_agent_held_files",
        "Finished files held back until seen unchanged for min_age_secs",
        load(&m.held_files),
    );
    e.gauge(
        "ferry_agent_missing_roots",
        "Configured roots that do not exist (yet); each is picked up when it appears",
        load(&m.missing_roots),
    );
    if let (Some(files), Some(bytes), Some(failing)) = (r.due_files, r.due_bytes, r.failing) {
        e.gauge(
            "ferry_agent_due_files",
            "Files not yet acknowledged by the collector",
            files,
        );
        e.gauge("ferry_agent_due_bytes", "Bytes of the due files", bytes);
        e.gauge(
            "ferry_agent_failing_files",
            "Due files that failed at least once",
            failing,
        );
    }
    if let Some(refused) = r.refused {
        e.gauge(
            "ferry_agent_refused_files",
            "Due files the collector refused for good, not offered again until they change",
            refused,
        );
    }
    let last_ack = r
        .last_ack
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    e.gauge(
        "ferry_agent_last_ack_timestamp_seconds",
        "When the collector last acknowledged a file (Unix seconds; 0: never)",
        last_ack,
    );
    if let Some(halt) = r.halt {
        e.family(
            "ferry_agent_halted",
            Kind::Gauge,
            "Whether HALT_FLAG, held by an operator or another program, stops sending",
        )
        .sample(
            &[("by", "operator")],
            f64::from(u8::from(halt == Halt::Operator)),
        )
        .sample(&[("by", "other")], f64::from(u8::from(halt == Halt::Other)));
    }
    e.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_source_reads_the_ledger_and_the_flag() {
        let dir = tempfile::tempdir().unwrap();
        let ledger_path = dir.path().join("ledger.sqlite");
        drop(Ledger::open(&ledger_path).unwrap());
        let flag = HaltFlag::new(dir.path().join("HALT_FLAG"), Duration::from_secs(60));
        let source = Source::new(Metrics::new(), ledger_path, flag.clone());
        let text = source.render_blocking();
        assert!(text.contains("\nferry_agent_due_files 0\n"), "{text}");
        assert!(
            text.contains("\nferry_agent_halted{by=\"operator\"} 0\n"),
            "{text}"
        );
        flag.raise_operator_halt(SystemTime::now()).unwrap();
        let text = source.render_blocking();
        assert!(
            text.contains("\nferry_agent_halted{by=\"operator\"} 1\n"),
            "{text}"
        );
    }
}
