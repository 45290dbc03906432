//! Protocol sessions over the bridge: the station's [`ClientLink`] (DEALER)
//! and the collector's [`ServerLink`] (ROUTER).
//!
//! Each link runs one task that owns its zeromq socket and talks to the rest
//! of the process through bounded channels, so a slow peer applies
//! back-pressure instead of growing queues. Liveness is Ferry's own
//! `Ping`/`Pong` (the zeromq crate cannot take ZMTP heartbeats): the client
//! pings an idle session and declares it dead after three silent intervals
//! or as soon as its TLS connection closes; the server answers pings.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rustls::{ClientConfig, ServerConfig};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::{debug, warn};
use zeromq::{Socket, SocketRecv, SocketSend, ZmqMessage};

use crate::backoff::{Backoff, random_u64};
use crate::bridge::{self, BridgeError, Connections, GatewayConfig, PrivateDir, Tunnel};
use crate::codec::{self, CodecError, Frame};
use crate::protocol::{
    ErrorCode, ErrorFrame, Hello, MIN_PROTOCOL_VERSION, Message, PROTOCOL_VERSION, Ping, Welcome,
};
use crate::revocation::{RevocationList, Revoked};
use crate::station::StationId;
use crate::zmtp::Limits;

/// Messages buffered between a link task and its users, each way.
const CHANNEL_DEPTH: usize = 64;

/// Why a session could not be opened or has ended.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error(transparent)]
    Bridge(#[from] BridgeError),
    #[error("zmq handshake with {addr} failed: {reason}")]
    Zmq { addr: String, reason: String },
    #[error("collector {addr} refused the session: {error}")]
    Refused { addr: String, error: ErrorFrame },
    #[error("collector {addr} sent {what} instead of Welcome")]
    NoWelcome { addr: String, what: String },
    #[error("no Welcome from {addr} within {after:?}")]
    WelcomeTimeout { addr: String, after: Duration },
    #[error(
        "collector {addr} chose protocol version {version}, which this agent did not offer ({min}..={max})"
    )]
    VersionNotOffered {
        addr: String,
        version: u16,
        min: u16,
        max: u16,
    },
    #[error("collector {addr} refuses this station: {reason}")]
    Revoked { addr: String, reason: String },
    #[error("cannot bind {what}: {reason}")]
    Bind { what: String, reason: String },
    #[error("session closed: {0}")]
    Closed(String),
    #[error(transparent)]
    Codec(#[from] CodecError),
}

impl LinkError {
    /// Whether the collector refused the station as revoked (retrying soon
    /// cannot help; only an operator can lift it).
    pub fn is_revoked(&self) -> bool {
        match self {
            LinkError::Revoked { .. } => true,
            LinkError::Refused { error, .. } => error.code == ErrorCode::Revoked,
            LinkError::Bridge(BridgeError::Handshake { source, .. }) => {
                bridge::is_revoked_alert(source)
            }
            _ => false,
        }
    }
}

/// How a station reaches its collector.
#[derive(Debug, Clone)]
pub struct ClientLinkConfig {
    /// The station this agent is; must match its certificate.
    pub station: StationId,
    /// Collector addresses (`host:port`), tried in order.
    pub endpoints: Vec<String>,
    /// TLS settings with the station certificate.
    pub tls: Arc<ClientConfig>,
    /// Parent of the private directory for the local Unix socket.
    pub runtime_dir: PathBuf,
    /// Time allowed for TCP, TLS, ZMTP and Hello/Welcome together.
    pub connect_timeout: Duration,
    /// Ping interval used until the collector's Welcome sets its own.
    pub heartbeat: Duration,
    /// Agent software version, sent in Hello.
    pub software: String,
}

/// An open session from a station to a collector.
#[derive(Debug)]
pub struct ClientLink {
    /// The collector's Welcome: negotiated version and flow limits.
    pub welcome: Welcome,
    /// The collector address this session reached.
    pub addr: String,
    tx: mpsc::Sender<Outgoing>,
    rx: mpsc::Receiver<Message>,
    ended: watch::Receiver<Option<String>>,
    /// The task owning the socket; taken by [`ClientLink::close`].
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for ClientLink {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// The sending side of a [`ClientLink`], for a task that only sends.
#[derive(Debug, Clone)]
pub struct ClientSender {
    tx: mpsc::Sender<Outgoing>,
    ended: watch::Receiver<Option<String>>,
}

/// What a client link's task sends: a message to encode, or a chunk frame
/// the sender built in place.
#[derive(Debug)]
enum Outgoing {
    Message(Message),
    Frame(Vec<u8>),
}

impl ClientSender {
    /// Queues `message`; waits while the link's queue is full.
    pub async fn send(&self, message: Message) -> Result<(), LinkError> {
        self.tx
            .send(Outgoing::Message(message))
            .await
            .map_err(|_| LinkError::Closed(end_reason(&self.ended)))
    }
}

fn end_reason(ended: &watch::Receiver<Option<String>>) -> String {
    ended
        .borrow()
        .clone()
        .unwrap_or_else(|| "link task ended".to_owned())
}

impl ClientLink {
    /// Opens a session to `addr`: TLS, tunnel, DEALER, Hello → Welcome.
    pub async fn connect(config: &ClientLinkConfig, addr: &str) -> Result<Self, LinkError> {
        let deadline = Instant::now() + config.connect_timeout;
        let tls = bridge::dial(addr, config.tls.clone(), config.connect_timeout).await?;
        let tunnel = bridge::open_tunnel(tls, &config.runtime_dir, config.connect_timeout)?;
        let session = random_u64();
        let mut options = zeromq::SocketOptions::default();
        let identity = bridge::zmq_identity(&config.station, session);
        options
            .peer_identity(zeromq::util::PeerIdentity::try_from(identity).map_err(|e| {
                LinkError::Zmq {
                    addr: addr.into(),
                    reason: e.to_string(),
                }
            })?)
            .connect_timeout(remaining(deadline));
        let mut dealer = zeromq::DealerSocket::with_options(options);
        let zmq_failed = |reason: String, tunnel: &Tunnel| {
            // The tunnel knows better why (e.g. a TLS alert from the collector).
            let reason = tunnel.closed.borrow().clone().unwrap_or(reason);
            if tunnel.revoked() {
                LinkError::Revoked {
                    addr: addr.into(),
                    reason,
                }
            } else {
                LinkError::Zmq {
                    addr: addr.into(),
                    reason,
                }
            }
        };
        if let Err(e) = dealer.connect(&tunnel.endpoint).await {
            // Give the tunnel a moment to record why the collector hung up.
            let mut closed = tunnel.closed.clone();
            let _ = tokio::time::timeout(Duration::from_millis(200), closed.changed()).await;
            return Err(zmq_failed(e.to_string(), &tunnel));
        }
        let hello = Message::Hello(Hello {
            station: config.station.clone(),
            min_version: MIN_PROTOCOL_VERSION,
            max_version: PROTOCOL_VERSION,
            software: config.software.clone(),
            session,
        });
        dealer
            .send(ZmqMessage::from(codec::encode(&hello)?))
            .await
            .map_err(|e| zmq_failed(e.to_string(), &tunnel))?;
        let mut closed = tunnel.closed.clone();
        let reply = tokio::select! {
            r = dealer.recv() => r.map_err(|e| zmq_failed(e.to_string(), &tunnel))?,
            _ = closed.changed() => return Err(zmq_failed("tunnel closed".into(), &tunnel)),
            () = tokio::time::sleep_until(deadline) => {
                return Err(LinkError::WelcomeTimeout { addr: addr.into(), after: config.connect_timeout });
            }
        };
        let welcome = match decode_single(reply)?.message {
            Message::Welcome(welcome) => welcome,
            Message::Error(error) if error.code == ErrorCode::Revoked => {
                return Err(LinkError::Revoked {
                    addr: addr.into(),
                    reason: error.to_string(),
                });
            }
            Message::Error(error) => {
                return Err(LinkError::Refused {
                    addr: addr.into(),
                    error,
                });
            }
            other => {
                return Err(LinkError::NoWelcome {
                    addr: addr.into(),
                    what: format!("{other:?}"),
                });
            }
        };
        // The collector picks from the range this agent offered; anything
        // else would mean speaking a protocol this build does not know.
        if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&welcome.version) {
            return Err(LinkError::VersionNotOffered {
                addr: addr.into(),
                version: welcome.version,
                min: MIN_PROTOCOL_VERSION,
                max: PROTOCOL_VERSION,
            });
        }
        let heartbeat = match welcome.heartbeat_ms {
            0 => config.heartbeat,
            ms => Duration::from_millis(u64::from(ms)),
        };
        let (out_tx, out_rx) = mpsc::channel(CHANNEL_DEPTH);
        let (in_tx, in_rx) = mpsc::channel(CHANNEL_DEPTH);
        let (ended_tx, ended) = watch::channel(None);
        let task = tokio::spawn(async move {
            let reason = client_task(dealer, tunnel, out_rx, in_tx, heartbeat).await;
            debug!(%reason, "session ended");
            let _ = ended_tx.send(Some(reason));
        });
        Ok(Self {
            welcome,
            addr: addr.into(),
            tx: out_tx,
            rx: in_rx,
            ended,
            task: Some(task),
        })
    }

    /// Tries each endpoint in turn, backing off with jitter between rounds,
    /// until a session opens or `shutdown` turns true (then `None`).
    pub async fn connect_with_backoff(
        config: &ClientLinkConfig,
        backoff: &mut Backoff,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Option<Self> {
        loop {
            for addr in &config.endpoints {
                if *shutdown.borrow() {
                    return None;
                }
                match Self::connect(config, addr).await {
                    Ok(link) => {
                        backoff.reset();
                        return Some(link);
                    }
                    Err(error) => warn!(%addr, %error, "collector unreachable"),
                }
            }
            let delay = backoff.next_delay();
            debug!(?delay, "waiting before reconnecting");
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                _ = shutdown.wait_for(|stop| *stop) => return None,
            }
        }
    }

    /// Ends the session in an orderly way (TLS close_notify), waiting at
    /// most a couple of seconds; messages still queued are dropped.
    pub async fn close(mut self) {
        let task = self.task.take();
        // Dropping the link drops its sending half: the task sees the end of
        // its queue, closes the DEALER and then the tunnel.
        drop(self);
        if let Some(mut task) = task {
            // A `ClientSender` still alive keeps the queue open: then stop
            // waiting and end the task the hard way.
            if tokio::time::timeout(Duration::from_secs(2), &mut task)
                .await
                .is_err()
            {
                task.abort();
            }
        }
    }

    /// Queues `message` for the collector.
    pub async fn send(&self, message: Message) -> Result<(), LinkError> {
        self.send_outgoing(Outgoing::Message(message)).await
    }

    /// Queues a chunk frame built in place ([`codec::ChunkFrame`]).
    pub async fn send_chunk(&self, frame: codec::ChunkFrame) -> Result<(), LinkError> {
        self.send_outgoing(Outgoing::Frame(frame.into_bytes()?))
            .await
    }

    async fn send_outgoing(&self, outgoing: Outgoing) -> Result<(), LinkError> {
        self.tx
            .send(outgoing)
            .await
            .map_err(|_| LinkError::Closed(end_reason(&self.ended)))
    }

    /// Why the session ended (the collector closed it or went silent, the
    /// connection broke), once it has; `None` while it is open. Lets an
    /// idle holder notice without sending.
    pub fn ended(&self) -> Option<String> {
        self.ended.borrow().clone()
    }

    /// A handle for sending from another task.
    pub fn sender(&self) -> ClientSender {
        ClientSender {
            tx: self.tx.clone(),
            ended: self.ended.clone(),
        }
    }

    /// The next message from the collector (never a Pong), or why the session
    /// is over.
    pub async fn recv(&mut self) -> Result<Message, LinkError> {
        match self.rx.recv().await {
            Some(message) => Ok(message),
            None => {
                let mut ended = self.ended.clone();
                let _ = ended.wait_for(Option::is_some).await;
                Err(LinkError::Closed(end_reason(&ended)))
            }
        }
    }
}

fn remaining(deadline: Instant) -> Duration {
    deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1))
}

fn decode_single(message: ZmqMessage) -> Result<Frame, CodecError> {
    let frames = message.into_vec();
    match frames.as_slice() {
        [one] => codec::decode(one),
        _ => Err(CodecError::Truncated { len: 0 }),
    }
}

async fn client_task(
    dealer: zeromq::DealerSocket,
    tunnel: Tunnel,
    mut outgoing: mpsc::Receiver<Outgoing>,
    incoming: mpsc::Sender<Message>,
    heartbeat: Duration,
) -> String {
    let reason = client_loop(dealer, &tunnel, &mut outgoing, incoming, heartbeat).await;
    // The DEALER is gone, so the tunnel's local side has closed: give it a
    // moment to say goodbye over TLS.
    tunnel.finish(Duration::from_secs(1)).await;
    reason
}

async fn client_loop(
    dealer: zeromq::DealerSocket,
    tunnel: &Tunnel,
    outgoing: &mut mpsc::Receiver<Outgoing>,
    incoming: mpsc::Sender<Message>,
    heartbeat: Duration,
) -> String {
    let (mut send_half, mut recv_half) = dealer.split();
    let mut closed = tunnel.closed.clone();
    let mut last_heard = Instant::now();
    let mut ticker = tokio::time::interval(heartbeat);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            out = outgoing.recv() => {
                let bytes = match out {
                    None => return "closed by the agent".into(),
                    Some(Outgoing::Frame(bytes)) => bytes,
                    Some(Outgoing::Message(message)) => match codec::encode(&message) {
                        Ok(bytes) => bytes,
                        Err(e) => return format!("cannot encode {message:?}: {e}"),
                    },
                };
                if let Err(e) = send_half.send(ZmqMessage::from(bytes)).await {
                    return format!("send failed: {e}");
                }
            }
            received = recv_half.recv() => {
                let message = match received {
                    Ok(message) => message,
                    Err(e) => return format!("receive failed: {e}"),
                };
                last_heard = Instant::now();
                let frame = match decode_single(message) {
                    Ok(frame) => frame,
                    Err(e) => return format!("collector sent a bad frame: {e}"),
                };
                match frame.message {
                    Message::Pong(_) => {}
                    Message::Error(error) if error.code == ErrorCode::Revoked => {
                        // The connection ends next; this says why, whatever
                        // the agent was waiting for (its next connection
                        // attempt learns it again, from the handshake).
                        return format!("the collector refuses this station: {error}");
                    }
                    Message::Ping(ping) => {
                        let pong = codec::encode(&Message::Pong(ping)).unwrap_or_default();
                        if let Err(e) = send_half.send(ZmqMessage::from(pong)).await {
                            return format!("send failed: {e}");
                        }
                    }
                    message => {
                        if incoming.send(message).await.is_err() {
                            return "closed by the agent".into();
                        }
                    }
                }
            }
            _ = ticker.tick() => {
                let silent = last_heard.elapsed();
                if silent >= heartbeat * 3 {
                    return format!("collector silent for {silent:?}");
                }
                if silent >= heartbeat {
                    let ping = Message::Ping(Ping { nonce: random_u64() });
                    let bytes = codec::encode(&ping).unwrap_or_default();
                    if let Err(e) = send_half.send(ZmqMessage::from(bytes)).await {
                        return format!("send failed: {e}");
                    }
                }
            }
            _ = closed.changed() => {
                return closed.borrow().clone().unwrap_or_else(|| "tunnel closed".into());
            }
        }
    }
}

/// How the collector listens for stations.
#[derive(Debug, Clone)]
pub struct ServerLinkConfig {
    /// TCP address to listen on.
    pub listen: SocketAddr,
    /// TLS settings requiring station certificates.
    pub tls: Arc<ServerConfig>,
    /// Parent of the private directory for the ROUTER's Unix socket.
    pub runtime_dir: PathBuf,
    /// Frame limits enforced at the bridge.
    pub limits: Limits,
    /// Time a new connection gets for its TLS and ZMTP handshakes, and
    /// then for its `Hello` to be accepted ([`ServerLink::admitted`]).
    pub handshake_timeout: Duration,
    /// Refused stations and certificates; the same list as the TLS
    /// settings' verifier, when they have one.
    pub revoked: RevocationList,
}

impl ServerLinkConfig {
    /// Frame limits that fit the codec's maximum frame.
    pub fn default_limits() -> Limits {
        Limits {
            max_frame: codec::MAX_FRAME as u64,
            max_message: codec::MAX_FRAME as u64,
            max_parts: 4,
        }
    }
}

/// A station as the collector knows it: the certificate's station and the
/// connection's ZMQ identity (which the bridge checked belongs to it).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Peer {
    pub station: StationId,
    pub identity: Bytes,
}

/// One frame from a station, or why it did not decode.
#[derive(Debug)]
pub struct Incoming {
    pub peer: Peer,
    pub frame: Result<Frame, CodecError>,
}

/// The collector's listening side.
#[derive(Debug)]
pub struct ServerLink {
    local_addr: SocketAddr,
    rx: mpsc::Receiver<Incoming>,
    sender: ServerSender,
    connections: Connections,
    revoked: RevocationList,
    stop: Option<oneshot::Sender<()>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    _dir: PrivateDir,
}

/// Sends messages to stations; cheap to clone.
#[derive(Debug, Clone)]
pub struct ServerSender {
    tx: mpsc::Sender<(Bytes, Message)>,
}

impl ServerSender {
    /// Queues `message` for `peer`. A peer that has gone is not an error here;
    /// its messages are dropped.
    pub async fn send(&self, peer: &Peer, message: Message) -> Result<(), LinkError> {
        self.tx
            .send((peer.identity.clone(), message))
            .await
            .map_err(|_| LinkError::Closed("collector link stopped".into()))
    }
}

impl ServerLink {
    /// Binds the ROUTER and the TLS listener and starts serving.
    pub async fn bind(config: ServerLinkConfig) -> Result<Self, LinkError> {
        let dir = PrivateDir::create(&config.runtime_dir, "collector")?;
        let router_path = dir.socket("router.sock")?;
        let mut router = zeromq::RouterSocket::new();
        router
            .bind(&format!("ipc://{}", router_path.display()))
            .await
            .map_err(|e| LinkError::Bind {
                what: router_path.display().to_string(),
                reason: e.to_string(),
            })?;
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|e| LinkError::Bind {
                what: config.listen.to_string(),
                reason: e.to_string(),
            })?;
        let local_addr = listener.local_addr().map_err(|e| LinkError::Bind {
            what: config.listen.to_string(),
            reason: e.to_string(),
        })?;
        let revoked = config.revoked.clone();
        let gateway = Arc::new(GatewayConfig {
            tls: config.tls,
            limits: config.limits,
            handshake_timeout: config.handshake_timeout,
            revoked: config.revoked,
        });
        let connections = Connections::default();
        let (stop, stopped) = oneshot::channel::<()>();
        let gateway_task = tokio::spawn(bridge::serve_gateway(
            listener,
            gateway,
            router_path,
            connections.clone(),
            async move {
                let _ = stopped.await;
            },
        ));
        let (in_tx, rx) = mpsc::channel(CHANNEL_DEPTH);
        let (tx, out_rx) = mpsc::channel(CHANNEL_DEPTH);
        let router_task = tokio::spawn(server_task(router, in_tx, out_rx));
        Ok(Self {
            local_addr,
            rx,
            sender: ServerSender { tx },
            connections,
            revoked,
            stop: Some(stop),
            tasks: vec![gateway_task, router_task],
            _dir: dir,
        })
    }

    /// The TCP address stations connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The next frame from any station; `None` once the link has stopped.
    pub async fn recv(&mut self) -> Option<Incoming> {
        self.rx.recv().await
    }

    /// A handle for sending to stations.
    pub fn sender(&self) -> ServerSender {
        self.sender.clone()
    }

    /// Ends the bridge connection of `peer` (after a protocol violation).
    pub fn disconnect(&self, peer: &Peer) -> bool {
        self.connections.disconnect(&peer.identity)
    }

    /// Ends the bridge connection of `peer` after `delay` (so that a last
    /// error frame can leave first), without waiting for it.
    pub fn disconnect_later(&self, peer: &Peer, delay: Duration) {
        let connections = self.connections.clone();
        let identity = peer.identity.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            connections.disconnect(&identity);
        });
    }

    /// Marks `peer` as past its `Hello`, so the gateway's deadline for the
    /// `Hello` no longer ends its connection.
    pub fn admitted(&self, peer: &Peer) {
        self.connections.admitted(&peer.identity);
    }

    /// A handle that puts new revocations in force (a reload), usable
    /// after the link is handed to the task serving it.
    pub fn revoker(&self) -> Revoker {
        Revoker {
            revoked: self.revoked.clone(),
            connections: self.connections.clone(),
            sender: self.sender.clone(),
        }
    }

    /// Ends the bridge connection carrying `identity`.
    pub fn disconnect_identity(&self, identity: &[u8]) -> bool {
        self.connections.disconnect(identity)
    }

    /// Whether the connection carrying `identity` is still open.
    pub fn is_connected(&self, identity: &[u8]) -> bool {
        self.connections.contains(identity)
    }

    /// The gateway's connections (a handle that stays valid after the link
    /// is handed to the task serving it): who is connected, how many were
    /// refused.
    pub fn connections(&self) -> Connections {
        self.connections.clone()
    }

    /// Stations connected now.
    pub fn connected(&self) -> usize {
        self.connections.len()
    }

    /// Stops listening and closes every connection.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(gateway) = self.tasks.first_mut() {
            let _ = gateway.await;
        }
    }
}

impl Drop for ServerLink {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Time a revoked station's `Error` frame gets to leave before its
/// connection is ended.
const REVOKED_GRACE: Duration = Duration::from_millis(500);

/// Puts revocations in force on a running [`ServerLink`].
#[derive(Debug, Clone)]
pub struct Revoker {
    revoked: RevocationList,
    connections: Connections,
    sender: ServerSender,
}

impl Revoker {
    /// Refuses `revoked` from now on: new handshakes of a revoked station
    /// or certificate fail with `certificate_revoked`, and each such
    /// station connected now is sent an `Error` (`Revoked`) and
    /// disconnected half a second later. Returns the stations disconnected.
    pub async fn apply(&self, revoked: Revoked) -> Vec<StationId> {
        let connected = self.connections.revoked_by(&revoked);
        self.revoked.set(revoked);
        let mut stations = Vec::new();
        for (identity, station) in connected {
            let peer = Peer {
                station: station.clone(),
                identity: Bytes::from(identity.clone()),
            };
            let error =
                ErrorFrame::new(ErrorCode::Revoked, format!("station {station} is revoked"));
            let _ = self.sender.send(&peer, Message::Error(error)).await;
            let connections = self.connections.clone();
            tokio::spawn(async move {
                tokio::time::sleep(REVOKED_GRACE).await;
                connections.disconnect_revoked(&identity);
            });
            stations.push(station);
        }
        stations
    }
}

/// Frames from stations this large are decoded in place: a chunk's bytes
/// stay in the buffer zeromq received the frame into, which it sizes for a
/// frame over twice its 64 KiB read size alone, instead of being copied
/// (a copy of every byte of a large file). A smaller frame shares that
/// buffer with the frames around it, and holding its bytes until they are
/// written keeps zeromq from reusing the buffer: with D2's 100 KiB chunks the
/// collector's peak RSS went from 31 to 42 MiB and its CPU up (BENCHMARKS.md).
const SHARED_FRAME_MIN: usize = 256 << 10;

async fn server_task(
    router: zeromq::RouterSocket,
    incoming: mpsc::Sender<Incoming>,
    mut outgoing: mpsc::Receiver<(Bytes, Message)>,
) {
    let (mut send_half, mut recv_half) = router.split();
    loop {
        tokio::select! {
            out = outgoing.recv() => {
                let Some((identity, message)) = out else { return };
                route(&mut send_half, identity, &message).await;
            }
            received = recv_half.recv() => {
                let Ok(message) = received else { return };
                let mut frames = message.into_vec().into_iter();
                let Some(identity) = frames.next() else { continue };
                // The bridge admitted this identity only for its certificate's
                // station, so the station read from it can be trusted.
                let Some(station) = bridge::station_of_identity(&identity) else {
                    warn!(identity = %String::from_utf8_lossy(&identity), "frame from an unknown identity dropped");
                    continue;
                };
                let peer = Peer { station, identity };
                let frame = match (frames.next(), frames.next()) {
                    (Some(body), None) if body.len() >= SHARED_FRAME_MIN => {
                        codec::decode_shared(&body)
                    }
                    (Some(body), None) => codec::decode(&body),
                    _ => Err(CodecError::Truncated { len: 0 }),
                };
                if let Ok(Frame { message: Message::Ping(ping), .. }) = &frame {
                    route(&mut send_half, peer.identity, &Message::Pong(*ping)).await;
                    continue;
                }
                if incoming.send(Incoming { peer, frame }).await.is_err() {
                    return;
                }
            }
        }
    }
}

async fn route(router: &mut zeromq::RouterSendHalf, identity: Bytes, message: &Message) {
    let bytes = match codec::encode(message) {
        Ok(bytes) => bytes,
        Err(error) => {
            warn!(%error, "cannot encode a message for a station");
            return;
        }
    };
    let mut zmq = ZmqMessage::from(bytes);
    zmq.push_front(identity);
    if let Err(error) = router.send(zmq).await {
        debug!(%error, "message for a departed station dropped");
    }
}

/// Checks a station's Hello against what the bridge proved about it and
/// picks the session's protocol version. A Hello naming any station but the
/// certificate's is refused: what a peer claims about itself is never trusted.
pub fn admit_hello(peer: &Peer, hello: &Hello) -> Result<u16, ErrorFrame> {
    if hello.station != peer.station {
        return Err(ErrorFrame::new(
            ErrorCode::IdentityMismatch,
            format!(
                "hello names station {} but the certificate is for {}",
                hello.station, peer.station
            ),
        ));
    }
    crate::protocol::negotiate(hello)
}

/// An error frame answering a frame that did not decode.
pub fn malformed(error: &CodecError) -> ErrorFrame {
    let code = match error {
        CodecError::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
        CodecError::TooLarge { .. } => ErrorCode::TooLarge,
        _ => ErrorCode::Malformed,
    };
    ErrorFrame::new(code, error.to_string())
}
