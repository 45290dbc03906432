//! What the agent's watcher holds back and finds on real stations: a clock
//! ahead of (or behind) the files' mtimes does not hold a file for longer
//! than `min_age_secs`, held files show in `status`, and a root that
//! appears after the start is watched by inotify at once.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns may unwrap

use std::time::{Duration, SystemTime};

use ferry_tests::agent::{TestAgent, eventually, tree};
use ferry_tests::collector::TestCollector;
use ferry_tests::pki::TestPki;

const WAIT: Duration = Duration::from_secs(30);
const DAY: Duration = Duration::from_secs(24 * 3600);

fn status(agent: &TestAgent, json: bool) -> String {
    let bin = ferry_tests::process::binary("ferry-agent").unwrap();
    let config = agent.config_path.to_string_lossy().into_owned();
    let mut args = vec!["status", "--config", &config];
    if json {
        args.push("--json");
    }
    let out = ferry_tests::process::run(&bin, &args).unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Rewrites one line of the agent's config and reloads its settings.
fn edit_config(agent: &mut TestAgent, from: &str, to: &str) {
    let text = std::fs::read_to_string(&agent.config_path).unwrap();
    assert!(text.contains(from), "{from:?} not in {text}");
    std::fs::write(&agent.config_path, text.replace(from, to)).unwrap();
    agent.settings = ferry_agent::config::load(&agent.config_path).unwrap();
}

/// Writes `rel` under the root with its mtime `ahead` in the future.
fn write_from_the_future(agent: &TestAgent, rel: &str, ahead: Duration) {
    let path = agent.write(rel, b"written by a station whose clock runs a day ahead");
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(SystemTime::now() + ahead)
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_future_mtime_waits_min_age_from_first_sight_not_until_the_clock_catches_up() {
    ferry_tests::init_logging();
    let pki = TestPki::new().unwrap();
    let mut collector = TestCollector::new(&pki, "").unwrap();
    let endpoint = collector.start().await.unwrap();
    let mut agent = TestAgent::new(&pki, "s1", &endpoint, "min_age_secs = 2").unwrap();
    write_from_the_future(&agent, "ahead.bin", DAY);
    agent.start().unwrap();
    let dir = collector.repository().join("s1").join("data");
    eventually(WAIT, || (!tree(&dir).is_empty()).then_some(()))
        .await
        .unwrap_or_else(|| {
            panic!(
                "a file with an mtime a day ahead was held past min_age_secs = 2\nstatus: {}\nlog:\n{}",
                status(&agent, false),
                agent.log_text()
            )
        });
    agent.stop().unwrap();
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_held_for_min_age_show_in_status_with_why() {
    ferry_tests::init_logging();
    let pki = TestPki::new().unwrap();
    let mut collector = TestCollector::new(&pki, "").unwrap();
    let endpoint = collector.start().await.unwrap();
    let mut agent = TestAgent::new(&pki, "s1", &endpoint, "min_age_secs = 3600").unwrap();
    write_from_the_future(&agent, "ahead.bin", DAY);
    agent.write("fresh.bin", b"just written");
    agent.start().unwrap();
    let json = eventually(WAIT, || {
        let json = status(&agent, true);
        json.contains("\"held\":{\"files\":2,").then_some(json)
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "status never showed the two held files: {}\nlog:\n{}",
            status(&agent, true),
            agent.log_text()
        )
    });
    assert!(json.contains("\"future_mtimes\":1"), "{json}");
    assert!(json.contains("\"min_age_secs\":3600"), "{json}");
    let text = status(&agent, false);
    assert!(
        text.contains("held:") && text.contains("2 files") && text.contains("in the future"),
        "{text}"
    );
    assert!(tree(&collector.repository().join("s1")).is_empty());
    agent.stop().unwrap();
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_that_appears_after_the_start_is_watched_by_inotify() {
    ferry_tests::init_logging();
    let pki = TestPki::new().unwrap();
    let mut collector = TestCollector::new(&pki, "").unwrap();
    let endpoint = collector.start().await.unwrap();
    let mut agent = TestAgent::new(&pki, "s1", &endpoint, "").unwrap();
    // Only a close-write event makes a file ready at once: a root left to
    // polling would hold a new file for an hour.
    edit_config(&mut agent, "settle_secs = 1\n", "settle_secs = 3600\n");
    let later = agent.root.join("mounted/later");
    let old = format!("path = {:?}\n", agent.root);
    edit_config(&mut agent, &old, &format!("path = {later:?}\n"));
    agent.start().unwrap();
    eventually(WAIT, || {
        agent.log_text().contains("agent running").then_some(())
    })
    .await
    .expect("agent did not start");
    let before = status(&agent, true);

    std::fs::create_dir_all(&later).unwrap();
    // A new file closed every half second until one arrives: the first one
    // written after the root is watched goes at once.
    let dir = collector.repository().join("s1").join("data");
    let deadline = std::time::Instant::now() + WAIT;
    for n in 0.. {
        if !tree(&dir).is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no file closed in a root that appeared later was sent\nlog:\n{}",
            agent.log_text()
        );
        std::fs::write(
            later.join(format!("file-{n}.bin")),
            b"after the root appeared",
        )
        .unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(before.contains("\"state\":\"missing\""), "{before}");
    let after = status(&agent, true);
    assert!(after.contains("\"state\":\"watched\""), "{after}");
    agent.stop().unwrap();
    collector.stop().await;
}

#[test]
fn check_warns_about_a_missing_root_and_says_it_will_be_picked_up() {
    let pki = TestPki::new().unwrap();
    let mut agent = TestAgent::new(&pki, "s1", "127.0.0.1:9", "").unwrap();
    let missing = agent.root.join("not-yet");
    let old = format!("path = {:?}\n", agent.root);
    edit_config(&mut agent, &old, &format!("path = {missing:?}\n"));
    let bin = ferry_tests::process::binary("ferry-agent").unwrap();
    let config = agent.config_path.to_string_lossy().into_owned();
    let out = ferry_tests::process::run(&bin, &["--check", "--config", &config]).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning")
            && stderr.contains("does not exist")
            && stderr.contains("not-yet"),
        "{stderr}"
    );
    assert!(stderr.contains("when it appears"), "{stderr}");
}
