//! Rough edges of the command line: `migrate` and `status` work on a fresh
//! install (no state directory yet), every subcommand of both binaries
//! takes `--help`, `reconcile --dry-run` says what it would copy, and an
//! error's cause is printed once.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns may unwrap

use ferry_collector::journal::Record;
use ferry_collector::store::{AnyStore, CatalogStore};
use ferry_tests::collector::TestCollector;
use ferry_tests::pki::TestPki;
use ferry_tests::process;

fn said(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn migrate_and_status_work_before_the_state_directory_exists() {
    let pki = TestPki::new().unwrap();
    let collector = TestCollector::new(&pki, "").unwrap();
    let state = collector.settings.state_dir.clone();
    assert!(!state.exists());
    let bin = process::binary("ferry-collector").unwrap();
    let config = collector.config_path.to_str().unwrap();
    let status = process::run(&bin, &["status", "--config", config]).unwrap();
    assert!(status.status.success(), "{}", said(&status));
    assert!(!state.exists(), "status is a reader: it creates nothing");
    let json = process::run(&bin, &["status", "--json", "--config", config]).unwrap();
    assert!(json.status.success(), "{}", said(&json));
    assert!(
        said(&json).starts_with(
            "{\"stations\":[],\"catalogs\":[{\"catalog\":\"primary\",\"state\":\"unknown\""
        ),
        "{}",
        said(&json)
    );
    let migrate = process::run(&bin, &["migrate", "--config", config]).unwrap();
    assert!(migrate.status.success(), "{}", said(&migrate));
    assert!(state.join("journal.sqlite").exists());
}

#[test]
fn an_error_and_its_path_are_said_once() {
    let pki = TestPki::new().unwrap();
    let collector = TestCollector::new(&pki, "").unwrap();
    // The state directory's parent is a file: nothing can be created.
    let parent = collector.settings.state_dir.parent().unwrap().to_owned();
    std::fs::create_dir_all(parent.parent().unwrap()).unwrap();
    let blocker = parent.join("state");
    std::fs::create_dir_all(&parent).unwrap();
    std::fs::write(&blocker, "not a directory").unwrap();
    let bin = process::binary("ferry-collector").unwrap();
    let config = collector.config_path.to_str().unwrap();
    let out = process::run(&bin, &["migrate", "--config", config]).unwrap();
    let text = said(&out);
    assert!(!out.status.success(), "{text}");
    let path = blocker.display().to_string();
    assert_eq!(text.matches(&path).count(), 1, "{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "{text}");
    // Whatever the cause's words, they are not repeated.
    let cause = text.rsplit(": ").next().unwrap().trim();
    assert_eq!(text.matches(cause).count(), 1, "{text}");
}

#[test]
fn every_subcommand_of_both_binaries_takes_help() {
    let collector = process::binary("ferry-collector").unwrap();
    for command in [
        "run",
        "status",
        "reconcile",
        "migrate",
        "pki",
        "pki init-ca",
        "pki issue-server",
        "pki issue-station",
        "pki show",
    ] {
        let mut args: Vec<&str> = command.split(' ').collect();
        args.push("--help");
        let out = process::run(&collector, &args).unwrap();
        assert!(
            out.status.success(),
            "ferry-collector {command} --help: {}",
            said(&out)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("usage: ferry-collector"), "{command}: {text}");
    }
    let agent = process::binary("ferry-agent").unwrap();
    for command in ["run", "status", "halt", "resume", "systemd-dropin"] {
        let out = process::run(&agent, &[command, "--help"]).unwrap();
        assert!(
            out.status.success(),
            "ferry-agent {command} --help: {}",
            said(&out)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("usage: ferry-agent"), "{command}: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_dry_run_says_what_it_would_copy() {
    let pki = TestPki::new().unwrap();
    let collector = TestCollector::new(&pki, "").unwrap();
    std::fs::create_dir_all(&collector.settings.state_dir).unwrap();
    let primary = AnyStore::open("primary", &collector.settings.primary).unwrap();
    primary.migrate().await.unwrap();
    let records = (0..34u8)
        .map(|i| {
            (
                u64::from(i) + 1,
                Record {
                    station: "s1".into(),
                    path: format!("data/{i}.bin"),
                    size: 1,
                    mtime_ns: 1,
                    sha256: [i; 32],
                    stored_as: format!("s1/data/{i}.bin"),
                    received_at: 1,
                    transfer: "t".into(),
                    latest: true,
                    previous: None,
                },
            )
        })
        .collect();
    primary.apply(records).await.unwrap();
    let bin = process::binary("ferry-collector").unwrap();
    let config = collector.config_path.to_str().unwrap();
    let out = process::run(&bin, &["reconcile", "--dry-run", "--config", config]).unwrap();
    let text = said(&out);
    assert!(
        text.contains("would copy: 0 rows into primary, 34 rows into backup"),
        "{text}"
    );
    assert!(!text.contains("repaired"), "{text}");
    let backup = AnyStore::open("backup", &collector.settings.backup).unwrap();
    backup.migrate().await.unwrap();
    assert!(
        backup.rows().await.unwrap().is_empty(),
        "a dry run copies nothing"
    );
}

/// mysql_async wraps an I/O error twice, each layer saying "Input/output
/// error: " before the next.
#[test]
fn a_refused_database_connection_says_input_output_error_once() {
    let pki = TestPki::new().unwrap();
    let mut collector = TestCollector::new(&pki, "").unwrap();
    let refused = process::free_port().unwrap().port();
    collector
        .use_catalogs(
            &format!("mysql://ferry:pw@127.0.0.1:{refused}/ferry?prefer_socket=false"),
            "sqlite://backup.sqlite",
        )
        .unwrap();
    let bin = process::binary("ferry-collector").unwrap();
    let config = collector.config_path.to_str().unwrap();
    let out = process::run(&bin, &["migrate", "--config", config]).unwrap();
    let text = said(&out);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("Connection refused"), "{text}");
    assert_eq!(text.matches("Input/output error").count(), 1, "{text}");
}

#[test]
fn a_journal_that_cannot_be_opened_is_named_once() {
    let pki = TestPki::new().unwrap();
    let collector = TestCollector::new(&pki, "").unwrap();
    // A directory where the journal file should be.
    let journal = collector.settings.state_dir.join("journal.sqlite");
    std::fs::create_dir_all(&journal).unwrap();
    let bin = process::binary("ferry-collector").unwrap();
    let config = collector.config_path.to_str().unwrap();
    for command in ["status", "migrate"] {
        let out = process::run(&bin, &[command, "--config", config]).unwrap();
        let text = said(&out);
        assert!(!out.status.success(), "{text}");
        let path = journal.display().to_string();
        assert_eq!(text.matches(&path).count(), 1, "{command}: {text}");
        assert_eq!(
            text.matches("unable to open").count(),
            1,
            "{command}: {text}"
        );
    }
}
