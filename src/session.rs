//! What every image command shares: the client flags ([`ClientArgs`],
//! [`TransferArgs`]) and the [`Session`] made from them (registry client,
//! local store, progress output and async runtime), which copies an image
//! and reports the copy.

use std::path::PathBuf;

use anyhow::{Context, Result};
use berth_client::copy::{copy_image, CopyOptions, CopyReport, Platforms};
use berth_client::credentials::Credentials;
use berth_client::image::Platform;
use berth_client::location::{default_store_dir, Location};
use berth_client::open::{open_dest, open_source, Opened};
use berth_client::registry::{Client, ClientConfig};
use clap::Args;

use crate::progress::{human_bytes, CliProgress, Mode};

/// Options every image command shares.
#[derive(Args, Debug, Clone)]
pub struct ClientArgs {
    /// Registry (HOST[:PORT]) to reach over plain HTTP or HTTPS without
    /// certificate checks; repeatable. Loopback registries need no flag.
    #[arg(
        long = "insecure",
        value_name = "REGISTRY",
        env = "BERTH_INSECURE_REGISTRIES",
        value_delimiter = ','
    )]
    pub(crate) insecure: Vec<String>,
    /// Extra CA certificate(s) (PEM) to trust, besides the system's and
    /// /etc/docker/certs.d/HOST/*.crt
    #[arg(long, value_name = "FILE")]
    pub(crate) ca_file: Option<PathBuf>,
    /// USER:PASSWORD to use instead of the stored login
    #[arg(
        long,
        value_name = "USER:PASSWORD",
        env = "BERTH_CREDS",
        hide_env_values = true
    )]
    pub(crate) creds: Option<String>,
    /// Berth's local image store (where `pull` puts images, `push` takes them from)
    #[arg(long, value_name = "DIR", env = "BERTH_STORE")]
    pub(crate) store: Option<PathBuf>,
    /// No progress output
    #[arg(long, short)]
    pub(crate) quiet: bool,
    /// Print the result as JSON on stdout (no progress)
    #[arg(long)]
    pub(crate) json: bool,
}

/// Options of commands that move images.
#[derive(Args, Debug, Clone)]
pub struct TransferArgs {
    /// From a multi-platform image, take the one for OS/ARCH[/VARIANT]
    /// [default: this machine's]
    #[arg(long, value_name = "OS/ARCH")]
    pub(crate) platform: Option<String>,
    /// Copy every platform of a multi-platform image, and the index itself
    #[arg(long, conflicts_with = "platform")]
    pub(crate) all: bool,
    /// Blobs transferred at once
    #[arg(long, short = 'j', default_value_t = 4)]
    pub(crate) jobs: usize,
    /// Keep Docker manifests as they are when writing to oci:DIR (by default
    /// they get OCI media types, so OCI tools can read the layout; that
    /// changes the manifest digest, not the blobs)
    #[arg(long)]
    pub(crate) preserve_digests: bool,
}

/// The registry client settings from `--insecure`, `--ca-file` and `--creds USER:PASSWORD`.
pub(crate) fn client_config(
    insecure: &[String],
    ca_file: Option<&PathBuf>,
    creds: Option<&str>,
) -> Result<ClientConfig> {
    let mut config = ClientConfig {
        insecure_registries: insecure
            .iter()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect(),
        ca_file: ca_file.cloned(),
        ..ClientConfig::default()
    };
    if let Some(creds) = creds {
        let (username, password) = creds
            .split_once(':')
            .context("--creds must be USER:PASSWORD")?;
        config.credentials = Some(Credentials::Basic {
            username: username.to_string(),
            password: password.to_string(),
        });
    }
    Ok(config)
}

pub(crate) struct Session {
    pub(crate) client: Client,
    pub(crate) store: PathBuf,
    pub(crate) progress: CliProgress,
    pub(crate) json: bool,
    pub(crate) runtime: tokio::runtime::Runtime,
}

impl Session {
    pub(crate) fn new(args: &ClientArgs) -> Result<Session> {
        let config = client_config(&args.insecure, args.ca_file.as_ref(), args.creds.as_deref())?;
        Ok(Session {
            client: Client::new(config),
            store: args.store.clone().unwrap_or_else(default_store_dir),
            progress: CliProgress::new(Mode::choose(args.quiet || args.json)),
            json: args.json,
            runtime: tokio::runtime::Runtime::new().context("cannot start the async runtime")?,
        })
    }

    pub(crate) fn copy(
        &self,
        src: &Location,
        dst: &Location,
        transfer: &TransferArgs,
    ) -> Result<CopyReport> {
        self.copy_between(&self.client, &self.client, src, dst, transfer)
    }

    /// [`Session::copy`] with a client (its credentials) per side.
    pub(crate) fn copy_between(
        &self,
        src_client: &Client,
        dst_client: &Client,
        src: &Location,
        dst: &Location,
        transfer: &TransferArgs,
    ) -> Result<CopyReport> {
        let mut options = copy_options(transfer)?;
        options.oci_media_types = matches!(dst, Location::Oci { .. }) && !transfer.preserve_digests;
        self.runtime.block_on(async {
            let copied = async {
                let source = open_source(src_client, src, &self.store).await?;
                if let (Some(wanted), false) = (&transfer.platform, transfer.all) {
                    crate::hints::require_platform(source.as_ref(), wanted).await?;
                }
                let Opened { dest, tag } =
                    open_dest(dst_client, dst, &self.store, options.jobs).await?;
                let report = copy_image(
                    source.as_ref(),
                    dest.as_ref(),
                    tag.as_deref(),
                    &options,
                    &self.progress,
                )
                .await?;
                Ok::<_, anyhow::Error>(report)
            }
            .await;
            match copied {
                Ok(report) => Ok(report),
                Err(e) => Err(crate::hints::explain_missing(src_client, src, e).await),
            }
        })
    }

    pub(crate) fn report(&self, dst: &Location, report: &CopyReport) {
        if self.json {
            let mut value = serde_json::to_value(report).unwrap_or_default();
            value["destination"] = dst.to_string().into();
            println!("{value}");
            return;
        }
        let count = |o| report.blobs.iter().filter(|b| b.outcome == o).count();
        use berth_client::image::BlobOutcome::*;
        let platform = report
            .platform
            .as_ref()
            .map(|p| format!(" ({p})"))
            .unwrap_or_default();
        self.progress.line(&format!(
            "{dst}{platform}: {} blobs: {} copied ({}), {} already there, {} mounted",
            report.blobs.len(),
            count(Copied),
            human_bytes(report.bytes_copied),
            count(Exists),
            count(Mounted),
        ));
        println!("{}", report.digest);
    }
}

fn copy_options(transfer: &TransferArgs) -> Result<CopyOptions> {
    let platforms = if transfer.all {
        Platforms::All
    } else {
        match &transfer.platform {
            Some(p) => Platforms::One(p.parse::<Platform>()?),
            None => Platforms::One(Platform::current()),
        }
    };
    Ok(CopyOptions {
        platforms,
        jobs: transfer.jobs.max(1),
        oci_media_types: false,
    })
}
