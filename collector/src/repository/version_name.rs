//! Version names: where a version that no longer holds the plain name is
//! kept (`name.<12 hex of its sha256>.ext`), always within 255 bytes.

use ferry_common::protocol::Sha256;

use super::MAX_COMPONENT;
use super::hex;

/// Hex digits of the content hash put in a version name.
const SHORT_HASH: usize = 12;
/// Longest extension kept after the tag of a version name: a longer "extension"
/// is part of the stem (so a cut stem always leaves room).
const MAX_EXT: usize = 32;

/// The version name of `path` (bytes, `/`-separated) for content
/// `sha256`: `dir/name.<12 hex>.ext`, or with all 64 hex digits if `full`
/// (`name.<hex>` without an extension), so a version still opens with the
/// tools its extension calls for.
///
/// The last component always fits in [`MAX_COMPONENT`] bytes: where it
/// would not, the stem is cut and followed by `~` and 16 hex digits of the
/// SHA-256 of the whole name, so two long names that share their first
/// bytes keep different version names. The cut backs off to the start of a
/// UTF-8 character it would split; in a name that is not UTF-8 it falls
/// where it falls (names are bytes, any byte but `/` and NUL is allowed).
pub fn version_name(path: &[u8], sha256: &Sha256, full: bool) -> Vec<u8> {
    let hash = hex(sha256);
    let tag = if full { &hash[..] } else { &hash[..SHORT_HASH] };
    let (dir, name) = match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..=i], &path[i + 1..]),
        None => (&path[..0], path),
    };
    let (stem, ext) = match name.iter().rposition(|&b| b == b'.') {
        Some(i) if i > 0 && name.len() - i - 1 <= MAX_EXT => (&name[..i], Some(&name[i + 1..])),
        _ => (name, None),
    };
    let tail = |out: &mut Vec<u8>| {
        out.push(b'.');
        out.extend_from_slice(tag.as_bytes());
        if let Some(ext) = ext {
            out.push(b'.');
            out.extend_from_slice(ext);
        }
    };
    let mut tagged = stem.to_vec();
    tail(&mut tagged);
    if tagged.len() > MAX_COMPONENT {
        let mut mark = ring::digest::Context::new(&ring::digest::SHA256);
        mark.update(name);
        let mark = format!("~{}", &hex(mark.finish().as_ref())[..16]);
        let room = MAX_COMPONENT - (tagged.len() - stem.len()) - mark.len();
        let mut cut = room.min(stem.len());
        if let Err(e) = std::str::from_utf8(&stem[..cut])
            && e.error_len().is_none()
        {
            // The cut splits a character that was whole: back off to it.
            cut = e.valid_up_to();
        }
        tagged = stem[..cut].to_vec();
        tagged.extend_from_slice(mark.as_bytes());
        tail(&mut tagged);
    }
    let mut out = dir.to_vec();
    out.extend_from_slice(&tagged);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repository::check_path;

    #[test]
    fn version_names_keep_the_extension_and_always_fit_in_255_bytes() {
        let s = [0xabu8; 32];
        let v = |p: &[u8]| version_name(p, &s, false);
        assert_eq!(v(b"a/b/x.bin"), b"a/b/x.abababababab.bin");
        assert_eq!(v(b"noext"), b"noext.abababababab");
        assert_eq!(v(b"d/.hidden"), b"d/.hidden.abababababab");
        assert_eq!(v(b"caf\xe9.bin"), b"caf\xe9.abababababab.bin");
        // A name of 250 bytes: cut, marked, still under 255.
        let long = [vec![b'n'; 246], b".bin".to_vec()].concat();
        for full in [false, true] {
            let name = version_name(&long, &s, full);
            assert!(name.len() <= MAX_COMPONENT, "{} bytes", name.len());
            assert!(name.ends_with(b".bin"));
            assert!(name.starts_with(b"nnnn"));
        }
        // Cut inside a character of a UTF-8 name: the character goes whole.
        let accents = [vec![b'a'], "é".repeat(125).into_bytes(), b".csv".to_vec()].concat();
        assert_eq!(accents.len(), 255);
        let name = version_name(&accents, &s, false);
        assert!(name.len() <= MAX_COMPONENT);
        assert!(std::str::from_utf8(&name).is_ok(), "{name:?}");
        // A name that is not UTF-8 is cut where it is cut, and stays a name.
        let latin1 = vec![0xe9; 255];
        let name = version_name(&latin1, &s, true);
        assert!(name.len() <= MAX_COMPONENT && !name.contains(&b'/') && !name.contains(&0));
    }

    #[test]
    fn version_names_are_unique_and_fit_for_any_name() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut seen = std::collections::HashMap::new();
        for _ in 0..20_000 {
            // Names of 1..=255 bytes, any byte but '/' and NUL, many long
            // and sharing a prefix, many with dots.
            let len = match next() % 3 {
                0 => 1 + (next() % 20) as usize,
                _ => 200 + (next() % 56) as usize,
            };
            let mut name: Vec<u8> = (0..len)
                .map(|i| match next() % 8 {
                    _ if i < 190 && len > 100 => b'p',
                    0 => b'.',
                    1 => 0xc3,
                    2 => 0xa9,
                    _ => (next() % 254 + 1) as u8,
                })
                .map(|b| if b == b'/' { b'_' } else { b })
                .collect();
            name.truncate(255);
            let content = [(next() % 3) as u8; 32];
            for full in [false, true] {
                let version = version_name(&name, &content, full);
                assert!(version.len() <= MAX_COMPONENT, "{} bytes", version.len());
                assert!(check_path(&version).is_ok());
                if let Some(other) = seen.insert(version.clone(), (name.clone(), content))
                    && other != (name.clone(), content)
                {
                    panic!("{name:?} and {other:?} share the version name {version:?}");
                }
            }
        }
    }
}
