//! Regression: the agent's memory grew with the files present when it
//! started (the whole tree, the due set and `DUE_BACKUP` were lists in
//! memory): on the debug build its peak was 17.1 MiB with 2,000 files and
//! 32.8 MiB with 20,000. Its peak and idle resident memory with ten times
//! the files present at start now differ by about 1 MiB.
//!
//! The benchmark's figures (100,000 files, release build) are in
//! BENCHMARKS.md; this is the same property at a scale the suite can
//! afford, measured on the debug build, so it compares two runs rather than
//! holding either to an absolute figure.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns may unwrap

use std::time::{Duration, Instant};

use ferry_tests::agent::{TestAgent, eventually};
use ferry_tests::collector::TestCollector;
use ferry_tests::pki::TestPki;

/// A `/proc/<pid>/status` field in KiB.
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Starts an agent over `files` files of 1 KiB present before it starts,
/// waits until the collector holds them all, and returns the agent's peak
/// and then idle resident memory in KiB.
async fn memory_with(files: usize) -> (u64, u64) {
    let pki = TestPki::new().unwrap();
    let mut collector = TestCollector::new(&pki, "").unwrap();
    let endpoint = collector.start().await.unwrap();
    let mut agent = TestAgent::new(&pki, "s1", &endpoint, "").unwrap();
    let text = std::fs::read_to_string(&agent.config_path)
        .unwrap()
        .replace("max_files = 100\n", "max_files = 1000\n");
    std::fs::write(&agent.config_path, text).unwrap();
    let content = vec![b'x'; 1024];
    for i in 0..files {
        agent.write(
            &format!("d{:02}/rfeye{:06}_T{i:06}.bin", i % 50, i),
            &content,
        );
    }
    agent.start().unwrap();
    let pid = agent.pid().unwrap();
    let settings = collector.settings.clone();
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let stored = ferry_collector::admin::status(&settings, Some("s1"), 0)
            .ok()
            .and_then(|s| s.stations.first().map(|s| s.host_files))
            .unwrap_or(0);
        if stored >= files as u64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{stored} of {files} files stored after 10 minutes; agent log:\n{}",
            agent.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Idle: nothing due, DUE_BACKUP rewritten empty and HALT_FLAG lowered
    // after it (the sender's last steps once the due set is empty).
    let halt_flag = agent.settings.legacy.halt_flag.clone();
    let due_backup = agent.settings.legacy.due_backup.clone();
    let idle = eventually(Duration::from_secs(60), || {
        let nothing_due = agent
            .ledger()
            .ok()
            .and_then(|l| l.due_summary().ok())
            .is_some_and(|d| d.files == 0);
        let listed_none = std::fs::metadata(&due_backup).is_ok_and(|m| m.len() == 0);
        (nothing_due && listed_none && !halt_flag.exists()).then_some(())
    })
    .await;
    assert!(
        idle.is_some(),
        "the agent did not go idle; agent log:\n{}",
        agent.log_text()
    );
    let idle = status_kib(pid, "VmRSS:");
    let peak = status_kib(pid, "VmHWM:");
    agent.stop().unwrap();
    collector.stop().await;
    (peak, idle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_does_not_grow_with_the_files_present_at_start() {
    ferry_tests::init_logging();
    let (few_peak, few_idle) = memory_with(2_000).await;
    let (many_peak, many_idle) = memory_with(20_000).await;
    println!(
        "agent peak / idle RSS: 2,000 files {:.1} / {:.1} MiB, 20,000 files {:.1} / {:.1} MiB",
        few_peak as f64 / 1024.0,
        few_idle as f64 / 1024.0,
        many_peak as f64 / 1024.0,
        many_idle as f64 / 1024.0
    );
    // The ledger's page cache fills with the larger ledger, and the
    // allocator keeps some of what a longer run touched. Lists of the files
    // (a few hundred bytes each, as the tree, the due set and DUE_BACKUP
    // were) added 16 MiB.
    assert!(
        many_peak <= few_peak + 6 * 1024,
        "peak RSS grew from {few_peak} KiB to {many_peak} KiB with 18,000 more files"
    );
    assert!(
        many_idle <= few_idle + 6 * 1024,
        "idle RSS grew from {few_idle} KiB to {many_idle} KiB with 18,000 more files"
    );
}
