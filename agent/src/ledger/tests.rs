//! Tests of the ledger against real SQLite files in temporary directories.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::*;

fn t(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
}

fn id(size: u64, mtime_s: i64, inode: u64) -> Identity {
    Identity {
        size,
        mtime_ns: mtime_s * 1_000_000_000,
        ctime_ns: mtime_s * 1_000_000_000,
        inode,
    }
}

fn open(dir: &tempfile::TempDir) -> Ledger {
    Ledger::open(&dir.path().join("ledger.sqlite")).unwrap()
}

fn rel(s: &str) -> PathBuf {
    PathBuf::from(s)
}

fn due_names(ledger: &Ledger, now: SystemTime) -> Vec<String> {
    ledger
        .due(100, now)
        .unwrap()
        .into_iter()
        .map(|f| format!("{}:{}", f.root, f.rel_path.display()))
        .collect()
}

fn ack(ledger: &mut Ledger, file: &DueFile, now: SystemTime) -> Vec<AckedFile> {
    ledger
        .mark_acked(
            &[Acked {
                key: file.key,
                sha256: [7; 32],
            }],
            now,
        )
        .unwrap()
}

#[test]
fn state_survives_closing_and_reopening() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut ledger = open(&dir);
        ledger
            .observe("data", &rel("a.bin"), id(10, 1, 1), t(0))
            .unwrap();
        ledger
            .observe("data", &rel("b.bin"), id(20, 2, 2), t(1))
            .unwrap();
        let due = ledger.due(10, t(2)).unwrap();
        assert_eq!(ack(&mut ledger, &due[0], t(3)).len(), 1);
    }
    let ledger = open(&dir);
    assert_eq!(due_names(&ledger, t(4)), ["data:b.bin"]);
    assert_eq!(
        ledger.state("data", &rel("a.bin")).unwrap(),
        Some(FileState::Done)
    );
    assert_eq!(ledger.last_ack().unwrap(), Some(t(3)));
    let summary = ledger.due_summary().unwrap();
    assert_eq!((summary.files, summary.bytes), (1, 20));
}

#[test]
fn files_in_flight_when_the_process_died_are_due_again_after_reopening() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut ledger = open(&dir);
        ledger
            .observe("data", &rel("a.bin"), id(10, 1, 1), t(0))
            .unwrap();
        let due = ledger.due(10, t(1)).unwrap();
        assert_eq!(ledger.mark_sending(&[due[0].key]).unwrap(), 1);
        assert!(ledger.due(10, t(1)).unwrap().is_empty(), "offered twice");
        assert_eq!(
            ledger.state("data", &rel("a.bin")).unwrap(),
            Some(FileState::SentPending)
        );
        // Still counted as not backed up.
        assert_eq!(ledger.due_summary().unwrap().files, 1);
    }
    let ledger = open(&dir);
    assert_eq!(due_names(&ledger, t(2)), ["data:a.bin"]);
}

#[test]
fn an_interrupted_batch_can_be_returned_without_counting_a_failure() {
    let dir = tempfile::tempdir().unwrap();
    let mut ledger = open(&dir);
    ledger
        .observe("data", &rel("a.bin"), id(10, 1, 1), t(0))
        .unwrap();
    let key = ledger.due(10, t(1)).unwrap()[0].key;
    ledger.mark_sending(&[key]).unwrap();
    assert_eq!(ledger.unmark_sending(&[key]).unwrap(), 1);
    let due = ledger.due(10, t(1)).unwrap();
    assert_eq!((due.len(), due[0].attempts), (1, 0));
}

#[test]
fn a_file_offered_without_an_answer_is_marked_offered_until_acked() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut ledger = open(&dir);
        ledger
            .observe("data", &rel("a.bin"), id(10, 1, 1), t(0))
            .unwrap();
        ledger
            .observe("data", &rel("b.bin"), id(10, 1, 2), t(0))
            .unwrap();
        let due = ledger.due(10, t(1)).unwrap();
        assert!(due.iter().all(|f| !f.offered), "never offered yet");
        let keys: Vec<FileKey> = due.iter().map(|f| f.key).collect();
        ledger.mark_sending(&keys).unwrap();
        // The link dropped for b: its batch came back without an answer.
        ledger.unmark_sending(&keys[1..]).unwrap();
        let due = ledger.due(10, t(2)).unwrap();
        assert_eq!(due.len(), 1);
        assert!(due[0].offered, "b may be stored already");
    }
    // The process died with a in flight.
    let mut ledger = open(&dir);
    let due = ledger.due(10, t(3)).unwrap();
    assert_eq!(due.len(), 2);
    assert!(due.iter().all(|f| f.offered), "{due:?}");
    // Acked content is no longer in doubt; new content was never offered.
    ack(&mut ledger, &due[0], t(4));
    ledger
        .observe("data", &rel("a.bin"), id(11, 5, 1), t(5))
        .unwrap();
    let due = ledger.due(10, t(6)).unwrap();
    let a = due.iter().find(|f| f.rel_path == rel("a.bin")).unwrap();
    assert!(!a.offered);
}

#[test]
fn acked_files_wait_for_their_post_ack_work_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut ledger = open(&dir);
        ledger
            .observe("data", &rel("a.bin"), id(10, 1, 1), t(0))
            .unwrap();
        ledger
            .observe("data", &rel("b.bin"), id(10, 1, 2), t(0))
            .unwrap();
        assert!(
            ledger.post_ack_pending().unwrap().is_empty(),
            "nothing acked yet"
        );
        let due = ledger.due(10, t(1)).unwrap();
        ack(&mut ledger, &due[0], t(2));
        ack(&mut ledger, &due[1], t(3));
        let pending = ledger.post_ack_pending().unwrap();
        assert_eq!(pending.len(), 2);
        ledger.post_ack_done(&pending[..1]).unwrap();
        // The process stops before it finishes with the second file.
    }
    let mut ledger = open(&dir);
    let pending = ledger.post_ack_pending().unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].rel_path, rel("b.bin"));
    ledger.post_ack_done(&pending).unwrap();
    assert!(ledger.post_ack_pending().unwrap().is_empty());
}

#[test]
fn observing_the_same_file_again_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut ledger = open(&dir);
    let first = ledger
        .observe("data", &rel("a.bin"), id(10, 1, 1), t(0))
        .unwrap();
    let again = ledger
        .observe("data", &rel("a.bin"), id(10, 1, 1), t(5))
        .unwrap();
    let third = ledger
        .observe("data", &rel("a.bin"), id(10, 1, 1), t(9))
        .unwrap();
    assert_eq!(
        (first, again, third),
        (Observed::New, Observed::Unchanged, Observed::Unchanged)
    );
    let due = ledger.due(10, t(10)).unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(
        due[0].due_since,
        t(0),
        "re-observing must not reset the wait"
    );
    assert_eq!(due[0].key.generation, 1);
}

#[test]
fn a_file_changed_after_backup_is_due_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut ledger = open(&dir);
    ledger
        .observe("data", &rel("a.bin"), id(10, 1, 1), t(0))
        .unwrap();
    let due = ledger.due(10, t(1)).unwrap();
    ack(&mut ledger, &due[0], t(2));
    assert!(ledger.due(10, t(3)).unwrap().is_empty());

    for (n, changed) in [id(11, 1, 1), id(11, 2, 1), id(11, 2, 99)]
        .into_iter()
        .enumerate()
    {
        let seen = ledger
            .observe("data", &rel("a.bin"), changed, t(10))
            .unwrap();
        assert_eq!(seen, Observed::ChangedAfterBackup, "change {n}");
        let due = ledger.due(10, t(11)).unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].identity, changed);
        assert_eq!(due[0].due_since, t(10));
        ack(&mut ledger, &due[0], t(12));
    }
}

#[test]
fn a_file_changed_before_backup_stays_due_with_its_new_identity() {
    let dir = tempfile::tempdir().unwrap();
    let mut ledger = open(&dir);
    ledger
        .observe("data", &rel("a.bin"), id(10, 1, 1), t(0))
        .unwrap();
    let seen = ledger
        .observe("data", &rel("a.bin"), id(20, 2, 1), t(1))
        .unwrap();
    assert_eq!(seen, Observed::Changed);
    let due = ledger.due(10, t(2)).unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].identity, id(20, 2, 1));
}

#[test]
fn an_ack_for_content_that_changed_meanwhile_leaves_the_file_due() {
    let dir = tempfile::tempdir().unwrap();
    let mut ledger = open(&dir);
    ledger
        .observe("data", &rel("a.bin"), id(10, 1, 1), t(0))
        .unwrap();
    let sent = ledger.due(10, t(1)).unwrap().remove(0);
    ledger.mark_sending(&[sent.key]).unwrap();
    // Rewritten while the old content was on the wire.
    ledger
        .observe("data", &rel("a.bin"), id(30, 3, 1), t(2))
        .unwrap();
    assert!(ack(&mut ledger, &sent, t(3)).is_empty());
    assert!(!ledger.mark_failed(sent.key, "late", t(3), t(4)).unwrap());
    let due = ledger.due(10, t(4)).unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].identity, id(30, 3, 1));
    assert_eq!(due[0].attempts, 0);
    assert_eq!(ack(&mut ledger, &due[0], t(5)).len(), 1);
    assert_eq!(
        ledger.state("data", &rel("a.bin")).unwrap(),
        Some(FileState::Done)
    );
}

#[test]
fn a_repeated_ack_reports_nothing_the_second_time() {
    let dir = tempfile::tempdir().unwrap();
    let mut ledger = open(&dir);
    ledger
        .observe("data", &rel("a.bin"), id(10, 1, 1), t(0))
        .unwrap();
    let due = ledger.due(10, t(1)).unwrap();
    let first = ack(&mut ledger, &due[0], t(2));
    assert_eq!(
        first,
        [AckedFile {
            root: "data".into(),
            rel_path: rel("a.bin"),
            identity: id(10, 1, 1),
        }]
    );
    assert!(ack(&mut ledger, &due[0], t(3)).is_empty());
    assert_eq!(ledger.last_ack().unwrap(), Some(t(2)));
}

#[test]
fn failed_files_wait_for_their_retry_time_and_show_in_errors() {
    let dir = tempfile::tempdir().unwrap();
    let mut ledger = open(&dir);
    ledger
        .observe("data", &rel("bad.bin"), id(10, 1, 1), t(0))
        .unwrap();
    ledger
        .observe("data", &rel("good.bin"), id(10, 1, 2), t(1))
        .unwrap();
    let bad = ledger.due(10, t(2)).unwrap().remove(0);
    assert_eq!(bad.rel_path, rel("bad.bin"));
    ledger.mark_sending(&[bad.key]).unwrap();
    assert!(
        ledger
            .mark_failed(bad.key, "permission denied", t(3), t(60))
            .unwrap()
    );

    assert_eq!(due_names(&ledger, t(59)), ["data:good.bin"]);
    assert_eq!(due_names(&ledger, t(60)), ["data:bad.bin", "data:good.bin"]);
    let again = ledger.due(1, t(60)).unwrap().remove(0);
    assert_eq!(again.attempts, 1);
    assert!(
        ledger
            .mark_failed(again.key, "still denied", t(61), t(180))
            .unwrap()
    );

    let errors = ledger.recent_errors(10).unwrap();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].error, "still denied");
    assert_eq!(errors[0].attempts, 2);
    assert_eq!(errors[0].at, t(61));
    assert_eq!(errors[0].retry_at, Some(t(180)));
    let summary = ledger.due_summary().unwrap();
    assert_eq!((summary.files, summary.failing), (2, 1));

    // Success clears the error.
    let retried = ledger.due(1, t(180)).unwrap().remove(0);
    ack(&mut ledger, &retried, t(181));
    assert!(ledger.recent_errors(10).unwrap().is_empty());
}

#[test]
fn a_file_refused_for_good_is_not_offered_again_until_it_changes() {
    let dir = tempfile::tempdir().unwrap();
    let mut ledger = open(&dir);
    ledger
        .observe("data", &rel("a\\b.bin"), id(10, 1, 1), t(0))
        .unwrap();
    let refused = ledger.due(10, t(1)).unwrap().remove(0);
    ledger.mark_sending(&[refused.key]).unwrap();
    assert!(
        ledger
            .mark_refused(refused.key, "path refused: backslash", t(2))
            .unwrap()
    );
    // Never due again as it is, even long after, even after a restart.
    assert!(due_names(&ledger, t(1_000_000)).is_empty());
    drop(ledger);
    let mut ledger = open(&dir);
    assert!(due_names(&ledger, t(1_000_000)).is_empty());
    let summary = ledger.due_summary().unwrap();
    assert_eq!((summary.files, summary.refused), (1, 1));
    let errors = ledger.recent_errors(10).unwrap();
    assert!(errors[0].permanent, "{errors:?}");
    assert_eq!(errors[0].retry_at, None);
    // New content may succeed: due at once.
    ledger
        .observe("data", &rel("a\\b.bin"), id(11, 2, 1), t(3))
        .unwrap();
    assert_eq!(due_names(&ledger, t(3)), ["data:a\\b.bin"]);
    assert_eq!(ledger.due_summary().unwrap().refused, 0);
}

#[test]
fn due_files_come_oldest_first_and_respect_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let mut ledger = open(&dir);
    ledger
        .observe("data", &rel("c"), id(1, 1, 1), t(3))
        .unwrap();
    ledger
        .observe("data", &rel("a"), id(1, 1, 2), t(1))
        .unwrap();
    ledger
        .observe("logs", &rel("b"), id(1, 1, 3), t(2))
        .unwrap();
    assert_eq!(due_names(&ledger, t(9)), ["data:a", "logs:b", "data:c"]);
    let two: Vec<_> = ledger
        .due(2, t(9))
        .unwrap()
        .into_iter()
        .map(|f| f.rel_path)
        .collect();
    assert_eq!(two, [rel("a"), rel("b")]);
    assert_eq!(ledger.due_summary().unwrap().oldest, Some(t(1)));
}

#[test]
fn a_vanished_due_file_leaves_the_due_set_and_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let mut ledger = open(&dir);
    ledger
        .observe("data", &rel("due.bin"), id(10, 1, 1), t(0))
        .unwrap();
    ledger
        .observe("data", &rel("done.bin"), id(20, 1, 2), t(0))
        .unwrap();
    let done = ledger
        .due(10, t(1))
        .unwrap()
        .into_iter()
        .find(|f| f.rel_path == rel("done.bin"))
        .unwrap();
    ack(&mut ledger, &done, t(2));

    let gone = ledger.vanished("data", &rel("due.bin")).unwrap();
    assert_eq!(
        gone,
        Some(Vanished {
            root: "data".into(),
            rel_path: rel("due.bin"),
            size: 10,
            due_since: t(0),
        })
    );
    assert_eq!(ledger.vanished("data", &rel("done.bin")).unwrap(), None);
    assert_eq!(ledger.vanished("data", &rel("never.bin")).unwrap(), None);
    assert!(ledger.due(10, t(3)).unwrap().is_empty());
    assert_eq!(ledger.due_summary().unwrap(), DueSummary::default());
    assert_eq!(ledger.state("data", &rel("done.bin")).unwrap(), None);

    // Coming back makes it new (and due) again.
    let back = ledger
        .observe("data", &rel("due.bin"), id(10, 1, 1), t(4))
        .unwrap();
    assert_eq!(back, Observed::New);
}

#[test]
fn a_sweep_after_a_rescan_forgets_files_not_seen_and_reports_the_due_ones() {
    let dir = tempfile::tempdir().unwrap();
    let mut ledger = open(&dir);
    let scan = |root: &str, names: &[&str]| -> Vec<Observation> {
        names
            .iter()
            .zip(1..)
            .map(|(name, inode)| Observation {
                root: root.into(),
                rel_path: rel(name),
                identity: id(5, 1, inode),
                written: false,
            })
            .collect()
    };
    ledger
        .observe_many(&scan("data", &["keep", "lost-due", "lost-done"]), t(0))
        .unwrap();
    ledger
        .observe_many(&scan("logs", &["other"]), t(0))
        .unwrap();
    let done = ledger
        .due(10, t(1))
        .unwrap()
        .into_iter()
        .find(|f| f.rel_path == rel("lost-done"))
        .unwrap();
    ack(&mut ledger, &done, t(1));

    let seen = ledger
        .observe_many(&scan("data", &["keep"]), t(10))
        .unwrap();
    assert_eq!(seen, [Observed::Unchanged]);
    let gone = ledger.sweep("data", t(10)).unwrap();
    let names: Vec<_> = gone.iter().map(|v| v.rel_path.clone()).collect();
    assert_eq!(names, [rel("lost-due")]);
    assert_eq!(ledger.state("data", &rel("lost-done")).unwrap(), None);
    assert_eq!(due_names(&ledger, t(11)), ["data:keep", "logs:other"]);
}

#[test]
fn a_file_still_settling_at_a_rescan_is_not_taken_for_vanished() {
    let dir = tempfile::tempdir().unwrap();
    let mut ledger = open(&dir);
    let seen = |name: &str, inode| Observation {
        root: "data".into(),
        rel_path: rel(name),
        identity: id(5, 1, inode),
        written: false,
    };
    ledger
        .observe_many(&[seen("settled", 1), seen("young", 2)], t(0))
        .unwrap();
    // A rescan finds both; "young" was just rewritten and is still settling,
    // so it is not observed, only noted as there.
    ledger.observe_many(&[seen("settled", 1)], t(10)).unwrap();
    assert_eq!(ledger.still_there(&[seen("young", 2)], t(10)).unwrap(), 1);
    assert!(ledger.sweep("data", t(10)).unwrap().is_empty());
    assert_eq!(
        ledger.state("data", &rel("young")).unwrap(),
        Some(FileState::Due)
    );
}

#[test]
fn names_that_are_not_utf8_survive_the_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let raw: &[u8] = b"caf\xe9/\xff\xfe measurement\n.bin";
    let name = Path::new(OsStr::from_bytes(raw));
    {
        let mut ledger = open(&dir);
        assert_eq!(
            ledger.observe("data", name, id(1, 1, 1), t(0)).unwrap(),
            Observed::New
        );
        assert_eq!(
            ledger.observe("data", name, id(1, 1, 1), t(1)).unwrap(),
            Observed::Unchanged
        );
    }
    let ledger = open(&dir);
    let due = ledger.due(10, t(2)).unwrap();
    assert_eq!(due[0].rel_path.as_os_str().as_bytes(), raw);
    let roots = BTreeMap::from([("data".to_owned(), PathBuf::from("/srv/data"))]);
    let paths = due_paths(&ledger, &roots);
    let mut expected = b"/srv/data/".to_vec();
    expected.extend_from_slice(raw);
    assert_eq!(paths.len(), 1);
    assert_eq!(paths[0].as_os_str().as_bytes(), expected);
}

fn due_paths(ledger: &Ledger, roots: &BTreeMap<String, PathBuf>) -> Vec<PathBuf> {
    let mut paths = Vec::new();
    ledger
        .for_each_due_path(roots, |p| paths.push(p.to_owned()))
        .unwrap();
    paths
}

#[test]
fn due_paths_come_in_byte_order_across_roots_whose_names_share_a_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let mut ledger = open(&dir);
    for (root, name) in [("a", "z.bin"), ("a", "b/c"), ("b", "a.bin"), ("a", "b.bin")] {
        ledger.observe(root, &rel(name), id(1, 1, 1), t(0)).unwrap();
    }
    // "/srv/data-x/" sorts before "/srv/data/" ('-' < '/').
    let roots = BTreeMap::from([
        ("a".to_owned(), PathBuf::from("/srv/data")),
        ("b".to_owned(), PathBuf::from("/srv/data-x")),
    ]);
    let paths = due_paths(&ledger, &roots);
    let mut sorted = paths.clone();
    sorted.sort_by(|x, y| x.as_os_str().as_bytes().cmp(y.as_os_str().as_bytes()));
    assert_eq!(paths, sorted);
    assert_eq!(paths.len(), 4);
    assert_eq!(paths[0], PathBuf::from("/srv/data-x/a.bin"));
}

#[test]
fn due_paths_cover_due_and_in_flight_files_of_configured_roots_only() {
    let dir = tempfile::tempdir().unwrap();
    let mut ledger = open(&dir);
    ledger
        .observe("data", &rel("x/a.bin"), id(1, 1, 1), t(0))
        .unwrap();
    ledger
        .observe("data", &rel("b.bin"), id(1, 1, 2), t(1))
        .unwrap();
    ledger
        .observe("data", &rel("c.bin"), id(1, 1, 3), t(2))
        .unwrap();
    ledger
        .observe("gone", &rel("d.bin"), id(1, 1, 4), t(3))
        .unwrap();
    let due = ledger.due(10, t(4)).unwrap();
    ack(&mut ledger, &due[1], t(5));
    ledger.mark_sending(&[due[2].key]).unwrap();
    let roots = BTreeMap::from([("data".to_owned(), PathBuf::from("/srv/data"))]);
    let mut paths = due_paths(&ledger, &roots);
    paths.sort();
    assert_eq!(
        paths,
        [
            PathBuf::from("/srv/data/c.bin"),
            PathBuf::from("/srv/data/x/a.bin")
        ]
    );
}

#[test]
fn markers_are_kept_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut ledger = open(&dir);
        assert_eq!(ledger.marker("legacy-import").unwrap(), None);
        ledger.set_marker("legacy-import", t(5)).unwrap();
        ledger.set_marker("legacy-import", t(6)).unwrap();
    }
    assert_eq!(open(&dir).marker("legacy-import").unwrap(), Some(t(6)));
}

#[test]
fn the_ledger_is_in_wal_mode_at_the_current_schema_version() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = open(&dir);
    let raw = rusqlite::Connection::open(ledger.path()).unwrap();
    let mode: String = raw
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .unwrap();
    let version: u32 = raw
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!((mode.as_str(), version), ("wal", SCHEMA_VERSION));
}

#[test]
fn a_ledger_from_a_newer_agent_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.sqlite");
    drop(Ledger::open(&path).unwrap());
    rusqlite::Connection::open(&path)
        .unwrap()
        .pragma_update(None, "user_version", 99)
        .unwrap();
    let err = Ledger::open(&path).unwrap_err();
    assert!(
        matches!(err, LedgerError::TooNew { found: 99, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("ledger.sqlite"), "{err}");
}

#[test]
fn an_unreadable_ledger_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.sqlite");
    std::fs::write(&path, b"this is not a database, just some text long enough").unwrap();
    let err = Ledger::open(&path).unwrap_err();
    assert!(err.to_string().contains("ledger.sqlite"), "{err}");
}

#[test]
fn a_read_only_reader_sees_the_writers_commits_and_leaves_batches_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = open(&dir);
    writer
        .observe("data", &rel("a"), id(3, 1, 1), t(0))
        .unwrap();
    let key = writer.due(1, t(1)).unwrap()[0].key;
    writer.mark_sending(&[key]).unwrap();
    let reader = Ledger::open_read_only(writer.path()).unwrap();
    assert_eq!(reader.due_summary().unwrap().bytes, 3);
    assert_eq!(
        reader.state("data", &rel("a")).unwrap(),
        Some(FileState::SentPending)
    );
    writer
        .observe("data", &rel("b"), id(4, 1, 2), t(2))
        .unwrap();
    assert_eq!(reader.due_summary().unwrap().bytes, 7);
}

#[test]
fn a_missing_ledger_is_not_created_by_a_reader() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.sqlite");
    let err = Ledger::open_read_only(&path).unwrap_err();
    assert!(err.to_string().contains("ledger.sqlite"), "{err}");
    assert!(!path.exists());
}

/// Environment variable through which `acks_survive_kill_9` hands its child
/// the ledger path.
const KILL9_ENV: &str = "FERRY_LEDGER_KILL9";

/// The child half of `acks_survive_kill_9`; does nothing unless started by it.
#[test]
#[ignore = "started by acks_survive_kill_9"]
fn kill_9_child() {
    use std::io::Write;
    let Some(path) = std::env::var_os(KILL9_ENV) else {
        return;
    };
    let mut ledger = Ledger::open(Path::new(&path)).unwrap();
    for i in 0..100 {
        let name = rel(&format!("file-{i:03}"));
        ledger.observe("data", &name, id(i, 1, i), t(0)).unwrap();
    }
    let due = ledger.due(100, t(1)).unwrap();
    for batch in due[..50].chunks(10) {
        let keys: Vec<FileKey> = batch.iter().map(|f| f.key).collect();
        ledger.mark_sending(&keys).unwrap();
        let acks: Vec<Acked> = keys
            .iter()
            .map(|&key| Acked {
                key,
                sha256: [1; 32],
            })
            .collect();
        assert_eq!(ledger.mark_acked(&acks, t(2)).unwrap().len(), 10);
    }
    let in_flight: Vec<FileKey> = due[50..60].iter().map(|f| f.key).collect();
    ledger.mark_sending(&in_flight).unwrap();
    println!("acked");
    std::io::stdout().flush().unwrap();
    // Keep the ledger busy until the parent kills us mid-write.
    for n in 0.. {
        let name = rel(&format!("busy-{n}"));
        ledger
            .observe("data", &name, id(1, 1, 1000 + n), t(3))
            .unwrap();
    }
}

#[test]
fn acks_survive_kill_9() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.sqlite");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "ledger::tests::kill_9_child",
            "--ignored",
            "--nocapture",
        ])
        .env(KILL9_ENV, &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let acked = std::io::BufReader::new(stdout)
        .lines()
        .any(|line| line.unwrap().contains("acked"));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(acked, "the child did not get to its acks");

    let ledger = Ledger::open(&path).unwrap();
    for i in 0..100 {
        let state = ledger.state("data", &rel(&format!("file-{i:03}"))).unwrap();
        let expected = if i < 50 {
            FileState::Done
        } else {
            FileState::Due
        };
        assert_eq!(state, Some(expected), "file-{i:03}");
    }
    let due = ledger.due(usize::MAX, t(10)).unwrap();
    let mut names: Vec<PathBuf> = due.iter().map(|f| f.rel_path.clone()).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), due.len(), "a file is in the ledger twice");
    assert!(due.len() >= 50);
}

fn written(identity: Identity) -> Observation {
    Observation {
        root: "data".into(),
        rel_path: rel("a.bin"),
        identity,
        written: true,
    }
}

/// `a.bin` observed, sent and acked with hash `[7; 32]`, post-ack work done.
fn backed_up(ledger: &mut Ledger, identity: Identity) -> DueFile {
    ledger
        .observe("data", &rel("a.bin"), identity, t(0))
        .unwrap();
    let file = ledger.due(10, t(1)).unwrap().remove(0);
    ledger.mark_sending(&[file.key]).unwrap();
    let acked = ack(ledger, &file, t(2));
    ledger.post_ack_done(&acked).unwrap();
    file
}

#[test]
fn a_file_seen_written_after_its_backup_is_compared_even_with_the_same_identity() {
    let dir = tempfile::tempdir().unwrap();
    let mut ledger = open(&dir);
    let first = backed_up(&mut ledger, id(10, 1, 1));
    // A scan of the same identity changes nothing...
    assert_eq!(
        ledger
            .observe("data", &rel("a.bin"), id(10, 1, 1), t(3))
            .unwrap(),
        Observed::Unchanged
    );
    assert!(ledger.due(10, t(3)).unwrap().is_empty());
    // ...but a write event does: due again, to be compared with the ack.
    let seen = ledger.observe_many(&[written(id(10, 1, 1))], t(4)).unwrap();
    assert_eq!(seen, [Observed::ChangedAfterBackup]);
    let due = ledger.due(10, t(4)).unwrap().remove(0);
    assert_eq!(due.compare_with, Some([7; 32]));
    assert!(due.key.generation > first.key.generation);
    // Same content after all: done again, with no new post-ack work.
    ledger.mark_sending(&[due.key]).unwrap();
    assert_eq!(ledger.mark_unchanged(&[due.key]).unwrap(), 1);
    assert_eq!(
        ledger.state("data", &rel("a.bin")).unwrap(),
        Some(FileState::Done)
    );
    assert!(ledger.post_ack_pending().unwrap().is_empty());
    assert!(ledger.due(10, t(5)).unwrap().is_empty());
}

#[test]
fn a_changed_ctime_alone_makes_a_file_due_but_not_in_rows_that_never_had_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut ledger = open(&dir);
    backed_up(&mut ledger, id(10, 1, 1));
    let touched = Identity {
        ctime_ns: 5_000_000_001,
        ..id(10, 1, 1)
    };
    assert_eq!(
        ledger
            .observe("data", &rel("a.bin"), touched, t(3))
            .unwrap(),
        Observed::ChangedAfterBackup
    );
    assert_eq!(ledger.due(10, t(3)).unwrap()[0].compare_with, Some([7; 32]));

    // A row written before ctimes were recorded (0) takes the first one
    // seen without counting it as a change.
    let dir = tempfile::tempdir().unwrap();
    let mut ledger = open(&dir);
    backed_up(
        &mut ledger,
        Identity {
            ctime_ns: 0,
            ..id(10, 1, 1)
        },
    );
    assert_eq!(
        ledger
            .observe("data", &rel("a.bin"), touched, t(3))
            .unwrap(),
        Observed::Unchanged
    );
    assert_eq!(
        ledger
            .observe(
                "data",
                &rel("a.bin"),
                Identity {
                    ctime_ns: 6_000_000_000,
                    ..touched
                },
                t(4)
            )
            .unwrap(),
        Observed::ChangedAfterBackup
    );
}

#[test]
fn an_ack_for_content_rewritten_on_the_wire_is_kept_to_compare_the_new_content_with() {
    let dir = tempfile::tempdir().unwrap();
    let mut ledger = open(&dir);
    ledger
        .observe("data", &rel("a.bin"), id(10, 1, 1), t(0))
        .unwrap();
    let sent = ledger.due(10, t(1)).unwrap().remove(0);
    ledger.mark_sending(&[sent.key]).unwrap();
    // Rewritten while on the wire, with the same identity.
    ledger.observe_many(&[written(id(10, 1, 1))], t(2)).unwrap();
    assert!(ack(&mut ledger, &sent, t(3)).is_empty());
    let due = ledger.due(10, t(3)).unwrap().remove(0);
    assert_eq!(due.compare_with, Some([7; 32]));
}

#[test]
fn the_content_recheck_pages_through_done_files_and_makes_a_changed_one_due() {
    let dir = tempfile::tempdir().unwrap();
    let mut ledger = open(&dir);
    let file = backed_up(&mut ledger, id(10, 1, 1));
    let page = ledger.done_page(0, 10).unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].sha256, [7; 32]);
    assert!(ledger.done_page(page[0].key.id, 10).unwrap().is_empty());
    assert!(ledger.content_changed(page[0].key, t(5)).unwrap());
    let due = ledger.due(10, t(5)).unwrap().remove(0);
    assert!(due.key.generation > file.key.generation);
    assert_eq!(due.compare_with, None, "known to differ: no comparison");
    assert!(!ledger.content_changed(page[0].key, t(6)).unwrap());
}

#[test]
fn files_copied_by_indexerd_are_done_unsent_until_they_change() {
    let dir = tempfile::tempdir().unwrap();
    let mut ledger = open(&dir);
    let obs = |name: &str, identity| Observation {
        root: "data".into(),
        rel_path: rel(name),
        identity,
        written: false,
    };
    // Listed as due by indexerD too: already due, and stays so.
    ledger
        .observe("data", &rel("due.bin"), id(1, 10, 1), t(0))
        .unwrap();
    let copied = [obs("old.bin", id(5, 10, 2)), obs("due.bin", id(1, 10, 1))];
    assert_eq!(ledger.mark_copied(&copied, t(1)).unwrap(), 1);
    assert_eq!(
        ledger.state("data", &rel("old.bin")).unwrap(),
        Some(FileState::Done)
    );
    assert_eq!(due_names(&ledger, t(2)), ["data:due.bin"]);
    assert!(ledger.post_ack_pending().unwrap().is_empty());
    assert_eq!(ledger.knows(&copied).unwrap(), [true, true]);
    assert_eq!(
        ledger
            .knows(&[obs("old.bin", id(6, 10, 2)), obs("new.bin", id(1, 1, 1))])
            .unwrap(),
        [false, false]
    );
    // Unchanged at the next scan: nothing to send. Changed: due.
    assert_eq!(
        ledger
            .observe("data", &rel("old.bin"), id(5, 10, 2), t(3))
            .unwrap(),
        Observed::Unchanged
    );
    assert_eq!(
        ledger
            .observe("data", &rel("old.bin"), id(6, 11, 2), t(4))
            .unwrap(),
        Observed::ChangedAfterBackup
    );
    assert_eq!(due_names(&ledger, t(5)), ["data:due.bin", "data:old.bin"]);
}
