//! A file rewritten in place reaches the repository even when its size,
//! mtime and inode say nothing changed: on a filesystem with one-second
//! timestamps (a same-size rewrite within the second of the acknowledged
//! version), and on any filesystem when the writer puts the mtime back
//! (`touch -d`, `cp -p`, `rsync -t`, `tar x`), while the agent runs and
//! while it is stopped.
//!
//! Needs root (it loop-mounts an ext4 image made with 128-byte inodes, whose
//! timestamps have whole seconds only), as CI has.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns may unwrap

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ferry_agent::ledger::FileState;
use ferry_tests::agent::{TestAgent, eventually, tree};
use ferry_tests::collector::TestCollector;
use ferry_tests::pki::TestPki;

const WAIT: Duration = Duration::from_secs(30);

/// An ext4 image with 128-byte inodes (one-second timestamps) mounted
/// through a loop device; unmounted on drop.
struct CoarseExt4(PathBuf);

impl CoarseExt4 {
    fn mount(image: &Path, at: &Path) -> Self {
        let file = std::fs::File::create(image).unwrap();
        file.set_len(64 << 20).unwrap();
        drop(file);
        let made = Command::new("mkfs.ext4")
            .args(["-q", "-F", "-I", "128"])
            .arg(image)
            .output()
            .unwrap();
        assert!(made.status.success(), "mkfs.ext4 -I 128: {made:?}");
        std::fs::create_dir_all(at).unwrap();
        let mounted = Command::new("mount")
            .args(["-o", "loop"])
            .arg(image)
            .arg(at)
            .output()
            .unwrap();
        assert!(
            mounted.status.success(),
            "loop-mounting an ext4 image needs root (CI runs as root): {mounted:?}"
        );
        Self(at.to_owned())
    }
}

impl Drop for CoarseExt4 {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Size, mtime, ctime (to the nanosecond) and inode: all a scan can see.
fn metadata(path: &Path) -> (u64, i64, i64, i64, i64, u64) {
    let m = std::fs::symlink_metadata(path).unwrap();
    (
        m.len(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec(),
        m.ino(),
    )
}

/// Waits until the agent's ledger says `rel` is acknowledged.
async fn acked(agent: &TestAgent, rel: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let state = agent
            .ledger()
            .ok()
            .and_then(|l| l.state("data", Path::new(rel)).ok().flatten());
        if state == Some(FileState::Done) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{rel} was never acknowledged; agent log:\n{}",
            agent.log_text()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until some file of the station's repository holds `content`.
async fn arrives(collector: &TestCollector, agent: &TestAgent, content: &[u8], what: &str) {
    let dir = collector.repository().join("s1/data");
    let found = eventually(WAIT, || {
        tree(&dir)
            .into_iter()
            .find(|rel| std::fs::read(dir.join(rel)).is_ok_and(|c| c == content))
    })
    .await;
    assert!(
        found.is_some(),
        "{what} never reached the repository (it holds {:?}); agent log:\n{}",
        tree(&dir),
        agent.log_text()
    );
}

/// `size` bytes that differ from every other call's.
fn content(tag: &str, size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(size);
    while out.len() < size {
        out.extend_from_slice(tag.as_bytes());
        out.push(b' ');
    }
    out.truncate(size);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_same_size_rewrite_in_the_second_of_the_acked_version_is_sent() {
    ferry_tests::init_logging();
    let pki = TestPki::new().unwrap();
    let mut collector = TestCollector::new(&pki, "").unwrap();
    let endpoint = collector.start().await.unwrap();
    let mut agent = TestAgent::new(&pki, "s1", &endpoint, "").unwrap();
    let _fs = CoarseExt4::mount(&pki.dir.path().join("ext4.img"), &agent.root);
    agent.start().unwrap();

    // The rewrite must keep every piece of metadata of the acknowledged
    // version: so the ack has to come within the second the first version
    // was written in. On a busy machine it may not; then that file's
    // rewrite proves nothing and the next file tries again.
    let mut proven = None;
    for attempt in 0..20 {
        let rel = format!("f{attempt}.bin");
        let path = agent.root.join(&rel);
        let into_second = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        tokio::time::sleep(Duration::from_nanos(u64::from(1_000_000_000 - into_second))).await;
        std::fs::write(&path, content(&format!("first {attempt}"), 4096)).unwrap();
        let first = metadata(&path);
        acked(&agent, &rel).await;
        let second = content(&format!("second {attempt}"), 4096);
        std::fs::write(&path, &second).unwrap();
        if metadata(&path) == first {
            proven = Some(second);
            break;
        }
    }
    let second = proven.expect("no ack came within the second of its file's write in 20 tries");
    arrives(&collector, &agent, &second, "the rewritten content").await;
    agent.stop().unwrap();
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewrite_whose_mtime_is_put_back_is_sent_while_running_and_after_a_restart() {
    ferry_tests::init_logging();
    let pki = TestPki::new().unwrap();
    let mut collector = TestCollector::new(&pki, "").unwrap();
    let endpoint = collector.start().await.unwrap();
    let mut agent = TestAgent::new(&pki, "s1", &endpoint, "").unwrap();
    agent.start().unwrap();

    let path = agent.root.join("g.bin");
    std::fs::write(&path, content("first", 10_000)).unwrap();
    acked(&agent, "g.bin").await;
    let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
    // Rewritten in place, then the old mtime put back, as `touch -d`,
    // `cp -p`, `rsync -t` and `tar x` do: size, mtime and inode are the
    // acknowledged version's.
    let put_back = |data: &[u8]| {
        let before = metadata(&path);
        std::fs::write(&path, data).unwrap();
        let file = std::fs::File::options().write(true).open(&path).unwrap();
        file.set_modified(mtime).unwrap();
        drop(file);
        let after = metadata(&path);
        assert_eq!(
            (after.0, after.1, after.2, after.5),
            (before.0, before.1, before.2, before.5),
            "the rewrite did not keep size, mtime and inode"
        );
    };
    let second = content("second", 10_000);
    put_back(&second);
    arrives(
        &collector,
        &agent,
        &second,
        "the content rewritten while running",
    )
    .await;
    acked(&agent, "g.bin").await;

    agent.stop().unwrap();
    let third = content("third", 10_000);
    put_back(&third);
    agent.start().unwrap();
    arrives(
        &collector,
        &agent,
        &third,
        "the content rewritten while stopped",
    )
    .await;
    let (primary, backup) = collector.settled_rows(3).await.unwrap();
    assert_eq!(primary.len(), 3, "{primary:#?}");
    assert_eq!(primary, backup);
    agent.stop().unwrap();
    collector.stop().await;
}
