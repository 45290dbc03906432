//! A real collector for tests, in-process, configured through a real config
//! file in a temp dir, with both catalogs on the embedded SQLite default.

use std::path::PathBuf;
use std::time::Duration;

use ferry_collector::Collector;
use ferry_collector::config::{self, Settings};
use ferry_collector::journal::Record;
use ferry_collector::store::{AnyStore, CatalogStore};

use crate::pki::TestPki;

/// A collector's directories and settings; start and stop it at will.
#[derive(Debug)]
pub struct TestCollector {
    pub settings: Settings,
    pub config_path: PathBuf,
    running: Option<Collector>,
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
