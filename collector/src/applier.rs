//! One applier per catalog: feeds journal records into its store in batches,
//! retrying with backoff while the store is down, so a catalog that returns
//! catches up by itself.
//!
//! Every outage's start and end is logged, and the catalog's health (state,
//! since when, last error, outages, backfill progress) is kept in the
//! journal, where `status` (another process) reads it.
//!
//! A catalog whose applied position is behind what the journal has pruned
//! lacks rows that only the other catalog still holds: it was replaced by
//! an empty database, or restored from an old dump. Before applying
//! anything, the applier copies it every row of the other catalog it lacks
//! (a page at a time, idempotently, so a backfill cut short is simply done
//! again), then moves its position to the pruned one. The catalog's own
//! position is read again before each batch and each idle second, so a
//! catalog replaced while the collector runs is found as well; the
//! journal's position for it is lowered to match, so it keeps what the
//! catalog lacks and the lag shows it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_common::backoff::Backoff;
use ferry_common::clock;
use tokio::sync::{Notify, watch};
use tracing::{debug, info, warn};

use crate::journal::{Backfill, CatalogHealth, CatalogState, Journal};
use crate::store::CatalogStore;

/// Records applied per transaction.
pub const APPLY_BATCH: usize = 2000;

/// Rows copied per page of a backfill.
pub const BACKFILL_PAGE: usize = 2000;

/// How often a running backfill logs its progress.
const BACKFILL_LOG_EVERY: Duration = Duration::from_secs(10);

/// How an applier is doing, for status and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplierState {
    /// Last journal sequence number the catalog holds.
    pub position: u64,
    /// State, since when, last error, outages, backfill.
    pub health: CatalogHealth,
}

impl ApplierState {
    /// A catalog not tried yet.
    pub fn starting(health: CatalogHealth) -> Self {
        Self {
            position: 0,
            health,
        }
    }

    /// Whether the catalog is reachable (applying or backfilling).
    pub fn is_up(&self) -> bool {
        matches!(
            self.health.state,
            CatalogState::Up | CatalogState::Backfilling
        )
    }
}

/// Where an applier reports its health: the watch (in-process readers)
/// and the journal (the `status` command).
struct Reporter<'a> {
    name: &'a str,
    journal: &'a Journal,
    state: &'a watch::Sender<ApplierState>,
}

impl Reporter<'_> {
    fn health(&self) -> CatalogHealth {
        self.state.borrow().health.clone()
    }

    /// Marks the catalog up (applying), unless it is already.
    async fn up(&self) {
        if self.health().state != CatalogState::Up {
            let now = clock::now_ms();
            self.set(|h| {
                h.state = CatalogState::Up;
                h.since_ms = now;
            })
            .await;
        }
    }

    async fn set(&self, change: impl FnOnce(&mut CatalogHealth)) {
        let mut health = self.health();
        change(&mut health);
        self.state.send_modify(|s| s.health = health.clone());
        let name = self.name.to_owned();
        let kept = blocking(self.journal, move |j| {
            j.set_health(&name, &health, clock::now_ms())
        })
        .await;
        if let Err(error) = kept {
            debug!(catalog = %self.name, %error, "cannot keep the catalog's health in the journal");
        }
    }
}

/// Applies journal records to `store` until `shutdown` turns true, filling
/// it from `other` (the other catalog) first when it lacks pruned rows.
/// `wake` is notified whenever the journal grows.
pub async fn run<S: CatalogStore>(
    store: S,
    other: S,
    journal: Journal,
    wake: Arc<Notify>,
    state: watch::Sender<ApplierState>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
    let name = store.name().to_owned();
    let reporter = Reporter {
        name: &name,
        journal: &journal,
        state: &state,
    };
    // Outages counted before this start are kept.
    if let Ok(Some(kept)) = blocking(&journal, {
        let name = name.clone();
        move |j| j.health(&name)
    })
    .await
    {
        reporter
            .set(|h| {
                h.outages = kept.outages;
                h.error = kept.error;
                h.error_at_ms = kept.error_at_ms;
            })
            .await;
    }
    let mut outage: Option<(Instant, u32)> = None;
    while !*shutdown.borrow() {
        let result = apply_all(&store, &other, &reporter, &wake, &mut shutdown, &mut outage).await;
        let error = match result {
            Ok(()) => break,
            Err(error) => error,
        };
        match &mut outage {
            None => {
                warn!(catalog = %name, %error, "catalog outage began; the journal keeps its records");
                outage = Some((Instant::now(), 1));
                let now = clock::now_ms();
                reporter
                    .set(|h| {
                        h.state = CatalogState::Down;
                        h.since_ms = now;
                        h.outages += 1;
                        h.error = Some(error.clone());
                        h.error_at_ms = Some(now);
                    })
                    .await;
            }
            Some((_, failures)) => {
                *failures += 1;
                debug!(catalog = %name, %error, "catalog still failing");
                let now = clock::now_ms();
                reporter
                    .set(|h| {
                        h.state = CatalogState::Down;
                        h.error = Some(error.clone());
                        h.error_at_ms = Some(now);
                    })
                    .await;
            }
        }
        let delay = backoff.next_delay();
        debug!(catalog = %name, ?delay, "retrying catalog");
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = shutdown.wait_for(|stop| *stop) => break,
        }
    }
    let now = clock::now_ms();
    reporter
        .set(|h| {
            h.state = CatalogState::Stopped;
            h.since_ms = now;
        })
        .await;
}

/// Runs until shutdown (Ok) or the first store error (Err). Ends an
/// outage in progress once the catalog answers.
async fn apply_all<S: CatalogStore>(
    store: &S,
    other: &S,
    reporter: &Reporter<'_>,
    wake: &Notify,
    shutdown: &mut watch::Receiver<bool>,
    outage: &mut Option<(Instant, u32)>,
) -> Result<(), String> {
    let name = reporter.name;
    let journal = reporter.journal;
    store.migrate().await.map_err(|e| e.to_string())?;
    let mut position = store.position().await.map_err(|e| e.to_string())?;
    if let Some((began, failures)) = outage.take() {
        info!(
            catalog = %name,
            position,
            seconds = began.elapsed().as_secs(),
            failures,
            "catalog outage ended; catching up"
        );
    }
    position = catch_up(store, other, reporter, position).await?;
    reporter.up().await;
    loop {
        // Register interest before reading, so an append between the read
        // and the wait is not missed.
        let woken = wake.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        // The catalog's own position, read again before each batch and
        // each idle second: a catalog replaced under the running collector
        // (an empty database given its tables, another file) holds less.
        let held = store.position().await.map_err(|e| e.to_string())?;
        if held < position {
            warn!(catalog = %name, expected = position, held, "catalog holds less than it had applied (replaced or restored?)");
            position = catch_up(store, other, reporter, held).await?;
            reporter.up().await;
        }
        let records = blocking(journal, move |j| j.read_after(position, APPLY_BATCH)).await?;
        if records.is_empty() {
            let catalog = name.to_owned();
            blocking(journal, move |j| j.applied(&catalog, position)).await?;
            tokio::select! {
                () = woken => {}
                // A periodic look also covers records appended by another
                // process sharing the journal.
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.wait_for(|stop| *stop) => return Ok(()),
            }
            continue;
        }
        let last = records.last().map_or(position, |(seq, _)| *seq);
        let count = records.len();
        store.apply(records).await.map_err(|e| e.to_string())?;
        position = last;
        debug!(catalog = %name, count, position, "applied");
        let catalog = name.to_owned();
        blocking(journal, move |j| j.applied(&catalog, position)).await?;
        reporter.state.send_modify(|s| s.position = position);
    }
}

/// Starts `store` again from `held`, the position it holds: the journal
/// stops pruning what the catalog lacks, and when some of it was pruned
/// already, the catalog is backfilled from `other`. Returns the position
/// to apply after.
async fn catch_up<S: CatalogStore>(
    store: &S,
    other: &S,
    reporter: &Reporter<'_>,
    held: u64,
) -> Result<u64, String> {
    let catalog = reporter.name.to_owned();
    // Rewound before looking at what was pruned, so nothing beyond `held`
    // is pruned in between.
    let pruned = blocking(reporter.journal, move |j| {
        j.rewind(&catalog, held)?;
        j.pruned_through()
    })
    .await?;
    let position = if held < pruned {
        backfill(store, other, reporter, held, pruned).await?
    } else {
        held
    };
    reporter.state.send_modify(|s| s.position = position);
    Ok(position)
}

/// Copies into `store` every row of `other` it lacks, then moves its
/// position to `pruned`; returns the new position.
async fn backfill<S: CatalogStore>(
    store: &S,
    other: &S,
    reporter: &Reporter<'_>,
    position: u64,
    pruned: u64,
) -> Result<u64, String> {
    let name = reporter.name;
    let source = other.name();
    let context = |e: crate::store::StoreError| format!("backfill from {source}: {e}");
    let source_position = other.position().await.map_err(context)?;
    let total = other.count_rows().await.map_err(context)?;
    warn!(
        catalog = %name,
        position,
        pruned,
        from = %source,
        rows = total,
        "catalog lacks rows the journal no longer holds (replaced or restored?); copying them from the other catalog"
    );
    if source_position < pruned {
        warn!(
            catalog = %name,
            from = %source,
            source_position,
            pruned,
            "the other catalog lacks some of those rows too; run `reconcile` once both are complete"
        );
    }
    let mut progress = Backfill {
        copied: 0,
        scanned: 0,
        total,
    };
    let now = clock::now_ms();
    reporter
        .set(|h| {
            h.state = CatalogState::Backfilling;
            h.since_ms = now;
            h.backfill = Some(progress);
        })
        .await;
    let mut after = 0;
    let mut logged = Instant::now();
    loop {
        let page = other
            .rows_after(after, BACKFILL_PAGE)
            .await
            .map_err(context)?;
        let Some((last, _)) = page.last() else {
            break;
        };
        after = *last;
        progress.scanned += page.len() as u64;
        progress.copied += store
            .insert_rows(page.into_iter().map(|(_, row)| row).collect())
            .await
            .map_err(|e| e.to_string())?;
        progress.total = progress.total.max(progress.scanned);
        reporter.set(|h| h.backfill = Some(progress)).await;
        if logged.elapsed() >= BACKFILL_LOG_EVERY {
            logged = Instant::now();
            info!(catalog = %name, from = %source, copied = progress.copied, scanned = progress.scanned, total = progress.total, "backfilling");
        }
    }
    store
        .mark_applied(pruned)
        .await
        .map_err(|e| e.to_string())?;
    info!(
        catalog = %name,
        from = %source,
        copied = progress.copied,
        scanned = progress.scanned,
        position = pruned,
        "backfill done"
    );
    Ok(position.max(pruned))
}

async fn blocking<T: Send + 'static>(
    journal: &Journal,
    f: impl FnOnce(&Journal) -> Result<T, crate::journal::JournalError> + Send + 'static,
) -> Result<T, String> {
    let journal = journal.clone();
    tokio::task::spawn_blocking(move || f(&journal))
        .await
        .map_err(|e| format!("journal worker failed: {e}"))?
        .map_err(|e| e.to_string())
}
