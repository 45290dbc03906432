//! The dispatcher: reads the ROUTER, starts a session for each station that
//! says Hello, hands every later frame to its station's session, and
//! refuses (error frame, then disconnect) what it cannot take.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use ferry_common::codec::{self, CodecError, Frame};
use ferry_common::link::{Incoming, Peer, ServerLink, ServerSender, admit_hello, malformed};
use ferry_common::protocol::*;
use ferry_common::station::StationId;
use tokio::sync::{Mutex, mpsc, watch};
use tracing::{Instrument, info, info_span, warn};

use super::{Session, Shared, weight};

/// Reads frames from `link` and runs a session per station until `shutdown`.
pub async fn serve(link: ServerLink, shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let mut dispatcher = Dispatcher {
        sender: link.sender(),
        link,
        // What a station may have queued here: its window of chunk data plus
        // a couple of frames of anything else. Bytes, not messages, are what
        // the window bounds (a window of small files is many messages).
        queue_limit: shared.window + 2 * codec::MAX_FRAME as u64,
        shared,
        sessions: HashMap::new(),
        station_locks: HashMap::new(),
    };
    let mut sweep = tokio::time::interval(Duration::from_secs(2));
    loop {
        let Incoming { peer, frame } = tokio::select! {
            incoming = dispatcher.link.recv() => match incoming {
                Some(incoming) => incoming,
                None => break,
            },
            _ = sweep.tick() => {
                // Sessions whose connection is gone end here.
                let link = &dispatcher.link;
                dispatcher.sessions.retain(|identity, _| link.is_connected(identity));
                continue;
            }
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        dispatcher.take(peer, frame).await;
    }
}

/// The dispatcher's state: the connections and the sessions behind them.
struct Dispatcher {
    link: ServerLink,
    sender: ServerSender,
    shared: Arc<Shared>,
    /// The running sessions, by connection.
    sessions: HashMap<Bytes, SessionHandle>,
    /// One lock per station: a station's next session waits for its
    /// previous one to finish with its staging files.
    station_locks: HashMap<StationId, Arc<Mutex<()>>>,
    /// Weight a session may have queued before its station is disconnected.
    queue_limit: u64,
}

/// The dispatcher's side of a running session.
struct SessionHandle {
    tx: mpsc::UnboundedSender<Message>,
    /// Weight of the messages queued for the session and not yet handled,
    /// chunk bytes until they are written.
    queued: Arc<AtomicU64>,
    station: StationId,
}

impl Dispatcher {
    /// Takes one frame from `peer`: to its session, or, for a connection
    /// without one, a Hello that starts one.
    async fn take(&mut self, peer: Peer, frame: Result<Frame, CodecError>) {
        let message = match frame {
            Ok(frame) => frame.message,
            Err(error) => {
                warn!(station = %peer.station, %error, "bad frame; disconnecting");
                self.refuse(&peer, malformed(&error)).await;
                return;
            }
        };
        if let Some(handle) = self.sessions.get(&peer.identity) {
            let weight = weight(&message);
            if handle.queued.fetch_add(weight, Ordering::SeqCst) + weight > self.queue_limit {
                warn!(station = %peer.station, "station exceeded its window; disconnecting");
                let error = ErrorFrame::new(ErrorCode::TooLarge, "flow-control window exceeded");
                self.refuse(&peer, error).await;
            } else if handle.tx.send(message).is_err() {
                self.sessions.remove(&peer.identity);
            }
            return;
        }
        // A connection without a session gets one answer: a Welcome, or an
        // error and the end of the connection (after the error has left).
        let Message::Hello(hello) = message else {
            let error = ErrorFrame::new(
                ErrorCode::UnexpectedMessage,
                "the session starts with Hello",
            );
            warn!(station = %peer.station, %error, "hello refused; disconnecting");
            self.refuse(&peer, error).await;
            return;
        };
        match admit_hello(&peer, &hello) {
            Ok(version) => self.admit(peer, hello, version).await,
            Err(error) => {
                warn!(station = %peer.station, %error, "hello refused; disconnecting");
                self.refuse(&peer, error).await;
            }
        }
    }

    /// Starts a session for `peer`, whose Hello was admitted, replacing the
    /// station's previous one; or refuses it when the collector is at its
    /// session limit.
    async fn admit(&mut self, peer: Peer, hello: Hello, version: u16) {
        let stale: Vec<Bytes> = self
            .sessions
            .iter()
            .filter(|(_, h)| h.station == peer.station)
            .map(|(id, _)| id.clone())
            .collect();
        for identity in stale {
            self.sessions.remove(&identity);
            self.link.disconnect_identity(&identity);
        }
        if self.sessions.len() >= self.shared.max_sessions {
            let error = ErrorFrame::new(ErrorCode::Busy, "collector at its session limit");
            self.refuse(&peer, error).await;
            return;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicU64::new(0));
        let lock = self
            .station_locks
            .entry(peer.station.clone())
            .or_default()
            .clone();
        let span = info_span!("session", station = %peer.station, session = %format!("{:016x}", hello.session));
        let session = Session::new(
            peer.clone(),
            self.shared.clone(),
            self.sender.clone(),
            hello.session,
            queued.clone(),
            span.clone(),
        );
        let welcome = Welcome {
            version,
            software: format!("ferry-collector {}", env!("CARGO_PKG_VERSION")),
            max_chunk: self.shared.max_chunk,
            window: self.shared.window,
            heartbeat_ms: u32::try_from(self.shared.heartbeat.as_millis()).unwrap_or(u32::MAX),
        };
        let metrics = self.shared.metrics.clone();
        tokio::spawn(
            async move {
                // The previous session of this station (if any) finishes
                // before this one touches its staging files.
                let _guard = lock.lock().await;
                let _counted = metrics.session();
                info!(software = %hello.software, "session open");
                session.run(welcome, rx).await;
                info!("session closed");
            }
            .instrument(span),
        );
        self.link.admitted(&peer);
        self.sessions.insert(
            peer.identity.clone(),
            SessionHandle {
                tx,
                queued,
                station: peer.station.clone(),
            },
        );
    }

    /// Refuses `peer`: counts the error, sends it, ends the connection's
    /// session if it has one, and disconnects it once the error has had
    /// time to leave (later, so as never to stall the other stations).
    async fn refuse(&mut self, peer: &Peer, error: ErrorFrame) {
        self.shared.metrics.error(error.code);
        let _ = self.sender.send(peer, Message::Error(error)).await;
        self.sessions.remove(&peer.identity);
        self.link.disconnect_later(peer, Duration::from_millis(50));
    }
}
