//! `ferry-collector`: command line entry point; dispatches to the library.

use std::io::{self, Write};
use std::process::ExitCode;

use ferry_collector::pki_cli;
use lexopt::prelude::*;

const HELP: &str = "\
ferry-collector: receives files that Ferry stations push over mutual TLS.

usage: ferry-collector <command> [options]

commands:
  pki init-ca        create the certificate authority
  pki issue-server   issue the collector's TLS server certificate
  pki issue-station  issue a station's TLS client certificate
  pki show           describe a certificate
  help               print this help

options:
  -h, --help     print this help
  -V, --version  print the version

Run `ferry-collector pki --help` or `ferry-collector pki <command> --help`
for the options of each command.
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
            "help" => match parser.next() {
                Ok(Some(Value(topic))) if topic == "pki" => print(pki_cli::PKI_HELP),
                _ => print(HELP),
            },
            other => {
                eprintln!("ferry-collector: {other}: not built yet");
                ExitCode::from(2)
            }
        },
        other => usage_error(&other.unexpected().to_string(), USAGE),
    }
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
