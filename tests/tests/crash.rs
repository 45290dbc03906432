//! Crashes of real processes: `kill -9` of the collector mid-transfer loses
//! nothing acknowledged, duplicates nothing, and the cut transfer resumes.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns may unwrap

use std::time::Duration;

use ferry_agent::sender::{Flow, OutgoingFile, send_batch};
use ferry_common::protocol::*;
use ferry_tests::collector::TestCollector;
use ferry_tests::pki::TestPki;
use ferry_tests::process::{self, Process};
use ferry_tests::station::{connect, outgoing, send_partial, sha256};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_collector_mid_transfer_loses_and_duplicates_nothing() {
    ferry_tests::init_logging();
    let pki = TestPki::new().unwrap();
    let mut collector = TestCollector::new(&pki, "max_chunk_bytes = 65536").unwrap();
    let addr = process::free_port().unwrap();
    collector.pin_port(addr).unwrap();
    let config = collector.config_path.to_str().unwrap().to_owned();
    let bin = process::binary("ferry-collector").unwrap();
    let log = pki.scratch("logs").join("collector.log");
    let start = || {
        let p = Process::start(&bin, &["run", "--config", &config], &log).unwrap();
        process::wait_for_port(addr, Duration::from_secs(20)).unwrap();
        p
    };
    let mut proc = start();
    let endpoint = addr.to_string();
    let dir = pki.scratch("station");

    // Batch 1 is acknowledged before the crash.
    let acked: Vec<OutgoingFile> = (0..20)
        .map(|i| {
            outgoing(
                &dir,
                "data",
                &format!("acked/{i:02}.bin"),
                format!("acked file {i}").repeat(i + 1).as_bytes(),
            )
            .unwrap()
        })
        .collect();
    let mut link = connect(&pki, "s1", &endpoint).await.unwrap();
    let mut flow = Flow::default();
    let reports = send_batch(&mut link, &mut flow, 1, &acked).await.unwrap();
    assert!(
        reports
            .iter()
            .all(|r| matches!(r.outcome, Outcome::Stored { .. })),
        "{reports:?}"
    );

    // Batch 2 is cut: part of a large file is staged when the collector dies.
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
    let cut = outgoing(&dir, "data", "cut/big.bin", &big).unwrap();
    send_partial(&mut link, 2, &cut, 10, 65536).await.unwrap();
    proc.kill9();
    drop(link);

    let mut proc = start();
    let mut link = connect(&pki, "s1", &endpoint).await.unwrap();
    let mut flow = Flow::default();
    // The agent does not know the acks of batch 1 were kept: it may resend.
    let again = send_batch(&mut link, &mut flow, 3, &acked).await.unwrap();
    assert!(
        again
            .iter()
            .all(|r| matches!(r.outcome, Outcome::AlreadyStored { .. })),
        "{again:?}"
    );
    let resumed = send_batch(&mut link, &mut flow, 4, std::slice::from_ref(&cut))
        .await
        .unwrap();
    assert!(
        matches!(resumed[0].outcome, Outcome::Stored { .. }),
        "{resumed:?}"
    );
    assert_eq!(
        resumed[0].sent,
        big.len() as u64 - 10 * 65536,
        "did not resume from the staged offset"
    );

    // Every acked file is in the repository with the right content, and
    // exactly once in both catalogs.
    for f in acked.iter().chain([&cut]) {
        let stored = std::fs::read(
            collector
                .repository()
                .join("s1/data")
                .join(std::str::from_utf8(&f.rel_path).unwrap()),
        )
        .unwrap();
        assert_eq!(
            sha256(&stored),
            sha256(&std::fs::read(&f.abs_path).unwrap()),
            "{:?}",
            f.rel_path
        );
    }
    let (primary, backup) = collector.settled_rows(21).await.unwrap();
    assert_eq!(primary.len(), 21);
    assert_eq!(primary, backup);
    proc.terminate(Duration::from_secs(10)).unwrap();

    let out = process::run(&bin, &["reconcile", "--config", &config]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("catalogs identical"), "{text}");
    assert!(
        text.contains("repaired: 0 rows into primary, 0 rows into backup"),
        "{text}"
    );
}
