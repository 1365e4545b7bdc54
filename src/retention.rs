//! `berth retention`: apply the config file's `[[retention]]` policies to a
//! storage a server may be using at the same time, or with `--dry-run` only
//! say what they would remove and why. Blobs are freed by the next `berth gc`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use berth_registry::retention::{self, Decision, RetentionReport};
use clap::Parser;

use crate::config;
use crate::serve::{storage, S3Args, ServeArgs};

#[derive(Parser, Debug)]
pub struct RetentionArgs {
    /// The storage folder, or s3://BUCKET/PREFIX [default: ./berth-data]
    #[arg(long, env = "BERTH_STORAGE")]
    storage: Option<String>,
    #[command(flatten)]
    s3: S3Args,
    /// TOML config file with the [[retention]] policies (and [[immutable]]
    /// rules, `storage` and [s3] table)
    #[arg(long, env = "BERTH_CONFIG")]
    config: Option<PathBuf>,
    /// Untagged manifests pushed or pulled more recently than this stay,
    /// whatever the policies say (pushes in progress) [default: gc_grace, 1h]
    #[arg(long, value_parser = humantime::parse_duration)]
    grace: Option<Duration>,
    /// Report what would be removed and why, remove nothing
    #[arg(long)]
    dry_run: bool,
    /// Print the result as JSON
    #[arg(long)]
    json: bool,
}

pub fn retention(args: RetentionArgs) -> Result<()> {
    let settings = config::resolve(ServeArgs {
        storage: args.storage,
        config: args.config,
        s3: args.s3,
        ..Default::default()
    })?;
    if settings.retention.is_empty() {
        bail!("no [[retention]] policy in the config: pass --config with at least one");
    }
    let storage = storage::open_existing(&settings)?;
    let grace = args.grace.unwrap_or(settings.gc_grace);
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let report = runtime
        .block_on(retention::run(
            storage.as_ref(),
            &settings.retention,
            &settings.immutable,
            grace,
            args.dry_run,
        ))
        .context("retention failed")?;
    if args.json {
        println!("{}", serde_json::to_value(&report)?);
    } else {
        print_report(&report);
    }
    Ok(())
}

fn name(d: &Decision) -> String {
    match &d.tag {
        Some(tag) => format!("tag {}:{tag} ({})", d.repository, d.digest),
        None => format!("manifest {}@{}", d.repository, d.digest),
    }
}

fn print_report(report: &RetentionReport) {
    let verb = if report.dry_run {
        "would remove"
    } else {
        "removed"
    };
    for d in &report.removed {
        println!("{verb} {}: {}", name(d), d.reason);
    }
    for d in &report.kept {
        println!("keep {}: {}", name(d), d.reason);
    }
    for d in &report.skipped {
        println!("skipped {}: changed since it was judged", name(d));
    }
    println!(
        "{verb} {} tags and {} manifests; `berth gc` frees their blobs",
        report.tags_removed, report.manifests_removed
    );
}
