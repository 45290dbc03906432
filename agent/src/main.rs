//! `ferry-agent`: command line entry point of the station agent.

use std::process::ExitCode;

const HELP: &str = "\
ferry-agent: watches a station's measurement directories and pushes every
finished file to the Ferry collector over mutual TLS.

usage: ferry-agent <command> [options]

commands:
  help   print this help

options:
  -h, --help     print this help
  -V, --version  print the version

Not built yet: run, status, halt, resume, --check (see the project's issues).
";

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some("-h" | "--help" | "help") => {
            print!("{HELP}");
            ExitCode::SUCCESS
        }
        Some("-V" | "--version") => {
            println!("ferry-agent {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Some(other) => {
            eprintln!("ferry-agent: {other}: not built yet");
            ExitCode::from(2)
        }
        None => {
            eprintln!("ferry-agent: missing command (see --help)");
            ExitCode::from(2)
        }
    }
}
