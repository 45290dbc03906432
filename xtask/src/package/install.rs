//! The install test: the .debs installed into a minimal Debian root made by
//! debootstrap (the suite of the host, from the host's apt mirror; cached
//! under `target/debootstrap/`), then used, upgraded, removed and purged;
//! and the .rpms' scriptlets run by `rpm --root` in a second such root.
//!
//! These two roots have no systemd: maintainer scripts take their
//! no-systemd paths (useradd, install -d) and enable the units as symlinks
//! only; nothing is started, and no file system is mounted in them. The
//! root with systemd, which is booted, is `boot`'s.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};

use super::{Built, DAEMONS, Report, Workspace, capture, secs};

/// The station the test issues a certificate for.
pub(super) const STATION: &str = "rfeye002073";

/// A line of `/etc/passwd`.
#[derive(Debug)]
pub(super) struct User {
    pub uid: u32,
    pub gid: u32,
    pub home: String,
    pub shell: String,
}

/// The user `ferry` in `passwd` (the text of a passwd file or of
/// `getent passwd`).
pub(super) fn user(passwd: &str) -> Option<User> {
    passwd.lines().find_map(|line| {
        let f: Vec<&str> = line.trim().split(':').collect();
        match f[..] {
            ["ferry", _, uid, gid, _, home, shell] => Some(User {
                uid: uid.parse().ok()?,
                gid: gid.parse().ok()?,
                home: home.to_owned(),
                shell: shell.to_owned(),
            }),
            _ => None,
        }
    })
}

/// Fails unless `path` below `root` has `mode` and belongs to uid:gid.
pub(super) fn owned(root: &Path, path: &str, mode: u32, uid: u32, gid: u32) -> Result<()> {
    let meta = fs::symlink_metadata(root.join(path.trim_start_matches('/')))
        .with_context(|| format!("{path} missing"))?;
    let (m, u, g) = (meta.mode() & 0o7777, meta.uid(), meta.gid());
    ensure!(
        (m, u, g) == (mode, uid, gid),
        "{path} is {m:o} {u}:{g}, expected {mode:o} {uid}:{gid}"
    );
    Ok(())
}

/// Runs the install tests, recording each step.
pub(super) fn all(ws: &Workspace, built: &[Built], report: &mut Report) {
    let root = ws.check_dir().join("debian-root");
    let suite = host_codename();
    let made = report.check(format!("Debian {suite} minbase root"), || {
        debian_root(ws, &suite, &root, &[])
    });
    if made {
        debs(&Chroot(root.clone()), built, report);
    }
    let rpm_root = ws.check_dir().join("rpm-root");
    if made {
        report.check("rpm -i and -e in a second root: scriptlets, owners", || {
            debian_root(ws, &suite, &rpm_root, &[])?;
            rpms(&Chroot(rpm_root.clone()), built)
        });
    }
    let systemd_root = ws.check_dir().join("systemd-root");
    if made {
        super::boot::all(ws, &suite, &systemd_root, built, report);
    }
    for dir in [&root, &rpm_root, &systemd_root] {
        if let Err(error) = remove_root(dir) {
            eprintln!("xtask: cannot remove {}: {error:#}", dir.display());
        }
    }
}

/// A Debian root to run commands in.
#[derive(Debug)]
pub(super) struct Chroot(pub PathBuf);

impl Chroot {
    /// Runs `args` in the root as root with a clean environment.
    pub(super) fn run(&self, args: &[&str]) -> Result<String> {
        capture(
            Command::new("chroot")
                .arg(&self.0)
                .args([
                    "/usr/bin/env",
                    "-i",
                    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    "LC_ALL=C",
                    "DEBIAN_FRONTEND=noninteractive",
                ])
                .args(args),
        )
    }

    /// Runs `args` in the root as user ferry.
    pub(super) fn run_as_ferry(&self, args: &[&str]) -> Result<String> {
        let mut all = vec![
            "setpriv",
            "--reuid=ferry",
            "--regid=ferry",
            "--init-groups",
            "--",
        ];
        all.extend(args);
        self.run(&all)
    }

    pub(super) fn path(&self, path: &str) -> PathBuf {
        self.0.join(path.trim_start_matches('/'))
    }

    pub(super) fn ferry(&self) -> Result<User> {
        user(&self.run(&["getent", "passwd", "ferry"])?)
            .context("getent passwd ferry: no such user")
    }

    /// Copies `file` into the root's /tmp; returns its path there.
    pub(super) fn copy_in(&self, file: &Path) -> Result<String> {
        let name = file
            .file_name()
            .context("package path without file name")?
            .to_string_lossy();
        fs::copy(file, self.path("/tmp").join(&*name))?;
        Ok(format!("/tmp/{name}"))
    }
}

/// The host's release codename (`VERSION_CODENAME` of os-release): the
/// packages link against the host's libc, so the root is of that release.
pub(super) fn host_codename() -> String {
    fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
                .map(|v| v.trim_matches('"').to_owned())
        })
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "bookworm".into())
}

/// Makes a fresh minimal root at `root` with the `include`d packages:
/// unpacked from the cache, or by debootstrap (then cached).
pub(super) fn debian_root(
    ws: &Workspace,
    suite: &str,
    root: &Path,
    include: &[&str],
) -> Result<String> {
    remove_root(root)?;
    fs::create_dir_all(root)?;
    let cache_dir = ws.target.join("debootstrap");
    let flavour: String = include.iter().map(|p| format!("+{p}")).collect();
    let cache = cache_dir.join(format!("{suite}-minbase{flavour}.tar"));
    let started = Instant::now();
    if cache.is_file() {
        capture(
            Command::new("tar")
                .args(["--numeric-owner", "-xpf"])
                .arg(&cache)
                .arg("-C")
                .arg(root),
        )?;
        return Ok(format!(
            "unpacked from {} in {}",
            cache.display(),
            secs(started.elapsed())
        ));
    }
    let how = if include.is_empty() {
        let mirror = host_mirror(suite)?;
        eprintln!("xtask: debootstrap --variant=minbase {suite} from {mirror} (a minute or so)");
        capture(
            Command::new("debootstrap")
                .args(["--variant=minbase", suite])
                .arg(root)
                .arg(&mirror),
        )
        .context("debootstrap failed")?;
        format!("debootstrap from {mirror}")
    } else {
        // The minimal root plus packages from its own apt sources: faster
        // than a second debootstrap.
        debian_root(ws, suite, root, &[])?;
        let _ = fs::copy("/etc/resolv.conf", root.join("etc/resolv.conf"));
        let chroot = Chroot(root.to_owned());
        chroot.run(&["apt-get", "update", "-q"])?;
        let mut install = vec!["apt-get", "install", "-y", "-q", "--no-install-recommends"];
        install.extend(include);
        chroot.run(&install)?;
        chroot.run(&["apt-get", "clean"])?;
        format!("minbase + apt-get install {}", include.join(" "))
    };
    let took = started.elapsed();
    fs::create_dir_all(&cache_dir)?;
    let partial = cache.with_extension("tar.partial");
    capture(
        Command::new("tar")
            .args(["--numeric-owner", "-cf"])
            .arg(&partial)
            .arg("-C")
            .arg(root)
            .arg("."),
    )?;
    fs::rename(&partial, &cache)?;
    Ok(format!(
        "{how} took {}; cached as {}",
        secs(took),
        cache.display()
    ))
}

pub(super) fn remove_root(root: &Path) -> Result<()> {
    if root.exists() {
        // Nothing is mounted in the root: a plain recursive removal is safe.
        fs::remove_dir_all(root).with_context(|| format!("cannot remove {}", root.display()))?;
    }
    Ok(())
}

/// The first mirror the host's apt sources name for `suite` (deb822
/// `.sources` files first, then one-line `.list` files).
fn host_mirror(suite: &str) -> Result<String> {
    let dir = Path::new("/etc/apt/sources.list.d");
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.sort();
    for file in files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "sources"))
    {
        let text = fs::read_to_string(file).unwrap_or_default();
        for stanza in text.split("\n\n") {
            let field = |key: &str| {
                stanza
                    .lines()
                    .filter(|l| !l.starts_with('#'))
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.trim()
                            .eq_ignore_ascii_case(key)
                            .then(|| v.trim().to_owned())
                    })
                    .unwrap_or_default()
            };
            let words = |key: &str| {
                field(key)
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            };
            if field("Enabled") != "no"
                && words("Types").iter().any(|t| t == "deb")
                && words("Suites").iter().any(|s| s == suite)
                && let Some(uri) = words("URIs").into_iter().next()
            {
                return Ok(uri);
            }
        }
    }
    let lists = std::iter::once(PathBuf::from("/etc/apt/sources.list")).chain(
        files
            .into_iter()
            .filter(|f| f.extension().is_some_and(|e| e == "list")),
    );
    for file in lists {
        let text = fs::read_to_string(&file).unwrap_or_default();
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or_default();
            let mut words = line.split_whitespace().peekable();
            if words.next() != Some("deb") {
                continue;
            }
            if words.peek().is_some_and(|w| w.starts_with('[')) {
                // Skip "[opt=value ...]".
                for w in words.by_ref() {
                    if w.ends_with(']') {
                        break;
                    }
                }
            }
            if let (Some(uri), Some(s)) = (words.next(), words.next())
                && s == suite
            {
                return Ok(uri.to_owned());
            }
        }
    }
    bail!("the host's apt sources name no mirror for {suite}")
}

/// Installs, uses, upgrades, removes and purges both .debs in `root`.
fn debs(root: &Chroot, built: &[Built], report: &mut Report) {
    let installed = report.check("dpkg -i of both .debs", || {
        let mut args = vec!["dpkg".to_owned(), "-i".to_owned()];
        for b in built {
            args.push(root.copy_in(&b.deb)?);
        }
        root.run(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
        Ok(built
            .iter()
            .map(|b| b.deb.file_name().unwrap_or_default().to_string_lossy())
            .collect::<Vec<_>>()
            .join(", "))
    });
    if !installed {
        return;
    }
    report.check("user ferry (getent in the root)", || {
        let ferry = root.ferry()?;
        ensure!(ferry.uid < 1000, "uid {} is no system uid", ferry.uid);
        ensure!(ferry.home == "/var/lib/ferry", "home {}", ferry.home);
        ensure!(ferry.shell.ends_with("/nologin"), "shell {}", ferry.shell);
        let group = root.run(&["getent", "group", "ferry"])?;
        ensure!(
            group.split(':').nth(2) == Some(&ferry.gid.to_string()),
            "group ferry is {group:?}, user's gid {}",
            ferry.gid
        );
        Ok(format!(
            "uid {}, group ferry, home {}, shell {}",
            ferry.uid, ferry.home, ferry.shell
        ))
    });
    report.check("state directories", || {
        let ferry = root.ferry()?;
        owned(&root.0, "/var/lib/ferry", 0o755, 0, 0)?;
        let dirs = state_dirs();
        for dir in &dirs {
            owned(&root.0, dir, 0o750, ferry.uid, ferry.gid)?;
        }
        Ok(format!("{} ferry:ferry 0750", dirs.join(", ")))
    });
    report.check("config files", || {
        let ferry = root.ferry()?;
        let configs = configs();
        for config in &configs {
            owned(&root.0, config, 0o640, 0, ferry.gid)?;
        }
        Ok(format!("{} root:ferry 0640", configs.join(", ")))
    });
    report.check("units enabled", || {
        let links = wants_links(root);
        for (link, target) in &links {
            let target = target.as_ref().with_context(|| format!("no {link}"))?;
            // deb-systemd-helper names the unit by /lib/systemd/system
            // where / and /usr are merged, as in Debian 12.
            let unit = link.rsplit('/').next().unwrap_or_default();
            ensure!(
                [
                    format!("/usr/lib/systemd/system/{unit}"),
                    format!("/lib/systemd/system/{unit}")
                ]
                .contains(target),
                "{link} points at {target}"
            );
        }
        Ok(links
            .iter()
            .map(|(link, target)| format!("{link} -> {}", target.as_deref().unwrap_or_default()))
            .collect::<Vec<_>>()
            .join(", "))
    });
    report.check(
        "binaries as user ferry: --check, migrate, systemd-dropin",
        || use_daemons(root),
    );
    report.check(
        "upgrade (dpkg -i of a newer version) keeps an edited config",
        || upgrade(root, built),
    );
    report.check("dpkg -r keeps config and data", || {
        root.run(&["dpkg", "-r", "ferry-agent", "ferry-collector"])?;
        for d in &DAEMONS {
            ensure!(
                !root.path(&format!("/usr/bin/{}", d.name)).exists(),
                "{} left",
                d.name
            );
        }
        for config in configs() {
            let text = fs::read_to_string(root.path(&config))
                .with_context(|| format!("{config} removed"))?;
            ensure!(
                text.contains("# local edit"),
                "{config} lost its local edit"
            );
        }
        let data = data_files(root)?;
        root.ferry()?;
        Ok(format!(
            "binaries gone; configs kept with local edits; {data}; user kept"
        ))
    });
    report.check("dpkg -P removes config, keeps data and user", || {
        root.run(&["dpkg", "-P", "ferry-agent", "ferry-collector"])?;
        for config in configs() {
            ensure!(!root.path(&config).exists(), "{config} still there");
        }
        for (link, target) in wants_links(root) {
            ensure!(target.is_none(), "{link} still there");
        }
        let data = data_files(root)?;
        root.ferry()?;
        ensure!(
            root.path("/etc/ferry/pki/ca.pem").is_file(),
            "/etc/ferry/pki removed"
        );
        Ok(format!(
            "configs and enablement gone; {data}, the ferry user and /etc/ferry/pki kept"
        ))
    });
}

pub(super) fn state_dirs() -> Vec<String> {
    DAEMONS
        .iter()
        .flat_map(|d| d.state_dirs.iter().map(|s| format!("/var/lib/ferry/{s}")))
        .collect()
}

fn configs() -> Vec<String> {
    DAEMONS
        .iter()
        .map(|d| format!("/etc/ferry/{}", d.config))
        .collect()
}

/// Each unit's multi-user.target.wants link and where it points, if there.
fn wants_links(root: &Chroot) -> Vec<(String, Option<String>)> {
    DAEMONS
        .iter()
        .map(|d| {
            let link = format!(
                "/etc/systemd/system/multi-user.target.wants/{}.service",
                d.name
            );
            let target = fs::read_link(root.path(&link))
                .ok()
                .map(|t| t.to_string_lossy().into_owned());
            (link, target)
        })
        .collect()
}

/// A PKI as the README sets it up, then each daemon's `--check` and the
/// collector's migrations run as user ferry, which must read the 0640
/// root:ferry configurations and keys and write the state directory.
fn use_daemons(root: &Chroot) -> Result<String> {
    let pki = "/etc/ferry/pki";
    root.run(&["ferry-collector", "pki", "init-ca", "--dir", pki])?;
    root.run(&[
        "ferry-collector",
        "pki",
        "issue-server",
        "--dir",
        pki,
        "--name",
        "collector.example.org",
    ])?;
    root.run(&[
        "ferry-collector",
        "pki",
        "issue-station",
        "--dir",
        pki,
        "--out-cert",
        "/etc/ferry/pki/station.pem",
        "--out-key",
        "/etc/ferry/pki/station.key",
        STATION,
    ])?;
    for key in ["/etc/ferry/pki/server.key", "/etc/ferry/pki/station.key"] {
        root.run(&["chgrp", "ferry", key])?;
        root.run(&["chmod", "0640", key])?;
    }
    let collector = root.run_as_ferry(&["ferry-collector", "run", "--check"])?;
    ensure!(
        collector.contains(": ok"),
        "collector --check said {collector:?}"
    );
    let agent = root.run_as_ferry(&["ferry-agent", "--check"])?;
    ensure!(agent.contains(STATION), "agent --check said {agent:?}");
    root.run_as_ferry(&["ferry-collector", "migrate"])?;
    let dropin = root.run(&["ferry-agent", "systemd-dropin"])?;
    ensure!(
        dropin.contains("BindReadOnlyPaths=\"-/home/rfeye/data\""),
        "systemd-dropin printed:\n{dropin}"
    );
    Ok(format!(
        "both --check ok (station {STATION}); migrate wrote {}; drop-in binds /home/rfeye/data",
        data_files(root)?
    ))
}

/// Edits both configs, then installs each .deb again with a higher version
/// (the same files, repacked): the edits survive, and so does the group.
fn upgrade(root: &Chroot, built: &[Built]) -> Result<String> {
    for config in configs() {
        let path = root.path(&config);
        let mut text = fs::read_to_string(&path)?;
        text.push_str("# local edit\n");
        fs::write(&path, text)?;
    }
    let work = root.path("/tmp/repack");
    fs::create_dir_all(&work)?;
    let mut args = vec!["dpkg".to_owned(), "-i".to_owned()];
    for b in built {
        let tree = work.join(b.daemon.name);
        capture(Command::new("dpkg-deb").arg("-R").arg(&b.deb).arg(&tree))?;
        let control = tree.join("DEBIAN/control");
        let text = fs::read_to_string(&control)?;
        let version = env!("CARGO_PKG_VERSION");
        let newer = format!("{version}-1+check1");
        ensure!(
            text.contains(&format!("Version: {version}-1\n")),
            "unexpected control:\n{text}"
        );
        fs::write(
            &control,
            text.replace(
                &format!("Version: {version}-1\n"),
                &format!("Version: {newer}\n"),
            ),
        )?;
        let deb = work.join(format!("{}_{newer}.deb", b.daemon.name));
        capture(
            Command::new("dpkg-deb")
                .args(["--root-owner-group", "-b"])
                .arg(&tree)
                .arg(&deb),
        )?;
        args.push(format!("/tmp/repack/{}_{newer}.deb", b.daemon.name));
    }
    root.run(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
    let ferry = root.ferry()?;
    for config in configs() {
        let text = fs::read_to_string(root.path(&config))?;
        ensure!(
            text.contains("# local edit"),
            "{config} lost its local edit"
        );
        owned(&root.0, &config, 0o640, 0, ferry.gid)?;
    }
    for (link, target) in wants_links(root) {
        ensure!(target.is_some(), "{link} gone after the upgrade");
    }
    Ok("edits and root:ferry 0640 kept; units still enabled".into())
}

/// What the collector wrote in its state directory (as a summary), failing
/// if it is empty or the repository directory is gone.
fn data_files(root: &Chroot) -> Result<String> {
    let dir = root.path("/var/lib/ferry/collector");
    let mut names: Vec<String> = fs::read_dir(&dir)
        .with_context(|| format!("{} missing", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    names.sort();
    ensure!(!names.is_empty(), "/var/lib/ferry/collector is empty");
    ensure!(
        root.path("/var/lib/ferry/repository").is_dir(),
        "/var/lib/ferry/repository missing"
    );
    Ok(format!(
        "/var/lib/ferry/collector holds {}",
        names.join(" ")
    ))
}

/// `rpm --root -i` of both .rpms without dependency resolution: their
/// scriptlets run in the root (useradd, state directories), the config gets
/// its group from the package; then `rpm -e` keeps user and state.
fn rpms(root: &Chroot, built: &[Built]) -> Result<String> {
    let root_arg = format!("--root={}", root.0.display());
    let rpm = |args: &[&str]| {
        capture(
            Command::new("rpm")
                .arg(&root_arg)
                .args(["--nodeps", "--noplugins"])
                .args(args),
        )
    };
    let mut install = vec!["-i".to_owned()];
    for b in built {
        install.push(b.rpm.to_string_lossy().into_owned());
    }
    rpm(&install.iter().map(String::as_str).collect::<Vec<_>>())?;
    let ferry = root.ferry()?;
    for dir in state_dirs() {
        owned(&root.0, &dir, 0o750, ferry.uid, ferry.gid)?;
    }
    for config in configs() {
        owned(&root.0, &config, 0o640, 0, ferry.gid)?;
    }
    rpm(&["-e", "ferry-agent", "ferry-collector"])?;
    for d in &DAEMONS {
        ensure!(
            !root.path(&format!("/usr/bin/{}", d.name)).exists(),
            "{} left",
            d.name
        );
    }
    root.ferry()?;
    for dir in state_dirs() {
        ensure!(root.path(&dir).is_dir(), "{dir} removed");
    }
    Ok(format!(
        "user ferry (uid {}) and state dirs made by the scriptlets; configs root:ferry 0640; \
         rpm -e kept user and state",
        ferry.uid
    ))
}
