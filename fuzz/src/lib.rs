//! What each fuzz target checks, and the seed inputs it starts from.
//!
//! One module per target. The libFuzzer binaries in `fuzz_targets/` call
//! `check`; the workspace test `tests/tests/fuzz_seeds.rs` includes these same
//! files and replays every committed seed and regression through `check` on
//! stable Rust, and compares the committed seeds with `seeds()`.
#![forbid(unsafe_code)]

pub mod config;
pub mod due_backup;
pub mod frame;
pub mod path;
pub mod zmtp;

/// The fuzz targets, by name (a binary in `fuzz_targets/` each).
pub const TARGETS: &[&str] = &["frame", "path", "config", "due_backup", "zmtp"];

/// The committed seed inputs of `target`, as (file name, bytes).
pub fn seeds(target: &str) -> Option<Vec<(String, Vec<u8>)>> {
    match target {
        "frame" => Some(frame::seeds()),
        "path" => Some(path::seeds()),
        "config" => Some(config::seeds()),
        "due_backup" => Some(due_backup::seeds()),
        "zmtp" => Some(zmtp::seeds()),
        _ => None,
    }
}
