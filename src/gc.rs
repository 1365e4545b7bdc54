//! `berth gc`: reclaim the disk space of blobs no manifest needs, on a
//! storage a server may be using at the same time (the grace period spares
//! pushes in progress).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;

use crate::config;
use crate::serve::{storage, S3Args, ServeArgs};

/// The shortest grace a collection may use beside a server writing to the same folder
/// without `--force`: the server's own exclusion of pushes does not reach another process,
/// so only the grace period spares a push in progress (its layers uploaded, its manifest not yet).
const GRACE_BESIDE_A_SERVER: Duration = Duration::from_secs(600);

#[derive(Parser, Debug)]
pub struct GcArgs {
    /// The storage folder, or s3://BUCKET/PREFIX [default: ./berth-data]
    #[arg(long, env = "BERTH_STORAGE")]
    storage: Option<String>,
    #[command(flatten)]
    s3: S3Args,
    /// TOML config file (its `storage` key and [s3] table are used)
    #[arg(long, env = "BERTH_CONFIG")]
    config: Option<PathBuf>,
    /// Keep anything pushed or reused more recently than this, so pushes in
    /// progress lose nothing (e.g. 30m, 1h, 2d)
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    grace: Duration,
    /// Report what would be removed, remove nothing
    #[arg(long)]
    dry_run: bool,
    /// Collect with a grace under 10 minutes even while a `berth serve` on this machine
    /// writes to the storage folder (pushes in progress may then lose blobs)
    #[arg(long)]
    force: bool,
    /// Print the result as JSON
    #[arg(long)]
    json: bool,
}

pub fn gc(args: GcArgs) -> Result<()> {
    let settings = config::resolve(ServeArgs {
        storage: args.storage,
        config: args.config,
        s3: args.s3,
        ..Default::default()
    })?;
    let storage = storage::open_existing(&settings)?;
    if !args.dry_run
        && !args.force
        && args.grace < GRACE_BESIDE_A_SERVER
        && storage::served_now(&settings)?
    {
        bail!(
            "a berth serve on this machine is using {} (it holds {}/serve.lock): a collection in \
             another process is kept from a push in progress only by the grace period, and {} is \
             shorter than {}; use a longer --grace, stop the server, or pass --force",
            settings.storage,
            settings.storage,
            humantime::format_duration(args.grace),
            humantime::format_duration(GRACE_BESIDE_A_SERVER)
        );
    }
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let report = runtime
        .block_on(storage.collect_garbage(args.grace, args.dry_run))
        .context("garbage collection failed")?;
    if args.json {
        let mut value = serde_json::to_value(&report)?;
        value["dry_run"] = args.dry_run.into();
        println!("{value}");
    } else {
        let verb = if args.dry_run {
            "would remove"
        } else {
            "removed"
        };
        println!(
            "{verb} {} repository links and {} blobs ({:.1} MiB)",
            report.links_removed,
            report.blobs_removed,
            report.bytes_freed as f64 / (1 << 20) as f64
        );
    }
    Ok(())
}
