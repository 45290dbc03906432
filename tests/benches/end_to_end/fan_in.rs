//! Fan-in: one collector, many stations (real `ferry-agent` processes, each
//! with its own certificate) sending at once; aggregate files/s and the
//! slowest station's rate against the fastest's.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use ferry_tests::pki::TestPki;

use crate::Options;
use crate::data;
use crate::ferry::{Agent, Binaries, Collector};
use crate::stats::median;

const FILES: usize = 20;
const SIZE: usize = 100 << 10;

/// One fan-in round's figures.
struct Round {
    files_per_s: f64,
    fastest: f64,
    median: f64,
    slowest: f64,
}

/// Runs the fan-in `options.rounds` times (which agent gets ahead varies a
/// lot from one round to the next) and reports the medians, with the range
/// of the fairness ratio.
pub fn run(bins: &Binaries, pki: &TestPki, options: &Options) -> Result<String> {
    let stations = options.stations;
    let files: Vec<(String, usize)> = (0..FILES)
        .map(|i| (format!("scan-{i:03}.bin"), SIZE))
        .collect();
    // Every station watches a copy-free view of the same files: each
    // station's rows and repository area are its own all the same.
    let root = data::make(&options.dir.join("data"), "fan-in", &files, 0xfa41)?;
    let mut rounds = Vec::new();
    for round in 0..options.rounds {
        let r = one_round(bins, pki, options, &root)?;
        eprintln!(
            "fan-in round {round}: {:.0} files/s, slowest/fastest {:.2}",
            r.files_per_s,
            r.fastest / r.slowest
        );
        rounds.push(r);
    }
    let m = |f: fn(&Round) -> f64| median(&rounds.iter().map(f).collect::<Vec<_>>());
    let ratios: Vec<f64> = rounds.iter().map(|r| r.fastest / r.slowest).collect();
    let (low, high) = ratios.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), r| {
        (lo.min(*r), hi.max(*r))
    });
    Ok(format!(
        "Fan-in, {stations} stations × {FILES} files of {} KiB at once, {} rounds (medians): {:.0} files/s ({:.0} MB/s); per station time to deliver: fastest {:.2} s, median {:.2} s, slowest {:.2} s; slowest/fastest rate {:.2} (rounds {low:.2}–{high:.2})",
        SIZE >> 10,
        rounds.len(),
        m(|r| r.files_per_s),
        m(|r| r.files_per_s) * SIZE as f64 / 1e6,
        m(|r| r.fastest),
        m(|r| r.median),
        m(|r| r.slowest),
        median(&ratios),
    ))
}

fn one_round(
    bins: &Binaries,
    pki: &TestPki,
    options: &Options,
    root: &std::path::Path,
) -> Result<Round> {
    let stations = options.stations;
    let dir = options.dir.join("runs/fan-in");
    data::clear(&dir)?;
    let names: Vec<String> = (0..stations).map(|i| format!("station-{i:03}")).collect();
    for name in &names {
        pki.station(name)?;
    }
    let mut collector = Collector::start(bins, pki, &dir, None)?;
    eprintln!("fan-in: starting {stations} agents");
    let mut agents = Vec::new();
    let first = Instant::now();
    for name in &names {
        let started = Instant::now();
        let agent = Agent::start(bins, pki, name, collector.addr, root, &dir.join(name))?;
        agents.push((name.clone(), started, agent));
    }
    let mut done: HashMap<String, f64> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(900);
    while done.len() < stations {
        ensure!(
            Instant::now() < deadline,
            "{} of {stations} stations not done after 15 minutes",
            stations - done.len()
        );
        let [primary, backup] = [0, 1].map(|w| collector.catalogs.per_station(w));
        let now = Instant::now();
        for (name, started, _) in &agents {
            let complete =
                |m: &HashMap<String, u64>| m.get(name).copied().unwrap_or(0) >= FILES as u64;
            if !done.contains_key(name) && complete(&primary) && complete(&backup) {
                done.insert(name.clone(), (now - *started).as_secs_f64());
            }
        }
        collector.check_alive()?;
        std::thread::sleep(Duration::from_millis(20));
    }
    let total = first.elapsed().as_secs_f64();
    for (_, _, agent) in agents {
        agent.stop()?;
    }
    collector.stop()?;
    data::retire(&dir, &options.dir.join("runs"))?;
    let times: Vec<f64> = done.values().copied().collect();
    Ok(Round {
        files_per_s: (stations * FILES) as f64 / total,
        fastest: times.iter().copied().fold(f64::INFINITY, f64::min),
        median: median(&times),
        slowest: times.iter().copied().fold(0.0, f64::max),
    })
}
