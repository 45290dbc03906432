//! `cargo xtask bench`: Ferry end to end against rsync over ssh and the
//! legacy one-`get`-per-file sftp pattern, in one run on one machine, both
//! sides on loopback; then close-to-catalog latency, a 200-station fan-in,
//! the MariaDB apply rate and the agent's memory with 100,000 files present
//! at its start. Prints a Markdown table (also written to
//! `target/bench/report.md` and kept under `target/bench/reports`).
//!
//! Timings on a small VM swing from run to run, so each data set is shipped
//! in interleaved rounds (Ferry, rsync, sftp, Ferry, rsync, sftp, ...) and
//! the table quotes medians and the median of the per-round ratios. Each
//! round ends with the floor (`floor.rs`), the CPU of the work any verified,
//! encrypted, durable transfer must do, for the table to be read against.

#![allow(clippy::unwrap_used)] // a benchmark driver, not production code

mod apply;
mod at_start;
mod baseline;
mod data;
mod fan_in;
mod ferry;
mod floor;
mod latency;
mod stats;

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use ferry_tests::pki::TestPki;

use crate::data::DataSet;
use crate::stats::{Measured, median};

const HELP: &str = "\
end_to_end benchmark (run it with `cargo xtask bench [OPTIONS]`)

options:
  --rounds N          interleaved rounds per data set (default 5)
  --sets LIST         data sets to ship, of d1,d2,d3 (default all)
  --skip LIST         parts to leave out, of transfer,latency,fan-in,apply,
                      at-start, the baselines rsync,sftp and the floor (Ferry
                      alone, for profiling)
  --latency-secs N    how long files are written at 50/s (default 60)
  --stations N        stations in the fan-in (default 200)
  --apply-rows N      catalog rows for the MariaDB apply rate (default 40000)
  --start-files N     files of 1 KiB present at the agent's start (default 100000)
  --dir DIR           work directory (default target/bench)
";

/// What one invocation runs.
#[derive(Debug)]
pub struct Options {
    rounds: usize,
    sets: Vec<DataSet>,
    skip: Vec<String>,
    latency_secs: u64,
    stations: usize,
    apply_rows: usize,
    start_files: usize,
    /// Data sets, certificates, runs and the report.
    pub dir: PathBuf,
}

fn options() -> Result<Options> {
    let mut options = Options {
        rounds: 5,
        sets: DataSet::ALL.to_vec(),
        skip: Vec::new(),
        latency_secs: 60,
        stations: 200,
        apply_rows: 40_000,
        start_files: 100_000,
        dir: target_dir().join("bench"),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--rounds" => options.rounds = value()?.parse()?,
            "--sets" => {
                options.sets = value()?
                    .split(',')
                    .map(DataSet::parse)
                    .collect::<Result<_>>()?;
            }
            "--skip" => options.skip = value()?.split(',').map(str::to_owned).collect(),
            "--latency-secs" => options.latency_secs = value()?.parse()?,
            "--stations" => options.stations = value()?.parse()?,
            "--apply-rows" => options.apply_rows = value()?.parse()?,
            "--start-files" => options.start_files = value()?.parse()?,
            "--dir" => options.dir = PathBuf::from(value()?),
            // `cargo bench` passes this to every bench target.
            "--bench" => {}
            "-h" | "--help" => {
                print!("{HELP}");
                std::process::exit(0);
            }
            other => bail!("unknown option {other:?}\n{HELP}"),
        }
    }
    if options.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    Ok(options)
}

impl Options {
    fn skips(&self, part: &str) -> bool {
        self.skip.iter().any(|s| s == part)
    }
}

/// `target/`, where the release binaries are.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || {
            let tests = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
            tests.parent().unwrap_or(&tests).join("target")
        },
        PathBuf::from,
    )
}

/// MiB written by each page-cache probe ([`data::page_cache_rates`]).
const PROBE_MIB: usize = 256;

fn main() -> Result<()> {
    let options = options()?;
    std::fs::create_dir_all(&options.dir)?;
    let bins = ferry::Binaries::release(&target_dir())?;
    let pki = TestPki::new()?;
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let mut report = String::new();
    writeln!(report, "{}", stats::machine())?;
    report_file(&options, &report)?;

    if !options.skips("transfer") {
        let ssh = baseline::Sshd::start(&options.dir.join("sshd"))?;
        writeln!(
            report,
            "\n| data set | tool | seconds | MB/s | files/s | sender CPU s | receiver CPU s | agent RSS MiB | collector RSS MiB | Ferry speed-up (median of rounds) |\n|---|---|---|---|---|---|---|---|---|---|"
        )?;
        let mut page_cache = Vec::new();
        let mut floor_lines = Vec::new();
        for set in &options.sets {
            let dir = data::ensure(&options.dir.join("data"), *set)?;
            let (fresh, reused) = data::page_cache_rates(&options.dir.join("probe"), PROBE_MIB)?;
            eprintln!(
                "{set}: page-cache writes {fresh:.0} MB/s into fresh pages, {reused:.0} MB/s into pages just freed"
            );
            page_cache.push(format!("{set} {fresh:.0} / {reused:.0}"));
            let mut ferry_runs = Vec::new();
            let mut rsync_runs = Vec::new();
            let mut sftp_runs = Vec::new();
            let mut floors = Vec::new();
            let work = options.dir.join("runs");
            for round in 0..options.rounds {
                settle(&dir);
                let f = ferry::ship(&bins, &pki, &dir, &work)?;
                eprintln!("{set} round {round}: ferry {:.2} s", f.seconds);
                ferry_runs.push(f);
                if !options.skips("rsync") {
                    settle(&dir);
                    let r = ssh.rsync(&dir, &work)?;
                    eprintln!("{set} round {round}: rsync {:.2} s", r.seconds);
                    rsync_runs.push(r);
                }
                if !options.skips("sftp") {
                    settle(&dir);
                    let s = ssh.sftp(&dir, &work)?;
                    eprintln!("{set} round {round}: sftp {:.2} s", s.seconds);
                    sftp_runs.push(s);
                }
                if !options.skips("floor") {
                    settle(&dir);
                    let f = floor::measure(&dir, &work)?;
                    eprintln!("{set} round {round}: floor {:.2} s", f.measured.seconds);
                    floors.push(f);
                }
            }
            let vs = |base: &[Measured]| {
                let ratios: Vec<f64> = ferry_runs
                    .iter()
                    .zip(base)
                    .map(|(f, b)| b.seconds / f.seconds)
                    .collect();
                median(&ratios)
            };
            let (vs_rsync, vs_sftp) = (vs(&rsync_runs), vs(&sftp_runs));
            let floor_runs: Vec<Measured> = floors.iter().map(|f| f.measured.clone()).collect();
            for (tool, runs, ratio) in [
                ("Ferry", &ferry_runs, String::new()),
                (
                    "rsync -a over ssh + sync",
                    &rsync_runs,
                    format!("{vs_rsync:.2}×"),
                ),
                (
                    "sftp, one get per file + sync",
                    &sftp_runs,
                    format!("{vs_sftp:.2}×"),
                ),
                (
                    "the floor: the same work in one thread, no network (see below)",
                    &floor_runs,
                    String::new(),
                ),
            ] {
                if runs.is_empty() {
                    continue;
                }
                writeln!(report, "{}", stats::row(set, tool, runs, &ratio))?;
            }
            if !floors.is_empty() {
                let cpu = median(
                    &floor_runs
                        .iter()
                        .map(|r| r.sender_cpu + r.receiver_cpu)
                        .collect::<Vec<_>>(),
                );
                floor_lines.push(format!(
                    "{set}: {cpu:.2} CPU s, that is at least {:.2} s on {cores} cores ({})",
                    cpu / cores as f64,
                    floor::stages_line(&floors),
                ));
            }
            report_file(&options, &report)?;
        }
        if !floor_lines.is_empty() {
            writeln!(
                report,
                "\nThe floor: one thread reads, hashes (SHA-256), seals and opens (AES-256-GCM, 16 KiB records), \
                 hashes again, compares and writes (direct I/O, one syncfs) every file: the work that a \
                 verified, encrypted, durable transfer cannot leave out, without moving the bytes between \
                 its two ends. CPU seconds by stage, medians of rounds:\n\n- {}",
                floor_lines.join("\n- ")
            )?;
        }
        writeln!(
            report,
            "\nPage-cache writes before each data set, MB/s into fresh pages / into pages just freed \
             ({PROBE_MIB} MiB, fsynced; rsync and sftp write all they receive this way): {}",
            page_cache.join(", ")
        )?;
    }
    if !options.skips("latency") {
        let figures = latency::run(&bins, &pki, &options)?;
        writeln!(report, "\n{figures}")?;
    }
    if !options.skips("fan-in") {
        let figures = fan_in::run(&bins, &pki, &options)?;
        writeln!(report, "\n{figures}")?;
    }
    if !options.skips("apply") {
        let figures = apply::run(&bins, &pki, &options)?;
        writeln!(report, "\n{figures}")?;
    }
    if !options.skips("at-start") {
        let figures = at_start::run(&bins, &pki, &options)?;
        writeln!(report, "\n{figures}")?;
        report_file(&options, &report)?;
    }
    println!("\n{report}");
    report_file(&options, &report)?;
    Ok(())
}

/// Writes the report so far to `report.md` (the latest run's) and to
/// `reports/<start time>.md`, which later runs leave alone.
fn report_file(options: &Options, report: &str) -> Result<()> {
    static STARTED: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let started = STARTED.get_or_init(stats::utc_stamp);
    let kept = options.dir.join("reports");
    std::fs::create_dir_all(&kept)?;
    for path in [
        options.dir.join("report.md"),
        kept.join(format!("{started}.md")),
    ] {
        std::fs::write(&path, report)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// [`data::settle`] before a timed run; says once when the caches cannot be
/// dropped (not root), because the figures then carry the previous run's
/// deletions.
fn settle(source: &std::path::Path) {
    static WARNED: std::sync::Once = std::sync::Once::new();
    match data::settle(source) {
        Ok(true) => {}
        Ok(false) => WARNED.call_once(|| {
            eprintln!(
                "note: cannot drop the page cache (not root?); each run follows the previous run's deletions"
            )
        }),
        Err(error) => eprintln!("note: settling before a run failed: {error:#}"),
    }
}
