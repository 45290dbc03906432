//! glibc malloc tunables the daemons run with.
//!
//! glibc reads its tunables from the environment only when a process starts,
//! so [`tune`] runs the daemon itself again once with them set (same pid:
//! `exec`). A value already in the environment is kept, so an operator can
//! still choose another.
//!
//! - `MALLOC_ARENA_MAX`: threads that allocate get their own arenas (up to
//!   eight per core), each keeping freed chunk buffers; that made the
//!   agent's resident memory several times its working set.
//! - `MALLOC_MMAP_THRESHOLD_` 4 MiB and `MALLOC_TRIM_THRESHOLD_` 16 MiB: with
//!   glibc's moving defaults, 1 MiB chunk buffers were mapped and unmapped,
//!   or trimmed from the heap and faulted in again, every page zeroed anew
//!   by the kernel: page faults were 15% of the agent's CPU while it sent a
//!   1 GiB file. Fixed thresholds let freed buffers be reused (BENCHMARKS.md
//!   has the figures).

use std::os::unix::process::CommandExt as _;

/// The tunables for a daemon allowed `arenas` malloc arenas.
pub fn tunables(arenas: u32) -> [(&'static str, String); 3] {
    [
        ("MALLOC_ARENA_MAX", arenas.to_string()),
        ("MALLOC_MMAP_THRESHOLD_", (4u32 << 20).to_string()),
        ("MALLOC_TRIM_THRESHOLD_", (16u32 << 20).to_string()),
    ]
}

/// Re-executes the running program with [`tunables`] added to its
/// environment, unless every one is set already. Returns only if nothing
/// needed setting or the `exec` failed (logged; the daemon runs on with
/// glibc's defaults).
pub fn tune(arenas: u32) {
    let missing: Vec<(&str, String)> = tunables(arenas)
        .into_iter()
        .filter(|(name, _)| std::env::var_os(name).is_none())
        .collect();
    if missing.is_empty() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let error = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .envs(missing)
        .exec();
    tracing::warn!(%error, "cannot re-execute with the malloc tunables set; memory use may be higher");
}
