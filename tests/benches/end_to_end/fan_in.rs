//! Fan-in: one collector, many stations (real `ferry-agent` processes, each
//! with its own certificate) sending at once; aggregate files/s and the
//! slowest station's rate against the fastest's.
//!
//! "At once": all agents are started, watching empty roots and connected
//! first (an agent connects at start and stays connected), then
//! every station's files arrive together (one directory renamed into each
//! root, all within a few milliseconds), and each station is timed from its
//! own rename to its last row in both catalogs. Timing from each agent's
//! process start instead would measure the benchmark's 1–3 s of starting
//! 200 processes one after another, not how the collector shares.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use ferry_tests::pki::TestPki;

use crate::Options;
use crate::data;
use crate::ferry::{Agent, Binaries, Collector};
use crate::stats::{self, median};

const FILES: usize = 20;
const SIZE: usize = 100 << 10;

/// One fan-in round's figures.
struct Round {
    files_per_s: f64,
    /// How long handing out all stations' files took.
    release_ms: f64,
    /// CPU seconds from the release to the last row: all agents together,
    /// and the collector.
    agents_cpu: f64,
    collector_cpu: f64,
    /// The collector's peak RSS, bytes.
    collector_rss: u64,
    fastest: f64,
    /// The 10th percentile: how the fastest station compares with the
    /// early few rather than with one.
    p10: f64,
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
    let _instances = InotifyInstances::at_least(stations + 64)?;
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
        "Fan-in, {stations} stations × {FILES} files of {} KiB at once (all released within {:.0} ms), {} rounds (medians): {:.0} files/s ({:.0} MB/s); per station, from its files' arrival to its last row in both catalogs: fastest {:.2} s, 10th percentile {:.2} s, median {:.2} s, slowest {:.2} s; slowest/fastest rate {:.2} (rounds {low:.2}–{high:.2}); CPU s: agents {:.2}, collector {:.2}; collector peak RSS {:.1} MiB",
        SIZE >> 10,
        m(|r| r.release_ms),
        rounds.len(),
        m(|r| r.files_per_s),
        m(|r| r.files_per_s) * SIZE as f64 / 1e6,
        m(|r| r.fastest),
        m(|r| r.p10),
        m(|r| r.median),
        m(|r| r.slowest),
        median(&ratios),
        m(|r| r.agents_cpu),
        m(|r| r.collector_cpu),
        rounds.iter().map(|r| r.collector_rss).max().unwrap_or(0) as f64 / (1 << 20) as f64,
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
    // Each station's files wait outside its (empty) root as hard links to
    // the shared set, in a directory that one rename moves into the root.
    let held = |name: &str| dir.join("held").join(name);
    let watched = |name: &str| dir.join(name).join("root");
    for name in &names {
        std::fs::create_dir_all(watched(name))?;
        let batch = held(name).join("batch");
        std::fs::create_dir_all(&batch)?;
        for entry in std::fs::read_dir(root)? {
            let entry = entry?;
            std::fs::hard_link(entry.path(), batch.join(entry.file_name()))?;
        }
    }
    eprintln!("fan-in: starting {stations} agents");
    let mut agents = Vec::new();
    for name in &names {
        let agent = Agent::start(
            bins,
            pki,
            name,
            collector.addr,
            &watched(name),
            &dir.join(name),
        )?;
        agents.push((name.clone(), agent));
    }
    for (name, agent) in &mut agents {
        agent.wait_connected(name)?;
    }
    // Every agent is up, watching and connected (as agents stay between
    // batches): hand all stations their files at once, each as one
    // directory renamed into its root.
    let cpu = |agents: &[(String, Agent)], collector: &Collector| -> Result<(f64, f64)> {
        let mut sum = 0.0;
        for (_, agent) in agents {
            sum += stats::cpu(agent.pid())?;
        }
        Ok((sum, stats::cpu(collector.process.child.id())?))
    };
    let cpu_before = cpu(&agents, &collector)?;
    let mut released = HashMap::new();
    let first = Instant::now();
    for name in &names {
        std::fs::rename(held(name).join("batch"), watched(name).join("batch"))?;
        released.insert(name.clone(), Instant::now());
    }
    let spread = first.elapsed();
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
        for name in &names {
            let complete =
                |m: &HashMap<String, u64>| m.get(name).copied().unwrap_or(0) >= FILES as u64;
            if !done.contains_key(name) && complete(&primary) && complete(&backup) {
                done.insert(name.clone(), (now - released[name]).as_secs_f64());
            }
        }
        collector.check_alive()?;
        std::thread::sleep(Duration::from_millis(20));
    }
    let total = first.elapsed().as_secs_f64();
    let cpu_after = cpu(&agents, &collector)?;
    let collector_rss = stats::peak_rss(collector.process.child.id())?;
    for (_, agent) in agents {
        agent.stop()?;
    }
    collector.stop()?;
    // The roots hold links to the shared set: unlink them (no inode is
    // freed) before the run's own output is emptied and set aside.
    for name in &names {
        std::fs::remove_dir_all(watched(name))?;
    }
    data::retire(&dir, &options.dir.join("runs"))?;
    let times: Vec<f64> = done.values().copied().collect();
    Ok(Round {
        files_per_s: (stations * FILES) as f64 / total,
        release_ms: spread.as_secs_f64() * 1e3,
        agents_cpu: cpu_after.0 - cpu_before.0,
        collector_cpu: cpu_after.1 - cpu_before.1,
        collector_rss,
        fastest: times.iter().copied().fold(f64::INFINITY, f64::min),
        p10: stats::percentile(&times, 10.0),
        median: median(&times),
        slowest: times.iter().copied().fold(0.0, f64::max),
    })
}

/// Linux allows 128 inotify instances per user by default; each agent takes
/// one, and an agent without one polls its roots (every 30 s), which would
/// be measured as an unfair collector. Raises the limit for the run (as
/// root) and puts the old value back afterwards.
struct InotifyInstances {
    old: Option<usize>,
}

const INOTIFY_INSTANCES: &str = "/proc/sys/fs/inotify/max_user_instances";

impl InotifyInstances {
    fn at_least(wanted: usize) -> Result<Self> {
        let old: usize = std::fs::read_to_string(INOTIFY_INSTANCES)?.trim().parse()?;
        if old >= wanted {
            return Ok(Self { old: None });
        }
        std::fs::write(INOTIFY_INSTANCES, format!("{wanted}\n")).map_err(|e| {
            anyhow::anyhow!(
                "{INOTIFY_INSTANCES} is {old}, below the {wanted} inotify instances the fan-in needs, and cannot be raised ({e}); run as root or raise it by hand"
            )
        })?;
        Ok(Self { old: Some(old) })
    }
}

impl Drop for InotifyInstances {
    fn drop(&mut self) {
        if let Some(old) = self.old {
            let _ = std::fs::write(INOTIFY_INSTANCES, format!("{old}\n"));
        }
    }
}
