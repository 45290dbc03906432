//! The `config` target: hostile TOML text into the agent's and the
//! collector's configuration parsers (`ferry_agent::config::parse`,
//! `ferry_collector::config::parse`, the functions `load` runs on a file's
//! text).
//!
//! Checked: parsing never panics; an error displays and names the file; and
//! what is accepted holds what validation promises and is usable where the
//! daemons use it (paths absolute and without `..`, at least one endpoint and
//! root, positive intervals, frame and chunk limits that fit each other, a
//! heartbeat that fits the protocol's millisecond field, a handshake timeout
//! that can be added to the clock). Input that is not UTF-8 is refused by
//! `load` before parsing and is skipped.

use std::path::{Component, Path};
use std::time::{Duration, Instant};

use ferry_collector::config::CatalogUrl;
use ferry_common::codec::MAX_FRAME;

const AGENT_ORIGIN: &str = "/etc/ferry/agent.toml";
const COLLECTOR_ORIGIN: &str = "/etc/ferry/collector.toml";

/// Parses `data` as both configurations; panics on a violation.
pub fn check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    agent(text);
    collector(text);
}

fn agent(text: &str) {
    let settings = match ferry_agent::config::parse(text, Path::new(AGENT_ORIGIN)) {
        Ok(settings) => settings,
        Err(error) => {
            assert!(error.to_string().contains(AGENT_ORIGIN), "{error}");
            return;
        }
    };
    let tls = &settings.tls;
    for path in [
        &tls.ca,
        &tls.cert,
        &tls.key,
        &settings.state_dir,
        &settings.ledger,
        &settings.legacy.due_backup,
        &settings.legacy.backup_done,
        &settings.legacy.halt_flag,
    ] {
        clean_absolute(path);
    }
    assert!(!settings.collectors.is_empty());
    assert!(!settings.roots.is_empty());
    for (i, root) in settings.roots.iter().enumerate() {
        clean_absolute(&root.path);
        assert!(
            ferry_common::station::StationId::new(root.name.as_str()).is_ok(),
            "root name {:?} accepted",
            root.name
        );
        for other in &settings.roots[i + 1..] {
            assert_ne!(root.name, other.name);
            assert!(
                !root.path.starts_with(&other.path) && !other.path.starts_with(&root.path),
                "overlapping roots accepted"
            );
        }
        if let Some(poll) = root.poll {
            assert!(poll > Duration::ZERO);
        }
        // The filters run on every file found; they must answer.
        let _ = root.wants(Path::new("2022/03/rfeye002073_220307_T175758.bin"));
        let _ = root.skips_dir(Path::new(".cache"));
    }
    assert!(settings.rescan_interval > Duration::ZERO);
    assert!(settings.batch.max_files > 0 && settings.batch.max_bytes > 0);
    assert!(settings.legacy.halt_timeout > Duration::ZERO);
    assert!(settings.legacy.halt_retry_max > Duration::ZERO);
    if let ferry_agent::config::AfterAck::Move(dir) = &settings.after_ack {
        clean_absolute(dir);
    }
}

fn collector(text: &str) {
    let settings = match ferry_collector::config::parse(text, Path::new(COLLECTOR_ORIGIN)) {
        Ok(settings) => settings,
        Err(error) => {
            assert!(error.to_string().contains(COLLECTOR_ORIGIN), "{error}");
            return;
        }
    };
    // Relative paths resolve against the config file's directory.
    for path in [
        &settings.repository,
        &settings.state_dir,
        &settings.tls_ca,
        &settings.tls_cert,
        &settings.tls_key,
    ] {
        assert!(path.is_absolute(), "{} not resolved", path.display());
    }
    assert_ne!(settings.primary, settings.backup);
    let max_frame = usize::try_from(settings.max_frame).expect("frame limit fits usize");
    assert!(max_frame <= MAX_FRAME);
    assert!(u64::from(settings.max_chunk) + 4096 <= settings.max_frame);
    assert!(settings.window >= u64::from(settings.max_chunk));
    assert!(settings.max_sessions > 0);
    assert!(settings.heartbeat > Duration::ZERO);
    // The heartbeat travels in `Welcome::heartbeat_ms`, a u32.
    assert!(
        u32::try_from(settings.heartbeat.as_millis()).is_ok(),
        "heartbeat of {:?} does not fit the protocol",
        settings.heartbeat
    );
    // The TLS bridge sets its deadline as now + handshake timeout.
    assert!(settings.handshake_timeout > Duration::ZERO);
    assert!(
        Instant::now()
            .checked_add(settings.handshake_timeout)
            .is_some(),
        "handshake timeout of {:?} overflows the clock",
        settings.handshake_timeout
    );
    // Debug output goes to logs; it must never show a catalog password.
    for url in [&settings.primary, &settings.backup] {
        if let CatalogUrl::MySql(raw) = url {
            let shown = format!("{url:?}");
            if let Some(password) = password_of(raw) {
                assert!(!shown.contains(password), "password shown: {shown}");
            }
        }
    }
}

/// The password of `scheme://user:password@host...`, when it is plain
/// enough (4 or more of `A-Z a-z 0-9 - _`, once in the URL) that finding it
/// in the redacted text can only mean it was not redacted.
fn password_of(url: &str) -> Option<&str> {
    let rest = &url[url.find("://")? + 3..];
    let userinfo = &rest[..rest.rfind('@')?];
    let password = userinfo.split_once(':')?.1;
    let plain = password.len() >= 4
        && password
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && url.matches(password).count() == 1
        && !"MySql".contains(password);
    plain.then_some(password)
}

fn clean_absolute(path: &Path) {
    assert!(path.is_absolute(), "{} accepted", path.display());
    assert!(
        !path.components().any(|c| c == Component::ParentDir),
        "{} accepted",
        path.display()
    );
}

/// The packaged example configurations, and small variants of each.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let agent = include_str!("../../packaging/agent.toml");
    let collector = include_str!("../../packaging/collector.toml");
    let agent_minimal = "collectors = [\"[2001:db8::5]:7450\"]\n\
        [tls]\nca = \"/etc/ferry/ca.pem\"\ncert = \"/etc/ferry/s.pem\"\nkey = \"/etc/ferry/s.key\"\n\
        [[roots]]\nname = \"rfeye\"\npath = \"/home/rfeye/data\"\n\
        [after_ack]\naction = \"move\"\nmove_to = \"/home/rfeye/sent\"\n";
    let collector_mysql = "listen = \"[::]:7450\"\nrepository = \"repo\"\n\
        [tls]\nca = \"ca.pem\"\ncert = \"server.pem\"\nkey = \"server.key\"\n\
        [catalog]\nprimary = \"mysql://ferry:s3cret-pw@db1.example.org:3306/ferry?require_ssl=true&ssl_ca=/etc/ferry/db-ca.pem\"\n\
        backup = \"mariadb://ferry:0ther-pw@db2.example.org/ferry\"\n\
        [limits]\nheartbeat_secs = 30\nhandshake_timeout_secs = 20\n";
    [
        ("agent_packaged.toml", agent),
        ("collector_packaged.toml", collector),
        ("agent_minimal.toml", agent_minimal),
        ("collector_mysql.toml", collector_mysql),
    ]
    .into_iter()
    .map(|(name, text)| (name.to_owned(), text.as_bytes().to_vec()))
    .collect()
}
