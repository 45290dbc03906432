//! The collector's read-only HTTP endpoint for monitoring: `GET /status`
//! (every station, the JSON of `ferry-collector status --json`),
//! `/status/<station>`, `/healthz` and `/metrics` (Prometheus text).
//!
//! Health means "stations can be served": the listener answers and the
//! journal takes writes. A catalog that is down is reported but is not
//! unhealthy, since the journal keeps its records until it returns.

use std::path::PathBuf;
use std::sync::Arc;

use ferry_common::bridge::Connections;
use ferry_common::http::Response;
use ferry_common::station::StationId;
use ferry_common::{clock, json};
use serde::Serialize;
use tokio::sync::watch;

use crate::CATALOGS;
use crate::admin;
use crate::applier::ApplierState;
use crate::journal::{CatalogState, Journal};
use crate::metrics::{self, CatalogView, Metrics, Readings};

/// What the endpoint reads from; shared by its connections.
#[derive(Debug)]
pub struct Monitor {
    /// A connection of its own, so scrapes never queue behind the
    /// sessions' journal writes.
    journal: Journal,
    /// Each catalog's applier state, in the order of [`CATALOGS`].
    appliers: Vec<watch::Receiver<ApplierState>>,
    metrics: Arc<Metrics>,
    /// The repository root, whose filesystem's free space is reported.
    repository: PathBuf,
    /// The station listener's connections (for the refusals).
    connections: Connections,
}

impl Monitor {
    pub fn new(
        journal: Journal,
        appliers: Vec<watch::Receiver<ApplierState>>,
        metrics: Arc<Metrics>,
        repository: PathBuf,
        connections: Connections,
    ) -> Arc<Self> {
        Arc::new(Self {
            journal,
            appliers,
            metrics,
            repository,
            connections,
        })
    }

    /// The answer to `GET path`.
    pub async fn answer(self: Arc<Self>, path: String) -> Response {
        let route = path.trim_end_matches('/');
        match route {
            "/metrics" => Response::metrics(self.metrics_text().await),
            "/status" => blocking(move || self.status(None)).await,
            "/healthz" => blocking(move || self.health()).await,
            _ => match route.strip_prefix("/status/") {
                Some(station) if !station.contains('/') => {
                    let station = station.to_owned();
                    blocking(move || self.status(Some(&station))).await
                }
                _ => Response::not_found(),
            },
        }
    }

    /// The Prometheus exposition: counters plus what is read now.
    pub async fn metrics_text(self: &Arc<Self>) -> String {
        let this = self.clone();
        let readings = tokio::task::spawn_blocking(move || this.readings())
            .await
            .unwrap_or_default();
        metrics::render(&self.metrics, &readings)
    }

    fn readings(&self) -> Readings {
        let repository_free = rustix::fs::statvfs(&self.repository)
            .ok()
            .map(|st| st.f_bavail.saturating_mul(st.f_frsize));
        Readings {
            catalogs: self.catalogs(),
            repository_free,
            connections_refused: self.connections.refused(),
        }
    }

    fn catalogs(&self) -> Vec<CatalogView> {
        CATALOGS
            .iter()
            .zip(&self.appliers)
            .map(|(name, state)| {
                // The applier's own view: the journal's copy may lag it
                // when the journal cannot be written.
                let state = state.borrow();
                let health = &state.health;
                CatalogView {
                    name,
                    up: state.is_up(),
                    lag: self.journal.lag(name).ok(),
                    backfilling: health.state == CatalogState::Backfilling,
                    backfill_unseen: health
                        .backfill
                        .filter(|_| health.state == CatalogState::Backfilling)
                        .map_or(0, |b| b.total.saturating_sub(b.scanned)),
                    since_ms: health.since_ms,
                    outages: health.outages,
                }
            })
            .collect()
    }

    fn status(&self, station: Option<&str>) -> Response {
        if let Some(station) = station {
            let known = StationId::new(station).is_ok()
                && self.journal.knows_station(station).unwrap_or(false);
            if !known {
                #[derive(Serialize)]
                struct Unknown<'a> {
                    error: &'static str,
                    station: &'a str,
                }
                return Response::json(
                    404,
                    json::line(&Unknown {
                        error: "unknown station",
                        station,
                    }),
                );
            }
        }
        match admin::status_of(&self.journal, station, clock::now_ms()) {
            Ok(status) => match (station, status.stations.first()) {
                (Some(_), Some(row)) => Response::json(200, json::line(row)),
                _ => Response::json(200, admin::status_json(&status)),
            },
            Err(error) => Response::json(500, error_json(&error.to_string())),
        }
    }

    fn health(&self) -> Response {
        #[derive(Serialize)]
        struct Health<'a> {
            status: &'static str,
            journal: String,
            catalogs: Vec<admin::CatalogJson<'a>>,
        }
        let journal = self.journal.check_writable();
        let catalogs = admin::catalogs_of(&self.journal).unwrap_or_default();
        let (status, word, journal) = match journal {
            Ok(()) => (200, "ok", "writable".to_owned()),
            Err(error) => (503, "unhealthy", error.to_string()),
        };
        Response::json(
            status,
            json::line(&Health {
                status: word,
                journal,
                catalogs: catalogs.iter().map(admin::catalog_json).collect(),
            }),
        )
    }
}

/// `{"error":...}`, one line.
fn error_json(error: &str) -> String {
    #[derive(Serialize)]
    struct Error<'a> {
        error: &'a str,
    }
    json::line(&Error { error })
}

async fn blocking(f: impl FnOnce() -> Response + Send + 'static) -> Response {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|_| Response::json(500, "{\"error\":\"status worker failed\"}\n".into()))
}
