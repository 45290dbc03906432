//! The fuzz targets' committed inputs, replayed on stable Rust: every seed in
//! `fuzz/seeds/<target>/` and every reproducer of a fixed bug in
//! `fuzz/regressions/<target>/` goes through the very checks the fuzz
//! targets run (`fuzz/src/<target>.rs`, included here), and the committed
//! seeds must be what those files generate now.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

#[path = "../../fuzz/src/config.rs"]
mod config;
#[path = "../../fuzz/src/due_backup.rs"]
mod due_backup;
#[path = "../../fuzz/src/frame.rs"]
mod frame;
#[path = "../../fuzz/src/path.rs"]
mod path;
#[path = "../../fuzz/src/zmtp.rs"]
mod zmtp;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// The files of `fuzz/<kind>/<target>/`, sorted by name.
fn files(kind: &str, target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = fuzz_dir().join(kind).join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut files: Vec<(String, Vec<u8>)> = entries
        .map(|entry| {
            let entry = entry.unwrap();
            let name = entry.file_name().into_string().unwrap();
            (name, std::fs::read(entry.path()).unwrap())
        })
        .collect();
    files.sort();
    files
}

/// Runs `check` on every seed and regression of `target`; returns how many.
fn replay(target: &str, check: fn(&[u8])) -> usize {
    let mut count = 0;
    for kind in ["seeds", "regressions"] {
        for (name, bytes) in files(kind, target) {
            let outcome = std::panic::catch_unwind(|| check(&bytes));
            assert!(
                outcome.is_ok(),
                "fuzz/{kind}/{target}/{name} fails its check"
            );
            count += 1;
        }
    }
    count
}

fn assert_committed(target: &str, mut generated: Vec<(String, Vec<u8>)>) {
    generated.sort();
    let committed = files("seeds", target);
    let names =
        |list: &[(String, Vec<u8>)]| list.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(
        names(&committed),
        names(&generated),
        "fuzz/seeds/{target} is stale: run `cargo run --manifest-path fuzz/Cargo.toml --example seed`"
    );
    for ((name, committed), (_, generated)) in committed.iter().zip(&generated) {
        assert!(
            committed == generated,
            "fuzz/seeds/{target}/{name} is stale: run `cargo run --manifest-path fuzz/Cargo.toml --example seed`"
        );
    }
}

#[test]
fn frame_inputs_pass_the_frame_checks() {
    assert!(replay("frame", frame::check) >= 20);
}

#[test]
fn path_inputs_pass_the_path_checks() {
    assert!(replay("path", path::check) >= 17);
}

#[test]
fn config_inputs_pass_the_config_checks() {
    assert!(replay("config", config::check) >= 4);
}

#[test]
fn due_backup_inputs_pass_the_due_backup_checks() {
    assert!(replay("due_backup", due_backup::check) >= 3);
}

#[test]
fn zmtp_inputs_pass_the_zmtp_checks() {
    assert!(replay("zmtp", zmtp::check) >= 6);
}

/// Found by the `due_backup` target: the import kept "/\r" (a last line
/// without a newline), Ferry wrote it as "/\r\n", and that read back as "/".
#[test]
fn due_backup_name_ending_in_carriage_return_round_trips() {
    let reproducer = fuzz_dir().join("regressions/due_backup/name_ending_in_carriage_return");
    due_backup::check(&std::fs::read(reproducer).unwrap());
}

/// Found by the `due_backup` target: the import dropped duplicates by `Path`
/// equality after a byte sort, so "/a" and "//a" survived or merged by chance
/// of their neighbours, and a list Ferry wrote imported back different.
#[test]
fn due_backup_spellings_of_one_path_deduplicated_by_chance() {
    let reproducer =
        fuzz_dir().join("regressions/due_backup/spellings_of_one_path_deduplicated_by_chance");
    due_backup::check(&std::fs::read(reproducer).unwrap());
}

/// Found by the `config` target's invariants: `heartbeat_secs = 4294968` was
/// accepted and reached agents as 704 ms (the u32 millisecond field wrapped).
#[test]
fn config_heartbeat_overflows_protocol_field() {
    let reproducer = fuzz_dir().join("regressions/config/heartbeat_overflows_protocol_field.toml");
    config::check(&std::fs::read(reproducer).unwrap());
}

/// Found by the `config` target's invariants: a handshake timeout of u64::MAX
/// seconds was accepted, and every connection panicked adding it to the clock.
#[test]
fn config_handshake_timeout_overflows_clock() {
    let reproducer = fuzz_dir().join("regressions/config/handshake_timeout_overflows_clock.toml");
    config::check(&std::fs::read(reproducer).unwrap());
}

#[test]
fn committed_seeds_are_what_the_fuzz_crate_generates() {
    assert_committed("frame", frame::seeds());
    assert_committed("path", path::seeds());
    assert_committed("config", config::seeds());
    assert_committed("due_backup", due_backup::seeds());
    assert_committed("zmtp", zmtp::seeds());
}
