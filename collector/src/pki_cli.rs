//! The `ferry-collector pki` commands: create the CA, issue collector and
//! station certificates, and describe certificates.
//!
//! Arguments are parsed once into a [`PkiCommand`], which [`execute`] runs.

use std::ffi::OsString;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use ferry_common::pki::{self, CertificateAuthority, CertificateInfo, Issued, PkiError, Validity};
use ferry_common::station::{StationId, StationIdError};
use lexopt::prelude::*;
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Help for `ferry-collector pki --help`.
pub const PKI_HELP: &str = "\
Manage the Ferry certificate authority and certificates.

usage: ferry-collector pki <command> [options]

commands:
  init-ca        create the CA: DIR/ca.pem and DIR/ca.key
  issue-server   issue the collector's TLS server certificate
  issue-station  issue a station's TLS client certificate
  show           describe a certificate

options (init-ca, issue-server, issue-station):
  --dir DIR        directory holding ca.pem and ca.key
  --days N         validity in days (CA 3650, others 825)
  --force          replace existing files
  --name NAME      init-ca: CA common name (default \"Ferry CA\");
                   issue-server: DNS name or IP address, repeatable
  --out-cert FILE  issue-*: certificate path
  --out-key FILE   issue-*: private key path (written with mode 0600)

Run `ferry-collector pki <command> --help` for details.
";

const PKI_USAGE: &str =
    "usage: ferry-collector pki <init-ca|issue-server|issue-station|show> [options]";

const INIT_CA_HELP: &str = "\
Create the certificate authority that signs collector and station certificates.

usage: ferry-collector pki init-ca --dir DIR [--name NAME] [--days N] [--force]

  --dir DIR    write DIR/ca.pem and DIR/ca.key (key mode 0600)
  --name NAME  CA common name (default \"Ferry CA\")
  --days N     validity in days (default 3650)
  --force      replace an existing CA (invalidates every issued certificate)
";
const INIT_CA_USAGE: &str =
    "usage: ferry-collector pki init-ca --dir DIR [--name NAME] [--days N] [--force]";

const ISSUE_SERVER_HELP: &str = "\
Issue the collector's TLS server certificate, signed by the CA in DIR.

usage: ferry-collector pki issue-server --dir DIR --name DNS_OR_IP [--name ...] [options]

  --dir DIR        directory holding ca.pem and ca.key
  --name NAME      DNS name or IP address stations connect to; repeatable,
                   the first is also the common name
  --days N         validity in days (default 825)
  --out-cert FILE  certificate path (default DIR/server.pem)
  --out-key FILE   private key path (default DIR/server.key, mode 0600)
  --force          replace existing files
";
const ISSUE_SERVER_USAGE: &str = "usage: ferry-collector pki issue-server --dir DIR --name DNS_OR_IP [--name ...] [--days N] [--out-cert FILE] [--out-key FILE] [--force]";

const ISSUE_STATION_HELP: &str = "\
Issue a station's TLS client certificate, signed by the CA in DIR.

usage: ferry-collector pki issue-station --dir DIR STATION_ID [options]

  STATION_ID       1-64 characters of A-Z a-z 0-9 . _ -, not starting with . or -
  --dir DIR        directory holding ca.pem and ca.key
  --days N         validity in days (default 825)
  --out-cert FILE  certificate path (default DIR/stations/STATION_ID.pem)
  --out-key FILE   private key path (default DIR/stations/STATION_ID.key, mode 0600)
  --force          replace existing files
";
const ISSUE_STATION_USAGE: &str = "usage: ferry-collector pki issue-station --dir DIR STATION_ID [--days N] [--out-cert FILE] [--out-key FILE] [--force]";

const SHOW_HELP: &str = "\
Describe a PEM certificate: subject, station, expiry, SHA-256 fingerprint, names.

usage: ferry-collector pki show [--json] CERT.pem

  --json  print one JSON object instead of lines
";
const SHOW_USAGE: &str = "usage: ferry-collector pki show [--json] CERT.pem";

const DEFAULT_CA_NAME: &str = "Ferry CA";
const DEFAULT_CA_DAYS: u32 = 3650;
const DEFAULT_LEAF_DAYS: u32 = 825;

/// A parsed `pki` command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PkiCommand {
    /// Print this help text and exit successfully.
    Help(&'static str),
    InitCa {
        dir: PathBuf,
        name: String,
        days: u32,
        force: bool,
    },
    IssueServer {
        dir: PathBuf,
        names: Vec<String>,
        days: u32,
        out: Outputs,
        force: bool,
    },
    IssueStation {
        dir: PathBuf,
        station: StationId,
        days: u32,
        out: Outputs,
        force: bool,
    },
    Show {
        cert: PathBuf,
        json: bool,
    },
}

/// Where an issued certificate and its key go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outputs {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Why a `pki` command failed.
#[derive(Debug, thiserror::Error)]
pub enum PkiCliError {
    /// The command line is wrong; exit code 2.
    #[error("{message}")]
    Usage {
        message: String,
        usage: &'static str,
    },
    #[error("cannot issue a certificate for station {id:?}: {source}")]
    Station {
        id: String,
        #[source]
        source: StationIdError,
    },
    #[error(
        "no CA in {dir}: {missing} does not exist (create one with `ferry-collector pki init-ca --dir {dir}`)",
        dir = .dir.display(),
        missing = .missing.display()
    )]
    NoCa { dir: PathBuf, missing: PathBuf },
    #[error("{path} already exists; use --force to replace it", path = .path.display())]
    Exists { path: PathBuf },
    #[error("{path}: {source}", path = .path.display())]
    Certificate {
        path: PathBuf,
        #[source]
        source: PkiError,
    },
    #[error(transparent)]
    Pki(PkiError),
    #[error("cannot write to standard output: {0}")]
    Output(#[from] io::Error),
}

impl From<PkiError> for PkiCliError {
    fn from(err: PkiError) -> Self {
        match err {
            PkiError::Exists { path } => PkiCliError::Exists { path },
            other => PkiCliError::Pki(other),
        }
    }
}

impl PkiCliError {
    /// The process exit code for this error: 2 for usage errors, else 1.
    pub fn exit_code(&self) -> u8 {
        match self {
            PkiCliError::Usage { .. } => 2,
            _ => 1,
        }
    }

    /// The usage line to print after a usage error.
    pub fn usage(&self) -> Option<&'static str> {
        match self {
            PkiCliError::Usage { usage, .. } => Some(usage),
            _ => None,
        }
    }
}

/// Parses the arguments after `pki`.
pub fn parse(parser: &mut lexopt::Parser) -> Result<PkiCommand, PkiCliError> {
    let usage = usage_error(PKI_USAGE);
    let command = match parser.next().map_err(&usage)? {
        Some(Value(command)) => command,
        Some(Short('h') | Long("help")) => return Ok(PkiCommand::Help(PKI_HELP)),
        Some(other) => return Err(usage(other.unexpected())),
        None => return Err(usage_message("missing pki command", PKI_USAGE)),
    };
    match command.to_str() {
        Some("init-ca") => parse_init_ca(parser),
        Some("issue-server") => parse_issue_server(parser),
        Some("issue-station") => parse_issue_station(parser),
        Some("show") => parse_show(parser),
        Some("help") => Ok(PkiCommand::Help(PKI_HELP)),
        _ => Err(usage_message(
            format!("unknown pki command {command:?}"),
            PKI_USAGE,
        )),
    }
}

/// Runs `command`, printing results to `out`; `now` decides expiry texts.
pub fn execute(
    command: &PkiCommand,
    now: OffsetDateTime,
    out: &mut impl Write,
) -> Result<(), PkiCliError> {
    match command {
        PkiCommand::Help(text) => out.write_all(text.as_bytes())?,
        PkiCommand::InitCa {
            dir,
            name,
            days,
            force,
        } => {
            let ca = CertificateAuthority::create(name, Validity::days_from_now(*days))?;
            let files = Issued {
                cert_pem: ca.cert_pem().to_owned(),
                key_pem: ca.key_pem().to_owned(),
            };
            let (cert, key) = ca_paths(dir);
            pki::write_issued(&files, &cert, &key, *force)?;
            report_written(out, &cert, &key, &files, now)?;
        }
        PkiCommand::IssueServer {
            dir,
            names,
            days,
            out: paths,
            force,
        } => {
            let ca = load_ca(dir)?;
            let issued = ca.issue_server(names, Validity::days_from_now(*days))?;
            pki::write_issued(&issued, &paths.cert, &paths.key, *force)?;
            report_written(out, &paths.cert, &paths.key, &issued, now)?;
        }
        PkiCommand::IssueStation {
            dir,
            station,
            days,
            out: paths,
            force,
        } => {
            let ca = load_ca(dir)?;
            let issued = ca.issue_station(station, Validity::days_from_now(*days))?;
            pki::write_issued(&issued, &paths.cert, &paths.key, *force)?;
            report_written(out, &paths.cert, &paths.key, &issued, now)?;
        }
        PkiCommand::Show { cert, json } => {
            let pem = std::fs::read_to_string(cert).map_err(|source| {
                PkiCliError::Pki(PkiError::Io {
                    action: "read",
                    path: cert.clone(),
                    source,
                })
            })?;
            let info = pki::inspect_pem(&pem).map_err(|source| PkiCliError::Certificate {
                path: cert.clone(),
                source,
            })?;
            let text = if *json {
                render_json(&info, now)
            } else {
                render_text(&info, now)
            };
            out.write_all(text.as_bytes())?;
        }
    }
    Ok(())
}

/// `show` output: one `key: value` line per fact.
pub fn render_text(info: &CertificateInfo, now: OffsetDateTime) -> String {
    let station = info.station.as_ref().map_or("-", StationId::as_str);
    let names = names(info);
    let names = if names.is_empty() {
        "-".to_owned()
    } else {
        names.join(", ")
    };
    let mut usage = Vec::new();
    if info.server_auth {
        usage.push("server");
    }
    if info.client_auth {
        usage.push("client");
    }
    let days = expires_in_days(info, now);
    let expiry = if days.is_negative() || info.not_after <= now {
        format!("expired: {} ago", plural_days(days.unsigned_abs()))
    } else {
        format!("expires in: {}", plural_days(days.unsigned_abs()))
    };
    format!(
        "subject: {subject}\n\
         station: {station}\n\
         ca: {ca}\n\
         usage: {usage}\n\
         not before: {not_before}\n\
         not after: {not_after}\n\
         {expiry}\n\
         sha256: {sha256}\n\
         names: {names}\n",
        subject = info.subject_cn.as_deref().unwrap_or("-"),
        ca = if info.is_ca { "yes" } else { "no" },
        usage = if usage.is_empty() {
            "-".to_owned()
        } else {
            usage.join(", ")
        },
        not_before = rfc3339(info.not_before),
        not_after = rfc3339(info.not_after),
        sha256 = info.sha256_fingerprint,
    )
}

/// `show --json` output: one JSON object on one line.
pub fn render_json(info: &CertificateInfo, now: OffsetDateTime) -> String {
    #[derive(Serialize)]
    struct Show<'a> {
        subject: Option<&'a str>,
        station: Option<&'a str>,
        is_ca: bool,
        not_before: String,
        not_after: String,
        expires_in_days: i64,
        sha256: &'a str,
        dns_names: &'a [String],
        ip_addresses: Vec<String>,
        client_auth: bool,
        server_auth: bool,
    }
    ferry_common::json::line(&Show {
        subject: info.subject_cn.as_deref(),
        station: info.station.as_ref().map(StationId::as_str),
        is_ca: info.is_ca,
        not_before: rfc3339(info.not_before),
        not_after: rfc3339(info.not_after),
        expires_in_days: expires_in_days(info, now),
        sha256: &info.sha256_fingerprint,
        dns_names: &info.dns_names,
        ip_addresses: info.ip_addresses.iter().map(ToString::to_string).collect(),
        client_auth: info.client_auth,
        server_auth: info.server_auth,
    })
}

fn parse_init_ca(parser: &mut lexopt::Parser) -> Result<PkiCommand, PkiCliError> {
    let usage = usage_error(INIT_CA_USAGE);
    let mut dir = None;
    let mut name = None;
    let mut days = None;
    let mut force = false;
    while let Some(arg) = parser.next().map_err(&usage)? {
        match arg {
            Long("dir") => dir = Some(PathBuf::from(parser.value().map_err(&usage)?)),
            Long("name") => name = Some(string_value(parser, INIT_CA_USAGE)?),
            Long("days") => days = Some(days_value(parser, INIT_CA_USAGE)?),
            Long("force") => force = true,
            Short('h') | Long("help") => return Ok(PkiCommand::Help(INIT_CA_HELP)),
            other => return Err(usage(other.unexpected())),
        }
    }
    let name = name.unwrap_or_else(|| DEFAULT_CA_NAME.to_owned());
    if name.is_empty() {
        return Err(usage_message("--name must not be empty", INIT_CA_USAGE));
    }
    Ok(PkiCommand::InitCa {
        dir: required_dir(dir, INIT_CA_USAGE)?,
        name,
        days: days.unwrap_or(DEFAULT_CA_DAYS),
        force,
    })
}

fn parse_issue_server(parser: &mut lexopt::Parser) -> Result<PkiCommand, PkiCliError> {
    let usage = usage_error(ISSUE_SERVER_USAGE);
    let mut dir = None;
    let mut names = Vec::new();
    let mut days = None;
    let mut out_cert = None;
    let mut out_key = None;
    let mut force = false;
    while let Some(arg) = parser.next().map_err(&usage)? {
        match arg {
            Long("dir") => dir = Some(PathBuf::from(parser.value().map_err(&usage)?)),
            Long("name") => names.push(string_value(parser, ISSUE_SERVER_USAGE)?),
            Long("days") => days = Some(days_value(parser, ISSUE_SERVER_USAGE)?),
            Long("out-cert") => out_cert = Some(PathBuf::from(parser.value().map_err(&usage)?)),
            Long("out-key") => out_key = Some(PathBuf::from(parser.value().map_err(&usage)?)),
            Long("force") => force = true,
            Short('h') | Long("help") => return Ok(PkiCommand::Help(ISSUE_SERVER_HELP)),
            other => return Err(usage(other.unexpected())),
        }
    }
    let dir = required_dir(dir, ISSUE_SERVER_USAGE)?;
    if names.is_empty() {
        return Err(usage_message(
            "at least one --name is required",
            ISSUE_SERVER_USAGE,
        ));
    }
    let out = outputs(
        out_cert.unwrap_or_else(|| dir.join("server.pem")),
        out_key.unwrap_or_else(|| dir.join("server.key")),
        ISSUE_SERVER_USAGE,
    )?;
    Ok(PkiCommand::IssueServer {
        dir,
        names,
        days: days.unwrap_or(DEFAULT_LEAF_DAYS),
        out,
        force,
    })
}

fn parse_issue_station(parser: &mut lexopt::Parser) -> Result<PkiCommand, PkiCliError> {
    let usage = usage_error(ISSUE_STATION_USAGE);
    let mut dir = None;
    let mut station: Option<OsString> = None;
    let mut days = None;
    let mut out_cert = None;
    let mut out_key = None;
    let mut force = false;
    while let Some(arg) = parser.next().map_err(&usage)? {
        match arg {
            Long("dir") => dir = Some(PathBuf::from(parser.value().map_err(&usage)?)),
            Long("days") => days = Some(days_value(parser, ISSUE_STATION_USAGE)?),
            Long("out-cert") => out_cert = Some(PathBuf::from(parser.value().map_err(&usage)?)),
            Long("out-key") => out_key = Some(PathBuf::from(parser.value().map_err(&usage)?)),
            Long("force") => force = true,
            Short('h') | Long("help") => return Ok(PkiCommand::Help(ISSUE_STATION_HELP)),
            Value(value) if station.is_none() => station = Some(value),
            other => return Err(usage(other.unexpected())),
        }
    }
    let dir = required_dir(dir, ISSUE_STATION_USAGE)?;
    let raw = station.ok_or_else(|| usage_message("missing STATION_ID", ISSUE_STATION_USAGE))?;
    let id = raw.to_string_lossy().into_owned();
    let station = StationId::new(id.as_str()).map_err(|source| PkiCliError::Station {
        id: id.clone(),
        source,
    })?;
    let stations = dir.join("stations");
    let out = outputs(
        out_cert.unwrap_or_else(|| stations.join(format!("{station}.pem"))),
        out_key.unwrap_or_else(|| stations.join(format!("{station}.key"))),
        ISSUE_STATION_USAGE,
    )?;
    Ok(PkiCommand::IssueStation {
        dir,
        station,
        days: days.unwrap_or(DEFAULT_LEAF_DAYS),
        out,
        force,
    })
}

fn parse_show(parser: &mut lexopt::Parser) -> Result<PkiCommand, PkiCliError> {
    let usage = usage_error(SHOW_USAGE);
    let mut cert = None;
    let mut json = false;
    while let Some(arg) = parser.next().map_err(&usage)? {
        match arg {
            Long("json") => json = true,
            Short('h') | Long("help") => return Ok(PkiCommand::Help(SHOW_HELP)),
            Value(value) if cert.is_none() => cert = Some(PathBuf::from(value)),
            other => return Err(usage(other.unexpected())),
        }
    }
    let cert = cert.ok_or_else(|| usage_message("missing CERT", SHOW_USAGE))?;
    Ok(PkiCommand::Show { cert, json })
}

fn usage_error(usage: &'static str) -> impl Fn(lexopt::Error) -> PkiCliError {
    move |err| usage_message(err.to_string(), usage)
}

fn usage_message(message: impl Into<String>, usage: &'static str) -> PkiCliError {
    PkiCliError::Usage {
        message: message.into(),
        usage,
    }
}

fn required_dir(dir: Option<PathBuf>, usage: &'static str) -> Result<PathBuf, PkiCliError> {
    dir.ok_or_else(|| usage_message("missing --dir DIR", usage))
}

fn string_value(parser: &mut lexopt::Parser, usage: &'static str) -> Result<String, PkiCliError> {
    parser
        .value()
        .and_then(|v| v.string())
        .map_err(usage_error(usage))
}

fn days_value(parser: &mut lexopt::Parser, usage: &'static str) -> Result<u32, PkiCliError> {
    let days: u32 = parser
        .value()
        .and_then(|v| v.parse())
        .map_err(usage_error(usage))?;
    if days == 0 {
        return Err(usage_message("--days must be at least 1", usage));
    }
    Ok(days)
}

fn outputs(cert: PathBuf, key: PathBuf, usage: &'static str) -> Result<Outputs, PkiCliError> {
    if cert == key {
        return Err(usage_message(
            format!("--out-cert and --out-key are both {}", cert.display()),
            usage,
        ));
    }
    Ok(Outputs { cert, key })
}

fn ca_paths(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join("ca.pem"), dir.join("ca.key"))
}

fn load_ca(dir: &Path) -> Result<CertificateAuthority, PkiCliError> {
    let (cert, key) = ca_paths(dir);
    for missing in [&cert, &key] {
        if std::fs::symlink_metadata(missing).is_err() {
            return Err(PkiCliError::NoCa {
                dir: dir.to_owned(),
                missing: missing.clone(),
            });
        }
    }
    Ok(CertificateAuthority::load_files(&cert, &key)?)
}

fn report_written(
    out: &mut impl Write,
    cert: &Path,
    key: &Path,
    issued: &Issued,
    now: OffsetDateTime,
) -> Result<(), PkiCliError> {
    let info = pki::inspect_pem(&issued.cert_pem)?;
    writeln!(out, "wrote {} and {}", cert.display(), key.display())?;
    out.write_all(render_text(&info, now).as_bytes())?;
    Ok(())
}

fn names(info: &CertificateInfo) -> Vec<String> {
    info.dns_names
        .iter()
        .cloned()
        .chain(info.ip_addresses.iter().map(ToString::to_string))
        .collect()
}

/// Whole days from `now` until the certificate expires; negative once it
/// has expired.
fn expires_in_days(info: &CertificateInfo, now: OffsetDateTime) -> i64 {
    (info.not_after - now).whole_days()
}

fn plural_days(days: u64) -> String {
    if days == 1 {
        "1 day".to_owned()
    } else {
        format!("{days} days")
    }
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a test should fail loudly on any error")]
mod tests {
    use super::*;
    use time::Duration;

    fn parse_args(args: &[&str]) -> Result<PkiCommand, PkiCliError> {
        parse(&mut lexopt::Parser::from_args(args))
    }

    fn info(not_after: OffsetDateTime) -> CertificateInfo {
        CertificateInfo {
            subject_cn: Some("st\"at\\ion\n1\u{1}".to_owned()),
            station: None,
            is_ca: false,
            not_before: not_after - Duration::days(30),
            not_after,
            sha256_fingerprint: "AB:CD".to_owned(),
            dns_names: vec!["collector.example".to_owned()],
            ip_addresses: vec!["::1".parse().unwrap()],
            client_auth: false,
            server_auth: true,
        }
    }

    #[test]
    fn issue_station_defaults_to_the_stations_directory() {
        let command = parse_args(&["issue-station", "--dir", "pki", "st-1"]).unwrap();
        let PkiCommand::IssueStation {
            station, out, days, ..
        } = command
        else {
            panic!("{command:?}");
        };
        assert_eq!(station.as_str(), "st-1");
        assert_eq!(out.cert, Path::new("pki/stations/st-1.pem"));
        assert_eq!(out.key, Path::new("pki/stations/st-1.key"));
        assert_eq!(days, 825);
    }

    #[test]
    fn bad_station_id_is_an_error_not_a_usage_error() {
        let err = parse_args(&["issue-station", "--dir", "pki", "../evil"]).unwrap_err();
        assert_eq!(err.exit_code(), 1);
        assert!(err.to_string().contains("\"../evil\""), "{err}");
    }

    #[test]
    fn usage_errors_exit_2_with_the_command_usage() {
        for args in [
            &["frobnicate"][..],
            &[],
            &["init-ca"],
            &["init-ca", "--dir", "d", "--days", "0"],
            &["init-ca", "--dir", "d", "--days", "many"],
            &["init-ca", "--dir", "d", "--bogus"],
            &["issue-server", "--dir", "d"],
            &[
                "issue-server",
                "--dir",
                "d",
                "--name",
                "a",
                "--out-cert",
                "x",
                "--out-key",
                "x",
            ],
            &["issue-station", "--dir", "d"],
            &["issue-station", "--dir", "d", "a", "b"],
            &["show"],
        ] {
            let err = parse_args(args).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{args:?}: {err}");
            assert!(
                err.usage().is_some_and(|u| u.starts_with("usage:")),
                "{args:?}"
            );
        }
    }

    #[test]
    fn help_wins_for_every_command() {
        for command in ["init-ca", "issue-server", "issue-station", "show"] {
            let parsed = parse_args(&[command, "--help"]).unwrap();
            let PkiCommand::Help(text) = parsed else {
                panic!("{parsed:?}");
            };
            assert!(text.contains(&format!("pki {command}")), "{text}");
        }
    }

    #[test]
    fn text_shows_expiry_in_days() {
        let now = OffsetDateTime::now_utc();
        let text = render_text(&info(now + Duration::days(3) + Duration::hours(1)), now);
        assert!(text.contains("expires in: 3 days\n"), "{text}");
        assert!(text.contains("names: collector.example, ::1\n"), "{text}");
        assert!(text.contains("station: -\n"), "{text}");
        let text = render_text(&info(now - Duration::days(1) - Duration::hours(1)), now);
        assert!(text.contains("expired: 1 day ago\n"), "{text}");
    }

    #[test]
    fn json_escapes_strings() {
        let now = OffsetDateTime::now_utc();
        let json = render_json(&info(now - Duration::days(2) - Duration::hours(1)), now);
        assert!(
            json.starts_with(r#"{"subject":"st\"at\\ion\n1\u0001","station":null,"is_ca":false,"#),
            "{json}"
        );
        assert!(json.contains(r#""expires_in_days":-2,"#), "{json}");
        assert!(json.contains(r#""ip_addresses":["::1"],"#), "{json}");
        assert!(json.ends_with("\"server_auth\":true}\n"), "{json}");
    }

    /// `pki show --json` is read by scripts: the exact text stays.
    #[test]
    fn json_keeps_its_exact_form() {
        let not_after = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let now = not_after - Duration::days(10);
        let mut info = info(not_after);
        info.station = Some(StationId::new("st-1").unwrap());
        info.ip_addresses.push("10.0.0.1".parse().unwrap());
        assert_eq!(
            render_json(&info, now),
            "{\"subject\":\"st\\\"at\\\\ion\\n1\\u0001\",\"station\":\"st-1\",\
             \"is_ca\":false,\"not_before\":\"2026-12-16T08:00:00Z\",\
             \"not_after\":\"2027-01-15T08:00:00Z\",\"expires_in_days\":10,\
             \"sha256\":\"AB:CD\",\"dns_names\":[\"collector.example\"],\
             \"ip_addresses\":[\"::1\",\"10.0.0.1\"],\"client_auth\":false,\
             \"server_auth\":true}\n"
        );
    }
}
