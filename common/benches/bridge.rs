//! Bytes per second through Ferry's ZMQ-over-TLS channel against plain TLS on
//! loopback, measured in the same run, so the bridge's cost is known.
//!
//! Both sides of each channel run in this process on one tokio runtime with
//! two worker threads, as agent and collector would share a 2-core machine.
//! Each run opens a fresh connection (handshakes are not timed), then:
//!
//! - Ferry: a [`ClientLink`] sends N MiB as `Chunk` frames and a `Commit`;
//!   a [`ServerLink`] receive loop counts the chunk bytes and answers the
//!   `Commit` with an `Ack` once it holds them all. Timed from the first send
//!   to the `Ack`.
//! - TLS: the same rustls configurations over a plain TCP connection; the
//!   client writes the same bytes in writes of the same size, the server reads
//!   them all and writes one byte back. Timed from the first write to that
//!   byte.
//!
//! Timings on small VMs swing 2–5× between runs, so Ferry and TLS runs
//! alternate (F T F T …) and the summary quotes medians, including the median
//! of the per-pair ratios. Environment: `FERRY_BENCH_MIB` (MiB per run,
//! default 512), `FERRY_BENCH_PAIRS` (pairs per chunk size, default 5).

use std::collections::HashMap;
use std::error::Error;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_common::link::{
    ClientLink, ClientLinkConfig, Incoming, ServerLink, ServerLinkConfig, admit_hello, malformed,
};
use ferry_common::pki::{CertificateAuthority, Validity};
use ferry_common::protocol::{Ack, Chunk, Commit, ErrorCode, ErrorFrame, Message, Welcome};
use ferry_common::station::StationId;
use ferry_common::tls::{self, TlsMaterial};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

type BoxError = Box<dyn Error + Send + Sync>;
type BoxResult<T> = Result<T, BoxError>;

const MIB: usize = 1 << 20;
/// Chunk (and write) sizes measured, one summary row each.
const CHUNK_SIZES: [usize; 2] = [MIB, 256 << 10];
/// Below this many pairs a median of ratios says little; the design asks for 5.
const MIN_PAIRS: usize = 5;
/// MiB moved by each side once before measuring, to touch the allocator's
/// and the kernel's buffers.
const WARM_UP_MIB: u64 = 64;
/// Ping interval of the Ferry session; long enough never to matter here.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// Kernel clock ticks per second in `/proc/self/stat` (USER_HZ, 100 on Linux).
const USER_HZ: f64 = 100.0;
const STATION: &str = "bench001";

fn main() -> BoxResult<()> {
    // `cargo bench` passes `--bench`; there are no arguments to read.
    let settings = Settings::from_env()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(run(settings))
}

/// What to measure, from the environment.
#[derive(Debug, Clone, Copy)]
struct Settings {
    /// Bytes moved per run.
    total: u64,
    /// Ferry/TLS pairs per chunk size.
    pairs: usize,
}

impl Settings {
    fn from_env() -> BoxResult<Self> {
        let read = |name: &str, default: u64| -> BoxResult<u64> {
            match std::env::var(name) {
                Ok(text) => match text.trim().parse::<u64>() {
                    Ok(0) | Err(_) => {
                        Err(format!("{name}={text:?} is not a positive number").into())
                    }
                    Ok(value) => Ok(value),
                },
                Err(_) => Ok(default),
            }
        };
        Ok(Self {
            total: read("FERRY_BENCH_MIB", 512)?
                .checked_mul(MIB as u64)
                .ok_or("FERRY_BENCH_MIB is too large")?,
            pairs: usize::try_from(read("FERRY_BENCH_PAIRS", MIN_PAIRS as u64)?)?,
        })
    }
}

async fn run(settings: Settings) -> BoxResult<()> {
    let setup = Setup::new().await?;
    let data = pattern(MIB);
    println!("Ferry bridge benchmark: ZMQ over TLS (Ferry) vs plain TLS on loopback");
    println!(
        "{} MiB per run, {} pairs per chunk size, runs alternate Ferry/TLS, 2 tokio workers",
        settings.total / MIB as u64,
        settings.pairs
    );
    if settings.pairs < MIN_PAIRS {
        println!("note: fewer than {MIN_PAIRS} pairs; medians below are not a quotable result");
    }
    println!("MB/s = 10^6 bytes per second; cpu = user+system time of the whole process");
    println!(
        "cores = cpu time / wall time (this machine has {} cores)",
        available_cores()
    );
    println!();

    let warm_up = (WARM_UP_MIB * MIB as u64).min(settings.total);
    setup.ferry(&data, warm_up, MIB, 0).await?;
    let suite = setup.tls(&data, warm_up, MIB).await?.suite;
    println!(
        "warm-up done ({} MiB each side); TLS suite {suite}",
        warm_up / MIB as u64
    );

    let mut rows = Vec::new();
    let mut batch = 1;
    for chunk in CHUNK_SIZES {
        println!();
        println!(
            "chunk {} (Ferry's runs include copying each chunk into the frame's own buffer, \
             {:.0} ms per run when timed alone)",
            size_name(chunk),
            copy_cost(&data[..chunk], settings.total).as_secs_f64() * 1e3
        );
        let mut pairs = Vec::new();
        for pair in 1..=settings.pairs {
            let ferry = setup.ferry(&data, settings.total, chunk, batch).await?;
            batch += 1;
            let tls = setup.tls(&data, settings.total, chunk).await?.sample;
            println!(
                "  pair {pair:>2}  ferry {}   tls {}   ferry/tls {:.2}",
                ferry.describe(settings.total),
                tls.describe(settings.total),
                ferry.mb_per_s(settings.total) / tls.mb_per_s(settings.total)
            );
            pairs.push((ferry, tls));
        }
        rows.push(Row::new(chunk, &pairs, settings.total));
    }

    println!();
    println!(
        "summary (medians over {} pairs of {} MiB)",
        settings.pairs,
        settings.total / MIB as u64
    );
    println!(
        "{:<8} {:>11} {:>10} {:>10} {:>15} {:>13} {:>12} {:>10}",
        "chunk",
        "ferry MB/s",
        "tls MB/s",
        "ferry/tls",
        "ferry cpu s/GB",
        "tls cpu s/GB",
        "ferry cores",
        "tls cores"
    );
    for row in &rows {
        println!(
            "{:<8} {:>11.0} {:>10.0} {:>10.2} {:>15} {:>13} {:>12} {:>10}",
            size_name(row.chunk),
            row.ferry_mb_per_s,
            row.tls_mb_per_s,
            row.ratio,
            optional(row.ferry_cpu_per_gb),
            optional(row.tls_cpu_per_gb),
            optional(row.ferry_cores),
            optional(row.tls_cores)
        );
    }
    Ok(())
}

/// One timed run.
#[derive(Debug, Clone, Copy)]
struct Sample {
    elapsed: Duration,
    /// Process CPU time (all threads) spent during the run, if readable.
    cpu: Option<Duration>,
}

impl Sample {
    fn mb_per_s(&self, total: u64) -> f64 {
        total as f64 / self.elapsed.as_secs_f64() / 1e6
    }

    fn describe(&self, total: u64) -> String {
        let cpu = match self.cpu {
            Some(cpu) => format!("{:>5.2} s", cpu.as_secs_f64()),
            None => "    ?  ".to_owned(),
        };
        format!(
            "{:>6.0} MB/s ({:>5.2} s, cpu {cpu})",
            self.mb_per_s(total),
            self.elapsed.as_secs_f64()
        )
    }
}

/// A summary line: medians over the pairs of one chunk size.
#[derive(Debug)]
struct Row {
    chunk: usize,
    ferry_mb_per_s: f64,
    tls_mb_per_s: f64,
    /// Median of the per-pair ratios Ferry/TLS.
    ratio: f64,
    ferry_cpu_per_gb: Option<f64>,
    tls_cpu_per_gb: Option<f64>,
    /// Median CPU time over wall time: how many cores the run kept busy.
    ferry_cores: Option<f64>,
    tls_cores: Option<f64>,
}

impl Row {
    fn new(chunk: usize, pairs: &[(Sample, Sample)], total: u64) -> Self {
        let gb = total as f64 / 1e9;
        let cpu_median = |samples: Vec<&Sample>, per: &dyn Fn(&Sample, f64) -> f64| {
            let values = samples
                .into_iter()
                .map(|sample| sample.cpu.map(|cpu| per(sample, cpu.as_secs_f64())))
                .collect::<Option<Vec<_>>>()?;
            Some(median(values))
        };
        let per_gb = |_: &Sample, cpu: f64| cpu / gb;
        let cores = |sample: &Sample, cpu: f64| cpu / sample.elapsed.as_secs_f64();
        let ferry = || pairs.iter().map(|(f, _)| f).collect::<Vec<_>>();
        let tls = || pairs.iter().map(|(_, t)| t).collect::<Vec<_>>();
        Self {
            chunk,
            ferry_mb_per_s: median(pairs.iter().map(|(f, _)| f.mb_per_s(total)).collect()),
            tls_mb_per_s: median(pairs.iter().map(|(_, t)| t.mb_per_s(total)).collect()),
            ratio: median(
                pairs
                    .iter()
                    .map(|(f, t)| f.mb_per_s(total) / t.mb_per_s(total))
                    .collect(),
            ),
            ferry_cpu_per_gb: cpu_median(ferry(), &per_gb),
            tls_cpu_per_gb: cpu_median(tls(), &per_gb),
            ferry_cores: cpu_median(ferry(), &cores),
            tls_cores: cpu_median(tls(), &cores),
        }
    }
}

/// Everything both kinds of run share: PKI, the Ferry server, the TLS server.
struct Setup {
    client_link: ClientLinkConfig,
    ferry_addr: String,
    /// Kept so the Ferry server stays up; its receive loop owns the link.
    _ferry_server: tokio::task::JoinHandle<()>,
    tls_client: Arc<ClientConfig>,
    tls_addr: SocketAddr,
    _tls_server: tokio::task::JoinHandle<()>,
    /// Holds the private directories of the Unix sockets; removed on drop,
    /// after the links (fields drop in order).
    _dir: tempfile::TempDir,
}

/// What a plain TLS run found out.
struct TlsRun {
    sample: Sample,
    /// The negotiated cipher suite, for the report.
    suite: String,
}

impl Setup {
    async fn new() -> BoxResult<Self> {
        let dir = tempfile::tempdir()?;
        let (server_tls, client_tls) = throw_away_pki()?;
        let link = ServerLink::bind(ServerLinkConfig {
            listen: "127.0.0.1:0".parse()?,
            tls: server_tls.clone(),
            runtime_dir: run_dir(&dir, "collector")?,
            limits: ServerLinkConfig::default_limits(),
            handshake_timeout: Duration::from_secs(10),
            revoked: Default::default(),
        })
        .await?;
        let ferry_addr = link.local_addr().to_string();
        let ferry_server = tokio::spawn(ferry_server(link));
        let client_link = ClientLinkConfig {
            station: StationId::new(STATION)?,
            endpoints: vec![ferry_addr.clone()],
            tls: client_tls.clone(),
            runtime_dir: run_dir(&dir, "agent")?,
            connect_timeout: Duration::from_secs(10),
            heartbeat: HEARTBEAT,
            software: "ferry bridge bench".into(),
        };
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let tls_addr = listener.local_addr()?;
        let tls_server = tokio::spawn(tls_server(listener, TlsAcceptor::from(server_tls)));
        Ok(Self {
            client_link,
            ferry_addr,
            _ferry_server: ferry_server,
            tls_client: client_tls,
            tls_addr,
            _tls_server: tls_server,
            _dir: dir,
        })
    }

    /// Sends `total` bytes through a fresh Ferry session in chunks of `chunk`.
    async fn ferry(&self, data: &[u8], total: u64, chunk: usize, batch: u64) -> BoxResult<Sample> {
        let mut link = ClientLink::connect(&self.client_link, &self.ferry_addr).await?;
        let clock = Clock::start();
        let mut offset = 0;
        while offset < total {
            let len = remaining(total, offset, chunk);
            link.send(Message::Chunk(Chunk {
                batch,
                file: 0,
                offset,
                // The frame owns its bytes; an agent reads each chunk of a
                // file into a fresh buffer the same way.
                data: data[..len].to_vec().into(),
            }))
            .await?;
            offset += len as u64;
        }
        link.send(Message::Commit(Commit {
            batch,
            file: 0,
            size: total,
            sha256: [0; 32],
        }))
        .await?;
        let reply = link.recv().await?;
        let sample = clock.stop();
        match reply {
            Message::Ack(ack) if ack.batch == batch => Ok(sample),
            other => Err(format!("expected the Ack of batch {batch}, got {other:?}").into()),
        }
    }

    /// Writes `total` bytes through a fresh plain TLS connection in writes of
    /// `chunk` bytes.
    async fn tls(&self, data: &[u8], total: u64, chunk: usize) -> BoxResult<TlsRun> {
        let tcp = TcpStream::connect(self.tls_addr).await?;
        tcp.set_nodelay(true)?; // as Ferry's bridge does
        let mut stream = TlsConnector::from(self.tls_client.clone())
            .connect(ServerName::try_from("localhost")?, tcp)
            .await?;
        let suite = stream
            .get_ref()
            .1
            .negotiated_cipher_suite()
            .map_or_else(|| "unknown".to_owned(), |s| format!("{:?}", s.suite()));
        let clock = Clock::start();
        stream.write_all(&total.to_be_bytes()).await?;
        stream.write_all(&(chunk as u64).to_be_bytes()).await?;
        let mut offset = 0;
        while offset < total {
            let len = remaining(total, offset, chunk);
            stream.write_all(&data[..len]).await?;
            offset += len as u64;
        }
        stream.flush().await?;
        let mut done = [0u8; 1];
        stream.read_exact(&mut done).await?;
        let sample = clock.stop();
        Ok(TlsRun { sample, suite })
    }
}

/// Builds a CA, a server certificate for localhost/127.0.0.1 and one station
/// certificate, all in memory, and the TLS configurations Ferry uses.
fn throw_away_pki() -> BoxResult<(Arc<ServerConfig>, Arc<ClientConfig>)> {
    let validity = Validity::days_from_now(1);
    let ca = CertificateAuthority::create("Ferry Bench CA", validity)?;
    let server = ca.issue_server(&["localhost".into(), "127.0.0.1".into()], validity)?;
    let station = ca.issue_station(&StationId::new(STATION)?, validity)?;
    let material = |cert: &str, key: &str, origin: &str| {
        TlsMaterial::from_pem(
            ca.cert_pem().as_bytes(),
            cert.as_bytes(),
            key.as_bytes(),
            origin,
        )
    };
    let server = material(&server.cert_pem, &server.key_pem, "bench collector")?;
    let station = material(&station.cert_pem, &station.key_pem, "bench station")?;
    Ok((tls::server_config(&server)?, tls::client_config(&station)?))
}

fn run_dir(dir: &tempfile::TempDir, name: &str) -> BoxResult<PathBuf> {
    let path = dir.path().join(name);
    std::fs::create_dir_all(&path)?;
    Ok(path)
}

/// The collector side of the Ferry runs: admits stations, counts chunk bytes
/// per session, and acknowledges a `Commit` whose size matches the count.
async fn ferry_server(mut link: ServerLink) {
    let sender = link.sender();
    let mut received: HashMap<Bytes, u64> = HashMap::new();
    while let Some(Incoming { peer, frame }) = link.recv().await {
        let message = match frame {
            Ok(frame) => frame.message,
            Err(error) => {
                let _ = sender.send(&peer, Message::Error(malformed(&error))).await;
                continue;
            }
        };
        let reply = match message {
            Message::Chunk(chunk) => {
                *received.entry(peer.identity.clone()).or_default() += chunk.data.len() as u64;
                continue;
            }
            Message::Hello(hello) => match admit_hello(&peer, &hello) {
                Ok(version) => {
                    link.admitted(&peer);
                    received.insert(peer.identity.clone(), 0);
                    Message::Welcome(Welcome {
                        version,
                        software: "ferry bridge bench".into(),
                        max_chunk: MIB as u32,
                        window: u64::MAX,
                        heartbeat_ms: HEARTBEAT.as_millis() as u32,
                    })
                }
                Err(error) => Message::Error(error),
            },
            Message::Commit(commit) => {
                let got = received.remove(&peer.identity).unwrap_or(0);
                if got == commit.size {
                    Message::Ack(Ack {
                        batch: commit.batch,
                        results: Vec::new(),
                    })
                } else {
                    Message::Error(ErrorFrame::new(
                        ErrorCode::HashMismatch,
                        format!("received {got} bytes, commit says {}", commit.size),
                    ))
                }
            }
            other => Message::Error(ErrorFrame::new(
                ErrorCode::UnexpectedMessage,
                format!("the bench server does not expect {other:?}"),
            )),
        };
        let _ = sender.send(&peer, reply).await;
    }
}

/// The server side of the plain TLS runs: one task per connection.
async fn tls_server(listener: TcpListener, acceptor: TlsAcceptor) {
    while let Ok((tcp, _)) = listener.accept().await {
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            if let Err(error) = tls_sink(tcp, acceptor).await {
                eprintln!("plain TLS server: {error}");
            }
        });
    }
}

/// Reads the announced number of bytes with reads of the announced size,
/// then writes one byte back.
async fn tls_sink(tcp: TcpStream, acceptor: TlsAcceptor) -> BoxResult<()> {
    tcp.set_nodelay(true)?;
    let mut stream = acceptor.accept(tcp).await?;
    let total = stream.read_u64().await?;
    let chunk = usize::try_from(stream.read_u64().await?)?.clamp(1, 8 * MIB);
    let mut buf = vec![0u8; chunk];
    let mut got = 0u64;
    while got < total {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Err(format!("connection closed after {got} of {total} bytes").into());
        }
        got += n as u64;
    }
    stream.write_all(&[1]).await?;
    stream.flush().await?;
    // Wait for the client to hang up, so the byte is not lost to a reset.
    let _ = stream.read(&mut buf).await;
    Ok(())
}

/// Wall and process CPU time from a start point.
struct Clock {
    wall: Instant,
    cpu: Option<Duration>,
}

impl Clock {
    fn start() -> Self {
        Self {
            cpu: process_cpu(),
            wall: Instant::now(),
        }
    }

    fn stop(self) -> Sample {
        let elapsed = self.wall.elapsed();
        let cpu = match (self.cpu, process_cpu()) {
            (Some(before), Some(after)) => after.checked_sub(before),
            _ => None,
        };
        Sample { elapsed, cpu }
    }
}

/// User plus system time of this process (all threads) so far, from
/// `/proc/self/stat`; `None` where that file is unreadable.
fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may hold
    // spaces; utime and stime are fields 14 and 15, here at 11 and 12.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_secs_f64(ticks as f64 / USER_HZ))
}

/// Median time of building one run's owned chunk buffers, which the Ferry
/// runs pay and the TLS runs do not.
fn copy_cost(chunk: &[u8], total: u64) -> Duration {
    let mut times = (0..3)
        .map(|_| {
            let start = Instant::now();
            let mut offset = 0;
            while offset < total {
                let len = remaining(total, offset, chunk.len());
                std::hint::black_box(chunk[..len].to_vec());
                offset += len as u64;
            }
            start.elapsed()
        })
        .collect::<Vec<_>>();
    times.sort();
    times[1]
}

/// Length of the next piece of a `total`-byte stream at `offset`.
fn remaining(total: u64, offset: u64, chunk: usize) -> usize {
    usize::try_from(total - offset).map_or(chunk, |left| left.min(chunk))
}

/// `len` bytes that do not repeat within a chunk (the content does not
/// matter to TLS, which does not compress, but zeros would look suspicious).
fn pattern(len: usize) -> Vec<u8> {
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

fn size_name(bytes: usize) -> String {
    if bytes.is_multiple_of(MIB) {
        format!("{} MiB", bytes / MIB)
    } else {
        format!("{} KiB", bytes >> 10)
    }
}

fn available_cores() -> String {
    std::thread::available_parallelism().map_or_else(|_| "?".to_owned(), |n| n.to_string())
}

fn optional(value: Option<f64>) -> String {
    value.map_or_else(|| "?".to_owned(), |v| format!("{v:.2}"))
}
