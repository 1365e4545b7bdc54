//! `berth catalog HOST` (and `berth ls HOST`): the repositories of a registry.

use anyhow::Result;
use clap::Parser;
use serde_json::json;

use crate::session::{ClientArgs, Session};

#[derive(Parser, Debug)]
#[command(
    after_help = "Examples:\n  berth catalog 127.0.0.1:5000\n  berth ls registry.example.com --json"
)]
pub struct CatalogArgs {
    /// Registry HOST[:PORT]
    registry: String,
    /// Repositories asked for per request (the rest follow `Link` pages)
    #[arg(long, default_value_t = 1000, value_name = "N")]
    page_size: usize,
    #[command(flatten)]
    client: ClientArgs,
}

/// Whether `berth ls ARG` names a registry rather than a repository: one
/// component, spelled as a host (`localhost`, a dot, or `NAME:PORT`).
pub fn looks_like_registry(arg: &str) -> bool {
    let arg = arg.trim_end_matches('/');
    if arg.contains('/') || arg.contains('@') {
        return false;
    }
    let host = match arg.rsplit_once(':') {
        Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => host,
        Some(_) => return false,
        None => arg,
    };
    host == "localhost" || host.contains('.') || arg.contains(':')
}

pub fn catalog(args: CatalogArgs) -> Result<()> {
    list(&args.registry, args.page_size, &args.client)
}

pub fn list(registry: &str, page_size: usize, client: &ClientArgs) -> Result<()> {
    let session = Session::new(client)?;
    let registry = registry
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_end_matches('/');
    let repositories = session
        .runtime
        .block_on(async { session.client.registry(registry)?.catalog(page_size).await })?;
    if session.json {
        println!("{}", json!(repositories));
    } else {
        for r in repositories {
            println!("{r}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registries_are_told_from_repositories() {
        for registry in [
            "127.0.0.1:5000",
            "localhost",
            "registry.example.com",
            "ghcr.io/",
            "myhost:5000",
        ] {
            assert!(looks_like_registry(registry), "{registry}");
        }
        for repository in [
            "app",
            "team/app",
            "127.0.0.1:5000/app",
            "app:latest",
            "app@sha256:00",
        ] {
            assert!(!looks_like_registry(repository), "{repository}");
        }
    }
}
