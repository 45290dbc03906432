//! A station for tests: a data root in a temp dir, an agent config written
//! to a file, and the agent run as a real `ferry-agent` process (so it can
//! be killed with SIGKILL) or in-process.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ferry_agent::config::{self, Settings};
use ferry_agent::ledger::Ledger;

use crate::pki::TestPki;
use crate::process::{self, Process};

/// A station directory with its config; the agent runs on demand.
#[derive(Debug)]
pub struct TestAgent {
    pub station: String,
    /// The watched root (root name `data`).
    pub root: PathBuf,
    pub config_path: PathBuf,
    pub settings: Settings,
    /// `FERRY_LOG` for the agent process (`info` unless a test asks more).
    pub log_filter: String,
    /// Where the logs go: one file per start, `agent-<n>.log`.
    dir: PathBuf,
    /// Times the agent was started.
    launches: u32,
    process: Option<Process>,
}

impl TestAgent {
    /// Prepares station `station` dialling `endpoint`; `extra` is appended
    /// to the top level of the config (before any table).
    pub fn new(pki: &TestPki, station: &str, endpoint: &str, extra: &str) -> anyhow::Result<Self> {
        let dir = pki.scratch(&format!("station-{station}"));
        let root = dir.join("data");
        std::fs::create_dir_all(&root)?;
        let cert = pki.station(station)?;
        let config_path = dir.join("agent.toml");
        let text = format!(
            "collectors = [{endpoint:?}]\nstate_dir = {state:?}\nsettle_secs = 1\nrescan_interval_secs = 3600\n{extra}\n\
             [tls]\nca = {ca:?}\ncert = {cert:?}\nkey = {key:?}\n\
             [[roots]]\nname = \"data\"\npath = {root:?}\nexclude = [\"*.tmp\"]\n\
             [batch]\nmax_files = 100\nmax_bytes = 67108864\nlinger_ms = 50\n\
             [legacy]\nhalt_timeout_mins = 300\nhalt_retry_max_secs = 1\n",
            state = dir.join("state"),
            ca = pki.ca_path(),
            cert = cert.cert,
            key = cert.key,
        );
        std::fs::write(&config_path, text)?;
        let settings = config::load(&config_path)?;
        Ok(Self {
            station: station.to_owned(),
            root,
            config_path,
            settings,
            log_filter: "info".to_owned(),
            dir,
            launches: 0,
            process: None,
        })
    }

    /// Starts the agent process.
    pub fn start(&mut self) -> anyhow::Result<()> {
        self.start_with_env(&[])
    }

    /// Starts the agent process with extra environment variables.
    pub fn start_with_env(&mut self, env: &[(&str, &std::ffi::OsStr)]) -> anyhow::Result<()> {
        let bin = process::binary("ferry-agent")?;
        let config = self.config_path.to_string_lossy().into_owned();
        self.launches += 1;
        let log = self.log_path(self.launches);
        self.process = Some(Process::start_with(
            &bin,
            &["run", "--config", &config],
            env,
            &log,
            &self.log_filter,
        )?);
        Ok(())
    }

    /// Whether the agent process runs.
    pub fn is_running(&mut self) -> bool {
        self.process
            .as_mut()
            .is_some_and(|p| matches!(p.child.try_wait(), Ok(None)))
    }

    /// The log files of every start so far, oldest first.
    pub fn logs(&self) -> Vec<PathBuf> {
        (1..=self.launches).map(|n| self.log_path(n)).collect()
    }

    fn log_path(&self, launch: u32) -> PathBuf {
        self.dir.join(format!("agent-{launch}.log"))
    }

    /// SIGKILL.
    pub fn kill9(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill9();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut p) = self.process.take() {
            let status = p.terminate(Duration::from_secs(10))?;
            anyhow::ensure!(
                status.success(),
                "agent exited with {status}; log: {}",
                self.log_text()
            );
        }
        Ok(())
    }

    /// The log of the agent's latest start.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log_path(self.launches)).unwrap_or_default()
    }

    /// SIGHUP to the agent process.
    pub fn hangup(&self) -> anyhow::Result<()> {
        match &self.process {
            Some(p) => p.hangup(),
            None => anyhow::bail!("no ferry-agent process"),
        }
    }

    /// What `ferry-agent status` prints (its human-readable form).
    pub fn status_text(&self) -> anyhow::Result<String> {
        let bin = process::binary("ferry-agent")?;
        let config = self.config_path.to_string_lossy().into_owned();
        let output = process::run(&bin, &["status", "--config", &config])?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(|p| p.child.id())
    }

    /// Writes a file under the root (creating directories).
    pub fn write(&self, rel: &str, content: &[u8]) -> PathBuf {
        let path = self.root.join(rel);
        if let Some(parent) = path.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        let _ = std::fs::write(&path, content);
        path
    }

    /// The ledger, read-only.
    pub fn ledger(&self) -> anyhow::Result<Ledger> {
        Ok(Ledger::open_read_only(&self.settings.ledger)?)
    }

    /// Lines of `DUE_BACKUP` (empty if absent).
    pub fn due_backup(&self) -> Vec<String> {
        std::fs::read_to_string(&self.settings.legacy.due_backup)
            .map(|t| t.lines().map(str::to_owned).collect())
            .unwrap_or_default()
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Polls `check` every 50 ms until it returns `Some` or `timeout` passes.
pub async fn eventually<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every regular file under `dir`, relative to it, sorted.
pub fn tree(dir: &Path) -> Vec<PathBuf> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(base, &path, out);
            } else if let Ok(rel) = path.strip_prefix(base) {
                out.push(rel.to_owned());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}
