//! The secure channel: ZMQ over mutual TLS through the real bridge on
//! loopback. Only enrolled stations get in, as themselves, and one bad peer
//! never disturbs a connected station.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns may unwrap

use std::net::SocketAddr;
use std::time::Duration;

use ferry_common::backoff::Backoff;
use ferry_common::bridge;
use ferry_common::codec;
use ferry_common::link::{ClientLink, ClientLinkConfig, LinkError};
use ferry_common::protocol::*;
use ferry_common::station::StationId;
use ferry_tests::pki::{CertFiles, TestPki};
use ferry_tests::proxy::Proxy;
use ferry_tests::raw::RawDealer;
use ferry_tests::receiver::Receiver;
use ferry_tests::station::sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use zeromq::{SocketRecv, SocketSend, ZmqMessage};

const ANY_PORT: &str = "127.0.0.1:0";
const HEARTBEAT: Duration = Duration::from_millis(200);

fn config(pki: &TestPki, station: &str, files: &CertFiles, endpoint: &str) -> ClientLinkConfig {
    ClientLinkConfig {
        station: StationId::new(station).unwrap(),
        endpoints: vec![endpoint.to_owned()],
        tls: pki.client_config(files).unwrap(),
        runtime_dir: pki.scratch("agent-run"),
        connect_timeout: Duration::from_secs(5),
        heartbeat: HEARTBEAT,
        software: "channel test".into(),
    }
}

async fn connect(pki: &TestPki, station: &str, endpoint: &str) -> ClientLink {
    let files = pki.station(station).unwrap();
    ClientLink::connect(&config(pki, station, &files, endpoint), endpoint)
        .await
        .unwrap()
}

/// A full request/answer through the session: proof it still works.
async fn still_answers(link: &mut ClientLink, station: &str) {
    link.send(Message::StatusQuery(StatusQuery {}))
        .await
        .unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(5), link.recv())
        .await
        .expect("status answer in time")
        .unwrap();
    match reply {
        Message::StatusReply(status) => assert_eq!(status.station.as_str(), station),
        other => panic!("expected a status reply, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_station_sends_16_mib_in_chunks_byte_identical() {
    ferry_tests::init_logging();
    let pki = TestPki::new().unwrap();
    let receiver = Receiver::start(&pki, ANY_PORT.parse().unwrap(), HEARTBEAT)
        .await
        .unwrap();
    let mut link = connect(&pki, "rfeye002073", &receiver.endpoint()).await;
    assert_eq!(link.welcome.version, PROTOCOL_VERSION);

    let payload: Vec<u8> = (0..16u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let path = "2022/03/rfeye002073_220307_T175758.bin";
    link.send(Message::Offer(Offer {
        batch: 1,
        files: vec![FileOffer {
            id: 0,
            root: "spectrum".into(),
            path: path.into(),
            size: payload.len() as u64,
            mtime_ns: 0,
            sha256: None,
        }],
    }))
    .await
    .unwrap();
    let Message::OfferReply(reply) = link.recv().await.unwrap() else {
        panic!("no offer reply")
    };
    assert_eq!(
        reply.files,
        vec![FileNeed {
            id: 0,
            need: Need::From { offset: 0 }
        }]
    );
    let chunk = link.welcome.max_chunk as usize;
    for (i, piece) in payload.chunks(chunk).enumerate() {
        link.send(Message::Chunk(Chunk {
            batch: 1,
            file: 0,
            offset: (i * chunk) as u64,
            data: bytes::Bytes::copy_from_slice(piece),
        }))
        .await
        .unwrap();
    }
    let digest = sha256(&payload);
    link.send(Message::Commit(Commit {
        batch: 1,
        file: 0,
        size: payload.len() as u64,
        sha256: digest,
    }))
    .await
    .unwrap();
    let ack = tokio::time::timeout(Duration::from_secs(30), link.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        ack,
        Message::Ack(Ack {
            batch: 1,
            results: vec![FileResult {
                id: 0,
                outcome: Outcome::Stored {
                    sha256: digest,
                    stored_as: path.into()
                }
            }],
        })
    );
    receiver.seen(|seen| {
        assert_eq!(seen.files.len(), 1);
        assert_eq!(seen.files[0].station.as_str(), "rfeye002073");
        assert_eq!(seen.files[0].len, 16 << 20);
        assert_eq!(seen.files[0].sha256, digest);
    });
}

/// Opens a raw TLS connection with `client` and reads until it ends; returns
/// what ended it, as the client saw it.
async fn raw_tls_outcome(endpoint: &str, client: std::sync::Arc<rustls::ClientConfig>) -> String {
    match bridge::dial(endpoint, client, Duration::from_secs(5)).await {
        Err(e) => e.to_string(),
        Ok(mut tls) => {
            // TLS 1.3 clients finish before the server judges their
            // certificate; the verdict arrives on the first read.
            let _ = tls.write_all(&[0xFF; 10]).await;
            let mut buf = [0u8; 64];
            match tls.read(&mut buf).await {
                Ok(0) => "closed".into(),
                Ok(n) => format!("read {n} bytes"),
                Err(e) => e.to_string(),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_certificate_is_refused_and_others_carry_on() {
    ferry_tests::init_logging();
    let pki = TestPki::new().unwrap();
    let receiver = Receiver::start(&pki, ANY_PORT.parse().unwrap(), HEARTBEAT)
        .await
        .unwrap();
    let mut good = connect(&pki, "good", &receiver.endpoint()).await;

    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(pki.ca_path()).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let anonymous = rustls::ClientConfig::builder_with_provider(ferry_common::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let outcome = raw_tls_outcome(&receiver.endpoint(), std::sync::Arc::new(anonymous)).await;
    assert!(outcome.contains("CertificateRequired"), "{outcome}");

    still_answers(&mut good, "good").await;
    assert_eq!(receiver.seen(|s| s.sessions.len()), 1);
}

use rustls::pki_types::pem::PemObject;

async fn refused(pki: &TestPki, files: CertFiles, endpoint: &str) -> String {
    let config = config(pki, "intruder", &files, endpoint);
    match ClientLink::connect(&config, endpoint).await {
        Ok(_) => panic!("a bad certificate was admitted"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_another_ca_is_refused_and_others_carry_on() {
    ferry_tests::init_logging();
    let pki = TestPki::new().unwrap();
    let receiver = Receiver::start(&pki, ANY_PORT.parse().unwrap(), HEARTBEAT)
        .await
        .unwrap();
    let mut good = connect(&pki, "good", &receiver.endpoint()).await;
    let error = refused(
        &pki,
        pki.foreign_station("intruder").unwrap(),
        &receiver.endpoint(),
    )
    .await;
    assert!(
        error.contains("collector refused the connection"),
        "{error}"
    );
    assert!(
        error.contains("UnknownCA") || error.contains("BadCertificate"),
        "{error}"
    );
    still_answers(&mut good, "good").await;
    assert_eq!(
        receiver.seen(|s| s.sessions.clone()),
        vec![StationId::new("good").unwrap()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_certificate_is_refused_and_others_carry_on() {
    ferry_tests::init_logging();
    let pki = TestPki::new().unwrap();
    let receiver = Receiver::start(&pki, ANY_PORT.parse().unwrap(), HEARTBEAT)
        .await
        .unwrap();
    let mut good = connect(&pki, "good", &receiver.endpoint()).await;
    let error = refused(
        &pki,
        pki.expired_station("intruder").unwrap(),
        &receiver.endpoint(),
    )
    .await;
    assert!(error.contains("CertificateExpired"), "{error}");
    still_answers(&mut good, "good").await;
    assert_eq!(receiver.seen(|s| s.sessions.len()), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zmq_identity_of_another_station_is_refused() {
    ferry_tests::init_logging();
    let pki = TestPki::new().unwrap();
    let receiver = Receiver::start(&pki, ANY_PORT.parse().unwrap(), HEARTBEAT)
        .await
        .unwrap();
    let mut victim = connect(&pki, "victim", &receiver.endpoint()).await;

    let mallory = pki.station("mallory").unwrap();
    let forged = bridge::zmq_identity(&StationId::new("victim").unwrap(), 7);
    let outcome = RawDealer::connect(&pki, &mallory, &receiver.endpoint(), forged).await;
    assert!(
        outcome.is_err(),
        "a forged identity completed the zmq handshake"
    );

    // Nothing reached the receiver as "victim" but the real victim's session.
    still_answers(&mut victim, "victim").await;
    assert_eq!(
        receiver.seen(|s| s.sessions.clone()),
        vec![StationId::new("victim").unwrap()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hello_claiming_another_station_is_refused() {
    ferry_tests::init_logging();
    let pki = TestPki::new().unwrap();
    let receiver = Receiver::start(&pki, ANY_PORT.parse().unwrap(), HEARTBEAT)
        .await
        .unwrap();
    let mut victim = connect(&pki, "victim", &receiver.endpoint()).await;

    let mallory = pki.station("mallory").unwrap();
    let own = bridge::zmq_identity(&StationId::new("mallory").unwrap(), 7);
    let RawDealer {
        mut dealer,
        tunnel: _tunnel,
    } = RawDealer::connect(&pki, &mallory, &receiver.endpoint(), own)
        .await
        .unwrap();
    let hello = Message::Hello(Hello {
        station: StationId::new("victim").unwrap(),
        min_version: 1,
        max_version: PROTOCOL_VERSION,
        software: "mallory".into(),
        session: 7,
    });
    dealer
        .send(ZmqMessage::from(codec::encode(&hello).unwrap()))
        .await
        .unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(5), dealer.recv())
        .await
        .unwrap()
        .unwrap();
    let frame = codec::decode(reply.get(0).unwrap()).unwrap();
    match frame.message {
        Message::Error(error) => {
            assert_eq!(error.code, ErrorCode::IdentityMismatch);
            assert!(
                error.message.contains("certificate is for mallory"),
                "{}",
                error.message
            );
        }
        other => panic!("expected an identity error, got {other:?}"),
    }
    still_answers(&mut victim, "victim").await;
    assert_eq!(
        receiver.seen(|s| s.sessions.clone()),
        vec![StationId::new("victim").unwrap()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_zmtp_frame_ends_only_that_connection() {
    ferry_tests::init_logging();
    let pki = TestPki::new().unwrap();
    let receiver = Receiver::start(&pki, ANY_PORT.parse().unwrap(), HEARTBEAT)
        .await
        .unwrap();
    let mut good = connect(&pki, "good", &receiver.endpoint()).await;

    let files = pki.station("greedy").unwrap();
    let mut tls = bridge::dial(
        &receiver.endpoint(),
        pki.client_config(&files).unwrap(),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    // A valid greeting and READY for its own identity, then a frame header
    // claiming a terabyte.
    let mut bytes = vec![0xFF, 0, 0, 0, 0, 0, 0, 0, 0, 0x7F, 3, 1];
    bytes.extend_from_slice(b"NULL");
    bytes.extend_from_slice(&[0u8; 16 + 32]);
    let identity = bridge::zmq_identity(&StationId::new("greedy").unwrap(), 1);
    let mut ready = vec![5];
    ready.extend_from_slice(b"READY");
    for (k, v) in [
        (&b"Socket-Type"[..], &b"DEALER"[..]),
        (b"Identity", &identity),
    ] {
        ready.push(k.len() as u8);
        ready.extend_from_slice(k);
        ready.extend_from_slice(&(v.len() as u32).to_be_bytes());
        ready.extend_from_slice(v);
    }
    bytes.extend_from_slice(&[0x04, ready.len() as u8]);
    bytes.extend_from_slice(&ready);
    bytes.push(0x02);
    bytes.extend_from_slice(&(1u64 << 40).to_be_bytes());
    tls.write_all(&bytes).await.unwrap();
    let mut sink = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut sink)).await;
    assert!(
        ended.is_ok(),
        "the collector kept a connection that claimed a 1 TiB frame"
    );

    still_answers(&mut good, "good").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_comes_back_by_itself_after_a_collector_restart() {
    ferry_tests::init_logging();
    let pki = TestPki::new().unwrap();
    let receiver = Receiver::start(&pki, ANY_PORT.parse().unwrap(), HEARTBEAT)
        .await
        .unwrap();
    let addr: SocketAddr = receiver.addr;
    let files = pki.station("phoenix").unwrap();
    let config = config(&pki, "phoenix", &files, &receiver.endpoint());
    let (_stop_tx, mut stop) = tokio::sync::watch::channel(false);
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_millis(400));
    let mut link = ClientLink::connect_with_backoff(&config, &mut backoff, &mut stop)
        .await
        .unwrap();
    still_answers(&mut link, "phoenix").await;

    receiver.stop().await;
    let error = tokio::time::timeout(Duration::from_secs(5), link.recv())
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(error, LinkError::Closed(_)), "{error}");

    // The collector comes back on the same port a little later, while the
    // agent is already retrying.
    let restart = tokio::spawn({
        let pki_dir = pki.dir.path().to_owned();
        async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            pki_dir
        }
    });
    let reconnect = tokio::spawn(async move {
        let link = ClientLink::connect_with_backoff(&config, &mut backoff, &mut stop).await;
        (link, stop)
    });
    restart.await.unwrap();
    let receiver = loop {
        match Receiver::start(&pki, addr, HEARTBEAT).await {
            Ok(receiver) => break receiver,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let (link, _stop) = tokio::time::timeout(Duration::from_secs(10), reconnect)
        .await
        .unwrap()
        .unwrap();
    let mut link = link.expect("session rebuilt");
    still_answers(&mut link, "phoenix").await;
    assert_eq!(receiver.seen(|s| s.sessions.len()), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_collector_is_declared_dead_by_heartbeat() {
    ferry_tests::init_logging();
    let pki = TestPki::new().unwrap();
    let receiver = Receiver::start(&pki, ANY_PORT.parse().unwrap(), HEARTBEAT)
        .await
        .unwrap();
    let proxy = Proxy::start(receiver.addr).await.unwrap();
    let endpoint = format!("127.0.0.1:{}", proxy.addr.port());
    let mut link = connect(&pki, "lonely", &endpoint).await;
    still_answers(&mut link, "lonely").await;

    proxy.stall(true);
    let started = std::time::Instant::now();
    let error = tokio::time::timeout(Duration::from_secs(10), link.recv())
        .await
        .unwrap()
        .unwrap_err();
    let message = error.to_string();
    assert!(message.contains("collector silent"), "{message}");
    // Three heartbeat intervals of silence, give or take a tick.
    assert!(
        started.elapsed() >= HEARTBEAT * 2,
        "declared dead too early: {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_whose_local_side_closes_says_goodbye_over_tls() {
    use tokio::io::AsyncWriteExt as _;
    ferry_tests::init_logging();
    let pki = TestPki::new().unwrap();
    let listener = tokio::net::TcpListener::bind(ANY_PORT).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(pki.server_config().unwrap());
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = acceptor.accept(tcp).await.unwrap();
        let mut received = Vec::new();
        // A close_notify makes this Ok; a cut connection is an error.
        tls.read_to_end(&mut received).await.map(|_| received)
    });
    let files = pki.station("s1").unwrap();
    let tls = bridge::dial(
        &format!("127.0.0.1:{}", addr.port()),
        pki.client_config(&files).unwrap(),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    let tunnel = bridge::open_tunnel(tls, &pki.scratch("run"), Duration::from_secs(5)).unwrap();
    let path = tunnel.endpoint.trim_start_matches("ipc://").to_owned();
    let mut local = tokio::net::UnixStream::connect(&path).await.unwrap();
    local.write_all(b"last words").await.unwrap();
    drop(local);
    tunnel.finish(Duration::from_secs(5)).await;
    let received = tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap()
        .expect("the TLS session ended without close_notify");
    assert_eq!(received, b"last words");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_station_fails_over_to_the_next_collector_endpoint() {
    ferry_tests::init_logging();
    let pki = TestPki::new().unwrap();
    let receiver = Receiver::start(&pki, ANY_PORT.parse().unwrap(), HEARTBEAT)
        .await
        .unwrap();
    let dead = ferry_tests::process::free_port().unwrap().to_string();
    let files = pki.station("s1").unwrap();
    let mut config = config(&pki, "s1", &files, &dead);
    config.endpoints.push(receiver.endpoint());
    let (_stop, mut stop) = tokio::sync::watch::channel(false);
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_millis(200));
    let mut link = tokio::time::timeout(
        Duration::from_secs(10),
        ClientLink::connect_with_backoff(&config, &mut backoff, &mut stop),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(link.addr, receiver.endpoint());
    still_answers(&mut link, "s1").await;
}

/// The tunnel's last bytes before a quiet spell reach the collector even
/// when TLS could not send them at once: here the TLS connection runs over a
/// 1 KiB pipe that the collector's side reads only after the agent has
/// written everything and gone quiet (its socket stays open). rustls keeps
/// what the pipe could not take; only a flush sends it. Without one, a
/// commit or credit waited for the next heartbeat (stalls of 5-20 s in the
/// benchmark).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_tunnel_leaves_nothing_in_the_tls_buffer() {
    let pki = TestPki::new().unwrap();
    let files = pki.station("rfeye002073").unwrap();
    let (client_io, server_io) = tokio::io::duplex(1024);
    let acceptor = tokio_rustls::TlsAcceptor::from(pki.server_config().unwrap());
    let accept = tokio::spawn(acceptor.accept(server_io));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let client = tokio_rustls::TlsConnector::from(pki.client_config(&files).unwrap())
        .connect(name, client_io)
        .await
        .unwrap();
    let mut collector_side = accept.await.unwrap().unwrap();
    let tunnel = bridge::open_tunnel(client, &pki.scratch("run"), Duration::from_secs(5)).unwrap();
    let path = tunnel.endpoint.strip_prefix("ipc://").unwrap().to_owned();
    let mut local = tokio::net::UnixStream::connect(path).await.unwrap();

    let data: Vec<u8> = (0..256 * 1024u32).map(|i| (i % 251) as u8).collect();
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        local.write_all(&sent).await.unwrap();
        local // kept open: the agent side goes quiet, it does not close
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut got = vec![0u8; data.len()];
    let read =
        tokio::time::timeout(Duration::from_secs(5), collector_side.read_exact(&mut got)).await;
    assert!(
        read.is_ok(),
        "the collector got only part of the data: the rest stayed in the TLS buffer"
    );
    read.unwrap().unwrap();
    assert!(got == data, "the collector got different bytes");
    let local = writer.await.unwrap();
    assert!(
        tunnel.closed.borrow().is_none(),
        "the tunnel ended while both sides are open"
    );
    drop(local);
}
