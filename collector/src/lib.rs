//! The Ferry collector: receives stations' files over ZMQ-over-TLS, stores
//! them verified in the repository, journals their catalog records before
//! acknowledging, and feeds a primary and a backup catalog from the journal.
#![forbid(unsafe_code)]

pub mod admin;
pub mod applier;
pub mod config;
pub mod group_sync;
pub mod journal;
pub mod metrics;
pub mod monitor;
pub mod pki_cli;
pub mod reconcile;
pub mod repository;
pub mod session;
pub mod store;
pub mod writer;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use ferry_common::link::{Revoker, ServerLink, ServerLinkConfig};
use ferry_common::revocation::RevocationList;
use ferry_common::station::StationId;
use ferry_common::tls::{self, TlsMaterial};
use ferry_common::zmtp::Limits;
use tokio::sync::{Notify, watch};

use crate::applier::ApplierState;
use crate::config::Settings;
use crate::journal::Journal;
use crate::metrics::Metrics;
use crate::monitor::Monitor;
use crate::repository::Repository;
use crate::store::AnyStore;

/// Names of the two catalogs, as the journal and logs know them.
pub const CATALOGS: [&str; 2] = ["primary", "backup"];

/// Why the collector could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Repository(#[from] repository::RepositoryError),
    #[error(transparent)]
    Journal(#[from] journal::JournalError),
    #[error(transparent)]
    Link(#[from] ferry_common::link::LinkError),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Http(#[from] ferry_common::http::BindError),
    #[error("cannot create {path}: {source}")]
    StateDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// A running collector.
#[derive(Debug)]
pub struct Collector {
    local_addr: SocketAddr,
    http_addr: Option<SocketAddr>,
    metrics_addr: Option<SocketAddr>,
    metrics: Arc<Metrics>,
    stop: watch::Sender<bool>,
    appliers: Vec<watch::Receiver<ApplierState>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The settings in force (a reload replaces the reloadable ones).
    settings: Settings,
    revoker: Revoker,
}

/// What a reload did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reloaded {
    /// Changed keys now in force.
    pub applied: Vec<&'static str>,
    /// Changed keys that take effect only at the next start.
    pub need_restart: Vec<&'static str>,
    /// Entries newly revoked, in normal form.
    pub revoked: Vec<String>,
    /// Stations disconnected because they are now revoked.
    pub disconnected: Vec<StationId>,
}

impl Collector {
    /// The address stations connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where the status endpoint listens, if it does.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// Where the metrics listener of `[metrics] listen` is, if configured.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The counters, shared with every session.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// A receiver that turns true when the collector stops (for tasks a
    /// binary runs beside it).
    pub fn stopping(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    /// Each catalog's applier state, primary first.
    pub fn appliers(&self) -> Vec<ApplierState> {
        self.appliers.iter().map(|s| s.borrow().clone()).collect()
    }

    /// The settings in force.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Applies the reloadable parts of `new` (`revoked`: refused from now
    /// on, and revoked stations connected now are told so and
    /// disconnected; `log_filter` is the caller's, which owns the logging)
    /// and reports what changed and what waits for a restart.
    pub async fn reload(&mut self, new: Settings) -> Reloaded {
        let changed = config::changed_keys(&self.settings, &new);
        let (applied, need_restart): (Vec<_>, Vec<_>) = changed
            .into_iter()
            .partition(|key| config::RELOADABLE.contains(key));
        let mut reloaded = Reloaded {
            applied,
            need_restart,
            ..Reloaded::default()
        };
        if reloaded.applied.contains(&"revoked") {
            reloaded.revoked = new.revoked.added_since(&self.settings.revoked);
            reloaded.disconnected = self.revoker.apply(new.revoked.clone()).await;
            for _ in &reloaded.disconnected {
                self.metrics
                    .error(ferry_common::protocol::ErrorCode::Revoked);
            }
            self.settings.revoked = new.revoked;
        }
        self.settings.log_filter = new.log_filter;
        reloaded
    }

    /// Stops accepting, ends sessions and appliers, and waits for them.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// Opens the repository and journal, starts the appliers and the listener.
pub async fn start(settings: Settings) -> Result<Collector, StartError> {
    let state_dir = &settings.state_dir;
    std::fs::create_dir_all(state_dir).map_err(|source| StartError::StateDir {
        path: state_dir.clone(),
        source,
    })?;
    let material =
        TlsMaterial::from_files(&settings.tls_ca, &settings.tls_cert, &settings.tls_key)?;
    let repository = Repository::open(&settings.repository, &state_dir.join("staging"))?
        .with_direct_io(settings.direct_io_min);
    let journal_path = state_dir.join("journal.sqlite");
    let revoked = RevocationList::new(settings.revoked.clone());
    let journal = Journal::open(&journal_path)?;
    journal.register(&CATALOGS)?;
    // Bind the monitoring listeners first: a taken port fails the start
    // before anything runs.
    let http = match settings.http_listen {
        Some(addr) => Some(ferry_common::http::bind(addr).await?),
        None => None,
    };
    let metrics_listener = match settings.metrics.listen {
        Some(addr) => Some(ferry_common::http::bind(addr).await?),
        None => None,
    };
    let metrics = Metrics::new();
    let (stop, shutdown) = watch::channel(false);
    let mut tasks = Vec::new();
    let mut appliers = Vec::new();
    let mut wakes = Vec::new();
    let stores = [
        AnyStore::open(CATALOGS[0], &settings.primary)?,
        AnyStore::open(CATALOGS[1], &settings.backup)?,
    ];
    for (i, store) in stores.iter().enumerate() {
        let wake = Arc::new(Notify::new());
        let (state_tx, state_rx) = watch::channel(ApplierState::starting(
            journal::CatalogHealth::starting(ferry_common::clock::now_ms()),
        ));
        let task = tokio::spawn(applier::run(
            store.clone(),
            stores[1 - i].clone(),
            journal.clone(),
            wake.clone(),
            state_tx,
            shutdown.clone(),
        ));
        tasks.push(task);
        appliers.push(state_rx);
        wakes.push(wake);
    }
    let link = ServerLink::bind(ServerLinkConfig {
        listen: settings.listen,
        tls: tls::server_config_revoking(&material, revoked.clone())?,
        runtime_dir: state_dir.join("run"),
        limits: Limits {
            max_frame: settings.max_frame,
            max_message: settings.max_frame,
            max_parts: 4,
        },
        handshake_timeout: settings.handshake_timeout,
        revoked,
    })
    .await?;
    let revoker = link.revoker();
    let local_addr = link.local_addr();
    let monitor = Monitor::new(
        Journal::open(&journal_path)?,
        appliers.clone(),
        metrics.clone(),
        settings.repository.clone(),
        link.connections(),
    );
    let repository_root = repository.root().to_owned();
    let shared = Arc::new(session::Shared {
        repository: Arc::new(repository),
        journal,
        metrics: metrics.clone(),
        applied_wake: wakes,
        max_chunk: settings.max_chunk,
        window: settings.window,
        heartbeat: settings.heartbeat,
        reserve: settings.reserve,
        max_sessions: settings.max_sessions,
    });
    tasks.push(tokio::spawn(session::serve(link, shared, shutdown.clone())));
    let http_addr = match http {
        Some(listener) => {
            let addr = listener.local_addr().ok();
            let monitor = monitor.clone();
            tasks.push(tokio::spawn(ferry_common::http::serve(
                listener,
                move |path| monitor.clone().answer(path),
                shutdown.clone(),
            )));
            addr
        }
        None => None,
    };
    let metrics_addr = match metrics_listener {
        Some(listener) => {
            let addr = listener.local_addr().ok();
            let monitor = monitor.clone();
            tasks.push(tokio::spawn(ferry_common::http::serve_metrics(
                listener,
                move || {
                    let monitor = monitor.clone();
                    async move { monitor.metrics_text().await }
                },
                shutdown.clone(),
            )));
            addr
        }
        None => None,
    };
    if let Some(path) = settings.metrics.textfile.clone() {
        let monitor = monitor.clone();
        tasks.push(tokio::spawn(ferry_common::metrics::keep_textfile(
            path,
            settings.metrics.textfile_interval,
            move || {
                let monitor = monitor.clone();
                async move { monitor.metrics_text().await }
            },
            shutdown.clone(),
        )));
    }
    tracing::info!(
        listen = %local_addr,
        http = %http_addr.map_or_else(|| "off".to_owned(), |a| a.to_string()),
        repository = %repository_root.display(),
        "collector running"
    );
    Ok(Collector {
        local_addr,
        http_addr,
        metrics_addr,
        metrics,
        stop,
        appliers,
        tasks,
        settings,
        revoker,
    })
}

/// Runs the collector until `shutdown` resolves.
pub async fn run(settings: Settings, shutdown: impl Future<Output = ()>) -> Result<(), StartError> {
    let collector = start(settings).await?;
    shutdown.await;
    collector.stop().await;
    Ok(())
}
