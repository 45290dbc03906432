//! Throw-away MariaDB servers for tests: each in its own temp dir on a free
//! loopback port, with a `ferry` database and user, killable with SIGKILL
//! and restartable on the same data.
//!
//! The server comes from the distribution's `mariadb-server` package, which
//! `cargo xtask test` installs. A machine without it fails these tests with
//! that advice rather than skipping them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use mysql_async::prelude::Queryable;

use crate::process::{Process, free_port};

/// The `ferry` user's password (test servers listen on loopback only).
pub const PASSWORD: &str = "ferry-test-pw";

/// A running (or stopped) MariaDB server.
#[derive(Debug)]
pub struct MariaDb {
    /// The server process while it runs; dropped (SIGKILL) before the dir.
    process: Option<Process>,
    /// The server binary, found once.
    mariadbd: PathBuf,
    /// Loopback port, kept across restarts so URLs stay valid.
    port: u16,
    /// Times the server was started: each run logs to its own file.
    launches: u32,
    /// Data dir, socket, pid file and log; removed on drop.
    dir: tempfile::TempDir,
}

impl MariaDb {
    /// Initialises a data dir, starts the server, and creates database
    /// `ferry` with user `ferry` (password [`PASSWORD`]) and user
    /// `ferry_ed25519` (same password, ed25519 authentication).
    pub async fn start() -> anyhow::Result<Self> {
        let mariadbd = tool("mariadbd")?;
        let install_db = tool("mariadb-install-db")?;
        let dir = tempfile::Builder::new().prefix("ferry-mariadb").tempdir()?;
        let mut install = Command::new(&install_db);
        install
            .arg("--no-defaults")
            .arg(format!("--datadir={}", dir.path().join("data").display()))
            .args([
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                "--skip-name-resolve",
                "--innodb-log-file-size=64M",
                // Native AIO reserves kernel AIO contexts per instance; many
                // servers started at once by parallel tests exhaust
                // fs.aio-max-nr and the bootstrap fails.
                "--innodb-use-native-aio=0",
            ]);
        if running_as_root() {
            install.arg("--user=root");
        }
        let mut out = install
            .output()
            .with_context(|| format!("cannot run {}", install_db.display()))?;
        if !out.status.success() {
            // Seen once with many servers bootstrapping at the same moment;
            // say so, clear the half-made datadir and try once more.
            eprintln!(
                "mariadb-install-db failed once ({}), retrying:\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let _ = std::fs::remove_dir_all(dir.path().join("data"));
            out = install
                .output()
                .with_context(|| format!("cannot run {}", install_db.display()))?;
        }
        if !out.status.success() {
            bail!(
                "{} failed ({}):\n{}{}",
                install_db.display(),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let mut server = Self {
            process: None,
            mariadbd,
            port: free_port()?.port(),
            launches: 0,
            dir,
        };
        server.launch().await?;
        server.setup().await.with_context(|| server.log_tail())?;
        Ok(server)
    }

    /// `mysql://ferry:…@127.0.0.1:PORT/ferry?prefer_socket=false`.
    pub fn url(&self) -> String {
        format!(
            "mysql://ferry:{PASSWORD}@127.0.0.1:{}/ferry?prefer_socket=false",
            self.port
        )
    }

    /// The same database through the user that authenticates with ed25519.
    pub fn url_ed25519(&self) -> String {
        format!(
            "mysql://ferry_ed25519:{PASSWORD}@127.0.0.1:{}/ferry?prefer_socket=false",
            self.port
        )
    }

    /// The server's root account (no password, loopback only).
    pub fn root_url(&self) -> String {
        format!(
            "mysql://root@127.0.0.1:{}/ferry?prefer_socket=false",
            self.port
        )
    }

    /// The loopback port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether the server process is running.
    pub fn is_running(&mut self) -> bool {
        self.process
            .as_mut()
            .is_some_and(|p| matches!(p.child.try_wait(), Ok(None)))
    }

    /// SIGKILL: the server gets no chance to flush or close connections
    /// gracefully (the kernel still resets its sockets).
    pub fn kill9(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill9();
        }
    }

    /// SIGTERM and wait for a clean shutdown.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        let Some(mut process) = self.process.take() else {
            return Ok(());
        };
        let status =
            tokio::task::spawn_blocking(move || process.terminate(Duration::from_secs(30)))
                .await??;
        anyhow::ensure!(
            status.success(),
            "mariadbd exited with {status}:\n{}",
            self.log_tail()
        );
        Ok(())
    }

    /// Starts the server again on the same data dir and port (stopping it
    /// first if it runs).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop().await?;
        self.launch().await
    }

    /// The end of the server's log of its latest run.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let from = lines.len().saturating_sub(40);
        format!("mariadbd log (last lines):\n{}", lines[from..].join("\n"))
    }

    fn log_path(&self) -> PathBuf {
        self.dir
            .path()
            .join(format!("mariadbd-{}.log", self.launches))
    }

    /// Starts the process and waits until root can connect over TCP.
    async fn launch(&mut self) -> anyhow::Result<()> {
        let d = self.dir.path();
        let mut args = vec![
            "--no-defaults".to_owned(),
            format!("--datadir={}", d.join("data").display()),
            format!("--socket={}", d.join("sock").display()),
            format!("--pid-file={}", d.join("mariadbd.pid").display()),
            format!("--port={}", self.port),
            "--bind-address=127.0.0.1".to_owned(),
            "--skip-name-resolve".to_owned(),
            // Large enough that a test's batches do not force checkpoints.
            "--innodb-log-file-size=64M".to_owned(),
            "--innodb-buffer-pool-size=128M".to_owned(),
            "--innodb-use-native-aio=0".to_owned(),
        ];
        if running_as_root() {
            args.push("--user=root".to_owned());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.launches += 1;
        self.process = Some(Process::start(&self.mariadbd, &args, &self.log_path())?);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(process) = self.process.as_mut()
                && let Some(status) = process.child.try_wait()?
            {
                self.process = None;
                bail!(
                    "mariadbd exited with {status} while starting\n{}",
                    self.log_tail()
                );
            }
            match self.root().await {
                Ok(conn) => {
                    let _ = conn.disconnect().await;
                    return Ok(());
                }
                Err(e) if Instant::now() >= deadline => {
                    bail!(
                        "mariadbd did not accept connections within 60 s: {e}\n{}",
                        self.log_tail()
                    )
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(25)).await,
            }
        }
    }

    /// A root connection over TCP (no database selected).
    async fn root(&self) -> anyhow::Result<mysql_async::Conn> {
        let opts = mysql_async::Opts::from_url(&format!(
            "mysql://root@127.0.0.1:{}/?prefer_socket=false",
            self.port
        ))?;
        let conn =
            tokio::time::timeout(Duration::from_secs(2), mysql_async::Conn::new(opts)).await??;
        Ok(conn)
    }

    async fn setup(&self) -> anyhow::Result<()> {
        let mut conn = self.root().await?;
        for statement in [
            "CREATE DATABASE IF NOT EXISTS ferry".to_owned(),
            format!("CREATE USER IF NOT EXISTS 'ferry'@'%' IDENTIFIED BY '{PASSWORD}'"),
            "GRANT ALL ON ferry.* TO 'ferry'@'%'".to_owned(),
            "INSTALL SONAME 'auth_ed25519'".to_owned(),
            format!(
                "CREATE USER IF NOT EXISTS 'ferry_ed25519'@'%' IDENTIFIED VIA ed25519 USING PASSWORD('{PASSWORD}')"
            ),
            "GRANT ALL ON ferry.* TO 'ferry_ed25519'@'%'".to_owned(),
        ] {
            conn.query_drop(&statement)
                .await
                .with_context(|| format!("setting up the test server: {statement}"))?;
        }
        conn.disconnect().await?;
        Ok(())
    }
}

/// Finds `name` on PATH or in the distribution's usual places.
fn tool(name: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
        .ok_or_else(|| {
            anyhow::anyhow!(
                "{name} is not installed (looked on PATH and in /usr/sbin, /usr/bin); \
                 run `cargo xtask test`, which installs mariadb-server"
            )
        })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}
