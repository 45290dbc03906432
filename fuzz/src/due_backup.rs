//! The `due_backup` target: hostile bytes into the import of a `DUE_BACKUP`
//! left by indexerD (`ferry_agent::due_list::parse_due_backup`, what
//! `import_due_backup` runs over the file).
//!
//! Checked: parsing never panics or fails on bytes; every imported path is
//! absolute, without NUL, at most `MAX_LINE` bytes, sorted by bytes and
//! unique; refused lines are counted, at most `MAX_REFUSED_KEPT` kept, with
//! valid 1-based line numbers; and what Ferry itself writes (one path per
//! line, `\n`-terminated, for each path `representable` accepts) imports
//! back to exactly the same paths, and so does what indexerD writes for them
//! (directory, NUL, `/` and name, NUL).

use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use ferry_agent::due_list::{MAX_LINE, MAX_REFUSED_KEPT, parse_due_backup, representable};

/// Imports `data` as a `DUE_BACKUP`; panics on a violation.
pub fn check(data: &[u8]) {
    let import = parse_due_backup(data).expect("reading from memory cannot fail");
    let lines = data.split(|&b| b == b'\n').count();
    assert!(import.refused.len() <= MAX_REFUSED_KEPT);
    assert!(import.refused.len() <= import.refused_count);
    assert!(import.paths.len() + import.refused_count <= lines);
    for refused in &import.refused {
        assert!((1..=lines).contains(&refused.line), "{refused:?}");
        let _ = refused.reason.to_string();
    }
    for pair in import.paths.windows(2) {
        assert!(
            bytes(&pair[0]) < bytes(&pair[1]),
            "not sorted and unique: {pair:?}"
        );
    }
    for path in &import.paths {
        let raw = bytes(path);
        assert!(raw.first() == Some(&b'/'), "{path:?} is not absolute");
        assert!(!raw.contains(&0), "{path:?} has a NUL");
        assert!(!raw.contains(&b'\n'), "{path:?} has a newline");
        assert!(raw.len() <= MAX_LINE, "{} bytes imported", raw.len());
    }

    // Write what Ferry would write for these paths, and import it again.
    let kept: Vec<&PathBuf> = import.paths.iter().filter(|p| representable(p)).collect();
    let mut written = Vec::new();
    for path in &kept {
        written.extend_from_slice(bytes(path));
        written.push(b'\n');
    }
    let again = parse_due_backup(&written[..]).expect("reading from memory cannot fail");
    assert_eq!(again.refused, [], "Ferry's own list has refused lines");
    let again: Vec<&PathBuf> = again.paths.iter().collect();
    assert_eq!(again, kept, "written paths do not import back the same");

    // The same paths as indexerD writes them. It has no line for a path
    // ending in `/` (no file) nor one with `//` before the name (its
    // directories come from a walk): `/\0/a\0` is `/a`, never `//a`.
    let named: Vec<&PathBuf> = kept
        .into_iter()
        .filter(|p| !bytes(p).ends_with(b"/") && !bytes(p).windows(2).any(|w| w == b"//"))
        .collect();
    let mut written = Vec::new();
    for path in &named {
        written.extend(indexerd_line(bytes(path)));
    }
    let again = parse_due_backup(&written[..]).expect("reading from memory cannot fail");
    assert_eq!(again.refused, [], "indexerD's lines have refused lines");
    let again: Vec<&PathBuf> = again.paths.iter().collect();
    assert_eq!(again, named, "indexerD's lines do not import back the same");
}

/// `path` as indexerD writes it in `DUE_BACKUP`: its directory, a NUL, `/`
/// and its name, a NUL and the newline.
pub fn indexerd_line(path: &[u8]) -> Vec<u8> {
    let cut = path.iter().rposition(|&b| b == b'/').unwrap_or(0);
    let mut line = if cut == 0 {
        b"/".to_vec()
    } else {
        path[..cut].to_vec()
    };
    line.push(0);
    line.extend_from_slice(&path[cut..]);
    line.extend_from_slice(b"\0\n");
    line
}

fn bytes(path: &std::path::Path) -> &[u8] {
    path.as_os_str().as_bytes()
}

/// A realistic indexerD list of RFeye files in the form indexerD writes
/// (NUL bytes around the name), the same as plain lines, one with CRLF line
/// ends, and one with the junk an old station may hold.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let names: Vec<String> = (0..12)
        .map(|i| {
            format!(
                "/data/rfeye002073_220307_T17{:02}{:02}.bin",
                50 + i / 6,
                (i * 10) % 60
            )
        })
        .collect();
    let plain: String = names.iter().map(|n| format!("{n}\n")).collect();
    let crlf: String = names.iter().take(4).map(|n| format!("{n}\r\n")).collect();
    let mut junk = b"/data/rfeye002073_220307_T175758.bin\n\
        \n   \t\n\
        /data/rfeye002073_220307_T175758.bin\n\
        data/relative.bin\n\
        /data/trailing space \n\
        /data/caf\xe9.csv\n\
        /data/nul\0byte.bin\n\
        /home/rfeye/logs/indexerD.log\r\n\
        /data/no-final-newline.bin"
        .to_vec();
    junk.extend_from_slice(b"\n/");
    junk.extend(std::iter::repeat_n(b'x', 300));
    junk.push(b'\n');
    let mut indexerd: Vec<u8> = names
        .iter()
        .flat_map(|n| indexerd_line(n.as_bytes()))
        .collect();
    indexerd.extend(indexerd_line(b"/home/rfeye/data/2022/caf\xe9.csv"));
    indexerd.extend(indexerd_line(b"/at-the-top.bin"));
    indexerd.extend_from_slice(b"/data\0name-without-slash\0\n/data\0/a\0b\0\n");
    vec![
        ("indexerd.txt".to_owned(), indexerd),
        ("rfeye.txt".to_owned(), plain.into_bytes()),
        ("crlf.txt".to_owned(), crlf.into_bytes()),
        ("junk.txt".to_owned(), junk),
    ]
}
