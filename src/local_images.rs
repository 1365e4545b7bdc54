//! The local store as docker's image store: `berth images` and `berth rmi`.
//! (Bare names resolving to the store first live in `berth_client::location`.)

use anyhow::{bail, Context, Result};
use berth_client::image::{Manifest, ManifestKind, Platform};
use berth_client::layout::{LayoutEntry, OciLayout};
use berth_client::location::Location;
use berth_client::reference::DOCKER_HUB;
use berth_client::ImageRef;
use clap::Parser;
use serde::Serialize;

use crate::progress::human_bytes;
use crate::session::{ClientArgs, Session};

#[derive(Parser, Debug)]
#[command(after_help = "Examples:\n  berth images\n  berth images --json | jq -r '.[].name'")]
pub struct ImagesArgs {
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Parser, Debug)]
#[command(after_help = "Examples:\n  berth rmi app:1\n  berth rmi 127.0.0.1:5000/app:1 app:2")]
pub struct RmiArgs {
    /// Image names in the local store (as `berth images` shows them)
    #[arg(required = true)]
    names: Vec<String>,
    #[command(flatten)]
    client: ClientArgs,
}

/// One row of `berth images`.
#[derive(Serialize, Debug)]
struct ImageRow {
    /// The full name in the store (`docker.io/library/app:1`).
    name: String,
    repository: String,
    tag: String,
    digest: String,
    created: Option<String>,
    /// Compressed bytes: config and layers of this machine's platform.
    size: u64,
}

/// How docker prints a repository: Docker Hub's official images without
/// `docker.io/library/`, others with their registry.
fn short_repository(r: &ImageRef) -> String {
    if r.registry == DOCKER_HUB {
        r.repository
            .strip_prefix("library/")
            .unwrap_or(&r.repository)
            .to_string()
    } else {
        format!("{}/{}", r.registry, r.repository)
    }
}

pub fn images(args: ImagesArgs) -> Result<()> {
    let session = Session::new(&args.client)?;
    let layout = OciLayout::new(&session.store);
    let rows = session.runtime.block_on(async {
        if !layout.exists().await {
            return Ok::<_, anyhow::Error>(Vec::new());
        }
        let mut rows = Vec::new();
        for entry in layout.entries().await? {
            let Some(name) = entry.name.clone() else {
                continue;
            };
            let Ok(reference) = ImageRef::parse(&name) else {
                continue;
            };
            let (created, size) = describe(&layout, &entry)
                .await
                .unwrap_or((None, entry.size));
            rows.push(ImageRow {
                repository: short_repository(&reference),
                tag: reference.tag.clone().unwrap_or_else(|| "<none>".into()),
                digest: entry.digest.to_string(),
                created,
                size,
                name,
            });
        }
        rows.sort_by(|a, b| (&a.repository, &a.tag).cmp(&(&b.repository, &b.tag)));
        Ok(rows)
    })?;
    if args.client.json {
        println!("{}", serde_json::to_string(&rows)?);
        return Ok(());
    }
    let width = rows
        .iter()
        .map(|r| r.repository.len())
        .max()
        .unwrap_or(0)
        .max("REPOSITORY".len());
    let tag_width = rows
        .iter()
        .map(|r| r.tag.len())
        .max()
        .unwrap_or(0)
        .max("TAG".len());
    println!(
        "{:<width$}   {:<tag_width$}   {:<19}   {:<16}   SIZE",
        "REPOSITORY", "TAG", "DIGEST", "CREATED"
    );
    for r in &rows {
        // docker's short form: the first 12 hex digits.
        let short = r.digest.trim_start_matches("sha256:");
        let short = format!("sha256:{}", &short[..short.len().min(12)]);
        println!(
            "{:<width$}   {:<tag_width$}   {:<19}   {:<16}   {}",
            r.repository,
            r.tag,
            short,
            r.created.as_deref().map(ago).unwrap_or_else(|| "-".into()),
            human_bytes(r.size)
        );
    }
    Ok(())
}

/// The creation time and size of an entry (this machine's platform of an index).
async fn describe(layout: &OciLayout, entry: &LayoutEntry) -> Result<(Option<String>, u64)> {
    let mut manifest = Manifest::new(
        layout.read_small_blob(&entry.digest).await?,
        entry.media_type.clone(),
    );
    if let ManifestKind::Index { manifests } = manifest.parse()? {
        let chosen = berth_client::copy::select_platform(&manifests, &Platform::current())
            .ok()
            .or(manifests.first())
            .context("an empty index")?;
        manifest = Manifest::new(
            layout.read_small_blob(&chosen.blob.digest).await?,
            chosen.blob.media_type.clone(),
        );
    }
    let ManifestKind::Image { config, layers } = manifest.parse()? else {
        bail!("nested index");
    };
    let size = config.size + layers.iter().map(|l| l.size).sum::<u64>();
    let config: serde_json::Value =
        serde_json::from_slice(&layout.read_small_blob(&config.digest).await?)?;
    Ok((config["created"].as_str().map(str::to_string), size))
}

/// "5 minutes ago", as docker's CREATED column.
fn ago(rfc3339: &str) -> String {
    let Ok(then) = humantime::parse_rfc3339_weak(
        rfc3339
            .trim_end_matches('Z')
            .split('.')
            .next()
            .unwrap_or(rfc3339),
    ) else {
        return rfc3339.to_string();
    };
    let Ok(elapsed) = std::time::SystemTime::now().duration_since(then) else {
        return "just now".into();
    };
    let s = elapsed.as_secs();
    let (n, unit) = match s {
        0..=59 => return "just now".into(),
        60..=3599 => (s / 60, "minute"),
        3600..=86_399 => (s / 3600, "hour"),
        86_400..=2_591_999 => (s / 86_400, "day"),
        2_592_000..=31_535_999 => (s / 2_592_000, "month"),
        _ => (s / 31_536_000, "year"),
    };
    format!("{n} {unit}{} ago", if n == 1 { "" } else { "s" })
}

pub fn rmi(args: RmiArgs) -> Result<()> {
    let session = Session::new(&args.client)?;
    let layout = OciLayout::new(&session.store);
    for name in &args.names {
        let reference = ImageRef::parse(name.strip_prefix("local:").unwrap_or(name))?;
        let full = Location::store_name(&reference);
        let removed = session.runtime.block_on(async {
            if !layout.exists().await {
                return Ok(false);
            }
            layout.remove_tag(&full).await
        })?;
        if !removed {
            bail!(
                "{name} is not in the local store ({}); `berth images` lists what is there, `berth rm REGISTRY/NAME:TAG` removes from a registry",
                session.store.display()
            );
        }
        if !args.client.quiet && !args.client.json {
            println!("Untagged: {full}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repositories_print_as_docker_does() {
        let short = |s: &str| short_repository(&ImageRef::parse(s).unwrap());
        assert_eq!(short("app:1"), "app");
        assert_eq!(short("team/app"), "team/app");
        assert_eq!(short("127.0.0.1:5000/app:1"), "127.0.0.1:5000/app");
    }

    #[test]
    fn created_reads_as_an_age() {
        assert_eq!(ago("not a date"), "not a date");
        assert!(ago("2000-01-01T00:00:00Z").ends_with("years ago"));
        assert!(ago("2000-01-01T00:00:00.123456789Z").ends_with("years ago"));
    }
}
