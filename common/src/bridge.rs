//! The TLS bridge that carries ZMTP between a station's DEALER and the
//! collector's ROUTER.
//!
//! `zeromq` speaks only plain TCP and IPC, so each side runs its socket over a
//! private Unix socket (in a 0700 directory) and this module pumps the bytes
//! through mutual TLS. On the collector ([`serve_gateway`]) every connection
//! is checked before the ROUTER sees it: the client certificate names the
//! station, the ZMTP handshake must announce exactly that station as its
//! identity, and the stream after it passes through [`zmtp::FrameGuard`]. A
//! connection that fails any check is closed and logged; the others never
//! notice. On the station ([`dial`], [`open_tunnel`]) one TLS connection
//! carries one DEALER session.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ServerConfig};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::pki;
use crate::station::StationId;
use crate::zmtp::{self, FrameGuard, Limits};

/// Bytes copied per read in either direction.
const COPY_BUFFER: usize = 64 * 1024;
/// Longest path a Unix socket address can hold on Linux, without the NUL.
const MAX_UNIX_PATH: usize = 107;

/// Why a bridge connection could not be made or was ended.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error("cannot create private directory {path}: {source}")]
    PrivateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "unix socket path {path} is longer than {MAX_UNIX_PATH} bytes; use a shorter state directory"
    )]
    PathTooLong { path: PathBuf },
    #[error("cannot listen on {path}: {source}")]
    Listen {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("connecting to {addr} timed out after {after:?}")]
    Timeout { addr: String, after: Duration },
    #[error("{addr} is not a valid TLS server name")]
    ServerName { addr: String },
    #[error("TLS handshake with {addr} failed: {source}")]
    Handshake {
        addr: String,
        source: std::io::Error,
    },
    #[error("client certificate refused: {0}")]
    Certificate(String),
    #[error("station {station} is revoked")]
    Revoked { station: StationId },
    #[error("zmtp handshake refused: {0}")]
    Zmtp(#[from] zmtp::ZmtpError),
    #[error("zmq identity {claimed:?} does not belong to certificate station {station}")]
    IdentityMismatch { claimed: String, station: StationId },
    #[error("the local zmq socket did not connect within {0:?}")]
    LocalTimeout(Duration),
    #[error("local zmq socket: {0}")]
    Local(std::io::Error),
}

/// A 0700 directory for one process's private Unix sockets, removed on drop.
#[derive(Debug)]
pub struct PrivateDir {
    path: PathBuf,
}

impl PrivateDir {
    /// Creates a fresh directory under `parent` (which is created if missing).
    pub fn create(parent: &Path, prefix: &str) -> Result<Self, BridgeError> {
        let err = |path: &Path, source| BridgeError::PrivateDir {
            path: path.to_owned(),
            source,
        };
        std::fs::create_dir_all(parent).map_err(|e| err(parent, e))?;
        let mut attempt = 0u32;
        loop {
            let path = parent.join(format!(
                "{prefix}-{}-{:08x}",
                std::process::id(),
                crate::backoff::random_u64() as u32
            ));
            match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => return Ok(Self { path }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < 8 => {
                    attempt += 1;
                }
                Err(e) => return Err(err(&path, e)),
            }
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A socket path inside the directory, checked against the address limit.
    pub fn socket(&self, name: &str) -> Result<PathBuf, BridgeError> {
        let path = self.path.join(name);
        if path.as_os_str().len() > MAX_UNIX_PATH {
            return Err(BridgeError::PathTooLong { path });
        }
        Ok(path)
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// The ZMQ identity a station's DEALER announces: `<station>/<session hex>`.
///
/// The session part keeps identities unique per connection, so a reconnect
/// never collides with the ROUTER's memory of the previous connection.
pub fn zmq_identity(station: &StationId, session: u64) -> Vec<u8> {
    format!("{station}/{session:016x}").into_bytes()
}

/// The station an identity belongs to, if it has the `zmq_identity` shape.
pub fn station_of_identity(identity: &[u8]) -> Option<StationId> {
    let text = std::str::from_utf8(identity).ok()?;
    let (station, session) = text.split_once('/')?;
    if session.len() != 16 || !session.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    StationId::new(station).ok()
}

/// What the collector's gateway needs to admit stations.
#[derive(Debug)]
pub struct GatewayConfig {
    /// TLS settings requiring a client certificate from the private CA.
    pub tls: Arc<ServerConfig>,
    /// Frame limits enforced before the ROUTER sees a byte.
    pub limits: Limits,
    /// Time a new connection gets to finish TLS and ZMTP handshakes.
    pub handshake_timeout: Duration,
    /// Station ids and certificate SHA-256 fingerprints that are refused
    /// although their certificate verifies.
    pub revoked: HashSet<String>,
}

/// The live bridge connections of a gateway, by ZMQ identity, and a count
/// of the connections it refused.
#[derive(Debug, Clone, Default)]
pub struct Connections {
    inner: Arc<Mutex<HashMap<Vec<u8>, Arc<Notify>>>>,
    refused: Arc<std::sync::atomic::AtomicU64>,
}

impl Connections {
    /// Connections refused since start: a TLS handshake that failed (a
    /// wrong or revoked certificate, not TLS at all) or took too long, or a
    /// ZMTP handshake that claimed another identity or took too long.
    pub fn refused(&self) -> u64 {
        self.refused.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn count_refusal(&self) {
        self.refused
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Ends the connection carrying `identity`, if there is one.
    pub fn disconnect(&self, identity: &[u8]) -> bool {
        let found = self.lock().get(identity).cloned();
        if let Some(notify) = &found {
            notify.notify_one();
        }
        found.is_some()
    }

    /// Whether a connection carries `identity` now.
    pub fn contains(&self, identity: &[u8]) -> bool {
        self.lock().contains_key(identity)
    }

    /// How many stations are connected now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no station is connected.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Vec<u8>, Arc<Notify>>> {
        // A panic while holding this lock leaves the map consistent (single
        // inserts and removes), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Accepts stations on `listener` and bridges each admitted one to the ROUTER
/// listening on `router`, until `shutdown` resolves. Every connection task
/// ends with it.
pub async fn serve_gateway(
    listener: TcpListener,
    config: Arc<GatewayConfig>,
    router: PathBuf,
    connections: Connections,
    shutdown: impl Future<Output = ()>,
) {
    let mut tasks = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((tcp, addr)) => {
                    let span = info_span!("connection", peer = %addr);
                    let task = admit(tcp, addr, config.clone(), router.clone(), connections.clone());
                    tasks.spawn(task.instrument(span));
                }
                Err(error) => {
                    // Typically EMFILE: back off a little instead of spinning.
                    warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    tasks.shutdown().await;
}

async fn admit(
    tcp: TcpStream,
    addr: SocketAddr,
    config: Arc<GatewayConfig>,
    router: PathBuf,
    connections: Connections,
) {
    let _ = tcp.set_nodelay(true);
    let deadline = tokio::time::Instant::now() + config.handshake_timeout;
    let accepted = tokio::time::timeout_at(deadline, accept_tls(tcp, addr, &config)).await;
    let (tls, station) = match accepted {
        Ok(Ok(accepted)) => accepted,
        Ok(Err(error)) => {
            connections.count_refusal();
            warn!(%error, "station refused");
            return;
        }
        Err(_) => {
            connections.count_refusal();
            warn!(timeout = ?config.handshake_timeout, "station refused: TLS handshake too slow");
            return;
        }
    };
    let span = info_span!("station", %station);
    async move {
        // The ROUTER greets first and the DEALER sends READY only after that
        // greeting, so the ROUTER's side flows from the start; the station's
        // side is held back until its READY has been checked.
        let unix = match UnixStream::connect(&router).await {
            Ok(unix) => unix,
            Err(error) => {
                warn!(%error, router = %router.display(), "local router unreachable");
                return;
            }
        };
        let (mut tls_read, tls_write) = tokio::io::split(tls);
        let (unix_read, mut unix_write) = unix.into_split();
        let outbound = pump(unix_read, tls_write, None);
        tokio::pin!(outbound);
        let mut buf = Vec::with_capacity(256);
        let checked = tokio::select! {
            r = tokio::time::timeout_at(deadline, check_identity(&mut tls_read, &mut buf, &station)) => r,
            r = &mut outbound => {
                debug!(result = ?r.err(), "router side ended during the handshake");
                return;
            }
        };
        let handshake = match checked {
            Ok(Ok(handshake)) => handshake,
            Ok(Err(error)) => {
                connections.count_refusal();
                warn!(%error, "station refused");
                return;
            }
            Err(_) => {
                connections.count_refusal();
                warn!(timeout = ?config.handshake_timeout, "station refused: zmtp handshake too slow");
                return;
            }
        };
        let identity = handshake.identity;
        let notify = Arc::new(Notify::new());
        connections.lock().insert(identity.clone(), notify.clone());
        info!(identity = %String::from_utf8_lossy(&identity), "station connected");
        let mut guard = FrameGuard::new(config.limits);
        let inbound = async {
            guard.check(&buf[handshake.len..])?;
            unix_write.write_all(&buf).await.map_err(BridgeError::Local)?;
            pump(tls_read, unix_write, Some(guard)).await
        };
        let reason = tokio::select! {
            r = inbound => r.err().map(|e| e.to_string()),
            r = outbound => r.err().map(|e| e.to_string()),
            () = notify.notified() => Some("disconnected by the collector".to_owned()),
        };
        connections.lock().remove(&identity);
        match reason {
            Some(error) => warn!(%error, "station disconnected"),
            None => info!("station disconnected"),
        }
    }
    .instrument(span)
    .await
}

async fn accept_tls(
    tcp: TcpStream,
    addr: SocketAddr,
    config: &GatewayConfig,
) -> Result<(tokio_rustls::server::TlsStream<TcpStream>, StationId), BridgeError> {
    let tls = TlsAcceptor::from(config.tls.clone())
        .accept(tcp)
        .await
        .map_err(|source| BridgeError::Handshake {
            addr: addr.to_string(),
            source,
        })?;
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .ok_or_else(|| BridgeError::Certificate("no client certificate".into()))?;
    let station =
        pki::station_id_from_der(leaf).map_err(|e| BridgeError::Certificate(e.to_string()))?;
    let fingerprint = pki::fingerprint_sha256(leaf);
    if config.revoked.contains(station.as_str()) || config.revoked.contains(&fingerprint) {
        return Err(BridgeError::Revoked { station });
    }
    Ok((tls, station))
}

async fn check_identity<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    station: &StationId,
) -> Result<zmtp::Handshake, BridgeError> {
    let handshake = zmtp::read_handshake(reader, buf).await?;
    if station_of_identity(&handshake.identity).as_ref() != Some(station) {
        return Err(BridgeError::IdentityMismatch {
            claimed: String::from_utf8_lossy(&handshake.identity).into_owned(),
            station: station.clone(),
        });
    }
    Ok(handshake)
}

/// Copies `from` to `to` until end of stream (then shuts `to` down), passing
/// every read through `guard` first when there is one.
///
/// Every write is flushed before the next read: a TLS writer may keep
/// encrypted records that the socket could not take yet, and nothing else
/// would push them out while `from` is quiet. Without the flush a commit or
/// credit could sit there until the next heartbeat (stalls of 5–10 s were
/// seen in the benchmark).
async fn pump<R, W>(
    mut from: R,
    mut to: W,
    mut guard: Option<FrameGuard>,
) -> Result<(), BridgeError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; COPY_BUFFER];
    loop {
        let n = from.read(&mut buf).await.map_err(BridgeError::Local)?;
        if n == 0 {
            let _ = to.shutdown().await;
            return Ok(());
        }
        if let Some(guard) = guard.as_mut() {
            guard.check(&buf[..n])?;
        }
        to.write_all(&buf[..n]).await.map_err(BridgeError::Local)?;
        to.flush().await.map_err(BridgeError::Local)?;
    }
}

/// Opens a TLS connection to a collector at `addr` (`host:port`); the host
/// part must be one of the names in the collector's certificate.
pub async fn dial(
    addr: &str,
    tls: Arc<ClientConfig>,
    timeout: Duration,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, BridgeError> {
    let host = addr
        .rsplit_once(':')
        .map(|(host, _)| host.trim_start_matches('[').trim_end_matches(']'))
        .ok_or_else(|| BridgeError::ServerName { addr: addr.into() })?;
    let name = ServerName::try_from(host.to_owned())
        .map_err(|_| BridgeError::ServerName { addr: addr.into() })?;
    let connect = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|source| BridgeError::Connect {
                addr: addr.into(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .map_err(|source| BridgeError::Handshake {
                addr: addr.into(),
                source,
            })
    };
    tokio::time::timeout(timeout, connect)
        .await
        .map_err(|_| BridgeError::Timeout {
            addr: addr.into(),
            after: timeout,
        })?
}

/// A station-side bridge: a private Unix socket whose one connection is
/// pumped through an established TLS connection.
#[derive(Debug)]
pub struct Tunnel {
    /// Where the DEALER connects (`ipc://...`).
    pub endpoint: String,
    /// Set once the tunnel has ended, with the reason.
    pub closed: watch::Receiver<Option<String>>,
    task: tokio::task::JoinHandle<()>,
    _dir: PrivateDir,
}

impl Tunnel {
    /// Waits (up to `grace`) for the tunnel to end by itself: once the local
    /// socket has closed, it ends the TLS session with a close_notify, so the
    /// collector sees an orderly goodbye rather than a cut connection.
    pub async fn finish(self, grace: Duration) {
        let mut closed = self.closed.clone();
        let _ = tokio::time::timeout(grace, closed.wait_for(Option::is_some)).await;
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts a tunnel over `tls`; its endpoint accepts one local connection
/// within `timeout`.
pub fn open_tunnel<S>(tls: S, runtime_dir: &Path, timeout: Duration) -> Result<Tunnel, BridgeError>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let dir = PrivateDir::create(runtime_dir, "agent")?;
    let path = dir.socket("dealer.sock")?;
    let listener = UnixListener::bind(&path).map_err(|source| BridgeError::Listen {
        path: path.clone(),
        source,
    })?;
    let (closed_tx, closed) = watch::channel(None);
    let task = tokio::spawn(async move {
        let reason = async {
            let (unix, _) = tokio::time::timeout(timeout, listener.accept())
                .await
                .map_err(|_| BridgeError::LocalTimeout(timeout))?
                .map_err(BridgeError::Local)?;
            drop(listener);
            let (tls_read, tls_write) = tokio::io::split(tls);
            let (unix_read, unix_write) = unix.into_split();
            tokio::select! {
                r = pump(tls_read, unix_write, None) => r.map(|()| "collector closed the connection".to_owned()),
                r = pump(unix_read, tls_write, None) => r.map(|()| "local zmq socket closed".to_owned()),
            }
        }
        .await
        .unwrap_or_else(|e| match e {
            BridgeError::Local(io) => describe_io(&io),
            other => other.to_string(),
        });
        debug!(%reason, "tunnel closed");
        let _ = closed_tx.send(Some(reason));
    });
    Ok(Tunnel {
        endpoint: format!("ipc://{}", path.display()),
        closed,
        task,
        _dir: dir,
    })
}

/// Turns an I/O error from a TLS stream into words an operator can act on.
fn describe_io(error: &std::io::Error) -> String {
    match error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::AlertReceived(alert)) => {
            format!("collector refused the connection (TLS alert {alert:?})")
        }
        Some(tls) => format!("TLS error: {tls}"),
        None => format!("connection failed: {error}"),
    }
}
