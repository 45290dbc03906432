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

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ServerConfig};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::pki;
use crate::revocation::{Fingerprint, RevocationList};
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
    #[error("zmtp frame refused after the handshake: {0}")]
    Frame(zmtp::ZmtpError),
    #[error("peer does not speak TLS (plain ZMTP?): its first byte is 0xff, a ZMTP greeting's")]
    PlainZmtp,
    #[error("peer does not speak TLS: its first byte is {0:#04x}, not a TLS handshake record's")]
    NotTls(u8),
    #[error("zmq identity {claimed:?} does not belong to certificate station {station}")]
    IdentityMismatch { claimed: String, station: StationId },
    #[error("the local zmq socket did not connect within {0:?}")]
    LocalTimeout(Duration),
    #[error("local zmq socket: {0}")]
    Local(std::io::Error),
}

impl BridgeError {
    /// A short name for the kind of refusal, for rate-limiting its
    /// warnings.
    fn kind(&self) -> &'static str {
        match self {
            BridgeError::PlainZmtp | BridgeError::NotTls(_) => "not tls",
            BridgeError::Handshake { .. } => "tls",
            BridgeError::Certificate(_) | BridgeError::Revoked { .. } => "certificate",
            BridgeError::Zmtp(_) | BridgeError::IdentityMismatch { .. } => "zmtp",
            _ => "other",
        }
    }
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
    /// Time a new connection gets to finish TLS and ZMTP handshakes, and
    /// then again to have its `Hello` accepted ([`Connections::admitted`]).
    pub handshake_timeout: Duration,
    /// Stations and certificates refused although their certificates
    /// verify (checked again after the handshake, for TLS settings that do
    /// not check it themselves).
    pub revoked: RevocationList,
}

/// What the gateway knows of one live connection.
#[derive(Debug)]
struct Live {
    station: StationId,
    fingerprint: Fingerprint,
    /// Ends the connection when notified.
    end: Notify,
    /// Set once the station's `Hello` was accepted.
    admitted: AtomicBool,
    /// Set when the connection is ended because the station was revoked.
    revoked: AtomicBool,
}

/// How often a refused peer address gets a warning in the log: once, then
/// at most once per this interval; the next warning says how many were
/// left out meanwhile.
pub const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// Addresses remembered by [`RefusalLog`] before expired ones are forgotten.
const REFUSAL_LOG_ADDRESSES: usize = 4096;

/// A peer address and a kind of refusal.
type RefusalKey = (IpAddr, &'static str);

/// Rate limit of the warnings about refused peers, per peer address (the IP
/// address: a peer retrying comes from a new port each time) and kind of
/// refusal (so that, say, a port probe does not hide a revoked station
/// behind the same address).
#[derive(Debug, Default)]
pub struct RefusalLog {
    /// Per address and kind: when its last warning was logged, and how
    /// many refusals were left out since.
    seen: Mutex<HashMap<RefusalKey, (Instant, u64)>>,
}

impl RefusalLog {
    /// Whether a refusal of kind `kind` of `peer` at `now` is logged; if
    /// so, with how many refusals of that kind and address were left out
    /// since its last warning.
    pub fn admit(&self, peer: IpAddr, kind: &'static str, now: Instant) -> Option<u64> {
        let peer = (peer, kind);
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() >= REFUSAL_LOG_ADDRESSES && !seen.contains_key(&peer) {
            seen.retain(|_, (last, _)| now.saturating_duration_since(*last) < REFUSAL_LOG_INTERVAL);
        }
        match seen.get_mut(&peer) {
            Some((last, suppressed))
                if now.saturating_duration_since(*last) < REFUSAL_LOG_INTERVAL =>
            {
                *suppressed += 1;
                None
            }
            Some((last, suppressed)) => {
                *last = now;
                Some(std::mem::take(suppressed))
            }
            None => {
                seen.insert(peer, (now, 0));
                Some(0)
            }
        }
    }
}

/// The live bridge connections of a gateway, by ZMQ identity, and a count
/// of the connections it refused.
#[derive(Debug, Clone, Default)]
pub struct Connections {
    inner: Arc<Mutex<HashMap<Vec<u8>, Arc<Live>>>>,
    refused: Arc<AtomicU64>,
    refusal_log: Arc<RefusalLog>,
}

impl Connections {
    /// Connections refused since start: a TLS handshake that failed (a
    /// wrong or revoked certificate, not TLS at all) or took too long, or a
    /// ZMTP handshake that claimed another identity or took too long.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Counts a refused peer and logs why, rate-limited per address and
    /// kind of refusal.
    fn refuse(&self, peer: SocketAddr, kind: &'static str, error: &dyn std::fmt::Display) {
        self.refused.fetch_add(1, Ordering::Relaxed);
        match self.refusal_log.admit(peer.ip(), kind, Instant::now()) {
            Some(0) => warn!(%error, "station refused"),
            Some(suppressed) => warn!(
                %error,
                suppressed,
                "station refused (and {suppressed} more refusals of this address since its last warning)"
            ),
            None => debug!(%error, "station refused"),
        }
    }

    /// Ends the connection carrying `identity`, if there is one.
    pub fn disconnect(&self, identity: &[u8]) -> bool {
        let found = self.lock().get(identity).cloned();
        if let Some(live) = &found {
            live.end.notify_one();
        }
        found.is_some()
    }

    /// Marks the connection carrying `identity` as past its `Hello`: the
    /// gateway's deadline for it no longer applies.
    pub fn admitted(&self, identity: &[u8]) {
        if let Some(live) = self.lock().get(identity) {
            live.admitted.store(true, Ordering::Relaxed);
        }
    }

    /// The connections (identity and station) whose station or certificate
    /// `revoked` refuses.
    pub fn revoked_by(&self, revoked: &crate::revocation::Revoked) -> Vec<(Vec<u8>, StationId)> {
        self.lock()
            .iter()
            .filter(|(_, live)| revoked.refuses(&live.station, &live.fingerprint))
            .map(|(identity, live)| (identity.clone(), live.station.clone()))
            .collect()
    }

    /// Ends the connection carrying `identity` because its station is
    /// revoked (so the log says so).
    pub fn disconnect_revoked(&self, identity: &[u8]) -> bool {
        let found = self.lock().get(identity).cloned();
        if let Some(live) = &found {
            live.revoked.store(true, Ordering::Relaxed);
            live.end.notify_one();
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

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Vec<u8>, Arc<Live>>> {
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
    let (tls, station, fingerprint) = match accepted {
        Ok(Ok(accepted)) => accepted,
        Ok(Err(error)) => return connections.refuse(addr, error.kind(), &error),
        Err(_) => {
            let error = format!(
                "TLS handshake too slow (over {:?})",
                config.handshake_timeout
            );
            return connections.refuse(addr, "slow", &error);
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
            Ok(Err(error)) => return connections.refuse(addr, error.kind(), &error),
            Err(_) => {
                let error = format!(
                    "zmtp handshake too slow (over {:?})",
                    config.handshake_timeout
                );
                return connections.refuse(addr, "slow", &error);
            }
        };
        let identity = handshake.identity;
        let live = Arc::new(Live {
            station: station.clone(),
            fingerprint,
            end: Notify::new(),
            admitted: AtomicBool::new(false),
            revoked: AtomicBool::new(false),
        });
        connections.lock().insert(identity.clone(), live.clone());
        info!(identity = %String::from_utf8_lossy(&identity), "station connected");
        let mut guard = FrameGuard::new(config.limits);
        let inbound = async {
            guard.check(&buf[handshake.len..]).map_err(BridgeError::Frame)?;
            unix_write.write_all(&buf).await.map_err(BridgeError::Local)?;
            pump(tls_read, unix_write, Some(guard)).await
        };
        // The session's Hello must be accepted within a handshake timeout of
        // its own; a connection that never gets that far is not kept.
        let hello_deadline = tokio::time::sleep(config.handshake_timeout);
        tokio::pin!(hello_deadline);
        let mut waiting_hello = true;
        tokio::pin!(inbound);
        let reason = loop {
            tokio::select! {
                r = &mut inbound => break r.err().map(|e| e.to_string()),
                r = &mut outbound => break r.err().map(|e| e.to_string()),
                () = live.end.notified() => {
                    break Some(if live.revoked.load(Ordering::Relaxed) {
                        "station revoked: disconnected by the collector".to_owned()
                    } else {
                        "disconnected by the collector".to_owned()
                    });
                }
                () = &mut hello_deadline, if waiting_hello => {
                    if live.admitted.load(Ordering::Relaxed) {
                        waiting_hello = false;
                        continue;
                    }
                    connections.lock().remove(&identity);
                    let error = format!("no Hello accepted within {:?}", config.handshake_timeout);
                    return connections.refuse(addr, "no hello", &error);
                }
            }
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

/// The first byte of every TLS connection: a handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;
/// The first byte of a ZMTP greeting's signature.
const ZMTP_SIGNATURE_START: u8 = 0xff;

async fn accept_tls(
    tcp: TcpStream,
    addr: SocketAddr,
    config: &GatewayConfig,
) -> Result<
    (
        tokio_rustls::server::TlsStream<TcpStream>,
        StationId,
        Fingerprint,
    ),
    BridgeError,
> {
    // A peer that is not speaking TLS at all (a plain ZMQ client on this
    // port, typically) is told apart by its first byte, so the log can say
    // so instead of rustls's "InvalidContentType".
    let mut first = [0u8; 1];
    let peeked = tcp
        .peek(&mut first)
        .await
        .map_err(|source| BridgeError::Handshake {
            addr: addr.to_string(),
            source,
        })?;
    match first[0] {
        _ if peeked == 0 => {}
        TLS_HANDSHAKE_RECORD => {}
        ZMTP_SIGNATURE_START => return Err(BridgeError::PlainZmtp),
        other => return Err(BridgeError::NotTls(other)),
    }
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
    let fingerprint = Fingerprint::of(leaf);
    if config.revoked.get().refuses(&station, &fingerprint) {
        return Err(BridgeError::Revoked { station });
    }
    Ok((tls, station, fingerprint))
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
            guard.check(&buf[..n]).map_err(BridgeError::Frame)?;
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
    /// Set (before `closed`) when the collector ended the connection with a
    /// `certificate_revoked` alert.
    revoked: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
    _dir: PrivateDir,
}

impl Tunnel {
    /// Whether the collector refused this station's certificate as revoked.
    pub fn revoked(&self) -> bool {
        self.revoked.load(Ordering::Relaxed)
    }

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
    let revoked = Arc::new(AtomicBool::new(false));
    let revoked_flag = revoked.clone();
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
            BridgeError::Local(io) => {
                if is_revoked_alert(&io) {
                    revoked_flag.store(true, Ordering::Relaxed);
                }
                describe_io(&io)
            }
            other => other.to_string(),
        });
        debug!(%reason, "tunnel closed");
        let _ = closed_tx.send(Some(reason));
    });
    Ok(Tunnel {
        endpoint: format!("ipc://{}", path.display()),
        closed,
        revoked,
        task,
        _dir: dir,
    })
}

/// Whether an I/O error from a TLS stream is the collector's
/// `certificate_revoked` alert.
pub fn is_revoked_alert(error: &std::io::Error) -> bool {
    matches!(
        error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>()),
        Some(rustls::Error::AlertReceived(
            rustls::AlertDescription::CertificateRevoked
        ))
    )
}

/// Turns an I/O error from a TLS stream into words an operator can act on.
pub fn describe_io(error: &std::io::Error) -> String {
    if is_revoked_alert(error) {
        return "station revoked (TLS alert certificate_revoked)".to_owned();
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 19, item 6: a peer refused seven times a second got seven
    /// warnings a second.
    #[test]
    fn refusals_are_logged_once_per_interval_per_address_with_what_was_left_out() {
        let log = RefusalLog::default();
        let start = Instant::now();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        assert_eq!(log.admit(a, "tls", start), Some(0));
        for i in 1..=7 {
            assert_eq!(
                log.admit(a, "tls", start + Duration::from_millis(i * 100)),
                None
            );
        }
        // Another address, or another kind of refusal, is not held back.
        assert_eq!(
            log.admit(b, "tls", start + Duration::from_millis(800)),
            Some(0)
        );
        assert_eq!(
            log.admit(a, "not tls", start + Duration::from_millis(800)),
            Some(0)
        );
        let later = start + REFUSAL_LOG_INTERVAL;
        assert_eq!(log.admit(a, "tls", later), Some(7));
        assert_eq!(log.admit(a, "tls", later + Duration::from_secs(1)), None);
        assert_eq!(log.admit(a, "tls", later + REFUSAL_LOG_INTERVAL), Some(1));
    }

    #[test]
    fn the_refusal_log_forgets_quiet_addresses_when_it_is_full() {
        let log = RefusalLog::default();
        let start = Instant::now();
        for i in 0..REFUSAL_LOG_ADDRESSES as u32 {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(i));
            assert_eq!(log.admit(ip, "tls", start), Some(0));
        }
        let later = start + REFUSAL_LOG_INTERVAL;
        let newcomer: IpAddr = "198.51.100.1".parse().unwrap();
        assert_eq!(log.admit(newcomer, "tls", later), Some(0));
        let seen = log.seen.lock().unwrap().len();
        assert_eq!(seen, 1, "expired addresses were kept");
    }
}
