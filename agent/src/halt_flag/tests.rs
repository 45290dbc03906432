//! Tests of the halt flag on real files in temporary directories; time is
//! passed in and file mtimes are set, so nothing sleeps.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::*;

const TIMEOUT: Duration = Duration::from_secs(300 * 60);
const HOST: &str = "station-01";
/// Above Linux's largest `pid_max`: never a running process.
const DEAD_PID: u32 = 4_194_305;

fn flag_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("HALT_FLAG")
}

/// This test process as an agent.
fn agent(dir: &tempfile::TempDir) -> HaltFlag {
    HaltFlag::new(flag_path(dir), TIMEOUT).with_process(std::process::id(), HOST, None)
}

/// Another agent process on the same host (pid 1 always runs).
fn other_agent(dir: &tempfile::TempDir) -> HaltFlag {
    HaltFlag::new(flag_path(dir), TIMEOUT).with_process(1, HOST, None)
}

fn set_mtime(path: &Path, t: SystemTime) {
    File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(t)
        .unwrap();
}

fn mtime(path: &Path) -> SystemTime {
    fs::metadata(path).unwrap().modified().unwrap()
}

fn minutes(n: u64) -> Duration {
    Duration::from_secs(n * 60)
}

fn held(raise: Raise) -> Held {
    match raise {
        Raise::Raised(held) | Raise::TookOver { held, .. } => held,
        Raise::Busy(holder) => panic!("busy: {holder}"),
    }
}

fn busy(raise: Raise) -> Holder {
    match raise {
        Raise::Busy(holder) => holder,
        other => panic!("expected busy, got {other:?}"),
    }
}

/// Leaves no stray private files beside the flag.
fn assert_only_flag(dir: &tempfile::TempDir, flag: bool) {
    let names: Vec<String> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let expected: &[&str] = if flag { &["HALT_FLAG"] } else { &[] };
    assert_eq!(names, expected);
}

#[test]
fn raising_writes_who_holds_it_and_lowering_removes_it() {
    let dir = tempfile::tempdir().unwrap();
    let now = SystemTime::now();
    let held = held(agent(&dir).raise("transfer", now).unwrap());
    let text = fs::read_to_string(flag_path(&dir)).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "owner=ferry-agent");
    assert_eq!(lines[1], format!("pid={}", std::process::id()));
    assert_eq!(lines[2], format!("host={HOST}"));
    assert!(
        lines[3].starts_with("time=20") && lines[3].ends_with('Z'),
        "{text}"
    );
    assert_eq!(lines[4], "purpose=transfer");
    assert!(lines[5].starts_with("token="), "{text}");
    assert_only_flag(&dir, true);

    let holder = agent(&dir).holder().unwrap().unwrap();
    assert_eq!(holder.pid, Some(std::process::id()));
    assert_eq!(holder.purpose.as_deref(), Some("transfer"));

    assert_eq!(held.lower().unwrap(), Lowered::Removed);
    assert_only_flag(&dir, false);
    assert_eq!(agent(&dir).holder().unwrap(), None);
}

#[test]
fn dropping_a_held_flag_lowers_it() {
    let dir = tempfile::tempdir().unwrap();
    drop(held(
        agent(&dir).raise("transfer", SystemTime::now()).unwrap(),
    ));
    assert_only_flag(&dir, false);
}

#[test]
fn a_foreign_flag_makes_us_wait_and_is_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = flag_path(&dir);
    fs::write(&path, "indexerD\n").unwrap();
    let raised_at = mtime(&path);
    let holder = busy(
        agent(&dir)
            .raise("transfer", raised_at + minutes(299))
            .unwrap(),
    );
    assert_eq!(holder.content, "indexerD\n");
    assert_eq!(fs::read_to_string(&path).unwrap(), "indexerD\n");
    assert_eq!(mtime(&path), raised_at);
    assert_only_flag(&dir, true);
}

#[test]
fn another_running_agents_flag_makes_us_wait() {
    let dir = tempfile::tempdir().unwrap();
    let now = SystemTime::now();
    let theirs = held(other_agent(&dir).raise("transfer", now).unwrap());
    let holder = busy(agent(&dir).raise("transfer", now + minutes(1)).unwrap());
    assert_eq!(holder.pid, Some(1));
    assert_eq!(theirs.lower().unwrap(), Lowered::Removed);
    held(agent(&dir).raise("transfer", now + minutes(2)).unwrap());
}

#[test]
fn a_stale_foreign_flag_is_taken_over_naming_its_holder() {
    let dir = tempfile::tempdir().unwrap();
    let path = flag_path(&dir);
    fs::write(&path, "pid=777\nhost=central\npurpose=backup\n").unwrap();
    let t0 = SystemTime::now() - minutes(24 * 60);
    set_mtime(&path, t0);

    busy(agent(&dir).raise("transfer", t0 + TIMEOUT).unwrap());
    match agent(&dir)
        .raise("transfer", t0 + TIMEOUT + minutes(1))
        .unwrap()
    {
        Raise::TookOver {
            held,
            previous,
            why,
        } => {
            assert_eq!(why, TakeOver::Stale);
            assert_eq!(previous.pid, Some(777));
            assert_eq!(previous.host.as_deref(), Some("central"));
            assert_eq!(
                previous.to_string(),
                "an unknown program pid 777 on central for backup"
            );
            let text = fs::read_to_string(&path).unwrap();
            assert!(
                text.contains(&format!("pid={}", std::process::id())),
                "{text}"
            );
            assert_only_flag(&dir, true);
            assert_eq!(held.lower().unwrap(), Lowered::Removed);
        }
        other => panic!("expected a take-over, got {other:?}"),
    }
}

#[test]
fn we_never_remove_a_flag_that_was_taken_from_us() {
    let dir = tempfile::tempdir().unwrap();
    let path = flag_path(&dir);
    let t0 = SystemTime::now();
    let ours = held(agent(&dir).raise("transfer", t0).unwrap());
    // We held it too long without refreshing: the other agent takes it.
    set_mtime(&path, t0 - TIMEOUT - minutes(1));
    let theirs = match other_agent(&dir).raise("transfer", t0).unwrap() {
        Raise::TookOver { held, why, .. } => {
            assert_eq!(why, TakeOver::Stale);
            held
        }
        other => panic!("expected a take-over, got {other:?}"),
    };
    let text = fs::read_to_string(&path).unwrap();
    match ours.lower().unwrap() {
        Lowered::NotOurs(holder) => assert_eq!(holder.pid, Some(1)),
        other => panic!("expected NotOurs, got {other:?}"),
    }
    assert_eq!(fs::read_to_string(&path).unwrap(), text);
    assert_only_flag(&dir, true);
    assert_eq!(theirs.lower().unwrap(), Lowered::Removed);
}

#[test]
fn a_foreign_flag_in_our_place_survives_our_drop_and_refresh() {
    let dir = tempfile::tempdir().unwrap();
    let path = flag_path(&dir);
    let ours = held(agent(&dir).raise("transfer", SystemTime::now()).unwrap());
    fs::remove_file(&path).unwrap();
    fs::write(&path, "indexerD\n").unwrap();
    let t = SystemTime::now() - minutes(5);
    set_mtime(&path, t);
    assert!(!ours.refresh(SystemTime::now()).unwrap());
    assert_eq!(mtime(&path), t);
    drop(ours);
    assert_eq!(fs::read_to_string(&path).unwrap(), "indexerD\n");
}

#[test]
fn lowering_a_flag_someone_removed_is_not_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let ours = held(agent(&dir).raise("transfer", SystemTime::now()).unwrap());
    fs::remove_file(flag_path(&dir)).unwrap();
    assert_eq!(ours.lower().unwrap(), Lowered::Gone);
}

#[test]
fn refreshing_keeps_a_long_hold_from_going_stale() {
    let dir = tempfile::tempdir().unwrap();
    let path = flag_path(&dir);
    let t0 = SystemTime::now() - minutes(10 * 60);
    let ours = held(agent(&dir).raise("transfer", t0).unwrap());
    set_mtime(&path, t0);
    let later = t0 + TIMEOUT - minutes(1);
    assert!(ours.refresh(later).unwrap());
    assert_eq!(mtime(&path), later);
    busy(
        other_agent(&dir)
            .raise("transfer", t0 + TIMEOUT + minutes(1))
            .unwrap(),
    );
    assert_eq!(ours.lower().unwrap(), Lowered::Removed);
}

#[test]
fn the_flag_of_a_dead_agent_of_this_host_is_taken_over_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = flag_path(&dir);
    let now = SystemTime::now();
    let dead = HaltFlag::new(&path, TIMEOUT).with_process(DEAD_PID, HOST, None);
    held(dead.raise("transfer", now).unwrap()).keep();
    match agent(&dir).raise("transfer", now + minutes(1)).unwrap() {
        Raise::TookOver { previous, why, .. } => {
            assert_eq!(why, TakeOver::HolderGone);
            assert_eq!(previous.pid, Some(DEAD_PID));
        }
        other => panic!("expected a take-over, got {other:?}"),
    }
}

#[test]
fn a_dead_pid_on_another_host_or_program_is_not_taken_as_gone() {
    let dir = tempfile::tempdir().unwrap();
    let path = flag_path(&dir);
    let now = SystemTime::now();
    for content in [
        format!("owner=ferry-agent\npid={DEAD_PID}\nhost=elsewhere\n"),
        format!("owner=indexerD\npid={DEAD_PID}\nhost={HOST}\n"),
    ] {
        fs::write(&path, &content).unwrap();
        busy(agent(&dir).raise("transfer", now).unwrap());
        assert_eq!(fs::read_to_string(&path).unwrap(), content);
    }
}

#[test]
fn an_agents_flag_from_before_the_last_boot_is_taken_over_even_if_its_pid_runs_again() {
    let dir = tempfile::tempdir().unwrap();
    let path = flag_path(&dir);
    let booted = SystemTime::now() - minutes(30);
    fs::write(&path, format!("owner=ferry-agent\npid=1\nhost={HOST}\n")).unwrap();
    set_mtime(&path, booted - minutes(5));
    let after_boot =
        HaltFlag::new(&path, TIMEOUT).with_process(std::process::id(), HOST, Some(booted));
    match after_boot.raise("transfer", SystemTime::now()).unwrap() {
        Raise::TookOver { why, .. } => assert_eq!(why, TakeOver::HolderGone),
        other => panic!("expected a take-over, got {other:?}"),
    }
}

#[test]
fn an_operator_halt_is_kept_never_goes_stale_and_ends_with_resume() {
    let dir = tempfile::tempdir().unwrap();
    let path = flag_path(&dir);
    let t0 = SystemTime::now();
    // `ferry-agent halt` runs as a short-lived process that then exits.
    let cli = HaltFlag::new(&path, TIMEOUT).with_process(DEAD_PID, HOST, None);
    let halt = held(cli.raise_operator_halt(t0).unwrap());
    drop(halt);
    assert!(path.exists(), "an operator halt must outlive the command");
    set_mtime(&path, t0 - minutes(30 * 24 * 60));

    let holder = busy(agent(&dir).raise("transfer", t0).unwrap());
    assert!(holder.is_operator_halt());
    assert_eq!(
        agent(&dir).may_take_over(&holder, t0 + minutes(1_000_000)),
        None
    );

    assert!(matches!(cli.resume().unwrap(), Resumed::Removed(h) if h.is_operator_halt()));
    assert_only_flag(&dir, false);
    assert_eq!(cli.resume().unwrap(), Resumed::NotHalted);
    held(agent(&dir).raise("transfer", t0).unwrap());
}

#[test]
fn resume_leaves_any_other_flag_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = flag_path(&dir);
    fs::write(&path, "indexerD\n").unwrap();
    let err = agent(&dir).resume().unwrap_err();
    assert!(
        matches!(err, HaltFlagError::NotOperatorHalt { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("HALT_FLAG"), "{err}");
    assert_eq!(fs::read_to_string(&path).unwrap(), "indexerD\n");

    fs::remove_file(&path).unwrap();
    let theirs = held(
        other_agent(&dir)
            .raise("transfer", SystemTime::now())
            .unwrap(),
    );
    assert!(agent(&dir).resume().is_err());
    assert_eq!(theirs.lower().unwrap(), Lowered::Removed);
}

#[test]
fn an_operator_halt_waits_while_the_agent_holds_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let now = SystemTime::now();
    let ours = held(agent(&dir).raise("transfer", now).unwrap());
    let cli = HaltFlag::new(flag_path(&dir), TIMEOUT).with_process(DEAD_PID, HOST, None);
    let holder = busy(cli.raise_operator_halt(now).unwrap());
    assert_eq!(holder.purpose.as_deref(), Some("transfer"));
    ours.lower().unwrap();
    held(cli.raise_operator_halt(now).unwrap());
    assert!(agent(&dir).holder().unwrap().unwrap().is_operator_halt());
}

#[test]
fn garbage_in_the_flag_file_is_a_holder_of_unknown_kind() {
    let dir = tempfile::tempdir().unwrap();
    let path = flag_path(&dir);
    let t0 = SystemTime::now() - minutes(24 * 60);
    let mut garbage = vec![0xff, 0x00, b'=', b'\n', b'p', b'i', b'd', b'=', b'x'];
    garbage.extend(std::iter::repeat_n(b'z', 10_000));
    for content in [Vec::new(), garbage] {
        fs::write(&path, &content).unwrap();
        set_mtime(&path, t0);
        let holder = busy(agent(&dir).raise("transfer", t0 + minutes(1)).unwrap());
        assert_eq!(holder.pid, None);
        assert!(holder.content.len() <= 4096 + 8, "{}", holder.content.len());
        assert!(
            holder.to_string().starts_with("an unknown holder"),
            "{holder}"
        );
        // Stale garbage is taken over like any stale flag.
        let ours = held(
            agent(&dir)
                .raise("transfer", t0 + TIMEOUT + minutes(1))
                .unwrap(),
        );
        assert_eq!(ours.lower().unwrap(), Lowered::Removed);
    }
}

#[test]
fn a_flag_we_cannot_create_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let flag = HaltFlag::new(dir.path().join("missing").join("HALT_FLAG"), TIMEOUT);
    let err = flag.raise("transfer", SystemTime::now()).unwrap_err();
    assert!(matches!(err, HaltFlagError::Raise { .. }), "{err}");
    assert!(err.to_string().contains("missing/HALT_FLAG"), "{err}");
}

#[test]
fn purposes_cannot_inject_lines() {
    let dir = tempfile::tempdir().unwrap();
    let _held = held(
        agent(&dir)
            .raise("x\npurpose=operator-halt", SystemTime::now())
            .unwrap(),
    );
    let holder = agent(&dir).holder().unwrap().unwrap();
    assert_eq!(holder.purpose.as_deref(), Some("x purpose=operator-halt"));
    assert!(!holder.is_operator_halt());
}

#[test]
fn retry_delays_lie_between_half_the_maximum_and_the_maximum() {
    let max = Duration::from_secs(60);
    assert_eq!(retry_delay_from(max, 0), Duration::from_secs(30));
    assert_eq!(retry_delay_from(max, u64::MAX), max);
    for _ in 0..1000 {
        let d = retry_delay(max);
        assert!(d >= max / 2 && d <= max, "{d:?}");
    }
}

#[test]
fn times_are_written_in_rfc3339_utc() {
    let at = |secs| rfc3339(UNIX_EPOCH + Duration::from_secs(secs));
    assert_eq!(at(0), "1970-01-01T00:00:00Z");
    assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
    assert_eq!(at(1_700_000_000), "2023-11-14T22:13:20Z");
    assert_eq!(at(4_102_444_799), "2099-12-31T23:59:59Z");
}
