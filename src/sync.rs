//! `berth sync SRC DST`: replicate every repository under a prefix from one
//! registry to another (the work is in `berth_client::sync`). Output: a line
//! per image on stderr (progress bars on a terminal), or with `--json` one
//! JSON object per image on stdout and a last `{"summary": ...}` line.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use berth_client::registry::Client;
use berth_client::sync::{
    is_tag_glob, sync, RegistryTarget, SyncAction, SyncItem, SyncOptions, SyncSummary,
};
use berth_client::ImageRef;
use clap::Parser;
use serde_json::json;

use crate::progress::human_bytes;
use crate::session::{client_config, ClientArgs, Session};

#[derive(Parser, Debug)]
#[command(after_help = "Examples:\n  \
    berth sync 127.0.0.1:5000/team 127.0.0.1:6000/backup/team\n  \
    berth sync --tags 'v1.*' --referrers registry.example.com/app 127.0.0.1:5000/app\n  \
    berth sync --watch 10m --json src.example.com 127.0.0.1:5000/replica\n\n\
Every platform of a multi-platform image is copied with its index, so digests\n\
stay the same on both sides (what lets a re-run skip by digest); --all is\n\
accepted for skopeo users and changes nothing.")]
pub struct SyncArgs {
    /// Source: REGISTRY[/REPOSITORY-PREFIX] (every repository under the prefix, from the catalog)
    src: String,
    /// Destination: REGISTRY[/REPOSITORY-PREFIX] (the source prefix is replaced by this one)
    dst: String,
    /// Only tags matching this glob (`*` matches anything), e.g. 'v1.*' [default: every tag]
    #[arg(long, value_name = "GLOB")]
    tags: Option<String>,
    /// Also copy the manifests referring to each image (signatures, SBOMs, attestations)
    #[arg(long)]
    referrers: bool,
    /// Every platform of multi-platform images (always on; for skopeo's habit)
    #[arg(long)]
    all: bool,
    /// Images copied at once
    #[arg(long, short = 'j', default_value_t = 3)]
    jobs: usize,
    /// Blobs in flight per image
    #[arg(long, default_value_t = 4, value_name = "N")]
    blob_jobs: usize,
    /// Only report what would be copied
    #[arg(long)]
    dry_run: bool,
    /// Keep syncing: run again this long after each run ends (e.g. 10m)
    #[arg(long, value_name = "INTERVAL", value_parser = humantime::parse_duration)]
    watch: Option<Duration>,
    /// USER:PASSWORD for the source registry
    #[arg(long, value_name = "USER:PASSWORD")]
    src_creds: Option<String>,
    /// USER:PASSWORD for the destination registry
    #[arg(long, value_name = "USER:PASSWORD")]
    dest_creds: Option<String>,
    #[command(flatten)]
    client: ClientArgs,
}

/// `REGISTRY[/PREFIX]` → (registry, prefix); the prefix is checked as a repository name.
pub fn parse_endpoint(text: &str) -> Result<(String, String)> {
    let text = text
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_end_matches('/');
    let Some((registry, _)) = text.split_once('/') else {
        if !crate::catalog::looks_like_registry(text) {
            bail!("{text:?} is not a registry: use HOST[:PORT][/PREFIX], e.g. 127.0.0.1:5000/team");
        }
        return Ok((text.to_string(), String::new()));
    };
    if !crate::catalog::looks_like_registry(registry) {
        bail!("{text:?} does not start with a registry: use HOST[:PORT][/PREFIX], e.g. 127.0.0.1:5000/team");
    }
    let parsed = ImageRef::parse(text)
        .with_context(|| format!("{text:?} is not REGISTRY/REPOSITORY-PREFIX"))?;
    if parsed.tag.is_some() || parsed.digest.is_some() {
        bail!("{text:?}: sync takes a registry and repository prefix, without tag or digest (use --tags to pick tags)");
    }
    Ok((parsed.registry, parsed.repository))
}

pub fn run(args: SyncArgs) -> Result<()> {
    let (src_registry, src_prefix) = parse_endpoint(&args.src)?;
    let (dst_registry, dst_prefix) = parse_endpoint(&args.dst)?;
    if let Some(glob) = &args.tags {
        if !is_tag_glob(glob) {
            bail!("--tags {glob:?}: a tag glob is up to 128 of [A-Za-z0-9_.-*]");
        }
    }
    if src_prefix.is_empty() && dst_prefix.is_empty() && src_registry == dst_registry {
        bail!("source and destination are the same registry: nothing to sync");
    }
    let session = Session::new(&args.client)?;
    let side = |creds: &Option<String>| -> Result<Option<Client>> {
        let Some(creds) = creds else { return Ok(None) };
        let c = &args.client;
        Ok(Some(Client::new(client_config(
            &c.insecure,
            c.ca_file.as_ref(),
            Some(creds),
        )?)))
    };
    let (src_client, dst_client) = (side(&args.src_creds)?, side(&args.dest_creds)?);
    let source = src_client
        .as_ref()
        .unwrap_or(&session.client)
        .registry(&src_registry)?;
    let target = RegistryTarget::new(
        dst_client
            .as_ref()
            .unwrap_or(&session.client)
            .registry(&dst_registry)?,
        args.blob_jobs.max(1),
    );
    let options = SyncOptions {
        tags: args.tags.clone(),
        referrers: args.referrers,
        jobs: args.jobs.max(1),
        blob_jobs: args.blob_jobs.max(1),
        dry_run: args.dry_run,
    };
    loop {
        let on_item = |item: &SyncItem| print_item(&session, item);
        let outcome = session.runtime.block_on(sync(
            &source,
            &src_prefix,
            &target,
            &dst_prefix,
            &options,
            &session.progress,
            &on_item,
        ));
        let summary = match (outcome, args.watch) {
            (Ok(summary), _) => summary,
            (Err(e), None) => return Err(e.into()),
            // Watching: a source that is down now may be back next time.
            (Err(e), Some(every)) => {
                eprintln!(
                    "berth: sync failed: {e}; next run in {}",
                    humantime::format_duration(every)
                );
                std::thread::sleep(every);
                continue;
            }
        };
        print_summary(&session, &args, &summary);
        let Some(every) = args.watch else {
            if summary.failed > 0 {
                bail!(
                    "{} of the images failed to sync (see above)",
                    summary.failed
                );
            }
            if summary.repositories == 0 {
                bail!("no repository under {} (the catalog lists none)", args.src);
            }
            return Ok(());
        };
        std::thread::sleep(every);
    }
}

fn print_item(session: &Session, item: &SyncItem) {
    if session.json {
        println!("{}", serde_json::to_value(item).unwrap_or_default());
        return;
    }
    let tag = item.tag.as_deref().unwrap_or("*");
    let digest = item
        .digest
        .as_ref()
        .map(|d| format!(" {}", crate::progress::short(d)))
        .unwrap_or_default();
    let line = match item.action {
        SyncAction::Copied => format!(
            "copied   {}:{tag} -> {}{digest} ({})",
            item.repository,
            item.destination,
            human_bytes(item.bytes_copied)
        ),
        SyncAction::Skipped => {
            format!("skipped  {}:{tag}{digest} (already there)", item.repository)
        }
        SyncAction::WouldCopy => {
            format!(
                "would copy {}:{tag} -> {}{digest}",
                item.repository, item.destination
            )
        }
        SyncAction::Failed => {
            // Failures are shown even with --quiet.
            eprintln!(
                "failed   {}:{tag}: {}",
                item.repository,
                item.error.as_deref().unwrap_or("unknown error")
            );
            return;
        }
    };
    session.progress.line(&line);
}

fn print_summary(session: &Session, args: &SyncArgs, summary: &SyncSummary) {
    if session.json {
        println!("{}", json!({ "summary": summary }));
        return;
    }
    if args.client.quiet {
        return;
    }
    let would = if args.dry_run {
        format!(", {} would be copied", summary.would_copy)
    } else {
        String::new()
    };
    eprintln!(
        "sync {} -> {}: {} repositories, {} copied ({}), {} skipped, {} failed{would}",
        args.src,
        args.dst,
        summary.repositories,
        summary.copied,
        human_bytes(summary.bytes_copied),
        summary.skipped,
        summary.failed
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(
            parse_endpoint("127.0.0.1:5000/team").unwrap(),
            ("127.0.0.1:5000".into(), "team".into())
        );
        assert_eq!(
            parse_endpoint("http://127.0.0.1:5000/").unwrap(),
            ("127.0.0.1:5000".into(), String::new())
        );
        assert_eq!(
            parse_endpoint("localhost:6000/backup/team").unwrap(),
            ("localhost:6000".into(), "backup/team".into())
        );
        for bad in [
            "team",
            "127.0.0.1:5000/app:1",
            "127.0.0.1:5000/Bad",
            "app/x",
        ] {
            assert!(parse_endpoint(bad).is_err(), "{bad}");
        }
    }
}
