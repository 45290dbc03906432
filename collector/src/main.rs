//! `ferry-collector`: command line entry point; dispatches to the library.

use std::io::{self, Write};
use std::process::ExitCode;

use ferry_collector::pki_cli;
use lexopt::prelude::*;

const HELP: &str = "\
ferry-collector: receives files that Ferry stations push over mutual TLS.

usage: ferry-collector <command> [options]

commands:
  run                run the collector (--config PATH, --check to only validate)
  status             per-station status (--config PATH, --station S, --json)
  reconcile          compare the primary and backup catalogs row by row and
                     copy missing rows each way (--config PATH, --dry-run)
  migrate            run the journal's and catalogs' schema migrations
  pki init-ca        create the certificate authority
  pki issue-server   issue the collector's TLS server certificate
  pki issue-station  issue a station's TLS client certificate
  pki show           describe a certificate
  help               print this help

options:
  -h, --help     print this help
  -V, --version  print the version

--config defaults to /etc/ferry/collector.toml.

Run `ferry-collector <command> --help` (or `ferry-collector pki <command>
--help`) for the options of each command.
";

const RUN_HELP: &str = "\
usage: ferry-collector run [--config PATH] [--check]

Runs the collector until SIGTERM or SIGINT.

options:
  -c, --config PATH  configuration file (default /etc/ferry/collector.toml)
      --check        validate the configuration and TLS files, then exit
  -h, --help         print this help
";

const STATUS_HELP: &str = "\
usage: ferry-collector status [--config PATH] [--station S] [--json]

Per-station status (host_files, pending_backup, backup_error, last_backup)
and each catalog's state, since when, lag and last error, as the running
collector last recorded them in its journal.

options:
  -c, --config PATH  configuration file (default /etc/ferry/collector.toml)
      --station S    only station S
      --json         machine-readable output (the JSON of GET /status)
  -h, --help         print this help
";

const RECONCILE_HELP: &str = "\
usage: ferry-collector reconcile [--config PATH] [--dry-run]

Compares the primary and backup catalogs row by row and copies rows missing
on either side; rows that differ are reported, never overwritten. Exits 1
while the catalogs differ.

options:
  -c, --config PATH  configuration file (default /etc/ferry/collector.toml)
      --dry-run      only say what would be copied
  -h, --help         print this help
";

const MIGRATE_HELP: &str = "\
usage: ferry-collector migrate [--config PATH]

Creates the state directory if needed and runs the schema migrations of the
journal and both catalogs (the collector also runs them when it starts).

options:
  -c, --config PATH  configuration file (default /etc/ferry/collector.toml)
  -h, --help         print this help
";

const USAGE: &str = "usage: ferry-collector <command> [options] (see --help)";

fn main() -> ExitCode {
    let mut parser = lexopt::Parser::from_env();
    let first = match parser.next() {
        Ok(Some(arg)) => arg,
        Ok(None) => return usage_error("missing command", USAGE),
        Err(err) => return usage_error(&err.to_string(), USAGE),
    };
    match first {
        Short('h') | Long("help") => print(HELP),
        Short('V') | Long("version") => {
            print(&format!("ferry-collector {}\n", env!("CARGO_PKG_VERSION")))
        }
        Value(command) => match command.to_string_lossy().as_ref() {
            "pki" => run_pki(&mut parser),
            "run" | "status" | "reconcile" | "migrate" => {
                let name = command.to_string_lossy().into_owned();
                match parse_admin(&name, &mut parser) {
                    Ok(Some(admin)) => run_admin(admin),
                    Ok(None) => print(match name.as_str() {
                        "run" => RUN_HELP,
                        "status" => STATUS_HELP,
                        "reconcile" => RECONCILE_HELP,
                        _ => MIGRATE_HELP,
                    }),
                    Err(message) => usage_error(&message, USAGE),
                }
            }
            "help" => match parser.next() {
                Ok(Some(Value(topic))) if topic == "pki" => print(pki_cli::PKI_HELP),
                _ => print(HELP),
            },
            other => {
                eprintln!("ferry-collector: {other}: unknown command (see --help)");
                ExitCode::from(2)
            }
        },
        other => usage_error(&other.unexpected().to_string(), USAGE),
    }
}

/// Options of the daemon and admin commands, parsed once.
struct Admin {
    command: String,
    config: std::path::PathBuf,
    check: bool,
    json: bool,
    dry_run: bool,
    station: Option<String>,
}

/// The command's options; `None` when it was asked for its help.
fn parse_admin(command: &str, parser: &mut lexopt::Parser) -> Result<Option<Admin>, String> {
    let mut admin = Admin {
        command: command.to_owned(),
        config: "/etc/ferry/collector.toml".into(),
        check: false,
        json: false,
        dry_run: false,
        station: None,
    };
    while let Some(arg) = parser.next().map_err(|e| e.to_string())? {
        match arg {
            Short('h') | Long("help") => return Ok(None),
            Short('c') | Long("config") => {
                admin.config = parser.value().map_err(|e| e.to_string())?.into();
            }
            Long("check") if command == "run" => admin.check = true,
            Long("json") if command == "status" => admin.json = true,
            Long("station") if command == "status" => {
                admin.station = Some(
                    parser
                        .value()
                        .map_err(|e| e.to_string())?
                        .to_string_lossy()
                        .into_owned(),
                );
            }
            Long("dry-run") if command == "reconcile" => admin.dry_run = true,
            other => return Err(format!("{command}: {}", other.unexpected())),
        }
    }
    Ok(Some(admin))
}

fn run_admin(admin: Admin) -> ExitCode {
    let settings = match ferry_collector::config::load(&admin.config) {
        Ok(settings) => settings,
        Err(error) => {
            ferry_common::logging::init();
            eprintln!("ferry-collector: {error}");
            return ExitCode::from(2);
        }
    };
    let log_filter = ferry_common::logging::init_with(settings.log_filter.as_deref());
    if admin.check {
        let material = ferry_common::tls::TlsMaterial::from_files(
            &settings.tls_ca,
            &settings.tls_cert,
            &settings.tls_key,
        )
        .and_then(|m| ferry_common::tls::server_config(&m).map(|_| ()));
        return match material {
            Ok(()) => {
                println!("{}: ok", admin.config.display());
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("ferry-collector: {}: {error}", admin.config.display());
                ExitCode::from(2)
            }
        };
    }
    if admin.command == "run" {
        // Two arenas for the collector's many threads (sessions, fsyncs).
        ferry_common::malloc::tune(2);
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        builder.worker_threads(async_workers());
    }
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("ferry-collector: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result: anyhow::Result<()> = runtime.block_on(async {
        match admin.command.as_str() {
            "run" => run(settings, &admin.config, log_filter).await?,
            "status" => {
                let now = time::OffsetDateTime::now_utc().unix_timestamp() * 1000;
                let status =
                    ferry_collector::admin::status(&settings, admin.station.as_deref(), now)?;
                let text = if admin.json {
                    ferry_collector::admin::status_json(&status)
                } else {
                    ferry_collector::admin::status_text(&status, now)
                };
                print!("{text}");
            }
            "reconcile" => {
                let report = ferry_collector::admin::reconcile(&settings, admin.dry_run).await?;
                print!("{}", ferry_collector::admin::report_text(&report));
                if !report.identical() {
                    anyhow::bail!("catalogs differ");
                }
            }
            _ => {
                ferry_collector::admin::migrate(&settings).await?;
                println!("migrations applied");
            }
        }
        Ok(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!(
                "ferry-collector: {}",
                ferry_common::logging::error_chain(error.as_ref())
            );
            ExitCode::FAILURE
        }
    }
}

/// Runs the collector until SIGTERM or SIGINT, reloading the config file
/// on SIGHUP, and telling a service manager (systemd `Type=notify`) when it
/// serves, reloads and stops.
async fn run(
    settings: ferry_collector::config::Settings,
    config: &std::path::Path,
    log_filter: ferry_common::logging::LogFilter,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let notifier = ferry_common::readiness::Notifier::from_env();
    // Installed before anything else runs: SIGHUP's default action ends
    // the process.
    let mut hangup = signal(SignalKind::hangup())?;
    let mut collector = ferry_collector::start(settings).await?;
    // The station listener is bound and the journal and catalogs' appliers
    // are open: stations can be served.
    notifier.ready(&format!("accepting stations on {}", collector.local_addr()));
    let metrics = collector.metrics().clone();
    let keep_alive = tokio::spawn(notifier.clone().keep_alive(
        std::time::Duration::from_secs(10),
        move || metrics.summary(),
        collector.stopping(),
    ));
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(()) = hangup.recv() => {
                notifier.notify(&reloading());
                reload(&mut collector, config, &log_filter).await;
                notifier.ready(&format!("accepting stations on {}", collector.local_addr()));
            }
        }
    }
    notifier.stopping();
    collector.stop().await;
    let _ = keep_alive.await;
    tracing::info!("collector stopped");
    Ok(())
}

/// The `RELOADING=1` notification, with the `MONOTONIC_USEC=` systemd
/// wants beside it.
fn reloading() -> String {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let usec = u64::try_from(now.tv_sec).unwrap_or(0) * 1_000_000
        + u64::try_from(now.tv_nsec).unwrap_or(0) / 1000;
    format!("RELOADING=1\nMONOTONIC_USEC={usec}\nSTATUS=reloading the configuration")
}

/// Re-reads the config file and applies its reloadable keys (`revoked`,
/// `log_filter`); an invalid file is logged and the running settings kept.
async fn reload(
    collector: &mut ferry_collector::Collector,
    config: &std::path::Path,
    log_filter: &ferry_common::logging::LogFilter,
) {
    tracing::info!(config = %config.display(), "SIGHUP: reloading the configuration");
    let settings = match ferry_collector::config::load(config) {
        Ok(settings) => settings,
        Err(error) => {
            tracing::error!(%error, "reload refused: the configuration is invalid; the running one is kept");
            return;
        }
    };
    let filter = settings.log_filter.clone();
    let reloaded = collector.reload(settings).await;
    if reloaded.applied.contains(&"log_filter") {
        let effective = log_filter.set(filter.as_deref());
        tracing::info!(filter = %effective, "log filter in force");
    }
    for station in &reloaded.disconnected {
        tracing::warn!(%station, "station revoked: disconnected");
    }
    if !reloaded.need_restart.is_empty() {
        tracing::warn!(
            keys = %reloaded.need_restart.join(", "),
            "changed keys not reloadable: they take effect at the next restart"
        );
    }
    let revoked = collector.settings().revoked.clone();
    tracing::info!(
        changed = %if reloaded.applied.is_empty() { "nothing reloadable".to_owned() } else { reloaded.applied.join(", ") },
        newly_revoked = %reloaded.revoked.join(", "),
        revoked_entries = revoked.len(),
        "configuration reloaded"
    );
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers, run until killed.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("stopping");
}

fn run_pki(parser: &mut lexopt::Parser) -> ExitCode {
    let result = pki_cli::parse(parser).and_then(|command| {
        pki_cli::execute(
            &command,
            time::OffsetDateTime::now_utc(),
            &mut io::stdout().lock(),
        )
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("ferry-collector: {err}");
            if let Some(usage) = err.usage() {
                eprintln!("{usage}");
            }
            ExitCode::from(err.exit_code())
        }
    }
}

fn print(text: &str) -> ExitCode {
    match io::stdout().lock().write_all(text.as_bytes()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("ferry-collector: cannot write to standard output: {err}");
            ExitCode::FAILURE
        }
    }
}

fn usage_error(message: &str, usage: &str) -> ExitCode {
    eprintln!("ferry-collector: {message}\n{usage}");
    ExitCode::from(2)
}

/// Threads for the async half of the collector: half the cores, at least
/// one. They carry the network side (TLS, ZMTP, the sessions); the other
/// half of the work, hashing and writing staged files and placing batches,
/// runs on blocking threads beside them. With one async thread per core,
/// on two cores, the two kinds contended for both: the collector spent 7%
/// more CPU on 10,000 small files (BENCHMARKS.md). `TOKIO_WORKER_THREADS`
/// overrides it.
fn async_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}
