//! A real collector for tests, configured through a real config file in a
//! temp dir, with both catalogs on the embedded SQLite default (or MariaDB
//! servers of the harness). It runs in-process ([`TestCollector::start`]) or
//! as a real `ferry-collector` process that a test can `kill -9`
//! ([`TestCollector::spawn`]).

use std::path::PathBuf;
use std::time::Duration;

use ferry_collector::Collector;
use ferry_collector::config::{self, Settings};
use ferry_collector::journal::Record;
use ferry_collector::store::{AnyStore, CatalogStore};

use crate::pki::TestPki;
use crate::process::{self, Process};

/// One file's content received by the collector, from the offset it asked
/// for to the commit (a `file received` line of its debug log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub station: String,
    /// `<root>/<path>`, as in the catalog.
    pub path: String,
    pub size: u64,
    /// Where the collector asked the content to start.
    pub from: u64,
}

impl Received {
    /// Whether the whole (non-empty) file crossed the link for this commit.
    pub fn in_full(&self) -> bool {
        self.size > 0 && self.from == 0
    }
}

/// A collector's directories and settings; start and stop it at will.
#[derive(Debug)]
pub struct TestCollector {
    pub settings: Settings,
    pub config_path: PathBuf,
    running: Option<Collector>,
    /// `FERRY_LOG` for the collector process (`info` unless a test asks
    /// more).
    pub log_filter: String,
    /// The `ferry-collector` process, when run as one.
    process: Option<Process>,
    /// Processes started so far: each logs to its own file.
    launches: u32,
}

impl TestCollector {
    /// Writes a config under the PKI's temp dir; `extra` is appended to the
    /// `[limits]` table. The status endpoint listens on a free loopback
    /// port ([`TestCollector::http_addr`]).
    pub fn new(pki: &TestPki, limits: &str) -> anyhow::Result<Self> {
        let dir = pki.scratch("collector");
        let server = pki.server_files();
        let config_path = dir.join("collector.toml");
        std::fs::write(
            &config_path,
            format!(
                "listen = \"127.0.0.1:0\"\nrepository = \"repository\"\nstate_dir = \"state\"\n\
                 [tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n[http]\nlisten = \"127.0.0.1:0\"\n[limits]\nheartbeat_secs = 1\nreserve_bytes = 0\n{limits}\n",
                pki.ca_path(),
                server.cert,
                server.key
            ),
        )?;
        let settings = config::load(&config_path)?;
        Ok(Self {
            settings,
            config_path,
            running: None,
            log_filter: "info".to_owned(),
            process: None,
            launches: 0,
        })
    }

    /// Points the catalogs at `primary` and `backup` URLs (e.g. MariaDB
    /// servers of the harness), rewriting the config file.
    pub fn use_catalogs(&mut self, primary: &str, backup: &str) -> anyhow::Result<()> {
        let mut text = std::fs::read_to_string(&self.config_path)?;
        text = text.replace(
            "[limits]",
            &format!("[catalog]\nprimary = {primary:?}\nbackup = {backup:?}\n[limits]"),
        );
        std::fs::write(&self.config_path, text)?;
        let listen = self.settings.listen;
        self.settings = config::load(&self.config_path)?;
        self.settings.listen = listen;
        Ok(())
    }

    /// Fixes the listening port (for collectors run as a separate process,
    /// whose port the test must know in advance), rewriting the config file.
    pub fn pin_port(&mut self, addr: std::net::SocketAddr) -> anyhow::Result<()> {
        let text = std::fs::read_to_string(&self.config_path)?;
        // The first `127.0.0.1:0` is the station listener's.
        std::fs::write(
            &self.config_path,
            text.replacen("127.0.0.1:0", &addr.to_string(), 1),
        )?;
        self.settings = config::load(&self.config_path)?;
        Ok(())
    }

    /// Starts (or restarts) the collector; after the first start it keeps
    /// its port.
    pub async fn start(&mut self) -> anyhow::Result<String> {
        let mut tries = 0;
        let collector = loop {
            match ferry_collector::start(self.settings.clone()).await {
                Ok(collector) => break collector,
                // The previous listener may take a moment to go away.
                Err(e) if tries < 100 => {
                    tries += 1;
                    tracing::debug!(error = %e, "collector start retry");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => return Err(e.into()),
            }
        };
        self.settings.listen = collector.local_addr();
        self.running = Some(collector);
        Ok(self.endpoint())
    }

    /// Stops the collector gracefully.
    pub async fn stop(&mut self) {
        if let Some(collector) = self.running.take() {
            collector.stop().await;
        }
    }

    /// Starts the collector as a real `ferry-collector run` process (on a
    /// port fixed at the first start, so stations find it again after a
    /// restart) and waits until it listens.
    pub async fn spawn(&mut self) -> anyhow::Result<String> {
        if self.settings.listen.port() == 0 {
            self.pin_port(process::free_port()?)?;
        }
        let bin = process::binary("ferry-collector")?;
        self.launches += 1;
        let log = self.log_path(self.launches);
        let config = self.config_path.to_string_lossy().into_owned();
        self.process = Some(Process::start_logging(
            &bin,
            &["run", "--config", &config],
            &log,
            &self.log_filter,
        )?);
        let addr = self.settings.listen;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            if let Some(p) = self.process.as_mut()
                && let Some(status) = p.child.try_wait()?
            {
                self.process = None;
                anyhow::bail!("ferry-collector exited with {status}:\n{}", self.log_text());
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "ferry-collector does not listen on {addr} after 30 s:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(self.endpoint())
    }

    /// SIGKILL to the collector process: no chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill9();
        }
    }

    /// SIGHUP to the collector process: it reloads its config file.
    pub fn hangup(&self) -> anyhow::Result<()> {
        match &self.process {
            Some(p) => p.hangup(),
            None => anyhow::bail!("no ferry-collector process"),
        }
    }

    /// Writes `text` as a top-level key (before any table) into the config
    /// file, for a reload; `settings` is left as it is.
    pub fn set_top_level(&self, text: &str) -> anyhow::Result<()> {
        let config = std::fs::read_to_string(&self.config_path)?;
        std::fs::write(&self.config_path, format!("{text}\n{config}"))?;
        Ok(())
    }

    /// SIGTERM to the collector process and wait for a clean exit.
    pub fn terminate(&mut self) -> anyhow::Result<()> {
        if let Some(mut p) = self.process.take() {
            let status = p.terminate(Duration::from_secs(30))?;
            anyhow::ensure!(
                status.success(),
                "ferry-collector exited with {status}:\n{}",
                self.log_text()
            );
        }
        Ok(())
    }

    /// Whether the collector process runs.
    pub fn is_running(&mut self) -> bool {
        self.process
            .as_mut()
            .is_some_and(|p| matches!(p.child.try_wait(), Ok(None)))
    }

    /// The log of the latest collector process.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log_path(self.launches)).unwrap_or_default()
    }

    /// The log files of every collector process so far, oldest first.
    pub fn logs(&self) -> Vec<PathBuf> {
        (1..=self.launches).map(|n| self.log_path(n)).collect()
    }

    /// Every file content the collector processes received whole or in
    /// part and saw committed, oldest first, from their logs (`log_filter`
    /// must enable `ferry_collector::session=debug`).
    pub fn received(&self) -> Vec<Received> {
        let mut out = Vec::new();
        for launch in 1..=self.launches {
            let text = std::fs::read_to_string(self.log_path(launch)).unwrap_or_default();
            for line in text.lines() {
                let Some((context, fields)) = line.split_once("file received ") else {
                    continue;
                };
                let field = |text: &str, name: &str| -> String {
                    text.split([' ', '{', '}', ':'])
                        .find_map(|f| f.strip_prefix(name)?.strip_prefix('='))
                        .unwrap_or_default()
                        .to_owned()
                };
                let number = |name: &str| field(fields, name).parse().unwrap_or(0);
                out.push(Received {
                    station: field(context, "station"),
                    path: field(fields, "path"),
                    size: number("size"),
                    from: number("from"),
                });
            }
        }
        out
    }

    fn log_path(&self, launch: u32) -> PathBuf {
        self.config_path
            .with_file_name(format!("collector-{launch}.log"))
    }

    /// The address stations dial.
    pub fn endpoint(&self) -> String {
        self.settings.listen.to_string()
    }

    /// Where the running collector's status endpoint listens.
    pub fn http_addr(&self) -> Option<std::net::SocketAddr> {
        self.running.as_ref().and_then(Collector::http_addr)
    }

    /// Where the running collector's `[metrics] listen` is, if configured.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.running.as_ref().and_then(Collector::metrics_addr)
    }

    /// Appends `text` (whole tables, e.g. `[metrics]`) to the config file
    /// and reloads it; call before [`TestCollector::start`].
    pub fn append_config(&mut self, text: &str) -> anyhow::Result<()> {
        let mut config = std::fs::read_to_string(&self.config_path)?;
        config.push('\n');
        config.push_str(text);
        config.push('\n');
        std::fs::write(&self.config_path, config)?;
        let listen = self.settings.listen;
        self.settings = config::load(&self.config_path)?;
        self.settings.listen = listen;
        Ok(())
    }

    /// Where the repository is.
    pub fn repository(&self) -> PathBuf {
        self.settings.repository.clone()
    }

    /// Every row of the named catalog (`primary` or `backup`).
    pub async fn catalog_rows(&self, catalog: &str) -> anyhow::Result<Vec<Record>> {
        let url = match catalog {
            "primary" => &self.settings.primary,
            _ => &self.settings.backup,
        };
        let store = AnyStore::open(catalog, url)?;
        store.migrate().await?;
        Ok(store.rows().await?)
    }

    /// Waits until both catalogs hold `count` rows (or 10 s pass) and
    /// returns them.
    pub async fn settled_rows(&self, count: usize) -> anyhow::Result<(Vec<Record>, Vec<Record>)> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let primary = self.catalog_rows("primary").await?;
            let backup = self.catalog_rows("backup").await?;
            if (primary.len() >= count && backup.len() >= count)
                || tokio::time::Instant::now() > deadline
            {
                return Ok((primary, backup));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
