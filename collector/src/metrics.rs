//! The collector's counters (atomics shared by every session) and their
//! Prometheus exposition, together with what is read when scraped: each
//! catalog's journal lag and state, and the repository's free space.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ferry_common::metrics::{Counts, Exposition, Kind};
use ferry_common::protocol::ErrorCode;

/// Counters since the collector started.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Files stored (new catalog records journaled).
    pub files_stored: AtomicU64,
    /// Bytes of those files.
    pub bytes_stored: AtomicU64,
    /// Files offered or committed that the repository already held.
    pub already_stored: AtomicU64,
    /// Bytes of file content received in chunks.
    pub bytes_received: AtomicU64,
    /// Batches acknowledged.
    pub batches: AtomicU64,
    /// Station sessions running now.
    pub sessions: AtomicU64,
    /// Station sessions opened.
    pub sessions_total: AtomicU64,
    /// Errors and refusals sent to stations, by code.
    errors: Counts<ErrorCode>,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Adds `n` to `counter`.
    pub fn add(counter: &AtomicU64, n: u64) {
        ferry_common::metrics::add(counter, n);
    }

    /// Counts an error or refusal sent to a station.
    pub fn error(&self, code: ErrorCode) {
        self.errors.count(code);
    }

    /// Errors sent with `code` so far.
    pub fn errors(&self, code: ErrorCode) -> u64 {
        self.errors.get(code)
    }

    /// Counts a session as running until the guard drops.
    pub fn session(self: &Arc<Self>) -> SessionGauge {
        Self::add(&self.sessions, 1);
        Self::add(&self.sessions_total, 1);
        SessionGauge(self.clone())
    }

    /// A line for the service manager's status.
    pub fn summary(&self) -> String {
        format!(
            "{} sessions; {} files ({} bytes) stored since start",
            self.sessions.load(Ordering::Relaxed),
            self.files_stored.load(Ordering::Relaxed),
            self.bytes_stored.load(Ordering::Relaxed)
        )
    }
}

/// Holds one count of [`Metrics::sessions`].
#[derive(Debug)]
pub struct SessionGauge(Arc<Metrics>);

impl Drop for SessionGauge {
    fn drop(&mut self) {
        self.0.sessions.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One catalog as seen when scraped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogView {
    pub name: &'static str,
    /// Whether it answers (its applier is applying or backfilling).
    pub up: bool,
    /// Journal records it has not applied yet (`None` if the journal could
    /// not be read).
    pub lag: Option<u64>,
    /// Whether rows the journal no longer holds are being copied into it
    /// from the other catalog.
    pub backfilling: bool,
    /// Rows of the other catalog the running backfill has not looked at.
    pub backfill_unseen: u64,
    /// Unix milliseconds when its current state (up, down, backfilling)
    /// began.
    pub since_ms: i64,
    /// Outages since the journal was created.
    pub outages: u64,
}

/// What is read when scraped, besides the counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Readings {
    pub catalogs: Vec<CatalogView>,
    /// Free bytes of the repository's filesystem available to the
    /// collector, if known.
    pub repository_free: Option<u64>,
    /// Station connections the listener refused (TLS or ZMTP handshake).
    pub connections_refused: u64,
}

/// The exposition text.
pub fn render(m: &Metrics, readings: &Readings) -> String {
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let mut e = Exposition::new();
    e.family(
        "ferry_collector_build_info",
        Kind::Gauge,
        "Version of the running collector",
    )
    .sample(&[("version", env!("CARGO_PKG_VERSION"))], 1.0);
    e.counter(
        "ferry_collector_files_stored_total",
        "Files stored in the repository and journaled for the catalogs",
        load(&m.files_stored),
    );
    e.counter(
        "ferry_collector_bytes_stored_total",
        "Bytes of the files stored",
        load(&m.bytes_stored),
    );
    e.counter(
        "ferry_collector_files_already_stored_total",
        "Files answered as already stored (same station, path and content)",
        load(&m.already_stored),
    );
    e.counter(
        "ferry_collector_bytes_received_total",
        "Bytes of file content received from stations",
        load(&m.bytes_received),
    );
    e.counter(
        "ferry_collector_batches_total",
        "Batches acknowledged to stations",
        load(&m.batches),
    );
    e.gauge(
        "ferry_collector_sessions",
        "Station sessions open now",
        load(&m.sessions),
    );
    e.counter(
        "ferry_collector_sessions_total",
        "Station sessions opened",
        load(&m.sessions_total),
    );
    e.counter(
        "ferry_collector_connections_refused_total",
        "Station connections refused at the TLS or ZMTP handshake (wrong, unknown or revoked certificate, another station's identity, too slow)",
        readings.connections_refused,
    );
    m.errors.expose(
        &mut e,
        "ferry_collector_errors_total",
        "Errors and refusals sent to stations, by kind",
        "kind",
    );
    e.family(
        "ferry_collector_catalog_up",
        Kind::Gauge,
        "Whether the catalog answers: its applier is applying or backfilling \
         (a down catalog loses nothing: the journal keeps its records)",
    );
    for c in &readings.catalogs {
        e.sample(&[("catalog", c.name)], if c.up { 1.0 } else { 0.0 });
    }
    e.family(
        "ferry_collector_journal_lag_records",
        Kind::Gauge,
        "Journal records the catalog has not applied yet",
    );
    for c in &readings.catalogs {
        if let Some(lag) = c.lag {
            e.sample(&[("catalog", c.name)], lag as f64);
        }
    }
    e.family(
        "ferry_collector_catalog_state_since_timestamp_seconds",
        Kind::Gauge,
        "When the catalog's current state (up, down, backfilling) began",
    );
    for c in &readings.catalogs {
        e.sample(&[("catalog", c.name)], c.since_ms as f64 / 1000.0);
    }
    e.family(
        "ferry_collector_catalog_outages_total",
        Kind::Counter,
        "Outages of the catalog since the journal was created",
    );
    for c in &readings.catalogs {
        e.sample(&[("catalog", c.name)], c.outages as f64);
    }
    e.family(
        "ferry_collector_catalog_backfilling",
        Kind::Gauge,
        "Whether rows the journal no longer holds are being copied into the \
         catalog from the other one",
    );
    for c in &readings.catalogs {
        e.sample(
            &[("catalog", c.name)],
            if c.backfilling { 1.0 } else { 0.0 },
        );
    }
    e.family(
        "ferry_collector_catalog_backfill_unseen_rows",
        Kind::Gauge,
        "Rows of the other catalog the running backfill has not looked at yet",
    );
    for c in &readings.catalogs {
        e.sample(&[("catalog", c.name)], c.backfill_unseen as f64);
    }
    if let Some(free) = readings.repository_free {
        e.gauge(
            "ferry_collector_repository_free_bytes",
            "Free bytes of the repository's filesystem available to the collector",
            free,
        );
    }
    e.finish()
}
