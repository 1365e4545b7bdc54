//! `berth ship`: build every service that has a build context, push it, and deploy exactly
//! the digests that were pushed. Made for CI: plain log lines on stderr, the result (or the
//! `--json` report) on stdout, non-zero exit on any failure.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use berth_deploy::ship::{image_builds, ImageBuild};
use berth_deploy::swarm;
use clap::Args;
use serde_json::json;

use crate::build::{build_and_push, ServiceBuild};
use crate::deploy::{deploy_loaded, deploy_swarm, load, load_swarm, DeployArgs};
use crate::session::ClientArgs;

#[derive(Args, Debug)]
// deploy's --check cannot plan a ship (its images are not built yet): hidden here, and
// refused with what to run instead.
#[command(mut_arg("check", |a| a.hide(true)))]
pub struct ShipArgs {
    #[command(flatten)]
    deploy: DeployArgs,
    /// Folder the services' build contexts are relative to [default: the app file's folder]
    #[arg(long, value_name = "DIR")]
    context: Option<PathBuf>,
    /// Build every step again instead of reusing cached layers
    #[arg(long)]
    no_cache: bool,
    /// The build cache (base images, layers, keys) [default: beside the local store]
    #[arg(long, value_name = "DIR", env = "BERTH_BUILD_CACHE")]
    cache_dir: Option<PathBuf>,
}

pub fn ship(args: ShipArgs) -> Result<()> {
    if args.deploy.check {
        bail!(
            "berth ship --check would have nothing to show: the images do not exist yet. \
             Use `berth build --dry-run CONTEXT` for a build's plan and `berth deploy --check` \
             for the deploy's"
        );
    }
    if args.deploy.swarm {
        let desired = load_swarm(&args.deploy.common)?;
        let builds = swarm::image_builds(&desired).map_err(anyhow::Error::msg)?;
        let (pushed, report) = build_all(&args, &builds)?;
        return deploy_swarm(
            &args.deploy,
            pushed,
            Some(("builds", serde_json::Value::Array(report))),
        );
    }
    let (source, desired) = load(&args.deploy.common)?;
    let builds = image_builds(&desired).map_err(anyhow::Error::msg)?;
    let (pushed, report) = build_all(&args, &builds)?;
    deploy_loaded(
        &args.deploy,
        &source,
        desired,
        pushed,
        Some(("builds", serde_json::Value::Array(report))),
    )
}

/// Builds and pushes every image, in order; the first failure stops the ship before
/// anything is deployed. Returns image → pushed digest, and the `builds` report.
fn build_all(
    args: &ShipArgs,
    builds: &[ImageBuild],
) -> Result<(BTreeMap<String, String>, Vec<serde_json::Value>)> {
    let base = match &args.context {
        Some(dir) => dir.clone(),
        None => args
            .deploy
            .common
            .app
            .parent()
            .map(|dir| dir.to_path_buf())
            .unwrap_or_default(),
    };
    if builds.is_empty() {
        eprintln!("ship: no service has a build context; deploying the images as they are");
    }
    let mut pushed = BTreeMap::new();
    let mut report = Vec::new();
    for (index, image) in builds.iter().enumerate() {
        let relative = image.build.context.trim_start_matches("./");
        let context = base.join(if relative.is_empty() { "." } else { relative });
        let services: Vec<&str> = image.services.iter().map(String::as_str).collect();
        eprintln!(
            "ship: [{}/{}] building {} ({}) from {}",
            index + 1,
            builds.len(),
            image.image,
            services.join(", "),
            context.display()
        );
        let service_build = ServiceBuild {
            context: context.clone(),
            dockerfile: image.build.dockerfile.clone(),
            args: image.build.args.clone(),
            target: image.build.target.clone(),
            reference: image.image.clone(),
            no_cache: args.no_cache,
            cache_dir: args.cache_dir.clone(),
        };
        let client = ClientArgs {
            insecure: args.deploy.insecure.clone(),
            ca_file: args.deploy.ca_file.clone(),
            creds: args.deploy.creds.clone(),
            store: None,
            quiet: false,
            json: false,
        };
        let digest = build_and_push(&service_build, client).with_context(|| {
            format!(
                "ship: building {} for {} failed; nothing was deployed",
                image.image,
                services.join(", ")
            )
        })?;
        eprintln!("ship: pushed {}@{digest}", image.image);
        pushed.insert(image.image.clone(), digest.clone());
        report.push(json!({
            "image": image.image,
            "digest": digest,
            "services": image.services,
            "hosts": image.hosts,
            "context": context.display().to_string(),
        }));
    }
    Ok((pushed, report))
}
