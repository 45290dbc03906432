//! Taking over a station from indexerD: its real `DUE_BACKUP` (lines of
//! directory, NUL, `/`, name, NUL) imports beside plain lines, refused lines
//! are named with their reason, and what its `BACKUP_DONE` says was already
//! copied is not sent again, unless asked, while a later change to such a
//! file still is.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns may unwrap

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_tests::agent::{TestAgent, eventually, tree};
use ferry_tests::collector::TestCollector;
use ferry_tests::pki::TestPki;

const WAIT: Duration = Duration::from_secs(30);

/// One `DUE_BACKUP` line as indexerD writes it: the directory, a NUL, `/`
/// and the name, a NUL, then the newline.
fn nul_line(path: &Path) -> Vec<u8> {
    let bytes = path.as_os_str().as_bytes();
    let cut = bytes.iter().rposition(|&b| b == b'/').unwrap();
    let mut line = bytes[..cut].to_vec();
    line.push(0);
    line.extend_from_slice(&bytes[cut..]);
    line.extend_from_slice(b"\0\n");
    line
}

fn plain_line(path: &Path) -> Vec<u8> {
    let mut line = path.as_os_str().as_bytes().to_vec();
    line.push(b'\n');
    line
}

/// `ferry-agent status --json` of `agent`.
fn status_json(agent: &TestAgent) -> String {
    let bin = ferry_tests::process::binary("ferry-agent").unwrap();
    let config = agent.config_path.to_string_lossy().into_owned();
    let out = ferry_tests::process::run(&bin, &["status", "--json", "--config", &config]).unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `ferry-agent status` (text) of `agent`.
fn status_text(agent: &TestAgent) -> String {
    let bin = ferry_tests::process::binary("ferry-agent").unwrap();
    let config = agent.config_path.to_string_lossy().into_owned();
    let out = ferry_tests::process::run(&bin, &["status", "--config", &config]).unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The files of `station` in the repository, once nothing is due any more.
async fn all_sent(collector: &TestCollector, agent: &TestAgent, at_least: usize) -> Vec<PathBuf> {
    let dir = collector.repository().join(&agent.station).join("data");
    eventually(WAIT, || {
        let files = tree(&dir);
        (files.len() >= at_least && status_json(agent).contains("\"due_files\":0,"))
            .then_some(files)
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "expected {at_least} files and nothing due, have {:?}\nstatus: {}\nlog:\n{}",
            tree(&dir),
            status_json(agent),
            agent.log_text()
        )
    })
}

fn stored_as(files: &[PathBuf], rel: &str) -> bool {
    let stem = rel.rsplit_once('.').map_or(rel, |(stem, _)| stem);
    files
        .iter()
        .any(|f| f.as_os_str().as_bytes().starts_with(stem.as_bytes()))
}

/// A station as indexerD leaves it: `old/h1.bin` and `old/h2.bin` copied
/// (in `BACKUP_DONE` only), `old/h3.bin` copied and changed since (in both
/// lists), four files due in both line forms, one with a Latin-1 name, and
/// two bad lines. Returns the agent, not started.
fn indexerd_station(pki: &TestPki, endpoint: &str, legacy_extra: &str) -> TestAgent {
    let mut agent = TestAgent::new(pki, "s1", endpoint, "").unwrap();
    if !legacy_extra.is_empty() {
        // [legacy] is the config's last table.
        let text = std::fs::read_to_string(&agent.config_path).unwrap();
        std::fs::write(&agent.config_path, format!("{text}{legacy_extra}\n")).unwrap();
        agent.settings = ferry_agent::config::load(&agent.config_path).unwrap();
    }
    let h1 = agent.write("old/h1.bin", b"copied by indexerD's server");
    let h2 = agent.write("old/h2.bin", b"copied too");
    let h3 = agent.write("old/h3.bin", b"copied, then changed");
    let d1 = agent.write("new/d1.bin", b"due 1");
    let d2 = agent.write("new/with space.bin", b"due 2");
    let latin1 = agent.root.join(OsStr::from_bytes(b"new/caf\xe9.bin"));
    std::fs::write(&latin1, b"due 3").unwrap();
    let plain = agent.write("plain.bin", b"due 4, plain line");

    let mut due = Vec::new();
    for path in [&d1, &d2, &latin1, &h3] {
        due.extend(nul_line(path));
    }
    due.extend(plain_line(&plain));
    due.extend(b"relative/path.bin\n");
    due.extend(b"/a\0b\0c\0\n");
    due.extend(nul_line(Path::new("/nowhere/missing.bin")));
    let legacy = &agent.settings.legacy;
    std::fs::create_dir_all(legacy.due_backup.parent().unwrap()).unwrap();
    std::fs::write(&legacy.due_backup, due).unwrap();

    let mut done = Vec::new();
    done.extend(plain_line(&h1));
    done.extend(nul_line(&h2));
    done.extend(plain_line(&h3));
    done.extend(plain_line(Path::new("/nowhere/long-gone.bin")));
    std::fs::write(&legacy.backup_done, done).unwrap();
    agent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn indexerd_nul_lines_import_and_its_backup_done_is_not_sent_again() {
    ferry_tests::init_logging();
    let pki = TestPki::new().unwrap();
    let mut collector = TestCollector::new(&pki, "").unwrap();
    let endpoint = collector.start().await.unwrap();
    let mut agent = indexerd_station(&pki, &endpoint, "");
    agent.start().unwrap();

    // The four due files and h3, changed since its copy.
    let files = all_sent(&collector, &agent, 5).await;
    for rel in [
        "new/d1.bin",
        "new/with space.bin",
        "plain.bin",
        "old/h3.bin",
    ] {
        assert!(stored_as(&files, rel), "{rel} not stored: {files:?}");
    }
    assert!(
        files
            .iter()
            .any(|f| f.as_os_str().as_bytes().starts_with(b"new/caf")),
        "{files:?}"
    );
    for rel in ["old/h1.bin", "old/h2.bin"] {
        assert!(
            !stored_as(&files, rel),
            "{rel}, copied by indexerD, was sent again: {files:?}"
        );
    }

    // What the import did, in both status forms.
    let json = status_json(&agent);
    for part in [
        "\"legacy_import\":{",
        "\"imported\":5",
        "\"not_found\":1",
        "\"refused\":2",
        "\"already_copied\":2",
        "\"line\":6",
        "\"reason\":\"not an absolute path\"",
        "\"line\":7",
    ] {
        assert!(json.contains(part), "{part} not in {json}");
    }
    let text = status_text(&agent);
    assert!(
        text.contains("indexerD:       imported at") && text.contains("2 already copied"),
        "{text}"
    );
    // Each refused line is logged with its reason.
    let log = agent.log_text();
    assert!(
        log.contains("line=6") && log.contains("not an absolute path"),
        "{log}"
    );
    assert!(log.contains("line=7"), "{log}");

    // An already-copied file that changes later is sent.
    agent.write("old/h1.bin", b"copied by indexerD's server, then rewritten");
    let files = all_sent(&collector, &agent, 6).await;
    assert!(stored_as(&files, "old/h1.bin"), "{files:?}");
    assert!(!stored_as(&files, "old/h2.bin"), "{files:?}");
    agent.stop().unwrap();
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn indexerd_history_is_sent_too_when_the_option_asks() {
    ferry_tests::init_logging();
    let pki = TestPki::new().unwrap();
    let mut collector = TestCollector::new(&pki, "").unwrap();
    let endpoint = collector.start().await.unwrap();
    let mut agent = indexerd_station(&pki, &endpoint, "resend_backup_done = true");
    agent.start().unwrap();
    let files = all_sent(&collector, &agent, 7).await;
    for rel in ["old/h1.bin", "old/h2.bin", "old/h3.bin", "plain.bin"] {
        assert!(stored_as(&files, rel), "{rel} not stored: {files:?}");
    }
    let json = status_json(&agent);
    assert!(json.contains("\"already_copied\":0"), "{json}");
    agent.stop().unwrap();
    collector.stop().await;
}
