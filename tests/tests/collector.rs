//! The collector's guarantees with its embedded SQLite catalogs: verified,
//! never overwritten, exactly once in both catalogs, hostile paths refused
//! per file, transfers resumed from what is staged.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns may unwrap

use std::path::PathBuf;

use ferry_agent::sender::{FileReport, Flow, OutgoingFile, finish_batch, send_batch, start_batch};
use ferry_common::link::ClientLink;
use ferry_common::protocol::*;
use ferry_tests::collector::TestCollector;
use ferry_tests::pki::TestPki;
use ferry_tests::station::{connect, outgoing, send_partial, sha256};

/// A fresh PKI (keep it alive: it holds the temporary files), a running
/// collector with SQLite catalogs, `station`'s session to it, and a
/// scratch directory for the station's files.
async fn started(station: &str) -> (TestPki, TestCollector, ClientLink, PathBuf) {
    let pki = TestPki::new().unwrap();
    let mut collector = TestCollector::new(&pki, "").unwrap();
    let endpoint = collector.start().await.unwrap();
    let link = connect(&pki, station, &endpoint).await.unwrap();
    let dir = pki.scratch("station");
    (pki, collector, link, dir)
}

/// Every file of `files` is reported stored under `<station>/<root>/<path>`
/// with the SHA-256 of its content, and the repository holds that content.
fn assert_all_stored(
    collector: &TestCollector,
    station: &str,
    files: &[OutgoingFile],
    reports: &[FileReport],
) {
    assert_eq!(reports.len(), files.len());
    for report in reports {
        let f = &files[report.index];
        let content = std::fs::read(&f.abs_path).unwrap();
        assert_eq!(
            report.outcome,
            Outcome::Stored {
                sha256: sha256(&content),
                stored_as: [
                    format!("{station}/{}/", f.root).into_bytes(),
                    f.rel_path.clone()
                ]
                .concat()
            }
        );
        let stored =
            std::fs::read(collector.repository().join(stored_as(&report.outcome))).unwrap();
        assert_eq!(stored, content, "{:?}", f.rel_path);
    }
}

fn stored_as(outcome: &Outcome) -> &str {
    match outcome {
        Outcome::Stored { stored_as, .. } | Outcome::AlreadyStored { stored_as, .. } => {
            std::str::from_utf8(stored_as).unwrap()
        }
        Outcome::Failed(e) => panic!("file failed: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_are_stored_verified_and_catalogued_once_in_both_catalogs() {
    ferry_tests::init_logging();
    let (_pki, mut collector, mut link, dir) = started("rfeye002073").await;
    let big: Vec<u8> = (0..5_000_000u32).map(|i| (i % 251) as u8).collect();
    let files = vec![
        outgoing(
            &dir,
            "spectrum",
            "2022/03/07/rfeye002073_220307_T175758.bin",
            &big,
        )
        .unwrap(),
        outgoing(&dir, "spectrum", "empty.csv", b"").unwrap(),
        outgoing(
            &dir,
            "logs",
            "a/b/c/d/e/f/g/h/ünïcödé measurement.log",
            b"non-ascii name",
        )
        .unwrap(),
    ];
    let mut flow = Flow::default();
    let reports = send_batch(&mut link, &mut flow, 1, &files).await.unwrap();
    assert_all_stored(&collector, "rfeye002073", &files, &reports);

    // The same batch again (a retry after a lost ack): nothing sent twice,
    // nothing catalogued twice.
    let again = send_batch(&mut link, &mut flow, 2, &files).await.unwrap();
    for report in &again {
        assert!(
            matches!(report.outcome, Outcome::AlreadyStored { .. }),
            "{report:?}"
        );
    }
    // Offered with its hash, a stored file is not even sent.
    let mut known = files.clone();
    for f in &mut known {
        f.sha256 = Some(sha256(&std::fs::read(&f.abs_path).unwrap()));
    }
    let skipped = send_batch(&mut link, &mut flow, 3, &known).await.unwrap();
    assert!(
        skipped
            .iter()
            .all(|r| r.sent == 0 && matches!(r.outcome, Outcome::AlreadyStored { .. }))
    );

    let (primary, backup) = collector.settled_rows(3).await.unwrap();
    assert_eq!(primary.len(), 3, "{primary:#?}");
    assert_eq!(primary, backup, "catalogs differ");
    let big_row = primary
        .iter()
        .find(|r| r.path.ends_with("T175758.bin"))
        .unwrap();
    assert_eq!(big_row.station, "rfeye002073");
    assert_eq!(
        big_row.path,
        "spectrum/2022/03/07/rfeye002073_220307_T175758.bin"
    );
    assert_eq!(big_row.size, big.len() as u64);
    assert_eq!(big_row.sha256, sha256(&big));
    collector.stop().await;
}

/// The agent streams a batch before the previous one is acked: each ack
/// finds its own batch, whichever arrives first, and every file is stored
/// once under its own name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_batches_in_flight_are_acked_each_with_its_own_results() {
    ferry_tests::init_logging();
    let (_pki, mut collector, mut link, dir) = started("rfeye002073").await;
    let batch = |tag: &str, count: usize| -> Vec<OutgoingFile> {
        (0..count)
            .map(|i| {
                let content = format!("{tag} {i} ").repeat(2000 + i);
                outgoing(
                    &dir,
                    "data",
                    &format!("{tag}/{i:03}.bin"),
                    content.as_bytes(),
                )
                .unwrap()
            })
            .collect()
    };
    let (first, second) = (batch("first", 40), batch("second", 25));
    let mut flow = Flow::default();
    let one = start_batch(&mut link, &mut flow, 1, &first).await.unwrap();
    let two = start_batch(&mut link, &mut flow, 2, &second).await.unwrap();
    assert_eq!((one.batch(), two.batch()), (1, 2));
    // The later batch first: the earlier ack, if it came meanwhile, waits.
    let reports_two = finish_batch(&mut link, &mut flow, two).await.unwrap();
    let reports_one = finish_batch(&mut link, &mut flow, one).await.unwrap();
    for (files, reports) in [(&first, &reports_one), (&second, &reports_two)] {
        assert_all_stored(&collector, "rfeye002073", files, reports);
        assert!(reports.iter().all(|r| r.sent == files[r.index].size));
    }
    // A third batch after both: the session is in step.
    let third = batch("third", 3);
    let reports = send_batch(&mut link, &mut flow, 3, &third).await.unwrap();
    assert!(
        reports
            .iter()
            .all(|r| matches!(r.outcome, Outcome::Stored { .. }))
    );
    let (primary, backup) = collector.settled_rows(68).await.unwrap();
    assert_eq!(primary.len(), 68);
    assert_eq!(primary, backup, "catalogs differ");
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_content_for_a_stored_path_takes_the_plain_name_and_the_old_keeps_its_version_name() {
    ferry_tests::init_logging();
    let (_pki, mut collector, mut link, dir) = started("s1").await;
    let mut flow = Flow::default();
    let first = send_batch(
        &mut link,
        &mut flow,
        1,
        &[outgoing(&dir, "data", "log.csv", b"version 1").unwrap()],
    )
    .await
    .unwrap();
    let second = send_batch(
        &mut link,
        &mut flow,
        2,
        &[outgoing(&dir, "data", "log.csv", b"version 2, longer").unwrap()],
    )
    .await
    .unwrap();
    assert_eq!(stored_as(&first[0].outcome), "s1/data/log.csv");
    assert_eq!(stored_as(&second[0].outcome), "s1/data/log.csv");
    let tag = &ferry_collector::repository::hex(&sha256(b"version 1"))[..12];
    let repo = collector.repository();
    assert_eq!(
        std::fs::read(repo.join("s1/data/log.csv")).unwrap(),
        b"version 2, longer"
    );
    assert_eq!(
        std::fs::read(repo.join(format!("s1/data/log.{tag}.csv"))).unwrap(),
        b"version 1"
    );
    let (primary, backup) = collector.settled_rows(2).await.unwrap();
    assert_eq!(primary.len(), 2);
    assert!(primary.iter().all(|r| r.path == "data/log.csv"));
    let where_and_latest: Vec<(&str, bool)> = primary
        .iter()
        .map(|r| (r.stored_as.as_str(), r.latest))
        .collect();
    let old_name = format!("s1/data/log.{tag}.csv");
    assert!(
        where_and_latest.contains(&("s1/data/log.csv", true))
            && where_and_latest.contains(&(old_name.as_str(), false)),
        "{where_and_latest:?}"
    );
    assert_eq!(primary, backup);
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_paths_are_refused_per_file_and_the_batch_goes_on() {
    ferry_tests::init_logging();
    let (_pki, mut collector, mut link, dir) = started("a").await;
    let good = outgoing(&dir, "data", "ok.bin", b"fine").unwrap();
    let mut files = vec![good.clone()];
    for (root, path) in [
        ("data", "../b/data/owned.bin"),
        ("data", "/etc/passwd"),
        ("data", "x/../../../b/escape"),
        ("data", "nul\0byte"),
        ("..", "b/via-root"),
        ("data", &"n".repeat(300)),
    ] {
        files.push(OutgoingFile {
            root: root.into(),
            rel_path: path.into(),
            ..good.clone()
        });
    }
    let mut flow = Flow::default();
    let reports = send_batch(&mut link, &mut flow, 1, &files).await.unwrap();
    assert_eq!(reports.len(), files.len());
    for report in &reports {
        if report.index == 0 {
            assert_eq!(stored_as(&report.outcome), "a/data/ok.bin");
        } else {
            match &report.outcome {
                Outcome::Failed(e) => assert_eq!(e.code, ErrorCode::PathRefused, "{e}"),
                other => panic!("{:?} was accepted: {other:?}", files[report.index].rel_path),
            }
            assert_eq!(report.sent, 0);
        }
    }
    // Nothing outside the station's own area.
    let top: Vec<_> = std::fs::read_dir(collector.repository())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(top, vec![std::ffi::OsString::from("a")]);
    // The session is still good for the next batch.
    let next = send_batch(
        &mut link,
        &mut flow,
        2,
        &[outgoing(&dir, "data", "next.bin", b"more").unwrap()],
    )
    .await
    .unwrap();
    assert_eq!(stored_as(&next[0].outcome), "a/data/next.bin");
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_transfer_resumes_from_the_staged_offset_after_a_collector_restart() {
    ferry_tests::init_logging();
    let pki = TestPki::new().unwrap();
    let mut collector = TestCollector::new(&pki, "max_chunk_bytes = 65536").unwrap();
    let endpoint = collector.start().await.unwrap();
    let dir = pki.scratch("station");
    let content: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let f = outgoing(&dir, "spectrum", "big.bin", &content).unwrap();

    // Send the first 5 chunks by hand, then the collector goes away.
    let mut link = connect(&pki, "s1", &endpoint).await.unwrap();
    send_partial(&mut link, 1, &f, 5, 65536).await.unwrap();
    collector.stop().await;
    drop(link);
    collector.start().await.unwrap();

    let mut link = connect(&pki, "s1", &endpoint).await.unwrap();
    let mut flow = Flow::default();
    let reports = send_batch(&mut link, &mut flow, 1, std::slice::from_ref(&f))
        .await
        .unwrap();
    assert_eq!(stored_as(&reports[0].outcome), "s1/spectrum/big.bin");
    assert_eq!(
        reports[0].sent,
        content.len() as u64 - 5 * 65536,
        "resumed from the staged offset"
    );
    assert_eq!(
        std::fs::read(collector.repository().join("s1/spectrum/big.bin")).unwrap(),
        content
    );
    let (primary, backup) = collector.settled_rows(1).await.unwrap();
    assert_eq!(primary.len(), 1);
    assert_eq!(primary, backup);
    collector.stop().await;
}
