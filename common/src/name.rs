//! Names are bytes: the one reversible text form of a file name or path,
//! used wherever a database column, a log line or a message needs text.
//!
//! Linux allows any byte but `/` and NUL in a name, so a station's paths are
//! byte strings, not necessarily UTF-8 (Latin-1 names from instrument
//! software are common). They travel and are stored as bytes; where text is
//! needed they are written in this encoding:
//!
//! - every valid UTF-8 character stands for itself, except `\`;
//! - `\` is written `\\`;
//! - every byte that is not part of a valid UTF-8 character is written
//!   `\x` and two lower-case hex digits (`caf\xe9.bin` for Latin-1 "café").
//!
//! The encoding is injective (two different byte strings never have the same
//! text) and [`decode`] inverts it. A name that is valid UTF-8 without a
//! backslash is its own text, so catalogs written before names were bytes
//! (when backslashes were refused) already hold this encoding.

use std::fmt::Write as _;

/// Why a text is not the encoding of any byte string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error(
        "{text:?} has a backslash at byte {at} that starts no escape (`\\\\` or `\\x` and two hex digits)"
    )]
    BadEscape { text: String, at: usize },
}

/// The text form of `bytes` (see the module documentation).
pub fn encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c == '\\' {
                out.push_str("\\\\");
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

/// The byte string whose text form is `text`.
pub fn decode(text: &str) -> Result<Vec<u8>, NameError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'\\' {
            out.push(bytes[i]);
            i += 1;
            continue;
        }
        let bad = || NameError::BadEscape {
            text: text.to_owned(),
            at: i,
        };
        match bytes.get(i + 1) {
            Some(b'\\') => {
                out.push(b'\\');
                i += 2;
            }
            Some(b'x') => {
                let hex = bytes.get(i + 2..i + 4).ok_or_else(bad)?;
                let digits = std::str::from_utf8(hex).map_err(|_| bad())?;
                let byte = u8::from_str_radix(digits, 16).map_err(|_| bad())?;
                // Only bytes that cannot be read as UTF-8 are escaped, and
                // only in lower case: any other spelling would make a second
                // text for one name.
                if digits != format!("{byte:02x}") {
                    return Err(bad());
                }
                out.push(byte);
                i += 4;
            }
            _ => return Err(bad()),
        }
    }
    // A text that escapes a byte which, put back, forms valid UTF-8 with its
    // neighbours is not what `encode` writes: refuse it, so that every name
    // has exactly one text.
    if encode(&out) != text {
        return Err(NameError::BadEscape {
            text: text.to_owned(),
            at: 0,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small seeded generator (xorshift), so a failure replays.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        /// A name of up to 40 bytes, biased towards backslashes, `x`, hex
        /// digits and high bytes, where an encoding would go wrong.
        fn name(&mut self) -> Vec<u8> {
            let len = (self.next() % 40) as usize;
            (0..len)
                .map(|_| match self.next() % 6 {
                    0 => b'\\',
                    1 => b'x',
                    2 => b"0123456789abcdefABCDEF"[(self.next() % 22) as usize],
                    3 => 0x80 | (self.next() % 0x80) as u8,
                    4 => 0xc0 | (self.next() % 0x40) as u8,
                    _ => self.next() as u8,
                })
                .collect()
        }
    }

    #[test]
    fn latin1_names_stay_apart_and_utf8_names_are_their_own_text() {
        assert_eq!(encode(b"caf\xe9.bin"), "caf\\xe9.bin");
        assert_eq!(encode(b"caf\xe8.bin"), "caf\\xe8.bin");
        assert_eq!(encode("café.bin".as_bytes()), "café.bin");
        assert_eq!(encode(b"a\\b"), "a\\\\b");
        assert_eq!(encode(b"line\nbreak"), "line\nbreak");
        assert_eq!(
            encode(b"rfeye002073_220307_T175758.bin"),
            "rfeye002073_220307_T175758.bin"
        );
    }

    #[test]
    fn every_byte_string_round_trips_and_no_two_share_a_text() {
        let mut rng = Rng(0x5eed_f3a7_0001);
        let mut seen = std::collections::HashMap::new();
        // Every single byte and pair of bytes, then random names.
        let mut names: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
        for a in 0..=255u8 {
            for b in [0u8, b'\\', b'x', b'9', 0x80, 0xa9, 0xc3, 0xff] {
                names.push(vec![a, b]);
            }
        }
        names.extend((0..50_000).map(|_| rng.name()));
        for name in names {
            let text = encode(&name);
            assert_eq!(decode(&text).as_deref(), Ok(&name[..]), "{text:?}");
            if let Some(other) = seen.insert(text.clone(), name.clone()) {
                assert_eq!(other, name, "two names share the text {text:?}");
            }
        }
    }

    #[test]
    fn texts_that_no_name_encodes_to_are_refused() {
        for text in [
            "a\\",
            "a\\q",
            "\\x",
            "\\xe",
            "\\xzz",
            "\\xE9",
            "\\x41",
            "\\xc3\\xa9",
        ] {
            assert!(decode(text).is_err(), "{text:?}");
        }
    }
}
