//! Many stations on one collector: at least 100 real `ferry-agent`
//! processes, each with its own certificate, connected at once; then every
//! station gets its files at the same moment and all deliver together.
//! Every file arrives exactly once, and the spread of the stations'
//! delivery times (slowest against fastest) is reported, not asserted.
//!
//! `FERRY_MANY_STATIONS` (default 100) and `FERRY_MANY_FILES` (files per
//! station, default 20) size the run; `FERRY_MANY_SEED` fixes the content.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns may unwrap

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferry_tests::agent::TestAgent;
use ferry_tests::collector::TestCollector;
use ferry_tests::pki::TestPki;
use ferry_tests::rng::Rng;
use ferry_tests::workload::{FileSpec, GroundTruth, write_file};
use tokio::time::Instant;

fn var(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_stations_at_once_all_deliver_exactly_once() {
    let seed = var("FERRY_MANY_SEED", Rng::fresh_seed());
    let stations = var("FERRY_MANY_STATIONS", 100) as usize;
    let per_station = var("FERRY_MANY_FILES", 20) as usize;
    eprintln!("many stations seed {seed} (replay: FERRY_MANY_SEED={seed})");
    ferry_tests::init_logging();
    let began = Instant::now();
    let mut rng = Rng::new(seed);
    let pki = TestPki::new().unwrap();
    let mut collector = TestCollector::new(&pki, "").unwrap();
    let endpoint = collector.spawn().await.unwrap();

    // Every agent starts with one file and delivers it: then all are
    // connected and watching.
    let mut agents = Vec::new();
    let mut truth = GroundTruth::default();
    let mut files = Vec::new();
    for s in 0..stations {
        let agent = TestAgent::new(&pki, &format!("st{s:04}"), &endpoint, "").unwrap();
        files.push(FileSpec {
            station: s,
            rel: "hello.bin".into(),
            size: 100,
            seed: rng.next_u64(),
            atomic: false,
        });
        for f in 0..per_station {
            files.push(FileSpec {
                station: s,
                rel: format!("{:02}/m{f:03}.bin", f % 3),
                size: rng.between(1, 128 << 10),
                seed: rng.next_u64(),
                atomic: false,
            });
        }
        agents.push(agent);
    }
    let (hello, mut files): (Vec<FileSpec>, Vec<FileSpec>) =
        files.into_iter().partition(|f| f.rel == "hello.bin");
    for spec in &hello {
        let agent = &agents[spec.station];
        truth.add(
            &agent.station,
            &spec.rel,
            spec.size,
            write_file(&agent.root, spec).unwrap(),
        );
    }
    // The rest waits in an outbox beside each root, to be renamed in.
    for spec in &files {
        let agent = &agents[spec.station];
        let sha = write_file(&outbox(agent), spec).unwrap();
        truth.add(&agent.station, &spec.rel, spec.size, sha);
        let dir = agent.root.join(&spec.rel);
        std::fs::create_dir_all(dir.parent().unwrap()).unwrap();
    }
    let launch = Instant::now();
    for agent in &mut agents {
        agent.start().unwrap();
    }
    let launch_took = launch.elapsed();
    stored(&collector, stations as u64, seed).await;
    let connected_in = launch.elapsed();

    // Then every station's files appear at the same moment (file `f` of
    // every station, then file `f + 1`, …).
    files.sort_by_key(|f| (f.rel.clone(), f.station));
    let written_at = SystemTime::now();
    let write = Instant::now();
    for spec in &files {
        let agent = &agents[spec.station];
        std::fs::rename(outbox(agent).join(&spec.rel), agent.root.join(&spec.rel)).unwrap();
    }
    let write_took = write.elapsed();
    let total = truth.files.len() as u64;
    stored(&collector, total, seed).await;
    let delivered_in = write.elapsed();

    // Exactly once, whole, in both catalogs.
    let (primary, backup) = collector.settled_rows(total as usize).await.unwrap();
    let mut problems = truth.check_repository(&collector.repository());
    problems.merge(truth.check_catalog("primary", &primary));
    problems.merge(truth.check_catalog("backup", &backup));
    assert!(problems.is_empty(), "seed {seed}:\n{problems}");
    assert_eq!(primary.len(), backup.len());
    for agent in &agents {
        let ledger = || agent.ledger().ok()?.due_summary().ok();
        let settled = ferry_tests::agent::eventually(Duration::from_secs(30), || {
            ledger().filter(|d| d.files == 0)
        })
        .await;
        assert!(
            settled.is_some(),
            "{}: still due {:?}",
            agent.station,
            ledger()
        );
    }

    // Fairness: from the moment the files appeared to the collector's
    // receipt of each station's last file.
    let mut times: Vec<(i64, String)> = agents
        .iter()
        .map(|agent| {
            let last = primary
                .iter()
                .filter(|r| r.station == agent.station)
                .map(|r| r.received_at)
                .max()
                .unwrap_or(0);
            (last - unix_ms(written_at), agent.station.clone())
        })
        .collect();
    times.sort();
    let ms = |i: usize| times[i].0;
    let (fastest, median, slowest) = (ms(0), ms(times.len() / 2), ms(times.len() - 1));
    println!(
        "\
many stations figures
  seed              {seed}
  stations          {stations} agent processes, one collector (SQLite catalogs)
  files             {total} ({per_station} per station up to 128 KiB, and one to connect)
  agents started    in {launch_took:.1?}, all connected and delivered a first file in {connected_in:.1?}
  files appeared    in {write_took:.1?} (renamed into every root at once)
  all delivered in  {delivered_in:.1?} from the first rename
  time to deliver   fastest {fastest} ms ({fast}), median {median} ms, slowest {slowest} ms ({slow})
  slowest/fastest   {ratio:.1}
  whole run         {run:.1?}",
        fast = times[0].1,
        slow = times[times.len() - 1].1,
        ratio = slowest as f64 / fastest.max(1) as f64,
        run = began.elapsed(),
    );
    drop(agents);
    collector.terminate().unwrap();
}

/// Where a station's files wait before they are renamed into its root.
fn outbox(agent: &TestAgent) -> std::path::PathBuf {
    agent.root.with_file_name("outbox")
}

/// Waits until the collector has stored `count` files (all stations).
async fn stored(collector: &TestCollector, count: u64, seed: u64) {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let status = ferry_collector::admin::status(&collector.settings, None, 0)
            .map(|s| s.stations)
            .unwrap_or_default();
        let stored: u64 = status.iter().map(|s| s.host_files).sum();
        if stored >= count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "after 300 s only {stored} of {count} files are stored; seed {seed}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
