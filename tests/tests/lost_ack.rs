//! Regression: a file whose ack was lost was sent again in full.
//!
//! When the collector had stored and journaled a file but its ack never
//! reached the agent (the connection was cut, or the agent was killed before
//! it recorded the ack), the agent offered the file again without its hash;
//! the staging file was gone, so the collector asked for it from byte 0 and
//! the whole file crossed the link a second time. An offer the agent is not
//! sure about now carries the hash of the file on disk, and the collector
//! answers "already have" for content it holds under that path, verified
//! end to end without a byte of content sent.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns may unwrap

use std::time::Duration;

use ferry_agent::ledger::FileState;
use ferry_tests::agent::{TestAgent, eventually, tree};
use ferry_tests::collector::TestCollector;
use ferry_tests::pki::TestPki;
use ferry_tests::proxy::{Direction, Proxy};
use ferry_tests::rng::Rng;
use ferry_tests::station::sha256;

const WAIT: Duration = Duration::from_secs(30);
const SIZE: usize = 8 << 20;

struct Setup {
    pki: TestPki,
    collector: TestCollector,
    proxy: Proxy,
    agent: TestAgent,
    content: Vec<u8>,
}

/// A collector, a proxy, an agent dialling the collector through the proxy,
/// and an 8 MiB file the collector has stored and journaled while its ack
/// is held in the proxy.
async fn stored_but_not_acked() -> Setup {
    ferry_tests::init_logging();
    let pki = TestPki::new().unwrap();
    let mut collector = TestCollector::new(&pki, "").unwrap();
    collector.start().await.unwrap();
    let proxy = Proxy::start(collector.settings.listen).await.unwrap();
    let mut agent = TestAgent::new(&pki, "s1", &proxy.addr.to_string(), "").unwrap();
    agent.start().unwrap();

    // Slow the upload so the moment it starts can be seen, then hold
    // everything coming back (credits, the ack) and let the upload finish.
    proxy.throttle(Some(2 << 20));
    let content = Rng::new(0x5eed).bytes(SIZE);
    agent.write("measurements/big.bin", &content);
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
        let status = ferry_collector::admin::status(&settings, Some("s1"), 0)
            .ok()?
            .stations;
        (status.first()?.host_files == 1).then_some(())
    })
    .await
    .expect("the collector did not store the file");
    assert_eq!(
        agent.ledger().unwrap().due_summary().unwrap().files,
        1,
        "the agent must not have seen the ack yet"
    );
    Setup {
        pki,
        collector,
        proxy,
        agent,
        content,
    }
}

/// Waits until the agent has nothing due, then checks the file is stored
/// once, whole, in both catalogs.
async fn delivered_once(s: &Setup) {
    let ledger = || s.agent.ledger().ok()?.due_summary().ok();
    eventually(WAIT, || ledger().filter(|d| d.files == 0))
        .await
        .unwrap_or_else(|| panic!("still due: {:?}\n{}", ledger(), s.agent.log_text()));
    let state = s
        .agent
        .ledger()
        .unwrap()
        .state("data", std::path::Path::new("measurements/big.bin"))
        .unwrap();
    assert_eq!(state, Some(FileState::Done), "{}", s.agent.log_text());
    let dir = s.collector.repository().join("s1/data");
    assert_eq!(
        tree(&dir),
        vec![std::path::PathBuf::from("measurements/big.bin")]
    );
    let stored = std::fs::read(dir.join("measurements/big.bin")).unwrap();
    assert_eq!(sha256(&stored), sha256(&s.content));
    let (primary, backup) = s.collector.settled_rows(1).await.unwrap();
    assert_eq!(primary.len(), 1, "{primary:?}");
    assert_eq!(primary, backup);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_whose_ack_was_cut_off_is_not_sent_again() {
    let mut s = stored_but_not_acked().await;
    let before = s.proxy.forwarded(Direction::Up);
    s.proxy.cut();
    s.proxy.stall_one(Direction::Down, false);
    delivered_once(&s).await;
    let again = s.proxy.forwarded(Direction::Up) - before;
    assert!(
        again < SIZE as u64 / 8,
        "the file was sent again: {again} bytes went up after the cut"
    );
    s.agent.stop().unwrap();
    s.collector.stop().await;
    drop(s.pki);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_whose_ack_died_with_the_agent_is_not_sent_again() {
    let mut s = stored_but_not_acked().await;
    s.agent.kill9();
    s.proxy.cut();
    s.proxy.stall_one(Direction::Down, false);
    let before = s.proxy.forwarded(Direction::Up);
    s.agent.start().unwrap();
    delivered_once(&s).await;
    let again = s.proxy.forwarded(Direction::Up) - before;
    assert!(
        again < SIZE as u64 / 8,
        "the file was sent again: {again} bytes went up after the restart"
    );
    s.agent.stop().unwrap();
    s.collector.stop().await;
}
