//! One applier per catalog: feeds journal records into its store in batches,
//! retrying with backoff while the store is down, so a catalog that returns
//! catches up by itself.

use std::sync::Arc;
use std::time::Duration;

use ferry_common::backoff::Backoff;
use tokio::sync::{Notify, watch};
use tracing::{debug, info, warn};

use crate::journal::Journal;
use crate::store::CatalogStore;

/// Records applied per transaction.
pub const APPLY_BATCH: usize = 2000;

/// How an applier is doing, for status and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplierState {
    /// Last journal sequence number the catalog holds.
    pub position: u64,
    /// The last error, while the catalog is failing.
    pub error: Option<String>,
}

/// Applies journal records to `store` until `shutdown` turns true. `wake` is
/// notified whenever the journal grows.
pub async fn run<S: CatalogStore>(
    store: S,
    journal: Journal,
    wake: Arc<Notify>,
    state: watch::Sender<ApplierState>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
    let name = store.name().to_owned();
    let mut failing = false;
    while !*shutdown.borrow() {
        match apply_all(&store, &journal, &wake, &state, &mut shutdown).await {
            Ok(()) => return,
            Err(error) => {
                if !failing {
                    warn!(catalog = %name, %error, "catalog unavailable; the journal keeps its records");
                }
                failing = true;
                state.send_modify(|s| s.error = Some(error.clone()));
                let delay = backoff.next_delay();
                debug!(catalog = %name, ?delay, "retrying catalog");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    _ = shutdown.wait_for(|stop| *stop) => return,
                }
                continue;
            }
        }
    }
}

/// Runs until shutdown (Ok) or the first store error (Err).
async fn apply_all<S: CatalogStore>(
    store: &S,
    journal: &Journal,
    wake: &Notify,
    state: &watch::Sender<ApplierState>,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), String> {
    let name = store.name().to_owned();
    store.migrate().await.map_err(|e| e.to_string())?;
    let mut position = store.position().await.map_err(|e| e.to_string())?;
    if state.borrow().error.is_some() {
        info!(catalog = %name, position, "catalog back; catching up");
    }
    state.send_modify(|s| {
        s.position = position;
        s.error = None;
    });
    loop {
        // Register interest before reading, so an append between the read
        // and the wait is not missed.
        let woken = wake.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let records = blocking(journal, move |j| j.read_after(position, APPLY_BATCH)).await?;
        if records.is_empty() {
            blocking(journal, {
                let name = name.clone();
                move |j| j.applied(&name, position)
            })
            .await?;
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
        blocking(journal, {
            let name = name.clone();
            move |j| j.applied(&name, position)
        })
        .await?;
        state.send_modify(|s| s.position = position);
    }
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
