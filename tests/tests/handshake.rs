//! Handshake hygiene at the collector's gateway and the agent's link: a
//! connection must get its `Hello` accepted in time, a refused `Hello`
//! ends the connection, peers that do not speak TLS are named as such and
//! their warnings rate-limited, errors after the handshake say what they
//! are, and an agent refuses a `Welcome` for a version it never offered.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns may unwrap

use std::time::Duration;

use ferry_common::bridge::zmq_identity;
use ferry_common::codec::{self, Frame};
use ferry_common::link::{Incoming, ServerLink, ServerLinkConfig};
use ferry_common::protocol::*;
use ferry_common::station::StationId;
use ferry_tests::agent::eventually;
use ferry_tests::collector::TestCollector;
use ferry_tests::pki::TestPki;
use ferry_tests::raw::RawDealer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Generous: a loaded 2-core machine builds and runs several suites at once.
const PATIENCE: Duration = Duration::from_secs(30);

fn hello(station: &str) -> Vec<u8> {
    codec::encode(&Message::Hello(Hello {
        station: StationId::new(station).unwrap(),
        min_version: MIN_PROTOCOL_VERSION,
        max_version: PROTOCOL_VERSION,
        software: "handshake test".into(),
        session: 1,
    }))
    .unwrap()
}

async fn raw(pki: &TestPki, station: &str, endpoint: &str) -> RawDealer {
    let files = pki.station(station).unwrap();
    let identity = zmq_identity(&StationId::new(station).unwrap(), 1);
    RawDealer::connect(pki, &files, endpoint, identity)
        .await
        .unwrap()
}

/// Issue 19, item 5: after TLS and ZMTP, nothing bounded the wait for
/// `Hello`, and a refused `Hello` left the connection open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_must_get_its_hello_accepted_in_time_and_a_refused_one_is_closed() {
    ferry_tests::init_logging();
    let pki = TestPki::new().unwrap();
    let mut collector = TestCollector::new(&pki, "handshake_timeout_secs = 1").unwrap();
    let endpoint = collector.start().await.unwrap();

    let mut silent = raw(&pki, "silent", &endpoint).await;
    let mut liar = raw(&pki, "liar", &endpoint).await;
    liar.send(hello("someone-else")).await.unwrap();
    let reply = liar.recv(PATIENCE).await.unwrap();
    match codec::decode(&reply).unwrap().message {
        Message::Error(e) => assert_eq!(e.code, ErrorCode::IdentityMismatch, "{e}"),
        other => panic!("a Hello naming another station got {other:?}"),
    }
    assert!(
        liar.closed_within(PATIENCE).await.is_some(),
        "a refused Hello left the connection open"
    );
    assert!(
        silent.closed_within(PATIENCE).await.is_some(),
        "a connection that never sent Hello was kept"
    );

    // A station that says Hello in time keeps its session past the deadline.
    let mut good = ferry_tests::station::connect(&pki, "good", &endpoint)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    good.send(Message::StatusQuery(StatusQuery {}))
        .await
        .unwrap();
    assert!(matches!(
        good.recv().await.unwrap(),
        Message::StatusReply(_)
    ));
    collector.stop().await;
}

/// The start of a ZMTP 3.0 greeting: what a plain ZMQ client sends first.
const ZMTP_GREETING: [u8; 12] = [0xff, 0, 0, 0, 0, 0, 0, 0, 1, 0x7f, 3, 0];

/// Issue 19, item 6: each plain ZMQ client on the TLS port caused warnings
/// reading only `InvalidContentType`, one per connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_zmq_clients_are_named_as_such_and_their_warnings_rate_limited() {
    ferry_tests::init_logging();
    let pki = TestPki::new().unwrap();
    let mut collector = TestCollector::new(&pki, "").unwrap();
    let metrics = ferry_tests::process::free_port().unwrap();
    collector
        .append_config(&format!("[metrics]\nlisten = \"{metrics}\""))
        .unwrap();
    let endpoint = collector.spawn().await.unwrap();
    const PEERS: usize = 20;
    for _ in 0..PEERS {
        let mut tcp = tokio::net::TcpStream::connect(&endpoint).await.unwrap();
        tcp.write_all(&ZMTP_GREETING).await.unwrap();
        // The collector hangs up on it.
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(PATIENCE, tcp.read_to_end(&mut rest)).await;
    }
    let counted = eventually(PATIENCE, || {
        let runtime = tokio::runtime::Handle::current();
        let samples =
            tokio::task::block_in_place(|| runtime.block_on(ferry_tests::http::metrics(metrics)))
                .ok()?;
        let refused =
            ferry_tests::http::value(&samples, "ferry_collector_connections_refused_total")?;
        (refused >= PEERS as f64).then_some(())
    })
    .await;
    assert!(counted.is_some(), "{}", collector.log_text());
    // (The harness's own check that the port listens is refused too, as
    // a TLS handshake cut short: not counted here.)
    let plain = |l: &&str| {
        l.contains("WARN")
            && l.contains("station refused")
            && (l.contains("does not speak TLS") || l.contains("InvalidContentType"))
    };
    let warned = eventually(PATIENCE, || {
        let log = collector.log_text();
        let lines: Vec<String> = log.lines().filter(plain).map(str::to_owned).collect();
        (!lines.is_empty()).then_some(lines)
    })
    .await
    .unwrap_or_default();
    assert_eq!(warned.len(), 1, "{warned:#?}");
    assert!(
        warned[0].contains("peer does not speak TLS (plain ZMTP?)"),
        "{warned:#?}"
    );
    collector.terminate().unwrap();
}

/// Issue 19, item 10 (part): an oversized frame long after the handshake
/// was logged as "zmtp handshake refused".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_frame_after_the_handshake_is_not_called_a_handshake_refusal() {
    ferry_tests::init_logging();
    let pki = TestPki::new().unwrap();
    let mut collector =
        TestCollector::new(&pki, "max_frame_bytes = 65536\nmax_chunk_bytes = 16384").unwrap();
    let endpoint = collector.spawn().await.unwrap();
    let mut greedy = raw(&pki, "greedy", &endpoint).await;
    greedy.send(hello("greedy")).await.unwrap();
    let _ = greedy.recv(PATIENCE).await.unwrap();
    let _ = greedy.send(vec![0u8; 100_000]).await;
    assert!(greedy.closed_within(PATIENCE).await.is_some());
    let line = eventually(PATIENCE, || {
        collector
            .log_text()
            .lines()
            .find(|l| l.contains("65536-byte limit"))
            .map(str::to_owned)
    })
    .await;
    let line = line.unwrap_or_else(|| panic!("{}", collector.log_text()));
    assert!(!line.contains("handshake refused"), "{line}");
    assert!(line.contains("after the handshake"), "{line}");
    collector.terminate().unwrap();
}

/// Issue 19, item 7: the agent took a `Welcome` for a protocol version
/// outside the range its `Hello` offered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_refuses_a_welcome_for_a_version_it_never_offered() {
    ferry_tests::init_logging();
    let pki = TestPki::new().unwrap();
    let mut link = ServerLink::bind(ServerLinkConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        tls: pki.server_config().unwrap(),
        runtime_dir: pki.scratch("collector-run"),
        limits: ServerLinkConfig::default_limits(),
        handshake_timeout: Duration::from_secs(5),
        revoked: Default::default(),
    })
    .await
    .unwrap();
    let endpoint = link.local_addr().to_string();
    let sender = link.sender();
    let server = tokio::spawn(async move {
        while let Some(Incoming { peer, frame }) = link.recv().await {
            if let Ok(Frame {
                message: Message::Hello(hello),
                ..
            }) = frame
            {
                let welcome = Welcome {
                    version: hello.max_version + 1,
                    software: "from the future".into(),
                    max_chunk: 1 << 20,
                    window: 8 << 20,
                    heartbeat_ms: 1000,
                };
                let _ = sender.send(&peer, Message::Welcome(welcome)).await;
            }
        }
    });
    let result = ferry_tests::station::connect(&pki, "s1", &endpoint).await;
    let error = result.expect_err("a Welcome for an unoffered version was taken");
    let text = format!("{error:#}");
    assert!(text.contains("did not offer"), "{text}");
    assert!(
        text.contains(&format!("version {}", PROTOCOL_VERSION + 1)),
        "{text}"
    );
    server.abort();
}
