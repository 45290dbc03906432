//! Path checks: what a station may name under its area of the repository.
//! Names are bytes; only what could leave the area or is no name is refused.

use ferry_common::name;
use ferry_common::station::StationId;

/// Longest relative path accepted, in bytes.
pub const MAX_PATH: usize = 4096;
/// Longest single path component accepted, in bytes (the usual NAME_MAX).
pub const MAX_COMPONENT: usize = 255;

/// Why a path offered by a station is refused. Paths are shown in their
/// text form ([`ferry_common::name`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path is empty")]
    Empty,
    #[error("path {0:?} is absolute")]
    Absolute(String),
    #[error("path {0:?} contains a NUL byte")]
    Nul(String),
    #[error("path {0:?} has a '.' or '..' component")]
    DotComponent(String),
    #[error("path {0:?} has an empty component")]
    EmptyComponent(String),
    #[error("path is {len} bytes long, the limit is {MAX_PATH}")]
    TooLong { len: usize },
    #[error("path {path:?} has a component of {len} bytes, the limit is {MAX_COMPONENT}")]
    ComponentTooLong { path: String, len: usize },
    #[error("root name {0:?} is not valid: {1}")]
    Root(String, String),
}

/// Checks a station-relative path (bytes, not necessarily UTF-8) and
/// returns it unchanged if it is safe to join under the station's area.
/// Every name Linux allows is accepted (any byte but `/` and NUL, up to
/// [`MAX_COMPONENT`] bytes; a backslash is an ordinary byte); what is
/// refused is what could leave the area or is no name at all: absolute
/// paths, `.`/`..` and empty components. Nothing is rewritten: a path that
/// would need normalising is refused, so the stored name is always the
/// offered one.
pub fn check_path(path: &[u8]) -> Result<&[u8], PathError> {
    let shown = || name::encode(path);
    if path.is_empty() {
        return Err(PathError::Empty);
    }
    if path.len() > MAX_PATH {
        return Err(PathError::TooLong { len: path.len() });
    }
    if path.contains(&0) {
        return Err(PathError::Nul(shown()));
    }
    if path.starts_with(b"/") {
        return Err(PathError::Absolute(shown()));
    }
    for component in path.split(|&b| b == b'/') {
        match component {
            b"" => return Err(PathError::EmptyComponent(shown())),
            b"." | b".." => return Err(PathError::DotComponent(shown())),
            c if c.len() > MAX_COMPONENT => {
                return Err(PathError::ComponentTooLong {
                    path: shown(),
                    len: c.len(),
                });
            }
            _ => {}
        }
    }
    Ok(path)
}

/// Checks a root name: the same rules as station ids (one safe component).
pub fn check_root(root: &str) -> Result<&str, PathError> {
    StationId::new(root).map_err(|e| PathError::Root(root.into(), e.to_string()))?;
    Ok(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_paths_are_refused() {
        let long_component = "x".repeat(256);
        let long_path = "a/".repeat(2049);
        for (path, what) in [
            ("", "empty"),
            ("/etc/passwd", "absolute"),
            ("../other/x", "'..'"),
            ("a/../../x", "'..'"),
            ("a/./b", "'.'"),
            ("a//b", "empty component"),
            ("a/", "empty component"),
            ("a\0b", "NUL"),
            (long_component.as_str(), "component of 256"),
            (long_path.as_str(), "limit is 4096"),
        ] {
            let err = check_path(path.as_bytes()).unwrap_err().to_string();
            assert!(err.contains(what), "{path:?}: {err}");
        }
        // Every name Linux allows is accepted, as it is.
        let longest = vec![b'y'; 255];
        for path in [
            &b"a"[..],
            b"2022/03/rfeye002073_220307_T175758.bin",
            "ünï cödé/..x/x..".as_bytes(),
            b"line\nbreak",
            b"a\\..\\b",
            b"..\\x",
            b"caf\xe9.bin",
            b"\x01\x7f\xff/\x1b[31m",
            &longest,
        ] {
            assert_eq!(check_path(path), Ok(path));
        }
        assert!(check_root("..").is_err());
        assert!(check_root("spectrum").is_ok());
    }
}
