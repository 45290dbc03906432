//! `cargo xtask fuzz [TARGET...] [--seconds N]`: runs the cargo-fuzz targets
//! of `fuzz/` one after the other, each for N seconds (default 600), and
//! prints how many inputs each executed and whether it ran clean.
//!
//! Installs cargo-fuzz when missing. Uses a nightly toolchain when rustup
//! has one; otherwise runs on the stable toolchain with `RUSTC_BOOTSTRAP=1`,
//! which lets stable accept the `-Z` sanitizer flags cargo-fuzz passes. Each
//! target starts from its committed seeds (`fuzz/seeds/<target>/`) and the
//! reproducers of fixed bugs (`fuzz/regressions/<target>/`), and grows its
//! corpus in `fuzz/corpus/<target>/` (not committed). A crash leaves its
//! input in `fuzz/artifacts/<target>/` and makes the task fail.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// The targets, in the order they run when none is named.
const TARGETS: &[&str] = &["frame", "path", "config", "due_backup", "zmtp"];

/// Largest single allocation a target may make: twice the 8 MiB frame limit.
/// A decoder that trusts a length prefix trips it.
const MALLOC_LIMIT_MB: u32 = 16;

/// Longest input libFuzzer makes for `target`: past the limits each check
/// enforces (4096-byte paths and `DUE_BACKUP` lines), so the refusals run too.
fn max_len(target: &str) -> usize {
    match target {
        "due_backup" | "config" => 16384,
        _ => 8192,
    }
}

/// What one target's run came to.
struct Outcome {
    target: String,
    seconds: u64,
    executions: Option<u64>,
    crash: Option<String>,
}

/// Runs the task with its command-line `args`.
pub fn run(args: &[String]) -> Result<()> {
    let (targets, seconds) = parse_args(args)?;
    let root = workspace_root()?;
    let fuzz_dir = root.join("fuzz");
    ensure_cargo_fuzz()?;
    let toolchain = Toolchain::pick();
    eprintln!("xtask: fuzzing with {}", toolchain.describe());

    let mut outcomes = Vec::new();
    for target in &targets {
        outcomes.push(run_target(&toolchain, &fuzz_dir, target, seconds)?);
    }
    println!(
        "\n{:<12} {:>8} {:>14}  result",
        "target", "seconds", "executions"
    );
    for o in &outcomes {
        let executions = o
            .executions
            .map_or_else(|| "?".to_owned(), |n| n.to_string());
        let result = match &o.crash {
            None => "clean".to_owned(),
            Some(what) => format!("FAILED: {what}"),
        };
        println!(
            "{:<12} {:>8} {:>14}  {result}",
            o.target, o.seconds, executions
        );
    }
    let crashed: Vec<&str> = outcomes
        .iter()
        .filter(|o| o.crash.is_some())
        .map(|o| o.target.as_str())
        .collect();
    if !crashed.is_empty() {
        bail!(
            "fuzzing failed in {} (a crash: reproduce with `cargo +nightly fuzz run -a \
             TARGET fuzz/artifacts/TARGET/FILE` in the repository root)",
            crashed.join(", ")
        );
    }
    Ok(())
}

fn parse_args(args: &[String]) -> Result<(Vec<String>, u64)> {
    let mut targets = Vec::new();
    let mut seconds = 600;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--seconds" => {
                let value = args.next().context("--seconds needs a number")?;
                seconds = value
                    .parse()
                    .ok()
                    .filter(|&s| s > 0)
                    .with_context(|| format!("--seconds {value:?} is not a positive number"))?;
            }
            target if TARGETS.contains(&target) => targets.push(target.to_owned()),
            other => bail!(
                "unknown fuzz target or option {other:?}; targets: {}",
                TARGETS.join(", ")
            ),
        }
    }
    if targets.is_empty() {
        targets = TARGETS.iter().map(|&t| t.to_owned()).collect();
    }
    Ok((targets, seconds))
}

fn workspace_root() -> Result<PathBuf> {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_owned)
        .context("xtask has no parent directory")
}

/// Installs cargo-fuzz from crates.io when `cargo fuzz` is not there.
fn ensure_cargo_fuzz() -> Result<()> {
    let present = Command::new("cargo")
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if present {
        return Ok(());
    }
    eprintln!("xtask: cargo-fuzz not found; installing it with cargo install");
    let status = Command::new("cargo")
        .args(["install", "--locked", "cargo-fuzz"])
        .status()
        .context("cannot run cargo install")?;
    if !status.success() {
        bail!("cargo install --locked cargo-fuzz failed with {status}");
    }
    Ok(())
}

/// How cargo-fuzz gets a compiler that takes `-Z` flags.
enum Toolchain {
    /// `cargo +nightly`.
    Nightly,
    /// The default (stable) toolchain with `RUSTC_BOOTSTRAP=1`.
    StableBootstrap,
}

impl Toolchain {
    fn pick() -> Self {
        let nightly = Command::new("rustup")
            .args(["toolchain", "list"])
            .output()
            .is_ok_and(|out| {
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .any(|line| line.starts_with("nightly"))
            });
        if nightly {
            Toolchain::Nightly
        } else {
            Toolchain::StableBootstrap
        }
    }

    fn describe(&self) -> &'static str {
        match self {
            Toolchain::Nightly => "the nightly toolchain",
            Toolchain::StableBootstrap => {
                "the stable toolchain and RUSTC_BOOTSTRAP=1 (no nightly installed)"
            }
        }
    }

    fn cargo(&self) -> Command {
        let mut command = Command::new("cargo");
        // `cargo xtask` runs this under `cargo run`, which sets the xtask
        // package's variables; build scripts that watch one (ring watches
        // CARGO_MANIFEST_DIR) would rebuild on every switch between this
        // task and a plain `cargo fuzz`.
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if name == "CARGO"
                || name.starts_with("CARGO_PKG_")
                || matches!(
                    &*name,
                    "CARGO_MANIFEST_DIR"
                        | "CARGO_MANIFEST_PATH"
                        | "CARGO_CRATE_NAME"
                        | "CARGO_BIN_NAME"
                        | "CARGO_PRIMARY_PACKAGE"
                        | "CARGO_RUSTC_CURRENT_DIR"
                )
            {
                command.env_remove(&*name);
            }
        }
        match self {
            Toolchain::Nightly => {
                command.arg("+nightly");
            }
            Toolchain::StableBootstrap => {
                command.env("RUSTC_BOOTSTRAP", "1");
            }
        }
        command
    }
}

fn run_target(
    toolchain: &Toolchain,
    fuzz_dir: &Path,
    target: &str,
    seconds: u64,
) -> Result<Outcome> {
    let corpus = fuzz_dir.join("corpus").join(target);
    std::fs::create_dir_all(&corpus)
        .with_context(|| format!("cannot create {}", corpus.display()))?;
    // libFuzzer writes new inputs to the first directory and only reads the
    // others.
    let mut dirs = vec![corpus];
    for extra in ["seeds", "regressions"] {
        let dir = fuzz_dir.join(extra).join(target);
        if dir.is_dir() {
            dirs.push(dir);
        }
    }
    let mut command = toolchain.cargo();
    command
        .current_dir(fuzz_dir.parent().unwrap_or(fuzz_dir))
        // -a: debug assertions and overflow checks, so arithmetic overflow
        // is a finding too.
        .args(["fuzz", "run", "-a", target])
        .args(&dirs)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg("-print_final_stats=1")
        .arg(format!("-max_len={}", max_len(target)))
        .arg(format!("-malloc_limit_mb={MALLOC_LIMIT_MB}"));
    let dict = fuzz_dir.join("dict").join(format!("{target}.dict"));
    if dict.is_file() {
        command.arg(format!("-dict={}", dict.display()));
    }
    eprintln!("xtask: fuzzing {target} for {seconds} s: {command:?}");
    let mut child = command
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {command:?}"))?;
    let mut executions = None;
    let mut crash = None;
    if let Some(stderr) = child.stderr.take() {
        for line in BufReader::new(stderr).lines() {
            let line = line.context("cannot read the fuzzer's output")?;
            eprintln!("{line}");
            if let Some(n) = line.strip_prefix("stat::number_of_executed_units:") {
                executions = n.trim().parse().ok();
            }
            if let Some(at) = line.find("Test unit written to ") {
                crash = Some(line[at + "Test unit written to ".len()..].trim().to_owned());
            } else if crash.is_none() && line.starts_with("==") && line.contains("ERROR:") {
                crash = Some(line.clone());
            }
        }
    }
    let status = child.wait().context("cannot wait for cargo fuzz")?;
    if !status.success() && crash.is_none() {
        crash = Some(format!("cargo fuzz exited with {status}"));
    }
    Ok(Outcome {
        target: target.to_owned(),
        seconds,
        executions,
        crash,
    })
}
