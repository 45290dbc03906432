//! The daemons' log set-up: `tracing` lines on stderr, filtered by a
//! configured filter or else `$FERRY_LOG` (default `info`), coloured only on
//! a terminal, and shaped for the systemd journal when stderr is one (no
//! timestamp of our own, a `<N>` syslog priority prefix so `journalctl -p
//! warning` works); the filter can be replaced while running (a reload);
//! and how an error is printed with its causes.

use std::io::{self, IsTerminal};

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Registry, reload};

/// The filter used when neither a configured filter nor `$FERRY_LOG` is.
pub const DEFAULT_FILTER: &str = "info";

/// Installs the global subscriber (once; later calls do nothing), filtered
/// by `$FERRY_LOG`.
pub fn init() {
    init_with(None);
}

/// Installs the global subscriber filtered by `configured` when given, by
/// `$FERRY_LOG` otherwise (default `info`); the handle replaces the filter
/// later. A second call installs nothing and returns a handle that does
/// nothing.
pub fn init_with(configured: Option<&str>) -> LogFilter {
    let (filter, handle) = reload::Layer::new(effective_filter(configured).1);
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(io::stderr)
        .with_ansi(io::stderr().is_terminal());
    let installed = if stderr_is_journal() {
        let format = tracing_subscriber::fmt::format().without_time();
        tracing_subscriber::registry()
            .with(filter)
            .with(fmt.event_format(Priority(format)))
            .try_init()
    } else {
        tracing_subscriber::registry()
            .with(filter)
            .with(fmt)
            .try_init()
    };
    LogFilter {
        handle: installed.is_ok().then_some(handle),
    }
}

/// Checks a filter's syntax (`tracing` directives), saying what is wrong.
pub fn check_filter(text: &str) -> Result<(), String> {
    EnvFilter::builder()
        .parse(text)
        .map(|_| ())
        .map_err(|e| format!("{text:?} is not a log filter: {e}"))
}

/// The filter in force for `configured`, as text and parsed: `configured`,
/// else `$FERRY_LOG` when it parses, else [`DEFAULT_FILTER`].
fn effective_filter(configured: Option<&str>) -> (String, EnvFilter) {
    let candidates = configured
        .map(str::to_owned)
        .into_iter()
        .chain(std::env::var("FERRY_LOG").ok());
    for text in candidates {
        if let Ok(filter) = EnvFilter::builder().parse(&text) {
            return (text, filter);
        }
    }
    (DEFAULT_FILTER.to_owned(), EnvFilter::new(DEFAULT_FILTER))
}

/// Replaces the log filter of the running process.
#[derive(Debug, Clone)]
pub struct LogFilter {
    handle: Option<reload::Handle<EnvFilter, Registry>>,
}

impl LogFilter {
    /// Puts the filter for `configured` in force (as [`init_with`] picks
    /// it) and returns it as text.
    pub fn set(&self, configured: Option<&str>) -> String {
        let (text, filter) = effective_filter(configured);
        if let Some(handle) = &self.handle {
            let _ = handle.reload(filter);
        }
        text
    }
}

/// Whether stderr is connected to the systemd journal: `$JOURNAL_STREAM`
/// names the device and inode of stderr's socket.
pub fn stderr_is_journal() -> bool {
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = value.to_str().and_then(|v| v.split_once(':')) else {
        return false;
    };
    // The magic link leads to stderr's own socket, whose stat we compare.
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    use std::os::unix::fs::MetadataExt;
    dev.parse::<u64>().ok() == Some(meta.dev()) && ino.parse::<u64>().ok() == Some(meta.ino())
}

/// The syslog priority the journal reads from a `<N>` line prefix.
pub fn priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

/// Wraps an event format with the journal's priority prefix.
#[derive(Debug)]
struct Priority<F>(F);

impl<S, N, F> FormatEvent<S, N> for Priority<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        write!(writer, "<{}>", priority(event.metadata().level()))?;
        self.0.format_event(ctx, writer, event)
    }
}

/// `error` and its causes, joined by `: `, each cause left out when the
/// text so far already says it. Many errors put their cause in their own
/// message (`cannot read {path}: {source}`) and also report it as their
/// source, so printing the whole chain would say it twice ("Input/output
/// error: Input/output error").
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(error) = cause {
        let part = error.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cause = error.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error that says its cause in its own message, as many do.
    #[derive(Debug)]
    struct Wrapped(std::io::Error);

    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "cannot read /x: {}", self.0)
        }
    }

    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn a_cause_already_in_the_message_is_said_once() {
        let io = std::io::Error::from_raw_os_error(5);
        let said = error_chain(&Wrapped(io));
        assert_eq!(said.matches("Input/output error").count(), 1, "{said}");
        assert!(
            said.starts_with("cannot read /x: Input/output error"),
            "{said}"
        );
    }

    #[test]
    fn levels_map_to_syslog_priorities() {
        assert_eq!(priority(&Level::ERROR), 3);
        assert_eq!(priority(&Level::WARN), 4);
        assert_eq!(priority(&Level::INFO), 6);
        assert_eq!(priority(&Level::DEBUG), 7);
        assert_eq!(priority(&Level::TRACE), 7);
    }

    #[derive(Clone, Default)]
    struct Buffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn journal_lines_start_with_their_priority_and_carry_no_time() {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .event_format(Priority(tracing_subscriber::fmt::format().without_time()))
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(station = "s1", "link lost");
            tracing::info!("batch acknowledged");
        });
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].starts_with("<4> WARN"), "{text}");
        assert!(lines[0].contains("station=\"s1\""), "{text}");
        assert!(lines[1].starts_with("<6> INFO"), "{text}");
    }
}
