//! `berth usage`: bytes and tags per repository, read from the storage like
//! `berth gc` does, with the `[[quota]]` limits of the config file beside them.
//! Bytes are what the quota counts: unique blobs the repository's tagged
//! manifests reference (a blob shared by two tags counts once; untagged
//! manifests and stray uploads count nothing).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;

use crate::config;
use crate::serve::{storage, S3Args, ServeArgs};

#[derive(Parser, Debug)]
pub struct UsageArgs {
    /// The storage folder, or s3://BUCKET/PREFIX [default: ./berth-data]
    #[arg(long, env = "BERTH_STORAGE")]
    storage: Option<String>,
    #[command(flatten)]
    s3: S3Args,
    /// TOML config file (its `storage` key, [s3] table and [[quota]] rules are used)
    #[arg(long, env = "BERTH_CONFIG")]
    config: Option<PathBuf>,
    /// Print the result as JSON
    #[arg(long)]
    json: bool,
}

#[derive(serde::Serialize)]
struct RepositoryUsage {
    repository: String,
    bytes: u64,
    tags: u64,
    max_bytes: Option<u64>,
    max_tags: Option<u64>,
}

pub fn usage(args: UsageArgs) -> Result<()> {
    let settings = config::resolve(ServeArgs {
        storage: args.storage,
        config: args.config,
        s3: args.s3,
        ..Default::default()
    })?;
    let storage = storage::open_existing(&settings)?;
    let quotas = &settings.quotas;
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let rows = runtime.block_on(async {
        let mut rows = Vec::new();
        for repository in storage
            .repositories()
            .await
            .context("cannot list repositories")?
        {
            let used = quotas
                .usage(storage.as_ref(), &repository)
                .await
                .map_err(|e| anyhow::anyhow!("usage of {repository}: {}", e.message))?;
            let (max_bytes, max_tags) = quotas.limits(&repository);
            rows.push(RepositoryUsage {
                repository,
                bytes: used.bytes,
                tags: used.tags,
                max_bytes,
                max_tags,
            });
        }
        anyhow::Ok(rows)
    })?;
    if args.json {
        println!("{}", serde_json::json!({ "repositories": rows }));
        return Ok(());
    }
    let limit = |max: Option<u64>| max.map_or(String::new(), |m| format!(" / {m}"));
    println!("{:<40} {:>24} {:>14}", "REPOSITORY", "BYTES", "TAGS");
    for row in &rows {
        println!(
            "{:<40} {:>24} {:>14}",
            row.repository,
            format!("{}{}", row.bytes, limit(row.max_bytes)),
            format!("{}{}", row.tags, limit(row.max_tags)),
        );
    }
    Ok(())
}
