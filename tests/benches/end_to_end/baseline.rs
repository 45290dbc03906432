//! The baselines: `rsync -a` over ssh and the legacy pattern (one sftp
//! session, one `get` per file), both through an sshd the benchmark starts
//! on a free loopback port with throw-away keys, each followed by `sync`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use ferry_tests::process::{Process, free_port, wait_for_port};

use crate::ferry::count;
use crate::stats::{self, Measured};

/// A private sshd on loopback.
#[derive(Debug)]
pub struct Sshd {
    process: Process,
    port: u16,
    key: PathBuf,
    user: String,
}

impl Sshd {
    /// Installs openssh-server, openssh-client and rsync with apt when
    /// missing, makes host and client keys in `dir`, and starts sshd.
    pub fn start(dir: &Path) -> Result<Self> {
        ensure_tools()?;
        fresh(dir)?;
        for name in ["host_key", "client_key"] {
            let status = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(dir.join(name))
                .status()?;
            ensure!(status.success(), "ssh-keygen failed");
        }
        let authorized = dir.join("authorized_keys");
        std::fs::copy(dir.join("client_key.pub"), &authorized)?;
        let port = free_port()?.port();
        let config = dir.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {host}\nPidFile {pid}\n\
                 AuthorizedKeysFile {authorized}\nPubkeyAuthentication yes\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\n\
                 Subsystem sftp internal-sftp\nLogLevel ERROR\n",
                host = dir.join("host_key").display(),
                pid = dir.join("sshd.pid").display(),
                authorized = authorized.display(),
            ),
        )?;
        // sshd's privilege separation directory.
        let _ = std::fs::create_dir_all("/run/sshd");
        let sshd = which("sshd").context("sshd not found after installing openssh-server")?;
        let config_s = config.to_string_lossy().into_owned();
        let process = Process::start(&sshd, &["-D", "-e", "-f", &config_s], &dir.join("sshd.log"))?;
        wait_for_port(([127, 0, 0, 1], port).into(), Duration::from_secs(10))?;
        let user = String::from_utf8(Command::new("id").arg("-un").output()?.stdout)?
            .trim()
            .to_owned();
        let sshd = Self {
            process,
            port,
            key: dir.join("client_key"),
            user,
        };
        let probe = sshd.ssh_command().arg("true").status()?;
        ensure!(probe.success(), "cannot log in to the benchmark's sshd");
        Ok(sshd)
    }

    fn ssh_options(&self) -> Vec<String> {
        vec![
            "-i".into(),
            self.key.display().to_string(),
            "-o".into(),
            "StrictHostKeyChecking=no".into(),
            "-o".into(),
            "UserKnownHostsFile=/dev/null".into(),
            "-o".into(),
            "BatchMode=yes".into(),
            "-o".into(),
            "LogLevel=ERROR".into(),
        ]
    }

    fn ssh_command(&self) -> Command {
        let mut c = Command::new("ssh");
        c.args(["-p", &self.port.to_string()])
            .args(self.ssh_options())
            .arg(format!("{}@127.0.0.1", self.user));
        c
    }

    /// `rsync -a` of `src` to a fresh directory in `work`, then `sync`.
    /// The sender is rsync + ssh here; the receiver is sshd's child.
    pub fn rsync(&self, src: &Path, work: &Path) -> Result<Measured> {
        let dest = fresh(&work.join("rsync"))?;
        let ssh = format!("ssh -p {} {}", self.port, self.ssh_options().join(" "));
        let mut rsync = Command::new("rsync");
        rsync
            .arg("-a")
            .args(["-e", &ssh])
            .arg(format!("{}/", src.display()))
            .arg(format!("{}@127.0.0.1:{}/", self.user, dest.display()));
        self.timed(rsync, Sender::Client, src, &dest, work)
    }

    /// The legacy pattern: the central side pulls each file with its own
    /// `get` in one sftp session, then `sync`. The sender is sshd's child
    /// here; the receiver is the sftp client.
    pub fn sftp(&self, src: &Path, work: &Path) -> Result<Measured> {
        let dest = fresh(&work.join("sftp"))?;
        let mut batch = String::new();
        let mut stack = vec![src.to_owned()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir)? {
                let entry = entry?;
                let path = entry.path();
                let rel = path.strip_prefix(src)?;
                if entry.file_type()?.is_dir() {
                    // Directories are made beforehand, outside the timing.
                    std::fs::create_dir_all(dest.join(rel))?;
                    stack.push(path);
                } else {
                    batch.push_str(&format!(
                        "get \"{}\" \"{}\"\n",
                        path.display(),
                        dest.join(rel).display()
                    ));
                }
            }
        }
        let batch_file = work.join("sftp-batch");
        std::fs::write(&batch_file, batch)?;
        let mut sftp = Command::new("sftp");
        sftp.args(["-q", "-b"])
            .arg(&batch_file)
            .args(["-P", &self.port.to_string()])
            .args(self.ssh_options())
            .arg(format!("{}@127.0.0.1", self.user))
            .stdout(Stdio::null());
        self.timed(sftp, Sender::Server, src, &dest, work)
    }

    /// Runs `client` to completion, then `sync`, and measures it: seconds,
    /// and the CPU of the client (this process's children) and of sshd's
    /// session processes, one of which sends. The output in `dest` is then
    /// retired.
    fn timed(
        &self,
        mut client: Command,
        sender: Sender,
        src: &Path,
        dest: &Path,
        work: &Path,
    ) -> Result<Measured> {
        let (files, bytes) = count(src)?;
        let (client0, server0) = (stats::children_cpu("self")?, self.sshd_cpu()?);
        let started = Instant::now();
        let status = client.status()?;
        ensure!(status.success(), "{:?} failed", client.get_program());
        sync()?;
        let seconds = started.elapsed().as_secs_f64();
        let client_cpu = stats::children_cpu("self")? - client0;
        let server_cpu = self.sshd_cpu()? - server0;
        let (sender_cpu, receiver_cpu) = match sender {
            Sender::Client => (client_cpu, server_cpu),
            Sender::Server => (server_cpu, client_cpu),
        };
        crate::data::retire(dest, work)?;
        Ok(Measured {
            seconds,
            files,
            bytes,
            sender_cpu,
            receiver_cpu,
            rss: None,
        })
    }

    /// CPU seconds of sshd's reaped session processes.
    fn sshd_cpu(&self) -> Result<f64> {
        // A session's processes are reaped by sshd a moment after the
        // client exits; give it that moment.
        std::thread::sleep(Duration::from_millis(100));
        stats::children_cpu(&self.process.child.id().to_string())
    }
}

/// Which side of an ssh transfer sends the data.
#[derive(Debug, Clone, Copy)]
enum Sender {
    /// The client pushes (rsync).
    Client,
    /// sshd's session serves the client's `get`s (sftp).
    Server,
}

fn fresh(dir: &Path) -> Result<PathBuf> {
    crate::data::clear(dir)?;
    std::fs::create_dir_all(dir)?;
    Ok(dir.to_owned())
}

fn sync() -> Result<()> {
    ensure!(Command::new("sync").status()?.success(), "sync failed");
    Ok(())
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(name))
        .find(|p| p.exists())
}

fn ensure_tools() -> Result<()> {
    if ["sshd", "ssh", "sftp", "ssh-keygen", "rsync"]
        .iter()
        .all(|t| which(t).is_some())
    {
        return Ok(());
    }
    eprintln!("installing openssh-server, openssh-client and rsync with apt-get");
    for args in [
        &["update"][..],
        &[
            "install",
            "-y",
            "--no-install-recommends",
            "openssh-server",
            "openssh-client",
            "rsync",
        ][..],
    ] {
        let status = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .context("cannot run apt-get")?;
        if !status.success() {
            bail!(
                "apt-get {} failed: install openssh-server, openssh-client and rsync",
                args.join(" ")
            );
        }
    }
    Ok(())
}
