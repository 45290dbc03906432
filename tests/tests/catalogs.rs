//! Either catalog database may be down: with the primary, the backup or
//! both MariaDB servers killed while a station keeps sending, acks keep
//! flowing (the journal holds the records), and once the servers return the
//! catalogs catch up by themselves and `reconcile` finds them identical, row
//! by row.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns may unwrap

use std::time::Duration;

use ferry_agent::sender::{Flow, OutgoingFile, send_batch};
use ferry_collector::store::{AnyStore, CatalogStore};
use ferry_common::link::{ClientLink, ClientLinkConfig};
use ferry_common::protocol::Outcome;
use ferry_common::station::StationId;
use ferry_tests::collector::TestCollector;
use ferry_tests::mariadb::MariaDb;
use ferry_tests::pki::TestPki;

/// Sends `count` one-file batches named `<tag>-<i>`, asserting each is acked
/// as stored.
async fn send(
    link: &mut ClientLink,
    flow: &mut Flow,
    dir: &std::path::Path,
    tag: &str,
    count: usize,
    first_batch: u64,
) {
    for i in 0..count {
        let name = format!("{tag}-{i:03}.bin");
        let content = format!("{tag} file {i}").repeat(50);
        std::fs::write(dir.join(&name), &content).unwrap();
        let file = OutgoingFile {
            root: "data".into(),
            rel_path: name.into_bytes(),
            abs_path: dir.join(format!("{tag}-{i:03}.bin")),
            size: content.len() as u64,
            mtime_ns: 1,
            sha256: None,
        };
        let reports = send_batch(link, flow, first_batch + i as u64, &[file])
            .await
            .unwrap();
        assert!(
            matches!(reports[0].outcome, Outcome::Stored { .. }),
            "{reports:?}"
        );
    }
}

/// Waits until both catalogs hold `count` rows and are identical, and
/// `reconcile` agrees without repairing anything.
async fn caught_up(collector: &TestCollector, count: usize) {
    let (primary, backup) = collector.settled_rows(count).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let (mut primary, mut backup) = (primary, backup);
    while (primary.len() < count || backup.len() < count) && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
        (primary, backup) = (
            collector.catalog_rows("primary").await.unwrap(),
            collector.catalog_rows("backup").await.unwrap(),
        );
    }
    assert_eq!(primary.len(), count, "primary did not catch up");
    assert_eq!(backup.len(), count, "backup did not catch up");
    assert_eq!(primary, backup, "catalogs differ row by row");
    let report = ferry_collector::admin::reconcile(&collector.settings, false)
        .await
        .unwrap();
    assert!(report.identical(), "{report:#?}");
    assert_eq!((report.repaired_primary, report.repaired_backup), (0, 0));
}

struct Setup {
    pki: TestPki,
    collector: TestCollector,
    primary: MariaDb,
    backup: MariaDb,
    link: ClientLink,
    flow: Flow,
    dir: std::path::PathBuf,
}

async fn setup() -> Setup {
    ferry_tests::init_logging();
    let pki = TestPki::new().unwrap();
    let (primary, backup) = tokio::join!(MariaDb::start(), MariaDb::start());
    let (primary, backup) = (primary.unwrap(), backup.unwrap());
    let mut collector = TestCollector::new(&pki, "").unwrap();
    collector
        .use_catalogs(&primary.url(), &backup.url())
        .unwrap();
    let endpoint = collector.start().await.unwrap();
    let files = pki.station("s1").unwrap();
    let config = ClientLinkConfig {
        station: StationId::new("s1").unwrap(),
        endpoints: vec![endpoint.clone()],
        tls: pki.client_config(&files).unwrap(),
        runtime_dir: pki.scratch("agent-run"),
        connect_timeout: Duration::from_secs(5),
        heartbeat: Duration::from_secs(1),
        software: "catalog test".into(),
    };
    let link = ClientLink::connect(&config, &endpoint).await.unwrap();
    let dir = pki.scratch("station");
    Setup {
        pki,
        collector,
        primary,
        backup,
        link,
        flow: Flow::default(),
        dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_primary_killed_while_stations_send_loses_nothing_and_catches_up() {
    let mut s = setup().await;
    send(&mut s.link, &mut s.flow, &s.dir, "before", 20, 0).await;
    caught_up(&s.collector, 20).await;
    s.primary.kill9();
    send(&mut s.link, &mut s.flow, &s.dir, "during", 30, 100).await;
    // The backup kept up; the primary's share waits in the journal.
    let backup = AnyStore::open("backup", &s.collector.settings.backup).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while backup.rows().await.unwrap().len() < 50 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(backup.rows().await.unwrap().len(), 50);
    s.primary.restart().await.unwrap();
    send(&mut s.link, &mut s.flow, &s.dir, "after", 10, 200).await;
    caught_up(&s.collector, 60).await;
    s.collector.stop().await;
    drop(s.pki);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backup_killed_while_stations_send_loses_nothing_and_catches_up() {
    let mut s = setup().await;
    send(&mut s.link, &mut s.flow, &s.dir, "before", 10, 0).await;
    s.backup.kill9();
    send(&mut s.link, &mut s.flow, &s.dir, "during", 30, 100).await;
    s.backup.restart().await.unwrap();
    caught_up(&s.collector, 40).await;
    s.collector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_catalogs_down_for_a_while_the_journal_holds_everything() {
    let mut s = setup().await;
    send(&mut s.link, &mut s.flow, &s.dir, "before", 10, 0).await;
    caught_up(&s.collector, 10).await;
    s.primary.kill9();
    s.backup.kill9();
    send(&mut s.link, &mut s.flow, &s.dir, "during", 40, 100).await;
    // Nothing could be applied: every record waits in the journal.
    let status = ferry_collector::admin::status(&s.collector.settings, Some("s1"), 0)
        .unwrap()
        .stations;
    assert_eq!(status[0].pending_primary, 40, "{status:?}");
    assert_eq!(status[0].pending_backup_catalog, 40, "{status:?}");
    assert_eq!(status[0].host_files, 50);
    // A collector restart while both are down loses nothing either.
    s.collector.stop().await;
    s.collector.start().await.unwrap();
    s.primary.restart().await.unwrap();
    s.backup.restart().await.unwrap();
    caught_up(&s.collector, 50).await;
    // The journal learns an applied position just after the catalog commits
    // it, so its pending counts may trail the rows by one applier turn.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut status = ferry_collector::admin::status(&s.collector.settings, Some("s1"), 0)
        .unwrap()
        .stations;
    while status[0].pending_backup > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        status = ferry_collector::admin::status(&s.collector.settings, Some("s1"), 0)
            .unwrap()
            .stations;
    }
    assert_eq!(status[0].pending_backup, 0, "{status:?}");
    s.collector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_repairs_a_catalog_that_lost_rows() {
    let mut s = setup().await;
    send(&mut s.link, &mut s.flow, &s.dir, "rows", 25, 0).await;
    caught_up(&s.collector, 25).await;
    s.collector.stop().await;
    // The backup database loses rows behind the collector's back (restored
    // from an old dump, say); the journal no longer has them.
    let admin = mysql_root_exec(
        &s.backup,
        "DELETE FROM ferry.files WHERE path LIKE 'data/rows-01%'",
    )
    .await;
    assert!(admin > 0);
    let report = ferry_collector::admin::reconcile(&s.collector.settings, true)
        .await
        .unwrap();
    assert!(!report.identical());
    let report = ferry_collector::admin::reconcile(&s.collector.settings, false)
        .await
        .unwrap();
    assert_eq!(report.repaired_backup, admin);
    assert!(report.identical(), "{report:#?}");
    let primary = s.collector.catalog_rows("primary").await.unwrap();
    let backup = s.collector.catalog_rows("backup").await.unwrap();
    assert_eq!(primary, backup);
}

/// Runs a statement as root; returns the affected rows.
async fn mysql_root_exec(db: &MariaDb, sql: &str) -> u64 {
    use mysql_async::prelude::Queryable;
    let mut conn = mysql_async::Conn::from_url(db.root_url()).await.unwrap();
    conn.query_drop(sql).await.unwrap();
    let affected = conn.affected_rows();
    conn.disconnect().await.unwrap();
    affected
}
