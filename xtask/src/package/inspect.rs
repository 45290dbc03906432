//! Inspection of the built packages without installing them: file lists
//! with modes and owners, conffiles, maintainer scripts and scriptlets, the
//! unit's settings, lintian, rpm queries, and `systemd-analyze` of each unit.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};

use super::{Built, Daemon, Report, Workspace, capture};

/// Exposure (`systemd-analyze security`, 0 = locked down, 10 = exposed)
/// above which a unit fails: 2.0 is where systemd's "OK" band ends and
/// "MEDIUM" begins. What remains is what a network daemon needs (sockets,
/// the host's network) plus settings these daemons cannot take (see the
/// units' comments).
const EXPOSURE_THRESHOLD: f64 = 2.0;

/// Lines each unit must hold, beyond its name-specific ones.
const UNIT_LINES: &[&str] = &[
    "Type=notify",
    "User=ferry",
    "Group=ferry",
    "Restart=on-failure",
    "KillSignal=SIGTERM",
    "NoNewPrivileges=yes",
    "ProtectSystem=strict",
    "ProtectHome=yes",
    "PrivateTmp=yes",
    "PrivateDevices=yes",
    "CapabilityBoundingSet=",
    "SystemCallFilter=@system-service",
    "SystemCallArchitectures=native",
    "WantedBy=multi-user.target",
];

/// Inspects every package.
pub(super) fn all(ws: &Workspace, built: &[Built], report: &mut Report) -> Result<()> {
    let work = ws.check_dir();
    if work.exists() {
        fs::remove_dir_all(&work).with_context(|| format!("cannot clear {}", work.display()))?;
    }
    let mut extracted = Vec::new();
    for b in built {
        let d = b.daemon;
        let tree = work.join("deb").join(d.name);
        fs::create_dir_all(&tree)?;
        capture(Command::new("dpkg-deb").arg("-x").arg(&b.deb).arg(&tree))?;
        let control = work.join("control").join(d.name);
        fs::create_dir_all(work.join("control"))?;
        capture(Command::new("dpkg-deb").arg("-e").arg(&b.deb).arg(&control))?;

        report.check(format!("{}.deb: files, modes, owners", d.name), || {
            deb_files(d, &b.deb)
        });
        report.check(
            format!("{}.deb: conffiles, depends, maintainer scripts", d.name),
            || deb_control(d, &b.deb, &control),
        );
        report.check(format!("{}.deb: unit settings", d.name), || {
            unit_settings(d, &tree)
        });
        report.check(format!("{}.deb: lintian", d.name), || lintian(&b.deb));
        report.check(format!("{}.rpm: files, modes, owners", d.name), || {
            rpm_files(d, &b.rpm)
        });
        report.check(format!("{}.rpm: scriptlets", d.name), || {
            rpm_scripts(d, &b.rpm)
        });
        report.check(format!("{}.rpm: config files, requires", d.name), || {
            rpm_config(d, &b.rpm)
        });
        let verify_dir = work.join("verify");
        report.check(
            format!("{}.service: systemd-analyze verify", d.name),
            || verify(ws, d, &tree, &verify_dir),
        );
        report.check(
            format!("{}.service: systemd-analyze security", d.name),
            || exposure(&tree.join(unit_path(d).trim_start_matches('/'))),
        );
        extracted.push(tree);
    }
    report.check("sysusers.d and tmpfiles.d snippets", || {
        snippets(&work.join("snippets"), &extracted)
    });
    Ok(())
}

/// A file both packages install: path, mode, group.
fn layout(d: &Daemon) -> Vec<(String, u32, &'static str)> {
    let n = d.name;
    vec![
        (format!("/usr/bin/{n}"), 0o755, "root"),
        (format!("/etc/ferry/{}", d.config), 0o640, "ferry"),
        (unit_path(d), 0o644, "root"),
        (format!("/usr/lib/sysusers.d/{n}.conf"), 0o644, "root"),
        (format!("/usr/lib/tmpfiles.d/{n}.conf"), 0o644, "root"),
        (format!("/usr/share/man/man1/{n}.1.gz"), 0o644, "root"),
        (format!("/usr/share/doc/{n}/README.md"), 0o644, "root"),
    ]
}

fn unit_path(d: &Daemon) -> String {
    format!("/usr/lib/systemd/system/{}.service", d.name)
}

/// `-rwxr-xr-x` for a regular file of `mode`.
fn mode_text(mode: u32) -> String {
    let mut text = String::from("-");
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 7;
        text.push(if bits & 4 != 0 { 'r' } else { '-' });
        text.push(if bits & 2 != 0 { 'w' } else { '-' });
        text.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    text
}

/// Compares listed (path, mode, owner, group) files with the expected ones.
fn compare(
    listed: &[(String, String, String, String)],
    expected: &[(String, u32, &str, &str)],
) -> Result<String> {
    let mut problems = Vec::new();
    for (path, mode, owner, group) in expected {
        match listed.iter().find(|(p, ..)| p == path) {
            None => problems.push(format!("{path} missing")),
            Some((_, m, o, g)) => {
                if *m != mode_text(*mode) || o != owner || g != group {
                    problems.push(format!(
                        "{path} is {m} {o}:{g}, expected {} {owner}:{group}",
                        mode_text(*mode)
                    ));
                }
            }
        }
    }
    for (path, ..) in listed {
        if !expected.iter().any(|(p, ..)| p == path) {
            problems.push(format!("{path} not expected"));
        }
    }
    ensure!(problems.is_empty(), "{}", problems.join("; "));
    Ok(format!("{} files as expected", expected.len()))
}

fn deb_files(d: &Daemon, deb: &Path) -> Result<String> {
    let listing = capture(Command::new("dpkg-deb").arg("-c").arg(deb))?;
    // "-rw-r----- 0/0  3472 2026-01-01 00:00 ./etc/ferry/agent.toml"
    let mut listed = Vec::new();
    for line in listing.lines().filter(|l| !l.starts_with('d')) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [mode, owner, _, _, _, path] = fields[..] else {
            bail!("unexpected dpkg-deb -c line {line:?}");
        };
        let (uid, gid) = owner.split_once('/').unwrap_or((owner, ""));
        let name = |id: &str| if id == "0" { "root" } else { id }.to_owned();
        listed.push((
            path.trim_start_matches('.').to_owned(),
            mode.to_owned(),
            name(uid),
            name(gid),
        ));
    }
    // A .deb holds files as root:root; postinst gives the configuration
    // its group once the user exists.
    let n = d.name;
    let mut expected: Vec<(String, u32, &str, &str)> = layout(d)
        .into_iter()
        .map(|(path, mode, _)| (path, mode, "root", "root"))
        .collect();
    for (path, mode) in [
        (format!("/usr/share/doc/{n}/copyright"), 0o644),
        (format!("/usr/share/doc/{n}/changelog.Debian.gz"), 0o644),
        (format!("/usr/share/lintian/overrides/{n}"), 0o644),
    ] {
        expected.push((path, mode, "root", "root"));
    }
    compare(&listed, &expected)
}

fn deb_control(d: &Daemon, deb: &Path, control: &Path) -> Result<String> {
    let conffiles = fs::read_to_string(control.join("conffiles")).unwrap_or_default();
    let config = format!("/etc/ferry/{}", d.config);
    ensure!(
        conffiles.lines().collect::<Vec<_>>() == [config.as_str()],
        "conffiles are {conffiles:?}, expected only {config}"
    );
    let depends = capture(
        Command::new("dpkg-deb")
            .args(["-f"])
            .arg(deb)
            .arg("Depends"),
    )?;
    let depends = depends.trim();
    ensure!(
        depends.split(", ").all(|dep| dep.starts_with("libc6")),
        "Depends: {depends} (a minimal Debian has only libc6)"
    );
    let unit = format!("{}.service", d.name);
    let scripts: [(&str, &[&str]); 3] = [
        (
            "postinst",
            &[
                "systemd-sysusers",
                "useradd --system",
                "systemd-tmpfiles --create",
                "chgrp ferry",
                "deb-systemd-helper enable",
                "try-restart",
            ],
        ),
        ("prerm", &["deb-systemd-invoke stop"]),
        (
            "postrm",
            &["deb-systemd-helper purge", "deb-systemd-helper mask"],
        ),
    ];
    for (script, needles) in scripts {
        let path = control.join(script);
        let text = fs::read_to_string(&path).with_context(|| format!("{script} missing"))?;
        let mode = fs::metadata(&path)?.permissions().mode() & 0o777;
        ensure!(mode == 0o755, "{script} has mode {mode:o}");
        ensure!(text.starts_with("#!/bin/sh\n"), "{script} is no sh script");
        ensure!(text.contains("set -e"), "{script} lacks set -e");
        ensure!(
            text.contains(&unit) || script == "postinst",
            "{script} does not name {unit}"
        );
        for needle in needles {
            ensure!(text.contains(needle), "{script} lacks {needle:?}");
        }
    }
    Ok(format!(
        "conffile {config}; Depends: {depends}; postinst, prerm, postrm"
    ))
}

fn unit_settings(d: &Daemon, tree: &Path) -> Result<String> {
    let path = tree.join(unit_path(d).trim_start_matches('/'));
    let text = fs::read_to_string(&path)?;
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    let exec = format!(
        "ExecStart=/usr/bin/{} run --config /etc/ferry/{}",
        d.name, d.config
    );
    let missing: Vec<&str> = UNIT_LINES
        .iter()
        .copied()
        .chain([exec.as_str(), d.unit_state])
        .filter(|line| !lines.contains(line))
        .collect();
    ensure!(missing.is_empty(), "missing: {}", missing.join(", "));
    Ok(format!(
        "{} required settings present",
        UNIT_LINES.len() + 2
    ))
}

/// lintian: fails on errors; warnings and overrides are listed.
fn lintian(deb: &Path) -> Result<String> {
    let out = Command::new("lintian")
        .arg("--show-overrides")
        .arg(deb)
        .output()
        .context("cannot run lintian")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let tagged =
        |prefix: &str| -> Vec<&str> { text.lines().filter(|l| l.starts_with(prefix)).collect() };
    let (errors, warnings, overridden) = (tagged("E:"), tagged("W:"), tagged("O:"));
    ensure!(
        errors.is_empty() && out.status.success(),
        "lintian exited with {}:\n{}",
        out.status,
        text.trim()
    );
    let mut summary = format!(
        "0 errors, {} warnings, {} overridden",
        warnings.len(),
        overridden.len()
    );
    for line in warnings.iter().chain(&overridden) {
        summary.push('\n');
        summary.push_str(line);
    }
    Ok(summary)
}

fn rpm_files(d: &Daemon, rpm: &Path) -> Result<String> {
    let listing = capture(Command::new("rpm").args(["-qpl", "-v"]).arg(rpm))?;
    // "-rw-r-----    1 root     ferry     3472 Nov 23 13:36 /etc/ferry/agent.toml"
    let mut listed = Vec::new();
    for line in listing.lines().filter(|l| !l.starts_with('d')) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [mode, _, owner, group, _, _, _, _, path] = fields[..] else {
            bail!("unexpected rpm -qpl line {line:?}");
        };
        listed.push((path.into(), mode.into(), owner.into(), group.into()));
    }
    let expected: Vec<(String, u32, &str, &str)> = layout(d)
        .into_iter()
        .map(|(path, mode, group)| (path, mode, "root", group))
        .collect();
    compare(&listed, &expected)
}

fn rpm_scripts(d: &Daemon, rpm: &Path) -> Result<String> {
    let text = capture(Command::new("rpm").args(["-qp", "--scripts"]).arg(rpm))?;
    let unit = format!("{}.service", d.name);
    let needles = [
        "preinstall scriptlet",
        "useradd --system",
        "postinstall scriptlet",
        "systemd-tmpfiles --create",
        &format!("preset {unit}"),
        "preuninstall scriptlet",
        &format!("disable --now {unit}"),
        "postuninstall scriptlet",
        &format!("try-restart {unit}"),
    ];
    for needle in needles {
        ensure!(text.contains(needle), "scriptlets lack {needle:?}");
    }
    // cargo-generate-rpm takes a script path it cannot find as the script.
    ensure!(
        !text.contains("packaging/rpm/"),
        "a scriptlet is a path:\n{text}"
    );
    Ok("pre: user; post: state dirs, preset; preun: disable on erase; postun: try-restart".into())
}

fn rpm_config(d: &Daemon, rpm: &Path) -> Result<String> {
    let config = format!("/etc/ferry/{}", d.config);
    let listed = capture(Command::new("rpm").args(["-qp", "--configfiles"]).arg(rpm))?;
    ensure!(
        listed.lines().collect::<Vec<_>>() == [config.as_str()],
        "config files are {listed:?}, expected only {config}"
    );
    let flags = capture(
        Command::new("rpm")
            .args(["-qp", "--qf", "[%{FILENAMES} %{FILEFLAGS:fflags}\\n]"])
            .arg(rpm),
    )?;
    let config_flags = flags
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{config} ")))
        .unwrap_or_default();
    ensure!(
        config_flags.contains('c') && config_flags.contains('n'),
        "{config} has flags {config_flags:?}, expected config(noreplace)"
    );
    let requires = capture(Command::new("rpm").args(["-qp", "--requires"]).arg(rpm))?;
    for needle in ["/usr/sbin/useradd", "/usr/sbin/groupadd", "libc.so.6"] {
        ensure!(requires.contains(needle), "requires lack {needle}");
    }
    Ok(format!(
        "{config} config(noreplace); requires useradd, groupadd, libc"
    ))
}

/// `systemd-analyze verify` of the packaged unit, its ExecStart pointed at
/// the unpacked binary and `man` at the unpacked man page; for the agent
/// also with the drop-in `ferry-agent systemd-dropin` prints for the example
/// configuration. Any message fails the check.
fn verify(ws: &Workspace, d: &Daemon, tree: &Path, dir: &Path) -> Result<String> {
    fs::create_dir_all(dir)?;
    let binary = tree.join("usr/bin").join(d.name);
    let unit = fs::read_to_string(tree.join(unit_path(d).trim_start_matches('/')))?;
    let exec = format!("ExecStart=/usr/bin/{} ", d.name);
    ensure!(unit.contains(&exec), "no {exec:?}");
    let copy = dir.join(format!("{}.service", d.name));
    fs::write(
        &copy,
        unit.replace(&exec, &format!("ExecStart={} ", binary.display())),
    )?;
    let analyze = |what: &str| -> Result<()> {
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&copy)
            .env("MANPATH", tree.join("usr/share/man"))
            .output()
            .context("cannot run systemd-analyze")?;
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        ensure!(
            out.status.success() && said.trim().is_empty(),
            "{what}: {}",
            said.trim()
        );
        Ok(())
    };
    analyze("unit")?;
    if d.name != "ferry-agent" {
        return Ok("no messages".into());
    }
    let example = ws.root.join("packaging").join(d.config);
    let dropin = capture(
        Command::new(&binary)
            .arg("systemd-dropin")
            .arg("--config")
            .arg(&example),
    )?;
    let dropin_dir = dir.join("ferry-agent.service.d");
    fs::create_dir_all(&dropin_dir)?;
    fs::write(dropin_dir.join("paths.conf"), &dropin)?;
    analyze("with the example's drop-in")?;
    Ok("no messages, also with the drop-in for packaging/agent.toml".into())
}

/// The unit's overall exposure, failing above the threshold.
fn exposure(unit: &Path) -> Result<String> {
    let text = capture(
        Command::new("systemd-analyze")
            .args(["security", "--offline=yes", "--no-pager"])
            .arg(unit),
    )?;
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .context("no overall exposure level in the output")?;
    let score: f64 = line
        .rsplit(':')
        .next()
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("cannot read {line:?}"))?;
    // "1.5 OK", without the emoji systemd appends.
    let rating = line
        .rsplit(':')
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    ensure!(
        score <= EXPOSURE_THRESHOLD,
        "exposure {rating}, above {EXPOSURE_THRESHOLD:.1}"
    );
    Ok(format!(
        "exposure {rating} (fails above {EXPOSURE_THRESHOLD:.1})"
    ))
}

/// The sysusers.d and tmpfiles.d snippets, applied by the host's
/// systemd-sysusers and systemd-tmpfiles to an empty root: what postinst
/// does where systemd is installed (the install test's minimal root has
/// none, and takes the useradd/install fallback).
fn snippets(root: &Path, trees: &[PathBuf]) -> Result<String> {
    for dir in ["etc", "var/lib", "usr/lib/sysusers.d", "usr/lib/tmpfiles.d"] {
        fs::create_dir_all(root.join(dir))?;
    }
    let mut names = Vec::new();
    for tree in trees {
        for kind in ["sysusers.d", "tmpfiles.d"] {
            for entry in fs::read_dir(tree.join("usr/lib").join(kind))? {
                let entry = entry?;
                fs::copy(
                    entry.path(),
                    root.join("usr/lib").join(kind).join(entry.file_name()),
                )?;
                names.push(entry.file_name());
            }
        }
    }
    let root_arg = format!("--root={}", root.display());
    // systemd-sysusers reports what it creates, and nothing else unless
    // something is wrong (e.g. conflicting lines for the shared user).
    let out = Command::new("systemd-sysusers").arg(&root_arg).output()?;
    let said = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success() && said.lines().all(|l| l.starts_with("Creating ")),
        "systemd-sysusers: {said}"
    );
    let out = Command::new("systemd-tmpfiles")
        .arg(&root_arg)
        .arg("--create")
        .output()?;
    ensure!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-tmpfiles: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let passwd = fs::read_to_string(root.join("etc/passwd"))?;
    let user = super::install::user(&passwd).context("no user ferry")?;
    ensure!(
        user.home == "/var/lib/ferry",
        "home of ferry is {}",
        user.home
    );
    let mut dirs = Vec::new();
    for d in &super::DAEMONS {
        for state in d.state_dirs {
            let path = format!("/var/lib/ferry/{state}");
            super::install::owned(root, &path, 0o750, user.uid, user.gid)?;
            dirs.push(path);
        }
    }
    Ok(format!(
        "user ferry (home /var/lib/ferry), {} owned by ferry, 0750",
        dirs.join(", ")
    ))
}
