//! Chaos: several stations deliver a few thousand files of mixed sizes
//! while a driver `kill -9`s their agents and the collector at random
//! moments, cuts, stalls, slows and delays their links through a proxy, and
//! stops (or kills) and restarts the primary and the backup MariaDB. Some
//! files are written before the agents start, the rest during the chaos.
//!
//! Once the faults stop and everything has settled, the result is checked
//! against the ground truth: every file in the repository once, under its
//! own name, with the content written; both catalogs holding exactly one
//! row per file and identical row by row (`reconcile --dry-run` agrees);
//! no staging file left; every agent's ledger, status and `DUE_BACKUP`
//! empty of due files; and no file sent twice in full (a cut transfer
//! resumes, a lost ack costs no resend).
//!
//! Parameters come from the environment; the defaults are the short form
//! CI runs, and `cargo xtask chaos` runs the long form:
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `FERRY_CHAOS_SEED` | seed of the workload and of the fault schedule | random, printed |
//! | `FERRY_CHAOS_FILES` | files in the workload (besides the large ones) | 2000 |
//! | `FERRY_CHAOS_STATIONS` | stations (agent processes) | 4 |
//! | `FERRY_CHAOS_MAX_MIB` | largest ordinary file, MiB | 4 |
//! | `FERRY_CHAOS_LARGE` | files larger than that | 0 |
//! | `FERRY_CHAOS_LARGE_MIB` | size of the large ones (half to all of it), MiB | 200 |
//! | `FERRY_CHAOS_SECONDS` | how long the faults go on | 40 |
//! | `FERRY_CHAOS_SETTLE_SECS` | how long everything may take to settle after | 300 |
//!
//! The seed fixes the files and the order and spacing of the faults; where
//! a fault lands in the transfers still depends on timing, so a replay hits
//! similar, not identical, moments.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns may unwrap

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ferry_collector::journal::Record;
use ferry_tests::agent::{TestAgent, tree};
use ferry_tests::collector::{Received, TestCollector};
use ferry_tests::mariadb::MariaDb;
use ferry_tests::pki::TestPki;
use ferry_tests::process;
use ferry_tests::proxy::{Direction, Proxy};
use ferry_tests::rng::Rng;
use ferry_tests::workload::{FileSpec, GroundTruth, Problems, write_file};
use tokio::time::Instant;

const MIB: u64 = 1 << 20;

/// The run's parameters.
#[derive(Debug, Clone)]
struct Plan {
    seed: u64,
    files: usize,
    stations: usize,
    max_mib: u64,
    large: usize,
    large_mib: u64,
    seconds: u64,
    settle_secs: u64,
}

impl Plan {
    fn from_env() -> Self {
        fn var(name: &str, default: u64) -> u64 {
            match std::env::var(name) {
                Ok(v) => v
                    .trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
                Err(_) => default,
            }
        }
        Plan {
            seed: var("FERRY_CHAOS_SEED", Rng::fresh_seed()),
            files: var("FERRY_CHAOS_FILES", 2000) as usize,
            stations: var("FERRY_CHAOS_STATIONS", 4).max(1) as usize,
            max_mib: var("FERRY_CHAOS_MAX_MIB", 4).max(1),
            large: var("FERRY_CHAOS_LARGE", 0) as usize,
            large_mib: var("FERRY_CHAOS_LARGE_MIB", 200).max(1),
            seconds: var("FERRY_CHAOS_SECONDS", 40),
            settle_secs: var("FERRY_CHAOS_SETTLE_SECS", 300),
        }
    }
}

fn station_name(i: usize) -> String {
    format!("chaos{i:03}")
}

/// The files, in the order they are written: mostly small, a tail of
/// larger ones up to `max_mib`, and `large` files beyond it.
fn workload(plan: &Plan, rng: &mut Rng) -> Vec<FileSpec> {
    let max = plan.max_mib * MIB;
    let mut specs: Vec<FileSpec> = (0..plan.files + plan.large)
        .map(|i| {
            let size = if i >= plan.files {
                rng.between(plan.large_mib * MIB / 2, plan.large_mib * MIB)
            } else {
                match rng.below(100) {
                    0 => 0,
                    1..70 => rng.between(1, 16 << 10),
                    70..95 => rng.between(16 << 10, 256 << 10),
                    95..99 => rng.between(256 << 10, (max / 4).max(256 << 10)),
                    _ => rng.between(max / 4, max),
                }
            };
            let station = rng.below(plan.stations as u64) as usize;
            FileSpec {
                station,
                rel: format!(
                    "d{:02}/{}/{}_{i:05}.bin",
                    rng.below(12),
                    ["bin", "csv", "h5", "log"][rng.below(4) as usize],
                    station_name(station)
                ),
                size,
                seed: rng.next_u64(),
                // Large files appear whole (renamed into place); small ones
                // are written in place and found by their close.
                atomic: size > MIB || rng.chance(30),
            }
        })
        .collect();
    // Fisher-Yates: large files come at random moments too.
    for i in (1..specs.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        specs.swap(i, j);
    }
    specs
}

/// What the fault tasks did.
#[derive(Debug, Default, Clone)]
struct Faults {
    agent_kills: u64,
    collector_kills: u64,
    collector_terms: u64,
    cuts: u64,
    cut_connections: u64,
    stalls: u64,
    throttles: u64,
    delays: u64,
    primary: Outages,
    backup: Outages,
}

#[derive(Debug, Default, Clone, Copy)]
struct Outages {
    killed: u64,
    stopped: u64,
}

/// Sleeps `ms` milliseconds but never past `until`; false once `until` has
/// come.
async fn nap(ms: u64, until: Instant) -> bool {
    let wake = (Instant::now() + Duration::from_millis(ms)).min(until);
    tokio::time::sleep_until(wake).await;
    Instant::now() < until
}

/// Kills random agents with SIGKILL and starts them again a little later
/// on the same state directory.
async fn agent_chaos(
    mut agents: Vec<TestAgent>,
    mut rng: Rng,
    until: Instant,
) -> (Vec<TestAgent>, u64) {
    let mut kills = 0;
    let mut down: Vec<(usize, Instant)> = Vec::new();
    loop {
        let now = Instant::now();
        down.retain(|&(i, at)| {
            if at <= now {
                agents[i].start().unwrap();
                false
            } else {
                true
            }
        });
        if !nap(rng.between(200, 1200), until).await {
            break;
        }
        let i = rng.below(agents.len() as u64) as usize;
        if agents[i].is_running() {
            agents[i].kill9();
            kills += 1;
            down.push((
                i,
                Instant::now() + Duration::from_millis(rng.between(0, 1500)),
            ));
        }
    }
    for (i, _) in down {
        agents[i].start().unwrap();
    }
    (agents, kills)
}

/// Kills the collector (mostly SIGKILL, sometimes SIGTERM) and starts it
/// again on the same port after a random pause.
async fn collector_chaos(
    mut collector: TestCollector,
    mut rng: Rng,
    until: Instant,
) -> (TestCollector, u64, u64) {
    let (mut kills, mut terms) = (0, 0);
    while nap(rng.between(2000, 7000), until).await {
        if rng.chance(80) {
            collector.kill9();
            kills += 1;
        } else {
            tokio::task::block_in_place(|| collector.terminate()).unwrap();
            terms += 1;
        }
        tokio::time::sleep(Duration::from_millis(rng.between(0, 2000))).await;
        collector.spawn().await.unwrap();
    }
    (collector, kills, terms)
}

/// Takes a catalog server away (SIGKILL or a clean stop) for a few seconds
/// at a time.
async fn database_chaos(mut db: MariaDb, mut rng: Rng, until: Instant) -> (MariaDb, Outages) {
    let mut outages = Outages::default();
    while nap(rng.between(3000, 10_000), until).await {
        if rng.chance(50) {
            db.kill9();
            outages.killed += 1;
        } else {
            db.stop().await.unwrap();
            outages.stopped += 1;
        }
        tokio::time::sleep(Duration::from_millis(rng.between(1000, 8000))).await;
        db.restart().await.unwrap();
    }
    (db, outages)
}

/// Cuts, stalls, throttles and delays the stations' links.
async fn link_chaos(proxies: Vec<Arc<Proxy>>, mut rng: Rng, until: Instant) -> Faults {
    let mut faults = Faults::default();
    let mut heal: Vec<(usize, Instant)> = Vec::new();
    loop {
        let now = Instant::now();
        heal.retain(|&(i, at)| {
            if at <= now {
                proxies[i].heal();
                false
            } else {
                true
            }
        });
        if !nap(rng.between(150, 1000), until).await {
            break;
        }
        let i = rng.below(proxies.len() as u64) as usize;
        let p = &proxies[i];
        let lasting = Instant::now() + Duration::from_millis(rng.between(500, 6000));
        match rng.below(100) {
            0..10 => {
                for p in &proxies {
                    faults.cut_connections += p.cut() as u64;
                }
                faults.cuts += 1;
            }
            10..55 => {
                faults.cut_connections += p.cut() as u64;
                faults.cuts += 1;
            }
            55..70 => {
                p.stall(true);
                faults.stalls += 1;
                heal.push((i, lasting));
            }
            70..78 => {
                let way = if rng.chance(50) {
                    Direction::Up
                } else {
                    Direction::Down
                };
                p.stall_one(way, true);
                faults.stalls += 1;
                heal.push((i, lasting));
            }
            78..90 => {
                p.throttle(Some(rng.between(64 << 10, 4 << 20)));
                faults.throttles += 1;
                heal.push((i, lasting));
            }
            _ => {
                p.delay(Duration::from_millis(rng.between(5, 300)));
                faults.delays += 1;
                heal.push((i, lasting));
            }
        }
    }
    for p in &proxies {
        p.heal();
    }
    faults
}

/// Writes `specs` spread evenly over `span`; returns their ground truth.
fn write_spread(
    specs: Vec<FileSpec>,
    roots: Vec<(String, std::path::PathBuf)>,
    span: Duration,
) -> GroundTruth {
    let mut truth = GroundTruth::default();
    let start = std::time::Instant::now();
    let count = specs.len().max(1);
    for (k, spec) in specs.into_iter().enumerate() {
        let at = start + span.mul_f64(k as f64 / count as f64);
        if let Some(wait) = at.checked_duration_since(std::time::Instant::now()) {
            std::thread::sleep(wait);
        }
        let (station, root) = &roots[spec.station];
        let sha = write_file(root, &spec).unwrap();
        truth.add(station, &spec.rel, spec.size, sha);
    }
    truth
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / MIB as f64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_survive_kills_cuts_and_database_outages_exactly_once() {
    let plan = Plan::from_env();
    eprintln!(
        "chaos seed {} (replay: FERRY_CHAOS_SEED={})",
        plan.seed, plan.seed
    );
    ferry_tests::init_logging();
    let began = Instant::now();
    let mut rng = Rng::new(plan.seed);
    let specs = workload(&plan, &mut rng);
    let planned_bytes: u64 = specs.iter().map(|s| s.size).sum();
    eprintln!(
        "chaos plan: {} files, {} on {} stations, faults for {} s",
        specs.len(),
        mib(planned_bytes),
        plan.stations,
        plan.seconds
    );

    let pki = TestPki::new().unwrap();
    let (primary, backup) = tokio::join!(MariaDb::start(), MariaDb::start());
    let (primary, backup) = (primary.unwrap(), backup.unwrap());
    let mut collector = TestCollector::new(&pki, "").unwrap();
    collector.log_filter = "info,ferry_collector::session=debug".into();
    collector
        .use_catalogs(&primary.url(), &backup.url())
        .unwrap();
    collector.spawn().await.unwrap();
    let settings = collector.settings.clone();
    let mut proxies = Vec::new();
    let mut agents = Vec::new();
    for i in 0..plan.stations {
        let proxy = Arc::new(Proxy::start(settings.listen).await.unwrap());
        // Every other station deletes its files once they are acked (and
        // so the run needs less disk).
        let after_ack = if i % 2 == 0 {
            "[after_ack]\naction = \"delete\""
        } else {
            ""
        };
        let agent =
            TestAgent::new(&pki, &station_name(i), &proxy.addr.to_string(), after_ack).unwrap();
        proxies.push(proxy);
        agents.push(agent);
    }
    let roots: Vec<(String, std::path::PathBuf)> = agents
        .iter()
        .map(|a| (a.station.clone(), a.root.clone()))
        .collect();

    // Two fifths of the files are there before the agents start.
    let mut specs = specs;
    let during = specs.split_off(specs.len() * 2 / 5);
    let before_count = specs.len();
    let first = {
        let roots = roots.clone();
        tokio::task::spawn_blocking(move || write_spread(specs, roots, Duration::ZERO))
            .await
            .unwrap()
    };
    for agent in &mut agents {
        agent.start().unwrap();
    }

    // The faults, each kind in its own task with its own generator.
    let chaos_began = Instant::now();
    let until = chaos_began + Duration::from_secs(plan.seconds);
    let writer = {
        let roots = roots.clone();
        let span = Duration::from_secs(plan.seconds).mul_f64(0.8);
        tokio::task::spawn_blocking(move || write_spread(during, roots, span))
    };
    let agent_task = tokio::spawn(agent_chaos(agents, Rng::new(rng.next_u64()), until));
    let collector_task = tokio::spawn(collector_chaos(collector, Rng::new(rng.next_u64()), until));
    let primary_task = tokio::spawn(database_chaos(primary, Rng::new(rng.next_u64()), until));
    let backup_task = tokio::spawn(database_chaos(backup, Rng::new(rng.next_u64()), until));
    let link_task = tokio::spawn(link_chaos(proxies.clone(), Rng::new(rng.next_u64()), until));

    let mut truth = first;
    truth.files.extend(writer.await.unwrap().files);
    let (mut agents, agent_kills) = agent_task.await.unwrap();
    let (mut collector, collector_kills, collector_terms) = collector_task.await.unwrap();
    let (primary, primary_outages) = primary_task.await.unwrap();
    let (backup, backup_outages) = backup_task.await.unwrap();
    let mut faults = link_task.await.unwrap();
    faults.agent_kills = agent_kills;
    faults.collector_kills = collector_kills;
    faults.collector_terms = collector_terms;
    faults.primary = primary_outages;
    faults.backup = backup_outages;
    let chaos_took = chaos_began.elapsed();
    eprintln!("chaos over after {chaos_took:.1?}: {faults:?}; settling");

    // Settle: everything runs and every link is healthy again.
    assert!(collector.is_running(), "{}", collector.log_text());
    for agent in &mut agents {
        assert!(
            agent.is_running(),
            "{}: {}",
            agent.station,
            agent.log_text()
        );
    }
    let settle_began = Instant::now();
    let settle_deadline = settle_began + Duration::from_secs(plan.settle_secs);
    let total = truth.files.len();
    loop {
        let due: u64 = agents
            .iter()
            .map(|a| {
                a.ledger()
                    .and_then(|l| Ok(l.due_summary()?.files))
                    .unwrap_or(u64::MAX / 1024)
            })
            .sum();
        let status = ferry_collector::admin::status(&settings, None, 0)
            .map(|s| s.stations)
            .unwrap_or_default();
        let stored: u64 = status.iter().map(|s| s.host_files).sum();
        let pending: u64 = status.iter().map(|s| s.pending_backup).sum();
        if due == 0 && stored == total as u64 && pending == 0 {
            break;
        }
        if Instant::now() > settle_deadline {
            for a in &agents {
                let summary = a.ledger().and_then(|l| Ok(l.due_summary()?));
                let errors = a.ledger().and_then(|l| Ok(l.recent_errors(5)?));
                eprintln!("{}: {summary:?} {errors:?}", a.station);
            }
            panic!(
                "not settled after {} s: {due} files due, {stored} of {total} stored, \
                 {pending} records pending; seed {}",
                plan.settle_secs, plan.seed
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let settle_took = settle_began.elapsed();

    // The checks, against the ground truth.
    let mut problems = truth.check_repository(&settings.repository);
    let primary_rows = sorted(collector.catalog_rows("primary").await.unwrap());
    let backup_rows = sorted(collector.catalog_rows("backup").await.unwrap());
    problems.merge(truth.check_catalog("primary", &primary_rows));
    problems.merge(truth.check_catalog("backup", &backup_rows));
    let catalogs_identical = primary_rows == backup_rows;
    let staging_left = tree(&settings.state_dir.join("staging"));
    let reconcile = process::run(
        &process::binary("ferry-collector").unwrap(),
        &[
            "reconcile",
            "--dry-run",
            "--config",
            collector.config_path.to_str().unwrap(),
        ],
    )
    .unwrap();
    let reconcile_text = String::from_utf8_lossy(&reconcile.stdout).into_owned();
    let agent_bin = process::binary("ferry-agent").unwrap();
    let mut ledger_problems = Vec::new();
    let mut backup_done_lines = 0usize;
    for a in &agents {
        let out = process::run(
            &agent_bin,
            &[
                "status",
                "--json",
                "--config",
                a.config_path.to_str().unwrap(),
            ],
        )
        .unwrap();
        let json = String::from_utf8_lossy(&out.stdout);
        if !json.contains("\"due_files\":0,") {
            ledger_problems.push(format!("{}: status {json}", a.station));
        }
        if !a.due_backup().is_empty() {
            ledger_problems.push(format!("{}: DUE_BACKUP {:?}", a.station, a.due_backup()));
        }
        // BACKUP_DONE names every file of the station, once.
        let done = std::fs::read_to_string(&a.settings.legacy.backup_done).unwrap_or_default();
        let lines: Vec<&str> = done.lines().collect();
        let unique: std::collections::BTreeSet<&str> = lines.iter().copied().collect();
        let expected: std::collections::BTreeSet<String> = truth
            .files
            .keys()
            .filter(|(station, _)| *station == a.station)
            .filter_map(|(_, path)| path.strip_prefix("data/"))
            .map(|rel| a.root.join(rel).to_string_lossy().into_owned())
            .collect();
        let missing = expected
            .iter()
            .filter(|p| !unique.contains(p.as_str()))
            .count();
        if unique.len() != lines.len() || missing > 0 || unique.len() != expected.len() {
            ledger_problems.push(format!(
                "{}: BACKUP_DONE has {} lines for {} paths; {missing} of the {} files missing",
                a.station,
                lines.len(),
                unique.len(),
                expected.len()
            ));
        }
        backup_done_lines += unique.len();
    }

    // Resume worked: no file's content reached the collector whole twice.
    let mut receipts: BTreeMap<(String, String), Vec<Received>> = BTreeMap::new();
    for r in collector.received() {
        receipts
            .entry((r.station.clone(), r.path.clone()))
            .or_default()
            .push(r);
    }
    let resent: Vec<String> = receipts
        .iter()
        .filter(|(_, r)| r.iter().filter(|r| r.in_full()).count() > 1)
        .map(|(key, r)| format!("{key:?}: {r:?}"))
        .collect();
    let commits = receipts.values().map(Vec::len).sum::<usize>();
    let resumed = receipts.values().flatten().filter(|r| r.from > 0).count();
    let up_bytes: u64 = proxies.iter().map(|p| p.forwarded(Direction::Up)).sum();
    // Files of deleting stations still there after their ack.
    let kept_after_ack: usize = agents
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 2 == 0)
        .map(|(_, a)| tree(&a.root).len())
        .sum();
    // Files the collector answered with an error (retried later).
    let failed: usize = agents
        .iter()
        .flat_map(|a| a.logs())
        .map(|log| {
            std::fs::read_to_string(log)
                .unwrap_or_default()
                .matches("file not stored; will retry")
                .count()
        })
        .sum();

    let Problems {
        lost,
        duplicates,
        wrong,
        extra,
    } = &problems;
    let bytes = truth.bytes();
    let largest = truth.files.values().map(|(s, _)| *s).max().unwrap_or(0);
    println!(
        "\
chaos figures
  seed              {seed}
  stations          {stations}
  files             {total} ({before_count} before the agents started, {during_count} during the faults)
  bytes             {bytes} (largest file {largest})
  faults for        {chaos:.0?}, then settled in {settle:.1?}; whole run {run:.0?}
  agent kills       {agent_kills} (SIGKILL)
  collector kills   {ck} (SIGKILL) + {ct} (SIGTERM)
  link cuts         {cuts} ({cut_conns} connections), stalls {stalls}, throttles {throttles}, delays {delays}
  primary outages   {po} ({pk} SIGKILL, {ps} stop)
  backup outages    {bo} ({bk} SIGKILL, {bs} stop)
  bytes up          {up} through the proxies ({ratio:.3} x the file bytes, framing and TLS included)
  commits           {commits}, of which {resumed} resumed past byte 0
  failed, retried   {failed} file results
  resent in full    {resent} (files whose whole content reached the collector twice)
  duplicates        {dups}
  lost              {lost}
  wrong content     {wrong}
  staging left      {staging}
  BACKUP_DONE       {backup_done_lines} of {total} files
  not deleted       {kept_after_ack} acked files still on stations that delete after the ack",
        seed = plan.seed,
        stations = plan.stations,
        during_count = total - before_count,
        bytes = mib(bytes),
        largest = mib(largest),
        chaos = chaos_took,
        settle = settle_took,
        run = began.elapsed(),
        agent_kills = faults.agent_kills,
        ck = faults.collector_kills,
        ct = faults.collector_terms,
        cuts = faults.cuts,
        cut_conns = faults.cut_connections,
        stalls = faults.stalls,
        throttles = faults.throttles,
        delays = faults.delays,
        po = faults.primary.killed + faults.primary.stopped,
        pk = faults.primary.killed,
        ps = faults.primary.stopped,
        bo = faults.backup.killed + faults.backup.stopped,
        bk = faults.backup.killed,
        bs = faults.backup.stopped,
        ratio = up_bytes as f64 / bytes.max(1) as f64,
        up = mib(up_bytes),
        resent = resent.len(),
        dups = duplicates.len() + extra.len(),
        lost = lost.len(),
        wrong = wrong.len(),
        staging = staging_left.len(),
    );

    let passed = problems.is_empty()
        && catalogs_identical
        && reconcile.status.success()
        && reconcile_text.contains("catalogs identical")
        && ledger_problems.is_empty()
        && resent.is_empty()
        && staging_left.is_empty()
        && kept_after_ack == 0;
    if !passed {
        let kept = keep_evidence(&agents, &collector, plan.seed);
        eprintln!("logs, ledgers and the journal kept in {}", kept.display());
    }
    assert!(problems.is_empty(), "seed {}:\n{problems}", plan.seed);
    assert!(
        catalogs_identical,
        "seed {}: the catalogs differ",
        plan.seed
    );
    assert!(
        reconcile.status.success() && reconcile_text.contains("catalogs identical"),
        "seed {}: reconcile --dry-run: {reconcile_text}{}",
        plan.seed,
        String::from_utf8_lossy(&reconcile.stderr)
    );
    assert!(
        ledger_problems.is_empty(),
        "seed {}: {ledger_problems:#?}",
        plan.seed
    );
    assert!(
        resent.is_empty(),
        "seed {}: sent twice in full: {resent:#?}",
        plan.seed
    );
    assert!(
        staging_left.is_empty(),
        "seed {}: staging files left: {staging_left:?}",
        plan.seed
    );
    assert_eq!(
        kept_after_ack, 0,
        "seed {}: acked files not deleted on stations that delete after the ack",
        plan.seed
    );

    for agent in &mut agents {
        agent.stop().unwrap();
    }
    collector.terminate().unwrap();
    drop((primary, backup, proxies, pki));
}

/// Copies the logs, ledgers, `BACKUP_DONE` files and the journal of a
/// failed run (not the files: they can be gigabytes) to a directory under
/// the target dir that outlives the run; returns it.
fn keep_evidence(agents: &[TestAgent], collector: &TestCollector, seed: u64) -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("chaos-{seed}"));
    let copy = |from: &std::path::Path, to: &std::path::Path| {
        let _ = std::fs::create_dir_all(to);
        if let Some(name) = from.file_name() {
            let _ = std::fs::copy(from, to.join(name));
        }
    };
    for a in agents {
        let to = dir.join(&a.station);
        for log in a.logs() {
            copy(&log, &to);
        }
        let ledger = &a.settings.ledger;
        for path in [
            ledger.clone(),
            ledger.with_extension("sqlite-wal"),
            a.settings.legacy.backup_done.clone(),
        ] {
            copy(&path, &to);
        }
    }
    let to = dir.join("collector");
    for log in collector.logs() {
        copy(&log, &to);
    }
    let journal = collector.settings.state_dir.join("journal.sqlite");
    copy(&journal, &to);
    copy(&journal.with_extension("sqlite-wal"), &to);
    dir
}

fn sorted(mut rows: Vec<Record>) -> Vec<Record> {
    rows.sort_by(|a, b| (&a.station, &a.path, a.sha256).cmp(&(&b.station, &b.path, b.sha256)));
    rows
}
