//! Readiness for a service manager (systemd `Type=notify`): `READY=1` once
//! a daemon serves, `STATUS=` lines, `STOPPING=1` when it begins to stop,
//! and `WATCHDOG=1` keep-alives when the manager asks for them, sent as
//! datagrams to the Unix socket named by `$NOTIFY_SOCKET`.
//!
//! Without `$NOTIFY_SOCKET` every call does nothing, so daemons call these
//! unconditionally. A failed send is logged once at debug level and never
//! stops the daemon: readiness is a courtesy to the manager, not a
//! condition of running.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Why `$NOTIFY_SOCKET` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ReadinessError {
    #[error("NOTIFY_SOCKET {socket:?}: {reason}")]
    Address { socket: String, reason: String },
    #[error("NOTIFY_SOCKET {socket:?}: {source}")]
    Send {
        socket: String,
        #[source]
        source: std::io::Error,
    },
}

/// Where the service manager listens, if anywhere; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Notifier {
    target: Option<Arc<Target>>,
}

#[derive(Debug)]
struct Target {
    /// `$NOTIFY_SOCKET` as given, for messages.
    shown: String,
    address: Result<SocketAddr, String>,
    /// Half the watchdog interval, when the manager asked for keep-alives.
    watchdog: Option<Duration>,
    /// Whether a failure was logged already.
    complained: AtomicBool,
}

impl Notifier {
    /// The notifier the environment describes (`$NOTIFY_SOCKET`,
    /// `$WATCHDOG_USEC`, `$WATCHDOG_PID`).
    pub fn from_env() -> Self {
        Self::new(
            std::env::var_os("NOTIFY_SOCKET").as_deref(),
            std::env::var_os("WATCHDOG_USEC").as_deref(),
            std::env::var_os("WATCHDOG_PID").as_deref(),
        )
    }

    /// A notifier that sends nothing.
    pub fn disabled() -> Self {
        Self::default()
    }

    /// A notifier for these values of `$NOTIFY_SOCKET`, `$WATCHDOG_USEC`
    /// and `$WATCHDOG_PID` (the watchdog applies to this process only when
    /// `WATCHDOG_PID` is absent or names it).
    pub fn new(
        socket: Option<&OsStr>,
        watchdog_usec: Option<&OsStr>,
        watchdog_pid: Option<&OsStr>,
    ) -> Self {
        let Some(socket) = socket.filter(|s| !s.is_empty()) else {
            return Self::disabled();
        };
        let for_us = watchdog_pid
            .and_then(|p| p.to_str())
            .is_none_or(|p| p.trim().parse::<u32>().ok() == Some(std::process::id()));
        let watchdog = watchdog_usec
            .and_then(|u| u.to_str())
            .and_then(|u| u.trim().parse::<u64>().ok())
            .filter(|&usec| usec > 0 && for_us)
            .map(|usec| Duration::from_micros(usec / 2).max(Duration::from_millis(1)));
        Self {
            target: Some(Arc::new(Target {
                shown: socket.to_string_lossy().into_owned(),
                address: address(socket),
                watchdog,
                complained: AtomicBool::new(false),
            })),
        }
    }

    /// Whether a service manager listens.
    pub fn is_enabled(&self) -> bool {
        self.target.is_some()
    }

    /// How often to send `WATCHDOG=1` (half the manager's interval), if the
    /// manager asked for it.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.target.as_ref().and_then(|t| t.watchdog)
    }

    /// `READY=1` with a status line.
    pub fn ready(&self, status: &str) {
        self.notify(&format!("READY=1\nSTATUS={}", one_line(status)));
    }

    /// A status line the manager shows (`systemctl status`).
    pub fn status(&self, status: &str) {
        self.notify(&format!("STATUS={}", one_line(status)));
    }

    /// `STOPPING=1`: the daemon has begun a graceful stop.
    pub fn stopping(&self) {
        self.notify("STOPPING=1\nSTATUS=stopping");
    }

    /// Sends `state` (newline-separated `KEY=value` assignments), logging a
    /// failure once.
    pub fn notify(&self, state: &str) {
        if let Err(error) = self.try_notify(state)
            && let Some(target) = &self.target
            && !target.complained.swap(true, Ordering::Relaxed)
        {
            tracing::debug!(%error, "cannot notify the service manager");
        }
    }

    /// Sends `state`; Ok without doing anything when no manager listens.
    pub fn try_notify(&self, state: &str) -> Result<(), ReadinessError> {
        let Some(target) = &self.target else {
            return Ok(());
        };
        let address = target
            .address
            .as_ref()
            .map_err(|reason| ReadinessError::Address {
                socket: target.shown.clone(),
                reason: reason.clone(),
            })?;
        let send_err = |source| ReadinessError::Send {
            socket: target.shown.clone(),
            source,
        };
        let socket = UnixDatagram::unbound().map_err(send_err)?;
        socket
            .send_to_addr(state.as_bytes(), address)
            .map_err(send_err)?;
        Ok(())
    }

    /// Until `shutdown` turns true, sends `WATCHDOG=1` at half the manager's
    /// interval (when asked for) with a fresh `STATUS=` line from `status`,
    /// or only the status every `status_every` otherwise. Returns at once
    /// when no manager listens.
    pub async fn keep_alive(
        self,
        status_every: Duration,
        status: impl Fn() -> String,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        if !self.is_enabled() {
            return;
        }
        let watchdog = self.watchdog_interval();
        let period = watchdog
            .unwrap_or(status_every)
            .max(Duration::from_millis(1));
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
            let line = format!("STATUS={}", one_line(&status()));
            if watchdog.is_some() {
                self.notify(&format!("WATCHDOG=1\n{line}"));
            } else {
                self.notify(&line);
            }
        }
    }
}

/// The socket address `$NOTIFY_SOCKET` names: a path, or an abstract name
/// written with a leading `@`.
fn address(socket: &OsStr) -> Result<SocketAddr, String> {
    let bytes = socket.as_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        return abstract_address(name);
    }
    if !bytes.starts_with(b"/") {
        return Err("neither an absolute path nor an abstract name (@name)".into());
    }
    SocketAddr::from_pathname(Path::new(socket)).map_err(|e| e.to_string())
}

#[cfg(target_os = "linux")]
fn abstract_address(name: &[u8]) -> Result<SocketAddr, String> {
    use std::os::linux::net::SocketAddrExt;
    SocketAddr::from_abstract_name(name).map_err(|e| e.to_string())
}

#[cfg(not(target_os = "linux"))]
fn abstract_address(_name: &[u8]) -> Result<SocketAddr, String> {
    Err("abstract socket names exist only on Linux".into())
}

/// `s` on one line: a newline would start another assignment.
fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    fn recv(socket: &UnixDatagram) -> String {
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 512];
        let n = socket.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn ready_status_and_stopping_reach_a_socket_at_a_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let manager = UnixDatagram::bind(&path).unwrap();
        let notifier = Notifier::new(Some(path.as_os_str()), None, None);
        assert!(notifier.is_enabled());
        assert_eq!(notifier.watchdog_interval(), None);
        notifier.ready("accepting\non 1.2.3.4:5");
        assert_eq!(recv(&manager), "READY=1\nSTATUS=accepting on 1.2.3.4:5");
        notifier.status("3 sessions");
        assert_eq!(recv(&manager), "STATUS=3 sessions");
        notifier.stopping();
        assert_eq!(recv(&manager), "STOPPING=1\nSTATUS=stopping");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn an_abstract_socket_name_is_reached_too() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("ferry-readiness-test-{:016x}", crate::backoff::random_u64());
        let manager =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        let value = OsString::from(format!("@{name}"));
        let notifier = Notifier::new(Some(&value), None, None);
        notifier.try_notify("READY=1").unwrap();
        assert_eq!(recv(&manager), "READY=1");
    }

    #[test]
    fn without_a_socket_nothing_is_sent_and_nothing_fails() {
        let notifier = Notifier::new(None, Some(OsStr::new("1000000")), None);
        assert!(!notifier.is_enabled());
        notifier.try_notify("READY=1").unwrap();
        assert!(!Notifier::new(Some(OsStr::new("")), None, None).is_enabled());
    }

    #[test]
    fn bad_or_absent_sockets_are_errors_not_panics() {
        let relative = Notifier::new(Some(OsStr::new("relative/path")), None, None);
        assert!(matches!(
            relative.try_notify("READY=1"),
            Err(ReadinessError::Address { .. })
        ));
        let dir = tempfile::tempdir().unwrap();
        let nobody = dir.path().join("nobody-listens");
        let missing = Notifier::new(Some(nobody.as_os_str()), None, None);
        assert!(matches!(
            missing.try_notify("READY=1"),
            Err(ReadinessError::Send { .. })
        ));
        // The logging variant swallows the error.
        missing.ready("x");
    }

    #[test]
    fn the_watchdog_runs_at_half_the_interval_and_only_for_its_pid() {
        let socket = Some(OsStr::new("/run/notify"));
        let usec = Some(OsStr::new("2000000"));
        let ours = std::process::id().to_string();
        assert_eq!(
            Notifier::new(socket, usec, None).watchdog_interval(),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            Notifier::new(socket, usec, Some(OsStr::new(&ours))).watchdog_interval(),
            Some(Duration::from_secs(1))
        );
        let other = (std::process::id() + 1).to_string();
        assert_eq!(
            Notifier::new(socket, usec, Some(OsStr::new(&other))).watchdog_interval(),
            None
        );
        assert_eq!(
            Notifier::new(socket, Some(OsStr::new("soon")), None).watchdog_interval(),
            None
        );
    }

    #[tokio::test]
    async fn keep_alive_sends_watchdog_pings_with_a_status_until_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let manager = UnixDatagram::bind(&path).unwrap();
        let notifier = Notifier::new(Some(path.as_os_str()), Some(OsStr::new("20000")), None);
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(notifier.keep_alive(
            Duration::from_secs(60),
            || "fine".to_owned(),
            shutdown,
        ));
        let got = tokio::task::spawn_blocking(move || (recv(&manager), recv(&manager)))
            .await
            .unwrap();
        assert_eq!(got.0, "WATCHDOG=1\nSTATUS=fine");
        assert_eq!(got.1, "WATCHDOG=1\nSTATUS=fine");
        stop.send(true).unwrap();
        task.await.unwrap();
    }
}
