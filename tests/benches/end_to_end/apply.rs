//! MariaDB apply rate: files are shipped while the primary catalog (a real
//! MariaDB server) is down, so their records wait in the journal; then the
//! server returns and the rows per second the applier sustains while it
//! catches up are measured by counting the primary's rows every 10 ms.

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use ferry_tests::mariadb::MariaDb;
use ferry_tests::pki::TestPki;
use mysql_async::prelude::Queryable;

use crate::Options;
use crate::data;
use crate::ferry::{Agent, Binaries, Collector};

pub fn run(bins: &Binaries, pki: &TestPki, options: &Options) -> Result<String> {
    let rows = options.apply_rows;
    let files: Vec<(String, usize)> = (0..rows)
        .map(|i| (format!("d{:03}/f-{i:06}.csv", i / 1000), 256))
        .collect();
    let root = data::make(
        &options.dir.join("data"),
        &format!("apply-{rows}"),
        &files,
        0xa991,
    )?;
    let dir = options.dir.join("runs/apply");
    data::clear(&dir)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut db = runtime.block_on(MariaDb::start())?;
    runtime.block_on(db.stop())?;
    let mut collector = Collector::start(bins, pki, &dir, Some(&db.url()))?;
    let mut agent = Agent::start_station(bins, pki, &collector, &root, &dir)?;
    eprintln!("apply: shipping {rows} files while the MariaDB primary is down");
    let deadline = Instant::now() + Duration::from_secs(1200);
    while collector.catalogs.counts()[1].unwrap_or(0) < rows as u64 {
        ensure!(
            Instant::now() < deadline,
            "the files did not arrive in 20 minutes"
        );
        agent.check_alive()?;
        collector.check_alive()?;
        std::thread::sleep(Duration::from_millis(100));
    }
    agent.stop()?;
    eprintln!("apply: {rows} records wait in the journal; starting MariaDB");
    let (applied, seconds) = runtime.block_on(async {
        db.restart().await?;
        let pool = mysql_async::Pool::new(db.url().as_str());
        let mut conn = pool.get_conn().await?;
        let mut first: Option<(u64, Instant)> = None;
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let count: u64 = conn
                .query_first("SELECT COUNT(*) FROM files")
                .await
                .unwrap_or(None)
                .unwrap_or(0);
            let now = Instant::now();
            if count > 0 && first.is_none() {
                first = Some((count, now));
            }
            if count >= rows as u64 {
                let (c0, t0) = first.unwrap_or((0, now));
                drop(conn);
                pool.disconnect().await?;
                return anyhow::Ok((count - c0, (now - t0).as_secs_f64()));
            }
            ensure!(
                now < deadline,
                "the primary did not catch up in 5 minutes ({count} rows)"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })?;
    collector.stop()?;
    runtime.block_on(db.stop())?;
    data::retire(&dir, &options.dir.join("runs"))?;
    ensure!(
        seconds > 0.0 && applied > 0,
        "the catch-up was too quick to time; use --apply-rows with more rows"
    );
    Ok(format!(
        "MariaDB apply rate (catch-up of a {rows}-record journal into a real MariaDB primary): {applied} rows in {seconds:.2} s = {:.0} rows/s",
        applied as f64 / seconds
    ))
}
