//! `cargo xtask chaos`: the long form of the chaos scenario
//! (`tests/tests/chaos.rs`) in one command. Sets the scenario's
//! `FERRY_CHAOS_*` variables (long-form defaults, each overridable by a
//! flag), builds the binaries, runs the test with its output shown, and
//! leaves the figures block it prints on the terminal.

use std::process::Command;

use anyhow::{Context, Result, bail};

/// Long-form defaults: (flag, variable, value).
const PARAMETERS: &[(&str, &str, &str)] = &[
    ("--seed", "FERRY_CHAOS_SEED", ""),
    ("--files", "FERRY_CHAOS_FILES", "2500"),
    ("--stations", "FERRY_CHAOS_STATIONS", "8"),
    ("--max-mib", "FERRY_CHAOS_MAX_MIB", "64"),
    ("--large", "FERRY_CHAOS_LARGE", "4"),
    ("--large-mib", "FERRY_CHAOS_LARGE_MIB", "200"),
    ("--seconds", "FERRY_CHAOS_SECONDS", "600"),
    ("--settle-secs", "FERRY_CHAOS_SETTLE_SECS", "900"),
];

const USAGE: &str = "cargo xtask chaos [--seed N] [--files N] [--stations N] [--max-mib N] \
                     [--large N] [--large-mib N] [--seconds N] [--settle-secs N] [--short] [--release]";

/// Runs the chaos scenario with long-form parameters unless overridden.
pub fn run(args: &[String]) -> Result<()> {
    let mut values: Vec<(&str, String)> = PARAMETERS
        .iter()
        .map(|(_, var, value)| (*var, (*value).to_owned()))
        .collect();
    let mut release = false;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--release" => release = true,
            // The test's own defaults: what CI runs.
            "--short" => values.iter_mut().for_each(|(_, v)| v.clear()),
            flag => {
                let Some(i) = PARAMETERS.iter().position(|(f, _, _)| *f == flag) else {
                    bail!("unknown flag {flag:?}\nusage: {USAGE}");
                };
                let value = args
                    .next()
                    .with_context(|| format!("{flag} needs a number"))?;
                value
                    .parse::<u64>()
                    .with_context(|| format!("{flag} {value:?} is not a number"))?;
                values[i].1 = value.clone();
            }
        }
    }
    crate::ensure_mariadb()?;
    let profile: &[&str] = if release { &["--release"] } else { &[] };
    crate::run(
        Command::new("cargo")
            .args(["build", "--workspace", "--bins"])
            .args(profile),
    )?;
    if let Ok(out) = Command::new("df")
        .args(["-h", &std::env::temp_dir().to_string_lossy()])
        .output()
    {
        eprintln!(
            "xtask: space for the run's files (about 2.5 GiB in the long form, twice over):\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let mut command = Command::new("cargo");
    if crate::has_nextest() {
        command.args(["nextest", "run", "-p", "ferry-tests", "--test", "chaos"]);
        command.args(profile).arg("--no-capture");
    } else {
        command.args(["test", "-p", "ferry-tests", "--test", "chaos"]);
        command.args(profile).args(["--", "--nocapture"]);
    }
    for (var, value) in &values {
        if value.is_empty() {
            command.env_remove(var);
        } else {
            command.env(var, value);
        }
    }
    crate::run(&mut command)
}
