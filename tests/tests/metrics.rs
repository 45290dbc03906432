//! Both daemons' Prometheus exposition, read back with the harness's strict
//! parser: well-formed as a scraper takes it, every counter and reading in
//! its series.

use std::time::{Duration, UNIX_EPOCH};

use ferry_agent::metrics as agent;
use ferry_collector::metrics as collector;
use ferry_common::protocol::ErrorCode;
use ferry_tests::prometheus;

/// The value of each series of `text`, which must parse.
fn values(text: &str) -> impl Fn(&str) -> f64 + '_ {
    let samples = prometheus::parse(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    move |series| {
        prometheus::value(&samples, series)
            .unwrap_or_else(|| panic!("{series} missing from\n{text}"))
    }
}

#[test]
fn the_agents_exposition_carries_counters_backlog_and_halt() {
    let m = agent::Metrics::new();
    agent::Metrics::add(&m.files_sent, 4);
    agent::Metrics::add(&m.bytes_sent, 4096);
    m.error(agent::ErrorKind::Connect);
    m.set_connected(true);
    agent::Metrics::add(&m.held_files, 3);
    agent::Metrics::add(&m.missing_roots, 1);
    let readings = agent::Readings {
        due_files: Some(2),
        due_bytes: Some(10),
        failing: Some(1),
        refused: Some(1),
        last_ack: Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
        halt: Some(agent::Halt::Operator),
    };
    let text = agent::render(&m, &readings);
    let value = values(&text);
    assert_eq!(value("ferry_agent_files_sent_total"), 4.0);
    assert_eq!(value("ferry_agent_bytes_sent_total"), 4096.0);
    assert_eq!(value("ferry_agent_errors_total{kind=\"connect\"}"), 1.0);
    assert_eq!(value("ferry_agent_errors_total{kind=\"scan\"}"), 0.0);
    assert_eq!(value("ferry_agent_connected"), 1.0);
    assert_eq!(value("ferry_agent_held_files"), 3.0);
    assert_eq!(value("ferry_agent_missing_roots"), 1.0);
    assert_eq!(value("ferry_agent_due_files"), 2.0);
    assert_eq!(value("ferry_agent_due_bytes"), 10.0);
    assert_eq!(
        value("ferry_agent_last_ack_timestamp_seconds"),
        1_700_000_000.0
    );
    assert_eq!(value("ferry_agent_halted{by=\"operator\"}"), 1.0);
    assert_eq!(value("ferry_agent_halted{by=\"other\"}"), 0.0);
}

#[test]
fn the_collectors_exposition_carries_every_counter_and_reading() {
    let m = collector::Metrics::new();
    collector::Metrics::add(&m.files_stored, 3);
    collector::Metrics::add(&m.bytes_stored, 300);
    m.error(ErrorCode::DiskFull);
    m.error(ErrorCode::DiskFull);
    let session = m.session();
    let readings = collector::Readings {
        catalogs: vec![
            collector::CatalogView {
                name: "primary",
                up: true,
                lag: Some(0),
                backfilling: false,
                backfill_unseen: 0,
                since_ms: 1_000_000,
                outages: 0,
            },
            collector::CatalogView {
                name: "backup",
                up: true,
                lag: Some(7),
                backfilling: true,
                backfill_unseen: 40,
                since_ms: 2_000_000,
                outages: 2,
            },
        ],
        repository_free: Some(1 << 30),
        connections_refused: 3,
    };
    let text = collector::render(&m, &readings);
    let value = values(&text);
    assert_eq!(value("ferry_collector_files_stored_total"), 3.0);
    assert_eq!(value("ferry_collector_bytes_stored_total"), 300.0);
    assert_eq!(value("ferry_collector_sessions"), 1.0);
    assert_eq!(value("ferry_collector_sessions_total"), 1.0);
    assert_eq!(value("ferry_collector_connections_refused_total"), 3.0);
    assert_eq!(
        value("ferry_collector_errors_total{kind=\"disk_full\"}"),
        2.0
    );
    assert_eq!(value("ferry_collector_errors_total{kind=\"busy\"}"), 0.0);
    assert_eq!(
        value("ferry_collector_catalog_up{catalog=\"primary\"}"),
        1.0
    );
    assert_eq!(
        value("ferry_collector_catalog_backfilling{catalog=\"backup\"}"),
        1.0
    );
    assert_eq!(
        value("ferry_collector_catalog_backfill_unseen_rows{catalog=\"backup\"}"),
        40.0
    );
    assert_eq!(
        value("ferry_collector_catalog_outages_total{catalog=\"backup\"}"),
        2.0
    );
    assert_eq!(
        value("ferry_collector_catalog_state_since_timestamp_seconds{catalog=\"backup\"}"),
        2000.0
    );
    assert_eq!(
        value("ferry_collector_journal_lag_records{catalog=\"backup\"}"),
        7.0
    );
    assert_eq!(
        value("ferry_collector_repository_free_bytes"),
        (1u64 << 30) as f64
    );
    drop(session);
    assert!(collector::render(&m, &readings).contains("\nferry_collector_sessions 0\n"));
}
