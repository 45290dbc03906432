//! `cargo xtask package [--check]`: the .deb and .rpm of ferry-agent and
//! ferry-collector in `target/packages/`; with `--check`, every package
//! inspected (files, modes, conffiles, scripts, unit), lintian, rpm queries,
//! `systemd-analyze verify` and `security` of both units, and an install
//! test of the .debs in a Debian root, ending in a summary.

mod boot;
mod inspect;
mod install;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

/// The packaging tools, pinned: their output is what the checks expect.
const CARGO_DEB: (&str, &str) = ("cargo-deb", "3.8.0");
const CARGO_GENERATE_RPM: (&str, &str) = ("cargo-generate-rpm", "0.21.1");

/// One daemon and what its packages install.
#[derive(Debug)]
struct Daemon {
    /// Package, binary and unit name.
    name: &'static str,
    /// The crate's directory in the workspace.
    crate_dir: &'static str,
    /// File name of its configuration in `packaging/` and `/etc/ferry/`.
    config: &'static str,
    /// State directories below `/var/lib/ferry`, owned by `ferry`, 0750.
    state_dirs: &'static [&'static str],
    /// The unit's line that lets it write them.
    unit_state: &'static str,
}

const DAEMONS: [Daemon; 2] = [
    Daemon {
        name: "ferry-agent",
        crate_dir: "agent",
        config: "agent.toml",
        state_dirs: &["agent"],
        unit_state: "StateDirectory=ferry/agent",
    },
    Daemon {
        name: "ferry-collector",
        crate_dir: "collector",
        config: "collector.toml",
        state_dirs: &["collector", "repository"],
        unit_state: "ReadWritePaths=/var/lib/ferry",
    },
];

/// The packages built for one daemon.
#[derive(Debug)]
struct Built {
    daemon: &'static Daemon,
    deb: PathBuf,
    rpm: PathBuf,
}

/// Where things are.
#[derive(Debug)]
struct Workspace {
    root: PathBuf,
    target: PathBuf,
}

impl Workspace {
    fn locate() -> Result<Self> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("xtask has no parent directory")?
            .to_owned();
        let target = match std::env::var_os("CARGO_TARGET_DIR") {
            Some(dir) => root.join(dir),
            None => root.join("target"),
        };
        Ok(Workspace { root, target })
    }

    fn packages(&self) -> PathBuf {
        self.target.join("packages")
    }

    /// Scratch space of `--check`, cleared at each run.
    fn check_dir(&self) -> PathBuf {
        self.target.join("package-check")
    }
}

/// Runs the task.
pub fn run(args: &[String]) -> Result<()> {
    let check = match args {
        [] => false,
        [flag] if flag == "--check" => true,
        _ => bail!("usage: cargo xtask package [--check]"),
    };
    let started = Instant::now();
    let ws = Workspace::locate()?;
    let built = build(&ws)?;
    let build_time = started.elapsed();
    println!("\npackages:");
    for b in &built {
        println!("  {}\n  {}", b.deb.display(), b.rpm.display());
    }
    if !check {
        return Ok(());
    }
    ensure_apt_tools()?;
    let mut report = Report::default();
    inspect::all(&ws, &built, &mut report)?;
    install::all(&ws, &built, &mut report);
    report.print();
    println!(
        "time: {} building, {} in all",
        secs(build_time),
        secs(started.elapsed())
    );
    ensure!(
        report.failed() == 0,
        "{} package checks failed",
        report.failed()
    );
    Ok(())
}

/// Builds the release binaries once, then both packages of each daemon.
fn build(ws: &Workspace) -> Result<Vec<Built>> {
    ensure_cargo_tool(CARGO_DEB)?;
    ensure_cargo_tool(CARGO_GENERATE_RPM)?;
    let mut release = cargo(ws);
    release.args(["build", "--release", "--locked"]);
    for d in &DAEMONS {
        release.args(["--bin", d.name]);
    }
    crate::run(&mut release)?;

    let packages = ws.packages();
    fs::create_dir_all(&packages)?;
    for entry in fs::read_dir(&packages)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "deb" || e == "rpm") {
            fs::remove_file(&path)?;
        }
    }
    // cargo-generate-rpm neither strips binaries nor compresses man pages:
    // its assets point at copies made here (cargo-deb does both itself).
    let release = ws.target.join("release");
    let rpm_inputs = release.join("rpm");
    fs::create_dir_all(&rpm_inputs)?;
    let mut built = Vec::new();
    for daemon in &DAEMONS {
        let name = daemon.name;
        crate::run(
            Command::new("strip")
                .args(["--strip-unneeded", "-o"])
                .arg(rpm_inputs.join(name))
                .arg(release.join(name)),
        )?;
        let man = ws.root.join(format!("packaging/man/{name}.1"));
        let gz = fs::File::create(rpm_inputs.join(format!("{name}.1.gz")))?;
        crate::run(
            Command::new("gzip")
                .args(["-9", "-n", "-c"])
                .arg(man)
                .stdout(gz),
        )?;

        let deb = capture(
            cargo(ws)
                .args(["deb", "-p", name, "--no-build", "--strip", "--output"])
                .arg(&packages),
        )?;
        let deb = PathBuf::from(deb.lines().last().unwrap_or_default().trim());
        ensure!(deb.is_file(), "cargo deb did not print the .deb it made");
        crate::run(
            cargo(ws)
                .args(["generate-rpm", "-p", daemon.crate_dir, "--output"])
                .arg(&packages),
        )?;
        let rpm = packages.join(format!(
            "{name}-{}-1.{}.rpm",
            env!("CARGO_PKG_VERSION"),
            std::env::consts::ARCH
        ));
        ensure!(rpm.is_file(), "{} was not made", rpm.display());
        built.push(Built { daemon, deb, rpm });
    }
    Ok(built)
}

fn cargo(ws: &Workspace) -> Command {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command.current_dir(&ws.root);
    command
}

/// Installs a pinned cargo subcommand unless that version is there.
fn ensure_cargo_tool((krate, version): (&str, &str)) -> Result<()> {
    let subcommand = krate.trim_start_matches("cargo-");
    let installed = Command::new("cargo")
        .args([subcommand, "--version"])
        .output()
        .is_ok_and(|out| {
            out.status.success()
                && String::from_utf8_lossy(&out.stdout)
                    .split_whitespace()
                    .any(|word| word == version)
        });
    if !installed {
        eprintln!("xtask: installing {krate} {version}");
        // Built in a temporary directory that cargo removes, not in the
        // workspace's target directory.
        crate::run(
            Command::new("cargo")
                .args(["install", "--locked", krate, "--version", version])
                .env_remove("CARGO_TARGET_DIR"),
        )?;
    }
    Ok(())
}

/// lintian, rpm, debootstrap, systemd-analyze and systemd-nspawn, from apt
/// when missing.
fn ensure_apt_tools() -> Result<()> {
    let needed: Vec<&str> = [
        ("lintian", "lintian"),
        ("rpm", "rpm"),
        ("debootstrap", "debootstrap"),
        ("systemd-analyze", "systemd"),
        ("systemd-nspawn", "systemd-container"),
    ]
    .into_iter()
    .filter(|(program, _)| !on_path(program))
    .map(|(_, package)| package)
    .collect();
    if needed.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing {} with apt-get", needed.join(" "));
    let apt = |args: &[&str]| {
        crate::run(
            Command::new("apt-get")
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
    };
    apt(&["update"])
        .and_then(|()| {
            let mut args = vec!["install", "-y", "--no-install-recommends"];
            args.extend(&needed);
            apt(&args)
        })
        .context(
            "cannot install the package checks' tools (run as root on Debian, \
             or install them yourself)",
        )
}

fn on_path(program: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .any(|dir| dir.join(program).is_file())
}

/// Runs `command`, returning its standard output; fails with its standard
/// error unless it succeeds.
fn capture(command: &mut Command) -> Result<String> {
    let out = command
        .output()
        .with_context(|| format!("cannot start {command:?}"))?;
    ensure!(
        out.status.success(),
        "{command:?} failed with {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The outcome of every check, printed at the end.
#[derive(Debug, Default)]
struct Report {
    rows: Vec<(String, Outcome)>,
}

#[derive(Debug)]
enum Outcome {
    Passed(String),
    Failed(String),
    /// Could not run here, for a reason outside the packages.
    Skipped(String),
}

impl Report {
    /// Runs one check and records its outcome; true if it passed.
    fn check(&mut self, name: impl Into<String>, check: impl FnOnce() -> Result<String>) -> bool {
        let outcome = match check() {
            Ok(detail) => Outcome::Passed(detail),
            Err(error) => Outcome::Failed(format!("{error:#}")),
        };
        let passed = matches!(outcome, Outcome::Passed(_));
        self.record(name.into(), outcome);
        passed
    }

    fn record(&mut self, name: String, outcome: Outcome) {
        let (mark, text) = outcome.show();
        println!("check {}: {name}: {text}", mark.trim());
        self.rows.push((name, outcome));
    }

    fn failed(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Failed(_)))
    }

    fn count(&self, which: impl Fn(&Outcome) -> bool) -> usize {
        self.rows.iter().filter(|(_, o)| which(o)).count()
    }

    fn print(&self) {
        println!("\npackage checks:");
        for (name, outcome) in &self.rows {
            let (mark, text) = outcome.show();
            let mut lines = text.lines();
            println!("  {mark} {name}: {}", lines.next().unwrap_or_default());
            for line in lines {
                println!("         {line}");
            }
        }
        let passed = self.count(|o| matches!(o, Outcome::Passed(_)));
        let skipped = self.count(|o| matches!(o, Outcome::Skipped(_)));
        println!(
            "{passed} passed, {} failed, {skipped} skipped",
            self.failed()
        );
    }
}

impl Outcome {
    fn show(&self) -> (&'static str, &str) {
        match self {
            Outcome::Passed(text) => ("ok  ", text),
            Outcome::Failed(text) => ("FAIL", text),
            Outcome::Skipped(text) => ("skip", text),
        }
    }
}

fn secs(d: Duration) -> String {
    format!("{:.0} s", d.as_secs_f64())
}
