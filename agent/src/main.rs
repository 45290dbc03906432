//! `ferry-agent`: command line entry point of the station agent.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

use ferry_agent::config;
use ferry_agent::halt_flag::{HaltFlag, Raise, Resumed};

const HELP: &str = "\
ferry-agent: watches a station's measurement directories and pushes every
finished file to the Ferry collector over mutual TLS.

usage: ferry-agent <command> [--config PATH] [options]

commands:
  run        run the agent (--check: validate the config and exit)
  status     due files and bytes, last ack, halt flag, collector, errors,
             files held by min_age_secs, roots, the indexerD import
             (--json for machine-readable output)
  halt       raise an operator HALT_FLAG: the agent stops sending until resume
  resume     remove the operator HALT_FLAG
  systemd-dropin
             print the systemd drop-in that opens ferry-agent.service's
             sandbox to this configuration's roots and legacy paths
  help       print this help

options:
  -c, --config PATH  configuration file (default /etc/ferry/agent.toml)
      --check        validate the configuration and exit (also without `run`)
  -h, --help         print this help
  -V, --version      print the version

Environment: FERRY_LOG sets the log filter (default info).
";

struct Args {
    command: String,
    config: PathBuf,
    check: bool,
    json: bool,
}

fn parse() -> Result<Option<Args>, String> {
    use lexopt::prelude::*;
    let mut parser = lexopt::Parser::from_env();
    let mut args = Args {
        command: String::new(),
        config: config::DEFAULT_PATH.into(),
        check: false,
        json: false,
    };
    while let Some(arg) = parser.next().map_err(|e| e.to_string())? {
        match arg {
            Short('h') | Long("help") => {
                print!("{HELP}");
                return Ok(None);
            }
            Short('V') | Long("version") => {
                println!("ferry-agent {}", env!("CARGO_PKG_VERSION"));
                return Ok(None);
            }
            Short('c') | Long("config") => {
                args.config = parser.value().map_err(|e| e.to_string())?.into()
            }
            Long("check") => args.check = true,
            Long("json") => args.json = true,
            Value(v) if args.command.is_empty() => args.command = v.to_string_lossy().into_owned(),
            other => return Err(other.unexpected().to_string()),
        }
    }
    if args.command.is_empty() {
        if args.check {
            args.command = "run".into();
        } else {
            return Err("missing command (see --help)".into());
        }
    }
    if args.command == "help" {
        print!("{HELP}");
        return Ok(None);
    }
    Ok(Some(args))
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(Some(args)) => args,
        Ok(None) => return ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("ferry-agent: {message}");
            return ExitCode::from(2);
        }
    };
    let settings = match config::load(&args.config) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("ferry-agent: {error}");
            return ExitCode::from(2);
        }
    };
    ferry_common::logging::init();
    let flag = HaltFlag::new(&settings.legacy.halt_flag, settings.legacy.halt_timeout);
    let result: anyhow::Result<()> = match args.command.as_str() {
        "run" if args.check => ferry_agent::daemon::station_id(&settings)
            .map_err(anyhow::Error::from)
            .and_then(|station| {
                let material = ferry_common::tls::TlsMaterial::from_files(
                    &settings.tls.ca,
                    &settings.tls.cert,
                    &settings.tls.key,
                )?;
                ferry_common::tls::client_config(&material)?;
                // A root may be a mount that comes later: not an error, but
                // worth a word.
                for root in &settings.roots {
                    if !root.path.is_dir() {
                        let how = if root.poll.is_some() {
                            "polls for it and picks it up when it appears"
                        } else {
                            "watches for it and picks it up when it appears"
                        };
                        eprintln!(
                            "ferry-agent: warning: root {:?}: {} does not exist (yet); the agent {how}",
                            root.name,
                            root.path.display()
                        );
                    }
                }
                println!("{}: ok (station {station})", args.config.display());
                Ok(())
            }),
        "run" => run(settings),
        "status" => ferry_agent::status::report(&settings)
            .map(|report| {
                if args.json {
                    print!("{}", ferry_agent::status::json(&report));
                } else {
                    print!("{}", ferry_agent::status::text(&report));
                }
            })
            .map_err(Into::into),
        "halt" => match flag.raise_operator_halt(SystemTime::now()) {
            Ok(Raise::Raised(held)) | Ok(Raise::TookOver { held, .. }) => {
                held.keep();
                println!("halted: the agent sends nothing until `ferry-agent resume`");
                Ok(())
            }
            Ok(Raise::Busy(holder)) => Err(anyhow::anyhow!(
                "HALT_FLAG is held by {holder}; try again in a moment"
            )),
            Err(error) => Err(error.into()),
        },
        "systemd-dropin" => ferry_agent::sandbox::systemd_dropin(&settings, &args.config)
            .map(|text| print!("{text}"))
            .map_err(Into::into),
        "resume" => match flag.resume() {
            Ok(Resumed::Removed(_)) => {
                println!("resumed");
                Ok(())
            }
            Ok(Resumed::NotHalted) => {
                println!("not halted");
                Ok(())
            }
            Err(error) => Err(error.into()),
        },
        other => {
            eprintln!("ferry-agent: unknown command {other:?} (see --help)");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!(
                "ferry-agent: {}",
                ferry_common::logging::error_chain(error.as_ref())
            );
            ExitCode::FAILURE
        }
    }
}

fn run(settings: config::Settings) -> anyhow::Result<()> {
    // One arena: the agent's peak memory stays within its 32 MiB budget.
    ferry_common::malloc::tune(1);
    // One async thread: the agent talks to one collector at a time, and its
    // reads and hashing run on blocking threads beside it (a second async
    // thread only cost CPU, 4% on 10,000 small files; BENCHMARKS.md).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let readiness = ferry_common::readiness::Notifier::from_env();
    runtime.block_on(async {
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let stopping = readiness.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            if let (Ok(mut term), Ok(mut int), Ok(mut hangup)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
                signal(SignalKind::hangup()),
            ) {
                loop {
                    tokio::select! {
                        _ = term.recv() => break,
                        _ = int.recv() => break,
                        // SIGHUP's default action would end the agent. It
                        // has nothing to reload: a changed agent.toml
                        // takes effect at the next start.
                        _ = hangup.recv() => tracing::info!(
                            "SIGHUP ignored: the agent reloads nothing; restart it to apply a changed configuration"
                        ),
                    }
                }
                tracing::info!("stopping");
                stopping.stopping();
                let _ = stop.send(true);
            }
        });
        ferry_agent::daemon::run(settings, shutdown, readiness).await?;
        Ok(())
    })
}
