//! Prometheus metrics, by hand: the text exposition format 0.0.4 (what
//! `GET /metrics` answers and the node_exporter textfile collector reads),
//! the atomically replaced textfile, and the `[metrics]` table both daemons
//! share in their configuration.
//!
//! Each daemon keeps its counters in a struct of atomics (with a [`Counts`]
//! for its errors by kind) and renders them here with [`Exposition`]; no
//! metrics library is needed for a few dozen lines of text.

use std::fmt::Write as _;
use std::future::Future;
use std::io::Write as _;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Deserialize;

use crate::protocol::ErrorCode;

/// The `Content-Type` of the exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The kind of a metric family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (restarts from zero when the process does).
    Counter,
    /// Goes up and down.
    Gauge,
}

/// Exposition text under construction: families, each with its `# HELP`
/// and `# TYPE` lines followed by its samples.
#[derive(Debug, Default)]
pub struct Exposition {
    text: String,
    family: String,
}

impl Exposition {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts the family `name` (whose samples follow).
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) -> &mut Self {
        debug_assert!(valid_name(name), "{name}");
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        };
        let _ = writeln!(self.text, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
        self.family = name.to_owned();
        self
    }

    /// A sample of the current family with `labels` (name, value) pairs.
    pub fn sample(&mut self, labels: &[(&str, &str)], value: impl Into<f64>) -> &mut Self {
        self.text.push_str(&self.family);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (name, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{name}=\"{}\"", escape_label(value));
            }
            self.text.push('}');
        }
        let value: f64 = value.into();
        let _ = writeln!(self.text, " {}", number(value));
        self
    }

    /// A family with one unlabelled sample.
    pub fn single(&mut self, name: &str, kind: Kind, help: &str, value: impl Into<f64>) {
        self.family(name, kind, help).sample(&[], value);
    }

    /// A counter from an integer (kept exact up to 2^53).
    pub fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.single(name, Kind::Counter, help, value as f64);
    }

    /// A gauge from an integer.
    pub fn gauge(&mut self, name: &str, help: &str, value: u64) {
        self.single(name, Kind::Gauge, help, value as f64);
    }

    /// The finished text.
    pub fn finish(self) -> String {
        self.text
    }
}

/// Adds `n` to `counter`.
pub fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// The values of a label that a [`Counts`] keeps one counter for.
pub trait Label: Copy + Eq + 'static {
    /// Every value, in the order they are exposed.
    const ALL: &'static [Self];
    /// The value as the label shows it.
    fn label(self) -> &'static str;
}

/// One counter per value of a [`Label`], such as errors by kind.
#[derive(Debug)]
pub struct Counts<K> {
    counts: Box<[AtomicU64]>,
    kind: PhantomData<K>,
}

impl<K: Label> Default for Counts<K> {
    fn default() -> Self {
        Self {
            counts: K::ALL.iter().map(|_| AtomicU64::new(0)).collect(),
            kind: PhantomData,
        }
    }
}

impl<K: Label> Counts<K> {
    /// Counts one of `key`.
    pub fn count(&self, key: K) {
        if let Some(counter) = self.counter(key) {
            add(counter, 1);
        }
    }

    /// The count of `key` so far.
    pub fn get(&self, key: K) -> u64 {
        self.counter(key)
            .map_or(0, |counter| counter.load(Ordering::Relaxed))
    }

    /// The counter family `name`, one sample per value labelled `label`.
    pub fn expose(&self, e: &mut Exposition, name: &str, help: &str, label: &str) {
        e.family(name, Kind::Counter, help);
        for &key in K::ALL {
            e.sample(&[(label, key.label())], self.get(key) as f64);
        }
    }

    fn counter(&self, key: K) -> Option<&AtomicU64> {
        let index = K::ALL.iter().position(|k| *k == key)?;
        self.counts.get(index)
    }
}

/// The errors and refusals the collector sends, as the `kind` label.
impl Label for ErrorCode {
    const ALL: &'static [Self] = &[
        ErrorCode::UnsupportedVersion,
        ErrorCode::Malformed,
        ErrorCode::TooLarge,
        ErrorCode::UnexpectedMessage,
        ErrorCode::IdentityMismatch,
        ErrorCode::PathRefused,
        ErrorCode::HashMismatch,
        ErrorCode::DiskFull,
        ErrorCode::Busy,
        ErrorCode::Internal,
        ErrorCode::Revoked,
    ];

    fn label(self) -> &'static str {
        match self {
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::Malformed => "malformed",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::UnexpectedMessage => "unexpected_message",
            ErrorCode::IdentityMismatch => "identity_mismatch",
            ErrorCode::PathRefused => "path_refused",
            ErrorCode::HashMismatch => "hash_mismatch",
            ErrorCode::DiskFull => "disk_full",
            ErrorCode::Busy => "busy",
            ErrorCode::Internal => "internal",
            ErrorCode::Revoked => "revoked",
        }
    }
}

/// A sample value as the format writes it.
fn number(value: f64) -> String {
    if value.is_nan() {
        "NaN".into()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        format!("{value}")
    }
}

/// Whether `name` is a valid metric (or label) name of the format.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn escape_help(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

fn escape_label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Why the textfile could not be written.
#[derive(Debug, thiserror::Error)]
#[error("metrics textfile {}: {source}", path.display())]
pub struct TextfileError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// Replaces `path` with `text` atomically: a hidden temporary file in the
/// same directory (not ending in `.prom`, so a collector never reads it
/// half-written), synced, then renamed over `path`.
pub fn write_textfile(path: &Path, text: &str) -> Result<(), TextfileError> {
    let err = |source| TextfileError {
        path: path.to_owned(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let written = std::fs::File::create(&tmp).and_then(|mut file| {
        file.write_all(text.as_bytes())?;
        file.sync_all()
    });
    if let Err(error) = written.and_then(|()| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(error));
    }
    Ok(())
}

/// Rewrites `path` with `render()`'s text now and every `interval` until
/// `shutdown` turns true, and once more then (so the file ends with the
/// final counts). Failures are logged, once per streak.
pub async fn keep_textfile<R, F>(
    path: PathBuf,
    interval: Duration,
    render: R,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) where
    R: Fn() -> F,
    F: Future<Output = String>,
{
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        let stop = tokio::select! {
            _ = ticks.tick() => false,
            _ = shutdown.wait_for(|stop| *stop) => true,
        };
        let text = render().await;
        let path = path.clone();
        let written = tokio::task::spawn_blocking(move || write_textfile(&path, &text)).await;
        match written {
            Ok(Ok(())) => failing = false,
            Ok(Err(error)) => {
                if !failing {
                    tracing::warn!(%error, "metrics textfile not written");
                }
                failing = true;
            }
            Err(_) => {}
        }
        if stop {
            return;
        }
    }
}

/// `[metrics]` as written in either daemon's configuration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    /// Address of an HTTP listener answering `GET /metrics`, e.g.
    /// "127.0.0.1:9477" (default: none).
    #[serde(default)]
    pub listen: Option<String>,
    /// File the node_exporter textfile collector reads, rewritten
    /// atomically (default: none).
    #[serde(default)]
    pub textfile: Option<PathBuf>,
    /// Seconds between rewrites of `textfile` (default 15).
    #[serde(default = "default_textfile_interval_secs")]
    pub textfile_interval_secs: u64,
}

impl Default for RawMetrics {
    fn default() -> Self {
        Self {
            listen: None,
            textfile: None,
            textfile_interval_secs: default_textfile_interval_secs(),
        }
    }
}

fn default_textfile_interval_secs() -> u64 {
    15
}

/// Where a daemon exposes its metrics; both ways are off by default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsSettings {
    /// HTTP listener for `GET /metrics`.
    pub listen: Option<SocketAddr>,
    /// The node_exporter textfile, as written (the daemon resolves or
    /// checks the path).
    pub textfile: Option<PathBuf>,
    /// How often the textfile is rewritten.
    pub textfile_interval: Duration,
}

impl Default for MetricsSettings {
    fn default() -> Self {
        Self {
            listen: None,
            textfile: None,
            textfile_interval: Duration::from_secs(default_textfile_interval_secs()),
        }
    }
}

impl RawMetrics {
    /// Checks the table; an error names the key (below `metrics.`) and the
    /// reason. An empty `listen` means no listener.
    pub fn validate(self) -> Result<MetricsSettings, (&'static str, String)> {
        let listen = match self.listen.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(text) => Some(text.parse::<SocketAddr>().map_err(|e| {
                (
                    "listen",
                    format!("{text:?} is not an address:port such as \"127.0.0.1:9477\" ({e})"),
                )
            })?),
        };
        let textfile = match self.textfile {
            Some(path) if path.as_os_str().is_empty() => None,
            Some(path) => {
                if path.file_name().is_none_or(|n| n == "." || n == "..") {
                    return Err(("textfile", format!("{} is not a file name", path.display())));
                }
                if path.extension().is_none_or(|e| e != "prom") {
                    return Err((
                        "textfile",
                        format!(
                            "{} must end in .prom (the textfile collector reads only those)",
                            path.display()
                        ),
                    ));
                }
                Some(path)
            }
            None => None,
        };
        if self.textfile_interval_secs == 0 {
            return Err(("textfile_interval_secs", "must be greater than 0".into()));
        }
        Ok(MetricsSettings {
            listen,
            textfile,
            textfile_interval: Duration::from_secs(self.textfile_interval_secs),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_render_with_help_type_and_escaped_labels() {
        let mut e = Exposition::new();
        e.counter("ferry_x_total", "Things\nthat \\ happened", 3);
        e.family("ferry_lag", Kind::Gauge, "Lag")
            .sample(&[("catalog", "primary")], 0.0)
            .sample(&[("catalog", "a\"b\\c\nd")], 1.5);
        let text = e.finish();
        assert_eq!(
            text,
            "# HELP ferry_x_total Things\\nthat \\\\ happened\n\
             # TYPE ferry_x_total counter\n\
             ferry_x_total 3\n\
             # HELP ferry_lag Lag\n\
             # TYPE ferry_lag gauge\n\
             ferry_lag{catalog=\"primary\"} 0\n\
             ferry_lag{catalog=\"a\\\"b\\\\c\\nd\"} 1.5\n"
        );
    }

    #[test]
    fn every_value_of_a_label_has_its_own_counter() {
        let counts = Counts::<ErrorCode>::default();
        counts.count(ErrorCode::DiskFull);
        counts.count(ErrorCode::DiskFull);
        counts.count(ErrorCode::Revoked);
        let mut e = Exposition::new();
        counts.expose(&mut e, "ferry_e_total", "E", "kind");
        let text = e.finish();
        assert!(
            text.contains("\nferry_e_total{kind=\"disk_full\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("\nferry_e_total{kind=\"revoked\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("\nferry_e_total{kind=\"busy\"} 0\n"),
            "{text}"
        );
        assert_eq!(text.lines().count(), 2 + ErrorCode::ALL.len());
        let mut labels: Vec<_> = ErrorCode::ALL.iter().map(|c| c.label()).collect();
        labels.dedup();
        assert_eq!(labels.len(), ErrorCode::ALL.len());
    }

    #[test]
    fn large_and_fractional_values_keep_their_meaning() {
        assert_eq!(number(0.0), "0");
        assert_eq!(number(1e18), "1000000000000000000");
        assert_eq!(number(0.25), "0.25");
        assert_eq!(number(f64::NAN), "NaN");
    }

    #[test]
    fn the_textfile_is_replaced_whole_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ferry.prom");
        write_textfile(&path, "a 1\n").unwrap();
        write_textfile(&path, "a 2\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "a 2\n");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("ferry.prom")]);
        let missing = dir.path().join("no/such/dir/ferry.prom");
        assert!(write_textfile(&missing, "a 1\n").is_err());
    }

    #[test]
    fn the_metrics_table_is_off_by_default_and_checked() {
        let off = RawMetrics::default().validate().unwrap();
        assert_eq!(off, MetricsSettings::default());
        assert_eq!(off.textfile_interval, Duration::from_secs(15));
        let raw = |listen: &str, textfile: &str, secs: u64| RawMetrics {
            listen: Some(listen.into()),
            textfile: Some(textfile.into()),
            textfile_interval_secs: secs,
        };
        let on = raw("127.0.0.1:9477", "/var/lib/x/ferry.prom", 5)
            .validate()
            .unwrap();
        assert_eq!(on.listen, Some("127.0.0.1:9477".parse().unwrap()));
        assert_eq!(on.textfile_interval, Duration::from_secs(5));
        assert_eq!(raw("", "", 1).validate().unwrap().listen, None);
        assert_eq!(raw("localhost", "", 1).validate().unwrap_err().0, "listen");
        assert_eq!(
            raw("", "/x/ferry.txt", 1).validate().unwrap_err().0,
            "textfile"
        );
        assert_eq!(
            raw("", "", 0).validate().unwrap_err().0,
            "textfile_interval_secs"
        );
    }
}
