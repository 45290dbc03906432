//! The agent's configuration (`/etc/ferry/agent.toml`): the TOML shape as
//! written, and its validation, once, into typed [`Settings`].
//!
//! Every path must be absolute (a daemon's working directory means nothing
//! to whoever reads the file). Whether roots exist is not checked here: a
//! mount may come later; `--check` warns, and the watcher picks a missing
//! root up when it appears.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use ferry_common::metrics::{MetricsSettings, RawMetrics};
use ferry_common::station::StationId;
use globset::{Candidate, GlobBuilder, GlobSet, GlobSetBuilder};
use serde::Deserialize;

/// Where the agent looks for its configuration by default.
pub const DEFAULT_PATH: &str = "/etc/ferry/agent.toml";

/// Where the agent keeps its state by default.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/ferry/agent";

/// Files left out of every root unless `exclude` says otherwise: temporary
/// and partial files, and hidden files and directories.
pub const DEFAULT_EXCLUDE: &[&str] = &["*.tmp", "*.part", ".*"];

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Syntax errors and unknown or mistyped keys; toml's message names the
    /// line, the column and the key.
    #[error("config {}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("config {}: {key}: {reason}", path.display())]
    Invalid {
        path: PathBuf,
        key: String,
        reason: String,
    },
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The station's id if configured; otherwise it comes from the
    /// certificate.
    pub station: Option<StationId>,
    /// The station's certificate, key and the CA that signs the collector's.
    pub tls: TlsFiles,
    /// Collector endpoints (`host:port`), tried in order.
    pub collectors: Vec<String>,
    /// Directory of the agent's state.
    pub state_dir: PathBuf,
    /// The ledger's SQLite file.
    pub ledger: PathBuf,
    /// Directories watched, in configuration order.
    pub roots: Vec<Root>,
    /// How long size and mtime must stay unchanged for a file without a
    /// close event to count as finished.
    pub settle: Duration,
    /// New content waits until seen unchanged this long (on the agent's
    /// clock from first sight, not by mtime).
    pub min_age: Duration,
    /// Files smaller than this are left alone.
    pub min_size: u64,
    /// Period of the full rescan that catches what events missed.
    pub rescan_interval: Duration,
    /// Period of the content re-check: every backed-up file is read and
    /// compared with its acknowledged hash, to find a rewrite no metadata
    /// shows (made while the agent was stopped, or under a poll-mode root).
    /// `None`: off.
    pub content_recheck: Option<Duration>,
    /// Batch limits.
    pub batch: Batch,
    /// What to do with a file once the collector has acknowledged it.
    pub after_ack: AfterAck,
    /// The indexerD-compatible files.
    pub legacy: Legacy,
    /// Where Prometheus metrics are exposed (off by default).
    pub metrics: MetricsSettings,
}

/// The station's TLS files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA certificate (PEM) that signed the collector's certificate.
    pub ca: PathBuf,
    /// Station certificate (PEM).
    pub cert: PathBuf,
    /// Station private key (PEM).
    pub key: PathBuf,
}

/// A watched directory.
#[derive(Debug, Clone)]
pub struct Root {
    /// Name of the root; files arrive at the collector under
    /// `<station>/<name>/<relative path>`.
    pub name: String,
    /// Absolute path of the directory.
    pub path: PathBuf,
    /// Poll every this often instead of relying on inotify (NFS, CIFS).
    pub poll: Option<Duration>,
    filter: Filter,
}

/// Batch limits: a batch closes when it holds `max_files` files or
/// `max_bytes` bytes, or `linger` after its first file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batch {
    /// Most files per batch.
    pub max_files: usize,
    /// Most bytes per batch (a larger single file goes alone).
    pub max_bytes: u64,
    /// Longest wait for more files before sending a batch.
    pub linger: Duration,
}

/// What happens to a file after the collector's ack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterAck {
    /// Leave it where it is.
    Keep,
    /// Delete it.
    Delete,
    /// Move it below this directory (keeping its path below the root,
    /// under the root's name).
    Move(PathBuf),
}

/// The indexerD-compatible files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Legacy {
    /// The due set as text, one absolute path per line.
    pub due_backup: PathBuf,
    /// Appended with every acknowledged file.
    pub backup_done: PathBuf,
    /// The lock cookie.
    pub halt_flag: PathBuf,
    /// A flag unmodified for this long is stale.
    pub halt_timeout: Duration,
    /// Longest random wait before retrying a held flag (the wait is
    /// between half of it and all of it).
    pub halt_retry_max: Duration,
    /// At the first start, send again the files indexerD's `BACKUP_DONE`
    /// lists as copied (by default they are recorded as done unsent).
    pub resend_backup_done: bool,
}

/// Reads and validates the configuration at `path`.
pub fn load(path: &Path) -> Result<Settings, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(&text, path)
}

/// Validates configuration `text`; `origin` names it in errors.
pub fn parse(text: &str, origin: &Path) -> Result<Settings, ConfigError> {
    let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: origin.to_owned(),
        message: e.to_string().trim_end().to_owned(),
    })?;
    Validator { origin }.settings(raw)
}

impl Settings {
    /// Root names and their directories (for the ledger's absolute paths).
    pub fn root_dirs(&self) -> BTreeMap<String, PathBuf> {
        self.roots
            .iter()
            .map(|root| (root.name.clone(), root.path.clone()))
            .collect()
    }
}

impl Root {
    /// Whether a file at `rel_path` (relative to the root) is to be backed
    /// up: no component of it is excluded, and it is included.
    pub fn wants(&self, rel_path: &Path) -> bool {
        self.filter.wants(rel_path)
    }

    /// Whether a directory at `rel_path` is excluded with everything in it,
    /// so the watcher need not descend into it.
    pub fn skips_dir(&self, rel_path: &Path) -> bool {
        self.filter.excluded(rel_path)
    }
}

/// Globs without `/` match a name (a file's for `include`; any component for
/// `exclude`, which thus excludes directories with their content); globs
/// with `/` match the whole path below the root, with `*` stopping at `/`
/// and `**` crossing it.
#[derive(Debug, Clone)]
struct Filter {
    include_all: bool,
    include_names: GlobSet,
    include_paths: GlobSet,
    exclude_names: GlobSet,
    exclude_paths: GlobSet,
}

impl Filter {
    fn wants(&self, rel_path: &Path) -> bool {
        if self.excluded(rel_path) {
            return false;
        }
        if self.include_all {
            return true;
        }
        let name_hit = rel_path
            .file_name()
            .is_some_and(|name| self.include_names.is_match_candidate(&Candidate::new(name)));
        name_hit
            || self
                .include_paths
                .is_match_candidate(&Candidate::new(rel_path))
    }

    fn excluded(&self, rel_path: &Path) -> bool {
        let by_name = rel_path.components().any(|c| match c {
            Component::Normal(name) => self.exclude_names.is_match_candidate(&Candidate::new(name)),
            _ => false,
        });
        by_name
            || self
                .exclude_paths
                .is_match_candidate(&Candidate::new(rel_path))
    }
}

/// The configuration file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    /// The station's id; when absent it is read from the certificate. When
    /// present it must match the certificate.
    station: Option<StationId>,
    /// TLS files of the station.
    tls: RawTls,
    /// Collector endpoints as `host:port`, tried in order; at least one.
    collectors: Vec<String>,
    /// Directory of the agent's state (default `/var/lib/ferry/agent`).
    state_dir: Option<PathBuf>,
    /// The ledger's SQLite file (default `<state_dir>/ledger.sqlite`).
    ledger: Option<PathBuf>,
    /// Directories to watch; at least one.
    #[serde(default)]
    roots: Vec<RawRoot>,
    /// Seconds a file's size and mtime must stay unchanged when no close
    /// event was seen (default 5).
    #[serde(default = "defaults::settle_secs")]
    settle_secs: u64,
    /// Seconds new content must be seen unchanged before it may be sent,
    /// counted from when the agent first saw it so, not from its mtime
    /// (default 0).
    #[serde(default)]
    min_age_secs: u64,
    /// Smallest file size in bytes that is sent (default 0: all).
    #[serde(default)]
    min_size: u64,
    /// Seconds between full rescans of every root (default 3600).
    #[serde(default = "defaults::rescan_interval_secs")]
    rescan_interval_secs: u64,
    /// Seconds between re-reads of every backed-up file to compare it with
    /// the acknowledged content (default 0: never).
    #[serde(default)]
    content_recheck_secs: u64,
    /// Batch limits.
    #[serde(default)]
    batch: RawBatch,
    /// What to do with a file after its ack.
    #[serde(default)]
    after_ack: RawAfterAck,
    /// Paths of the indexerD-compatible files and the halt timeout.
    #[serde(default)]
    legacy: RawLegacy,
    /// Prometheus metrics: an HTTP listener and/or a node_exporter
    /// textfile (both off by default).
    #[serde(default)]
    metrics: RawMetrics,
}

/// `[tls]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    /// CA certificate (PEM) that signed the collector's certificate.
    ca: PathBuf,
    /// The station's certificate (PEM).
    cert: PathBuf,
    /// The station's private key (PEM).
    key: PathBuf,
}

/// `[[roots]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoot {
    /// Unique name, used as a directory name at the collector
    /// (`A-Z a-z 0-9 . _ -`, not starting with `.` or `-`).
    name: String,
    /// Absolute path of the directory.
    path: PathBuf,
    /// Globs a file must match to be sent (default: every file).
    #[serde(default)]
    include: Vec<String>,
    /// Globs of files and directories never sent; replaces the default
    /// `["*.tmp", "*.part", ".*"]`.
    exclude: Option<Vec<String>>,
    /// Poll instead of relying on inotify (for NFS and CIFS).
    #[serde(default)]
    poll: bool,
    /// Seconds between polls in poll mode (default 30).
    #[serde(default = "defaults::poll_interval_secs")]
    poll_interval_secs: u64,
}

/// `[batch]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawBatch {
    /// Most files per batch (default 1000).
    max_files: usize,
    /// Most bytes per batch (default 64 MiB).
    max_bytes: u64,
    /// Milliseconds to wait for more files before sending (default 200).
    linger_ms: u64,
}

/// `[after_ack]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAfterAck {
    /// `keep` (default), `delete` or `move`.
    #[serde(default)]
    action: RawAction,
    /// Directory files are moved below; required with `action = "move"`.
    move_to: Option<PathBuf>,
}

/// The post-ack actions as written.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawAction {
    #[default]
    Keep,
    Delete,
    Move,
}

/// `[legacy]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLegacy {
    /// Path of `DUE_BACKUP` (default `<state_dir>/DUE_BACKUP`).
    due_backup: Option<PathBuf>,
    /// Path of `BACKUP_DONE` (default `<state_dir>/BACKUP_DONE`).
    backup_done: Option<PathBuf>,
    /// Path of `HALT_FLAG` (default `<state_dir>/HALT_FLAG`).
    halt_flag: Option<PathBuf>,
    /// Minutes after which an unmodified flag is stale (default 300).
    #[serde(default = "defaults::halt_timeout_mins")]
    halt_timeout_mins: u64,
    /// Longest random wait in seconds before retrying a held flag
    /// (default 60).
    #[serde(default = "defaults::halt_retry_max_secs")]
    halt_retry_max_secs: u64,
    /// At the first start, send again the files listed in indexerD's
    /// `BACKUP_DONE` (and not in its `DUE_BACKUP`) instead of recording them
    /// as already copied (default false).
    #[serde(default)]
    resend_backup_done: bool,
}

impl Default for RawBatch {
    fn default() -> Self {
        Self {
            max_files: 1000,
            max_bytes: 64 << 20,
            linger_ms: 200,
        }
    }
}

impl Default for RawLegacy {
    fn default() -> Self {
        Self {
            due_backup: None,
            backup_done: None,
            halt_flag: None,
            halt_timeout_mins: defaults::halt_timeout_mins(),
            halt_retry_max_secs: defaults::halt_retry_max_secs(),
            resend_backup_done: false,
        }
    }
}

mod defaults {
    //! Default values serde needs as functions.
    pub fn settle_secs() -> u64 {
        5
    }
    pub fn rescan_interval_secs() -> u64 {
        3600
    }
    pub fn poll_interval_secs() -> u64 {
        30
    }
    pub fn halt_timeout_mins() -> u64 {
        300
    }
    pub fn halt_retry_max_secs() -> u64 {
        60
    }
}

/// Turns the raw shape into [`Settings`], naming the file and key of the
/// first problem.
struct Validator<'a> {
    origin: &'a Path,
}

impl Validator<'_> {
    fn settings(&self, raw: RawConfig) -> Result<Settings, ConfigError> {
        let tls = TlsFiles {
            ca: self.absolute("tls.ca", raw.tls.ca)?,
            cert: self.absolute("tls.cert", raw.tls.cert)?,
            key: self.absolute("tls.key", raw.tls.key)?,
        };
        if raw.collectors.is_empty() {
            return Err(self.invalid("collectors", "at least one collector endpoint is needed"));
        }
        for (i, endpoint) in raw.collectors.iter().enumerate() {
            if let Err(reason) = check_endpoint(endpoint) {
                return Err(self.invalid(&format!("collectors[{i}]"), &reason));
            }
        }
        let state_dir = self.absolute(
            "state_dir",
            raw.state_dir
                .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR)),
        )?;
        let ledger = self.absolute(
            "ledger",
            raw.ledger
                .unwrap_or_else(|| state_dir.join("ledger.sqlite")),
        )?;
        let roots = self.roots(raw.roots)?;
        let after_ack = self.after_ack(raw.after_ack, &roots)?;
        let batch = self.batch(raw.batch)?;
        let legacy = self.legacy(raw.legacy, &state_dir)?;
        let rescan_interval =
            self.positive_secs("rescan_interval_secs", raw.rescan_interval_secs)?;
        let metrics = self.metrics(raw.metrics)?;
        Ok(Settings {
            station: raw.station,
            tls,
            collectors: raw.collectors,
            state_dir,
            ledger,
            roots,
            settle: Duration::from_secs(raw.settle_secs),
            min_age: Duration::from_secs(raw.min_age_secs),
            min_size: raw.min_size,
            rescan_interval,
            content_recheck: (raw.content_recheck_secs > 0)
                .then(|| Duration::from_secs(raw.content_recheck_secs)),
            batch,
            after_ack,
            legacy,
            metrics,
        })
    }

    fn metrics(&self, raw: RawMetrics) -> Result<MetricsSettings, ConfigError> {
        let mut metrics = raw
            .validate()
            .map_err(|(key, reason)| self.invalid(&format!("metrics.{key}"), &reason))?;
        if let Some(path) = metrics.textfile.take() {
            metrics.textfile = Some(self.absolute("metrics.textfile", path)?);
        }
        Ok(metrics)
    }

    fn roots(&self, raw: Vec<RawRoot>) -> Result<Vec<Root>, ConfigError> {
        if raw.is_empty() {
            return Err(self.invalid("roots", "at least one [[roots]] entry is needed"));
        }
        let mut names = HashSet::new();
        let mut roots: Vec<Root> = Vec::with_capacity(raw.len());
        for (i, root) in raw.into_iter().enumerate() {
            let key = |field: &str| format!("roots[{i}].{field}");
            if StationId::new(root.name.as_str()).is_err() {
                return Err(self.invalid(
                    &key("name"),
                    &format!(
                        "{:?} is not a valid root name: use 1 to 64 characters of \
                         A-Z a-z 0-9 . _ -, not starting with '.' or '-'",
                        root.name
                    ),
                ));
            }
            if !names.insert(root.name.clone()) {
                return Err(self.invalid(
                    &key("name"),
                    &format!("root name {:?} is used twice", root.name),
                ));
            }
            let path = self.absolute(&key("path"), root.path)?;
            if let Some(other) = roots
                .iter()
                .find(|r| r.path.starts_with(&path) || path.starts_with(&r.path))
            {
                return Err(self.invalid(
                    &key("path"),
                    &format!(
                        "{} overlaps root {:?} ({}); a file must belong to one root",
                        path.display(),
                        other.name,
                        other.path.display()
                    ),
                ));
            }
            let exclude = root
                .exclude
                .unwrap_or_else(|| DEFAULT_EXCLUDE.iter().map(|s| (*s).to_owned()).collect());
            let (include_names, include_paths) = self.globs(&key("include"), &root.include)?;
            let (exclude_names, exclude_paths) = self.globs(&key("exclude"), &exclude)?;
            let poll = if root.poll {
                Some(self.positive_secs(&key("poll_interval_secs"), root.poll_interval_secs)?)
            } else {
                None
            };
            roots.push(Root {
                name: root.name,
                path,
                poll,
                filter: Filter {
                    include_all: root.include.is_empty(),
                    include_names,
                    include_paths,
                    exclude_names,
                    exclude_paths,
                },
            });
        }
        Ok(roots)
    }

    /// Compiles `globs` into name globs and path globs.
    fn globs(&self, key: &str, globs: &[String]) -> Result<(GlobSet, GlobSet), ConfigError> {
        let mut names = GlobSetBuilder::new();
        let mut paths = GlobSetBuilder::new();
        for (i, glob) in globs.iter().enumerate() {
            let key = format!("{key}[{i}]");
            if glob.is_empty() {
                return Err(self.invalid(&key, "empty glob"));
            }
            if glob.starts_with('/') {
                return Err(self.invalid(
                    &key,
                    &format!("{glob:?}: globs match paths below the root; drop the leading '/'"),
                ));
            }
            let compiled = GlobBuilder::new(glob)
                .literal_separator(true)
                .backslash_escape(true)
                .build()
                .map_err(|e| self.invalid(&key, &e.to_string()))?;
            if glob.contains('/') {
                paths.add(compiled);
            } else {
                names.add(compiled);
            }
        }
        let build = |builder: GlobSetBuilder| {
            builder
                .build()
                .map_err(|e| self.invalid(key, &e.to_string()))
        };
        Ok((build(names)?, build(paths)?))
    }

    fn after_ack(&self, raw: RawAfterAck, roots: &[Root]) -> Result<AfterAck, ConfigError> {
        match (raw.action, raw.move_to) {
            (RawAction::Keep, None) => Ok(AfterAck::Keep),
            (RawAction::Delete, None) => Ok(AfterAck::Delete),
            (RawAction::Move, None) => Err(self.invalid(
                "after_ack.move_to",
                "action = \"move\" needs move_to, the directory to move files to",
            )),
            (RawAction::Move, Some(dir)) => {
                let dir = self.absolute("after_ack.move_to", dir)?;
                if let Some(root) = roots.iter().find(|r| dir.starts_with(&r.path)) {
                    return Err(self.invalid(
                        "after_ack.move_to",
                        &format!(
                            "{} is inside root {:?}; moved files would be found and sent again",
                            dir.display(),
                            root.name
                        ),
                    ));
                }
                Ok(AfterAck::Move(dir))
            }
            (action, Some(_)) => Err(self.invalid(
                "after_ack.move_to",
                &format!(
                    "move_to is only used with action = \"move\", not {:?}",
                    format!("{action:?}").to_lowercase()
                ),
            )),
        }
    }

    fn batch(&self, raw: RawBatch) -> Result<Batch, ConfigError> {
        if raw.max_files == 0 {
            return Err(self.invalid("batch.max_files", "must be at least 1"));
        }
        if raw.max_bytes == 0 {
            return Err(self.invalid("batch.max_bytes", "must be at least 1"));
        }
        Ok(Batch {
            max_files: raw.max_files,
            max_bytes: raw.max_bytes,
            linger: Duration::from_millis(raw.linger_ms),
        })
    }

    fn legacy(&self, raw: RawLegacy, state_dir: &Path) -> Result<Legacy, ConfigError> {
        let path = |key: &str, value: Option<PathBuf>, name: &str| {
            self.absolute(key, value.unwrap_or_else(|| state_dir.join(name)))
        };
        let halt_timeout_secs = raw
            .halt_timeout_mins
            .checked_mul(60)
            .ok_or_else(|| self.invalid("legacy.halt_timeout_mins", "is too large"))?;
        Ok(Legacy {
            due_backup: path("legacy.due_backup", raw.due_backup, "DUE_BACKUP")?,
            backup_done: path("legacy.backup_done", raw.backup_done, "BACKUP_DONE")?,
            halt_flag: path("legacy.halt_flag", raw.halt_flag, "HALT_FLAG")?,
            halt_timeout: self.positive_secs("legacy.halt_timeout_mins", halt_timeout_secs)?,
            halt_retry_max: self
                .positive_secs("legacy.halt_retry_max_secs", raw.halt_retry_max_secs)?,
            resend_backup_done: raw.resend_backup_done,
        })
    }

    fn absolute(&self, key: &str, path: PathBuf) -> Result<PathBuf, ConfigError> {
        if !path.is_absolute() {
            return Err(self.invalid(key, &format!("{} is not an absolute path", path.display())));
        }
        if path.components().any(|c| c == Component::ParentDir) {
            return Err(self.invalid(key, &format!("{} contains '..'", path.display())));
        }
        Ok(path)
    }

    fn positive_secs(&self, key: &str, secs: u64) -> Result<Duration, ConfigError> {
        if secs == 0 {
            return Err(self.invalid(key, "must be greater than 0"));
        }
        Ok(Duration::from_secs(secs))
    }

    fn invalid(&self, key: &str, reason: &str) -> ConfigError {
        ConfigError::Invalid {
            path: self.origin.to_owned(),
            key: key.to_owned(),
            reason: reason.to_owned(),
        }
    }
}

/// Checks a `host:port` endpoint (IPv6 addresses in brackets).
fn check_endpoint(endpoint: &str) -> Result<(), String> {
    let mut problem = String::new();
    match endpoint.rsplit_once(':') {
        None => problem.push_str("has no port"),
        Some((host, port)) => {
            let bare = host
                .strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .unwrap_or(host);
            if bare.is_empty() {
                problem.push_str("has no host");
            } else if bare.contains(['[', ']', '/', ' ']) || (bare == host && host.contains(':')) {
                problem.push_str("has a malformed host (write IPv6 addresses as [addr]:port)");
            } else if !matches!(port.parse::<u16>(), Ok(p) if p > 0) {
                let _ = write!(problem, "has an invalid port {port:?}");
            }
        }
    }
    if problem.is_empty() {
        Ok(())
    } else {
        Err(format!("{endpoint:?} {problem}; expected host:port"))
    }
}

#[cfg(test)]
mod tests;
