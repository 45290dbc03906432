//! Developer tasks: `cargo xtask test` sets up what the suite needs on a
//! fresh Debian machine (`mariadb-server` for the catalog tests) and runs
//! every test of the workspace; `cargo xtask chaos` runs the long chaos
//! scenario.

mod bench;
mod chaos;
mod fuzz;
mod package;
mod quickstart;

use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};

const HELP: &str = "\
cargo xtask <task>

tasks:
  quickstart [DIR] build Ferry and run a collector and an agent on sample
                   data with the embedded SQLite catalogs (default DIR:
                   ferry-quickstart); leaves ready-to-edit configs in DIR
  bench [ARGS...]  Ferry against rsync over ssh and sftp on three data sets,
                   latency, 200-station fan-in, MariaDB apply rate; prints
                   a table (ARGS: see `cargo xtask bench --help`)
  package [--check]
                   build the .deb and .rpm of ferry-agent and
                   ferry-collector into target/packages; --check also
                   inspects them, runs lintian, rpm and systemd-analyze,
                   and installs the .debs into a Debian root
  fuzz [TARGET...] [--seconds N]
                   run the cargo-fuzz targets (frame, path, config,
                   due_backup, zmtp; default all) N seconds each (default 600),
                   print executions and crashes; installs cargo-fuzz if
                   missing, uses nightly if rustup has it, else stable with
                   RUSTC_BOOTSTRAP=1
  test [ARGS...]   run the whole test suite (cargo nextest when installed,
                   cargo test otherwise); ARGS go to the test runner
  chaos [FLAGS]    the long chaos run (about 2.5 GiB on 8 stations, 10 min of
                   kill -9, cuts and MariaDB outages, then every check and
                   its figures); --seed N --files N --stations N --max-mib N
                   --large N --large-mib N --seconds N --settle-secs N,
                   --short for the CI form, --release
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => test(&args[1..]),
        Some("quickstart") => quickstart::run(&args[1..]),
        Some("bench") => bench::run(&args[1..]),
        Some("package") => package::run(&args[1..]),
        Some("chaos") => chaos::run(&args[1..]),
        Some("fuzz") => fuzz::run(&args[1..]),
        Some("-h" | "--help" | "help") | None => {
            print!("{HELP}");
            Ok(())
        }
        Some(other) => Err(anyhow::anyhow!("unknown task {other:?}\n{HELP}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("xtask: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn test(extra: &[String]) -> Result<()> {
    ensure_mariadb()?;
    // The end-to-end tests run the real `ferry-agent` and `ferry-collector`
    // binaries; build them (debug, as the tests are) before the tests start.
    run(Command::new("cargo").args(["build", "--workspace", "--bins"]))?;
    let mut command = Command::new("cargo");
    if has_nextest() {
        command.args(["nextest", "run", "--workspace", "--no-fail-fast"]);
    } else {
        command.args(["test", "--workspace", "--no-fail-fast"]);
    }
    command.args(extra);
    run(&mut command)
}

/// The MariaDB tests start their own servers from the distribution's
/// `mariadb-server` package; install it when `mariadbd` is missing. A
/// system service the package may start is not used.
pub(crate) fn ensure_mariadb() -> Result<()> {
    if mariadbd_installed() {
        return Ok(());
    }
    eprintln!("xtask: mariadbd not found; installing mariadb-server with apt-get");
    let apt = |args: &[&str]| {
        run(Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive"))
    };
    apt(&["update"])
        .and_then(|()| apt(&["install", "-y", "--no-install-recommends", "mariadb-server"]))
        .context(
            "cannot install mariadb-server, which the MariaDB tests need \
             (run as root on Debian/Ubuntu, or install it yourself)",
        )?;
    if !mariadbd_installed() {
        bail!("mariadb-server is installed but mariadbd is neither on PATH nor in /usr/sbin");
    }
    Ok(())
}

fn mariadbd_installed() -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([std::path::PathBuf::from("/usr/sbin")])
        .any(|dir| dir.join("mariadbd").is_file())
}

/// Builds the release `ferry-agent` and `ferry-collector`.
pub(crate) fn build_release_daemons() -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(Command::new(cargo).args([
        "build",
        "--release",
        "--bin",
        "ferry-agent",
        "--bin",
        "ferry-collector",
    ]))
}

/// Whether cargo-nextest is installed.
pub(crate) fn has_nextest() -> bool {
    Command::new("cargo")
        .args(["nextest", "--version"])
        .output()
        .is_ok_and(|out| out.status.success())
}

fn run(command: &mut Command) -> Result<()> {
    eprintln!("xtask: running {command:?}");
    let status = command
        .status()
        .with_context(|| format!("cannot start {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed with {status}");
    }
    Ok(())
}
