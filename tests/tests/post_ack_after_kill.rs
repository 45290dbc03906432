//! Regression: an agent killed between recording an ack and the work that
//! follows it lost that work. The file's `BACKUP_DONE` line was never
//! written and, with `after_ack = delete`, the file was never deleted: the
//! ledger said done, so nothing came back to it. The work is now pending in
//! the ledger until done, and a restarted agent finishes it (without
//! repeating a line it had already written).

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns may unwrap

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use ferry_agent::due_list;
use ferry_agent::ledger::{Acked, Identity, Ledger};
use ferry_tests::agent::{TestAgent, eventually};
use ferry_tests::collector::TestCollector;
use ferry_tests::pki::TestPki;

const WAIT: Duration = Duration::from_secs(30);

/// Leaves the ledger as a kill right after `mark_acked` does: `rel` acked
/// (done), its post-ack work not done.
fn acked_in_ledger(agent: &TestAgent, rel: &str) {
    let path = agent.root.join(rel);
    let meta = std::fs::metadata(&path).unwrap();
    let identity = Identity {
        size: meta.len(),
        mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
        ctime_ns: meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
        inode: meta.ino(),
    };
    let mut ledger = Ledger::open(&agent.settings.ledger).unwrap();
    let now = SystemTime::now();
    ledger
        .observe("data", Path::new(rel), identity, now)
        .unwrap();
    let due = ledger.due(10, now).unwrap();
    let file = due.iter().find(|d| d.rel_path == Path::new(rel)).unwrap();
    ledger.mark_sending(&[file.key]).unwrap();
    let done = ledger
        .mark_acked(
            &[Acked {
                key: file.key,
                sha256: [1; 32],
            }],
            now,
        )
        .unwrap();
    assert_eq!(done.len(), 1);
}

fn backup_done(agent: &TestAgent) -> Vec<String> {
    std::fs::read_to_string(&agent.settings.legacy.backup_done)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn line(agent: &TestAgent, rel: &str) -> String {
    agent.root.join(rel).to_string_lossy().into_owned()
}

/// Waits until `rel` is deleted from the station.
async fn deleted(agent: &TestAgent, rel: &str) {
    let path: PathBuf = agent.root.join(rel);
    eventually(WAIT, || (!path.exists()).then_some(()))
        .await
        .unwrap_or_else(|| panic!("{rel} not deleted after its ack\n{}", agent.log_text()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_ack_work_cut_short_by_a_kill_is_finished_at_the_next_start() {
    ferry_tests::init_logging();
    let pki = TestPki::new().unwrap();
    let mut collector = TestCollector::new(&pki, "").unwrap();
    let endpoint = collector.start().await.unwrap();
    let mut agent =
        TestAgent::new(&pki, "s1", &endpoint, "[after_ack]\naction = \"delete\"").unwrap();

    // The normal way: stored, listed, deleted.
    agent.write("a.bin", b"first");
    agent.start().unwrap();
    deleted(&agent, "a.bin").await;
    assert_eq!(backup_done(&agent), [line(&agent, "a.bin")]);
    agent.stop().unwrap();

    // Killed after the ack was recorded, before anything else.
    agent.write("b.bin", b"second");
    acked_in_ledger(&agent, "b.bin");
    // Killed after the line was written, before the ledger knew.
    agent.write("c.bin", b"third");
    acked_in_ledger(&agent, "c.bin");
    due_list::append_backup_done(
        &agent.settings.legacy.backup_done,
        [agent.root.join("c.bin")],
    )
    .unwrap();

    agent.start().unwrap();
    deleted(&agent, "b.bin").await;
    deleted(&agent, "c.bin").await;
    let mut lines = backup_done(&agent);
    lines.sort();
    assert_eq!(
        lines,
        [
            line(&agent, "a.bin"),
            line(&agent, "b.bin"),
            line(&agent, "c.bin")
        ],
        "every acked file listed once"
    );
    let pending = agent.ledger().unwrap().post_ack_pending().unwrap();
    assert!(pending.is_empty(), "{pending:?}");
    agent.stop().unwrap();
    collector.stop().await;
}
