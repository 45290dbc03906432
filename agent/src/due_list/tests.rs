//! Tests of the legacy list files on real files in temporary directories.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::*;

fn p(s: &str) -> PathBuf {
    PathBuf::from(s)
}

fn raw(bytes: &[u8]) -> PathBuf {
    PathBuf::from(OsStr::from_bytes(bytes))
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn due_backup_is_sorted_by_bytes_and_unique() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("DUE_BACKUP");
    let written = write_due_backup(
        &list,
        [
            p("/srv/data/b.bin"),
            p("/srv/data/a/b.bin"),
            p("/srv/data/a.b"),
            p("/srv/data/a/b.bin"),
            p("/srv/data/é.bin"),
            p("/srv/data/Z.bin"),
        ],
    )
    .unwrap();
    assert_eq!(written.lines, 5);
    assert!(written.unrepresentable.is_empty());
    // Byte order, as `LC_ALL=C sort -u` would give: '.' (0x2e) < '/' (0x2f)
    // even though Path's own ordering compares components.
    assert_eq!(
        fs::read_to_string(&list).unwrap(),
        "/srv/data/Z.bin\n/srv/data/a.b\n/srv/data/a/b.bin\n/srv/data/b.bin\n/srv/data/é.bin\n"
    );
}

#[test]
fn due_backup_is_replaced_whole_and_leaves_no_temporary_file() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("DUE_BACKUP");
    fs::write(&list, "/old/one\n/old/two\n").unwrap();
    write_due_backup(&list, [p("/new/one")]).unwrap();
    assert_eq!(fs::read_to_string(&list).unwrap(), "/new/one\n");
    assert_eq!(entries(dir.path()), ["DUE_BACKUP"]);

    let written = write_due_backup(&list, Vec::<PathBuf>::new()).unwrap();
    assert_eq!(written.lines, 0);
    assert_eq!(fs::read(&list).unwrap(), b"");
    assert_eq!(entries(dir.path()), ["DUE_BACKUP"]);
}

#[test]
fn a_leftover_temporary_file_does_not_block_writing() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("DUE_BACKUP");
    let leftover = dir
        .path()
        .join(format!(".DUE_BACKUP.{}.tmp", std::process::id()));
    fs::write(&leftover, "half a list").unwrap();
    write_due_backup(&list, [p("/a")]).unwrap();
    assert_eq!(fs::read_to_string(&list).unwrap(), "/a\n");
    assert_eq!(entries(dir.path()), ["DUE_BACKUP"]);
}

#[test]
fn a_name_with_a_newline_is_left_out_of_due_backup_and_returned() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("DUE_BACKUP");
    let evil = p("/srv/data/two\nlines.bin");
    let written = write_due_backup(
        &list,
        [p("/srv/data/a.bin"), evil.clone(), p("/srv/data/two")],
    )
    .unwrap();
    assert_eq!(written.lines, 2);
    assert_eq!(written.unrepresentable, [evil]);
    // Neither half of the name appears as a line of its own.
    assert_eq!(
        fs::read_to_string(&list).unwrap(),
        "/srv/data/a.bin\n/srv/data/two\n"
    );
    let back = import_due_backup(&list).unwrap().unwrap();
    assert_eq!(back.paths, [p("/srv/data/a.bin"), p("/srv/data/two")]);
}

/// Found by the `due_backup` fuzz target: "/x\r" was written as "/x\r\n",
/// which the import reads back as "/x", a different file.
#[test]
fn a_name_ending_in_a_carriage_return_is_left_out_of_both_lists() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("DUE_BACKUP");
    let done = dir.path().join("BACKUP_DONE");
    let cr = p("/srv/data/rfeye002073_220307_T175758.bin\r");
    let inner = p("/srv/data/a\rb.bin");
    let written = write_due_backup(&list, [cr.clone(), inner.clone()]).unwrap();
    assert_eq!(written.unrepresentable, std::slice::from_ref(&cr));
    assert_eq!(written.lines, 1);
    // A \r inside a name is kept and reads back as written.
    assert_eq!(
        import_due_backup(&list).unwrap().unwrap().paths,
        std::slice::from_ref(&inner)
    );
    let left_out = append_backup_done(&done, [&cr, &inner]).unwrap();
    assert_eq!(left_out, [cr]);
    assert_eq!(fs::read(&done).unwrap(), b"/srv/data/a\rb.bin\n");
}

/// Found by the `due_backup` fuzz target: duplicates were dropped by `Path`
/// equality after a byte sort, so "/a" and "//a" were merged when they
/// happened to be neighbours and both kept otherwise; a list Ferry wrote
/// then imported back different.
#[test]
fn spellings_of_one_path_are_kept_whatever_their_neighbours() {
    // `Path` equality would take "//a" for "/a": compare the bytes.
    fn texts(paths: &[PathBuf]) -> Vec<&OsStr> {
        paths.iter().map(|p| p.as_os_str()).collect()
    }
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("DUE_BACKUP");
    for text in [&b"/a\n//a\n"[..], b"/a\n//a\n//b\r", b"//a\n/a\n/a\n"] {
        let paths = parse_due_backup(text).unwrap().paths;
        let kept: Vec<PathBuf> = paths.iter().filter(|p| representable(p)).cloned().collect();
        assert_eq!(texts(&kept), ["//a", "/a"], "{text:?}");
        write_due_backup(&list, paths).unwrap();
        let back = import_due_backup(&list).unwrap().unwrap().paths;
        assert_eq!(texts(&back), texts(&kept), "{text:?}");
    }
    write_due_backup(&list, [p("/a"), p("//a"), p("/a")]).unwrap();
    assert_eq!(fs::read(&list).unwrap(), b"//a\n/a\n");
}

#[test]
fn names_that_are_not_utf8_are_written_as_raw_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("DUE_BACKUP");
    let name = raw(b"/srv/data/caf\xe9.bin");
    write_due_backup(&list, [name.clone()]).unwrap();
    assert_eq!(fs::read(&list).unwrap(), b"/srv/data/caf\xe9.bin\n");
    assert_eq!(import_due_backup(&list).unwrap().unwrap().paths, [name]);
}

#[test]
fn writing_into_a_missing_directory_fails_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("missing").join("DUE_BACKUP");
    let err = write_due_backup(&list, [p("/a")]).unwrap_err();
    assert!(matches!(err, DueListError::Write { .. }), "{err}");
    assert!(err.to_string().contains("missing/DUE_BACKUP"), "{err}");
    assert!(entries(dir.path()).is_empty());
}

#[test]
fn backup_done_grows_by_the_acked_paths() {
    let dir = tempfile::tempdir().unwrap();
    let done = dir.path().join("BACKUP_DONE");
    let skipped = append_backup_done(&done, [p("/srv/a"), p("/srv/b")]).unwrap();
    assert!(skipped.is_empty());
    let evil = p("/srv/new\nline");
    let skipped = append_backup_done(&done, [evil.clone(), p("/srv/c")]).unwrap();
    assert_eq!(skipped, [evil]);
    assert!(
        append_backup_done(&done, Vec::<PathBuf>::new())
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        fs::read_to_string(&done).unwrap(),
        "/srv/a\n/srv/b\n/srv/c\n"
    );
}

#[test]
fn the_tail_of_backup_done_gives_its_last_whole_lines() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("BACKUP_DONE");
    assert!(
        backup_done_tail(&list, 100).unwrap().is_empty(),
        "no file yet"
    );
    append_backup_done(&list, [p("/srv/data/one.bin"), p("/srv/data/two.bin")]).unwrap();
    append_backup_done(&list, [p("/srv/data/three.bin")]).unwrap();
    assert_eq!(
        backup_done_tail(&list, 1 << 20).unwrap(),
        [
            p("/srv/data/one.bin"),
            p("/srv/data/two.bin"),
            p("/srv/data/three.bin")
        ]
    );
    // A window that starts inside a line drops that line.
    assert_eq!(
        backup_done_tail(&list, 25).unwrap(),
        [p("/srv/data/three.bin")]
    );
}

#[test]
fn backup_done_in_a_missing_directory_fails_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let done = dir.path().join("nope").join("BACKUP_DONE");
    let err = append_backup_done(&done, [p("/a")]).unwrap_err();
    assert!(err.to_string().contains("nope/BACKUP_DONE"), "{err}");
}

#[test]
fn an_indexerd_due_backup_is_imported() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("DUE_BACKUP");
    let mut text = Vec::new();
    text.extend_from_slice(b"/home/rfeye/data/rfeye002073_220307_T175758.bin\r\n");
    text.extend_from_slice(b"/home/rfeye/data/rfeye002073_220307_T175700.bin\n");
    text.extend_from_slice(b"\n   \r\n");
    text.extend_from_slice(b"/home/rfeye/data/rfeye002073_220307_T175758.bin\n");
    text.extend_from_slice(b"relative/file.bin\n");
    text.extend_from_slice(b"/home/rfeye/data/trailing space \n");
    text.extend_from_slice(b"/home/rfeye/data/nul\0byte\n");
    text.extend_from_slice(b"/home/rfeye/data/caf\xe9.csv\n");
    text.extend_from_slice(b"/home/rfeye/data/no-final-newline.log");
    fs::write(&list, &text).unwrap();

    let import = import_due_backup(&list).unwrap().unwrap();
    assert_eq!(
        import.paths,
        [
            raw(b"/home/rfeye/data/caf\xe9.csv"),
            p("/home/rfeye/data/no-final-newline.log"),
            p("/home/rfeye/data/rfeye002073_220307_T175700.bin"),
            p("/home/rfeye/data/rfeye002073_220307_T175758.bin"),
            p("/home/rfeye/data/trailing space "),
        ]
    );
    assert_eq!(import.refused_count, 2);
    assert_eq!(
        import.refused,
        [
            RefusedLine {
                line: 6,
                text: "relative/file.bin".into(),
                reason: Refusal::Relative,
            },
            RefusedLine {
                line: 8,
                text: "/home/rfeye/data/nul\\x00byte".into(),
                reason: Refusal::Nul,
            },
        ]
    );
}

#[test]
fn an_over_long_line_is_refused_and_the_next_one_kept() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("DUE_BACKUP");
    let mut text = b"/".to_vec();
    text.extend(std::iter::repeat_n(b'x', 3 * MAX_LINE));
    text.extend_from_slice(b"\n/ok\n/");
    // Exactly the limit is still accepted.
    text.extend(std::iter::repeat_n(b'y', MAX_LINE - 1));
    text.push(b'\n');
    fs::write(&list, &text).unwrap();
    let import = import_due_backup(&list).unwrap().unwrap();
    assert_eq!(import.paths.len(), 2);
    assert_eq!(import.paths[0], p("/ok"));
    assert_eq!(import.paths[1].as_os_str().len(), MAX_LINE);
    assert_eq!(import.refused_count, 1);
    assert_eq!(import.refused[0].line, 1);
    assert_eq!(import.refused[0].reason, Refusal::TooLong);
}

#[test]
fn refused_lines_are_all_counted_but_only_the_first_kept() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("DUE_BACKUP");
    let text: String = (0..MAX_REFUSED_KEPT + 50)
        .map(|i| format!("rel/{i}\n"))
        .collect();
    fs::write(&list, text).unwrap();
    let import = import_due_backup(&list).unwrap().unwrap();
    assert!(import.paths.is_empty());
    assert_eq!(import.refused_count, MAX_REFUSED_KEPT + 50);
    assert_eq!(import.refused.len(), MAX_REFUSED_KEPT);
}

#[test]
fn no_due_backup_means_nothing_to_import() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(
        import_due_backup(&dir.path().join("DUE_BACKUP")).unwrap(),
        None
    );
}

#[test]
fn an_unreadable_due_backup_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    // A directory where the file should be: opening works, reading fails.
    let list = dir.path().join("DUE_BACKUP");
    fs::create_dir(&list).unwrap();
    let err = import_due_backup(&list).unwrap_err();
    assert!(err.to_string().contains("DUE_BACKUP"), "{err}");
}

#[test]
fn parsing_bytes_gives_what_importing_the_file_gives() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("DUE_BACKUP");
    let text = b"/data/b.bin\r\n\n/data/a.bin\nrel\n/data/b.bin\n/data/last".to_vec();
    fs::write(&list, &text).unwrap();
    let parsed = parse_due_backup(&text[..]).unwrap();
    assert_eq!(parsed, import_due_backup(&list).unwrap().unwrap());
    assert_eq!(
        parsed.paths,
        [p("/data/a.bin"), p("/data/b.bin"), p("/data/last")]
    );
    assert_eq!(parsed.refused_count, 1);
    assert_eq!(parsed.refused[0].line, 4);
}

#[test]
fn parsing_reports_an_error_of_the_reader() {
    struct Broken;
    impl std::io::Read for Broken {
        fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            Err(std::io::Error::other("disk went away"))
        }
    }
    let err = parse_due_backup(std::io::BufReader::new(Broken)).unwrap_err();
    assert_eq!(err.to_string(), "disk went away");
}

#[test]
fn indexerd_nul_lines_import_beside_plain_ones_as_bytes() {
    let mut text = Vec::new();
    text.extend_from_slice(b"/home/rfeye/data\0/rfeye002073_220307_T175758.bin\0\n");
    text.extend_from_slice(b"/home/rfeye/data/plain.bin\n");
    // A Latin-1 name, a CRLF end, no last NUL, the root directory.
    text.extend_from_slice(b"/home/rfeye/data/2022\0/caf\xe9.csv\0\r\n");
    text.extend_from_slice(b"/home/rfeye/data\0/no-last-nul.bin\n");
    text.extend_from_slice(b"/\0/at-the-top\0\n");
    // The same file in both forms is one path.
    text.extend_from_slice(b"/home/rfeye/data/rfeye002073_220307_T175758.bin\n");
    let import = parse_due_backup(&text[..]).unwrap();
    assert_eq!(import.refused, []);
    assert_eq!(
        import.paths,
        [
            p("/at-the-top"),
            raw(b"/home/rfeye/data/2022/caf\xe9.csv"),
            p("/home/rfeye/data/no-last-nul.bin"),
            p("/home/rfeye/data/plain.bin"),
            p("/home/rfeye/data/rfeye002073_220307_T175758.bin"),
        ]
    );
}

#[test]
fn nul_bytes_outside_indexerds_form_are_refused_with_the_line_shown() {
    let text = b"/a\0b\0\n/a\0/b\0c\0\n\0/b\0\n/a\0/\0\nrel\0/b\0\n/ok\0/fine\0\n";
    let import = parse_due_backup(&text[..]).unwrap();
    assert_eq!(import.paths, [p("/ok/fine")]);
    let reasons: Vec<(usize, Refusal)> =
        import.refused.iter().map(|r| (r.line, r.reason)).collect();
    assert_eq!(
        reasons,
        [
            (1, Refusal::Nul),
            (2, Refusal::Nul),
            (3, Refusal::Nul),
            (4, Refusal::Nul),
            (5, Refusal::Relative),
        ]
    );
    assert_eq!(import.refused[0].text, "/a\\x00b\\x00");
    // Refused lines are shown in the text form of names, NULs visible.
    let import = parse_due_backup(&b"caf\xe9 \xc3\xa9\\\0\t\n"[..]).unwrap();
    assert_eq!(import.refused[0].text, "caf\\xe9 \u{e9}\\\\\\x00\\x09");
    assert_eq!(Refusal::from_key(Refusal::Nul.key()), Some(Refusal::Nul));
}

#[test]
fn backup_done_is_read_in_both_forms_as_a_stream() {
    let dir = tempfile::tempdir().unwrap();
    let done = dir.path().join("BACKUP_DONE");
    assert_eq!(
        read_backup_done(&done, |_| panic!("no file")).unwrap(),
        None
    );
    fs::write(&done, b"/d\0/a.bin\0\n/d/b.bin\nrel\n/d/a.bin\n").unwrap();
    let mut seen = Vec::new();
    let refused = read_backup_done(&done, |path| seen.push(path)).unwrap();
    assert_eq!(refused, Some(1));
    assert_eq!(seen, [p("/d/a.bin"), p("/d/b.bin"), p("/d/a.bin")]);
}
