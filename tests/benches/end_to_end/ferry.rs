//! Ferry's side of each measurement: release `ferry-collector` and
//! `ferry-agent` processes with throw-away configs, and the two SQLite
//! catalogs watched until every file is in both.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use ferry_tests::pki::TestPki;
use ferry_tests::process::{Process, free_port, wait_for_port};
use rusqlite::{Connection, OpenFlags};

use crate::data;
use crate::stats::{self, Measured};

/// The station id of single-station runs.
pub const STATION: &str = "rfeye002073";

/// The release binaries under test.
#[derive(Debug)]
pub struct Binaries {
    pub agent: PathBuf,
    pub collector: PathBuf,
}

impl Binaries {
    pub fn release(target: &Path) -> Result<Self> {
        let bins = Self {
            agent: target.join("release/ferry-agent"),
            collector: target.join("release/ferry-collector"),
        };
        for bin in [&bins.agent, &bins.collector] {
            ensure!(
                bin.exists(),
                "{} is missing: `cargo xtask bench` builds it (cargo build --release)",
                bin.display()
            );
        }
        Ok(bins)
    }
}

/// A running collector with SQLite catalogs (or a MySQL primary).
#[derive(Debug)]
pub struct Collector {
    pub process: Process,
    pub addr: SocketAddr,
    pub catalogs: Catalogs,
    log: PathBuf,
}

impl Collector {
    /// Starts a collector whose repository and state live in `dir`; the
    /// primary catalog is `primary` when given, SQLite otherwise.
    pub fn start(
        bins: &Binaries,
        pki: &TestPki,
        dir: &Path,
        primary: Option<&str>,
    ) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let addr = free_port()?;
        let state = dir.join("collector-state");
        let sqlite_primary = state.join("catalog-primary.sqlite");
        let backup = state.join("catalog-backup.sqlite");
        let primary_url = primary.map_or_else(
            || format!("sqlite://{}", sqlite_primary.display()),
            str::to_owned,
        );
        let server = pki.server_files();
        let config = dir.join("collector.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"{addr}\"\nrepository = {repo:?}\nstate_dir = {state:?}\n\n\
                 [tls]\nca = {ca:?}\ncert = {cert:?}\nkey = {key:?}\n\n\
                 [catalog]\nprimary = {primary_url:?}\nbackup = \"sqlite://{backup}\"\n\n\
                 [limits]\nreserve_bytes = 104857600\n\n\
                 [http]\nlisten = \"127.0.0.1:0\"\n",
                repo = dir.join("repository"),
                ca = pki.ca_path(),
                cert = server.cert,
                key = server.key,
                backup = backup.display(),
            ),
        )?;
        let log = dir.join("collector.log");
        let config_s = config.to_string_lossy().into_owned();
        let process = Process::start(&bins.collector, &["run", "--config", &config_s], &log)?;
        wait_for_port(addr, Duration::from_secs(30)).with_context(|| tail(&log))?;
        Ok(Self {
            process,
            addr,
            catalogs: Catalogs {
                paths: [primary.is_none().then_some(sqlite_primary), Some(backup)],
                conns: [None, None],
            },
            log,
        })
    }

    pub fn check_alive(&mut self) -> Result<()> {
        check_alive("collector", &mut self.process, &self.log)
    }

    pub fn stop(self) -> Result<()> {
        stop("collector", self.process, &self.log)
    }
}

/// A running agent.
#[derive(Debug)]
pub struct Agent {
    pub process: Process,
    log: PathBuf,
}

impl Agent {
    /// Starts the one station of a single-station run ([`STATION`]),
    /// watching `root`, with its state in `dir/agent`.
    pub fn start_station(
        bins: &Binaries,
        pki: &TestPki,
        collector: &Collector,
        root: &Path,
        dir: &Path,
    ) -> Result<Self> {
        Self::start(bins, pki, STATION, collector.addr, root, &dir.join("agent"))
    }

    /// Starts an agent for `station` watching `root` (root name `data`),
    /// keeping its state in `dir`.
    pub fn start(
        bins: &Binaries,
        pki: &TestPki,
        station: &str,
        collector: SocketAddr,
        root: &Path,
        dir: &Path,
    ) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let files = pki.station(station)?;
        let config = dir.join("agent.toml");
        std::fs::write(
            &config,
            format!(
                "collectors = [\"{collector}\"]\nstate_dir = {state:?}\n\n\
                 [tls]\nca = {ca:?}\ncert = {cert:?}\nkey = {key:?}\n\n\
                 [[roots]]\nname = \"data\"\npath = {root:?}\n",
                state = dir.join("state"),
                ca = pki.ca_path(),
                cert = files.cert,
                key = files.key,
            ),
        )?;
        let log = dir.join("agent.log");
        let config_s = config.to_string_lossy().into_owned();
        let process = Process::start(&bins.agent, &["run", "--config", &config_s], &log)?;
        Ok(Self { process, log })
    }

    pub fn pid(&self) -> u32 {
        self.process.child.id()
    }

    pub fn check_alive(&mut self) -> Result<()> {
        check_alive("agent", &mut self.process, &self.log)
    }

    /// Waits until the agent logs that it is connected to the collector
    /// (it connects at start, with or without anything to send).
    pub fn wait_connected(&mut self, station: &str) -> Result<()> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            if log.contains("connected collector=") {
                return Ok(());
            }
            self.check_alive()?;
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "{station}'s agent not connected after 60 s:\n{}",
                tail(&self.log)
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    pub fn stop(self) -> Result<()> {
        stop("agent", self.process, &self.log)
    }
}

/// The collector's two SQLite catalogs, read while it writes them.
#[derive(Debug)]
pub struct Catalogs {
    /// Primary and backup files (`None` for a catalog that is not SQLite).
    paths: [Option<PathBuf>; 2],
    conns: [Option<Connection>; 2],
}

impl Catalogs {
    fn conn(&mut self, which: usize) -> Option<&Connection> {
        if self.conns[which].is_none() {
            let path = self.paths[which].as_ref()?;
            let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).ok()?;
            conn.busy_timeout(Duration::from_secs(5)).ok()?;
            self.conns[which] = Some(conn);
        }
        self.conns[which].as_ref()
    }

    /// Whether both SQLite catalogs hold at least `files` rows, asked
    /// cheaply enough to poll every few milliseconds while the collector
    /// runs: the highest row id first (an index lookup; ids are handed out
    /// one by one in a fresh catalog), and the exact count only once that
    /// reaches `files` (counting walks every row, which at 100 polls a
    /// second took a few percent of the machine from the run it measures).
    pub fn hold(&mut self, files: u64) -> bool {
        let highest = [0, 1].map(|which| {
            let conn = self.conn(which)?;
            conn.query_row("SELECT COALESCE(MAX(id), 0) FROM files", [], |r| {
                r.get::<_, i64>(0)
            })
            .ok()
            .map(|n| n as u64)
        });
        highest.iter().all(|n| n.unwrap_or(0) >= files)
            && self.counts().iter().all(|n| n.unwrap_or(0) >= files)
    }

    /// Rows in each SQLite catalog (`None` for the others).
    pub fn counts(&mut self) -> [Option<u64>; 2] {
        [0, 1].map(|which| {
            let conn = self.conn(which)?;
            conn.query_row("SELECT COUNT(*) FROM files", [], |r| r.get::<_, i64>(0))
                .ok()
                .map(|n| n as u64)
        })
    }

    /// Rows per station in catalog `which` (0 primary, 1 backup).
    pub fn per_station(&mut self, which: usize) -> HashMap<String, u64> {
        let Some(conn) = self.conn(which) else {
            return HashMap::new();
        };
        let Ok(mut stmt) =
            conn.prepare_cached("SELECT station, COUNT(*) FROM files GROUP BY station")
        else {
            return HashMap::new();
        };
        stmt.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))
            .map(|rows| rows.flatten().collect())
            .unwrap_or_default()
    }

    /// Rows of catalog `which` (0 primary, 1 backup) with an id above
    /// `after`: (id, station, path).
    pub fn rows_after(&mut self, which: usize, after: i64) -> Vec<(i64, String, String)> {
        let Some(conn) = self.conn(which) else {
            return Vec::new();
        };
        let Ok(mut stmt) =
            conn.prepare_cached("SELECT id, station, path FROM files WHERE id > ?1 ORDER BY id")
        else {
            return Vec::new();
        };
        stmt.query_map([after], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map(|rows| rows.flatten().collect())
            .unwrap_or_default()
    }
}

/// Ships the files of `root` with a fresh collector and agent in `work`:
/// seconds from the agent's start until every file is in both catalogs.
pub fn ship(bins: &Binaries, pki: &TestPki, root: &Path, work: &Path) -> Result<Measured> {
    let (files, bytes) = count(root)?;
    let dir = work.join("ferry");
    data::clear(&dir)?;
    let mut collector = Collector::start(bins, pki, &dir, None)?;
    let started = Instant::now();
    let mut agent = Agent::start_station(bins, pki, &collector, root, &dir)?;
    let deadline = started + Duration::from_secs(1800);
    loop {
        if collector.catalogs.hold(files as u64) {
            break;
        }
        ensure!(Instant::now() < deadline, "not done after 30 minutes");
        agent.check_alive()?;
        collector.check_alive()?;
        std::thread::sleep(Duration::from_millis(10));
    }
    let seconds = started.elapsed().as_secs_f64();
    let measured = Measured {
        seconds,
        files,
        bytes,
        sender_cpu: stats::cpu(agent.pid())?,
        receiver_cpu: stats::cpu(collector.process.child.id())?,
        rss: Some((
            stats::peak_rss(agent.pid())?,
            stats::peak_rss(collector.process.child.id())?,
        )),
    };
    agent.stop()?;
    collector.stop()?;
    if std::env::var_os("FERRY_BENCH_KEEP").is_none() {
        data::retire(&dir, work)?;
    }
    Ok(measured)
}

/// Regular files and bytes under `dir`.
pub fn count(dir: &Path) -> Result<(usize, u64)> {
    let files = data::files(dir)?;
    Ok((files.len(), files.iter().map(|(_, len)| len).sum()))
}

/// The last lines of a log, for error messages.
/// Fails if the daemon (`what`, logging to `log`) has exited.
fn check_alive(what: &str, process: &mut Process, log: &Path) -> Result<()> {
    if let Some(status) = process.child.try_wait()? {
        bail!("the {what} exited with {status}\n{}", tail(log));
    }
    Ok(())
}

/// Stops the daemon (`what`, logging to `log`) and checks it exited cleanly.
fn stop(what: &str, mut process: Process, log: &Path) -> Result<()> {
    let status = process.terminate(Duration::from_secs(30))?;
    ensure!(
        status.success(),
        "the {what} exited with {status}\n{}",
        tail(log)
    );
    Ok(())
}

pub fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    format!(
        "{} (last lines):\n{}",
        log.display(),
        lines[lines.len().saturating_sub(20)..].join("\n")
    )
}
