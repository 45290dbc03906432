//! The `path` target: hostile station-relative paths and root names into the
//! collector's checks (`ferry_collector::repository::check_path` and
//! `check_root`), which stand between a station's offer and the filesystem.
//!
//! Checked for every accepted path: it is returned unchanged; it is not
//! empty, not absolute, within the length limits, has no NUL, no empty, `.`
//! or `..` component; `std::path` sees exactly its `/`-separated
//! components, all normal; and joined under a repository, station and root
//! it stays under them. Paths are bytes (any name Linux allows, UTF-8 or
//! not; a backslash is an ordinary byte), so every input is a path. An
//! accepted root name is one such component without `/`. Refusals must
//! display.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

use ferry_collector::repository::{MAX_COMPONENT, MAX_PATH, check_path, check_root};

/// Checks `data` as a path and as a root name; panics on a violation.
pub fn check(data: &[u8]) {
    match check_path(data) {
        Ok(path) => accepted_path(data, path),
        Err(error) => {
            let _ = error.to_string();
        }
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match check_root(text) {
        Ok(root) => {
            assert_eq!(root, text);
            assert!(!root.contains('/'), "root {root:?} has a '/'");
            accepted_path(data, root.as_bytes());
        }
        Err(error) => {
            let _ = error.to_string();
        }
    }
}

fn accepted_path(data: &[u8], path: &[u8]) {
    assert_eq!(path, data, "an accepted path was rewritten");
    assert!(!path.is_empty());
    assert!(path.len() <= MAX_PATH, "{} bytes accepted", path.len());
    assert!(!path.starts_with(b"/"), "absolute {path:?} accepted");
    assert!(!path.contains(&0), "NUL in {path:?} accepted");
    let parts: Vec<&[u8]> = path.split(|&b| b == b'/').collect();
    for part in &parts {
        assert!(!part.is_empty(), "empty component in {path:?} accepted");
        assert!(
            *part != b"." && *part != b"..",
            "dot component in {path:?} accepted"
        );
        assert!(part.len() <= MAX_COMPONENT, "long component accepted");
    }
    // What the filesystem will see: the same components, all normal.
    let path = Path::new(OsStr::from_bytes(path));
    let components: Vec<Component> = path.components().collect();
    assert_eq!(components.len(), parts.len(), "{path:?}: {components:?}");
    for (component, part) in components.iter().zip(&parts) {
        assert_eq!(
            *component,
            Component::Normal(OsStr::from_bytes(part)),
            "{path:?}"
        );
    }
    // Joined under the station's area, it stays there, even lexically
    // normalised.
    let area = Path::new("/var/lib/ferry/repository/rfeye002073/rfeye");
    let joined = area.join(path);
    assert!(joined.starts_with(area), "{} escapes", joined.display());
    let mut depth = 0usize;
    for component in joined
        .strip_prefix(area)
        .expect("under the area")
        .components()
    {
        match component {
            Component::Normal(_) => depth += 1,
            Component::ParentDir => {
                depth = depth.checked_sub(1).expect("'..' climbs out of the area");
            }
            other => panic!("{path:?} joins as {other:?}"),
        }
    }
    assert_eq!(depth, parts.len());
}

/// Realistic paths, and the hostile ones the checks exist for.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    [
        ("rfeye_bin", "2022/03/rfeye002073_220307_T175758.bin"),
        ("flat", "rfeye002073_220307_T175758.bin"),
        ("csv", "scans/2024-01-31/band_0400_0500MHz.csv"),
        ("hdf5", "hdf5/rfeye002073_220307.h5"),
        ("unicode", "ünïcödé/mesure été.csv"),
        ("dots_inside", "..x/x../.hidden/a.b.c"),
        ("newline", "logs/line\nbreak.log"),
        ("root_name", "rfeye"),
        ("parent", "../../etc/passwd"),
        ("parent_inside", "2022/../../x"),
        ("dot", "2022/./a.bin"),
        ("empty_component", "2022//a.bin"),
        ("trailing_slash", "2022/"),
        ("absolute", "/etc/shadow"),
        ("backslash", "2022\\..\\..\\x"),
        ("nul", "a.bin\0.txt"),
        ("empty", ""),
    ]
    .into_iter()
    .map(|(name, path)| (name.to_owned(), path.as_bytes().to_vec()))
    .chain([
        // Latin-1 names from instrument software: not UTF-8, still names.
        (
            "latin1".to_owned(),
            b"mesures/caf\xe9/\xe9t\xe9.bin".to_vec(),
        ),
        ("parent_latin1".to_owned(), b"\xe9/../../x".to_vec()),
    ])
    .collect()
}
