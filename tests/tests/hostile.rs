//! Hostile input at the collector: garbage frames after the handshake,
//! unknown protocol versions, oversized frames and messages out of order are
//! refused with a clear error, while another station's transfer carries on.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns may unwrap

use std::time::Duration;

use ferry_agent::sender::{Flow, OutgoingFile, send_batch};
use ferry_common::bridge::zmq_identity;
use ferry_common::codec;
use ferry_common::link::{ClientLink, ClientLinkConfig};
use ferry_common::protocol::*;
use ferry_common::station::StationId;
use ferry_tests::collector::TestCollector;
use ferry_tests::pki::TestPki;
use ferry_tests::raw::RawDealer;

fn hello(station: &str) -> Vec<u8> {
    codec::encode(&Message::Hello(Hello {
        station: StationId::new(station).unwrap(),
        min_version: 1,
        max_version: PROTOCOL_VERSION,
        software: "hostile".into(),
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

async fn error_reply(peer: &mut RawDealer) -> ErrorFrame {
    loop {
        let bytes = peer.recv(Duration::from_secs(5)).await.unwrap();
        match codec::decode(&bytes).unwrap().message {
            Message::Error(error) => return error,
            Message::Welcome(_) => continue,
            other => panic!("expected an error, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_peers_get_clear_errors_while_a_good_station_keeps_sending() {
    ferry_tests::init_logging();
    let pki = TestPki::new().unwrap();
    let mut collector = TestCollector::new(&pki, "max_chunk_bytes = 65536").unwrap();
    let endpoint = collector.start().await.unwrap();

    // A good station sends a 24 MB file throughout.
    let dir = pki.scratch("good");
    let content: Vec<u8> = (0..24_000_000u32).map(|i| (i % 241) as u8).collect();
    std::fs::write(dir.join("big.bin"), &content).unwrap();
    let good_file = OutgoingFile {
        root: "data".into(),
        rel_path: "big.bin".into(),
        abs_path: dir.join("big.bin"),
        size: content.len() as u64,
        mtime_ns: 1,
        sha256: None,
    };
    let files = pki.station("good").unwrap();
    let config = ClientLinkConfig {
        station: StationId::new("good").unwrap(),
        endpoints: vec![endpoint.clone()],
        tls: pki.client_config(&files).unwrap(),
        runtime_dir: pki.scratch("agent-run"),
        connect_timeout: Duration::from_secs(5),
        heartbeat: Duration::from_secs(1),
        software: "good".into(),
    };
    let mut link = ClientLink::connect(&config, &endpoint).await.unwrap();
    let good = tokio::spawn(async move {
        let mut flow = Flow::default();
        send_batch(&mut link, &mut flow, 1, &[good_file]).await
    });

    // Garbage after a proper handshake: an error naming the problem, then
    // the connection is closed.
    let mut garbage = raw(&pki, "garbage", &endpoint).await;
    garbage.send(hello("garbage")).await.unwrap();
    let version = ferry_common::protocol::PROTOCOL_VERSION.to_be_bytes();
    garbage
        .send([&version[..], &[0xFF, 0xFF, 0xFF, 0xFF, 0x13, 0x37]].concat())
        .await
        .unwrap();
    let error = error_reply(&mut garbage).await;
    assert_eq!(error.code, ErrorCode::Malformed, "{error}");
    assert!(error.message.contains("does not decode"), "{error}");
    assert!(
        garbage
            .closed_within(Duration::from_secs(5))
            .await
            .is_some(),
        "garbage peer kept its connection"
    );

    // A frame of an unknown protocol version.
    let mut future = raw(&pki, "future", &endpoint).await;
    let mut frame = hello("future");
    frame[..2].copy_from_slice(&99u16.to_be_bytes());
    future.send(frame).await.unwrap();
    let error = error_reply(&mut future).await;
    assert_eq!(error.code, ErrorCode::UnsupportedVersion, "{error}");
    assert!(error.message.contains("version 99"), "{error}");

    // A message before Hello.
    let mut rude = raw(&pki, "rude", &endpoint).await;
    rude.send(codec::encode(&Message::StatusQuery(StatusQuery {})).unwrap())
        .await
        .unwrap();
    let error = error_reply(&mut rude).await;
    assert_eq!(error.code, ErrorCode::UnexpectedMessage, "{error}");

    // A frame over the limit (9 MiB > 8 MiB): the bridge cuts the connection
    // before the collector's socket sees it.
    let mut greedy = raw(&pki, "greedy", &endpoint).await;
    greedy.send(hello("greedy")).await.unwrap();
    let _ = greedy.send(vec![0u8; 9 << 20]).await;
    let closed = greedy.closed_within(Duration::from_secs(5)).await;
    assert!(
        closed.is_some(),
        "oversized frame did not end the connection"
    );

    // A chunk for a file nobody offered, and a commit with a wrong hash.
    let mut sloppy = raw(&pki, "sloppy", &endpoint).await;
    sloppy.send(hello("sloppy")).await.unwrap();
    let offer = Offer {
        batch: 9,
        files: vec![FileOffer {
            id: 0,
            root: "d".into(),
            path: "x".into(),
            size: 3,
            mtime_ns: 0,
            sha256: None,
        }],
    };
    sloppy
        .send(codec::encode(&Message::Offer(offer)).unwrap())
        .await
        .unwrap();
    sloppy
        .send(
            codec::encode(&Message::Chunk(Chunk {
                batch: 9,
                file: 0,
                offset: 0,
                data: bytes::Bytes::from_static(b"abc"),
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    sloppy
        .send(
            codec::encode(&Message::Commit(Commit {
                batch: 9,
                file: 0,
                size: 3,
                sha256: [0; 32],
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    let ack = loop {
        let bytes = sloppy.recv(Duration::from_secs(5)).await.unwrap();
        if let Message::Ack(ack) = codec::decode(&bytes).unwrap().message {
            break ack;
        }
    };
    match &ack.results[0].outcome {
        Outcome::Failed(e) => assert_eq!(e.code, ErrorCode::HashMismatch, "{e}"),
        other => panic!("a wrong hash was accepted: {other:?}"),
    }
    assert!(
        !collector.repository().join("sloppy/d/x").exists(),
        "content with a wrong hash stored under its final name"
    );

    let reports = tokio::time::timeout(Duration::from_secs(60), good)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        matches!(reports[0].outcome, Outcome::Stored { .. }),
        "{reports:?}"
    );
    assert_eq!(
        std::fs::read(collector.repository().join("good/data/big.bin")).unwrap(),
        content
    );
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_station_is_refused_by_id_or_fingerprint() {
    ferry_tests::init_logging();
    let pki = TestPki::new().unwrap();
    let mut collector = TestCollector::new(&pki, "").unwrap();
    let by_fingerprint = pki.station("stolen").unwrap();
    let pem = std::fs::read_to_string(&by_fingerprint.cert).unwrap();
    let fingerprint = ferry_common::pki::inspect_pem(&pem)
        .unwrap()
        .sha256_fingerprint;
    let metrics_port = ferry_tests::process::free_port().unwrap();
    collector
        .append_config(&format!("[metrics]\nlisten = \"{metrics_port}\""))
        .unwrap();
    collector.settings.revoked =
        ferry_common::revocation::Revoked::parse(["banned", fingerprint.as_str()]).unwrap();
    let endpoint = collector.start().await.unwrap();
    let refusals = || async {
        let samples = ferry_tests::http::metrics(metrics_port).await.unwrap();
        ferry_tests::http::value(&samples, "ferry_collector_connections_refused_total")
    };
    assert_eq!(refusals().await, Some(0.0));
    for station in ["banned", "stolen"] {
        let refused = ferry_tests::station::connect(&pki, station, &endpoint).await;
        assert!(refused.is_err(), "{station} was admitted");
    }
    // Both refusals are counted (the bridge counts as it refuses, before
    // the client has its error).
    assert_eq!(refusals().await, Some(2.0));
    let mut good = ferry_tests::station::connect(&pki, "good", &endpoint)
        .await
        .unwrap();
    good.send(Message::StatusQuery(StatusQuery {}))
        .await
        .unwrap();
    assert!(matches!(
        good.recv().await.unwrap(),
        Message::StatusReply(_)
    ));
    assert_eq!(refusals().await, Some(2.0), "an admitted station counted");
    collector.stop().await;
}
