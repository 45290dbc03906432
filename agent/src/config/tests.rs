//! Tests of configuration parsing and validation.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;

const EXAMPLE: &str = include_str!("../../../packaging/agent.toml");

const MINIMAL: &str = r#"
collectors = ["collector.example.org:7443"]

[tls]
ca = "/etc/ferry/ca.pem"
cert = "/etc/ferry/station.pem"
key = "/etc/ferry/station.key"

[[roots]]
name = "data"
path = "/srv/data"
"#;

fn origin() -> &'static Path {
    Path::new("/etc/ferry/agent.toml")
}

fn parse_ok(text: &str) -> Settings {
    match parse(text, origin()) {
        Ok(settings) => settings,
        Err(e) => panic!("{e}"),
    }
}

/// The error for `text`, as the operator would read it.
fn refused(text: &str) -> String {
    let err = parse(text, origin()).expect_err("config accepted");
    let message = err.to_string();
    assert!(message.contains("/etc/ferry/agent.toml"), "{message}");
    message
}

fn with_root(extra: &str) -> String {
    format!("{MINIMAL}{extra}\n")
}

#[test]
fn the_packaged_example_is_valid() {
    let s = parse_ok(EXAMPLE);
    assert_eq!(s.station, None);
    assert_eq!(s.collectors.len(), 2);
    assert_eq!(s.roots.len(), 2);
    assert_eq!(s.roots[0].name, "rfeye");
    assert_eq!(s.roots[0].poll, None);
    assert_eq!(s.roots[1].poll, Some(Duration::from_secs(30)));
    assert!(s.roots[0].wants(Path::new("rfeye002073_220307_T175758.bin")));
    assert!(!s.roots[0].wants(Path::new("notes.txt")));
    assert!(s.roots[1].wants(Path::new("2024/03/receiver.log")));
    assert_eq!(s.after_ack, AfterAck::Keep);
    assert_eq!(s.legacy.halt_timeout, Duration::from_secs(300 * 60));
    assert_eq!(
        s.ledger,
        PathBuf::from("/var/lib/ferry/agent/ledger.sqlite")
    );
}

#[test]
fn defaults_fill_what_a_minimal_config_leaves_out() {
    let s = parse_ok(MINIMAL);
    assert_eq!(s.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
    assert_eq!(
        s.ledger,
        PathBuf::from("/var/lib/ferry/agent/ledger.sqlite")
    );
    assert_eq!(
        s.legacy.due_backup,
        PathBuf::from("/var/lib/ferry/agent/DUE_BACKUP")
    );
    assert_eq!(
        s.legacy.backup_done,
        PathBuf::from("/var/lib/ferry/agent/BACKUP_DONE")
    );
    assert_eq!(
        s.legacy.halt_flag,
        PathBuf::from("/var/lib/ferry/agent/HALT_FLAG")
    );
    assert_eq!(s.legacy.halt_timeout, Duration::from_secs(5 * 3600));
    assert_eq!(s.settle, Duration::from_secs(5));
    assert_eq!(s.rescan_interval, Duration::from_secs(3600));
    assert_eq!(s.content_recheck, None);
    assert_eq!(s.batch.max_files, 1000);
    assert_eq!(s.batch.linger, Duration::from_millis(200));
    assert_eq!(s.after_ack, AfterAck::Keep);
    let root = &s.roots[0];
    assert!(root.wants(Path::new("a/b/c.bin")));
    assert!(root.wants(Path::new("no-extension")));
    for skipped in [
        "x.tmp",
        "x.part",
        ".hidden",
        "a/.cache/x.bin",
        "deep/er/y.tmp",
    ] {
        assert!(!root.wants(Path::new(skipped)), "{skipped}");
    }
    assert!(root.skips_dir(Path::new(".git")));
    assert!(!root.skips_dir(Path::new("2024")));
    assert_eq!(
        s.root_dirs(),
        BTreeMap::from([("data".to_owned(), PathBuf::from("/srv/data"))])
    );
}

#[test]
fn the_state_dir_moves_every_default_path() {
    let s = parse_ok(&format!("state_dir = \"/data/ferry\"\n{MINIMAL}"));
    assert_eq!(s.ledger, PathBuf::from("/data/ferry/ledger.sqlite"));
    assert_eq!(s.legacy.halt_flag, PathBuf::from("/data/ferry/HALT_FLAG"));
}

#[test]
fn a_station_id_is_validated_like_the_certificates() {
    let s = parse_ok(&format!("station = \"rfeye002073\"\n{MINIMAL}"));
    assert_eq!(s.station.unwrap().as_str(), "rfeye002073");
    let message = refused(&format!("station = \"../evil\"\n{MINIMAL}"));
    assert!(message.contains("station id"), "{message}");
    assert!(message.contains("line 1"), "{message}");
}

#[test]
fn an_unknown_key_is_refused_by_name_and_line() {
    let message = refused(&MINIMAL.replace("collectors", "colectors"));
    assert!(message.contains("colectors"), "{message}");
    assert!(message.contains("line 2"), "{message}");

    let message = refused(&with_root("pol = true"));
    assert!(message.contains("pol"), "{message}");

    let message = refused(&format!("{MINIMAL}\n[batch]\nmax_file = 3\n"));
    assert!(message.contains("max_file"), "{message}");
}

#[test]
fn a_mistyped_value_is_refused_by_line() {
    let message = refused(&format!("settle_secs = \"five\"\n{MINIMAL}"));
    assert!(message.contains("line 1"), "{message}");
}

#[test]
fn missing_collectors_are_refused() {
    let message = refused(&MINIMAL.replace("collectors = [\"collector.example.org:7443\"]", ""));
    assert!(message.contains("collectors"), "{message}");
    let message = refused(&MINIMAL.replace("[\"collector.example.org:7443\"]", "[]"));
    assert!(message.contains("collectors: at least one"), "{message}");
}

#[test]
fn malformed_collector_endpoints_are_refused() {
    for bad in [
        "collector",
        "collector:",
        ":7443",
        "collector:0",
        "collector:99999",
        "::1:7443",
    ] {
        let message = refused(&MINIMAL.replace("collector.example.org:7443", bad));
        assert!(message.contains("collectors[0]"), "{bad}: {message}");
    }
    parse_ok(&MINIMAL.replace("collector.example.org:7443", "[::1]:7443"));
    parse_ok(&MINIMAL.replace("collector.example.org:7443", "10.0.0.1:7443"));
}

#[test]
fn a_config_without_roots_is_refused() {
    let text = MINIMAL.replace("[[roots]]\nname = \"data\"\npath = \"/srv/data\"\n", "");
    let message = refused(&text);
    assert!(message.contains("roots: at least one"), "{message}");
}

#[test]
fn a_duplicate_root_name_is_refused() {
    let message = refused(&with_root(
        "\n[[roots]]\nname = \"data\"\npath = \"/srv/other\"",
    ));
    assert!(message.contains("roots[1].name"), "{message}");
    assert!(message.contains("used twice"), "{message}");
}

#[test]
fn root_names_follow_the_station_id_rules() {
    for bad in ["", ".hidden", "-x", "a/b", "a b", "é"] {
        let message = refused(&MINIMAL.replace("name = \"data\"", &format!("name = {bad:?}")));
        assert!(message.contains("roots[0].name"), "{bad}: {message}");
    }
}

#[test]
fn a_relative_root_path_is_refused() {
    let message = refused(&MINIMAL.replace("/srv/data", "srv/data"));
    assert!(message.contains("roots[0].path"), "{message}");
    assert!(message.contains("not an absolute path"), "{message}");
    let message = refused(&MINIMAL.replace("/srv/data", "/srv/../etc"));
    assert!(message.contains("'..'"), "{message}");
}

#[test]
fn overlapping_roots_are_refused() {
    let message = refused(&with_root(
        "\n[[roots]]\nname = \"inner\"\npath = \"/srv/data/inner\"",
    ));
    assert!(message.contains("roots[1].path"), "{message}");
    assert!(message.contains("overlaps root \"data\""), "{message}");
    // A shared prefix of characters is not an overlap.
    parse_ok(&with_root(
        "\n[[roots]]\nname = \"data2\"\npath = \"/srv/data2\"",
    ));
}

#[test]
fn a_bad_glob_is_refused_naming_it() {
    let message = refused(&with_root("include = [\"*.bin\", \"[unclosed\"]"));
    assert!(message.contains("roots[0].include[1]"), "{message}");
    let message = refused(&with_root("exclude = [\"/abs/*.bin\"]"));
    assert!(message.contains("roots[0].exclude[0]"), "{message}");
    let message = refused(&with_root("include = [\"\"]"));
    assert!(message.contains("empty glob"), "{message}");
}

#[test]
fn include_and_exclude_globs_select_files() {
    let s = parse_ok(&with_root(
        "include = [\"*.bin\", \"reports/**/*.csv\"]\nexclude = [\"*.tmp\", \"skip\", \"reports/old/**\"]",
    ));
    let root = &s.roots[0];
    for yes in [
        "a.bin",
        "x/y/a.bin",
        "reports/2024/q1.csv",
        "reports/q.csv",
        ".hidden.bin",
    ] {
        assert!(root.wants(Path::new(yes)), "{yes}");
    }
    for no in [
        "a.csv",
        "x/reports/q.csv",
        "skip/a.bin",
        "a.bin.tmp",
        "reports/old/q.csv",
    ] {
        assert!(!root.wants(Path::new(no)), "{no}");
    }
    assert!(root.skips_dir(Path::new("x/skip")));
}

#[test]
fn move_without_move_to_is_refused() {
    let message = refused(&format!("{MINIMAL}\n[after_ack]\naction = \"move\"\n"));
    assert!(message.contains("after_ack.move_to"), "{message}");
}

#[test]
fn move_to_inside_a_root_or_with_another_action_is_refused() {
    let message = refused(&format!(
        "{MINIMAL}\n[after_ack]\naction = \"move\"\nmove_to = \"/srv/data/sent\"\n"
    ));
    assert!(message.contains("inside root \"data\""), "{message}");
    let message = refused(&format!(
        "{MINIMAL}\n[after_ack]\naction = \"delete\"\nmove_to = \"/srv/sent\"\n"
    ));
    assert!(
        message.contains("only used with action = \"move\""),
        "{message}"
    );
    let s = parse_ok(&format!(
        "{MINIMAL}\n[after_ack]\naction = \"move\"\nmove_to = \"/srv/sent\"\n"
    ));
    assert_eq!(s.after_ack, AfterAck::Move(PathBuf::from("/srv/sent")));
    let s = parse_ok(&format!("{MINIMAL}\n[after_ack]\naction = \"delete\"\n"));
    assert_eq!(s.after_ack, AfterAck::Delete);
}

#[test]
fn an_unknown_action_is_refused() {
    let message = refused(&format!("{MINIMAL}\n[after_ack]\naction = \"shred\"\n"));
    assert!(message.contains("shred"), "{message}");
}

#[test]
fn zero_limits_and_intervals_are_refused() {
    for (extra, key) in [
        ("\n[batch]\nmax_files = 0\n", "batch.max_files"),
        ("\n[batch]\nmax_bytes = 0\n", "batch.max_bytes"),
        (
            "\n[legacy]\nhalt_timeout_mins = 0\n",
            "legacy.halt_timeout_mins",
        ),
    ] {
        let message = refused(&format!("{MINIMAL}{extra}"));
        assert!(message.contains(key), "{message}");
    }
    let message = refused(&format!("rescan_interval_secs = 0\n{MINIMAL}"));
    assert!(message.contains("rescan_interval_secs"), "{message}");
    let message = refused(&with_root("poll = true\npoll_interval_secs = 0"));
    assert!(message.contains("roots[0].poll_interval_secs"), "{message}");
}

#[test]
fn relative_tls_and_legacy_paths_are_refused() {
    let message = refused(&MINIMAL.replace("/etc/ferry/station.key", "station.key"));
    assert!(message.contains("tls.key"), "{message}");
    let message = refused(&format!("{MINIMAL}\n[legacy]\nhalt_flag = \"HALT_FLAG\"\n"));
    assert!(message.contains("legacy.halt_flag"), "{message}");
}

#[test]
fn load_reads_the_file_and_names_it_when_missing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.toml");
    let err = load(&path).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }), "{err}");
    assert!(err.to_string().contains("agent.toml"), "{err}");
    std::fs::write(&path, MINIMAL).unwrap();
    assert_eq!(load(&path).unwrap().roots[0].name, "data");
}

#[test]
fn metrics_are_off_by_default_and_checked_when_configured() {
    let s = parse_ok(MINIMAL);
    assert_eq!(s.metrics, ferry_common::metrics::MetricsSettings::default());
    let on = parse_ok(&with_root(
        "[metrics]\nlisten = \"127.0.0.1:9477\"\ntextfile = \"/var/lib/node-exporter/ferry-agent.prom\"\ntextfile_interval_secs = 30",
    ));
    assert_eq!(on.metrics.listen, Some("127.0.0.1:9477".parse().unwrap()));
    assert_eq!(
        on.metrics.textfile.as_deref(),
        Some(Path::new("/var/lib/node-exporter/ferry-agent.prom"))
    );
    assert_eq!(on.metrics.textfile_interval, Duration::from_secs(30));
    for (extra, expected) in [
        ("[metrics]\nlisten = \"somewhere\"", "metrics.listen"),
        (
            "[metrics]\ntextfile = \"ferry-agent.prom\"",
            "metrics.textfile",
        ),
        (
            "[metrics]\ntextfile = \"/x/ferry-agent.txt\"",
            "metrics.textfile",
        ),
        (
            "[metrics]\ntextfile_interval_secs = 0",
            "metrics.textfile_interval_secs",
        ),
        ("[metrics]\nport = 9477", "unknown field `port`"),
    ] {
        let message = refused(&with_root(extra));
        assert!(message.contains(expected), "{message} lacks {expected}");
    }
}
