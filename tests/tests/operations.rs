//! Operating Ferry: the metrics, the collector's status endpoint and the
//! textfiles tell the truth about a real transfer between real processes;
//! the daemons tell systemd when they are ready and when they stop; the
//! HTTP endpoint shrugs off hostile requests.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns may unwrap

use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::{Duration, Instant};

use ferry_tests::agent::TestAgent;
use ferry_tests::collector::TestCollector;
use ferry_tests::http::{self, value};
use ferry_tests::pki::TestPki;
use ferry_tests::process::{self, Process};
use ferry_tests::proxy::Proxy;

const WAIT: Duration = Duration::from_secs(30);

/// Polls `check` until it returns `Some` or `WAIT` passes; panics naming
/// `what` and the last observation.
async fn until<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(last) if Instant::now() > deadline => {
                panic!("{what}: not so after {WAIT:?}; {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Scrapes `addr` and returns the values of `series`, all present.
async fn scrape(addr: SocketAddr, series: &[&str]) -> Result<Vec<f64>, String> {
    let samples = http::metrics(addr).await.map_err(|e| e.to_string())?;
    series
        .iter()
        .map(|s| value(&samples, s).ok_or_else(|| format!("{s} missing")))
        .collect()
}

/// Ok once the agent at `port` says it is not connected and has counted at
/// least `errors` errors of `kind`.
async fn disconnected(port: SocketAddr, kind: &str, errors: f64) -> Result<(), String> {
    let counted = format!("ferry_agent_errors_total{{kind=\"{kind}\"}}");
    let v = scrape(port, &["ferry_agent_connected", &counted]).await?;
    (v[0] == 0.0 && v[1] >= errors)
        .then_some(())
        .ok_or(format!("{v:?}"))
}

/// Files of known sizes under the agent's root; their count and bytes.
fn write_files(agent: &TestAgent, prefix: &str, n: usize) -> (usize, u64) {
    let mut bytes = 0u64;
    for i in 0..n {
        let content = vec![b'a' + (i % 26) as u8; 1000 * (i + 1) + i];
        bytes += content.len() as u64;
        agent.write(&format!("{prefix}/file-{i:02}.bin"), &content);
    }
    (n, bytes)
}

/// A started collector with a separate metrics listener; its station
/// endpoint, its status endpoint and its metrics listener's address.
async fn collector_with_metrics(pki: &TestPki) -> (TestCollector, String, SocketAddr, SocketAddr) {
    let mut collector = TestCollector::new(pki, "").unwrap();
    let metrics_port = process::free_port().unwrap();
    collector
        .append_config(&format!("[metrics]\nlisten = \"{metrics_port}\""))
        .unwrap();
    let endpoint = collector.start().await.unwrap();
    let status = collector.http_addr().expect("the status endpoint is on");
    (collector, endpoint, status, metrics_port)
}

fn agent_metrics_extra(port: SocketAddr, textfile: Option<&Path>) -> String {
    let mut extra = format!("[metrics]\nlisten = \"{port}\"\n");
    if let Some(path) = textfile {
        extra.push_str(&format!(
            "textfile = {path:?}\ntextfile_interval_secs = 1\n"
        ));
    }
    extra
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_with_nothing_to_send_connects_at_start_or_says_why_not() {
    ferry_tests::init_logging();
    let pki = TestPki::new().unwrap();
    let (mut collector, endpoint, status, _) = collector_with_metrics(&pki).await;
    let idle_port = process::free_port().unwrap();
    let mut idle =
        TestAgent::new(&pki, "s1", &endpoint, &agent_metrics_extra(idle_port, None)).unwrap();
    idle.start().unwrap();
    // The agent's due files once it says it is connected and the collector
    // counts its session.
    let connected = |status: SocketAddr| async move {
        let agent = scrape(
            idle_port,
            &["ferry_agent_connected", "ferry_agent_due_files"],
        )
        .await?;
        let sessions = scrape(status, &["ferry_collector_sessions"]).await?;
        (agent[0] == 1.0 && sessions[0] == 1.0)
            .then_some(agent[1])
            .ok_or(format!("agent {agent:?}, collector sessions {sessions:?}"))
    };
    // Nothing is due, yet the agent holds a session with the collector.
    let due = until("the idle agent is connected", || connected(status)).await;
    assert_eq!(due, 0.0, "nothing was due");

    // The collector goes away and comes back: the idle agent notices both,
    // with no file to send.
    collector.stop().await;
    until("the idle agent sees its session end", || {
        disconnected(idle_port, "link", 1.0)
    })
    .await;
    collector.start().await.unwrap();
    let status = collector.http_addr().expect("the status endpoint is on");
    until("the idle agent is connected again", || connected(status)).await;

    // An agent whose collector is not there says so before any file
    // appears, and keeps trying.
    let nowhere = process::free_port().unwrap().to_string();
    let lost_port = process::free_port().unwrap();
    let mut lost =
        TestAgent::new(&pki, "s2", &nowhere, &agent_metrics_extra(lost_port, None)).unwrap();
    lost.start().unwrap();
    until("the unreachable collector is counted", || {
        disconnected(lost_port, "connect", 2.0)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_status_agree_with_a_transfer() {
    ferry_tests::init_logging();
    let pki = TestPki::new().unwrap();
    let (mut collector, endpoint, status, metrics_port) = collector_with_metrics(&pki).await;
    let agent_port = process::free_port().unwrap();
    let mut agent = TestAgent::new(
        &pki,
        "s1",
        &endpoint,
        &agent_metrics_extra(agent_port, None),
    )
    .unwrap();
    let (files, bytes) = write_files(&agent, "known", 7);
    agent.start().unwrap();

    // The agent sees its backlog drain and every file acknowledged.
    let seen = until("agent metrics show every file sent", || async {
        let v = scrape(
            agent_port,
            &[
                "ferry_agent_files_sent_total",
                "ferry_agent_bytes_sent_total",
                "ferry_agent_due_files",
                "ferry_agent_due_bytes",
                "ferry_agent_connected",
                "ferry_agent_acks_total",
                "ferry_agent_last_ack_timestamp_seconds",
            ],
        )
        .await?;
        (v[0] == files as f64 && v[2] == 0.0)
            .then_some(v.clone())
            .ok_or(format!("{v:?}"))
    })
    .await;
    assert_eq!(seen[1], bytes as f64, "bytes sent");
    assert_eq!(seen[3], 0.0, "due bytes");
    assert_eq!(seen[4], 1.0, "connected");
    assert!(seen[5] >= 1.0, "acks");
    assert!(seen[6] > 1.6e9, "last ack timestamp {}", seen[6]);
    let samples = http::metrics(agent_port).await.unwrap();
    assert_eq!(
        value(&samples, "ferry_agent_errors_total{kind=\"file\"}"),
        Some(0.0)
    );
    assert_eq!(
        value(&samples, "ferry_agent_halted{by=\"operator\"}"),
        Some(0.0)
    );
    assert_eq!(
        value(&samples, "ferry_agent_halted{by=\"other\"}"),
        Some(0.0)
    );

    // The collector counted the same files and bytes, and both catalogs
    // caught up.
    let v = until("collector catalogs caught up", || async {
        let v = scrape(
            status,
            &[
                "ferry_collector_files_stored_total",
                "ferry_collector_bytes_stored_total",
                "ferry_collector_bytes_received_total",
                "ferry_collector_files_already_stored_total",
                "ferry_collector_sessions",
                "ferry_collector_sessions_total",
                "ferry_collector_journal_lag_records{catalog=\"primary\"}",
                "ferry_collector_journal_lag_records{catalog=\"backup\"}",
                "ferry_collector_catalog_up{catalog=\"primary\"}",
                "ferry_collector_catalog_up{catalog=\"backup\"}",
            ],
        )
        .await?;
        (v[6] == 0.0 && v[7] == 0.0)
            .then_some(v.clone())
            .ok_or(format!("{v:?}"))
    })
    .await;
    assert_eq!(v[0], files as f64, "files stored");
    assert_eq!(v[1], bytes as f64, "bytes stored");
    assert_eq!(v[2], bytes as f64, "bytes received");
    assert_eq!(v[3], 0.0, "already stored");
    assert_eq!(v[4], 1.0, "the agent's session stays open");
    assert_eq!(v[5], 1.0, "one session opened");
    assert_eq!((v[8], v[9]), (1.0, 1.0), "both catalogs up");
    let samples = http::metrics(status).await.unwrap();
    for (series, _) in samples
        .iter()
        .filter(|(s, _)| s.starts_with("ferry_collector_errors_total"))
    {
        assert_eq!(value(&samples, series), Some(0.0), "{series}");
    }
    assert!(value(&samples, "ferry_collector_repository_free_bytes").unwrap() > 0.0);
    // The separate metrics listener serves the same families, and only them.
    let separate = http::metrics(metrics_port).await.unwrap();
    assert_eq!(
        value(&separate, "ferry_collector_files_stored_total"),
        Some(files as f64)
    );
    assert_eq!(
        http::get(metrics_port, "/status").await.unwrap().status,
        404
    );

    // /status: the legacy keys, and the very JSON of `status --json`.
    let reply = http::get(status, "/status").await.unwrap();
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.header("Content-Type"), Some("application/json"));
    assert!(
        reply.body.starts_with(&format!(
            "{{\"stations\":[{{\"station\":\"s1\",\"host_files\":{files},\"bytes\":{bytes},\"pending_backup\":0,"
        )),
        "{}",
        reply.body
    );
    assert!(
        reply.body.contains("\"backup_error\":0,\"last_backup\":1"),
        "{}",
        reply.body
    );
    let bin = process::binary("ferry-collector").unwrap();
    let config = collector.config_path.to_str().unwrap().to_owned();
    let cli = process::run(&bin, &["status", "--json", "--config", &config]).unwrap();
    assert!(cli.status.success(), "{cli:?}");
    assert_eq!(
        String::from_utf8(cli.stdout).unwrap(),
        reply.body,
        "CLI and HTTP differ"
    );
    let one = http::get(status, "/status/s1").await.unwrap();
    assert_eq!(one.status, 200);
    assert!(
        reply
            .body
            .starts_with(&format!("{{\"stations\":[{}]", one.body.trim_end())),
        "/status/s1 is the station's element of /status: {}",
        one.body
    );
    assert_eq!(
        http::get(status, "/status/nobody").await.unwrap().status,
        404
    );
    let health = http::get(status, "/healthz").await.unwrap();
    assert_eq!(health.status, 200, "{health:?}");
    assert!(
        health
            .body
            .starts_with("{\"status\":\"ok\",\"journal\":\"writable\",\"catalogs\":[")
            && health
                .body
                .contains("{\"catalog\":\"backup\",\"state\":\"up\",\"up\":true,\"since\":")
            && health.body.contains(
                "\"lag\":0,\"error\":null,\"error_at\":null,\"outages\":0,\"backfill\":null}"
            ),
        "{}",
        health.body
    );

    agent.stop().unwrap();
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_in_progress_shows_an_open_session_and_a_due_backlog() {
    ferry_tests::init_logging();
    let pki = TestPki::new().unwrap();
    let mut collector =
        TestCollector::new(&pki, "max_chunk_bytes = 65536\nwindow_bytes = 262144").unwrap();
    collector.start().await.unwrap();
    let status = collector.http_addr().unwrap();
    let proxy = Proxy::start(collector.settings.listen).await.unwrap();
    let agent_port = process::free_port().unwrap();
    let mut agent = TestAgent::new(
        &pki,
        "s1",
        &proxy.addr.to_string(),
        &agent_metrics_extra(agent_port, None),
    )
    .unwrap();
    agent.write("first.bin", b"opens the session");
    agent.start().unwrap();
    until("the first file is stored over an open session", || async {
        let v = scrape(
            status,
            &[
                "ferry_collector_files_stored_total",
                "ferry_collector_sessions",
            ],
        )
        .await?;
        (v == [1.0, 1.0]).then_some(()).ok_or(format!("{v:?}"))
    })
    .await;

    // The link stalls with a large file on its way: the agent shows it due,
    // the collector still holds the station's one session.
    proxy.stall(true);
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    agent.write("big.bin", &big);
    until("the agent shows the large file due", || async {
        let v = scrape(
            agent_port,
            &["ferry_agent_due_files", "ferry_agent_due_bytes"],
        )
        .await?;
        (v == [1.0, big.len() as f64])
            .then_some(())
            .ok_or(format!("{v:?}"))
    })
    .await;
    let v = scrape(
        status,
        &[
            "ferry_collector_sessions",
            "ferry_collector_files_stored_total",
        ],
    )
    .await
    .unwrap();
    assert_eq!(v, [1.0, 1.0], "one open session, nothing new stored yet");

    proxy.stall(false);
    until("the backlog drains once the link flows", || async {
        let v = scrape(
            agent_port,
            &["ferry_agent_due_files", "ferry_agent_files_sent_total"],
        )
        .await?;
        (v == [0.0, 2.0]).then_some(()).ok_or(format!("{v:?}"))
    })
    .await;
    let v = scrape(
        status,
        &[
            "ferry_collector_files_stored_total",
            "ferry_collector_bytes_stored_total",
        ],
    )
    .await
    .unwrap();
    assert_eq!(v, [2.0, (big.len() + 17) as f64]);
    agent.stop().unwrap();
    collector.stop().await;
}

/// The `.prom` file in `dir`, parsed, once it exists.
fn read_textfile(dir: &Path, name: &str) -> Result<Vec<(String, f64)>, String> {
    let text = std::fs::read_to_string(dir.join(name)).map_err(|e| e.to_string())?;
    ferry_tests::prometheus::parse(&text).map_err(|e| format!("{e}\n{text}"))
}

fn inode(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).map(|m| m.ino()).unwrap_or(0)
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn textfiles_appear_parse_and_are_replaced_whole() {
    ferry_tests::init_logging();
    let pki = TestPki::new().unwrap();
    let agent_dir = pki.scratch("textfile-agent");
    let collector_dir = pki.scratch("textfile-collector");
    std::fs::create_dir_all(&agent_dir).unwrap();
    std::fs::create_dir_all(&collector_dir).unwrap();
    let mut collector = TestCollector::new(&pki, "").unwrap();
    collector
        .append_config(&format!(
            "[metrics]\ntextfile = {:?}\ntextfile_interval_secs = 1",
            collector_dir.join("ferry-collector.prom")
        ))
        .unwrap();
    let endpoint = collector.start().await.unwrap();
    let agent_textfile = agent_dir.join("ferry-agent.prom");
    let mut agent = TestAgent::new(
        &pki,
        "s1",
        &endpoint,
        &format!("[metrics]\ntextfile = {agent_textfile:?}\ntextfile_interval_secs = 1\n"),
    )
    .unwrap();
    agent.start().unwrap();

    let first = until("the agent's textfile appears and parses", || async {
        let samples = read_textfile(&agent_dir, "ferry-agent.prom")?;
        value(&samples, "ferry_agent_due_files")
            .map(|_| inode(&agent_textfile))
            .ok_or("no due files yet".to_owned())
    })
    .await;
    let (files, bytes) = write_files(&agent, "t", 3);
    until(
        "the agent's textfile is rewritten with the transfer",
        || async {
            let samples = read_textfile(&agent_dir, "ferry-agent.prom")?;
            let v = [
                value(&samples, "ferry_agent_files_sent_total"),
                value(&samples, "ferry_agent_bytes_sent_total"),
            ];
            (v == [Some(files as f64), Some(bytes as f64)])
                .then_some(())
                .ok_or(format!("{v:?}"))
        },
    )
    .await;
    assert_ne!(
        inode(&agent_textfile),
        first,
        "replaced by rename, not rewritten in place"
    );
    until("the collector's textfile shows the transfer", || async {
        let samples = read_textfile(&collector_dir, "ferry-collector.prom")?;
        let v = value(&samples, "ferry_collector_files_stored_total");
        (v == Some(files as f64))
            .then_some(())
            .ok_or(format!("{v:?}"))
    })
    .await;

    agent.stop().unwrap();
    collector.stop().await;
    assert_eq!(
        entries(&agent_dir),
        ["ferry-agent.prom"],
        "temporary files left"
    );
    assert_eq!(
        entries(&collector_dir),
        ["ferry-collector.prom"],
        "temporary files left"
    );
}

/// Datagrams a service manager would receive, gathered until one holds
/// `wanted` (all of them returned).
fn hear(socket: &UnixDatagram, wanted: &str) -> Vec<String> {
    socket
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let deadline = Instant::now() + WAIT;
    let mut heard = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        if let Ok(n) = socket.recv(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            let done = text.lines().any(|l| l == wanted);
            heard.push(text);
            if done {
                return heard;
            }
        }
    }
    panic!("{wanted} never came; heard {heard:?}");
}

/// The `MALLOC_*` variables in the environment of process `pid`, sorted.
fn malloc_env(pid: u32) -> Vec<String> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let mut vars: Vec<String> = environ
        .split(|b| *b == 0)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .filter(|v| v.starts_with("MALLOC_"))
        .collect();
    vars.sort();
    vars
}

#[test]
fn the_collector_tells_systemd_when_it_serves_and_when_it_stops() {
    let pki = TestPki::new().unwrap();
    let mut collector = TestCollector::new(&pki, "").unwrap();
    let addr = process::free_port().unwrap();
    collector.pin_port(addr).unwrap();
    let socket_path = pki.scratch("systemd").join("notify");
    std::fs::create_dir_all(socket_path.parent().unwrap()).unwrap();
    let manager = UnixDatagram::bind(&socket_path).unwrap();
    let bin = process::binary("ferry-collector").unwrap();
    let config = collector.config_path.to_str().unwrap().to_owned();
    let log = pki.scratch("logs").join("collector.log");
    std::fs::create_dir_all(log.parent().unwrap()).unwrap();
    let mut proc = Process::start_with_env(
        &bin,
        &["run", "--config", &config],
        &[
            ("NOTIFY_SOCKET", socket_path.as_os_str()),
            ("WATCHDOG_USEC", "400000".as_ref()),
        ],
        &log,
    )
    .unwrap();
    let ready = hear(&manager, "READY=1");
    assert!(
        ready
            .last()
            .unwrap()
            .contains(&format!("STATUS=accepting stations on {addr}")),
        "{ready:?}"
    );
    // READY=1 means serving: the station listener is bound already.
    std::net::TcpStream::connect(addr).expect("listening when READY=1 was sent");
    // It re-executed itself (same pid, readiness intact) with the malloc
    // tunables.
    assert_eq!(
        malloc_env(proc.child.id()),
        [
            "MALLOC_ARENA_MAX=2",
            "MALLOC_MMAP_THRESHOLD_=4194304",
            "MALLOC_TRIM_THRESHOLD_=16777216"
        ]
    );
    hear(&manager, "WATCHDOG=1");
    let status = proc.terminate(Duration::from_secs(20)).unwrap();
    assert!(
        status.success(),
        "{status}: {}",
        std::fs::read_to_string(&log).unwrap()
    );
    hear(&manager, "STOPPING=1");
}

#[test]
fn the_agent_tells_systemd_when_it_watches_and_when_it_stops() {
    use std::os::linux::net::SocketAddrExt;
    let pki = TestPki::new().unwrap();
    // No collector at all: readiness means the roots are watched, not that
    // a collector answers.
    let nowhere = process::free_port().unwrap();
    let mut agent = TestAgent::new(&pki, "s1", &nowhere.to_string(), "").unwrap();
    let name = format!(
        "ferry-tests-notify-{:016x}",
        ferry_common::backoff::random_u64()
    );
    let abstract_addr =
        std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let manager = UnixDatagram::bind_addr(&abstract_addr).unwrap();
    let value = std::ffi::OsString::from(format!("@{name}"));
    // An operator's own malloc setting is kept; the others are added.
    agent
        .start_with_env(&[
            ("NOTIFY_SOCKET", &value),
            ("MALLOC_TRIM_THRESHOLD_", "1048576".as_ref()),
        ])
        .unwrap();
    let ready = hear(&manager, "READY=1");
    assert!(
        ready.last().unwrap().contains("STATUS=watching 1 root(s)"),
        "{ready:?}"
    );
    assert_eq!(
        malloc_env(agent.pid().unwrap()),
        [
            "MALLOC_ARENA_MAX=1",
            "MALLOC_MMAP_THRESHOLD_=4194304",
            "MALLOC_TRIM_THRESHOLD_=1048576"
        ]
    );
    let pid = agent.pid().unwrap().to_string();
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(sent.success());
    hear(&manager, "STOPPING=1");
    agent.stop().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_endpoint_answers_hostile_requests_with_4xx_and_keeps_serving() {
    ferry_tests::init_logging();
    let pki = TestPki::new().unwrap();
    let mut collector = TestCollector::new(&pki, "").unwrap();
    collector.start().await.unwrap();
    let addr = collector.http_addr().unwrap();

    // A client that connects and says nothing, and one that stops halfway,
    // hold a connection each, not the server.
    let _silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut halfway = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut halfway, b"GET /stat")
        .await
        .unwrap();

    let mut oversized = b"GET /status HTTP/1.1\r\nX-Filler: ".to_vec();
    oversized.extend(std::iter::repeat_n(b'x', 64 * 1024));
    oversized.extend_from_slice(b"\r\n\r\n");
    let cases: [(&str, Vec<u8>, u16); 9] = [
        (
            "garbage",
            b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n".to_vec(),
            400,
        ),
        ("oversized head", oversized, 400),
        ("no version", b"GET /status\r\n\r\n".to_vec(), 400),
        (
            "HTTP/2 preface",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
            400,
        ),
        (
            "POST",
            b"POST /status HTTP/1.1\r\nContent-Length: 11\r\n\r\nhello world".to_vec(),
            405,
        ),
        (
            "DELETE",
            b"DELETE /status/s1 HTTP/1.1\r\n\r\n".to_vec(),
            405,
        ),
        ("unknown path", b"GET /admin HTTP/1.1\r\n\r\n".to_vec(), 404),
        (
            "escaping station",
            b"GET /status/../../etc/passwd HTTP/1.1\r\n\r\n".to_vec(),
            404,
        ),
        (
            "odd station",
            b"GET /status/%2e%2e HTTP/1.1\r\n\r\n".to_vec(),
            404,
        ),
    ];
    for (what, request, expected) in cases {
        let reply = http::exchange(addr, &request)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(reply.status, expected, "{what}: {reply:?}");
    }
    drop(halfway);
    for path in ["/healthz", "/status", "/metrics"] {
        let reply = http::get(addr, path).await.unwrap();
        assert_eq!(
            reply.status, 200,
            "{path} after the hostile requests: {reply:?}"
        );
    }
    collector.stop().await;
}
