//! Regression: a full state disk made the agent spin.
//!
//! When the agent's state directory filled up while a file was in flight
//! (its ack could not be recorded), the agent logged hundreds of warnings a
//! second, offered the same file again and again, in two batches at once,
//! put many times the data on the wire, and after space returned left the
//! file `sent-pending` forever. It now backs off with one warning when the
//! state disk fills and one when space returns, offers nothing while it
//! cannot record, sends nothing acknowledged again, and finishes the file
//! (ledger and `BACKUP_DONE`) once it can.
//!
//! Needs root (it mounts a tmpfs of fixed size as the state directory), as
//! CI has.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns may unwrap

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ferry_agent::ledger::FileState;
use ferry_tests::agent::{TestAgent, eventually, tree};
use ferry_tests::collector::TestCollector;
use ferry_tests::pki::TestPki;
use ferry_tests::proxy::{Direction, Proxy};
use ferry_tests::rng::Rng;

const WAIT: Duration = Duration::from_secs(30);
const SIZE: usize = 8 << 20;

/// A tmpfs of fixed size, unmounted on drop.
struct SmallFs(PathBuf);

impl SmallFs {
    fn mount(at: &Path, size: &str) -> Self {
        std::fs::create_dir_all(at).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .unwrap();
        assert!(
            status.success(),
            "mounting a tmpfs needs root (CI runs as root)"
        );
        Self(at.to_owned())
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the filesystem of `path` up to the last byte.
fn fill(path: &Path) {
    let mut file = std::fs::File::create(path).unwrap();
    let block = vec![0xb5u8; 64 << 10];
    while file.write_all(&block).is_ok() {}
    let small = [0u8; 512];
    while file.write_all(&small).is_ok() {}
}

fn warnings(log: &str) -> Vec<&str> {
    log.lines().filter(|l| l.contains("WARN")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_state_disk_with_a_file_in_flight_backs_off_and_finishes_it_when_space_returns() {
    ferry_tests::init_logging();
    let pki = TestPki::new().unwrap();
    let mut collector = TestCollector::new(&pki, "").unwrap();
    collector.start().await.unwrap();
    let proxy = Proxy::start(collector.settings.listen).await.unwrap();
    let mut agent = TestAgent::new(&pki, "s1", &proxy.addr.to_string(), "").unwrap();
    let state = agent.settings.state_dir.clone();
    let _fs = SmallFs::mount(&state, "2m");
    agent.start().unwrap();

    // The file is stored and journaled by the collector while its ack is
    // held in the proxy; then the state disk fills, then the ack comes.
    proxy.throttle(Some(2 << 20));
    let content = Rng::new(0xf011).bytes(SIZE);
    agent.write("big.bin", &content);
    let staging = collector.settings.state_dir.join("staging").join("s1");
    eventually(WAIT, || {
        tree(&staging)
            .iter()
            .any(|f| std::fs::metadata(staging.join(f)).is_ok_and(|m| m.len() > 0))
            .then_some(())
    })
    .await
    .expect("the upload did not start");
    proxy.stall_one(Direction::Down, true);
    proxy.throttle(None);
    let settings = collector.settings.clone();
    eventually(WAIT, || {
        let status = ferry_collector::admin::status(&settings, Some("s1"), 0).ok()?;
        (status.stations.first()?.host_files == 1).then_some(())
    })
    .await
    .expect("the collector did not store the file");
    let ballast = state.join("ballast");
    fill(&ballast);
    let up_before = proxy.forwarded(Direction::Up);
    proxy.stall_one(Direction::Down, false);

    // A while with the disk full: no storm of warnings, nothing re-sent. A
    // file finished meanwhile cannot be recorded; it is not lost.
    tokio::time::sleep(Duration::from_secs(2)).await;
    agent.write("later.bin", b"written while the state disk was full");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let log = agent.log_text();
    let while_full = warnings(&log);
    assert!(
        while_full.len() <= 2,
        "{} warnings while the state disk was full:\n{}",
        while_full.len(),
        while_full.join("\n")
    );
    let resent = proxy.forwarded(Direction::Up) - up_before;
    assert!(
        resent < SIZE as u64 / 8,
        "{resent} bytes went up while the state disk was full"
    );
    assert!(agent.is_running(), "{log}");

    // Space returns: the file is finished, not sent again.
    std::fs::remove_file(&ballast).unwrap();
    let done = eventually(WAIT, || {
        let ledger = agent.ledger().ok()?;
        let big = ledger.state("data", Path::new("big.bin")).ok()??;
        let later = ledger.state("data", Path::new("later.bin")).ok()??;
        let due = ledger.due_summary().ok()?;
        (big == FileState::Done && later == FileState::Done && due.files == 0).then_some(())
    })
    .await;
    assert!(
        done.is_some(),
        "the file never became done after space returned:\n{}",
        agent.log_text()
    );
    let line = agent.root.join("big.bin").to_string_lossy().into_owned();
    let listed = eventually(WAIT, || {
        let text = std::fs::read_to_string(&agent.settings.legacy.backup_done).ok()?;
        text.lines().any(|l| l == line).then_some(text)
    })
    .await
    .unwrap_or_else(|| panic!("BACKUP_DONE never listed the file:\n{}", agent.log_text()));
    assert_eq!(listed.lines().filter(|l| *l == line).count(), 1);
    let resent = proxy.forwarded(Direction::Up) - up_before;
    assert!(
        resent < SIZE as u64 / 8,
        "{resent} bytes went up after the ack: the file was sent again"
    );
    let log = agent.log_text();
    let all = warnings(&log);
    assert!(
        all.len() <= 2,
        "expected one warning when the state disk filled and one when space returned:\n{}",
        all.join("\n")
    );
    let (primary, backup) = collector.settled_rows(2).await.unwrap();
    assert_eq!(primary.len(), 2, "{primary:?}");
    assert_eq!(primary, backup);
    agent.stop().unwrap();
    collector.stop().await;
}
