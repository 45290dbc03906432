//! Figures of one run, medians, table rows, and what `/proc` tells about a
//! process's CPU time and peak memory.

use anyhow::{Context, Result};

/// One shipment of a data set by one tool.
#[derive(Debug, Clone, Default)]
pub struct Measured {
    pub seconds: f64,
    pub files: usize,
    pub bytes: u64,
    /// CPU seconds (user + system) of the sending side.
    pub sender_cpu: f64,
    /// CPU seconds of the receiving side.
    pub receiver_cpu: f64,
    /// Peak RSS of the agent and the collector, for Ferry runs.
    pub rss: Option<(u64, u64)>,
}

/// The median (mean of the middle two for an even count).
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// A table row of medians.
pub fn row(set: impl std::fmt::Display, tool: &str, runs: &[Measured], ratio: &str) -> String {
    let m = |f: fn(&Measured) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
    let seconds = m(|r| r.seconds);
    let first = &runs[0];
    let rss = |pick: fn(&(u64, u64)) -> u64| {
        let peaks: Vec<u64> = runs
            .iter()
            .filter_map(|r| r.rss.as_ref().map(pick))
            .collect();
        peaks
            .iter()
            .max()
            .map_or("–".into(), |p| format!("{:.1}", *p as f64 / 1048576.0))
    };
    format!(
        "| {set} | {tool} | {seconds:.2} | {:.0} | {:.0} | {:.2} | {:.2} | {} | {} | {ratio} |",
        first.bytes as f64 / 1e6 / seconds,
        first.files as f64 / seconds,
        m(|r| r.sender_cpu),
        m(|r| r.receiver_cpu),
        rss(|r| r.0),
        rss(|r| r.1),
    )
}

/// A percentile (0–100) of `values`, nearest rank.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// The time now in UTC, in `date`'s `format`.
fn utc_date(format: &str) -> String {
    std::process::Command::new("date")
        .args(["-u", format])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// The time now in UTC, for a file name: `20261203T162700Z`.
pub fn utc_stamp() -> String {
    utc_date("+%Y%m%dT%H%M%SZ")
}

/// Cores, memory and kernel of this machine, and the date.
pub fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .unwrap_or(0);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_default();
    let date = utc_date("+%Y-%m-%d %H:%M UTC");
    format!(
        "Machine: {cores} cores ({cpu}), {:.1} GiB RAM; run {date}",
        mem_kib as f64 / 1048576.0
    )
}

/// `/proc/<pid>/stat` fields after the command name, as numbers where they
/// are (field 3 of the man page is index 0).
fn stat_fields(pid: &str) -> Result<Vec<u64>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("cannot read /proc/{pid}/stat"))?;
    let rest = text.rsplit_once(')').map_or("", |(_, r)| r);
    Ok(rest
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect())
}

/// Clock ticks per second of `/proc` times (USER_HZ, 100 on Linux).
const TICKS: f64 = 100.0;

/// CPU seconds (user + system) a running process used so far.
pub fn cpu(pid: u32) -> Result<f64> {
    let f = stat_fields(&pid.to_string())?;
    Ok((f[11] + f[12]) as f64 / TICKS)
}

/// CPU seconds of the reaped children of `pid` ("self" for this process).
pub fn children_cpu(pid: &str) -> Result<f64> {
    let f = stat_fields(pid)?;
    Ok((f[13] + f[14]) as f64 / TICKS)
}

/// Peak resident set (VmHWM) of a running process, in bytes.
pub fn peak_rss(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .context("no VmHWM")?;
    Ok(kib * 1024)
}
