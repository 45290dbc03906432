//! Files present at start: an agent started over a root that already holds
//! many small files (100,000 × 1 KiB by default). Its peak resident memory
//! until every file is in both catalogs, the time that took, and its
//! resident memory once idle with them all in its ledger; beside them the
//! same agent over an empty root, for the memory it needs anyway.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, ensure};
use ferry_tests::pki::TestPki;
use rusqlite::{Connection, OpenFlags};

use crate::Options;
use crate::data;
use crate::ferry::{Agent, Binaries, Collector};

/// The size of each file.
const SIZE: usize = 1 << 10;

/// How long an idle agent is left before its resident memory is read: the
/// last acks, `BACKUP_DONE` and `DUE_BACKUP` are written by then.
const IDLE_AFTER: Duration = Duration::from_secs(5);

/// The agent's figures for one root.
#[derive(Debug)]
struct Figures {
    files: usize,
    seconds: f64,
    peak: u64,
    idle: u64,
}

pub fn run(bins: &Binaries, pki: &TestPki, options: &Options) -> Result<String> {
    let count = options.start_files;
    let files: Vec<(String, usize)> = (0..count)
        .map(|i| (format!("d{:03}/rfeye002073_T{i:06}.bin", i / 1000), SIZE))
        .collect();
    let root = data::make(
        &options.dir.join("data"),
        &format!("at-start-{count}"),
        &files,
        0x05ca_9001,
    )?;
    drop(files);
    // Files younger than the settle time would wait for it first: this
    // measures files that were there, finished, before the agent started.
    let marker = options.dir.join(format!("data/at-start-{count}.complete"));
    let made = std::fs::metadata(&marker)?.modified()?;
    let old = made + Duration::from_secs(10);
    if let Ok(wait) = old.duration_since(SystemTime::now()) {
        std::thread::sleep(wait);
    }
    let empty = options.dir.join("runs/at-start-empty-root");
    data::clear(&empty)?;
    std::fs::create_dir_all(&empty)?;
    eprintln!("at start: an agent over an empty root");
    let work = options.dir.join("runs");
    let baseline = measure(bins, pki, &empty, 0, &work.join("at-start-0"), &work)?;
    eprintln!("at start: an agent over {count} files of 1 KiB");
    let many = measure(bins, pki, &root, count, &work.join("at-start-many"), &work)?;
    let mib = |b: u64| b as f64 / 1048576.0;
    let mut table = String::from(
        "Files present when the agent starts (1 KiB each): the agent's peak RSS until all are \
         in both catalogs, seconds from its start until then, and its RSS idle 5 s after the \
         last is done in its ledger\n\n\
         | files at start | seconds to all sent | files/s | agent peak RSS MiB | agent idle RSS MiB |\n\
         |---|---|---|---|---|\n",
    );
    for f in [&baseline, &many] {
        let rate = if f.files == 0 {
            "–".to_owned()
        } else {
            format!("{:.0}", f.files as f64 / f.seconds)
        };
        table.push_str(&format!(
            "| {} | {:.2} | {rate} | {:.1} | {:.1} |\n",
            f.files,
            f.seconds,
            mib(f.peak),
            mib(f.idle),
        ));
    }
    Ok(table)
}

/// Ships the `files` files of `root` with a fresh collector and agent in
/// `dir`, then leaves the agent idle; `dir` is retired under `work` after.
fn measure(
    bins: &Binaries,
    pki: &TestPki,
    root: &Path,
    files: usize,
    dir: &Path,
    work: &Path,
) -> Result<Figures> {
    data::clear(dir)?;
    let mut collector = Collector::start(bins, pki, dir, None)?;
    let started = Instant::now();
    let mut agent = Agent::start_station(bins, pki, &collector, root, dir)?;
    agent.wait_connected(crate::ferry::STATION)?;
    let deadline = started + Duration::from_secs(1800);
    while !collector.catalogs.hold(files as u64) {
        ensure!(Instant::now() < deadline, "not done after 30 minutes");
        agent.check_alive()?;
        collector.check_alive()?;
        std::thread::sleep(Duration::from_millis(10));
    }
    let seconds = started.elapsed().as_secs_f64();
    let ledger = dir.join("agent/state/ledger.sqlite");
    let deadline = Instant::now() + Duration::from_secs(300);
    while not_done(&ledger)? > 0 {
        ensure!(
            Instant::now() < deadline,
            "files not done in the agent's ledger 5 minutes after the catalogs held them"
        );
        agent.check_alive()?;
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(IDLE_AFTER);
    let idle = rss(agent.pid())?;
    // The peak is read last: it covers the idle time too.
    let peak = crate::stats::peak_rss(agent.pid())?;
    agent.stop()?;
    collector.stop()?;
    if std::env::var_os("FERRY_BENCH_KEEP").is_none() {
        data::retire(dir, work)?;
    }
    Ok(Figures {
        files,
        seconds,
        peak,
        idle,
    })
}

/// Files of the agent's ledger not yet done (or their post-ack work not).
fn not_done(ledger: &Path) -> Result<u64> {
    let conn = Connection::open_with_flags(ledger, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .with_context(|| format!("cannot open {}", ledger.display()))?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let n: i64 = conn.query_row(
        "SELECT COUNT(*) FROM files WHERE state != 'done' OR post_ack_pending = 1",
        [],
        |r| r.get(0),
    )?;
    Ok(n as u64)
}

/// Resident set (VmRSS) of a running process, in bytes.
fn rss(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .context("no VmRSS")?;
    Ok(kib * 1024)
}
