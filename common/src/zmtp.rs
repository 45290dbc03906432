//! A guard over the ZMTP 3 byte stream a station sends to the collector.
//!
//! The `zeromq` crate trusts its peers: it takes the identity a peer announces
//! in READY, reserves whatever a frame header claims, and drops a peer that
//! sends a heartbeat command. The collector's TLS bridge therefore reads the
//! station's half of the stream through this guard before the ROUTER sees a
//! byte: the greeting must ask for the NULL mechanism, the first command must
//! be READY from a DEALER with an identity that the bridge then checks against
//! the certificate, and after that only message frames within the size limits
//! may pass. Anything else ends the connection with a [`ZmtpError`].

use tokio::io::{AsyncRead, AsyncReadExt};

/// Length of a ZMTP 3 greeting.
pub const GREETING_LEN: usize = 64;
/// Largest READY command accepted (identity ≤ 255 bytes plus socket type).
const MAX_READY: u64 = 1024;

const FLAG_MORE: u8 = 0x01;
const FLAG_LONG: u8 = 0x02;
const FLAG_COMMAND: u8 = 0x04;

/// Size limits the guard enforces on message frames.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest single ZMTP frame.
    pub max_frame: u64,
    /// Largest multi-part message (all parts together).
    pub max_message: u64,
    /// Most parts in one message.
    pub max_parts: u32,
}

/// A violation of what Ferry accepts from a station on the wire.
#[derive(Debug, thiserror::Error)]
pub enum ZmtpError {
    #[error("connection closed during the zmtp handshake")]
    ClosedEarly,
    #[error("read failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a zmtp 3 greeting (signature bytes {0:02x?})")]
    BadSignature([u8; 2]),
    #[error("zmtp version {major}.{minor} is not supported, 3.x is required")]
    Version { major: u8, minor: u8 },
    #[error("zmtp mechanism {0:?} refused: only NULL runs inside the TLS channel")]
    Mechanism(String),
    #[error("first zmtp frame is not a command")]
    NotACommand,
    #[error("zmtp command of {size} bytes is over the {MAX_READY}-byte limit")]
    CommandTooLarge { size: u64 },
    #[error("first zmtp command is {0:?}, READY was expected")]
    NotReady(String),
    #[error("malformed READY command: {0}")]
    BadReady(&'static str),
    #[error("socket type {0:?} refused: stations connect with a DEALER")]
    SocketType(String),
    #[error("READY carries no identity")]
    NoIdentity,
    #[error(
        "zmtp command frame after the handshake (a heartbeat PING?); ZMTP heartbeats must be off, Ferry pings in its own protocol"
    )]
    CommandAfterHandshake,
    #[error("zmtp frame flags {0:#04x} use reserved bits")]
    ReservedFlags(u8),
    #[error("zmtp frame of {size} bytes is over the {limit}-byte limit")]
    FrameTooLarge { size: u64, limit: u64 },
    #[error("zmtp message of {size} bytes is over the {limit}-byte limit")]
    MessageTooLarge { size: u64, limit: u64 },
    #[error("zmtp message has more than {limit} parts")]
    TooManyParts { limit: u32 },
}

/// What the handshake said, and the bytes it took.
#[derive(Debug)]
pub struct Handshake {
    /// The identity the peer announced in READY (not yet checked).
    pub identity: Vec<u8>,
    /// Length of greeting plus READY at the start of the buffer; any bytes
    /// after it were read ahead and belong to the message stream.
    pub len: usize,
}

/// Reads the greeting and the READY command from `reader` into `buf` and
/// validates them. `buf` keeps every byte read, so the caller can forward it.
pub async fn read_handshake<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
) -> Result<Handshake, ZmtpError> {
    fill(reader, buf, GREETING_LEN).await?;
    check_greeting(&buf[..GREETING_LEN])?;

    fill(reader, buf, GREETING_LEN + 2).await?;
    let flags = buf[GREETING_LEN];
    if flags & FLAG_COMMAND == 0 {
        return Err(ZmtpError::NotACommand);
    }
    let (size, header) = if flags & FLAG_LONG != 0 {
        fill(reader, buf, GREETING_LEN + 9).await?;
        let mut be = [0u8; 8];
        be.copy_from_slice(&buf[GREETING_LEN + 1..GREETING_LEN + 9]);
        (u64::from_be_bytes(be), 9)
    } else {
        (u64::from(buf[GREETING_LEN + 1]), 2)
    };
    if size > MAX_READY {
        return Err(ZmtpError::CommandTooLarge { size });
    }
    let start = GREETING_LEN + header;
    // `size` is at most MAX_READY, so the cast cannot truncate.
    let end = start + size as usize;
    fill(reader, buf, end).await?;
    let identity = parse_ready(&buf[start..end])?;
    Ok(Handshake { identity, len: end })
}

async fn fill<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    want: usize,
) -> Result<(), ZmtpError> {
    let mut chunk = [0u8; 1024];
    while buf.len() < want {
        let n = reader.read(&mut chunk).await?;
        if n == 0 {
            return Err(ZmtpError::ClosedEarly);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(())
}

fn check_greeting(greeting: &[u8]) -> Result<(), ZmtpError> {
    if greeting[0] != 0xFF || greeting[9] != 0x7F {
        return Err(ZmtpError::BadSignature([greeting[0], greeting[9]]));
    }
    let (major, minor) = (greeting[10], greeting[11]);
    if major < 3 {
        return Err(ZmtpError::Version { major, minor });
    }
    let mechanism = &greeting[12..32];
    let name_len = mechanism.iter().position(|&b| b == 0).unwrap_or(20);
    if &mechanism[..name_len] != b"NULL" {
        return Err(ZmtpError::Mechanism(
            String::from_utf8_lossy(&mechanism[..name_len]).into_owned(),
        ));
    }
    Ok(())
}

fn parse_ready(body: &[u8]) -> Result<Vec<u8>, ZmtpError> {
    let (&name_len, rest) = body.split_first().ok_or(ZmtpError::BadReady("empty"))?;
    let name = rest
        .get(..usize::from(name_len))
        .ok_or(ZmtpError::BadReady("command name cut short"))?;
    if name != b"READY" {
        return Err(ZmtpError::NotReady(
            String::from_utf8_lossy(name).into_owned(),
        ));
    }
    let mut props = &rest[usize::from(name_len)..];
    let (mut socket_type, mut identity) = (None, None);
    while let Some((&key_len, rest)) = props.split_first() {
        let key = rest
            .get(..usize::from(key_len))
            .ok_or(ZmtpError::BadReady("property name cut short"))?;
        let rest = &rest[usize::from(key_len)..];
        let (len, rest) = rest
            .split_first_chunk::<4>()
            .ok_or(ZmtpError::BadReady("property length cut short"))?;
        let len = u32::from_be_bytes(*len) as usize;
        let value = rest
            .get(..len)
            .ok_or(ZmtpError::BadReady("property value cut short"))?;
        if key.eq_ignore_ascii_case(b"Socket-Type") {
            socket_type = Some(value);
        } else if key.eq_ignore_ascii_case(b"Identity") {
            identity = Some(value);
        }
        props = &rest[len..];
    }
    match socket_type {
        Some(b"DEALER") => {}
        Some(other) => {
            return Err(ZmtpError::SocketType(
                String::from_utf8_lossy(other).into_owned(),
            ));
        }
        None => return Err(ZmtpError::BadReady("no Socket-Type property")),
    }
    match identity {
        Some(id) if !id.is_empty() => Ok(id.to_vec()),
        _ => Err(ZmtpError::NoIdentity),
    }
}

/// Checks the message frames that follow the handshake, across any split of
/// the stream into reads.
#[derive(Debug)]
pub struct FrameGuard {
    limits: Limits,
    header: [u8; 9],
    header_len: usize,
    body_left: u64,
    message_size: u64,
    message_parts: u32,
}

impl FrameGuard {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            header: [0; 9],
            header_len: 0,
            body_left: 0,
            message_size: 0,
            message_parts: 0,
        }
    }

    /// Inspects the next bytes of the stream; an error means the connection
    /// must end before these bytes are forwarded.
    pub fn check(&mut self, mut data: &[u8]) -> Result<(), ZmtpError> {
        while !data.is_empty() {
            if self.body_left > 0 {
                let take = self.body_left.min(data.len() as u64);
                self.body_left -= take;
                data = &data[take as usize..];
                continue;
            }
            self.header[self.header_len] = data[0];
            self.header_len += 1;
            data = &data[1..];
            let flags = self.header[0];
            if self.header_len == 1 {
                if flags & !(FLAG_MORE | FLAG_LONG | FLAG_COMMAND) != 0 {
                    return Err(ZmtpError::ReservedFlags(flags));
                }
                if flags & FLAG_COMMAND != 0 {
                    return Err(ZmtpError::CommandAfterHandshake);
                }
            }
            let need = if flags & FLAG_LONG != 0 { 9 } else { 2 };
            if self.header_len == need {
                self.header_len = 0;
                let size = if need == 9 {
                    let mut be = [0u8; 8];
                    be.copy_from_slice(&self.header[1..9]);
                    u64::from_be_bytes(be)
                } else {
                    u64::from(self.header[1])
                };
                self.frame(flags, size)?;
            }
        }
        Ok(())
    }

    fn frame(&mut self, flags: u8, size: u64) -> Result<(), ZmtpError> {
        let limits = self.limits;
        if size > limits.max_frame {
            return Err(ZmtpError::FrameTooLarge {
                size,
                limit: limits.max_frame,
            });
        }
        self.message_size += size;
        self.message_parts += 1;
        if self.message_size > limits.max_message {
            return Err(ZmtpError::MessageTooLarge {
                size: self.message_size,
                limit: limits.max_message,
            });
        }
        if self.message_parts > limits.max_parts {
            return Err(ZmtpError::TooManyParts {
                limit: limits.max_parts,
            });
        }
        if flags & FLAG_MORE == 0 {
            self.message_size = 0;
            self.message_parts = 0;
        }
        self.body_left = size;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_frame: 1000,
        max_message: 1500,
        max_parts: 3,
    };

    fn greeting(mechanism: &[u8]) -> Vec<u8> {
        let mut g = vec![0xFF, 0, 0, 0, 0, 0, 0, 0, 0, 0x7F, 3, 1];
        let mut mech = [0u8; 20];
        mech[..mechanism.len()].copy_from_slice(mechanism);
        g.extend_from_slice(&mech);
        g.extend_from_slice(&[0u8; 32]);
        g
    }

    fn ready(props: &[(&str, &[u8])]) -> Vec<u8> {
        let mut body = vec![5];
        body.extend_from_slice(b"READY");
        for (k, v) in props {
            body.push(k.len() as u8);
            body.extend_from_slice(k.as_bytes());
            body.extend_from_slice(&(v.len() as u32).to_be_bytes());
            body.extend_from_slice(v);
        }
        let mut frame = vec![FLAG_COMMAND, body.len() as u8];
        frame.extend_from_slice(&body);
        frame
    }

    async fn handshake(bytes: Vec<u8>) -> Result<Handshake, ZmtpError> {
        let mut reader = &bytes[..];
        let mut buf = Vec::new();
        read_handshake(&mut reader, &mut buf).await
    }

    #[tokio::test]
    async fn a_dealer_handshake_yields_its_identity_and_length() {
        let mut bytes = greeting(b"NULL");
        bytes.extend(ready(&[
            ("Socket-Type", b"DEALER"),
            ("Identity", b"s1/abc"),
        ]));
        let len = bytes.len();
        bytes.extend_from_slice(&[0, 3, 1, 2, 3]); // a message read ahead
        let hs = handshake(bytes).await.unwrap();
        assert_eq!(hs.identity, b"s1/abc");
        assert_eq!(hs.len, len);
    }

    #[tokio::test]
    async fn bad_handshakes_are_refused_with_the_reason() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"GET / HTTP/1.1\r\n".repeat(8), "not a zmtp 3 greeting"),
            (
                [greeting(b"CURVE"), ready(&[("Socket-Type", b"DEALER")])].concat(),
                "mechanism \"CURVE\"",
            ),
            (
                [
                    greeting(b"NULL"),
                    ready(&[("Socket-Type", b"ROUTER"), ("Identity", b"x")]),
                ]
                .concat(),
                "socket type \"ROUTER\"",
            ),
            (
                [greeting(b"NULL"), ready(&[("Socket-Type", b"DEALER")])].concat(),
                "no identity",
            ),
            (
                [
                    greeting(b"NULL"),
                    vec![FLAG_COMMAND | FLAG_LONG],
                    u64::MAX.to_be_bytes().to_vec(),
                ]
                .concat(),
                "over the 1024-byte limit",
            ),
            ([greeting(b"NULL"), vec![0, 1, 0]].concat(), "not a command"),
            (greeting(b"NULL")[..40].to_vec(), "closed during"),
        ];
        for (bytes, expected) in cases {
            let err = handshake(bytes).await.unwrap_err().to_string();
            assert!(err.contains(expected), "{err:?} lacks {expected:?}");
        }
    }

    #[test]
    fn frames_within_limits_pass_whatever_the_read_boundaries() {
        let mut stream = Vec::new();
        stream.extend_from_slice(&[FLAG_MORE, 3, 1, 2, 3]);
        stream.extend_from_slice(&[FLAG_LONG, 0, 0, 0, 0, 0, 0, 3, 0xE8]);
        stream.extend(std::iter::repeat_n(9u8, 1000));
        stream.extend_from_slice(&[0, 0]);
        for split in 1..40 {
            let mut guard = FrameGuard::new(LIMITS);
            for piece in stream.chunks(split) {
                guard.check(piece).unwrap();
            }
        }
    }

    #[test]
    fn oversized_frames_messages_and_commands_are_refused() {
        let mut guard = FrameGuard::new(LIMITS);
        let err = guard
            .check(&[FLAG_LONG, 0, 0, 0, 0, 0, 0, 3, 0xE9])
            .unwrap_err();
        assert!(matches!(
            err,
            ZmtpError::FrameTooLarge {
                size: 1001,
                limit: 1000
            }
        ));

        let mut guard = FrameGuard::new(LIMITS);
        let mut first = vec![FLAG_MORE | FLAG_LONG, 0, 0, 0, 0, 0, 0, 3, 0xE8];
        first.extend(std::iter::repeat_n(0u8, 1000));
        guard.check(&first).unwrap();
        let mut second = vec![FLAG_LONG, 0, 0, 0, 0, 0, 0, 3, 0xE8];
        second.extend(std::iter::repeat_n(0u8, 10));
        assert!(matches!(
            guard.check(&second),
            Err(ZmtpError::MessageTooLarge { .. })
        ));

        let mut guard = FrameGuard::new(LIMITS);
        let parts = [FLAG_MORE, 0, FLAG_MORE, 0, FLAG_MORE, 0, 0, 0];
        assert!(matches!(
            guard.check(&parts),
            Err(ZmtpError::TooManyParts { limit: 3 })
        ));

        let mut guard = FrameGuard::new(LIMITS);
        let ping = [FLAG_COMMAND, 5, 4, b'P', b'I', b'N', b'G'];
        let err = guard.check(&ping).unwrap_err();
        assert!(err.to_string().contains("heartbeats must be off"), "{err}");

        let mut guard = FrameGuard::new(LIMITS);
        assert!(matches!(
            guard.check(&[0x80, 0]),
            Err(ZmtpError::ReservedFlags(0x80))
        ));
    }
}
