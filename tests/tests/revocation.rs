//! Revoking a station on a running collector: `revoked` entries in any
//! usual fingerprint form, validated by `--check`; `systemctl reload`
//! (SIGHUP) puts them in force at once, a revoked station connected at that
//! moment is told so and disconnected, its agent says "revoked" and waits
//! long between tries, and every other station carries on undisturbed.
//! SIGHUP never ends either daemon.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns may unwrap

use std::path::Path;
use std::time::Duration;

use ferry_tests::agent::{TestAgent, eventually};
use ferry_tests::collector::TestCollector;
use ferry_tests::pki::TestPki;

/// Generous: a loaded 2-core machine builds and runs several suites at once.
const PATIENCE: Duration = Duration::from_secs(30);

fn stored(collector: &TestCollector, station: &str, rel: &str) -> bool {
    collector
        .repository()
        .join(station)
        .join("data")
        .join(rel)
        .is_file()
}

async fn wait_stored(collector: &TestCollector, station: &str, rel: &str) {
    let found = eventually(PATIENCE, || stored(collector, station, rel).then_some(())).await;
    assert!(
        found.is_some(),
        "{station}/{rel} not stored; collector log:\n{}",
        collector.log_text()
    );
}

/// The certificate fingerprint of `station`, the way an operator might
/// paste it: lower case, no colons.
fn sloppy_fingerprint(pki: &TestPki, station: &str) -> String {
    let files = pki.station(station).unwrap();
    let pem = std::fs::read_to_string(&files.cert).unwrap();
    ferry_common::pki::inspect_pem(&pem)
        .unwrap()
        .sha256_fingerprint
        .replace(':', "")
        .to_lowercase()
}

fn lines_with(path: &Path, needle: &str) -> usize {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(needle))
        .count()
}

/// Issue 19, items 1 to 3: a fingerprint in lower case without colons
/// revoked nothing, revocation needed a restart, and SIGHUP killed the
/// collector (exit 129).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_station_revoked_by_reload_is_refused_within_seconds_while_another_keeps_sending() {
    ferry_tests::init_logging();
    let pki = TestPki::new().unwrap();
    let mut collector = TestCollector::new(&pki, "").unwrap();
    let endpoint = collector.spawn().await.unwrap();
    let mut kept = TestAgent::new(&pki, "kept", &endpoint, "").unwrap();
    let mut banned = TestAgent::new(&pki, "banned", &endpoint, "").unwrap();
    kept.start().unwrap();
    banned.start().unwrap();
    kept.write("before.bin", b"kept before");
    banned.write("before.bin", b"banned before");
    wait_stored(&collector, "kept", "before.bin").await;
    wait_stored(&collector, "banned", "before.bin").await;

    // Revoke `banned` by its fingerprint, written sloppily, and reload.
    let fingerprint = sloppy_fingerprint(&pki, "banned");
    collector
        .set_top_level(&format!("revoked = [{fingerprint:?}]"))
        .unwrap();
    collector.hangup().unwrap();

    // Its agent learns it is revoked, in its status ...
    let status = eventually(PATIENCE, || {
        let text = banned.status_text().ok()?;
        text.contains("revoked").then_some(text)
    })
    .await;
    assert!(
        collector.is_running(),
        "the collector died of SIGHUP:\n{}",
        collector.log_text()
    );
    let status = status.unwrap_or_else(|| {
        panic!(
            "the revoked agent's status never said so: {:?}\nagent log:\n{}\ncollector log:\n{}",
            banned.status_text(),
            banned.log_text(),
            collector.log_text()
        )
    });
    assert!(status.contains("revoked"), "{status}");

    // ... while `kept` goes on sending, and nothing more of `banned` is
    // stored.
    banned.write("after.bin", b"banned after");
    for n in 0..5 {
        let name = format!("after-{n}.bin");
        kept.write(&name, name.as_bytes());
        wait_stored(&collector, "kept", &name).await;
    }
    assert!(
        !stored(&collector, "banned", "after.bin"),
        "a revoked station stored a file"
    );
    let log = collector.log_text();
    assert!(log.contains("configuration reloaded"), "{log}");
    assert!(log.contains("revoked"), "{log}");

    // The agent said so once in its log, not at every retry, and backs off
    // instead of retrying within seconds.
    let agent_log = banned.logs().last().cloned().unwrap();
    assert_eq!(
        lines_with(&agent_log, "this station is revoked"),
        1,
        "{}",
        banned.log_text()
    );
    assert_eq!(
        lines_with(&agent_log, "close_notify"),
        0,
        "{}",
        banned.log_text()
    );
    kept.stop().unwrap();
    banned.stop().unwrap();
    collector.terminate().unwrap();
}

/// Issue 19, item 1: `--check` accepted an entry that was neither a station
/// id nor a fingerprint, and so revoked nothing without a word.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_refuses_a_revoked_entry_that_is_neither_a_station_nor_a_fingerprint() {
    let pki = TestPki::new().unwrap();
    let collector = TestCollector::new(&pki, "").unwrap();
    let bin = ferry_tests::process::binary("ferry-collector").unwrap();
    let config = collector.config_path.to_string_lossy().into_owned();
    let check = || ferry_tests::process::run(&bin, &["run", "--check", "--config", &config]);
    collector
        .set_top_level("revoked = [\"station-7\", \"ab:cd:ef:no-such-print\"]")
        .unwrap();
    let out = check().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("revoked") && stderr.contains("\"ab:cd:ef:no-such-print\""),
        "{stderr}"
    );
}

/// Issue 19, item 3 and the log filter: SIGHUP ended the collector. A
/// reload now keeps the running config when the file is invalid, applies
/// `log_filter`, and names changed keys that need a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_applies_the_log_filter_and_keeps_running_on_an_invalid_file() {
    ferry_tests::init_logging();
    let pki = TestPki::new().unwrap();
    let mut collector = TestCollector::new(&pki, "").unwrap();
    let endpoint = collector.spawn().await.unwrap();
    let mut agent = TestAgent::new(&pki, "s1", &endpoint, "").unwrap();
    agent.start().unwrap();
    agent.write("one.bin", b"one");
    wait_stored(&collector, "s1", "one.bin").await;
    // At `info` the collector does not log each file received.
    assert!(collector.received().is_empty());
    let good = std::fs::read_to_string(&collector.config_path).unwrap();

    // An invalid file: logged, the collector runs on as it was.
    std::fs::write(
        &collector.config_path,
        format!("revoked = [\"not a station!\"]\n{good}"),
    )
    .unwrap();
    collector.hangup().unwrap();
    let refused = eventually(PATIENCE, || {
        collector
            .log_text()
            .contains("reload refused")
            .then_some(())
    })
    .await;
    assert!(
        collector.is_running(),
        "the collector died of SIGHUP:\n{}",
        collector.log_text()
    );
    assert!(refused.is_some(), "{}", collector.log_text());
    assert!(
        collector.log_text().contains("not a station!"),
        "{}",
        collector.log_text()
    );

    // A valid one: the log filter is in force at once; a changed limit
    // is named as needing a restart.
    std::fs::write(
        &collector.config_path,
        format!(
            "log_filter = \"info,ferry_collector::session=debug\"\n{}",
            good.replace("[limits]", "[limits]\nmax_sessions = 7")
        ),
    )
    .unwrap();
    collector.hangup().unwrap();
    let reloaded = eventually(PATIENCE, || {
        collector
            .log_text()
            .contains("configuration reloaded")
            .then_some(())
    })
    .await;
    assert!(reloaded.is_some(), "{}", collector.log_text());
    let log = collector.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("next restart") && l.contains("limits")),
        "{log}"
    );
    agent.write("two.bin", b"two");
    wait_stored(&collector, "s1", "two.bin").await;
    let received = eventually(PATIENCE, || {
        let received = collector.received();
        received
            .iter()
            .any(|r| r.path == "data/two.bin")
            .then_some(received)
    })
    .await;
    assert!(received.is_some(), "{}", collector.log_text());
    agent.stop().unwrap();
    collector.terminate().unwrap();
}

/// Issue 19, item 3 (agent side): SIGHUP ended the agent too. It has
/// nothing to reload: it says so and runs on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_leaves_the_agent_running() {
    ferry_tests::init_logging();
    let pki = TestPki::new().unwrap();
    let mut collector = TestCollector::new(&pki, "").unwrap();
    let endpoint = collector.spawn().await.unwrap();
    let mut agent = TestAgent::new(&pki, "s1", &endpoint, "").unwrap();
    agent.start().unwrap();
    agent.write("one.bin", b"one");
    wait_stored(&collector, "s1", "one.bin").await;
    agent.hangup().unwrap();
    let said = eventually(PATIENCE, || {
        agent.log_text().contains("SIGHUP ignored").then_some(())
    })
    .await;
    assert!(agent.is_running(), "the agent died of SIGHUP");
    assert!(said.is_some(), "{}", agent.log_text());
    agent.write("two.bin", b"two");
    wait_stored(&collector, "s1", "two.bin").await;
    agent.stop().unwrap();
    collector.terminate().unwrap();
}
