//! Close-to-catalog latency: files written at a steady 50 per second; for
//! each, the time from its close on the station to its presence in both
//! catalogs (both polled every 5 ms).

use std::collections::HashMap;
use std::io::Write as _;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use ferry_tests::pki::TestPki;

use crate::Options;
use crate::data::{self, Rng};
use crate::ferry::{Agent, Binaries, Collector, STATION};
use crate::stats::percentile;

const PER_SECOND: u64 = 50;
const SIZE: usize = 64 << 10;

pub fn run(bins: &Binaries, pki: &TestPki, options: &Options) -> Result<String> {
    let dir = options.dir.join("runs/latency");
    data::clear(&dir)?;
    let root = dir.join("station");
    std::fs::create_dir_all(&root)?;
    let mut collector = Collector::start(bins, pki, &dir, None)?;
    let mut agent = Agent::start_station(bins, pki, &collector, &root, &dir)?;
    // A first file, so that start-up is not measured.
    write(&root.join("warm-up.bin"), &mut Rng(7))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while collector.catalogs.counts() != [Some(1), Some(1)] {
        ensure!(Instant::now() < deadline, "the warm-up file did not arrive");
        agent.check_alive()?;
        std::thread::sleep(Duration::from_millis(20));
    }

    let count = options.latency_secs * PER_SECOND;
    eprintln!("latency: writing {count} files at {PER_SECOND}/s");
    let writer_root = root.clone();
    let writer = std::thread::spawn(move || -> Result<Vec<(String, Instant)>> {
        let mut rng = Rng(0x01a7_e9c1);
        let mut closed = Vec::new();
        let start = Instant::now();
        for i in 0..count {
            let due = start + Duration::from_micros(i * 1_000_000 / PER_SECOND);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let name = format!("{STATION}_{:06}.bin", i);
            write(&writer_root.join(&name), &mut rng)?;
            closed.push((format!("data/{name}"), Instant::now()));
        }
        Ok(closed)
    });
    // First sighting of each path in the primary and in the backup.
    let mut seen: [HashMap<String, Instant>; 2] = [HashMap::new(), HashMap::new()];
    let mut last_id = [0i64, 0i64];
    let deadline = Instant::now() + Duration::from_secs(options.latency_secs + 120);
    // The warm-up file is among the rows too.
    let expected = count as usize + 1;
    while seen[0].len() < expected || seen[1].len() < expected {
        ensure!(
            Instant::now() < deadline,
            "files still missing 2 minutes after the last write"
        );
        for which in 0..2 {
            let rows = collector.catalogs.rows_after(which, last_id[which]);
            let now = Instant::now();
            for (id, _station, path) in rows {
                last_id[which] = last_id[which].max(id);
                seen[which].entry(path).or_insert(now);
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let closed = writer
        .join()
        .map_err(|_| anyhow::anyhow!("writer panicked"))??;
    agent.stop()?;
    collector.stop()?;
    let latencies: Vec<f64> = closed
        .iter()
        .filter_map(|(path, at)| {
            let both = (*seen[0].get(path)?).max(*seen[1].get(path)?);
            Some(both.saturating_duration_since(*at).as_secs_f64())
        })
        .collect();
    ensure!(
        latencies.len() == closed.len(),
        "some files never reached both catalogs"
    );
    data::retire(&dir, &options.dir.join("runs"))?;
    Ok(format!(
        "Latency, close on the station to presence in both catalogs, {count} files of {} KiB at {PER_SECOND}/s: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        SIZE >> 10,
        percentile(&latencies, 50.0) * 1e3,
        percentile(&latencies, 99.0) * 1e3,
        percentile(&latencies, 100.0) * 1e3,
    ))
}

fn write(path: &std::path::Path, rng: &mut Rng) -> Result<()> {
    let mut data = vec![0u8; SIZE];
    rng.fill(&mut data);
    let mut file = std::fs::File::create(path)?;
    file.write_all(&data)?;
    Ok(())
}
