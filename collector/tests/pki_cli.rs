//! End-to-end tests of `ferry-collector pki`, running the real binary in a
//! temporary directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context, Result, ensure};
use ferry_common::pki;

/// A temporary PKI directory and a way to run the collector against it.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Result<Self> {
        Ok(Pki {
            dir: tempfile::tempdir()?,
        })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn dir(&self) -> &str {
        self.dir.path().to_str().unwrap_or_default()
    }

    /// Runs `ferry-collector` with `args`.
    fn run(&self, args: &[&str]) -> Result<Output> {
        Command::new(env!("CARGO_BIN_EXE_ferry-collector"))
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .context("running ferry-collector")
    }

    /// Runs `ferry-collector` with `args` and requires success.
    fn ok(&self, args: &[&str]) -> Result<String> {
        let output = self.run(args)?;
        ensure!(
            output.status.success(),
            "{args:?} failed with {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(String::from_utf8(output.stdout)?)
    }
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[cfg(unix)]
fn mode(path: &Path) -> Result<u32> {
    use std::os::unix::fs::PermissionsExt;
    Ok(std::fs::metadata(path)?.permissions().mode() & 0o777)
}

#[test]
fn issues_a_ca_a_server_and_a_station_and_shows_them() -> Result<()> {
    let pki = Pki::new()?;
    let dir = pki.dir();
    pki.ok(&["pki", "init-ca", "--dir", dir])?;
    pki.ok(&[
        "pki",
        "issue-server",
        "--dir",
        dir,
        "--name",
        "collector.example.org",
        "--name",
        "192.0.2.10",
    ])?;
    pki.ok(&["pki", "issue-station", "--dir", dir, "rfeye002073"])?;

    let ca = pki::inspect_pem(&std::fs::read_to_string(pki.path("ca.pem"))?)?;
    assert!(ca.is_ca);
    assert_eq!(ca.subject_cn.as_deref(), Some("Ferry CA"));

    let server = pki::inspect_pem(&std::fs::read_to_string(pki.path("server.pem"))?)?;
    assert!(server.server_auth);
    assert_eq!(server.dns_names, ["collector.example.org"]);
    assert_eq!(
        server.ip_addresses,
        ["192.0.2.10".parse::<std::net::IpAddr>()?]
    );

    let station_pem = pki.path("stations/rfeye002073.pem");
    let station = pki::inspect_pem(&std::fs::read_to_string(&station_pem)?)?;
    let shown = pki.ok(&["pki", "show", station_pem.to_str().unwrap_or_default()])?;
    assert!(shown.contains("station: rfeye002073\n"), "{shown}");
    assert!(
        shown.contains(&format!("sha256: {}\n", station.sha256_fingerprint)),
        "{shown}"
    );
    assert!(shown.contains("expires in: 824 days\n"), "{shown}");

    let json = pki.ok(&["pki", "show", "--json", "stations/rfeye002073.pem"])?;
    assert!(json.contains(r#""station":"rfeye002073""#), "{json}");
    assert!(
        json.contains(&format!(r#""sha256":"{}""#, station.sha256_fingerprint)),
        "{json}"
    );

    #[cfg(unix)]
    for (key, cert) in [
        ("ca.key", "ca.pem"),
        ("server.key", "server.pem"),
        ("stations/rfeye002073.key", "stations/rfeye002073.pem"),
    ] {
        assert_eq!(mode(&pki.path(key))?, 0o600, "{key}");
        assert_eq!(mode(&pki.path(cert))?, 0o644, "{cert}");
    }
    Ok(())
}

#[test]
fn invalid_station_id_fails_and_names_the_id() -> Result<()> {
    let pki = Pki::new()?;
    pki.ok(&["pki", "init-ca", "--dir", pki.dir()])?;
    let output = pki.run(&["pki", "issue-station", "--dir", pki.dir(), "../evil"])?;
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).starts_with("ferry-collector: "),
        "{}",
        stderr(&output)
    );
    assert!(stderr(&output).contains("../evil"), "{}", stderr(&output));
    assert!(!pki.path("evil.pem").exists());
    assert!(!pki.path("stations").exists());
    Ok(())
}

#[test]
fn init_ca_refuses_to_replace_a_ca_without_force() -> Result<()> {
    let pki = Pki::new()?;
    pki.ok(&["pki", "init-ca", "--dir", pki.dir()])?;
    let cert = std::fs::read(pki.path("ca.pem"))?;
    let key = std::fs::read(pki.path("ca.key"))?;

    let output = pki.run(&["pki", "init-ca", "--dir", pki.dir()])?;
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("ca.pem"), "{}", stderr(&output));
    assert_eq!(std::fs::read(pki.path("ca.pem"))?, cert);
    assert_eq!(std::fs::read(pki.path("ca.key"))?, key);

    pki.ok(&["pki", "init-ca", "--dir", pki.dir(), "--force"])?;
    assert_ne!(std::fs::read(pki.path("ca.key"))?, key);
    Ok(())
}

#[test]
fn issuing_without_a_ca_points_at_init_ca() -> Result<()> {
    let pki = Pki::new()?;
    let output = pki.run(&["pki", "issue-station", "--dir", pki.dir(), "st-1"])?;
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("init-ca"), "{}", stderr(&output));
    Ok(())
}

#[test]
fn unknown_commands_and_options_exit_2() -> Result<()> {
    let pki = Pki::new()?;
    let output = pki.run(&["frobnicate"])?;
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(
        stderr(&output),
        "ferry-collector: frobnicate: unknown command (see --help)\n"
    );
    let missing = pki.dir.path().join("missing.toml");
    let output = pki.run(&["run", "--config", missing.to_str().unwrap_or_default()])?;
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("missing.toml"),
        "{}",
        stderr(&output)
    );
    let output = pki.run(&["pki", "init-ca", "--dir", pki.dir(), "--bogus"])?;
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("usage: ferry-collector pki init-ca"),
        "{}",
        stderr(&output)
    );
    let output = pki.run(&[])?;
    assert_eq!(output.status.code(), Some(2));
    Ok(())
}

#[test]
fn help_and_version_succeed() -> Result<()> {
    let pki = Pki::new()?;
    let help = pki.ok(&["--help"])?;
    for command in ["init-ca", "issue-server", "issue-station", "show"] {
        assert!(help.contains(command), "{help}");
    }
    let pki_help = pki.ok(&["pki", "--help"])?;
    for option in [
        "--dir",
        "--name",
        "--days",
        "--out-cert",
        "--out-key",
        "--force",
    ] {
        assert!(pki_help.contains(option), "{pki_help}");
    }
    let version = pki.ok(&["--version"])?;
    assert_eq!(
        version,
        format!("ferry-collector {}\n", env!("CARGO_PKG_VERSION"))
    );
    Ok(())
}
