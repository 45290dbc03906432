//! Real `ferry-collector` / `ferry-agent` processes for tests: found next to
//! the test binary (built on demand), started with a config, killed with
//! SIGKILL when a test wants a crash.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

static BUILD: Mutex<()> = Mutex::new(());

/// The path of a workspace binary, building it if it is not there yet
/// (run a single test crate with `cargo build` first to avoid a stale one).
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let _guard = BUILD.lock().unwrap_or_else(|p| p.into_inner());
    // Test binaries live in target/<profile>/deps; binaries one level up.
    let exe = std::env::current_exe()?;
    let dir = exe.parent().and_then(Path::parent).ok_or_else(|| {
        anyhow::anyhow!("cannot locate the target directory from {}", exe.display())
    })?;
    let path = dir.join(name);
    if path.exists() {
        // `cargo test --workspace` (and nextest) build every binary of the
        // workspace before running tests; this is that build.
        return Ok(path);
    }
    let package = name;
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--quiet", "--package", package, "--bin", name])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()?;
    anyhow::ensure!(status.success(), "building {name} failed");
    anyhow::ensure!(path.exists(), "{} missing after build", path.display());
    Ok(path)
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}

/// A child process that is killed when dropped.
#[derive(Debug)]
pub struct Process {
    pub child: Child,
    pub name: String,
}

impl Process {
    /// Starts `binary` with `args`, logging to `log`.
    pub fn start(binary: &Path, args: &[&str], log: &Path) -> anyhow::Result<Self> {
        Self::start_with(binary, args, &[], log, "info")
    }

    /// Starts `binary` with `args` and extra environment variables `env`,
    /// logging to `log`.
    pub fn start_with_env(
        binary: &Path,
        args: &[&str],
        env: &[(&str, &std::ffi::OsStr)],
        log: &Path,
    ) -> anyhow::Result<Self> {
        Self::start_with(binary, args, env, log, "info")
    }

    /// [`Process::start`] with the log filter `FERRY_LOG` set to `filter`.
    pub fn start_logging(
        binary: &Path,
        args: &[&str],
        log: &Path,
        filter: &str,
    ) -> anyhow::Result<Self> {
        Self::start_with(binary, args, &[], log, filter)
    }

    /// Starts `binary` with `args`, extra environment `env` and the log
    /// filter `filter`, logging to `log`.
    pub fn start_with(
        binary: &Path,
        args: &[&str],
        env: &[(&str, &std::ffi::OsStr)],
        log: &Path,
        filter: &str,
    ) -> anyhow::Result<Self> {
        let out = std::fs::File::create(log)?;
        let child = Command::new(binary)
            .args(args)
            .envs(env.iter().copied())
            .env("FERRY_LOG", filter)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()?;
        Ok(Self {
            child,
            name: binary.display().to_string(),
        })
    }

    /// SIGKILL: the process gets no chance to clean up.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGHUP (a reload, for the collector), without waiting.
    pub fn hangup(&self) -> anyhow::Result<()> {
        let pid = self.child.id().to_string();
        let status = Command::new("kill").args(["-HUP", &pid]).status()?;
        anyhow::ensure!(status.success(), "kill -HUP {pid} failed");
        Ok(())
    }

    /// SIGTERM, then wait up to `timeout` for it to exit; its exit status.
    pub fn terminate(&mut self, timeout: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status()?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{} did not stop within {timeout:?}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Waits until something accepts TCP connections on `addr`.
pub fn wait_for_port(addr: SocketAddr, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "nothing listens on {addr} after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Runs a command to completion.
pub fn run(binary: &Path, args: &[&str]) -> anyhow::Result<Output> {
    Ok(Command::new(binary).args(args).output()?)
}
