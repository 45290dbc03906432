//! The station agent as a real process against a real collector: finished
//! files travel once and whole, restarts and `kill -9` lose and duplicate
//! nothing, `HALT_FLAG` and `DUE_BACKUP` keep their legacy meanings.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns may unwrap

use std::io::Write;
use std::time::Duration;

use ferry_tests::agent::{TestAgent, eventually, tree};
use ferry_tests::collector::TestCollector;
use ferry_tests::pki::TestPki;

const WAIT: Duration = Duration::from_secs(30);

/// Waits until the repository holds `count` files of `station`'s root.
async fn stored(collector: &TestCollector, station: &str, count: usize) -> Vec<std::path::PathBuf> {
    let dir = collector.repository().join(station).join("data");
    eventually(WAIT, || {
        let files = tree(&dir);
        (files.len() >= count).then_some(files)
    })
    .await
    .unwrap_or_else(|| panic!("{station}: expected {count} files, have {:?}", tree(&dir)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_written_slowly_are_sent_once_whole_after_they_close() {
    ferry_tests::init_logging();
    let pki = TestPki::new().unwrap();
    let mut collector = TestCollector::new(&pki, "").unwrap();
    let endpoint = collector.start().await.unwrap();
    let mut agent = TestAgent::new(&pki, "s1", &endpoint, "").unwrap();
    agent.start().unwrap();

    let path = agent.root.join("rfeye002073_220307_T175758.bin");
    let mut file = std::fs::File::create(&path).unwrap();
    let mut content = Vec::new();
    for piece in 0..6u8 {
        let data = vec![piece; 100_000];
        file.write_all(&data).unwrap();
        file.flush().unwrap();
        content.extend_from_slice(&data);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    drop(file);
    stored(&collector, "s1", 1).await;
    let (primary, backup) = collector.settled_rows(1).await.unwrap();
    // Give a wrongly early send (of a partial file) the chance to show up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        std::fs::read(
            collector
                .repository()
                .join("s1/data/rfeye002073_220307_T175758.bin")
        )
        .unwrap(),
        content
    );
    assert_eq!(
        tree(&collector.repository().join("s1/data")).len(),
        1,
        "a partial version was stored too"
    );
    assert_eq!(primary.len(), 1);
    assert_eq!(primary, backup);
    agent.stop().unwrap();
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_full_by_bytes_goes_at_once_and_a_small_one_lingers() {
    ferry_tests::init_logging();
    let pki = TestPki::new().unwrap();
    let mut collector = TestCollector::new(&pki, "").unwrap();
    let endpoint = collector.start().await.unwrap();
    let mut agent = TestAgent::new(&pki, "s1", &endpoint, "").unwrap();
    // A linger far longer than the test waits, and a 1 MiB batch.
    let text = std::fs::read_to_string(&agent.config_path)
        .unwrap()
        .replace("max_bytes = 67108864", "max_bytes = 1048576")
        .replace("linger_ms = 50", "linger_ms = 600000");
    std::fs::write(&agent.config_path, text).unwrap();
    agent.start().unwrap();

    // One file over max_bytes fills a batch by itself: no lingering.
    std::fs::write(agent.root.join("big.bin"), vec![7u8; 2 << 20]).unwrap();
    stored(&collector, "s1", 1).await;

    // A small file alone lingers (the linger is really in force).
    std::fs::write(agent.root.join("small.bin"), b"small").unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        tree(&collector.repository().join("s1/data")),
        vec![std::path::PathBuf::from("big.bin")],
        "the small file did not wait for its linger"
    );
    agent.stop().unwrap();
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_made_while_the_agent_was_down_are_sent_and_changed_files_again() {
    ferry_tests::init_logging();
    let pki = TestPki::new().unwrap();
    let mut collector = TestCollector::new(&pki, "").unwrap();
    let endpoint = collector.start().await.unwrap();
    let mut agent = TestAgent::new(&pki, "s1", &endpoint, "").unwrap();
    agent.write("before/a.csv", b"made while the agent was down");
    agent.write("before/b.csv", b"also");
    agent.start().unwrap();
    stored(&collector, "s1", 2).await;

    agent.stop().unwrap();
    agent.write("while-down.csv", b"created while stopped");
    agent.start().unwrap();
    stored(&collector, "s1", 3).await;

    // Modified after its backup: due again, stored beside the first version.
    agent.write(
        "before/a.csv",
        b"made while the agent was down, then changed",
    );
    let files = stored(&collector, "s1", 4).await;
    assert!(
        files
            .iter()
            .any(|f| f.to_string_lossy().starts_with("before/a.")
                && f.to_string_lossy() != "before/a.csv"),
        "{files:?}"
    );
    let (primary, backup) = collector.settled_rows(4).await.unwrap();
    assert_eq!(primary.len(), 4, "{primary:#?}");
    assert_eq!(primary, backup);
    agent.stop().unwrap();
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_names_travel_and_due_backup_stays_one_path_per_line() {
    ferry_tests::init_logging();
    let pki = TestPki::new().unwrap();
    let mut collector = TestCollector::new(&pki, "").unwrap();
    // The collector is not started yet: files stay due and DUE_BACKUP shows them.
    let endpoint = collector.endpoint();
    let endpoint = if endpoint.ends_with(":0") {
        let addr = ferry_tests::process::free_port().unwrap();
        collector.pin_port(addr).unwrap();
        addr.to_string()
    } else {
        endpoint
    };
    let mut agent = TestAgent::new(&pki, "s1", &endpoint, "").unwrap();
    let deep = "a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p/q/r/s/t/deep.bin";
    let names = [
        "empty.bin",
        deep,
        "ünïcödé ñame.csv",
        "line\nbreak.csv",
        "tab\there.csv",
    ];
    for (i, name) in names.iter().enumerate() {
        let content = if i == 0 {
            Vec::new()
        } else {
            format!("content {i}").into_bytes()
        };
        agent.write(name, &content);
    }
    agent.start().unwrap();
    let lines = eventually(WAIT, || {
        let lines = agent.due_backup();
        (lines.len() == names.len() - 1).then_some(lines)
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "DUE_BACKUP: {:?}\nagent log:\n{}",
            agent.due_backup(),
            agent.log_text()
        )
    });
    let mut expected: Vec<String> = names
        .iter()
        .filter(|n| !n.contains('\n'))
        .map(|n| agent.root.join(n).to_string_lossy().into_owned())
        .collect();
    expected.sort();
    assert_eq!(
        lines, expected,
        "DUE_BACKUP must list the due set, sorted, one path per line"
    );
    // While the collector stays away, DUE_BACKUP keeps following the due set.
    let late = agent.write("late.bin", b"written while the collector is down");
    let lines = eventually(WAIT, || {
        let lines = agent.due_backup();
        (lines.len() == names.len()).then_some(lines)
    })
    .await
    .unwrap_or_else(|| panic!("DUE_BACKUP did not follow: {:?}", agent.due_backup()));
    assert!(lines.contains(&late.to_string_lossy().into_owned()));

    collector.start().await.unwrap();
    let files = stored(&collector, "s1", names.len() + 1).await;
    assert_eq!(files.len(), names.len() + 1);
    assert_eq!(
        std::fs::read(collector.repository().join("s1/data/line\nbreak.csv")).unwrap(),
        b"content 3"
    );
    assert_eq!(
        std::fs::metadata(collector.repository().join("s1/data/empty.bin"))
            .unwrap()
            .len(),
        0
    );
    eventually(WAIT, || agent.due_backup().is_empty().then_some(()))
        .await
        .expect("DUE_BACKUP emptied after the acks");
    let done = std::fs::read_to_string(&agent.settings.legacy.backup_done).unwrap();
    assert_eq!(done.lines().count(), names.len(), "BACKUP_DONE: {done:?}");
    agent.stop().unwrap();
    collector.stop().await;
}

/// Acks are recorded beside the streaming of the next batch; none may be
/// left unrecorded when `HALT_FLAG` comes down. Whenever the flag is seen
/// lowered (before, during and after a burst of several batches),
/// `DUE_BACKUP` is the ledger's due set and, with `BACKUP_DONE`, accounts
/// for every file exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whenever_the_flag_is_lowered_due_backup_and_backup_done_are_exact() {
    ferry_tests::init_logging();
    let pki = TestPki::new().unwrap();
    let mut collector = TestCollector::new(&pki, "").unwrap();
    let addr = ferry_tests::process::free_port().unwrap();
    collector.pin_port(addr).unwrap();
    let mut agent = TestAgent::new(&pki, "s1", &addr.to_string(), "").unwrap();
    // Four batches of the test config's 100 files.
    let count = 400;
    for i in 0..count {
        agent.write(&format!("burst/{i:03}.bin"), &vec![(i % 251) as u8; 4096]);
    }
    agent.start().unwrap();
    eventually(WAIT, || (agent.due_backup().len() == count).then_some(()))
        .await
        .expect("DUE_BACKUP lists the burst while the collector is away");
    collector.start().await.unwrap();

    let flag = agent.settings.legacy.halt_flag.clone();
    let done_path = agent.settings.legacy.backup_done.clone();
    let deadline = std::time::Instant::now() + WAIT;
    let mut looks = 0;
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "the ledger still has due files after {WAIT:?} ({looks} looks at a lowered flag)"
        );
        if flag.exists() {
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        }
        let due = agent.due_backup();
        let done = std::fs::read_to_string(&done_path)
            .map(|t| t.lines().count())
            .unwrap_or(0);
        let ledger_due = agent.ledger().unwrap().due_summary().unwrap().files;
        if flag.exists() {
            continue; // raised while looking: not one consistent look
        }
        looks += 1;
        assert_eq!(
            due.len() as u64,
            ledger_due,
            "HALT_FLAG lowered over a DUE_BACKUP that is not the due set"
        );
        assert_eq!(
            due.len() + done,
            count,
            "HALT_FLAG lowered with DUE_BACKUP ({}) and BACKUP_DONE ({done}) not accounting for the {count} files",
            due.len()
        );
        if ledger_due == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    stored(&collector, "s1", count).await;
    agent.stop().unwrap();
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_agent_mid_transfer_loses_and_duplicates_nothing() {
    ferry_tests::init_logging();
    let pki = TestPki::new().unwrap();
    let mut collector =
        TestCollector::new(&pki, "max_chunk_bytes = 65536\nwindow_bytes = 262144").unwrap();
    let endpoint = collector.start().await.unwrap();
    let mut agent = TestAgent::new(&pki, "s1", &endpoint, "").unwrap();
    let count = 300;
    for i in 0..count {
        let size = if i % 50 == 0 {
            3_000_000
        } else {
            20_000 + i * 7
        };
        agent.write(
            &format!("batch/{:03}/f{i}.bin", i % 10),
            &vec![(i % 251) as u8; size],
        );
    }
    agent.start().unwrap();
    // Kill it twice, at different points of the transfer.
    for threshold in [20, 120] {
        stored(&collector, "s1", threshold).await;
        agent.kill9();
        agent.start().unwrap();
    }
    let files = stored(&collector, "s1", count).await;
    assert_eq!(files.len(), count, "every file once, none beside itself");
    let (primary, backup) = collector.settled_rows(count).await.unwrap();
    assert_eq!(primary.len(), count);
    assert_eq!(primary, backup);
    for f in &files {
        let original = std::fs::read(agent.root.join(f)).unwrap();
        assert_eq!(
            std::fs::read(collector.repository().join("s1/data").join(f)).unwrap(),
            original
        );
    }
    let summary = eventually(WAIT, || {
        let s = agent.ledger().unwrap().due_summary().unwrap();
        (s.files == 0).then_some(s)
    })
    .await;
    assert!(summary.is_some(), "ledger still has due files");
    agent.stop().unwrap();
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_halt_flag_pauses_sending_until_removed_and_a_stale_one_is_taken_over() {
    ferry_tests::init_logging();
    let pki = TestPki::new().unwrap();
    let mut collector = TestCollector::new(&pki, "").unwrap();
    let endpoint = collector.start().await.unwrap();
    let mut agent = TestAgent::new(&pki, "s1", &endpoint, "").unwrap();
    let flag = agent.settings.legacy.halt_flag.clone();
    std::fs::create_dir_all(flag.parent().unwrap()).unwrap();
    std::fs::write(&flag, "pid=1\nhost=central\npurpose=backup\n").unwrap();
    agent.write("one.bin", b"1");
    agent.start().unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        tree(&collector.repository()).is_empty(),
        "sent while someone else held HALT_FLAG"
    );
    assert!(flag.exists(), "a fresh foreign flag was removed");
    std::fs::remove_file(&flag).unwrap();
    stored(&collector, "s1", 1).await;

    // A foreign flag older than the halt timeout is stale and taken over.
    agent.stop().unwrap();
    std::fs::write(&flag, "pid=1\nhost=central\npurpose=backup\n").unwrap();
    let old = std::time::SystemTime::now() - Duration::from_secs(24 * 3600);
    std::fs::File::options()
        .write(true)
        .open(&flag)
        .unwrap()
        .set_modified(old)
        .unwrap();
    agent.write("two.bin", b"2");
    agent.start().unwrap();
    stored(&collector, "s1", 2).await;
    agent.stop().unwrap();
    assert!(agent.log_text().contains("HALT_FLAG") || !flag.exists());
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_halt_pauses_until_resume() {
    ferry_tests::init_logging();
    let pki = TestPki::new().unwrap();
    let mut collector = TestCollector::new(&pki, "").unwrap();
    let endpoint = collector.start().await.unwrap();
    let mut agent = TestAgent::new(&pki, "s1", &endpoint, "").unwrap();
    let bin = ferry_tests::process::binary("ferry-agent").unwrap();
    let config = agent.config_path.to_string_lossy().into_owned();
    std::fs::create_dir_all(agent.settings.legacy.halt_flag.parent().unwrap()).unwrap();
    let halt = ferry_tests::process::run(&bin, &["halt", "--config", &config]).unwrap();
    assert!(
        halt.status.success(),
        "{}",
        String::from_utf8_lossy(&halt.stderr)
    );
    agent.write("x.bin", b"x");
    agent.start().unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        tree(&collector.repository()).is_empty(),
        "sent while halted"
    );
    let status =
        ferry_tests::process::run(&bin, &["status", "--json", "--config", &config]).unwrap();
    let json = String::from_utf8_lossy(&status.stdout);
    assert!(json.contains("\"due_files\":1"), "{json}");
    assert!(json.contains("operator"), "{json}");
    let resume = ferry_tests::process::run(&bin, &["resume", "--config", &config]).unwrap();
    assert!(resume.status.success());
    stored(&collector, "s1", 1).await;
    agent.stop().unwrap();
    collector.stop().await;
}

/// Peak resident memory of a process, from /proc (VmHWM), in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_a_3_gib_sparse_file_keeps_agent_memory_bounded() {
    ferry_tests::init_logging();
    let pki = TestPki::new().unwrap();
    // The collector keeps its copy in RAM-backed tmpfs, not on the disk.
    let collector_dir = pki.dir.path().join("collector");
    std::fs::create_dir_all(&collector_dir).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4g", "tmpfs"])
        .arg(&collector_dir)
        .status()
        .unwrap();
    assert!(
        mounted.success(),
        "mounting a tmpfs needs root (CI runs as root)"
    );
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    let _unmount = Unmount(collector_dir);
    let mut collector = TestCollector::new(&pki, "").unwrap();
    collector.settings.reserve = 0;
    let endpoint = collector.start().await.unwrap();
    let mut agent = TestAgent::new(&pki, "s1", &endpoint, "").unwrap();
    let size: u64 = 3 << 30;
    let path = agent.root.join("huge.bin");
    let file = std::fs::File::create(&path).unwrap();
    file.set_len(size).unwrap();
    drop(file);
    agent.start().unwrap();
    let pid = agent.pid().unwrap();
    let stored_path = collector.repository().join("s1/data/huge.bin");
    let arrived = eventually(Duration::from_secs(240), || {
        std::fs::metadata(&stored_path)
            .ok()
            .filter(|m| m.len() == size)
            .map(|_| ())
    })
    .await;
    assert!(
        arrived.is_some(),
        "the 3 GiB file did not arrive; agent log:\n{}",
        agent.log_text()
    );
    let peak = peak_rss_kib(pid);
    println!(
        "agent peak RSS while streaming a 3 GiB file: {:.1} MiB",
        peak as f64 / 1024.0
    );
    assert!(peak < 96 * 1024, "agent peak RSS {peak} KiB: not bounded");
    let (primary, _) = collector.settled_rows(1).await.unwrap();
    assert_eq!(primary[0].size, size);
    agent.stop().unwrap();
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_mode_root_is_found_without_inotify_and_an_indexerd_list_is_imported() {
    ferry_tests::init_logging();
    let pki = TestPki::new().unwrap();
    let mut collector = TestCollector::new(&pki, "").unwrap();
    let endpoint = collector.start().await.unwrap();
    let mut agent = TestAgent::new(&pki, "s1", &endpoint, "").unwrap();
    // Rewrite the root as polled every second.
    let text = std::fs::read_to_string(&agent.config_path).unwrap();
    let text = text.replace(
        "exclude = [\"*.tmp\"]\n",
        "exclude = [\"*.tmp\"]\npoll = true\npoll_interval_secs = 1\n",
    );
    std::fs::write(&agent.config_path, text).unwrap();
    agent.settings = ferry_agent::config::load(&agent.config_path).unwrap();
    assert!(agent.settings.roots[0].poll.is_some());
    // An indexerD DUE_BACKUP: a real file, a missing one, junk lines.
    let listed = agent.write("legacy/listed.bin", b"listed by indexerD");
    let due = &agent.settings.legacy.due_backup;
    std::fs::create_dir_all(due.parent().unwrap()).unwrap();
    std::fs::write(
        due,
        format!(
            "{}\r\n\n/nowhere/missing.bin\nrelative/path.bin\n{}\n",
            listed.display(),
            listed.display()
        ),
    )
    .unwrap();
    agent.start().unwrap();
    stored(&collector, "s1", 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    agent.write("polled/late.bin", b"appears later");
    stored(&collector, "s1", 2).await;
    eventually(WAIT, || agent.due_backup().is_empty().then_some(()))
        .await
        .expect("DUE_BACKUP rewritten to the (empty) due set");
    assert!(
        agent.log_text().contains("imported indexerD DUE_BACKUP"),
        "{}",
        agent.log_text()
    );
    agent.stop().unwrap();
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_validates_the_config_and_names_what_is_wrong() {
    let pki = TestPki::new().unwrap();
    let agent = TestAgent::new(&pki, "s1", "127.0.0.1:9", "").unwrap();
    let bin = ferry_tests::process::binary("ferry-agent").unwrap();
    let config = agent.config_path.to_string_lossy().into_owned();
    let ok = ferry_tests::process::run(&bin, &["--check", "--config", &config]).unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("station s1"));

    let text = std::fs::read_to_string(&agent.config_path).unwrap();
    std::fs::write(&agent.config_path, format!("colour = \"blue\"\n{text}")).unwrap();
    let bad = ferry_tests::process::run(&bin, &["--check", "--config", &config]).unwrap();
    assert_eq!(bad.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("colour") && stderr.contains("agent.toml"),
        "{stderr}"
    );

    // A certificate for another station than the config names.
    std::fs::write(&agent.config_path, format!("station = \"other\"\n{text}")).unwrap();
    let mismatch = ferry_tests::process::run(&bin, &["--check", "--config", &config]).unwrap();
    assert!(!mismatch.status.success());
    let stderr = String::from_utf8_lossy(&mismatch.stderr);
    assert!(stderr.contains("is for station s1"), "{stderr}");
}
