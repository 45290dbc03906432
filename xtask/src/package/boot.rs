//! The boot test: the .debs installed into a Debian root that has systemd
//! (so postinst takes the systemd-sysusers path), then that root booted
//! with `systemd-nspawn --boot` on a private network. A collector and an
//! agent configured as the README says run from the packaged units, the
//! agent's drop-in opening its sandbox to a root under /home; a file
//! travels, the sandbox is checked on the running processes, and both
//! units stop cleanly on SIGTERM.
//!
//! Where nspawn cannot boot a container at all (no smoke report appears),
//! the check is reported as skipped, not passed.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};

use super::install::{Chroot, STATION, debian_root, remove_root};
use super::{Built, DAEMONS, Outcome, Report, Workspace, secs};

/// Longest a boot, the transfer, the stop and the power-off may take.
const BOOT_DEADLINE: Duration = Duration::from_secs(240);

/// The file the station writes, and what it holds.
const SAMPLE: (&str, &str) = (
    "/home/rfeye/data/rfeye002073_220307_T175758.bin",
    "measurement from the station",
);

/// Run in the root before booting: a PKI and configs as the README sets
/// them up, the sample file, a home directory the agent must not see, and
/// the agent's drop-in.
const SETUP: &str = r#"set -e
P=/etc/ferry/pki
ferry-collector pki init-ca --dir $P >/dev/null
ferry-collector pki issue-server --dir $P --name 127.0.0.1 >/dev/null
ferry-collector pki issue-station --dir $P --out-cert $P/station.pem \
    --out-key $P/station.key "$STATION" >/dev/null
chgrp ferry $P/server.key $P/station.key
chmod 0640 $P/server.key $P/station.key
# Only the first `listen` (the station port; [http] has its own).
sed -i '0,/^listen = .*/s//listen = "127.0.0.1:7450"/' /etc/ferry/collector.toml
sed -i 's/^collectors = .*/collectors = ["127.0.0.1:7450"]/' /etc/ferry/agent.toml
mkdir -p "$(dirname "$SAMPLE")" /mnt/nfs/station-logs /home/other
printf '%s' "$CONTENT" > "$SAMPLE"
echo secret > /home/other/secret
mkdir -p /etc/systemd/system/ferry-agent.service.d
ferry-agent systemd-dropin > /etc/systemd/system/ferry-agent.service.d/paths.conf
ln -sf /etc/systemd/system/ferry-smoke.service \
    /etc/systemd/system/multi-user.target.wants/ferry-smoke.service
"#;

/// Runs at boot after both units started: waits for the file in the
/// repository, records what the test asserts, stops both units, powers off.
const SMOKE: &str = r#"#!/bin/sh
for i in $(seq 1 60); do
    stored=$(find /var/lib/ferry/repository -type f | head -n 1)
    [ -n "$stored" ] && break
    sleep 1
done
{
    echo "stored=$stored:$(cat "$stored" 2>/dev/null)"
    for u in ferry-collector ferry-agent; do
        pid=$(systemctl show -p MainPID --value $u)
        echo "$u.state=$(systemctl show -p ActiveState --value $u)"
        echo "$u.type=$(systemctl show -p Type --value $u)"
        echo "$u.restarts=$(systemctl show -p NRestarts --value $u)"
        echo "$u.user=$(stat -c %U /proc/$pid)"
        for k in NoNewPrivs Seccomp CapBnd CapEff; do
            echo "$u.$k=$(awk -v k=$k: '$1 == k { print $2 }' /proc/$pid/status)"
        done
        echo "$u.home=$(ls /proc/$pid/root/home 2>/dev/null | tr '\n' ' ')"
    done
    systemctl stop ferry-agent ferry-collector
    for u in ferry-collector ferry-agent; do
        echo "$u.result=$(systemctl show -p Result --value $u)"
        echo "$u.status=$(systemctl show -p ExecMainStatus --value $u)"
    done
    echo "collector.toml listen lines: $(grep -n listen /etc/ferry/collector.toml | tr '\n' ' ')"
    echo "/proc/net/tcp: $(cat /proc/net/tcp | tr '\n' '|')"
    echo "journal:"
    journalctl -u ferry-collector -u ferry-agent --no-pager -o cat
} > /root/smoke.log 2>&1
systemctl poweroff
"#;

const SMOKE_UNIT: &str = "[Unit]
Description=Ferry package boot test
After=ferry-collector.service ferry-agent.service

[Service]
Type=oneshot
ExecStart=/root/smoke.sh
";

/// Runs the boot test's checks.
pub(super) fn all(ws: &Workspace, suite: &str, dir: &Path, built: &[Built], report: &mut Report) {
    let made = report.check(format!("Debian {suite} root with systemd"), || {
        debian_root(ws, suite, dir, &["systemd", "systemd-sysv"])
    });
    if !made {
        return;
    }
    let root = Chroot(dir.to_owned());
    let installed = report.check("dpkg -i where systemd is installed (not running)", || {
        install(&root, built)
    });
    if !installed {
        return;
    }
    let name = "systemd-nspawn --boot: units run sandboxed, a file travels, clean stop";
    match boot(&root) {
        Ok(Booted::Report(text)) => {
            report.check(name, || assess(&text));
        }
        Ok(Booted::NoReport(why)) => report.record(name.into(), Outcome::Skipped(why)),
        Err(error) => {
            report.check(name, || Err(error));
        }
    }
    // nspawn leaves a mount-propagation directory named after the root.
    let _ = fs::remove_dir_all(
        Path::new("/run/systemd/nspawn/propagate").join(dir.file_name().unwrap_or_default()),
    );
    let _ = remove_root(dir);
}

/// Installs both .debs; postinst must have made the user with
/// systemd-sysusers (it reports what it creates).
fn install(root: &Chroot, built: &[Built]) -> Result<String> {
    let mut args = vec!["dpkg".to_owned(), "-i".to_owned()];
    for b in built {
        args.push(root.copy_in(&b.deb)?);
    }
    let out = Command::new("chroot")
        .arg(&root.0)
        .args([
            "/usr/bin/env",
            "-i",
            "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
            "LC_ALL=C",
        ])
        .args(&args)
        .output()?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(out.status.success(), "dpkg -i failed:\n{said}");
    ensure!(
        said.contains("Creating user 'ferry'"),
        "systemd-sysusers did not create the user:\n{said}"
    );
    let ferry = root.ferry()?;
    for dir in super::install::state_dirs() {
        super::install::owned(&root.0, &dir, 0o750, ferry.uid, ferry.gid)?;
    }
    Ok(format!(
        "user ferry (uid {}) by systemd-sysusers; state directories 0750",
        ferry.uid
    ))
}

#[derive(Debug)]
enum Booted {
    /// The smoke report the container wrote.
    Report(String),
    /// The container wrote none: why, from nspawn's output.
    NoReport(String),
}

/// Prepares the root, boots it, returns the smoke report.
fn boot(root: &Chroot) -> Result<Booted> {
    fs::write(root.path("/root/smoke.sh"), SMOKE)?;
    root.run(&["chmod", "0755", "/root/smoke.sh"])?;
    fs::write(
        root.path("/etc/systemd/system/ferry-smoke.service"),
        SMOKE_UNIT,
    )?;
    root.run(&[
        "env",
        &format!("STATION={STATION}"),
        &format!("SAMPLE={}", SAMPLE.0),
        &format!("CONTENT={}", SAMPLE.1),
        "sh",
        "-c",
        SETUP,
    ])?;
    // Until the daemons tell systemd they are ready (sd_notify READY=1),
    // Type=notify would time out: then they run as Type=exec, and the
    // report says so.
    for d in &DAEMONS {
        let binary = fs::read(root.path(&format!("/usr/bin/{}", d.name)))?;
        if !binary.windows(7).any(|w| w == b"READY=1") {
            let dir = root.path(&format!("/etc/systemd/system/{}.service.d", d.name));
            fs::create_dir_all(&dir)?;
            fs::write(dir.join("type.conf"), "[Service]\nType=exec\n")?;
        }
    }
    let log_path = root.path("/root/nspawn.log");
    let log = fs::File::create(&log_path)?;
    let started = Instant::now();
    let mut nspawn = Command::new("systemd-nspawn")
        .args([
            "--quiet",
            "--register=no",
            "--keep-unit",
            "--private-network",
        ])
        .args(["--boot", "--console=pipe", "--directory"])
        .arg(&root.0)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("cannot start systemd-nspawn")?;
    let status = loop {
        if let Some(status) = nspawn.try_wait()? {
            break Some(status);
        }
        if started.elapsed() > BOOT_DEADLINE {
            let _ = nspawn.kill();
            let _ = nspawn.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let smoke = fs::read_to_string(root.path("/root/smoke.log")).ok();
    let nspawn_said = fs::read_to_string(&log_path).unwrap_or_default();
    let tail: Vec<&str> = nspawn_said.lines().rev().take(15).collect();
    let tail = tail.into_iter().rev().collect::<Vec<_>>().join("\n");
    match (smoke, status) {
        (Some(text), Some(_)) => Ok(Booted::Report(format!(
            "{text}\nbooted and powered off in {}",
            secs(started.elapsed())
        ))),
        (Some(text), None) => {
            anyhow::bail!("the container did not power off within {BOOT_DEADLINE:?}:\n{text}")
        }
        (None, _) => Ok(Booted::NoReport(format!(
            "systemd-nspawn could not boot a container here ({}):\n{tail}",
            status.map_or("killed at the deadline".into(), |s| s.to_string())
        ))),
    }
}

/// Checks the smoke report.
fn assess(text: &str) -> Result<String> {
    let value = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_default()
    };
    let fail = |what: String| -> Result<String> { anyhow::bail!("{what}\n{text}") };
    let stored = value("stored");
    let expected = format!("/var/lib/ferry/repository/{STATION}/rfeye/");
    if !(stored.starts_with(&expected) && stored.ends_with(&format!(":{}", SAMPLE.1))) {
        return fail(format!("the sample was not stored: stored={stored}"));
    }
    let mut types = Vec::new();
    for d in &DAEMONS {
        let n = d.name;
        let key = |k: &str| value(&format!("{n}.{k}"));
        let checks = [
            ("state", "active"),
            ("restarts", "0"),
            ("user", "ferry"),
            ("NoNewPrivs", "1"),
            ("Seccomp", "2"),
            ("CapBnd", "0000000000000000"),
            ("CapEff", "0000000000000000"),
            ("result", "success"),
            ("status", "0"),
        ];
        for (k, want) in checks {
            if key(k) != want {
                return fail(format!("{n}: {k} is {:?}, expected {want}", key(k)));
            }
        }
        types.push(format!("{n} Type={}", key("type")));
    }
    // The agent's home holds only the bound root; the collector sees none.
    let agent_home = value("ferry-agent.home").trim();
    if agent_home != "rfeye" {
        return fail(format!(
            "the agent sees /home as {agent_home:?}, expected only rfeye"
        ));
    }
    let collector_home = value("ferry-collector.home").trim();
    if !collector_home.is_empty() {
        return fail(format!("the collector sees /home as {collector_home:?}"));
    }
    let booted = text.lines().last().unwrap_or_default();
    Ok(format!(
        "stored {stored}; both ran as ferry with NoNewPrivs, seccomp, no capabilities \
         ({}); agent sees only /home/rfeye; SIGTERM stop: result success, status 0; {booted}",
        types.join(", ")
    ))
}
