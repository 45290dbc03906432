//! The collector's configuration (`/etc/ferry/collector.toml`): read as TOML,
//! refused on any unknown key, validated once into [`Settings`].
//!
//! Relative paths are taken relative to the directory of the config file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_common::codec::MAX_FRAME;
use ferry_common::metrics::{MetricsSettings, RawMetrics};
use ferry_common::revocation::Revoked;
use serde::Deserialize;

use crate::store::mysql::redact;

/// Where the status endpoint listens unless configured otherwise: loopback
/// only, so it is on by default yet reachable only from the host.
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:7451";

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    /// Address stations connect to, e.g. "0.0.0.0:7450".
    listen: String,
    /// Root of the repository where verified files are stored.
    repository: PathBuf,
    /// Directory for the journal, staging files and private sockets.
    #[serde(default = "default_state_dir")]
    state_dir: PathBuf,
    /// Files this large or larger are staged with direct I/O (`O_DIRECT`),
    /// past the page cache; 0 stages every file through the page cache
    /// (for disks where a write's latency is long, such as spinning ones).
    #[serde(default = "default_direct_io_min_bytes")]
    direct_io_min_bytes: u64,
    /// Station ids or certificate SHA-256 fingerprints (64 hex digits, any
    /// case, with or without `:`, `-` or space separators) refused although
    /// their certificates verify. Reloadable.
    #[serde(default)]
    revoked: Vec<String>,
    /// The log filter (`tracing` directives such as "info" or
    /// "info,ferry_common::bridge=debug"). When set, it is used instead of
    /// `$FERRY_LOG`; when left out, `$FERRY_LOG` (default "info") is.
    /// Reloadable.
    log_filter: Option<String>,
    /// TLS material.
    tls: RawTls,
    /// Catalog databases.
    #[serde(default)]
    catalog: RawCatalog,
    /// Resource limits.
    #[serde(default)]
    limits: RawLimits,
    /// The read-only HTTP endpoint (status, health, metrics).
    #[serde(default)]
    http: RawHttp,
    /// Prometheus metrics besides the HTTP endpoint's `/metrics`.
    #[serde(default)]
    metrics: RawMetrics,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    /// Address of the read-only HTTP endpoint serving `/status`,
    /// `/status/<station>`, `/healthz` and `/metrics` (default
    /// "127.0.0.1:7451"); an empty string turns it off.
    #[serde(default = "default_http_listen")]
    listen: String,
}

impl Default for RawHttp {
    fn default() -> Self {
        Self {
            listen: default_http_listen(),
        }
    }
}

fn default_http_listen() -> String {
    DEFAULT_HTTP_LISTEN.to_owned()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    /// The private CA's certificate (PEM) that signs station certificates.
    ca: PathBuf,
    /// The collector's certificate (PEM).
    cert: PathBuf,
    /// The collector's private key (PEM).
    key: PathBuf,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCatalog {
    /// Primary catalog URL: `sqlite://<path>` (default
    /// `sqlite://<state_dir>/catalog-primary.sqlite`).
    primary: Option<String>,
    /// Backup catalog URL, same forms (default
    /// `sqlite://<state_dir>/catalog-backup.sqlite`).
    backup: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLimits {
    /// Most concurrent station sessions.
    max_sessions: usize,
    /// Bytes of chunk data a station may have in flight.
    window_bytes: u64,
    /// Largest chunk payload accepted.
    max_chunk_bytes: u32,
    /// Largest frame accepted on the wire (at most 8 MiB).
    max_frame_bytes: u64,
    /// Ping interval asked of agents, in seconds (1 to 3600).
    heartbeat_secs: u64,
    /// Time a new connection gets for its TLS and ZMTP handshakes, in
    /// seconds (1 to 3600).
    handshake_timeout_secs: u64,
    /// Free space the repository's filesystem keeps; below it new data is
    /// refused with a retryable error.
    reserve_bytes: u64,
}

impl Default for RawLimits {
    fn default() -> Self {
        Self {
            max_sessions: 1000,
            window_bytes: 16 << 20,
            max_chunk_bytes: 1 << 20,
            max_frame_bytes: MAX_FRAME as u64,
            heartbeat_secs: 5,
            handshake_timeout_secs: 10,
            reserve_bytes: 1 << 30,
        }
    }
}

/// Longest ping interval accepted. Agents get it in milliseconds in a u32
/// (`Welcome::heartbeat_ms`), which a larger value would overflow; an idle
/// session pinged less than hourly would hide a dead link for hours anyway.
pub const MAX_HEARTBEAT_SECS: u64 = 3600;

/// Longest handshake timeout accepted: the TLS bridge adds it to the clock
/// for every connection, which panics when the sum overflows.
pub const MAX_HANDSHAKE_TIMEOUT_SECS: u64 = 3600;

fn default_direct_io_min_bytes() -> u64 {
    crate::repository::DIRECT_MIN
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/ferry/collector")
}

/// Where a catalog lives.
#[derive(Clone, PartialEq, Eq)]
pub enum CatalogUrl {
    /// An SQLite file.
    Sqlite(PathBuf),
    /// A MySQL/MariaDB database: `mysql://user:pass@host:port/db[?options]`.
    MySql(String),
}

impl std::fmt::Debug for CatalogUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CatalogUrl::Sqlite(path) => write!(f, "Sqlite({})", path.display()),
            // Never print the password.
            CatalogUrl::MySql(url) => write!(f, "MySql({})", redact(url)),
        }
    }
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub listen: SocketAddr,
    pub repository: PathBuf,
    pub state_dir: PathBuf,
    /// Smallest file staged with direct I/O; `None`: none is.
    pub direct_io_min: Option<u64>,
    /// Refused stations and certificates (reloadable).
    pub revoked: Revoked,
    /// The configured log filter, checked; `None`: `$FERRY_LOG` decides
    /// (reloadable).
    pub log_filter: Option<String>,
    pub tls_ca: PathBuf,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    pub primary: CatalogUrl,
    pub backup: CatalogUrl,
    pub max_sessions: usize,
    pub window: u64,
    pub max_chunk: u32,
    pub max_frame: u64,
    pub heartbeat: Duration,
    pub handshake_timeout: Duration,
    pub reserve: u64,
    /// The status endpoint's address; `None` when turned off.
    pub http_listen: Option<SocketAddr>,
    /// Metrics listener and textfile (its path resolved like the others).
    pub metrics: MetricsSettings,
}

/// Why a configuration is refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {key}: {message}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        message: String,
    },
}

/// The keys a reload applies to the running collector.
pub const RELOADABLE: [&str; 2] = ["revoked", "log_filter"];

/// The keys whose values differ between `old` and `new`, in file order
/// (a table stands for all its keys).
pub fn changed_keys(old: &Settings, new: &Settings) -> Vec<&'static str> {
    let mut keys = Vec::new();
    let mut check = |key: &'static str, differs: bool| {
        if differs {
            keys.push(key);
        }
    };
    check("listen", old.listen != new.listen);
    check("repository", old.repository != new.repository);
    check("state_dir", old.state_dir != new.state_dir);
    check(
        "direct_io_min_bytes",
        old.direct_io_min != new.direct_io_min,
    );
    check("revoked", old.revoked != new.revoked);
    check("log_filter", old.log_filter != new.log_filter);
    check(
        "tls",
        (&old.tls_ca, &old.tls_cert, &old.tls_key) != (&new.tls_ca, &new.tls_cert, &new.tls_key),
    );
    check(
        "catalog",
        (&old.primary, &old.backup) != (&new.primary, &new.backup),
    );
    check(
        "limits",
        (
            old.max_sessions,
            old.window,
            old.max_chunk,
            old.max_frame,
            old.heartbeat,
            old.handshake_timeout,
            old.reserve,
        ) != (
            new.max_sessions,
            new.window,
            new.max_chunk,
            new.max_frame,
            new.heartbeat,
            new.handshake_timeout,
            new.reserve,
        ),
    );
    check("http", old.http_listen != new.http_listen);
    check("metrics", old.metrics != new.metrics);
    keys
}

/// Reads and validates the configuration file at `path`.
pub fn load(path: &Path) -> Result<Settings, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(&text, path)
}

/// Validates configuration `text` read from `origin`.
pub fn parse(text: &str, origin: &Path) -> Result<Settings, ConfigError> {
    let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: origin.to_owned(),
        message: e.to_string().trim_end().to_owned(),
    })?;
    let invalid = |key: &'static str, message: String| ConfigError::Invalid {
        path: origin.to_owned(),
        key,
        message,
    };
    let base = origin.parent().unwrap_or(Path::new("."));
    let resolve = |p: &Path| {
        if p.is_absolute() {
            p.to_owned()
        } else {
            base.join(p)
        }
    };
    let listen: SocketAddr = raw.listen.parse().map_err(|e| {
        invalid(
            "listen",
            format!("{:?} is not an address:port ({e})", raw.listen),
        )
    })?;
    let state_dir = resolve(&raw.state_dir);
    let catalog = |key: &'static str,
                   url: Option<String>,
                   default: &str|
     -> Result<CatalogUrl, ConfigError> {
        let url = url.unwrap_or_else(|| format!("sqlite://{}", state_dir.join(default).display()));
        if let Some(path) = url.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err(invalid(key, "sqlite:// needs a file path".into()));
            }
            return Ok(CatalogUrl::Sqlite(resolve(Path::new(path))));
        }
        if url.starts_with("mysql://") || url.starts_with("mariadb://") {
            // Checked fully (host, database, options) by the store itself.
            crate::store::mysql::MySqlStore::new(key, &url)
                .map_err(|e| invalid(key, e.to_string()))?;
            return Ok(CatalogUrl::MySql(url));
        }
        Err(invalid(
            key,
            format!(
                "{:?} is not a catalog URL (sqlite://<path> or mysql://user:pass@host:port/db)",
                redact(&url)
            ),
        ))
    };
    let primary = catalog(
        "catalog.primary",
        raw.catalog.primary,
        "catalog-primary.sqlite",
    )?;
    let backup = catalog(
        "catalog.backup",
        raw.catalog.backup,
        "catalog-backup.sqlite",
    )?;
    if primary == backup {
        return Err(invalid(
            "catalog.backup",
            "must differ from catalog.primary".into(),
        ));
    }
    let l = raw.limits;
    if l.max_frame_bytes > MAX_FRAME as u64 || l.max_frame_bytes < 64 * 1024 {
        return Err(invalid(
            "limits.max_frame_bytes",
            format!("must be between 65536 and {MAX_FRAME}"),
        ));
    }
    if u64::from(l.max_chunk_bytes) + 4096 > l.max_frame_bytes || l.max_chunk_bytes < 4096 {
        return Err(invalid(
            "limits.max_chunk_bytes",
            "must be at least 4096 and leave 4096 bytes of the frame for its header".into(),
        ));
    }
    if l.window_bytes < u64::from(l.max_chunk_bytes) {
        return Err(invalid(
            "limits.window_bytes",
            "must be at least one chunk".into(),
        ));
    }
    if l.heartbeat_secs == 0 || l.handshake_timeout_secs == 0 || l.max_sessions == 0 {
        return Err(invalid(
            "limits",
            "heartbeat_secs, handshake_timeout_secs and max_sessions must be positive".into(),
        ));
    }
    if l.heartbeat_secs > MAX_HEARTBEAT_SECS {
        return Err(invalid(
            "limits.heartbeat_secs",
            format!("must be at most {MAX_HEARTBEAT_SECS}"),
        ));
    }
    if l.handshake_timeout_secs > MAX_HANDSHAKE_TIMEOUT_SECS {
        return Err(invalid(
            "limits.handshake_timeout_secs",
            format!("must be at most {MAX_HANDSHAKE_TIMEOUT_SECS}"),
        ));
    }
    let http_listen = match raw.http.listen.trim() {
        "" => None,
        text => Some(text.parse::<SocketAddr>().map_err(|e| {
            invalid(
                "http.listen",
                format!("{text:?} is not an address:port such as \"127.0.0.1:7451\" ({e})"),
            )
        })?),
    };
    let mut metrics = raw.metrics.validate().map_err(|(key, message)| {
        let key = match key {
            "listen" => "metrics.listen",
            "textfile" => "metrics.textfile",
            _ => "metrics.textfile_interval_secs",
        };
        invalid(key, message)
    })?;
    metrics.textfile = metrics.textfile.as_deref().map(resolve);
    if metrics.listen.is_some() && metrics.listen == http_listen {
        return Err(invalid(
            "metrics.listen",
            "is http.listen, which serves /metrics already; leave metrics.listen out".into(),
        ));
    }
    let revoked = Revoked::parse(&raw.revoked).map_err(|e| invalid("revoked", e.to_string()))?;
    let log_filter = match raw.log_filter {
        Some(filter) => {
            ferry_common::logging::check_filter(&filter)
                .map_err(|message| invalid("log_filter", message))?;
            Some(filter)
        }
        None => None,
    };
    Ok(Settings {
        listen,
        repository: resolve(&raw.repository),
        state_dir,
        direct_io_min: (raw.direct_io_min_bytes > 0).then_some(raw.direct_io_min_bytes),
        revoked,
        log_filter,
        tls_ca: resolve(&raw.tls.ca),
        tls_cert: resolve(&raw.tls.cert),
        tls_key: resolve(&raw.tls.key),
        primary,
        backup,
        max_sessions: l.max_sessions,
        window: l.window_bytes,
        max_chunk: l.max_chunk_bytes,
        max_frame: l.max_frame_bytes,
        heartbeat: Duration::from_secs(l.heartbeat_secs),
        handshake_timeout: Duration::from_secs(l.handshake_timeout_secs),
        reserve: l.reserve_bytes,
        http_listen,
        metrics,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../packaging/collector.toml");

    #[test]
    fn the_packaged_example_is_valid() {
        let settings = parse(EXAMPLE, Path::new("/etc/ferry/collector.toml")).unwrap();
        assert_eq!(settings.listen.port(), 7450);
        assert_eq!(settings.tls_ca, Path::new("/etc/ferry/pki/ca.pem"));
        assert_eq!(
            settings.primary,
            CatalogUrl::Sqlite("/var/lib/ferry/collector/catalog-primary.sqlite".into())
        );
        assert_eq!(
            settings.http_listen,
            Some(DEFAULT_HTTP_LISTEN.parse().unwrap())
        );
        assert_eq!(settings.metrics, MetricsSettings::default());
        assert_eq!(settings.direct_io_min, Some(65536));
    }

    #[test]
    fn direct_io_starts_at_64_kib_and_can_be_turned_off() {
        let origin = Path::new("c.toml");
        let default = parse(&minimal(""), origin).unwrap();
        assert_eq!(default.direct_io_min, Some(64 << 10));
        let low = parse(&minimal("direct_io_min_bytes = 4096"), origin).unwrap();
        assert_eq!(low.direct_io_min, Some(4096));
        let off = parse(&minimal("direct_io_min_bytes = 0"), origin).unwrap();
        assert_eq!(off.direct_io_min, None);
    }

    #[test]
    fn the_status_endpoint_is_on_loopback_by_default_and_can_be_turned_off() {
        let origin = Path::new("/srv/ferry/collector.toml");
        let s = parse(&minimal(""), origin).unwrap();
        assert_eq!(s.http_listen, Some("127.0.0.1:7451".parse().unwrap()));
        assert_eq!(s.metrics.listen, None);
        assert_eq!(s.metrics.textfile, None);
        let off = parse(&minimal("[http]\nlisten = \"\""), origin).unwrap();
        assert_eq!(off.http_listen, None);
        let on = parse(
            &minimal(
                "[metrics]\nlisten = \"127.0.0.1:9478\"\ntextfile = \"prom/ferry-collector.prom\"\ntextfile_interval_secs = 5",
            ),
            origin,
        )
        .unwrap();
        assert_eq!(on.metrics.listen, Some("127.0.0.1:9478".parse().unwrap()));
        assert_eq!(
            on.metrics.textfile.as_deref(),
            Some(Path::new("/srv/ferry/prom/ferry-collector.prom"))
        );
        assert_eq!(on.metrics.textfile_interval, Duration::from_secs(5));
    }

    fn minimal(extra: &str) -> String {
        format!(
            "listen = \"127.0.0.1:7450\"\nrepository = \"repo\"\n{extra}\n[tls]\nca = \"ca.pem\"\ncert = \"s.pem\"\nkey = \"s.key\"\n"
        )
    }

    #[test]
    fn mysql_urls_are_accepted_and_never_printed_with_their_password() {
        let text = minimal("[catalog]\nprimary = \"mysql://ferry:s3cret@db1:3306/ferry\"");
        let s = parse(&text, Path::new("c.toml")).unwrap();
        assert_eq!(
            s.primary,
            CatalogUrl::MySql("mysql://ferry:s3cret@db1:3306/ferry".into())
        );
        let shown = format!("{:?}", s.primary);
        assert!(
            !shown.contains("s3cret") && shown.contains("ferry:***@db1"),
            "{shown}"
        );
    }

    /// Issue 19: `--check` accepted any string in `revoked`, so a mistyped
    /// entry revoked nothing without a word.
    #[test]
    fn a_revoked_entry_that_is_neither_a_station_nor_a_fingerprint_is_refused() {
        let err = parse(
            &minimal("revoked = [\"s1\", \"AB:CD:not-a-print\"]"),
            Path::new("c.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("c.toml: revoked: ") && err.contains("\"AB:CD:not-a-print\""),
            "{err}"
        );
        let hex = "ab".repeat(32);
        let s = parse(
            &minimal(&format!("revoked = [\"s1\", \"{hex}\"]")),
            Path::new("c.toml"),
        )
        .unwrap();
        assert_eq!(s.revoked, Revoked::parse(["s1", hex.as_str()]).unwrap());
    }

    #[test]
    fn a_log_filter_is_checked_and_a_reload_names_what_changed() {
        let origin = Path::new("c.toml");
        let err = parse(&minimal("log_filter = \"ferry=loud\""), origin)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("c.toml: log_filter: "), "{err}");
        let old = parse(&minimal(""), origin).unwrap();
        assert_eq!(old.log_filter, None);
        let new = parse(
            &minimal("log_filter = \"debug\"\nrevoked = [\"s1\"]\n[limits]\nmax_sessions = 5"),
            origin,
        )
        .unwrap();
        assert_eq!(new.log_filter.as_deref(), Some("debug"));
        assert_eq!(
            changed_keys(&old, &new),
            ["revoked", "log_filter", "limits"]
        );
        assert!(changed_keys(&old, &old).is_empty());
    }

    #[test]
    fn relative_paths_follow_the_config_file() {
        let s = parse(&minimal(""), Path::new("/srv/ferry/collector.toml")).unwrap();
        assert_eq!(s.repository, Path::new("/srv/ferry/repo"));
        assert_eq!(s.tls_key, Path::new("/srv/ferry/s.key"));
    }

    /// Found by the `config` fuzz target's invariants: a heartbeat of
    /// 4294968 s was accepted and sent to agents as 704 ms (the u32
    /// millisecond field wrapped), and a handshake timeout of u64::MAX
    /// seconds was accepted and made every connection panic adding it to
    /// the clock.
    #[test]
    fn a_heartbeat_or_handshake_timeout_too_long_for_its_use_is_refused() {
        let origin = Path::new("c.toml");
        for (limits, key) in [
            ("heartbeat_secs = 4294968", "limits.heartbeat_secs"),
            (
                "handshake_timeout_secs = 18446744073709551615",
                "limits.handshake_timeout_secs",
            ),
            ("heartbeat_secs = 3601", "limits.heartbeat_secs"),
        ] {
            let err = parse(&minimal(&format!("[limits]\n{limits}")), origin)
                .unwrap_err()
                .to_string();
            assert!(err.contains(key) && err.contains("at most 3600"), "{err}");
        }
        let text = minimal("[limits]\nheartbeat_secs = 3600\nhandshake_timeout_secs = 3600");
        let s = parse(&text, origin).unwrap();
        assert_eq!(s.heartbeat, Duration::from_secs(3600));
        assert_eq!(s.handshake_timeout, Duration::from_secs(3600));
    }

    #[test]
    fn bad_configs_name_the_key() {
        let origin = Path::new("c.toml");
        let cases = [
            (minimal("colour = \"blue\""), "unknown field `colour`"),
            (minimal("").replace("127.0.0.1:7450", "nowhere"), "listen"),
            (
                minimal("[catalog]\nprimary = \"postgres://x\""),
                "catalog.primary",
            ),
            (
                minimal("[catalog]\nprimary = \"mysql://u:p@h\""),
                "catalog.primary",
            ),
            (
                minimal("[catalog]\nprimary = \"sqlite://a\"\nbackup = \"sqlite://a\""),
                "must differ",
            ),
            (
                minimal("[limits]\nmax_frame_bytes = 99999999"),
                "limits.max_frame_bytes",
            ),
            (minimal("[limits]\nwindow_bytes = 1"), "limits.window_bytes"),
            (minimal("[http]\nlisten = \"loopback\""), "http.listen"),
            (minimal("[http]\nport = 1"), "unknown field `port`"),
            (
                minimal("[metrics]\nlisten = \"127.0.0.1:7451\""),
                "metrics.listen",
            ),
            (
                minimal("[metrics]\ntextfile = \"x.txt\""),
                "metrics.textfile",
            ),
            (
                minimal("[metrics]\ntextfile_interval_secs = 0"),
                "metrics.textfile_interval_secs",
            ),
            (
                minimal("[metrics]\ninterval = 1"),
                "unknown field `interval`",
            ),
            ("listen = \"127.0.0.1:1\"".to_owned(), "missing field"),
        ];
        for (text, expected) in cases {
            let err = parse(&text, origin).unwrap_err().to_string();
            assert!(err.contains(expected), "{err:?} lacks {expected:?}");
            assert!(err.starts_with("c.toml"), "{err}");
        }
    }
}
