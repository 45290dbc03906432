//! The `frame` target: hostile bytes into the wire frame decoders
//! (`ferry_common::codec::decode`, and `decode_shared`, which the collector
//! runs on every frame a station sends).
//!
//! Checked: decoding returns (never panics, never aborts on an allocation:
//! the runner sets `-malloc_limit_mb` to twice the frame limit); both
//! decoders agree; anything
//! over the frame limit is refused; whatever decodes re-encodes within the
//! limit to a frame that decodes to the same message, and re-encoding that is
//! a fixed point; an error message can be displayed.

use ferry_common::codec::{self, MAX_FRAME};
use ferry_common::protocol::*;
use ferry_common::station::StationId;

/// Decodes `data` and checks the invariants above; panics on a violation.
pub fn check(data: &[u8]) {
    let decoded = codec::decode(data);
    let shared = codec::decode_shared(&data.to_vec().into());
    let frame = match decoded {
        Ok(frame) => frame,
        Err(error) => {
            let _ = error.to_string();
            assert!(
                shared.is_err(),
                "decode_shared accepted what decode refused"
            );
            return;
        }
    };
    let shared = shared.expect("decode_shared refused what decode accepted");
    assert_eq!(shared, frame, "decode_shared and decode disagree");
    assert!(data.len() <= MAX_FRAME, "a frame over the limit decoded");
    assert!(
        (MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&frame.version),
        "a frame of unknown version {} decoded",
        frame.version
    );
    if let Message::Hello(hello) = &frame.message {
        assert!(
            StationId::new(hello.station.as_str()).is_ok(),
            "an invalid station id decoded: {:?}",
            hello.station
        );
    }
    let bytes = codec::encode(&frame.message).expect("a decoded message re-encodes");
    assert!(bytes.len() <= MAX_FRAME);
    let again = codec::decode(&bytes).expect("a re-encoded message decodes");
    assert_eq!(again.message, frame.message, "decode(encode(m)) != m");
    let twice = codec::encode(&again.message).expect("re-encodes again");
    assert_eq!(twice, bytes, "encoding is not a fixed point");
}

/// One real frame of every message (and of every variant inside one),
/// encoded by the production encoder.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    messages()
        .into_iter()
        .map(|(name, message)| {
            let bytes = codec::encode(&message).expect("seed messages encode");
            (name.to_owned(), bytes)
        })
        .collect()
}

fn messages() -> Vec<(&'static str, Message)> {
    let station = StationId::new("rfeye002073").expect("valid station id");
    let sha = |byte: u8| [byte; 32];
    let refused = ErrorFrame::new(
        ErrorCode::PathRefused,
        "path \"../etc/passwd\" has a '.' or '..' component",
    );
    let offer = |id: u32, root: &str, path: &str, size: u64, sha256: Option<Sha256>| FileOffer {
        id,
        root: root.into(),
        path: path.into(),
        size,
        mtime_ns: 1_646_675_878_123_456_789,
        sha256,
    };
    // The start of an RFeye .bin file: a short header, then samples.
    let mut data = b"RFEYE\x00\x02\x00rfeye002073\x00".to_vec();
    data.extend((0u8..=255).map(|b| b.wrapping_mul(37)));
    vec![
        (
            "hello",
            Message::Hello(Hello {
                station: station.clone(),
                min_version: MIN_PROTOCOL_VERSION,
                max_version: PROTOCOL_VERSION,
                software: "ferry-agent 0.1.0".into(),
                session: 0x5eed_f00d_cafe_0001,
            }),
        ),
        (
            "welcome",
            Message::Welcome(Welcome {
                version: PROTOCOL_VERSION,
                software: "ferry-collector 0.1.0".into(),
                max_chunk: 1 << 20,
                window: 16 << 20,
                heartbeat_ms: 5000,
            }),
        ),
        (
            "offer",
            Message::Offer(Offer {
                batch: 1,
                files: vec![
                    offer(
                        0,
                        "rfeye",
                        "2022/03/rfeye002073_220307_T175758.bin",
                        3_145_728,
                        None,
                    ),
                    offer(
                        1,
                        "rfeye",
                        "2022/03/rfeye002073_220307_T175858.bin",
                        3_145_728,
                        Some(sha(0xab)),
                    ),
                    offer(2, "logs", "node/indexerD.log", 0, None),
                    offer(3, "rfeye", "ünïcödé/line\nbreak.csv", 17, None),
                ],
            }),
        ),
        (
            "offer_reply_from",
            Message::OfferReply(OfferReply {
                batch: 1,
                files: vec![FileNeed {
                    id: 0,
                    need: Need::From { offset: 1 << 20 },
                }],
            }),
        ),
        (
            "offer_reply_already_have",
            Message::OfferReply(OfferReply {
                batch: 1,
                files: vec![FileNeed {
                    id: 1,
                    need: Need::AlreadyHave,
                }],
            }),
        ),
        (
            "offer_reply_refused",
            Message::OfferReply(OfferReply {
                batch: 1,
                files: vec![FileNeed {
                    id: 2,
                    need: Need::Refused(refused.clone()),
                }],
            }),
        ),
        (
            "offer_reply_mixed",
            Message::OfferReply(OfferReply {
                batch: 2,
                files: vec![
                    FileNeed {
                        id: 0,
                        need: Need::From { offset: 0 },
                    },
                    FileNeed {
                        id: 1,
                        need: Need::AlreadyHave,
                    },
                    FileNeed {
                        id: 2,
                        need: Need::Refused(refused.clone()),
                    },
                ],
            }),
        ),
        (
            "chunk",
            Message::Chunk(Chunk {
                batch: 1,
                file: 0,
                offset: 1 << 20,
                data: data.into(),
            }),
        ),
        ("credit", Message::Credit(Credit { consumed: 5 << 20 })),
        (
            "commit",
            Message::Commit(Commit {
                batch: 1,
                file: 0,
                size: 3_145_728,
                sha256: sha(0x11),
            }),
        ),
        (
            "ack_stored",
            Message::Ack(Ack {
                batch: 1,
                results: vec![FileResult {
                    id: 0,
                    outcome: Outcome::Stored {
                        sha256: sha(0x11),
                        stored_as: "rfeye002073/rfeye/2022/03/rfeye002073_220307_T175758.bin"
                            .into(),
                    },
                }],
            }),
        ),
        (
            "ack_already_stored",
            Message::Ack(Ack {
                batch: 1,
                results: vec![FileResult {
                    id: 1,
                    outcome: Outcome::AlreadyStored {
                        sha256: sha(0xab),
                        stored_as:
                            "rfeye002073/rfeye/2022/03/rfeye002073_220307_T175858.abababababab.bin"
                                .into(),
                    },
                }],
            }),
        ),
        (
            "ack_failed",
            Message::Ack(Ack {
                batch: 1,
                results: vec![FileResult {
                    id: 2,
                    outcome: Outcome::Failed(ErrorFrame::new(
                        ErrorCode::HashMismatch,
                        "content hashed to 1111…, the agent committed 2222…",
                    )),
                }],
            }),
        ),
        (
            "ack_mixed",
            Message::Ack(Ack {
                batch: 2,
                results: vec![
                    FileResult {
                        id: 0,
                        outcome: Outcome::Stored {
                            sha256: sha(1),
                            stored_as: "rfeye002073/logs/a.log".into(),
                        },
                    },
                    FileResult {
                        id: 1,
                        outcome: Outcome::AlreadyStored {
                            sha256: sha(2),
                            stored_as: "rfeye002073/logs/b.log".into(),
                        },
                    },
                    FileResult {
                        id: 2,
                        outcome: Outcome::Failed(refused.clone()),
                    },
                ],
            }),
        ),
        ("status_query", Message::StatusQuery(StatusQuery {})),
        (
            "status_reply",
            Message::StatusReply(StatusReply {
                station,
                files: 120_345,
                bytes: 377_957_122_048,
                pending: (3, 250),
                errors: 1,
                last_backup: Some(1_646_675_999),
            }),
        ),
        ("ping", Message::Ping(Ping { nonce: 42 })),
        ("pong", Message::Pong(Ping { nonce: 42 })),
        (
            "error_disk_full",
            Message::Error(ErrorFrame::new(
                ErrorCode::DiskFull,
                "repository below its 1073741824-byte reserve",
            )),
        ),
        (
            "error_unsupported_version",
            Message::Error(ErrorFrame::new(
                ErrorCode::UnsupportedVersion,
                "agent speaks protocol 2..=3, collector speaks 1..=1",
            )),
        ),
    ]
}
