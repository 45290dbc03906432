//! `cargo xtask bench`: builds the release binaries and runs the end-to-end
//! benchmark (`tests/benches/end_to_end`), which compares Ferry with rsync
//! over ssh and the legacy sftp pattern and measures latency, fan-in, the
//! MariaDB apply rate and the agent's memory with many files at its start.

use std::process::Command;

use anyhow::{Context, Result, ensure};

/// Runs the benchmark; `args` go to it (`--help` lists them).
pub fn run(args: &[String]) -> Result<()> {
    crate::build_release_daemons()?;
    crate::ensure_mariadb()?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
        .args([
            "bench",
            "--package",
            "ferry-tests",
            "--bench",
            "end_to_end",
            "--",
        ])
        .args(args)
        .status()
        .context("cannot run cargo bench")?;
    ensure!(status.success(), "the benchmark failed");
    Ok(())
}
