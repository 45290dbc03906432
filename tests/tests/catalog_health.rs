//! Catalog trouble is seen, and a replaced catalog fills itself: every
//! outage of a real MariaDB catalog is logged when it begins and ends and is
//! shown by `status` (CLI and `/status`) with its error, since when and lag,
//! and the station's `backup_error`; a backup rebuilt empty after the
//! journal pruned its records gets them back from the primary on its own,
//! which `reconcile --dry-run` then confirms.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns may unwrap

use std::time::Duration;

use ferry_agent::sender::{Flow, OutgoingFile, send_batch};
use ferry_collector::journal::Journal;
use ferry_common::link::{ClientLink, ClientLinkConfig};
use ferry_common::protocol::Outcome;
use ferry_common::station::StationId;
use ferry_tests::collector::TestCollector;
use ferry_tests::http;
use ferry_tests::mariadb::MariaDb;
use ferry_tests::pki::TestPki;
use ferry_tests::process;
use mysql_async::prelude::Queryable;

/// The grants README.md's "Setting up MariaDB for Ferry" gives the
/// collector's user, and nothing more.
const README_GRANTS: &str = "SELECT, INSERT, UPDATE, CREATE, ALTER";

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
            rel_path: name.clone().into_bytes(),
            abs_path: dir.join(&name),
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

/// Polls `check` every 100 ms until it returns `Some`, for up to 120 s.
async fn until<T>(what: &str, mut check: impl AsyncFnMut() -> Result<T, String>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        match check().await {
            Ok(value) => return value,
            Err(last) if tokio::time::Instant::now() > deadline => {
                panic!("{what}: not after 120 s; last: {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

async fn root_exec(db: &MariaDb, statements: &[String]) {
    let mut conn = mysql_async::Conn::from_url(db.root_url()).await.unwrap();
    for statement in statements {
        conn.query_drop(statement).await.unwrap();
    }
    conn.disconnect().await.unwrap();
}

/// A user of `db` holding only [`README_GRANTS`] on `ferry`, and its URL.
async fn limited_user(db: &MariaDb) -> String {
    root_exec(
        db,
        &[
            "CREATE USER 'limited'@'%' IDENTIFIED BY 'limited-pw'".to_owned(),
            format!("GRANT {README_GRANTS} ON ferry.* TO 'limited'@'%'"),
        ],
    )
    .await;
    format!(
        "mysql://limited:limited-pw@127.0.0.1:{}/ferry?prefer_socket=false",
        db.port()
    )
}

struct Run {
    pki: TestPki,
    collector: TestCollector,
    link: ClientLink,
    flow: Flow,
    dir: std::path::PathBuf,
}

/// A `ferry-collector` process on `primary` and `backup` and a station
/// connected to it.
async fn start(primary: &str, backup: &str) -> Run {
    ferry_tests::init_logging();
    let pki = TestPki::new().unwrap();
    let mut collector = TestCollector::new(&pki, "").unwrap();
    collector.use_catalogs(primary, backup).unwrap();
    collector.pin_port(process::free_port().unwrap()).unwrap();
    let http_addr = process::free_port().unwrap();
    let text = std::fs::read_to_string(&collector.config_path).unwrap();
    std::fs::write(
        &collector.config_path,
        text.replace(
            "[http]\nlisten = \"127.0.0.1:0\"",
            &format!("[http]\nlisten = \"{http_addr}\""),
        ),
    )
    .unwrap();
    collector.log_filter = "info".into();
    let endpoint = collector.spawn().await.unwrap();
    let files = pki.station("s1").unwrap();
    let config = ClientLinkConfig {
        station: StationId::new("s1").unwrap(),
        endpoints: vec![endpoint.clone()],
        tls: pki.client_config(&files).unwrap(),
        runtime_dir: pki.scratch("agent-run"),
        connect_timeout: Duration::from_secs(5),
        heartbeat: Duration::from_secs(1),
        software: "catalog health test".into(),
    };
    let link = ClientLink::connect(&config, &endpoint).await.unwrap();
    let dir = pki.scratch("station");
    Run {
        pki,
        collector,
        link,
        flow: Flow::default(),
        dir,
    }
}

impl Run {
    fn cli(&self, args: &[&str]) -> String {
        let bin = process::binary("ferry-collector").unwrap();
        let config = self.collector.config_path.to_str().unwrap();
        let mut all = args.to_vec();
        all.extend(["--config", config]);
        let out = process::run(&bin, &all).unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    fn http_addr(&self) -> std::net::SocketAddr {
        let text = std::fs::read_to_string(&self.collector.config_path).unwrap();
        let line = text
            .lines()
            .skip_while(|l| *l != "[http]")
            .find(|l| l.starts_with("listen"))
            .unwrap();
        line.split('"').nth(1).unwrap().parse().unwrap()
    }

    /// The collector log lines about `catalog` that contain `word`.
    fn log_lines(&self, catalog: &str, word: &str) -> usize {
        self.collector
            .log_text()
            .lines()
            .filter(|l| l.contains(&format!("catalog={catalog}")) && l.contains(word))
            .count()
    }
}

/// The JSON object of `catalog` in a status JSON text.
fn catalog_object(json: &str, catalog: &str) -> Option<String> {
    let start = json.find(&format!("{{\"catalog\":\"{catalog}\""))?;
    let end = json[start..].find("}")? + start + 1;
    // A backfill object nests once.
    let end = if json[start..end].contains("\"backfill\":{") {
        json[end..].find('}')? + end + 1
    } else {
        end
    };
    Some(json[start..end].to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catalogs_second_outage_is_logged_and_status_shows_it() {
    let mut primary = MariaDb::start().await.unwrap();
    let mut s = start(&primary.url(), "sqlite://backup.sqlite").await;
    send(&mut s.link, &mut s.flow, &s.dir, "before", 3, 0).await;
    s.collector.settled_rows(3).await.unwrap();
    until(
        "the journal knows the primary applied everything",
        async || {
            let cli = s.cli(&["status", "--json"]);
            catalog_object(&cli, "primary")
                .filter(|o| o.contains("\"state\":\"up\"") && o.contains("\"lag\":0"))
                .map(|_| ())
                .ok_or(cli)
        },
    )
    .await;
    let http_addr = s.http_addr();
    for outage in 1..=2usize {
        primary.kill9();
        // Two records wait for the primary while it is down.
        send(
            &mut s.link,
            &mut s.flow,
            &s.dir,
            &format!("during{outage}"),
            2,
            outage as u64 * 100,
        )
        .await;
        until("the outage is logged", async || {
            let began = s.log_lines("primary", "WARN");
            (began == outage)
                .then_some(())
                .ok_or(format!("{began} warnings"))
        })
        .await;
        // The CLI (another process) and /status show the catalog down, its
        // error and since when; the station's records waiting for it count
        // as backup errors.
        let cli = until("status --json shows the primary down", async || {
            let cli = s.cli(&["status", "--json"]);
            catalog_object(&cli, "primary")
                .filter(|o| o.contains("\"state\":\"down\""))
                .map(|_| cli.clone())
                .ok_or(cli)
        })
        .await;
        let object = catalog_object(&cli, "primary").unwrap();
        assert!(object.contains("\"up\":false"), "{object}");
        assert!(object.contains("\"error\":\"catalog primary: "), "{object}");
        assert!(!object.contains("\"since\":null"), "{object}");
        assert!(
            object.contains(&format!("\"outages\":{outage}")),
            "{object}"
        );
        assert!(object.contains("\"lag\":2"), "{object}");
        assert!(cli.contains("\"backup_error\":2"), "{cli}");
        assert!(!cli.contains(mariadb_password()), "{cli}");
        let body = http::get(http_addr, "/status").await.unwrap().body;
        assert_eq!(
            catalog_object(&body, "primary"),
            Some(object.clone()),
            "{body}"
        );
        let health = http::get(http_addr, "/healthz").await.unwrap();
        assert_eq!(health.status, 200, "a down catalog is not unhealthy");
        assert!(
            health.body.contains("\"state\":\"down\""),
            "{}",
            health.body
        );
        let text = s.cli(&["status"]);
        assert!(
            text.lines().any(|l| l.starts_with("primary")
                && l.contains("down")
                && l.contains("catalog primary: ")),
            "{text}"
        );
        let metrics = http::metrics(http_addr).await.unwrap();
        assert_eq!(
            http::value(&metrics, "ferry_collector_catalog_up{catalog=\"primary\"}"),
            Some(0.0)
        );
        assert_eq!(
            http::value(
                &metrics,
                "ferry_collector_catalog_outages_total{catalog=\"primary\"}"
            ),
            Some(outage as f64)
        );

        primary.restart().await.unwrap();
        until("the outage's end is logged", async || {
            let ended = s.log_lines("primary", "outage ended");
            (ended == outage)
                .then_some(())
                .ok_or(format!("{ended} ends"))
        })
        .await;
        let cli = until("status shows the primary up again", async || {
            let cli = s.cli(&["status", "--json"]);
            catalog_object(&cli, "primary")
                .filter(|o| o.contains("\"state\":\"up\"") && o.contains("\"lag\":0"))
                .map(|_| cli.clone())
                .ok_or(cli)
        })
        .await;
        assert!(cli.contains("\"backup_error\":0"), "{cli}");
    }
    s.collector.terminate().unwrap();
    drop(s.pki);
}

fn mariadb_password() -> &'static str {
    ferry_tests::mariadb::PASSWORD
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_rebuilt_empty_after_pruning_is_backfilled_from_the_primary() {
    backup_emptied_after_pruning_is_backfilled(Replace::RestartServer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_database_recreated_under_a_running_collector_is_backfilled() {
    backup_emptied_after_pruning_is_backfilled(Replace::Recreate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_database_recreated_and_migrated_under_a_running_collector_is_backfilled() {
    backup_emptied_after_pruning_is_backfilled(Replace::RecreateAndMigrate).await;
}

/// How the backup's database is replaced by an empty one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Replace {
    /// Dropped and created again, and the server restarted (rebuilt).
    RestartServer,
    /// Dropped and created again under the collector's open connections.
    Recreate,
    /// The same, then `ferry-collector migrate` makes its tables, so the
    /// collector's next statements find an empty but valid catalog.
    RecreateAndMigrate,
}

/// Runs 30 files through both catalogs until the journal pruned them,
/// replaces the backup's database by an empty one, waits for the backup to
/// get the 30 back while nothing new arrives, sends 5 more files, and waits
/// for the backup to hold all 35 by itself.
async fn backup_emptied_after_pruning_is_backfilled(replace: Replace) {
    let (primary, backup) = tokio::join!(MariaDb::start(), MariaDb::start());
    let (primary, mut backup) = (primary.unwrap(), backup.unwrap());
    // The backup's user holds only the grants README.md documents: they
    // are enough for migrations, applying and backfilling.
    let backup_url = limited_user(&backup).await;
    let mut s = start(&primary.url(), &backup_url).await;
    send(&mut s.link, &mut s.flow, &s.dir, "old", 30, 0).await;
    let journal = Journal::open(&s.collector.settings.state_dir.join("journal.sqlite")).unwrap();
    until(
        "both catalogs applied everything and the journal pruned it",
        async || {
            let left = journal.len().map_err(|e| e.to_string())?;
            (left == 0)
                .then_some(())
                .ok_or(format!("{left} records left"))
        },
    )
    .await;
    assert_eq!(journal.pruned_through().unwrap(), 30);

    // An empty database at the same URL.
    root_exec(
        &backup,
        &[
            "DROP DATABASE ferry".to_owned(),
            "CREATE DATABASE ferry".to_owned(),
        ],
    )
    .await;
    match replace {
        Replace::RestartServer => backup.restart().await.unwrap(),
        Replace::Recreate => {}
        Replace::RecreateAndMigrate => {
            let migrated = s.cli(&["migrate"]);
            assert!(migrated.contains("migrations applied"), "{migrated}");
        }
    }
    // Noticed and filled while nothing new arrives: an idle collector
    // looks at its catalogs too.
    until("the idle collector backfills the backup", async || {
        let rows = s
            .collector
            .catalog_rows("backup")
            .await
            .map_err(|e| e.to_string())?;
        (rows.len() == 30)
            .then_some(())
            .ok_or(format!("{} rows", rows.len()))
    })
    .await;
    send(&mut s.link, &mut s.flow, &s.dir, "new", 5, 100).await;

    let rows = until("the backup holds every row again", async || {
        let rows = s
            .collector
            .catalog_rows("backup")
            .await
            .map_err(|e| e.to_string())?;
        (rows.len() == 35)
            .then_some(rows.len())
            .ok_or(format!("{} rows", rows.len()))
    })
    .await;
    assert_eq!(rows, 35);
    let cli = until("status shows the backfill done", async || {
        let cli = s.cli(&["status", "--json"]);
        catalog_object(&cli, "backup")
            .filter(|o| o.contains("\"state\":\"up\"") && o.contains("\"running\":false"))
            .map(|_| cli.clone())
            .ok_or(cli)
    })
    .await;
    let object = catalog_object(&cli, "backup").unwrap();
    // Every row the primary held when it was read: the 30 pruned ones, and
    // maybe the 5 new ones the primary had applied by then.
    let copied: u64 = object
        .split("\"copied\":")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!((30..=35).contains(&copied), "{object}");
    // Said at least once: the idle collector may notice the emptied
    // database before the server's restart, which then cuts the backfill
    // short, and it is started again.
    let log = s.collector.log_text();
    assert!(
        s.log_lines("backup", "lacks rows the journal no longer holds") >= 1
            && s.log_lines("backup", "backfill done") >= 1,
        "{log}"
    );
    let text = s.cli(&["status"]);
    assert!(text.contains(&format!("{copied} copied (done)")), "{text}");

    // reconcile stays the proof: nothing to copy either way.
    let dry = s.cli(&["reconcile", "--dry-run"]);
    assert!(
        dry.contains("would copy: 0 rows into primary, 0 rows into backup")
            && dry.contains("catalogs identical"),
        "{dry}"
    );
    s.collector.terminate().unwrap();
    drop(s.pki);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sqlite_backup_deleted_after_pruning_is_backfilled() {
    let mut s = start("sqlite://primary.sqlite", "sqlite://backup.sqlite").await;
    send(&mut s.link, &mut s.flow, &s.dir, "old", 20, 0).await;
    let journal = Journal::open(&s.collector.settings.state_dir.join("journal.sqlite")).unwrap();
    until(
        "both catalogs applied everything and the journal pruned it",
        async || {
            let left = journal.len().map_err(|e| e.to_string())?;
            (left == 0)
                .then_some(())
                .ok_or(format!("{left} records left"))
        },
    )
    .await;
    let ferry_collector::config::CatalogUrl::Sqlite(backup) = s.collector.settings.backup.clone()
    else {
        panic!("the backup is an SQLite file");
    };
    for suffix in ["", "-wal", "-shm"] {
        let mut path = backup.clone().into_os_string();
        path.push(suffix);
        let _ = std::fs::remove_file(path);
    }
    send(&mut s.link, &mut s.flow, &s.dir, "new", 3, 100).await;
    until("the new backup file holds every row", async || {
        let rows = s
            .collector
            .catalog_rows("backup")
            .await
            .map_err(|e| e.to_string())?;
        (rows.len() == 23)
            .then_some(())
            .ok_or(format!("{} rows", rows.len()))
    })
    .await;
    let dry = s.cli(&["reconcile", "--dry-run"]);
    assert!(
        dry.contains("would copy: 0 rows into primary, 0 rows into backup"),
        "{dry}"
    );
    s.collector.terminate().unwrap();
    drop(s.pki);
}
