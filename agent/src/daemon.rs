//! The agent daemon: a watcher task that turns finished files into ledger
//! entries, and a sender task that ships the due set to the collector in
//! batches, holding `HALT_FLAG` while it owns `DUE_BACKUP` or transfers.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use ferry_common::backoff::{self, Backoff};
use ferry_common::link::{ClientLink, ClientLinkConfig, LinkError};
use ferry_common::name;
use ferry_common::protocol::Outcome;
use ferry_common::readiness::Notifier;
use ferry_common::station::StationId;
use ferry_common::tls::{self, TlsMaterial};
use tokio::sync::{Notify, mpsc, oneshot};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::config::{AfterAck, Root, Settings};
use crate::due_list;
use crate::halt_flag::{self, HaltFlag, Held, Raise};
use crate::ledger::{Acked, AckedFile, DueFile, Failure, FileKey, Ledger, Observation, Observed};
use crate::metrics::{ErrorKind, Metrics, Source};
use crate::sender::{self, Flow, OutgoingFile};
use crate::status::{self, LinkState};
use crate::takeover;
use crate::warn_counted;
use crate::watch::{self as files, Change, Seen, Settler, Watches};

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Ledger(#[from] crate::ledger::LedgerError),
    #[error("station certificate {path}: {reason}")]
    Station { path: PathBuf, reason: String },
    #[error("cannot create {path}: {source}")]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Metrics(#[from] ferry_common::http::BindError),
}

/// The station id: from the config if given, else from the certificate;
/// both must agree.
pub fn station_id(settings: &Settings) -> Result<StationId, StartError> {
    let err = |reason: String| StartError::Station {
        path: settings.tls.cert.clone(),
        reason,
    };
    let pem = std::fs::read_to_string(&settings.tls.cert).map_err(|e| err(e.to_string()))?;
    let info = ferry_common::pki::inspect_pem(&pem).map_err(|e| err(e.to_string()))?;
    let from_cert = info
        .station
        .ok_or_else(|| err("is not a station certificate".into()))?;
    match &settings.station {
        Some(configured) if configured != &from_cert => Err(err(format!(
            "is for station {from_cert}, the config says {configured}"
        ))),
        _ => Ok(from_cert),
    }
}

type Shared = Arc<Mutex<Ledger>>;

/// "The due set changed": a flag that cannot be missed (the sender checks it
/// at every turn of its loop, whatever it was doing when the change came)
/// and a wake-up for when it is idle.
#[derive(Debug, Default)]
struct DueSignal {
    changed: std::sync::atomic::AtomicBool,
    wake: Notify,
}

impl DueSignal {
    fn mark(&self) {
        self.changed
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.wake.notify_one();
    }

    fn take(&self) -> bool {
        self.changed
            .swap(false, std::sync::atomic::Ordering::SeqCst)
    }
}

fn lock(ledger: &Shared) -> MutexGuard<'_, Ledger> {
    ledger.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs the agent until `shutdown` turns true. `readiness` hears `READY=1`
/// once the ledger is open, the metrics listener bound and the roots
/// watched, and a status line now and then.
pub async fn run(
    settings: Settings,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    readiness: Notifier,
) -> Result<(), StartError> {
    let station = station_id(&settings)?;
    std::fs::create_dir_all(&settings.state_dir).map_err(|source| StartError::StateDir {
        path: settings.state_dir.clone(),
        source,
    })?;
    let material =
        TlsMaterial::from_files(&settings.tls.ca, &settings.tls.cert, &settings.tls.key)?;
    let link_config = ClientLinkConfig {
        station: station.clone(),
        endpoints: settings.collectors.clone(),
        tls: tls::client_config(&material)?,
        runtime_dir: settings.state_dir.join("run"),
        connect_timeout: Duration::from_secs(10),
        heartbeat: Duration::from_secs(5),
        software: format!("ferry-agent {}", env!("CARGO_PKG_VERSION")),
    };
    let ledger = Arc::new(Mutex::new(Ledger::open(&settings.ledger)?));
    let metrics_listener = match settings.metrics.listen {
        Some(addr) => Some(ferry_common::http::bind(addr).await?),
        None => None,
    };
    let metrics = Metrics::new();
    let span = info_span!("agent", %station);
    import_legacy(&settings, &ledger, &metrics);
    finish_acked(&settings, &ledger, &metrics, true);
    let due_changed = Arc::new(DueSignal::default());
    let settings = Arc::new(settings);
    let source = Source::new(
        metrics.clone(),
        settings.ledger.clone(),
        HaltFlag::new(&settings.legacy.halt_flag, settings.legacy.halt_timeout),
    );
    let mut tasks = Vec::new();
    if let Some(listener) = metrics_listener {
        let addr = listener.local_addr().ok();
        info!(parent: &span, metrics = ?addr, "serving metrics");
        let source = source.clone();
        tasks.push(tokio::spawn(ferry_common::http::serve_metrics(
            listener,
            move || {
                let source = source.clone();
                async move { source.render().await }
            },
            shutdown.clone(),
        )));
    }
    if let Some(path) = settings.metrics.textfile.clone() {
        let source = source.clone();
        tasks.push(tokio::spawn(
            ferry_common::metrics::keep_textfile(
                path,
                settings.metrics.textfile_interval,
                move || {
                    let source = source.clone();
                    async move { source.render().await }
                },
                shutdown.clone(),
            )
            .instrument(span.clone()),
        ));
    }
    let (watching, watching_rx) = oneshot::channel();
    tasks.push(tokio::spawn(
        watch_roots(
            settings.clone(),
            ledger.clone(),
            due_changed.clone(),
            metrics.clone(),
            watching,
            shutdown.clone(),
        )
        .instrument(span.clone()),
    ));
    if let Some(every) = settings.content_recheck {
        let due_changed = due_changed.clone();
        tasks.push(tokio::spawn(
            crate::recheck::run(
                settings.clone(),
                ledger.clone(),
                metrics.clone(),
                every,
                move || due_changed.mark(),
                shutdown.clone(),
            )
            .instrument(span.clone()),
        ));
    }
    tasks.push(tokio::spawn(
        send_due(
            settings.clone(),
            ledger.clone(),
            due_changed,
            link_config,
            metrics.clone(),
            shutdown.clone(),
        )
        .instrument(span.clone()),
    ));
    // Ready once the roots are watched (the first full scan follows).
    tokio::select! {
        _ = watching_rx => {
            info!(parent: &span, roots = settings.roots.len(), "agent running");
            readiness.ready(&format!(
                "watching {} root(s), sending to {}",
                settings.roots.len(),
                settings.collectors.join(", ")
            ));
        }
        _ = shutdown.wait_for(|stop| *stop) => {}
    }
    tasks.push(tokio::spawn(readiness.keep_alive(
        Duration::from_secs(10),
        {
            let metrics = metrics.clone();
            move || metrics.summary()
        },
        shutdown.clone(),
    )));
    let _ = shutdown.wait_for(|stop| *stop).await;
    for task in tasks {
        let _ = task.await;
    }
    info!(parent: &span, "agent stopped");
    Ok(())
}

/// Takes over from indexerD once, on the first start (see [`takeover`]).
fn import_legacy(settings: &Settings, ledger: &Shared, metrics: &Metrics) {
    let mut ledger = lock(ledger);
    if matches!(ledger.marker("legacy-import"), Ok(Some(_))) {
        return;
    }
    let now = SystemTime::now();
    match takeover::take_over(settings, &mut ledger, now) {
        Ok(Some(report)) => {
            takeover::write_report(&takeover::report_path(&settings.state_dir), &report);
        }
        Ok(None) => {}
        Err(error @ takeover::TakeoverError::Ledger(_)) => {
            warn_counted!(metrics, ErrorKind::Ledger, %error, "importing indexerD's lists failed; will retry at next start");
            return;
        }
        Err(error) => {
            warn_counted!(metrics, ErrorKind::LegacyFiles, %error, "cannot import indexerD's lists; will retry at next start");
            return;
        }
    }
    if let Err(error) = ledger.set_marker("legacy-import", now) {
        warn_counted!(metrics, ErrorKind::Ledger, %error, "take-over not marked as done; it runs again at next start");
    }
}

fn observation(seen: &Seen) -> Observation {
    Observation {
        root: seen.root.clone(),
        rel_path: seen.rel_path.clone(),
        identity: seen.identity,
        written: seen.written,
    }
}

fn root_of<'a>(roots: &'a [Root], path: &Path) -> Option<&'a Root> {
    roots.iter().find(|r| path.starts_with(&r.path))
}

/// Enters finished files into the ledger. With `min_age_secs`, content the
/// ledger does not know yet waits in the settler until it has been seen
/// unchanged that long (counted from now or from when it was first seen
/// so, never from its mtime).
fn enter(
    settings: &Settings,
    ledger: &Shared,
    ready: Vec<Seen>,
    settler: &mut Settler,
    due_changed: &DueSignal,
    metrics: &Metrics,
) {
    let ready: Vec<Seen> = ready
        .into_iter()
        .filter(|s| s.identity.size >= settings.min_size)
        .collect();
    if ready.is_empty() {
        return;
    }
    if settings.min_age.is_zero() {
        for seen in &ready {
            settler.forget(&seen.abs_path);
        }
        return record(ledger, &ready, due_changed, metrics);
    }
    let now = SystemTime::now();
    let observations: Vec<Observation> = ready.iter().map(observation).collect();
    let known = match tokio::task::block_in_place(|| lock(ledger).knows(&observations)) {
        Ok(known) => known,
        Err(error) => {
            warn_counted!(metrics, ErrorKind::Ledger, %error, "ledger unreadable; files wait for min_age_secs");
            vec![false; observations.len()]
        }
    };
    let (mut go, mut held) = (Vec::new(), Vec::new());
    for ((seen, known), o) in ready.into_iter().zip(known).zip(observations) {
        if known {
            settler.forget(&seen.abs_path);
            go.push(seen);
        } else {
            settler.hold(seen, now);
            held.push(o);
        }
    }
    // A held file is still there: the sweep must not forget its row.
    if !held.is_empty()
        && let Err(error) = tokio::task::block_in_place(|| lock(ledger).still_there(&held, now))
    {
        metrics.error(ErrorKind::Ledger);
        metrics.state_disk.missed(&error);
    }
    record(ledger, &go, due_changed, metrics);
}

/// Records files that may go (finished, old enough) in the ledger; wakes
/// the sender when the due set grew.
fn record(ledger: &Shared, ready: &[Seen], due_changed: &DueSignal, metrics: &Metrics) {
    if ready.is_empty() {
        return;
    }
    let now = SystemTime::now();
    let observations: Vec<Observation> = ready.iter().map(observation).collect();
    let result = tokio::task::block_in_place(|| lock(ledger).observe_many(&observations, now));
    match result {
        Ok(observed) => {
            if observed.iter().any(|o| !matches!(o, Observed::Unchanged)) {
                due_changed.mark();
            }
        }
        Err(error) => {
            metrics.error(ErrorKind::Ledger);
            metrics.state_disk.missed(&error);
        }
    }
}

/// A full scan of every root (or only the named ones), entered into the
/// ledger a chunk at a time as the walk goes: the tree is never held in
/// memory whole.
fn rescan(
    settings: &Settings,
    ledger: &Shared,
    only: Option<&[String]>,
    settler: &mut Settler,
    due_changed: &DueSignal,
    metrics: &Metrics,
) {
    for root in &settings.roots {
        if only.is_some_and(|names| !names.contains(&root.name)) {
            continue;
        }
        let started = SystemTime::now();
        let scanned = tokio::task::block_in_place(|| {
            files::scan_chunks(root, SCAN_CHUNK, |chunk| {
                enter_scanned(settings, ledger, chunk, settler, due_changed, metrics);
            })
        });
        if let Err(error) = scanned {
            warn_counted!(metrics, ErrorKind::Scan, root = %root.name, %error, "root not scanned");
            continue;
        }
        match tokio::task::block_in_place(|| lock(ledger).sweep(&root.name, started)) {
            Ok(vanished) => {
                for v in vanished {
                    warn!(root = %v.root, path = %name::encode(v.rel_path.as_os_str().as_bytes()), "file vanished before it was backed up");
                }
            }
            Err(error) => {
                metrics.error(ErrorKind::Ledger);
                metrics.state_disk.missed(&error);
            }
        }
    }
}

/// Files a scan enters into the ledger per transaction.
const SCAN_CHUNK: usize = 1000;

/// One chunk of a scan: settled files are entered, young ones wait in the
/// settler (or, past [`files::SCAN_WAITING_MAX`], for a later scan).
fn enter_scanned(
    settings: &Settings,
    ledger: &Shared,
    seen: Vec<Seen>,
    settler: &mut Settler,
    due_changed: &DueSignal,
    metrics: &Metrics,
) {
    let now = SystemTime::now();
    let (settled, young): (Vec<Seen>, Vec<Seen>) = seen
        .into_iter()
        .partition(|s| now.duration_since(s.mtime).unwrap_or_default() >= settings.settle);
    // Files not entered now (still settling, too small, or held for
    // min_age by `enter`) are still there: the sweep after the scan must
    // not take them for vanished (so they are marked seen at a time not
    // before the scan started).
    let waiting: Vec<Observation> = young
        .iter()
        .chain(
            settled
                .iter()
                .filter(|s| s.identity.size < settings.min_size),
        )
        .map(observation)
        .collect();
    if !waiting.is_empty()
        && let Err(error) = lock(ledger).still_there(&waiting, SystemTime::now())
    {
        metrics.error(ErrorKind::Ledger);
        metrics.state_disk.missed(&error);
    }
    for s in young {
        if settler.len() < files::SCAN_WAITING_MAX {
            settler.note(s, now);
        } else {
            settler.defer_to_rescan(now + settings.settle + Duration::from_secs(1));
        }
    }
    enter(settings, ledger, settled, settler, due_changed, metrics);
}

async fn watch_roots(
    settings: Arc<Settings>,
    ledger: Shared,
    due_changed: Arc<DueSignal>,
    metrics: Arc<Metrics>,
    watching: oneshot::Sender<()>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let (tx, mut events) = mpsc::unbounded_channel();
    let mut watches = Watches::start(&settings.roots, tx);
    let _ = watching.send(());
    let mut settler = Settler::default();
    let metrics = &*metrics;
    let state_path = status::watch_state_path(&settings.state_dir);
    let mut published = None;
    publish(
        &settings,
        &watches,
        &settler,
        metrics,
        &state_path,
        &mut published,
    );
    rescan(
        &settings,
        &ledger,
        None,
        &mut settler,
        &due_changed,
        metrics,
    );
    let settle_tick =
        (settings.settle / 2).clamp(Duration::from_millis(100), Duration::from_secs(5));
    let mut settle = tokio::time::interval(settle_tick);
    let mut full = tokio::time::interval(settings.rescan_interval);
    full.tick().await;
    // Poll-mode roots (configured, or fallen back from inotify) are rescanned
    // at their interval; the settle rule finds their finished files.
    let mut polled = watches.polled(&settings.roots);
    let poll_every = settings
        .roots
        .iter()
        .filter_map(|r| r.poll)
        .min()
        .unwrap_or(Duration::from_secs(30));
    let mut poll = tokio::time::interval(poll_every);
    poll.tick().await;
    // Without inotify there is no watcher, and no event ever comes: the
    // closed channel must not end the loop, the polls carry on.
    let mut watching = true;
    // A rescan for events that were lost or a directory that appeared runs
    // at once and once more a moment later: notify watches a new directory
    // only after it has passed on the directory's event, so a file renamed
    // into it in between is in neither the first scan nor any event.
    let mut follow_up: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            change = events.recv(), if watching => match change {
                Some(change) => {
                    // Each such event moves the follow-up on: a later one's
                    // own scan covers the directories before it.
                    if change == Change::Rescan {
                        follow_up = Some(tokio::time::Instant::now() + RESCAN_FOLLOW_UP);
                    }
                    handle(&settings, &ledger, change, &mut settler, &due_changed, metrics);
                }
                None => watching = false,
            },
            () = sleep_until_some(follow_up) => {
                follow_up = None;
                rescan(&settings, &ledger, None, &mut settler, &due_changed, metrics);
            }
            _ = settle.tick() => {
                // What could not be recorded while the state disk was
                // full is found again once it has room.
                if settler.rescan_due(SystemTime::now()) {
                    debug!("rescanning for young files a scan left out");
                    rescan(&settings, &ledger, None, &mut settler, &due_changed, metrics);
                }
                if metrics.state_disk.rescan_now() {
                    info!("rescanning for what could not be recorded while the state was unwritable");
                    rescan(&settings, &ledger, None, &mut settler, &due_changed, metrics);
                }
                if !settler.is_empty() {
                    let ready = tokio::task::block_in_place(|| {
                        settler.ripe(&settings.roots, settings.settle, settings.min_age, SystemTime::now())
                    });
                    let ready: Vec<Seen> = ready.into_iter().filter(|s| s.identity.size >= settings.min_size).collect();
                    record(&ledger, &ready, &due_changed, metrics);
                }
                publish(&settings, &watches, &settler, metrics, &state_path, &mut published);
            }
            // A missing root may have appeared: watch it, and rescan it
            // for what arrived before the watch (and once more after).
            () = watches.ancestor_changed(MISSING_ROOT_RECHECK), if watches.any_missing() => {
                let appeared = watches.appeared(&settings.roots);
                if !appeared.is_empty() {
                    polled = watches.polled(&settings.roots);
                    rescan(&settings, &ledger, Some(&appeared), &mut settler, &due_changed, metrics);
                    follow_up = Some(tokio::time::Instant::now() + RESCAN_FOLLOW_UP);
                    publish(&settings, &watches, &settler, metrics, &state_path, &mut published);
                }
            }
            _ = full.tick() => rescan(&settings, &ledger, None, &mut settler, &due_changed, metrics),
            _ = poll.tick(), if !polled.is_empty() => rescan(&settings, &ledger, Some(&polled), &mut settler, &due_changed, metrics),
            _ = shutdown.wait_for(|stop| *stop) => break,
        }
    }
}

/// How long after a rescan for a lost event or a new directory the
/// follow-up rescan runs (see `watch_roots`).
const RESCAN_FOLLOW_UP: Duration = Duration::from_secs(1);

/// How often missing roots are looked at besides their ancestor's events
/// (in case a watch on an ancestor was lost: the directory removed and made
/// again).
const MISSING_ROOT_RECHECK: Duration = Duration::from_secs(30);

/// Writes the watcher's state for `status` and the metrics (held files,
/// how each root is followed) when it changed since `published`.
fn publish(
    settings: &Settings,
    watches: &Watches,
    settler: &Settler,
    metrics: &Metrics,
    path: &Path,
    published: &mut Option<status::WatchState>,
) {
    let state = status::WatchState {
        min_age_secs: settings.min_age.as_secs(),
        held: settler.held(settings.settle, settings.min_age, SystemTime::now()),
        roots: watches.states(&settings.roots),
    };
    if published.as_ref() != Some(&state) {
        let missing = state
            .roots
            .iter()
            .filter(|(_, _, watch)| *watch == files::RootWatch::Missing)
            .count();
        let store = |gauge: &std::sync::atomic::AtomicU64, n: usize| {
            gauge.store(n as u64, std::sync::atomic::Ordering::Relaxed)
        };
        store(&metrics.held_files, state.held.files);
        store(&metrics.missing_roots, missing);
        status::write_watch(path, &state);
        *published = Some(state);
    }
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until_some(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

fn handle(
    settings: &Settings,
    ledger: &Shared,
    change: Change,
    settler: &mut Settler,
    due_changed: &DueSignal,
    metrics: &Metrics,
) {
    match change {
        Change::Rescan => {
            info!("event queue overflowed or a directory appeared; rescanning");
            rescan(settings, ledger, None, settler, due_changed, metrics);
        }
        Change::Finished(path) => {
            let Some(root) = root_of(&settings.roots, &path) else {
                return;
            };
            match files::stat(root, &path) {
                Some(mut seen) => {
                    seen.written = true;
                    enter(settings, ledger, vec![seen], settler, due_changed, metrics);
                }
                None if path.is_dir() => rescan(
                    settings,
                    ledger,
                    Some(std::slice::from_ref(&root.name)),
                    settler,
                    due_changed,
                    metrics,
                ),
                None => {}
            }
        }
        Change::Touched(path) => {
            let Some(root) = root_of(&settings.roots, &path) else {
                return;
            };
            if let Some(mut seen) = files::stat(root, &path) {
                seen.written = true;
                settler.note(seen, SystemTime::now());
            }
        }
        Change::Gone(path) => {
            settler.forget(&path);
            let Some(root) = root_of(&settings.roots, &path) else {
                return;
            };
            let Ok(rel) = path.strip_prefix(&root.path) else {
                return;
            };
            match tokio::task::block_in_place(|| lock(ledger).vanished(&root.name, rel)) {
                Ok(Some(v)) => {
                    warn!(root = %v.root, path = %name::encode(v.rel_path.as_os_str().as_bytes()), "file vanished before it was backed up");
                    due_changed.mark();
                }
                Ok(None) => {}
                Err(error) => {
                    metrics.error(ErrorKind::Ledger);
                    metrics.state_disk.missed(&error);
                }
            }
        }
    }
}

/// Delay before a failed file is offered again: doubling from 5 s to 1 h.
/// (A file refused for good is not offered again until it changes.)
fn retry_after(attempts: u32) -> Duration {
    backoff::doubled(Duration::from_secs(5), Duration::from_secs(3600), attempts)
}

/// Longest `DUE_BACKUP` lags the due set while files are sent.
const DUE_LIST_EVERY: Duration = Duration::from_secs(1);

/// When `DUE_BACKUP` must be rewritten. The holder of `HALT_FLAG` owns the
/// list, so it needs to be exact only when the flag is lowered; while
/// batches flow it follows the due set at most [`DUE_LIST_EVERY`] late.
/// Rewriting it as soon as files arrive would put a write and two fsyncs
/// before every burst's first offer (and rewriting it after every batch
/// cost a tenth of the agent's CPU).
#[derive(Debug)]
struct DueList {
    /// Since when the list has not matched the due set; `None`: it matches.
    stale_since: Option<std::time::Instant>,
}

impl DueList {
    /// Not known to match (at start).
    fn stale() -> Self {
        Self {
            stale_since: Some(std::time::Instant::now()),
        }
    }

    /// The due set changed.
    fn changed(&mut self) {
        self.stale_since.get_or_insert_with(std::time::Instant::now);
    }

    fn is_exact(&self) -> bool {
        self.stale_since.is_none()
    }

    /// Whether to rewrite the list now: it is stale, and the flag is about
    /// to be lowered (`lowering`) or the list has lagged long enough.
    fn write_now(&self, lowering: bool) -> bool {
        self.stale_since
            .is_some_and(|since| lowering || since.elapsed() >= DUE_LIST_EVERY)
    }

    fn written(&mut self) {
        self.stale_since = None;
    }
}

async fn send_due(
    settings: Arc<Settings>,
    ledger: Shared,
    due_changed: Arc<DueSignal>,
    link_config: ClientLinkConfig,
    metrics: Arc<Metrics>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let flag = HaltFlag::new(&settings.legacy.halt_flag, settings.legacy.halt_timeout);
    let roots = settings.root_dirs();
    let state_path = status::state_path(&settings.state_dir);
    let mut held: Option<Held> = None;
    let mut link: Option<ClientLink> = None;
    let mut flow = Flow::default();
    let mut in_flight: Option<Pending> = None;
    let mut settling = Settling {
        settings: settings.clone(),
        ledger: ledger.clone(),
        metrics: metrics.clone(),
        queued: None,
        running: None,
        running_ids: Vec::new(),
        unrecorded: std::collections::VecDeque::new(),
    };
    let context = Context {
        ledger: &ledger,
        state_path: &state_path,
        metrics: &metrics,
    };
    let mut batch_no = 0u64;
    let mut dialer = Dialer {
        config: link_config,
        backoff: Backoff::new(Duration::from_millis(500), Duration::from_secs(60)),
        next: tokio::time::Instant::now(),
        revoked_logged: false,
    };
    // Whatever the list on disk holds, it is checked against the ledger.
    let mut due_list = DueList::stale();
    let mut busy_logged = false;
    // While the agent's state cannot be written (a full disk), nothing is
    // offered: what must be recorded is retried at these intervals.
    let mut state_retry = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
    let mut state_next = tokio::time::Instant::now();
    loop {
        if *shutdown.borrow() {
            break;
        }
        if due_changed.take() {
            due_list.changed();
        }
        if metrics.state_disk.is_failing() || settling.has_unrecorded() {
            // The batch on the wire is seen through; its ack waits in
            // memory if it cannot be recorded.
            if let Some(previous) = in_flight.take() {
                finish_pending(previous, &mut link, &mut flow, &context, &mut settling).await;
                continue;
            }
            settling.finish(&state_path).await;
            if tokio::time::Instant::now() < state_next {
                tokio::select! {
                    () = tokio::time::sleep_until(state_next) => {}
                    _ = shutdown.wait_for(|stop| *stop) => break,
                }
                continue;
            }
            if record_again(&settings, &ledger, &metrics, &mut settling, &state_path) {
                metrics.state_disk.recovered();
                state_retry.reset();
                due_list.changed();
            } else {
                state_next = tokio::time::Instant::now() + state_retry.next_delay();
            }
            continue;
        }
        let now = SystemTime::now();
        // A file is never in two batches at once: one still on the wire, or
        // whose ack is not yet recorded, waits (it is due again when it
        // changed meanwhile).
        let busy = busy_ids(in_flight.as_ref(), &settling);
        let due = match tokio::task::block_in_place(|| {
            lock(&ledger).due(settings.batch.max_files, now)
        }) {
            Ok(mut due) => {
                due.retain(|d| !busy.contains(&d.key.id));
                due
            }
            Err(error) => {
                warn_counted!(metrics, ErrorKind::Ledger, %error, "ledger unreadable");
                Vec::new()
            }
        };
        // Nothing more to start: see the batch in flight through first.
        if due.is_empty()
            && let Some(previous) = in_flight.take()
        {
            finish_pending(previous, &mut link, &mut flow, &context, &mut settling).await;
            continue;
        }
        // Before the flag can be lowered (nothing due, or no collector),
        // every ack received is in the ledger, and so in DUE_BACKUP.
        if (due.is_empty() || link.is_none()) && settling.finish(&state_path).await {
            due_list.changed();
            continue;
        }
        if due.is_empty() && due_list.is_exact() {
            if let Some(h) = held.take() {
                let _ = h.lower();
            }
            // A session that ended while idle (the collector restarted or
            // went away) shows in the status and metrics now, not with the
            // next file, and is dialled again below.
            if let Some(reason) = link.as_ref().and_then(ClientLink::ended) {
                warn!(%reason, "session with the collector ended while idle; reconnecting");
                session_lost(reason, &context);
                link = None;
            }
            // Connected while idle too: a wrong certificate or endpoint
            // shows at start rather than with the first file, and the
            // first files after a quiet spell do not wait for a handshake.
            if link.is_none() && dialer.is_due() {
                link = dialer.connect(&state_path, &metrics).await;
                if link.is_some() {
                    flow = Flow::default();
                }
                continue;
            }
            let wake = if link.is_none() {
                dialer
                    .next
                    .min(tokio::time::Instant::now() + Duration::from_secs(1))
            } else {
                tokio::time::Instant::now() + Duration::from_secs(1)
            };
            tokio::select! {
                () = due_changed.wake.notified() => {}
                () = tokio::time::sleep_until(wake) => {}
                _ = shutdown.wait_for(|stop| *stop) => break,
            }
            continue;
        }
        // Own DUE_BACKUP (and the transfer) by holding HALT_FLAG.
        if held.is_none() {
            match tokio::task::block_in_place(|| flag.raise("ferry-agent backup", now)) {
                Ok(Raise::Raised(h)) | Ok(Raise::TookOver { held: h, .. }) => {
                    held = Some(h);
                    busy_logged = false;
                }
                Ok(Raise::Busy(holder)) => {
                    if !busy_logged {
                        info!(%holder, "HALT_FLAG held by someone else; waiting");
                        busy_logged = true;
                    }
                    status::write(
                        &state_path,
                        &LinkState {
                            halted_by: Some(holder.to_string()),
                            ..status::read(&state_path)
                        },
                    );
                    let wait = halt_flag::retry_delay(settings.legacy.halt_retry_max);
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        _ = shutdown.wait_for(|stop| *stop) => break,
                    }
                    continue;
                }
                Err(error) => {
                    warn_counted!(metrics, ErrorKind::HaltFlag, %error, "cannot raise HALT_FLAG");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(5)) => {}
                        _ = shutdown.wait_for(|stop| *stop) => break,
                    }
                    continue;
                }
            }
        }
        if let Some(h) = &held {
            let _ = h.refresh(now);
        }
        // HALT_FLAG is lowered below when nothing is due or the collector
        // is away; DUE_BACKUP is exact before that, and lags the due set by
        // at most a second while batches flow.
        if due_list.write_now(due.is_empty() || link.is_none()) {
            write_due_list(&settings, &ledger, &roots, &metrics);
            due_list.written();
        }
        if due.is_empty() {
            continue;
        }
        if link.is_none() {
            // Not owning anything while the collector is away; keep the
            // loop turning so DUE_BACKUP follows the due set meanwhile.
            if let Some(h) = held.take() {
                let _ = h.lower();
            }
            let mut state = status::read(&state_path);
            state.halted_by = None;
            state.connected = false;
            status::write(&state_path, &state);
            if !dialer.is_due() {
                tokio::select! {
                    () = tokio::time::sleep_until(dialer.next) => {}
                    () = due_changed.wake.notified() => {}
                    _ = shutdown.wait_for(|stop| *stop) => break,
                }
                continue;
            }
            link = dialer.connect(&state_path, &metrics).await;
            if link.is_some() {
                flow = Flow::default();
            }
            continue;
        }
        // Linger for a fuller batch, until `linger` after its first file
        // became due (the time spent above on HALT_FLAG and DUE_BACKUP
        // counts: a batch is not held back longer for it). A batch already
        // full, by count or by bytes, goes at once.
        let first = due.iter().map(|d| d.due_since).min().unwrap_or(now);
        let waited = now.duration_since(first).unwrap_or_default();
        let due_bytes: u64 = due.iter().map(|d| d.identity.size).sum();
        let full = due.len() >= settings.batch.max_files || due_bytes >= settings.batch.max_bytes;
        if !full && waited < settings.batch.linger {
            // Waiting for the batch in flight is lingering enough.
            if let Some(previous) = in_flight.take() {
                finish_pending(previous, &mut link, &mut flow, &context, &mut settling).await;
                if settling.finish(&state_path).await {
                    due_list.changed();
                }
                continue;
            }
            tokio::select! {
                () = tokio::time::sleep(settings.batch.linger - waited) => {}
                _ = shutdown.wait_for(|stop| *stop) => break,
            }
        }
        let busy = busy_ids(in_flight.as_ref(), &settling);
        let due = match tokio::task::block_in_place(|| {
            lock(&ledger).due(settings.batch.max_files, SystemTime::now())
        }) {
            Ok(mut due) => {
                due.retain(|d| !busy.contains(&d.key.id));
                due
            }
            Err(_) => continue,
        };
        let mut bytes = 0u64;
        let mut batch: Vec<DueFile> = due
            .into_iter()
            .enumerate()
            .take_while(|(i, d)| {
                bytes += d.identity.size;
                *i == 0 || bytes <= settings.batch.max_bytes
            })
            .map(|(_, d)| d)
            .collect();
        if batch.is_empty() {
            continue;
        }
        let Some(current) = link.as_mut() else {
            continue;
        };
        let mut keys: Vec<_> = batch.iter().map(|d| d.key).collect();
        // Not offered unless recorded as on the wire: an ack that could
        // not be recorded would have them offered again and again.
        if let Err(error) = tokio::task::block_in_place(|| lock(&ledger).mark_sending(&keys)) {
            metrics.error(ErrorKind::Ledger);
            metrics.state_disk.failed(&error);
            continue;
        }
        // The ledger is done with for this batch: the last ack received is
        // recorded beside its streaming.
        if settling.start(&state_path).await {
            due_list.changed();
        }
        let mut files: Vec<OutgoingFile> = batch
            .iter()
            .map(|d| OutgoingFile {
                root: d.root.clone(),
                rel_path: d.rel_path.as_os_str().as_bytes().to_vec(),
                abs_path: roots
                    .get(&d.root)
                    .map(|r| r.join(&d.rel_path))
                    .unwrap_or_default(),
                size: d.identity.size,
                mtime_ns: d.identity.mtime_ns,
                sha256: None,
            })
            .collect();
        // An earlier offer of these may have been stored with its ack lost:
        // offering the hash lets the collector say so instead of asking for
        // the whole file again. A file seen written (or changed) after its
        // backup is compared with the acknowledged content: equal content
        // is not sent again.
        let mut unchanged = Vec::new();
        for (file, due) in files.iter_mut().zip(&batch) {
            if due.offered || due.compare_with.is_some() {
                file.sha256 = tokio::task::block_in_place(|| sender::hash_unchanged(file));
                if due.compare_with.is_some() && file.sha256 == due.compare_with {
                    unchanged.push(due.key);
                }
            }
        }
        if !unchanged.is_empty() {
            if let Err(error) =
                tokio::task::block_in_place(|| lock(&ledger).mark_unchanged(&unchanged))
            {
                metrics.error(ErrorKind::Ledger);
                metrics.state_disk.failed(&error);
                batch_failed(&keys, &context);
                continue;
            }
            debug!(
                files = unchanged.len(),
                "written again with the acknowledged content: not sent"
            );
            due_list.changed();
            let keep: Vec<bool> = batch.iter().map(|d| !unchanged.contains(&d.key)).collect();
            let mut flags = keep.iter();
            batch.retain(|_| flags.next().copied().unwrap_or(true));
            let mut flags = keep.iter();
            files.retain(|_| flags.next().copied().unwrap_or(true));
            keys.retain(|k| !unchanged.contains(k));
            if batch.is_empty() {
                continue;
            }
        }
        batch_no += 1;
        let span = info_span!("batch", batch = batch_no, files = files.len());
        let started = std::time::Instant::now();
        let result = sender::start_batch(current, &mut flow, batch_no, &files)
            .instrument(span.clone())
            .await;
        match result {
            Ok(sent) => {
                // This batch is on the wire; while the collector places it,
                // see the one before through, then go on to the next.
                let previous = in_flight.replace(Pending {
                    batch,
                    keys,
                    sent,
                    span,
                    started,
                });
                if let Some(previous) = previous {
                    let ok =
                        finish_pending(previous, &mut link, &mut flow, &context, &mut settling)
                            .await;
                    if !ok && let Some(lost) = in_flight.take() {
                        batch_failed(&lost.keys, &context);
                    }
                }
                dialer.backoff.reset();
            }
            Err(error) => {
                batch_failed(&keys, &context);
                link_failed(&error, &span, &context);
                if let Some(previous) = in_flight.take() {
                    batch_failed(&previous.keys, &context);
                }
                link = None;
            }
        }
    }
    // A batch still in flight: its ack is a few fsyncs away.
    if let Some(previous) = in_flight.take() {
        finish_pending(previous, &mut link, &mut flow, &context, &mut settling).await;
    }
    if settling.finish(&state_path).await {
        due_list.changed();
    }
    if let Some(h) = held.take() {
        if due_list.write_now(true) {
            write_due_list(&settings, &ledger, &roots, &metrics);
        }
        let _ = h.lower();
    }
    if let Some(link) = link.take() {
        link.close().await;
    }
    metrics.set_connected(false);
    let mut state = status::read(&state_path);
    state.connected = false;
    status::write(&state_path, &state);
}

/// Row ids of the files in a batch on the wire or whose ack is not yet
/// recorded.
fn busy_ids(in_flight: Option<&Pending>, settling: &Settling) -> std::collections::HashSet<i64> {
    in_flight
        .into_iter()
        .flat_map(|p| &p.keys)
        .chain(
            settling
                .queued
                .iter()
                .flat_map(|s| s.batch.iter().map(|d| &d.key)),
        )
        .map(|k| k.id)
        .chain(settling.running_ids.iter().copied())
        .chain(
            settling
                .unrecorded
                .iter()
                .flat_map(|s| s.batch.iter().map(|d| d.key.id)),
        )
        .chain(settling.metrics.state_disk.unmark_ids())
        .collect()
}

/// Time between connection attempts while the collector refuses this
/// station as revoked: only an operator can lift a revocation, so quick
/// retries would only fill both logs.
pub const REVOKED_RETRY: Duration = Duration::from_secs(600);

/// Connection attempts to the collector, spaced by a backoff after failures.
struct Dialer {
    config: ClientLinkConfig,
    backoff: Backoff,
    /// When the next attempt may be made.
    next: tokio::time::Instant,
    /// Whether the revocation now in force was logged (once per spell).
    revoked_logged: bool,
}

impl Dialer {
    fn is_due(&self) -> bool {
        tokio::time::Instant::now() >= self.next
    }

    /// One connection attempt ([`connect_once`]), recorded in the metrics
    /// and the status file; after a failure the next waits for the backoff.
    async fn connect(&mut self, state_path: &Path, metrics: &Metrics) -> Option<ClientLink> {
        let mut state = status::read(state_path);
        let link = match connect_once(&self.config).await {
            Ok(l) => {
                info!(collector = %l.addr, "connected");
                metrics.set_connected(true);
                state.connected = true;
                state.revoked = false;
                state.collector = Some(l.addr.clone());
                state.last_error = None;
                self.backoff.reset();
                self.revoked_logged = false;
                Some(l)
            }
            Err(error) if error.is_revoked() => {
                metrics.error(ErrorKind::Connect);
                if !self.revoked_logged {
                    warn!(
                        %error,
                        retry = ?REVOKED_RETRY,
                        "this station is revoked: the collector refuses it until an operator lifts the revocation"
                    );
                    self.revoked_logged = true;
                } else {
                    debug!(%error, "still revoked");
                }
                state.connected = false;
                state.revoked = true;
                state.last_error = Some(error.to_string());
                self.next = tokio::time::Instant::now() + REVOKED_RETRY;
                None
            }
            Err(error) => {
                metrics.error(ErrorKind::Connect);
                let delay = self.backoff.next_delay();
                debug!(?delay, "collector unreachable; retrying later");
                state.connected = false;
                state.revoked = false;
                state.last_error = Some(error.to_string());
                self.next = tokio::time::Instant::now() + delay;
                None
            }
        };
        status::write(state_path, &state);
        link
    }
}

/// One attempt at each collector endpoint in turn; a collector that
/// refuses the station as revoked ends the round (the caller logs that).
async fn connect_once(config: &ClientLinkConfig) -> Result<ClientLink, LinkError> {
    let mut last = LinkError::Closed("no collector endpoint configured".to_owned());
    for addr in &config.endpoints {
        match ClientLink::connect(config, addr).await {
            Ok(link) => return Ok(link),
            Err(error) if error.is_revoked() => return Err(error),
            Err(error) => {
                warn!(%addr, %error, "collector unreachable");
                last = error;
            }
        }
    }
    Err(last)
}

fn write_due_list(
    settings: &Settings,
    ledger: &Shared,
    roots: &std::collections::BTreeMap<String, PathBuf>,
    metrics: &Metrics,
) {
    // Streamed from the ledger in order: the due set is never in memory.
    let written = tokio::task::block_in_place(|| {
        let mut writer = due_list::DueBackupWriter::create(&settings.legacy.due_backup)?;
        if let Err(error) = lock(ledger).for_each_due_path(roots, |path| writer.push(path)) {
            warn_counted!(metrics, ErrorKind::Ledger, %error, "ledger unreadable; DUE_BACKUP not rewritten");
            return Ok(None);
        }
        writer.commit().map(Some)
    });
    match written {
        Ok(None) => {}
        Ok(Some(written)) => {
            for path in written.unrepresentable {
                warn!(path = ?path, "name contains a newline or ends in a carriage return: left out of DUE_BACKUP (still sent)");
            }
        }
        Err(error) if error.is_disk_full() => {
            metrics.error(ErrorKind::LegacyFiles);
            metrics.state_disk.failed(&error);
        }
        Err(error) => {
            warn_counted!(metrics, ErrorKind::LegacyFiles, %error, "cannot write DUE_BACKUP");
        }
    }
}

/// What the sender records batches with.
struct Context<'a> {
    ledger: &'a Shared,
    state_path: &'a Path,
    metrics: &'a Metrics,
}

/// A batch streamed and committed, waiting for its ack.
struct Pending {
    batch: Vec<DueFile>,
    keys: Vec<FileKey>,
    sent: sender::InFlight,
    span: tracing::Span,
    started: std::time::Instant,
}

/// Waits for the ack of `pending` and queues it to be recorded
/// ([`Settling`]). If the link fails instead, the batch's files go back to
/// due, the link is dropped and `false` comes back.
async fn finish_pending(
    pending: Pending,
    link: &mut Option<ClientLink>,
    flow: &mut Flow,
    context: &Context<'_>,
    settling: &mut Settling,
) -> bool {
    let Pending {
        batch,
        keys,
        sent,
        span,
        started,
    } = pending;
    let Some(current) = link.as_mut() else {
        batch_failed(&keys, context);
        return false;
    };
    match sender::finish_batch(current, flow, sent)
        .instrument(span.clone())
        .await
    {
        Ok(reports) => {
            let settled = Settled {
                batch,
                reports,
                started,
                span,
            };
            settling.queue(settled, context.state_path).await;
            true
        }
        Err(error) => {
            batch_failed(&keys, context);
            link_failed(&error, &span, context);
            *link = None;
            false
        }
    }
}

/// A batch that did not complete: its files are due again (not a failure
/// of theirs) and count as retries.
fn batch_failed(keys: &[FileKey], context: &Context<'_>) {
    if let Err(error) = tokio::task::block_in_place(|| lock(context.ledger).unmark_sending(keys)) {
        context.metrics.error(ErrorKind::Ledger);
        context.metrics.state_disk.failed(&error);
        context.metrics.state_disk.unmark_later(keys);
    }
    Metrics::add(&context.metrics.retries, keys.len() as u64);
}

/// Records what could not be recorded while the agent's state was
/// unwritable: files to return to due, acks in order, post-ack work; or,
/// with nothing waiting, a probe of the ledger. Whether all of it is
/// recorded now.
fn record_again(
    settings: &Settings,
    ledger: &Shared,
    metrics: &Metrics,
    settling: &mut Settling,
    state_path: &Path,
) -> bool {
    let unmark = metrics.state_disk.take_unmark();
    if !unmark.is_empty()
        && let Err(error) = tokio::task::block_in_place(|| lock(ledger).unmark_sending(&unmark))
    {
        metrics.state_disk.unmark_later(&unmark);
        metrics.state_disk.failed(&error);
        return false;
    }
    if !settling.record_unrecorded(state_path) {
        return false;
    }
    if !finish_acked(settings, ledger, metrics, false) {
        return false;
    }
    let probe = tokio::task::block_in_place(|| {
        lock(ledger).set_marker("state-writable", SystemTime::now())
    });
    match probe {
        Ok(()) => true,
        Err(error) => {
            metrics.state_disk.failed(&error);
            false
        }
    }
}

/// Records a broken session: metrics, log, status file. The caller drops
/// the link.
fn link_failed(error: &sender::SendError, span: &tracing::Span, context: &Context<'_>) {
    warn!(parent: span, %error, "batch failed; reconnecting");
    session_lost(error.to_string(), context);
}

/// Records a session that is over (a link error, disconnected, `reason` in
/// the status file). The caller logs it and drops the link.
fn session_lost(reason: String, context: &Context<'_>) {
    context.metrics.error(ErrorKind::Link);
    context.metrics.set_connected(false);
    let mut state = status::read(context.state_path);
    state.connected = false;
    state.last_error = Some(reason);
    status::write(context.state_path, &state);
}

/// An acknowledged batch and its results.
struct Settled {
    batch: Vec<DueFile>,
    reports: Vec<sender::FileReport>,
    /// When the batch was offered.
    started: std::time::Instant,
    span: tracing::Span,
}

/// Acks being recorded ([`settle_batch`]) on a blocking thread, one batch
/// at a time and in order, while the next batch streams. Recorded in line,
/// an ack kept the sender from sending for 10–35 ms per batch (SQLite,
/// fsyncs of the ledger and `BACKUP_DONE`). An ack is queued when it
/// arrives and started once the next batch no longer needs the ledger
/// ([`Settling::start`]), so the two do not wait on each other's lock.
struct Settling {
    settings: Arc<Settings>,
    ledger: Shared,
    metrics: Arc<Metrics>,
    queued: Option<Settled>,
    /// Gives the ack's time if the ledger recorded it, or the batch back.
    running: Option<tokio::task::JoinHandle<Result<SystemTime, Settled>>>,
    /// The row ids of the batch being recorded.
    running_ids: Vec<i64>,
    /// Acks the ledger could not take (its disk is full), oldest first:
    /// recorded again by [`Settling::record_unrecorded`], in order; their
    /// files are offered to nobody meanwhile.
    unrecorded: std::collections::VecDeque<Settled>,
}

impl Settling {
    /// Queues an ack; one queued before it is started first.
    async fn queue(&mut self, settled: Settled, state_path: &Path) {
        self.start(state_path).await;
        self.queued = Some(settled);
    }

    /// Starts recording the queued ack, after the one running. Whether an
    /// ack was recorded meanwhile (the due set changed).
    async fn start(&mut self, state_path: &Path) -> bool {
        let Some(settled) = self.queued.take() else {
            return false;
        };
        let recorded = self.wait(state_path).await;
        if !self.unrecorded.is_empty() {
            // Acks are recorded in order.
            self.unrecorded.push_back(settled);
            return recorded;
        }
        let (settings, ledger, metrics) = (
            self.settings.clone(),
            self.ledger.clone(),
            self.metrics.clone(),
        );
        self.running_ids = settled.batch.iter().map(|d| d.key.id).collect();
        self.running = Some(tokio::task::spawn_blocking(move || {
            let span = settled.span.clone();
            span.in_scope(|| settle_batch(&settings, &ledger, &metrics, settled))
        }));
        recorded
    }

    /// Waits for the ack being recorded and puts its time in the status
    /// file (here, not on the blocking thread: the sender writes that file
    /// too); one the ledger could not take waits in `unrecorded`. Whether
    /// there was one.
    async fn wait(&mut self, state_path: &Path) -> bool {
        let Some(running) = self.running.take() else {
            return false;
        };
        let ids = std::mem::take(&mut self.running_ids);
        match running.await {
            Ok(Ok(acked_at)) => {
                let mut state = status::read(state_path);
                state.last_ack = Some(acked_at);
                status::write(state_path, &state);
            }
            Ok(Err(settled)) => self.unrecorded.push_back(settled),
            Err(error) => {
                // Not recorded, and gone: the files stay sent-pending until
                // the next start returns them to due.
                warn!(%error, files = ids.len(), "recording an ack failed");
            }
        }
        true
    }

    /// Records every ack received. Whether there was any.
    async fn finish(&mut self, state_path: &Path) -> bool {
        let started = self.start(state_path).await;
        self.wait(state_path).await || started
    }

    /// Whether acks wait for the ledger to take them.
    fn has_unrecorded(&self) -> bool {
        !self.unrecorded.is_empty()
    }

    /// Records the acks the ledger could not take before, in order, on this
    /// thread. Whether all are recorded now.
    fn record_unrecorded(&mut self, state_path: &Path) -> bool {
        while let Some(settled) = self.unrecorded.pop_front() {
            let span = settled.span.clone();
            let result = tokio::task::block_in_place(|| {
                span.in_scope(|| settle_batch(&self.settings, &self.ledger, &self.metrics, settled))
            });
            match result {
                Ok(acked_at) => {
                    let mut state = status::read(state_path);
                    state.last_ack = Some(acked_at);
                    status::write(state_path, &state);
                }
                Err(settled) => {
                    self.unrecorded.push_front(settled);
                    return false;
                }
            }
        }
        true
    }
}

/// Records a batch's results: acks and failures in the ledger (one
/// transaction), then `BACKUP_DONE` and the post-ack action; logs. Gives
/// the time of the ack, or the batch back if the ledger could not take it
/// (nothing of it is recorded then). Blocking.
fn settle_batch(
    settings: &Settings,
    ledger: &Shared,
    metrics: &Metrics,
    settled: Settled,
) -> Result<SystemTime, Settled> {
    let now = SystemTime::now();
    let mut acks = Vec::new();
    let mut failures = Vec::new();
    for report in &settled.reports {
        let Some(due) = settled.batch.get(report.index) else {
            continue;
        };
        match &report.outcome {
            Outcome::Stored { sha256, .. } | Outcome::AlreadyStored { sha256, .. } => {
                acks.push(Acked {
                    key: due.key,
                    sha256: *sha256,
                });
            }
            Outcome::Failed(error) => failures.push(Failure {
                key: due.key,
                error: error.to_string(),
                // A refusal that cannot pass is not retried until the file
                // changes.
                retry_at: error.retryable().then(|| now + retry_after(due.attempts)),
            }),
        }
    }
    let acked =
        match tokio::task::block_in_place(|| lock(ledger).record_batch(&acks, &failures, now)) {
            Ok(acked) => acked,
            Err(error) => {
                metrics.error(ErrorKind::Ledger);
                metrics.state_disk.failed(&error);
                return Err(settled);
            }
        };
    let Settled {
        batch,
        reports,
        started,
        span: _,
    } = settled;
    let sent: u64 = reports.iter().map(|r| r.sent).sum();
    Metrics::add(&metrics.acks, 1);
    Metrics::add(&metrics.bytes_transferred, sent);
    for report in &reports {
        if let (Some(due), Outcome::Failed(error)) = (batch.get(report.index), &report.outcome) {
            metrics.error(ErrorKind::File);
            let path = name::encode(due.rel_path.as_os_str().as_bytes());
            if error.retryable() {
                Metrics::add(&metrics.retries, 1);
                warn!(root = %due.root, %path, %error, "file not stored; will retry");
            } else {
                // Said once: the file is not offered again until it changes.
                Metrics::add(&metrics.refused, 1);
                warn!(root = %due.root, %path, %error, "file refused for good; not offered again until it changes");
            }
        }
    }
    let bytes: u64 = acked.iter().map(|a| a.identity.size).sum();
    Metrics::add(&metrics.files_sent, acked.len() as u64);
    Metrics::add(&metrics.bytes_sent, bytes);
    finish_acked(settings, ledger, metrics, false);
    info!(
        acked = acked.len(),
        failed = failures.len(),
        bytes,
        sent,
        ms = started.elapsed().as_millis() as u64,
        "batch acknowledged"
    );
    Ok(now)
}

/// The post-ack work of every acked file still waiting for it (this
/// batch's, and any that a stop or a write error left): its `BACKUP_DONE`
/// line, then the configured action, then the ledger records it done. A
/// stop anywhere in between leaves the work pending for the next start, so
/// no line and no deletion is lost. At start (`restarted`), files already on
/// the last lines of `BACKUP_DONE` (written just before a stop) are not
/// written twice. False if a full state disk (or an unusable ledger)
/// stopped it: then it is tried again with the sender's other unrecorded
/// work.
fn finish_acked(settings: &Settings, ledger: &Shared, metrics: &Metrics, restarted: bool) -> bool {
    let pending = match tokio::task::block_in_place(|| lock(ledger).post_ack_pending()) {
        Ok(pending) if !pending.is_empty() => pending,
        Ok(_) => return true,
        Err(error) => {
            warn_counted!(metrics, ErrorKind::Ledger, %error, "ledger unreadable; post-ack work postponed");
            return false;
        }
    };
    let roots = settings.root_dirs();
    let written: std::collections::HashSet<PathBuf> = if restarted {
        let tail = (pending.len() as u64 + 1) * due_list::MAX_LINE as u64;
        due_list::backup_done_tail(&settings.legacy.backup_done, tail)
            .unwrap_or_default()
            .into_iter()
            .collect()
    } else {
        Default::default()
    };
    let files: Vec<(&AckedFile, PathBuf)> = pending
        .iter()
        .filter_map(|a| roots.get(&a.root).map(|dir| (a, dir.join(&a.rel_path))))
        .collect();
    let lines = files
        .iter()
        .map(|(_, path)| path)
        .filter(|path| !written.contains(*path));
    match tokio::task::block_in_place(|| {
        due_list::append_backup_done(&settings.legacy.backup_done, lines)
    }) {
        Ok(left_out) => {
            for path in left_out {
                warn!(path = ?path, "name contains a newline: left out of BACKUP_DONE");
            }
        }
        Err(error) if error.is_disk_full() => {
            metrics.error(ErrorKind::LegacyFiles);
            metrics.state_disk.failed(&error);
            return false;
        }
        Err(error) => {
            // Not the state disk: sending goes on, and this is tried
            // again after the next ack.
            warn_counted!(metrics, ErrorKind::LegacyFiles, %error, "cannot append to BACKUP_DONE; will retry");
            return true;
        }
    }
    for (acked, path) in &files {
        if !after_ack(settings, acked, path) {
            metrics.error(ErrorKind::AfterAck);
        }
    }
    if let Err(error) = tokio::task::block_in_place(|| lock(ledger).post_ack_done(&pending)) {
        metrics.error(ErrorKind::Ledger);
        metrics.state_disk.failed(&error);
        return false;
    }
    true
}

/// Applies the configured post-ack action to `path`, only if it is still
/// the very file that was acknowledged (same size and mtime). Whether it
/// succeeded (or there was nothing to do).
fn after_ack(settings: &Settings, acked: &AckedFile, path: &Path) -> bool {
    if settings.after_ack == AfterAck::Keep {
        // Nothing to do, so nothing to look at (a stat per file per batch).
        return true;
    }
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        // Gone already (moved or deleted before a stop, or by someone else).
        return true;
    };
    let unchanged = {
        use std::os::unix::fs::MetadataExt;
        meta.len() == acked.identity.size
            && meta.mtime() * 1_000_000_000 + meta.mtime_nsec() == acked.identity.mtime_ns
    };
    match &settings.after_ack {
        AfterAck::Keep => true,
        _ if !unchanged => {
            debug!(path = %path.display(), "changed since its ack; left in place");
            true
        }
        AfterAck::Delete => match std::fs::remove_file(path) {
            Ok(()) => true,
            Err(error) => {
                warn!(path = %path.display(), %error, "cannot delete after ack");
                false
            }
        },
        AfterAck::Move(dir) => {
            let target = dir.join(&acked.root).join(&acked.rel_path);
            let moved = target
                .parent()
                .map_or(Ok(()), std::fs::create_dir_all)
                .and_then(|()| {
                    std::fs::rename(path, &target).or_else(|_| {
                        // Another filesystem: copy, sync, then remove.
                        std::fs::copy(path, &target)?;
                        std::fs::File::open(&target)?.sync_all()?;
                        std::fs::remove_file(path)
                    })
                });
            if let Err(error) = &moved {
                warn!(path = %path.display(), target = %target.display(), %error, "cannot move after ack");
            }
            moved.is_ok()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_backup_waits_while_batches_flow_and_is_exact_before_the_flag_is_lowered() {
        let mut list = DueList::stale();
        list.written();
        assert!(list.is_exact());
        assert!(!list.write_now(true), "an exact list is not rewritten");

        // Files arrive: the first offer does not wait for the list...
        list.changed();
        assert!(!list.is_exact());
        assert!(!list.write_now(false));
        // ...but lowering HALT_FLAG does.
        assert!(list.write_now(true));

        // More changes do not push the deadline back: the lag is counted
        // from the first change the list missed.
        let long_ago = std::time::Instant::now() - DUE_LIST_EVERY;
        list.stale_since = Some(long_ago);
        list.changed();
        assert_eq!(list.stale_since, Some(long_ago));
        assert!(list.write_now(false), "a list a second behind is rewritten");
        list.written();
        assert!(list.is_exact());
    }
}
