//! Disk full is back-pressure, not data loss: on a small filesystem the
//! collector refuses new data with a retryable error, keeps nothing partial
//! under a final name, and takes the data once space returns.
//!
//! Needs root (it mounts a tmpfs of fixed size), as CI has.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns may unwrap

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ferry_agent::sender::{Flow, OutgoingFile, send_batch};
use ferry_collector::repository::{FileKey, Repository};
use ferry_common::link::{ClientLink, ClientLinkConfig};
use ferry_common::protocol::*;
use ferry_common::station::StationId;
use ferry_tests::collector::TestCollector;
use ferry_tests::pki::TestPki;
use ferry_tests::station::sha256;

/// A tmpfs of fixed size, unmounted on drop.
struct SmallFs(PathBuf);

impl SmallFs {
    fn mount(at: &Path, size: &str) -> Self {
        std::fs::create_dir_all(at).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .unwrap();
        assert!(
            status.success(),
            "mounting a tmpfs needs root (CI runs as root)"
        );
        Self(at.to_owned())
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            walk(&path, out);
        } else {
            out.push(path);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn below_the_reserve_offers_are_refused_as_retryable_and_resume_later() {
    full_disk_scenario(1 << 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_hits_enospc_leaves_nothing_partial_and_resumes_later() {
    full_disk_scenario(0).await;
}

async fn full_disk_scenario(reserve: u64) {
    ferry_tests::init_logging();
    let pki = TestPki::new().unwrap();
    let _fs = SmallFs::mount(&pki.dir.path().join("collector"), "8m");
    // Ballast the operator can delete later to make room.
    let ballast = pki.dir.path().join("collector/ballast");
    std::fs::write(&ballast, vec![1u8; 3 << 20]).unwrap();
    let mut collector = TestCollector::new(&pki, "max_chunk_bytes = 65536").unwrap();
    collector.settings.reserve = reserve;
    let endpoint = collector.start().await.unwrap();

    let station_files = pki.station("s1").unwrap();
    let config = ClientLinkConfig {
        station: StationId::new("s1").unwrap(),
        endpoints: vec![endpoint.clone()],
        tls: pki.client_config(&station_files).unwrap(),
        runtime_dir: pki.scratch("agent-run"),
        connect_timeout: Duration::from_secs(5),
        heartbeat: Duration::from_secs(1),
        software: "disk full test".into(),
    };
    let mut link = ClientLink::connect(&config, &endpoint).await.unwrap();
    let dir = pki.scratch("station");
    let files: Vec<OutgoingFile> = (0..6u8)
        .map(|i| {
            let content = vec![i; 900_000];
            let abs = dir.join(format!("f{i}.bin"));
            std::fs::write(&abs, &content).unwrap();
            OutgoingFile {
                root: "data".into(),
                rel_path: format!("f{i}.bin").into_bytes(),
                abs_path: abs,
                size: content.len() as u64,
                mtime_ns: 1,
                sha256: None,
            }
        })
        .collect();

    // One file per batch, as a station streams them: the disk fills up.
    let mut flow = Flow::default();
    let mut refused = Vec::new();
    for (i, f) in files.iter().enumerate() {
        let report = send_batch(&mut link, &mut flow, i as u64, std::slice::from_ref(f))
            .await
            .unwrap();
        match &report[0].outcome {
            Outcome::Stored { .. } => {}
            Outcome::Failed(e) => {
                assert_eq!(e.code, ErrorCode::DiskFull, "{e}");
                assert!(e.retryable());
                refused.push(f.clone());
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        !refused.is_empty(),
        "the filesystem never filled up: the test proves nothing"
    );
    assert!(
        refused.len() < files.len(),
        "nothing was stored before the disk filled"
    );

    // Whatever sits under a final name is complete and correct.
    let mut stored = Vec::new();
    walk(&collector.repository(), &mut stored);
    assert_eq!(stored.len(), files.len() - refused.len());
    for path in &stored {
        let name = path.file_name().unwrap().to_str().unwrap();
        let original = std::fs::read(dir.join(name)).unwrap();
        assert_eq!(
            sha256(&std::fs::read(path).unwrap()),
            sha256(&original),
            "{name} is partial"
        );
    }

    // Space returns; the refused files go through on retry.
    std::fs::remove_file(&ballast).unwrap();
    for (i, f) in refused.iter().enumerate() {
        let report = send_batch(
            &mut link,
            &mut flow,
            100 + i as u64,
            std::slice::from_ref(f),
        )
        .await
        .unwrap();
        assert!(
            matches!(report[0].outcome, Outcome::Stored { .. }),
            "{report:?}"
        );
    }
    let mut all = Vec::new();
    walk(&collector.repository(), &mut all);
    assert_eq!(all.len(), files.len());
    let (primary, backup) = collector.settled_rows(files.len()).await.unwrap();
    assert_eq!(primary.len(), files.len());
    assert_eq!(primary, backup);
    collector.stop().await;
}

#[test]
fn a_full_disk_mid_file_leaves_only_whole_written_blocks_staged() {
    // A 64 MiB file staged (with direct I/O: it is over the threshold) on a
    // 1 MiB filesystem runs out of space part-way: in small chunks, and in
    // chunks large enough to be hashed beside their writes (the collector
    // does that for files of 64 MiB or more).
    for chunk in [65_536, 384 << 10] {
        let dir = tempfile::tempdir().unwrap();
        let fs = SmallFs::mount(&dir.path().join("small"), "1m");
        let repo = Repository::open(&fs.0.join("repo"), &fs.0.join("staging")).unwrap();
        let data: Vec<u8> = (0..4u32 << 20).map(|i| (i % 251) as u8).collect();
        let key = FileKey {
            station: StationId::new("s1").unwrap(),
            root: "data".into(),
            path: "huge.bin".into(),
            size: 64 << 20,
            mtime_ns: 1,
        };
        let mut staged = repo.stage(key.clone()).unwrap();
        let mut offset = 0;
        let error = loop {
            match staged.write(offset as u64, &data[offset..offset + chunk]) {
                Ok(()) => offset += chunk,
                Err(e) => break e,
            }
        };
        assert!(error.is_disk_full(), "{chunk}: {error}");
        assert_eq!(staged.len(), offset as u64, "{chunk}");
        assert_eq!(staged.sha256(), sha256(&data[..offset]), "{chunk}");
        drop(staged);
        let on_disk = repo.staged_len(&key);
        assert_eq!(
            on_disk, offset as u64,
            "{chunk}: only the chunks written whole stay"
        );
        assert!(on_disk <= 1 << 20);
        let staged = repo.stage(key).unwrap();
        assert_eq!(staged.sha256(), sha256(&data[..offset]), "{chunk}");
        assert_eq!(staged.len(), on_disk);
        repo.discard(staged).unwrap();
    }
}
