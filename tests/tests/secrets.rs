//! No form of a catalog's password ever shows: not in `run --check`, `run`
//! (its log, `/status`, `/healthz`, `/metrics`), `migrate`, `status` or
//! `reconcile`, whatever characters the password holds, written raw or
//! percent-encoded in the URL; and a password with any of those characters
//! connects to a real MariaDB server when percent-encoded.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns may unwrap

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_tests::http;
use ferry_tests::mariadb::MariaDb;
use ferry_tests::pki::TestPki;
use ferry_tests::process::{self, Process};
use mysql_async::prelude::Queryable;

/// Every character that means something in a URL, a space, and non-ASCII.
const SPECIAL: &[&str] = &[
    ":", "/", "?", "#", "[", "]", "@", "!", "$", "&", "'", "(", ")", "*", "+", ",", ";", "=", "%",
    " ", "ü€",
];

/// Pieces of every test password: none of them may appear in any output,
/// so a password cut at a special character is caught as well as a whole
/// one.
const TOKENS: [&str; 3] = ["Kq8", "Vt3", "Wz5"];

/// One password per special character, and one holding them all.
fn passwords() -> Vec<String> {
    let mut out: Vec<String> = SPECIAL
        .iter()
        .map(|c| format!("{}{c}{}{c}{}", TOKENS[0], TOKENS[1], TOKENS[2]))
        .collect();
    out.push(format!(
        "{}:/?#[]@!$&'()*+,;=% {}ü€{}",
        TOKENS[0], TOKENS[1], TOKENS[2]
    ));
    out
}

/// Every byte but the unreserved ones as `%XX`.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// `text` as a TOML basic string.
fn toml_string(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

fn assert_hidden(what: &str, output: &str) {
    for token in TOKENS {
        assert!(
            !output.contains(token),
            "{what} shows a piece of the password ({token}):\n{output}"
        );
    }
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A collector config in `dir` whose primary catalog is `url` (the backup
/// stays on SQLite) and whose status endpoint is on `http`.
fn write_config(pki: &TestPki, dir: &Path, url: &str, http: SocketAddr) -> PathBuf {
    let server = pki.server_files();
    let path = dir.join("collector.toml");
    std::fs::write(
        &path,
        format!(
            "listen = \"127.0.0.1:0\"\nrepository = \"repository\"\nstate_dir = \"state\"\n\
             [tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n[http]\nlisten = \"{http}\"\n\
             [catalog]\nprimary = {}\n[limits]\nreserve_bytes = 0\n",
            pki.ca_path(),
            server.cert,
            server.key,
            toml_string(url)
        ),
    )
    .unwrap();
    path
}

/// Everything the collector says about a catalog that refuses connections:
/// `run --check`, `migrate`, `status`, `reconcile --dry-run`, and a `run`
/// (log, `/healthz`, `/status`, `/metrics`) until it has logged the outage.
async fn everything_said(pki: &TestPki, dir: &Path, url: &str) -> (bool, String) {
    std::fs::create_dir_all(dir).unwrap();
    let http_addr = process::free_port().unwrap();
    let config = write_config(pki, dir, url, http_addr);
    let config = config.to_str().unwrap();
    let bin = process::binary("ferry-collector").unwrap();
    let mut said = String::new();
    let check = process::run(&bin, &["run", "--check", "--config", config]).unwrap();
    said += &text(&check);
    for args in [
        ["migrate", "--config", config].as_slice(),
        &["status", "--config", config],
        &["status", "--json", "--config", config],
        &["reconcile", "--dry-run", "--config", config],
    ] {
        said += &text(&process::run(&bin, args).unwrap());
    }
    if check.status.success() {
        let log = dir.join("run.log");
        let mut run = Process::start(&bin, &["run", "--config", config], &log).unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let logged = std::fs::read_to_string(&log).unwrap_or_default();
            if logged.contains("catalog=primary") && logged.contains("WARN") {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the collector never logged the primary's outage:\n{logged}"
            );
            assert!(run.child.try_wait().unwrap().is_none(), "{logged}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for path in ["/healthz", "/status", "/metrics"] {
            said += &http::get(http_addr, path).await.unwrap().body;
        }
        said += &text(&process::run(&bin, &["status", "--config", config]).unwrap());
        run.terminate(Duration::from_secs(30)).unwrap();
        said += &std::fs::read_to_string(&log).unwrap();
    }
    (check.status.success(), said)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_form_of_the_password_shows_in_any_output() {
    let pki = TestPki::new().unwrap();
    // Nothing listens there: every connection is refused.
    let refused = process::free_port().unwrap().port();
    for (i, password) in passwords().into_iter().enumerate() {
        for (form, written) in [
            ("raw", password.clone()),
            ("encoded", percent_encode(&password)),
        ] {
            let url =
                format!("mysql://ferry:{written}@127.0.0.1:{refused}/ferry?prefer_socket=false");
            let dir = pki.scratch(&format!("p{i}-{form}"));
            let (accepted, said) = everything_said(&pki, &dir, &url).await;
            assert_hidden(&format!("password {i} written {form}"), &said);
            // Raw special characters are taken as they are, except `%`,
            // which always starts an escape: the config is refused with
            // advice, not a guess.
            let expect_accepted = form == "encoded" || !password.contains('%');
            assert_eq!(accepted, expect_accepted, "password {i} {form}:\n{said}");
            if !accepted {
                assert!(said.contains("percent-encode the password"), "{said}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_of_special_characters_connects_when_percent_encoded() {
    ferry_tests::init_logging();
    let pki = TestPki::new().unwrap();
    let db = MariaDb::start().await.unwrap();
    let mut root = mysql_async::Conn::from_url(db.root_url()).await.unwrap();
    let bin = process::binary("ferry-collector").unwrap();
    for (i, password) in passwords().into_iter().enumerate() {
        let user = format!("special{i}");
        let database = format!("special{i}");
        let quoted = password.replace('\\', "\\\\").replace('\'', "''");
        for statement in [
            format!("CREATE DATABASE {database}"),
            format!("CREATE USER '{user}'@'%' IDENTIFIED BY '{quoted}'"),
            format!("GRANT SELECT, INSERT, UPDATE, CREATE, ALTER ON {database}.* TO '{user}'@'%'"),
        ] {
            root.query_drop(statement).await.unwrap();
        }
        for (form, written) in [
            ("encoded", percent_encode(&password)),
            ("raw", password.clone()),
        ] {
            let url = format!(
                "mysql://{user}:{written}@127.0.0.1:{}/{database}?prefer_socket=false",
                db.port()
            );
            let dir = pki.scratch(&format!("db{i}-{form}"));
            std::fs::create_dir_all(&dir).unwrap();
            let config = write_config(&pki, &dir, &url, process::free_port().unwrap());
            let config = config.to_str().unwrap();
            let migrate = process::run(&bin, &["migrate", "--config", config]).unwrap();
            let reconcile =
                process::run(&bin, &["reconcile", "--dry-run", "--config", config]).unwrap();
            let said = text(&migrate) + &text(&reconcile);
            assert_hidden(&format!("password {i} written {form}"), &said);
            if form == "encoded" || !password.contains('%') {
                assert!(migrate.status.success(), "password {i} {form}: {said}");
                assert!(reconcile.status.success(), "password {i} {form}: {said}");
            } else {
                assert!(!migrate.status.success(), "password {i} {form}: {said}");
            }
        }
    }
    root.disconnect().await.unwrap();
}
