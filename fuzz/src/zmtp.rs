//! The `zmtp` target: a hostile station's byte stream into the collector's
//! ZMTP guard (`ferry_common::zmtp`), which reads the greeting and READY
//! (`read_handshake`) and then every message frame (`FrameGuard::check`)
//! before the ROUTER sees a byte.
//!
//! Checked: the handshake returns (never panics, never reads past what it
//! claims); an accepted one has a non-empty identity and a length within
//! the greeting plus the largest READY; the identity's station, if any, is
//! valid. After it, the guard's verdict on the rest of the stream, with
//! the production limits, is the same whether the stream arrives whole or
//! in small reads, and the same as a plain reference reading of the ZMTP 3
//! framing rules below. Errors must display.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use ferry_common::bridge::{station_of_identity, zmq_identity};
use ferry_common::link::ServerLinkConfig;
use ferry_common::station::StationId;
use ferry_common::zmtp::{FrameGuard, GREETING_LEN, Limits, ZmtpError, read_handshake};

const MORE: u8 = 0x01;
const LONG: u8 = 0x02;
const COMMAND: u8 = 0x04;

/// Runs `data` through the handshake and the guard; panics on a violation.
pub fn check(data: &[u8]) {
    let mut reader = data;
    let mut buf = Vec::new();
    let handshake = match ready_now(read_handshake(&mut reader, &mut buf)) {
        Ok(handshake) => handshake,
        Err(error) => {
            let _ = error.to_string();
            return;
        }
    };
    assert!(!handshake.identity.is_empty());
    assert!(
        handshake.len <= GREETING_LEN + 9 + 1024,
        "{}",
        handshake.len
    );
    assert!(handshake.len <= buf.len() && buf.len() <= data.len());
    assert_eq!(buf[..], data[..buf.len()], "the handshake changed bytes");
    if let Some(station) = station_of_identity(&handshake.identity) {
        assert!(StationId::new(station.as_str()).is_ok());
    }
    let rest = &data[handshake.len..];
    let limits = ServerLinkConfig::default_limits();
    let expected = reference(rest, limits);
    let mut whole = FrameGuard::new(limits);
    let got = whole.check(rest).map_err(kind);
    assert_eq!(got, expected, "guard and reference disagree");
    // The same stream in small reads of a size the input picks.
    let step = 1 + usize::from(data.iter().fold(0u8, |a, &b| a.wrapping_add(b)) % 16);
    let mut pieces = FrameGuard::new(limits);
    let mut split = Ok(());
    for piece in rest.chunks(step) {
        split = pieces.check(piece).map_err(kind);
        if split.is_err() {
            break;
        }
    }
    assert_eq!(
        split, expected,
        "verdict depends on read boundaries ({step})"
    );
}

/// Polls a future that cannot wait (it reads from memory) to its end.
fn ready_now<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    match future.as_mut().poll(&mut cx) {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("reading from memory waited"),
    }
}

/// What the guard should say, as a plain reading of the framing rules: each
/// frame is flags (reserved bits zero, not a command), a 1-byte size or,
/// with LONG, an 8-byte big-endian size, then the body; frames, messages
/// and parts within the limits. An unfinished frame at the end is fine.
fn reference(stream: &[u8], limits: Limits) -> Result<(), &'static str> {
    let (mut at, mut message, mut parts) = (0usize, 0u64, 0u32);
    while at < stream.len() {
        let flags = stream[at];
        if flags & !(MORE | LONG | COMMAND) != 0 {
            return Err("reserved flags");
        }
        if flags & COMMAND != 0 {
            return Err("command");
        }
        let header = if flags & LONG != 0 { 9 } else { 2 };
        let Some(size) = stream.get(at + 1..at + header) else {
            return Ok(());
        };
        let size = size.iter().fold(0u64, |n, &b| (n << 8) | u64::from(b));
        if size > limits.max_frame {
            return Err("frame too large");
        }
        message += size;
        parts += 1;
        if message > limits.max_message {
            return Err("message too large");
        }
        if parts > limits.max_parts {
            return Err("too many parts");
        }
        if flags & MORE == 0 {
            (message, parts) = (0, 0);
        }
        at = at
            .saturating_add(header)
            .saturating_add(usize::try_from(size).unwrap_or(usize::MAX));
    }
    Ok(())
}

fn kind(error: ZmtpError) -> &'static str {
    let _ = error.to_string();
    match error {
        ZmtpError::ReservedFlags(_) => "reserved flags",
        ZmtpError::CommandAfterHandshake => "command",
        ZmtpError::FrameTooLarge { .. } => "frame too large",
        ZmtpError::MessageTooLarge { .. } => "message too large",
        ZmtpError::TooManyParts { .. } => "too many parts",
        other => panic!("the frame guard returned a handshake error: {other}"),
    }
}

fn greeting(mechanism: &[u8]) -> Vec<u8> {
    let mut greeting = vec![0xFF, 0, 0, 0, 0, 0, 0, 0, 1, 0x7F, 3, 1];
    let mut name = [0u8; 20];
    name[..mechanism.len()].copy_from_slice(mechanism);
    greeting.extend_from_slice(&name);
    greeting.push(0); // as-server
    greeting.extend_from_slice(&[0u8; 31]);
    greeting
}

fn ready(properties: &[(&str, &[u8])]) -> Vec<u8> {
    let mut body = vec![5];
    body.extend_from_slice(b"READY");
    for (name, value) in properties {
        body.push(u8::try_from(name.len()).expect("short property name"));
        body.extend_from_slice(name.as_bytes());
        let len = u32::try_from(value.len()).expect("short property value");
        body.extend_from_slice(&len.to_be_bytes());
        body.extend_from_slice(value);
    }
    let mut frame = vec![COMMAND];
    frame.push(u8::try_from(body.len()).expect("short READY"));
    frame.extend_from_slice(&body);
    frame
}

fn frame(flags: u8, body: &[u8]) -> Vec<u8> {
    let mut frame = Vec::new();
    match u8::try_from(body.len()) {
        Ok(len) if flags & LONG == 0 => frame.extend_from_slice(&[flags, len]),
        _ => {
            frame.push(flags | LONG);
            frame.extend_from_slice(&(body.len() as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(body);
    frame
}

/// A station's opening as the agent's DEALER sends it (greeting, READY with
/// its identity, a Ferry frame), and hostile variants.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let station = StationId::new("rfeye002073").expect("valid station id");
    let identity = zmq_identity(&station, 0x5eed_f00d_cafe_0001);
    let dealer = ready(&[("Socket-Type", b"DEALER"), ("Identity", &identity)]);
    let opening = [greeting(b"NULL"), dealer.clone()].concat();
    // An empty delimiter part then a small Ferry frame (a Ping).
    let ping = [frame(MORE, b""), frame(0, &[0, 1, 10, 42])].concat();
    let chunk = frame(LONG, &vec![0xA5; 300]);
    let heartbeat = vec![COMMAND, 5, 4, b'P', b'I', b'N', b'G'];
    let huge = [vec![LONG], u64::MAX.to_be_bytes().to_vec()].concat();
    [
        ("dealer_ping", [opening.clone(), ping.clone()].concat()),
        ("dealer_long_frame", [opening.clone(), chunk].concat()),
        ("dealer_heartbeat", [opening.clone(), heartbeat].concat()),
        ("dealer_huge_frame", [opening.clone(), huge].concat()),
        (
            "router",
            [
                greeting(b"NULL"),
                ready(&[("Socket-Type", b"ROUTER"), ("Identity", &identity)]),
            ]
            .concat(),
        ),
        ("curve", [greeting(b"CURVE"), dealer].concat()),
    ]
    .into_iter()
    .map(|(name, bytes)| (name.to_owned(), bytes))
    .collect()
}
