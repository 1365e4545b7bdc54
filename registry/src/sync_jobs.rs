//! `[[sync]]` jobs: pull repositories from a remote registry into this one on
//! a schedule (replication), with the client's sync engine
//! (`berth_client::sync`) writing straight into this registry's storage, as
//! the pull-through cache does. Bad tables fail at start naming the key.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use berth_client::error::{Error as ClientError, Result as ClientResult};
use berth_client::image::{
    BlobInfo, BlobOutcome, BlobProgress, ImageDest, ImageSource, Manifest, NoProgress,
};
use berth_client::registry::{Client, ClientConfig, Registry};
use berth_client::sync::{
    is_tag_glob, sync, SyncAction, SyncItem, SyncOptions, SyncSummary, SyncTarget,
};
use berth_storage::{Digest, Storage};
use serde::Deserialize;

/// One `[[sync]]` table as written.
#[derive(Deserialize, Debug, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct SyncJobConfig {
    /// `https://HOST[:PORT][/PREFIX]`: the repositories under PREFIX (all without one).
    pub source: String,
    /// Local repository prefix they are written under (the source prefix is replaced).
    #[serde(default)]
    pub prefix: String,
    /// Tag glob (`*` matches anything); every tag by default.
    pub tags: Option<String>,
    /// e.g. "10m" (default "1h"): the pause between the end of a run and the next.
    pub interval: Option<String>,
    /// Also copy the manifests referring to each image (signatures, SBOMs).
    #[serde(default)]
    pub referrers: bool,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Docker config file with credentials for the source (default: `~/.docker/config.json`).
    pub docker_config: Option<String>,
    /// Default true; false accepts any certificate (and plain HTTP) from the source.
    pub tls_verify: Option<bool>,
    /// Extra CA certificates (PEM) for the source's HTTPS.
    pub ca_file: Option<String>,
    /// Images copied at once (default 3).
    pub jobs: Option<usize>,
}

pub const DEFAULT_SYNC_INTERVAL: Duration = Duration::from_secs(3600);

/// One compiled job.
pub struct SyncJob {
    /// The source URL as written, for logs.
    pub source_url: String,
    source: Arc<Registry>,
    source_prefix: String,
    prefix: String,
    pub interval: Duration,
    options: SyncOptions,
}

impl std::fmt::Debug for SyncJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncJob")
            .field("source", &self.source_url)
            .field("prefix", &self.prefix)
            .field("interval", &self.interval)
            .finish()
    }
}

/// Every `[[sync]]` job.
#[derive(Debug, Default)]
pub struct SyncJobs {
    pub jobs: Vec<Arc<SyncJob>>,
}

impl SyncJobs {
    /// Compile the tables; errors name the table and key (`sync[0].source`).
    pub fn from_config(configs: &[SyncJobConfig]) -> Result<SyncJobs, String> {
        let jobs = configs
            .iter()
            .enumerate()
            .map(|(i, c)| SyncJob::from_config(&format!("sync[{i}]"), c).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(SyncJobs { jobs })
    }

    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }
}

/// `http(s)://HOST[:PORT][/PREFIX]` → (host, prefix, plain HTTP).
fn source_parts(at: &str, url: &str) -> Result<(String, String, bool), String> {
    let bad = |why: &str| format!("{at}.source = {url:?}: {why}");
    let remote = crate::remote::parse_remote_url(url)
        .map_err(|why| bad(&format!("{why}, e.g. https://registry.example.com/team")))?;
    if !remote.path.is_empty() && !berth_oci::names::is_valid_repository_name(remote.path) {
        return Err(bad(
            "the path is a repository prefix: lowercase components joined by /",
        ));
    }
    Ok((remote.host, remote.path.to_string(), remote.http))
}

impl SyncJob {
    fn from_config(at: &str, c: &SyncJobConfig) -> Result<SyncJob, String> {
        let (host, source_prefix, http) = source_parts(at, &c.source)?;
        let prefix = c.prefix.trim_end_matches('/').to_string();
        if !prefix.is_empty() && !berth_oci::names::is_valid_repository_name(&prefix) {
            return Err(format!(
                "{at}.prefix = {:?}: use a repository name prefix such as \"replica/team\" (lowercase, components joined by /)",
                c.prefix
            ));
        }
        if prefix.is_empty() && source_prefix.is_empty() {
            // Fine (same names), but a source prefix naming one repository needs a local name.
        }
        if let Some(glob) = &c.tags {
            if !is_tag_glob(glob) {
                return Err(format!(
                    "{at}.tags = {glob:?}: a tag glob is up to 128 of [A-Za-z0-9_.-*]"
                ));
            }
        }
        let interval = match &c.interval {
            Some(text) => humantime::parse_duration(text)
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or_else(|| {
                    format!("{at}.interval = {text:?}: use a duration such as \"10m\"")
                })?,
            None => DEFAULT_SYNC_INTERVAL,
        };
        let credentials = crate::remote::basic_credentials(at, &c.username, &c.password)?;
        let ca_file = match &c.ca_file {
            Some(path) if !std::path::Path::new(path).is_file() => {
                return Err(format!("{at}.ca_file = {path:?}: no such file"))
            }
            other => other.as_ref().map(PathBuf::from),
        };
        let mut config = ClientConfig {
            credentials,
            ca_file,
            ..ClientConfig::default()
        };
        if let Some(path) = &c.docker_config {
            config.docker_config = path.into();
        }
        if http || c.tls_verify == Some(false) {
            config.insecure_registries = vec![host.clone()];
        }
        let jobs = match c.jobs {
            Some(0) => return Err(format!("{at}.jobs = 0: use at least 1")),
            Some(n) => n,
            None => SyncOptions::default().jobs,
        };
        let source = Client::new(config)
            .registry(&host)
            .map_err(|e| format!("{at}.source = {:?}: {e}", c.source))?;
        Ok(SyncJob {
            source_url: c.source.clone(),
            source,
            source_prefix,
            prefix,
            interval,
            options: SyncOptions {
                tags: c.tags.clone(),
                referrers: c.referrers,
                jobs,
                ..SyncOptions::default()
            },
        })
    }

    /// One run: copy what the storage lacks; a warning per failed image.
    pub async fn run_once(&self, storage: Arc<dyn Storage>) -> ClientResult<SyncSummary> {
        let target = StorageTarget { storage };
        let on_item = |item: &SyncItem| {
            if item.action == SyncAction::Failed {
                tracing::warn!(
                    source = %self.source_url,
                    repository = %item.repository,
                    tag = item.tag.as_deref().unwrap_or(""),
                    error = item.error.as_deref().unwrap_or(""),
                    "sync: image failed"
                );
            }
        };
        sync(
            &self.source,
            &self.source_prefix,
            &target,
            &self.prefix,
            &self.options,
            &NoProgress,
            &on_item,
        )
        .await
    }
}

/// This registry's storage as a sync destination.
struct StorageTarget {
    storage: Arc<dyn Storage>,
}

fn storage_error(action: &str, e: impl std::fmt::Display) -> ClientError {
    ClientError::io(action.to_string(), io::Error::other(e.to_string()))
}

#[async_trait]
impl SyncTarget for StorageTarget {
    fn describe(&self, repository: &str) -> String {
        format!("local {repository}")
    }

    async fn tag_digest(&self, repository: &str, tag: &str) -> ClientResult<Option<Digest>> {
        self.storage
            .tag_resolve(repository, tag)
            .await
            .map_err(|e| storage_error("reading a local tag", e))
    }

    async fn has_manifest(&self, repository: &str, digest: &Digest) -> ClientResult<bool> {
        Ok(self
            .storage
            .manifest_meta(repository, digest)
            .await
            .map_err(|e| storage_error("reading a local manifest", e))?
            .is_some())
    }

    fn dest(&self, repository: &str) -> ClientResult<Box<dyn ImageDest>> {
        Ok(Box::new(StorageDest {
            storage: self.storage.clone(),
            repository: repository.to_string(),
        }))
    }
}

struct StorageDest {
    storage: Arc<dyn Storage>,
    repository: String,
}

#[async_trait]
impl ImageDest for StorageDest {
    fn describe(&self) -> String {
        format!("local {}", self.repository)
    }

    async fn put_blob(
        &self,
        blob: &BlobInfo,
        source: &dyn ImageSource,
        progress: &dyn BlobProgress,
    ) -> ClientResult<BlobOutcome> {
        let s = self.storage.as_ref();
        let repo = self.repository.as_str();
        let err = |what: &str, e: berth_storage::StorageError| storage_error(what, e);
        if s.blob_size(&blob.digest)
            .await
            .map_err(|e| err("checking a blob", e))?
            .is_some()
        {
            if s.blob_linked(repo, &blob.digest)
                .await
                .map_err(|e| err("checking a blob", e))?
            {
                return Ok(BlobOutcome::Exists);
            }
            s.link_blob(repo, &blob.digest)
                .await
                .map_err(|e| err("linking a blob", e))?;
            return Ok(BlobOutcome::Mounted);
        }
        let upload = s
            .upload_create(repo)
            .await
            .map_err(|e| err("starting an upload", e))?;
        let stream = source.blob(blob, 0).await?;
        // The storage verifies digest (and we the size) before the blob is visible.
        let stored = s
            .upload_complete(repo, &upload.id, &blob.digest, Some(stream))
            .await;
        match stored {
            Ok(n) if n == blob.size => {
                progress.advance(n);
                Ok(BlobOutcome::Copied)
            }
            Ok(n) => Err(ClientError::SizeMismatch {
                what: blob.digest.to_string(),
                expected: blob.size,
                actual: n,
            }),
            Err(e) => {
                let _ = s.upload_cancel(repo, &upload.id).await;
                Err(err("storing a blob", e))
            }
        }
    }

    async fn put_manifest(&self, manifest: &Manifest, tag: Option<&str>) -> ClientResult<()> {
        let parsed = crate::manifest::parse(&manifest.bytes, Some(&manifest.media_type))
            .map_err(|e| ClientError::malformed("manifest", e.message))?;
        self.storage
            .manifest_put(
                &self.repository,
                &manifest.digest,
                manifest.bytes.clone(),
                &parsed.meta,
                tag,
            )
            .await
            .map_err(|e| storage_error("storing a manifest", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile(toml_text: &str) -> Result<SyncJobs, String> {
        #[derive(Deserialize)]
        struct File {
            sync: Vec<SyncJobConfig>,
        }
        let file: File = toml::from_str(toml_text).map_err(|e| e.to_string())?;
        SyncJobs::from_config(&file.sync)
    }

    #[test]
    fn good_tables_compile() {
        let jobs = compile(
            "[[sync]]\nsource = \"https://registry.example.com/team\"\nprefix = \"replica/team\"\ntags = \"v*\"\ninterval = \"10m\"\nreferrers = true\n",
        )
        .expect("valid");
        let job = &jobs.jobs[0];
        assert_eq!(job.source_prefix, "team");
        assert_eq!(job.prefix, "replica/team");
        assert_eq!(job.interval, Duration::from_secs(600));
        assert!(job.options.referrers);
        let job = &compile("[[sync]]\nsource = \"http://127.0.0.1:5000\"\n")
            .expect("valid")
            .jobs[0];
        assert_eq!(
            (job.source_prefix.as_str(), job.interval),
            ("", DEFAULT_SYNC_INTERVAL)
        );
    }

    #[test]
    fn bad_tables_name_the_key() {
        for (text, key) in [
            (
                "[[sync]]\nsource = \"registry.example.com\"\n",
                "sync[0].source",
            ),
            ("[[sync]]\nsource = \"https://h/Team\"\n", "sync[0].source"),
            ("[[sync]]\nsource = \"https://u@h/t\"\n", "sync[0].source"),
            (
                "[[sync]]\nsource = \"https://h\"\nprefix = \"A B\"\n",
                "sync[0].prefix",
            ),
            (
                "[[sync]]\nsource = \"https://h\"\ntags = \"v1/x\"\n",
                "sync[0].tags",
            ),
            (
                "[[sync]]\nsource = \"https://h\"\ninterval = \"often\"\n",
                "sync[0].interval",
            ),
            (
                "[[sync]]\nsource = \"https://h\"\ninterval = \"0s\"\n",
                "sync[0].interval",
            ),
            (
                "[[sync]]\nsource = \"https://h\"\nusername = \"u\"\n",
                "sync[0]: set both",
            ),
            (
                "[[sync]]\nsource = \"https://h\"\nca_file = \"/nonexistent/ca.pem\"\n",
                "sync[0].ca_file",
            ),
            (
                "[[sync]]\nsource = \"https://h\"\njobs = 0\n",
                "sync[0].jobs",
            ),
            (
                "[[sync]]\nsource = \"https://h\"\nintervall = \"1m\"\n",
                "intervall",
            ),
        ] {
            let e = compile(text).expect_err(text);
            assert!(e.contains(key), "{text}: {e}");
        }
    }
}
