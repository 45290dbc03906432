//! `cargo xtask quickstart`: a first run on the embedded defaults. Builds
//! Ferry, makes a throw-away CA and certificates, starts a collector with two
//! SQLite catalogs and an agent on a sample station directory, writes
//! realistic sample files (some slowly), shows progress until every file is
//! stored and catalogued, prints the catalog summary and the repository tree,
//! and stops both cleanly. The directory it leaves holds ready-to-edit
//! configs for a real deployment.

use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

const STATION: &str = "rfeye002073";

/// Runs the quickstart in `dir` (default `ferry-quickstart`).
pub fn run(args: &[String]) -> Result<()> {
    let dir = PathBuf::from(args.first().map_or("ferry-quickstart", String::as_str));
    let dir = std::env::current_dir()?.join(dir);
    step("building ferry-collector and ferry-agent");
    crate::build_release_daemons()?;
    let target = target_dir()?.join("release");
    let collector_bin = target.join("ferry-collector");
    let agent_bin = target.join("ferry-agent");

    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("cannot clear {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir)?;
    let pki = dir.join("pki");
    step("making a throw-away CA, a collector certificate and a station certificate");
    let pki_s = pki.to_string_lossy().into_owned();
    run_quiet(
        &collector_bin,
        &[
            "pki",
            "init-ca",
            "--dir",
            &pki_s,
            "--name",
            "Ferry quickstart CA",
        ],
    )?;
    run_quiet(
        &collector_bin,
        &[
            "pki",
            "issue-server",
            "--dir",
            &pki_s,
            "--name",
            "localhost",
            "--name",
            "127.0.0.1",
        ],
    )?;
    run_quiet(
        &collector_bin,
        &["pki", "issue-station", "--dir", &pki_s, STATION],
    )?;

    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    // The status endpoint on a free port too, so a collector already on
    // the default 7451 does not stop the quickstart.
    let http_port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let collector_toml = dir.join("collector.toml");
    std::fs::write(
        &collector_toml,
        format!(
            "# Ferry collector, made by `cargo xtask quickstart`. For a real deployment\n\
             # start from packaging/collector.toml; every key is explained there.\n\
             listen = \"127.0.0.1:{port}\"\n\
             repository = \"repository\"\n\
             state_dir = \"collector-state\"\n\n\
             [tls]\nca = \"pki/ca.pem\"\ncert = \"pki/server.pem\"\nkey = \"pki/server.key\"\n\n\
             [catalog]\nprimary = \"sqlite://collector-state/catalog-primary.sqlite\"\n\
             backup = \"sqlite://collector-state/catalog-backup.sqlite\"\n\n\
             [limits]\nreserve_bytes = 104857600\n\n\
             [http]\nlisten = \"127.0.0.1:{http_port}\"\n"
        ),
    )?;
    let station = dir.join("station");
    let spectrum = station.join("spectrum");
    let logs = station.join("logs");
    std::fs::create_dir_all(&spectrum)?;
    std::fs::create_dir_all(&logs)?;
    let agent_toml = dir.join("agent.toml");
    let state = station.join("state");
    std::fs::write(
        &agent_toml,
        format!(
            "# Ferry agent, made by `cargo xtask quickstart`. For a real deployment\n\
             # start from packaging/agent.toml; every key is explained there.\n\
             collectors = [\"127.0.0.1:{port}\"]\n\
             state_dir = {state:?}\n\
             settle_secs = 1\n\n\
             [tls]\nca = {ca:?}\ncert = {cert:?}\nkey = {key:?}\n\n\
             [[roots]]\nname = \"spectrum\"\npath = {spectrum:?}\ninclude = [\"*.bin\"]\n\n\
             [[roots]]\nname = \"logs\"\npath = {logs:?}\n\n\
             [batch]\nlinger_ms = 100\n",
            ca = pki.join("ca.pem"),
            cert = pki.join(format!("stations/{STATION}.pem")),
            key = pki.join(format!("stations/{STATION}.key")),
        ),
    )?;

    step("writing sample measurement files (before the agent starts)");
    let mut rng = Rng(0x5eed_f00d);
    let mut expected = 0usize;
    let mut bytes = 0u64;
    for day in 1..=3u32 {
        for i in 0..8u32 {
            let size = 100 * 1024 + (rng.next() % (2 << 20)) as usize;
            let name = format!(
                "2022/03/{day:02}/{STATION}_2203{day:02}_T{:02}{:02}00.bin",
                8 + i,
                (i * 7) % 60
            );
            write_random(&spectrum.join(name), size, &mut rng)?;
            expected += 1;
            bytes += size as u64;
        }
    }
    for i in 0..4 {
        let text = format!(
            "time,level_dbm\n{}",
            (0..500)
                .map(|j| format!("{j},-{}.{}\n", 60 + (i * j) % 40, j % 10))
                .collect::<String>()
        );
        std::fs::write(logs.join(format!("monitor-{i}.csv")), &text)?;
        expected += 1;
        bytes += text.len() as u64;
    }

    let logs_dir = dir.join("logs");
    std::fs::create_dir_all(&logs_dir)?;
    step("starting the collector (embedded SQLite catalogs) and the agent");
    let collector_toml_s = collector_toml.to_string_lossy().into_owned();
    let agent_toml_s = agent_toml.to_string_lossy().into_owned();
    let mut collector = Daemon::start(
        &collector_bin,
        &["run", "--config", &collector_toml_s],
        &logs_dir.join("collector.log"),
    )?;
    wait_for_port(port, Duration::from_secs(20))?;
    let mut agent = Daemon::start(
        &agent_bin,
        &["run", "--config", &agent_toml_s],
        &logs_dir.join("agent.log"),
    )?;

    step("writing more files while the agent runs, one of them slowly");
    let slow = spectrum.join(format!("2022/03/04/{STATION}_220304_T120000.bin"));
    std::fs::create_dir_all(slow.parent().unwrap_or(&spectrum))?;
    {
        let mut file = std::fs::File::create(&slow)?;
        for _ in 0..10 {
            let mut piece = vec![0u8; 512 * 1024];
            rng.fill(&mut piece);
            file.write_all(&piece)?;
            file.flush()?;
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    expected += 1;
    bytes += 5 << 20;
    for i in 0..5u32 {
        let size = 256 * 1024;
        write_random(
            &spectrum.join(format!("2022/03/04/{STATION}_220304_T13{i:02}00.bin")),
            size,
            &mut rng,
        )?;
        expected += 1;
        bytes += size as u64;
    }

    step(&format!(
        "{expected} files, {:.1} MB in all; waiting until each is stored and in both catalogs",
        bytes as f64 / 1e6
    ));
    let started = Instant::now();
    let repository = dir.join("repository");
    loop {
        let stored = count_files(&repository);
        let status = Command::new(&collector_bin)
            .args(["status", "--json", "--config", &collector_toml_s])
            .output()?;
        let json = String::from_utf8_lossy(&status.stdout).into_owned();
        let pending = json_number(&json, "pending_backup").unwrap_or(u64::MAX);
        print!(
            "\r  stored {stored:>3}/{expected} files, catalog backlog {:<6}",
            if pending == u64::MAX {
                "?".into()
            } else {
                pending.to_string()
            }
        );
        std::io::stdout().flush()?;
        if stored >= expected && pending == 0 {
            println!();
            break;
        }
        if started.elapsed() > Duration::from_secs(180) {
            println!();
            bail!("not done after 3 minutes; see {}", logs_dir.display());
        }
        collector.check_alive()?;
        agent.check_alive()?;
        std::thread::sleep(Duration::from_millis(500));
    }
    println!("  done in {:.1} s", started.elapsed().as_secs_f64());

    step("stopping the agent and the collector");
    agent.stop()?;
    collector.stop()?;

    step("catalog summary (ferry-collector status)");
    print_command(&collector_bin, &["status", "--config", &collector_toml_s])?;
    step("primary and backup catalogs compared row by row (ferry-collector reconcile)");
    print_command(
        &collector_bin,
        &["reconcile", "--config", &collector_toml_s],
    )?;
    step("agent view (ferry-agent status)");
    print_command(&agent_bin, &["status", "--config", &agent_toml_s])?;
    step("repository tree");
    let mut tree = Vec::new();
    walk(&repository, &repository, &mut tree);
    tree.sort();
    for (path, size) in &tree {
        println!("  {:>10}  {}", size, path.display());
    }
    println!(
        "\nEverything is in {}:\n  collector.toml, agent.toml   configs to edit for a real deployment\n  pki/                         the CA (keep ca.key private) and certificates\n  repository/                  the stored files\n  collector-state/             journal and the two SQLite catalogs\n  station/                     the sample station (its ledger, DUE_BACKUP, BACKUP_DONE in state/)\n  logs/                        what both daemons logged",
        dir.display()
    );
    Ok(())
}

fn step(text: &str) {
    println!("==> {text}");
}

fn target_dir() -> Result<PathBuf> {
    if let Ok(dir) = std::env::var("CARGO_TARGET_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    Ok(manifest
        .parent()
        .context("xtask has no parent directory")?
        .join("target"))
}

fn run_quiet(bin: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new(bin).args(args).output()?;
    ensure!(
        out.status.success(),
        "{} {}: {}",
        bin.display(),
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn print_command(bin: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new(bin).args(args).output()?;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        println!("  {line}");
    }
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn wait_for_port(port: u16, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        ensure!(
            Instant::now() < deadline,
            "the collector did not start listening on port {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn count_files(dir: &Path) -> usize {
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.len()
}

fn walk(base: &Path, dir: &Path, out: &mut Vec<(PathBuf, u64)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            walk(base, &path, out);
        } else if let (Ok(rel), Ok(meta)) = (path.strip_prefix(base), entry.metadata()) {
            out.push((rel.to_owned(), meta.len()));
        }
    }
}

/// The first `"key":<number>` in `json`, summed over all occurrences.
fn json_number(json: &str, key: &str) -> Option<u64> {
    let needle = format!("\"{key}\":");
    let mut total = 0;
    let mut found = false;
    for part in json.split(&needle).skip(1) {
        let digits: String = part.chars().take_while(char::is_ascii_digit).collect();
        total += digits.parse::<u64>().ok()?;
        found = true;
    }
    found.then_some(total)
}

fn write_random(path: &Path, size: usize, rng: &mut Rng) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut data = vec![0u8; size];
    rng.fill(&mut data);
    std::fs::write(path, data)?;
    Ok(())
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let bytes = self.next().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

/// A daemon started by the quickstart; killed if the quickstart fails.
struct Daemon {
    child: Child,
    name: String,
    log: PathBuf,
}

impl Daemon {
    fn start(bin: &Path, args: &[&str], log: &Path) -> Result<Self> {
        let file = std::fs::File::create(log)?;
        let child = Command::new(bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        Ok(Self {
            child,
            name: bin
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            log: log.to_owned(),
        })
    }

    fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited with {status}; see {}",
                self.name,
                self.log.display()
            );
        }
        Ok(())
    }

    fn stop(&mut self) -> Result<()> {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status()?;
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait()? {
                ensure!(
                    status.success(),
                    "{} exited with {status}; see {}",
                    self.name,
                    self.log.display()
                );
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "{} did not stop within 15 s",
                self.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
