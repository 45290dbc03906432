//! A fault-injecting TCP proxy between station and collector: it can stall
//! either direction (the link goes silent without closing), add delay,
//! throttle to a byte rate, and cut every open connection at once, all
//! switched at runtime while traffic flows. It counts the bytes it forwards
//! in each direction, so a test can tell how much a station really sent.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// Which way bytes travel through the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the station (the side that connects) to the target.
    Up,
    /// From the target back to the station.
    Down,
}

impl Direction {
    fn index(self) -> usize {
        match self {
            Direction::Up => 0,
            Direction::Down => 1,
        }
    }
}

/// The faults in force, shared by every connection of a proxy.
#[derive(Debug)]
struct Faults {
    /// Per direction: forward nothing while set.
    stalled: [AtomicBool; 2],
    /// Latency added to every piece of data, in microseconds.
    delay_us: AtomicU64,
    /// Bytes per second per direction and connection; 0 is unlimited.
    rate: AtomicU64,
    /// Bytes forwarded, per direction, over the proxy's life.
    forwarded: [AtomicU64; 2],
    /// Connections open now.
    open: AtomicUsize,
    /// Connections accepted so far.
    accepted: AtomicU64,
    /// Bumped by [`Proxy::cut`]; every connection open at that moment ends.
    cut: watch::Sender<u64>,
}

/// A running proxy; stops (and drops its connections) when dropped.
#[derive(Debug)]
pub struct Proxy {
    pub addr: SocketAddr,
    faults: Arc<Faults>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `target`. A
    /// connection whose target refuses is closed at once, as a dead
    /// collector's would be.
    pub async fn start(target: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let faults = Arc::new(Faults {
            stalled: [AtomicBool::new(false), AtomicBool::new(false)],
            delay_us: AtomicU64::new(0),
            rate: AtomicU64::new(0),
            forwarded: [AtomicU64::new(0), AtomicU64::new(0)],
            open: AtomicUsize::new(0),
            accepted: AtomicU64::new(0),
            cut: watch::channel(0).0,
        });
        let shared = faults.clone();
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                shared.accepted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(connection(inbound, target, shared.clone()));
            }
        });
        Ok(Self { addr, faults, task })
    }

    /// Stops (or resumes) forwarding in both directions; connections stay
    /// open.
    pub fn stall(&self, on: bool) {
        self.stall_one(Direction::Up, on);
        self.stall_one(Direction::Down, on);
    }

    /// Stops (or resumes) forwarding in one direction only.
    pub fn stall_one(&self, direction: Direction, on: bool) {
        self.faults.stalled[direction.index()].store(on, Ordering::SeqCst);
    }

    /// Delays every piece of data by `delay` (zero for none).
    pub fn delay(&self, delay: Duration) {
        self.faults
            .delay_us
            .store(delay.as_micros() as u64, Ordering::SeqCst);
    }

    /// Limits each direction of each connection to `bytes_per_sec` (`None`
    /// for no limit).
    pub fn throttle(&self, bytes_per_sec: Option<u64>) {
        self.faults
            .rate
            .store(bytes_per_sec.unwrap_or(0), Ordering::SeqCst);
    }

    /// Closes every connection open now, in both directions, dropping what
    /// it had in flight; later connections are not affected. Returns how
    /// many were open.
    pub fn cut(&self) -> usize {
        let open = self.faults.open.load(Ordering::SeqCst);
        self.faults.cut.send_modify(|generation| *generation += 1);
        open
    }

    /// Lifts every fault: no stall, delay or throttle.
    pub fn heal(&self) {
        self.stall(false);
        self.delay(Duration::ZERO);
        self.throttle(None);
    }

    /// Bytes forwarded in `direction` so far.
    pub fn forwarded(&self, direction: Direction) -> u64 {
        self.faults.forwarded[direction.index()].load(Ordering::SeqCst)
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        self.faults.open.load(Ordering::SeqCst)
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.faults.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.faults.cut.send_modify(|generation| *generation += 1);
    }
}

/// One proxied connection: both directions until either side closes or a
/// cut comes.
async fn connection(inbound: TcpStream, target: SocketAddr, faults: Arc<Faults>) {
    let mut cut = faults.cut.subscribe();
    cut.mark_unchanged();
    let Ok(outbound) = TcpStream::connect(target).await else {
        return;
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    faults.open.fetch_add(1, Ordering::SeqCst);
    let (ir, iw) = inbound.into_split();
    let (or, ow) = outbound.into_split();
    let both = async {
        tokio::join!(
            pipe(ir, ow, Direction::Up, &faults),
            pipe(or, iw, Direction::Down, &faults)
        )
    };
    tokio::select! {
        _ = both => {}
        _ = cut.changed() => {}
    }
    faults.open.fetch_sub(1, Ordering::SeqCst);
}

/// Forwards one direction: a reader stamps each piece with the time it
/// arrived, a writer holds it for the delay, while stalled, and to keep
/// the rate, then writes it. Ends when either side closes.
async fn pipe(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    direction: Direction,
    faults: &Faults,
) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(16);
    let stalled = &faults.stalled[direction.index()];
    let reader = async move {
        loop {
            while stalled.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            // Small pieces under a throttle, so the pacing stays smooth.
            let rate = faults.rate.load(Ordering::SeqCst);
            let size = if rate == 0 {
                64 * 1024
            } else {
                (rate / 20).clamp(512, 64 * 1024) as usize
            };
            let mut buf = vec![0u8; size];
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    buf.truncate(n);
                    if tx.send((Instant::now(), buf)).await.is_err() {
                        break;
                    }
                }
            }
        }
    };
    let writer = async move {
        while let Some((arrived, piece)) = rx.recv().await {
            let delay = Duration::from_micros(faults.delay_us.load(Ordering::SeqCst));
            tokio::time::sleep_until(arrived + delay).await;
            while stalled.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let rate = faults.rate.load(Ordering::SeqCst);
            if to.write_all(&piece).await.is_err() {
                break;
            }
            faults.forwarded[direction.index()].fetch_add(piece.len() as u64, Ordering::SeqCst);
            if rate > 0 {
                let pace = Duration::from_secs_f64(piece.len() as f64 / rate as f64);
                tokio::time::sleep(pace).await;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}
