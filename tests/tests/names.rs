//! Names are bytes, and every version is kept: regressions of what real
//! stations do, each through a real `ferry-agent` and a real
//! `ferry-collector` process. Latin-1 names that differ must not merge,
//! names near the 255-byte limit must keep versioning, a backslash is an
//! ordinary byte, a refusal that cannot succeed is said once and not
//! retried, and the plain name holds the latest version of a file that was
//! stored while still being written.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns may unwrap

use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_tests::agent::{TestAgent, eventually, tree};
use ferry_tests::collector::TestCollector;
use ferry_tests::pki::TestPki;
use ferry_tests::receiver::Receiver;

const WAIT: Duration = Duration::from_secs(30);

/// A collector process and an agent process of station s1 dialling it.
async fn started(pki: &TestPki) -> (TestCollector, TestAgent) {
    let mut collector = TestCollector::new(pki, "").unwrap();
    let endpoint = collector.spawn().await.unwrap();
    let mut agent = TestAgent::new(pki, "s1", &endpoint, "").unwrap();
    agent.start().unwrap();
    (collector, agent)
}

/// Writes `content` under the agent's root as the file named `name` (bytes).
fn write_bytes(agent: &TestAgent, name: &[u8], content: &[u8]) -> PathBuf {
    let path = agent.root.join(OsStr::from_bytes(name));
    std::fs::write(&path, content).unwrap();
    path
}

/// The names (bytes) of the files stored for s1's root.
fn stored_names(collector: &TestCollector) -> Vec<Vec<u8>> {
    tree(&collector.repository().join("s1/data"))
        .into_iter()
        .map(|p| p.as_os_str().as_bytes().to_vec())
        .collect()
}

/// Waits until the repository holds `count` files of s1's root.
async fn stored(collector: &TestCollector, count: usize) -> Vec<Vec<u8>> {
    eventually(WAIT, || {
        let names = stored_names(collector);
        (names.len() >= count).then_some(names)
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "expected {count} files, have {:?}\ncollector log:\n{}",
            stored_names(collector),
            collector.log_text()
        )
    })
}

fn read(collector: &TestCollector, name: &[u8]) -> Vec<u8> {
    std::fs::read(
        collector
            .repository()
            .join("s1/data")
            .join(OsStr::from_bytes(name)),
    )
    .unwrap_or_default()
}

/// `path_bytes` of every row of a SQLite catalog, by text path.
fn path_bytes(catalog: &Path) -> Vec<(String, Vec<u8>)> {
    let conn = rusqlite::Connection::open(catalog).unwrap();
    let mut stmt = conn
        .prepare("SELECT path, path_bytes FROM files ORDER BY path")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latin1_names_that_differ_in_one_byte_are_stored_and_catalogued_apart() {
    ferry_tests::init_logging();
    let pki = TestPki::new().unwrap();
    let (mut collector, mut agent) = started(&pki).await;
    // "café.bin" and "cafè.bin" in Latin-1: neither is UTF-8.
    write_bytes(&agent, b"caf\xe9.bin", b"e acute");
    write_bytes(&agent, b"caf\xe8.bin", b"e grave");
    let mut names = stored(&collector, 2).await;
    names.sort();
    assert_eq!(
        names,
        vec![b"caf\xe8.bin".to_vec(), b"caf\xe9.bin".to_vec()],
        "stored under other names than the station's"
    );
    assert_eq!(read(&collector, b"caf\xe9.bin"), b"e acute");
    assert_eq!(read(&collector, b"caf\xe8.bin"), b"e grave");
    let (primary, backup) = collector.settled_rows(2).await.unwrap();
    let mut paths: Vec<(&str, &str, bool)> = primary
        .iter()
        .map(|r| (r.path.as_str(), r.stored_as.as_str(), r.latest))
        .collect();
    paths.sort();
    assert_eq!(
        paths,
        vec![
            ("data/caf\\xe8.bin", "s1/data/caf\\xe8.bin", true),
            ("data/caf\\xe9.bin", "s1/data/caf\\xe9.bin", true),
        ],
        "each name is its own row, in the text form of names, and the latest of its path"
    );
    assert_eq!(primary, backup);
    // The catalog keeps the exact bytes beside the text.
    let ferry_collector::config::CatalogUrl::Sqlite(primary_file) = &collector.settings.primary
    else {
        panic!("the test collector's catalogs are SQLite files");
    };
    assert_eq!(
        path_bytes(primary_file),
        vec![
            ("data/caf\\xe8.bin".to_owned(), b"data/caf\xe8.bin".to_vec()),
            ("data/caf\\xe9.bin".to_owned(), b"data/caf\xe9.bin".to_vec()),
        ]
    );
    agent.stop().unwrap();
    collector.terminate().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_file_with_a_250_byte_name_gets_a_version_name_that_fits() {
    ferry_tests::init_logging();
    let pki = TestPki::new().unwrap();
    let (mut collector, mut agent) = started(&pki).await;
    let name = [vec![b'n'; 246], b".bin".to_vec()].concat();
    assert_eq!(name.len(), 250);
    write_bytes(&agent, &name, b"version 1");
    stored(&collector, 1).await;
    write_bytes(&agent, &name, b"version 2, longer");
    let names = stored(&collector, 2).await;
    assert!(
        names.iter().all(|n| n.len() <= 255),
        "{:?}",
        names.iter().map(Vec::len).collect::<Vec<_>>()
    );
    assert_eq!(read(&collector, &name), b"version 2, longer");
    let older: Vec<&Vec<u8>> = names.iter().filter(|n| **n != name).collect();
    assert_eq!(older.len(), 1);
    assert_eq!(read(&collector, older[0]), b"version 1");
    assert!(older[0].starts_with(b"nnnn") && older[0].ends_with(b".bin"));
    let (primary, backup) = collector.settled_rows(2).await.unwrap();
    assert_eq!(primary.len(), 2);
    assert_eq!(primary, backup);
    agent.stop().unwrap();
    collector.terminate().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_with_backslashes_and_control_characters_are_stored_as_they_are() {
    ferry_tests::init_logging();
    let pki = TestPki::new().unwrap();
    let (mut collector, mut agent) = started(&pki).await;
    let names: [&[u8]; 3] = [b"a\\b.bin", b"..\\..\\x.csv", b"bell\x07\x1b[0m.log"];
    for (i, name) in names.iter().enumerate() {
        write_bytes(&agent, name, format!("content {i}").as_bytes());
    }
    let mut stored_now = stored(&collector, names.len()).await;
    stored_now.sort();
    let mut expected: Vec<Vec<u8>> = names.iter().map(|n| n.to_vec()).collect();
    expected.sort();
    assert_eq!(stored_now, expected);
    for (i, name) in names.iter().enumerate() {
        assert_eq!(read(&collector, name), format!("content {i}").as_bytes());
    }
    let (primary, _) = collector.settled_rows(3).await.unwrap();
    assert!(
        primary.iter().any(|r| r.path == "data/a\\\\b.bin"),
        "{primary:#?}"
    );
    let status = agent_status(&agent);
    assert!(status.contains("\"due_files\":0"), "{status}");
    agent.stop().unwrap();
    collector.terminate().unwrap();
}

/// `ferry-agent status --json`.
fn agent_status(agent: &TestAgent) -> String {
    let bin = ferry_tests::process::binary("ferry-agent").unwrap();
    let config = agent.config_path.to_string_lossy().into_owned();
    let out = ferry_tests::process::run(&bin, &["status", "--json", "--config", &config]).unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_that_cannot_succeed_is_said_once_as_permanent_blocks_nothing_and_a_change_is_tried_again()
 {
    ferry_tests::init_logging();
    let pki = TestPki::new().unwrap();
    let receiver = Receiver::start(&pki, "127.0.0.1:0".parse().unwrap(), Duration::from_secs(5))
        .await
        .unwrap();
    receiver.refuse_paths_containing(b"refused");
    let mut agent = TestAgent::new(&pki, "s1", &receiver.endpoint(), "").unwrap();
    agent.write("refused.bin", b"the receiver never takes this name");
    for i in 0..3 {
        agent.write(&format!("good{i}.bin"), b"fine");
    }
    agent.start().unwrap();
    let status = eventually(WAIT, || {
        let status = agent_status(&agent);
        status.contains("\"refused_files\":1").then_some(status)
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "status never showed the refusal: {}\nlog:\n{}",
            agent_status(&agent),
            agent.log_text()
        )
    });
    assert!(status.contains("\"permanent\":true"), "{status}");
    let others = eventually(WAIT, || {
        let status = agent_status(&agent);
        status.contains("\"due_files\":1").then_some(())
    })
    .await;
    assert!(
        others.is_some(),
        "the others were held up: {}",
        agent_status(&agent)
    );
    assert_eq!(receiver.seen(|s| s.files.len()), 3);
    let log = agent.log_text();
    assert_eq!(
        log.matches("refused for good").count(),
        1,
        "said once, as permanent:\n{log}"
    );
    assert!(!log.contains("will retry"), "{log}");
    // Not offered again after a restart either.
    agent.stop().unwrap();
    agent.start().unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(receiver.seen(|s| s.refused), 1, "offered again unchanged");
    // New content may succeed: it is offered (and here refused) again.
    agent.write("refused.bin", b"new content, same name");
    let offered = eventually(WAIT, || (receiver.seen(|s| s.refused) == 2).then_some(())).await;
    assert!(offered.is_some(), "a changed file was not offered again");
    agent.stop().unwrap();
    receiver.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_stored_while_still_written_ends_with_its_whole_content_under_the_plain_name() {
    ferry_tests::init_logging();
    let pki = TestPki::new().unwrap();
    let (mut collector, mut agent) = started(&pki).await;
    let path = agent.root.join("rfeye002073_220307_T175758.bin");
    let mut file = std::fs::File::create(&path).unwrap();
    file.write_all(b"the first half, ").unwrap();
    file.flush().unwrap();
    // The writer pauses longer than settle_secs: the first half is stored.
    stored(&collector, 1).await;
    file.write_all(b"then the rest").unwrap();
    drop(file);
    let names = stored(&collector, 2).await;
    let plain = b"rfeye002073_220307_T175758.bin".to_vec();
    assert_eq!(
        read(&collector, &plain),
        b"the first half, then the rest",
        "the plain name must hold the latest version"
    );
    let older: Vec<&Vec<u8>> = names.iter().filter(|n| **n != plain).collect();
    assert_eq!(older.len(), 1, "{names:?}");
    assert_eq!(read(&collector, older[0]), b"the first half, ");
    let (primary, backup) = collector.settled_rows(2).await.unwrap();
    let mut rows: Vec<(u64, String, bool)> = primary
        .iter()
        .map(|r| (r.size, r.stored_as.clone(), r.latest))
        .collect();
    rows.sort();
    assert_eq!(
        rows,
        vec![
            (
                16,
                format!("s1/data/{}", String::from_utf8_lossy(older[0])),
                false
            ),
            (
                29,
                "s1/data/rfeye002073_220307_T175758.bin".to_owned(),
                true
            ),
        ],
        "the catalog says where each version is and which is the latest"
    );
    assert_eq!(primary, backup);
    agent.stop().unwrap();
    collector.terminate().unwrap();
}
