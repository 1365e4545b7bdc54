//! The second half of `berth build`: execute a [`Plan`] into an OCI image.
//!
//! - FROM images are pulled with berth-client into the build cache's OCI
//!   layout and each layer is unpacked once into its own directory (in
//!   overlayfs format, see [`layer`]), shared by every build.
//! - RUN mounts an overlay (lower = the image's layer directories, upper =
//!   a new directory) and runs `runc` on a bundle ([`runc`]); the upper
//!   directory becomes the new layer directory and its tar is the layer.
//! - COPY/ADD stage just the copied files in a new directory ([`files`]),
//!   which likewise becomes the layer.
//! - Every layer step is cached under the plan's chained key, completed
//!   with the content hash of what COPY/ADD read; a hit reuses the layer.
//!
//! Nothing is left mounted or running: mounts and runc containers are
//! undone by guards on every path out.
//!
//! The pieces, by what they do:
//! - [`Executor::build`] (here) runs each platform's plan and writes the
//!   image or index; `multiplatform` prepares one plan per platform;
//! - `stage` runs a stage's steps (cache lookups, history), `run_step`
//!   a RUN (runc or chroot), `copy` a COPY/ADD;
//! - `image` pulls base images and writes the config and manifest;
//! - `cache` is the key → layer index and `--cache-from`/`--cache-to`;
//! - `layer_store` unpacks and commits layer directories, `scratch` holds
//!   per-step directories and read-only views of layers;
//! - `mounts` sets up `RUN --mount`s; `isolation` picks runc or the chroot
//!   fallback; `error` is [`ExecError`].

mod cache;
pub mod chroot;
mod copy;
mod error;
pub mod files;
pub mod git;
mod git_limits;
mod image;
mod isolation;
pub mod layer;
mod layer_store;
pub mod mounts;
mod multiplatform;
pub mod netfiles;
pub mod outputs;
mod remote;
mod run_step;
pub mod runc;
mod scratch;
mod stage;

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use berth_client::image::{BlobInfo, ImageDest};
use berth_client::import::ContainerConfig;
use berth_client::layout::{OciLayout, OciLayoutDest};
use berth_client::registry::Client;
use berth_client::Manifest;
use berth_oci::Digest;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::plan::Plan;
use crate::{BuildError, DockerIgnore, PlanOptions};

use cache::CacheEntry;
pub use cache::CACHE_MEDIA_TYPE;
pub use error::ExecError;
use error::{IoContext, R};
pub use image::{to_container_config, to_stage_config};
pub use isolation::Isolation;

/// What to build and where the cache lives.
pub struct BuildOptions {
    pub context: PathBuf,
    /// The Dockerfile's name for messages (`Dockerfile`, the `-f` name).
    pub dockerfile_name: String,
    pub dockerfile_text: String,
    pub ignore: Option<DockerIgnore>,
    pub plan_options: PlanOptions,
    /// The build cache: an OCI layout of base images and layers, the
    /// unpacked layer directories and the key → layer index.
    pub cache_dir: PathBuf,
    /// Do not reuse cached layers (they are still written for next time).
    pub no_cache: bool,
    /// SOURCE_DATE_EPOCH: clamps file times and sets the image's dates.
    pub source_date_epoch: Option<u64>,
    /// `--cache-from REF`: layer caches pushed by earlier builds
    /// (`--cache-to`), read before building; a missing one is a warning.
    pub cache_from: Vec<String>,
    /// `--cache-to REF`: push this build's cache (its keys and layers).
    pub cache_to: Option<String>,
    /// `--add-host NAME:IP`: lines added to each RUN's `/etc/hosts`
    /// (see [`netfiles::parse_add_host`]).
    pub add_hosts: Vec<(String, std::net::IpAddr)>,
    /// `--secret`: values by id, for `RUN --mount=type=secret`.
    pub secrets: BTreeMap<String, mounts::Secret>,
    /// `--ssh ID=SOCKET`: agent sockets by id, for `RUN --mount=type=ssh`.
    pub ssh_agents: BTreeMap<String, PathBuf>,
    /// `--platform A,B,...` (normalised): one image per platform under an
    /// OCI index. Empty: one image for `plan_options.target_platform`.
    pub platforms: Vec<String>,
    /// `--compression`: of the layers this build makes or takes from its
    /// cache (recompressed when cached in another one).
    pub compression: outputs::Compression,
    /// Recompress the base images' layers too (BuildKit's
    /// `force-compression=true`); otherwise they are kept as pulled.
    pub force_compression: bool,
    /// `--label K=V`: added to the image config's labels (over LABEL).
    pub labels: BTreeMap<String, String>,
    /// `--annotation`: manifest, index and descriptor annotations.
    pub annotations: Vec<outputs::Annotation>,
    /// Berth's local image store: a bare `FROM NAME` it holds is taken from
    /// there before the registry (as docker does); None: registry only.
    pub local_store: Option<PathBuf>,
}

/// A built image (or index of images), in the cache's OCI layout under `tag`.
pub struct Built {
    /// The first platform's plan.
    pub plan: Plan,
    /// The image manifest, or the index of a multi-platform build.
    pub manifest: Manifest,
    /// The (first) image's config.
    pub config: BlobInfo,
    /// One image per platform.
    pub images: Vec<BuiltImage>,
    pub layout: PathBuf,
    pub tag: String,
    pub steps: usize,
    pub cached: usize,
    /// How RUN steps were isolated (reported to the user).
    pub isolation: String,
}

/// One platform's image of a build.
pub struct BuiltImage {
    pub platform: String,
    pub manifest: Manifest,
    pub config: BlobInfo,
    /// The unpacked layer directories, bottom first (overlay format), for
    /// `--output type=local`.
    pub layer_dirs: Vec<PathBuf>,
}

/// A layer of an image being built, with its unpacked directory.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct LayerRecord {
    diff_id: Digest,
    blob: BlobInfo,
}

#[derive(Clone, Debug)]
struct Layer {
    record: LayerRecord,
    dir: PathBuf,
}

/// A resolved base image (or `COPY --from=IMAGE` source).
#[derive(Clone)]
struct ImageInfo {
    digest: Digest,
    config: ContainerConfig,
    created: String,
    layers: Vec<Layer>,
    history: Vec<Value>,
}

/// The result of a stage.
#[derive(Clone)]
struct StageResult {
    layers: Vec<Layer>,
    history: Vec<Value>,
    key: String,
    created: String,
}

/// Runs one build: holds the options, the cache's paths and what the
/// build has used so far (cache entries, fetched URLs, Git commits).
pub struct Executor<'a> {
    options: &'a BuildOptions,
    client: &'a Client,
    runtime: &'a tokio::runtime::Handle,
    progress: &'a (dyn Fn(&str) + Sync),
    layout: OciLayout,
    layers_dir: PathBuf,
    keys_dir: PathBuf,
    run_dir: PathBuf,
    state_dir: PathBuf,
    isolation: Isolation,
    isolation_reported: AtomicBool,

    /// The cache entries this build used or made (for `--cache-to`).
    used: Mutex<BTreeMap<String, CacheEntry>>,
    /// ADD URL bodies fetched during this build (hashed for the key, then copied).
    fetched: Mutex<BTreeMap<String, remote::Fetched>>,
    /// ADD git sources resolved during this build: commit and ref name.
    git_commits: Mutex<BTreeMap<String, (String, Option<String>)>>,
    step_no: AtomicUsize,
    cached: AtomicUsize,
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

impl<'a> Executor<'a> {
    pub fn new(
        options: &'a BuildOptions,
        client: &'a Client,
        runtime: &'a tokio::runtime::Handle,
        progress: &'a (dyn Fn(&str) + Sync),
    ) -> R<Executor<'a>> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(ExecError::Host(
                "berth build needs root (overlay mounts, runc, file owners in layers): run it as root, e.g. with sudo or in a privileged CI container; rootless builds are not supported yet".into(),
            ));
        }
        let dir = &options.cache_dir;
        let mut ex = Executor {
            options,
            client,
            runtime,
            progress,
            layout: OciLayout::new(dir.join("layout")),
            layers_dir: dir.join("layers"),
            keys_dir: dir.join("keys"),
            run_dir: dir.join("run"),
            state_dir: dir.join("runc"),
            isolation: Isolation::Runc,
            isolation_reported: AtomicBool::new(false),
            fetched: Mutex::new(BTreeMap::new()),
            git_commits: Mutex::new(BTreeMap::new()),
            used: Mutex::new(BTreeMap::new()),
            step_no: AtomicUsize::new(0),
            cached: AtomicUsize::new(0),
        };
        for d in [&ex.layers_dir, &ex.keys_dir, &ex.run_dir, &ex.state_dir] {
            fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
            // Image trees live here (set-uid files a RUN made too): closed
            // to other users of the host, as Docker's own folder is.
            use std::os::unix::fs::PermissionsExt as _;
            fs::set_permissions(d, fs::Permissions::from_mode(0o700))
                .with_context(|| format!("cannot restrict {}", d.display()))?;
        }
        isolation::sweep_stale(&ex.run_dir, &ex.state_dir);
        ex.isolation = Isolation::choose(&ex.run_dir)?;
        runtime.block_on(ex.layout.init())?;
        Ok(ex)
    }

    fn now(&self) -> String {
        match self.options.source_date_epoch {
            Some(s) => rfc3339(UNIX_EPOCH + Duration::from_secs(s)),
            None => rfc3339(SystemTime::now()),
        }
    }

    fn say(&self, line: &str) {
        (self.progress)(line);
    }

    fn in_file(&self, e: BuildError) -> ExecError {
        ExecError::Dockerfile(e.in_file(&self.options.dockerfile_name))
    }

    /// Plan, resolve base images, run every needed stage, write the image.
    pub fn build(self) -> R<Built> {
        self.import_caches();
        let mut resolved = BTreeMap::new();
        let mut warned = std::collections::BTreeSet::new();
        let mut builds = Vec::new();
        for target in self.target_platforms() {
            builds.push(self.prepare_platform(target.as_deref(), &mut resolved, &mut warned)?);
        }
        let results = self.run_platforms(&builds);
        let mut built = Vec::new();
        for (b, result) in builds.iter().zip(results) {
            let target = &b.plan.stages[b.plan.target];
            built.push(self.write_image(&b.plan, target, &result?, &b.images)?);
        }
        let (manifest, tag) = self.store_images(&built)?;
        let plan = builds.swap_remove(0).plan;
        let config = built[0].config.clone();
        if let Some(reference) = &self.options.cache_to {
            self.export_cache(reference)
                .map_err(|e| ExecError::CacheExport {
                    reference: reference.clone(),
                    source: Box::new(e),
                })?;
            self.say(&format!(
                "cache to {reference}: {} entries",
                self.used.lock().map(|u| u.len()).unwrap_or(0)
            ));
        }
        let isolation = match &self.isolation {
            Isolation::Runc => "runc".to_string(),
            Isolation::Chroot(_) => "chroot".to_string(),
        };
        Ok(Built {
            plan,
            manifest,
            config,
            images: built,
            layout: self.layout.dir().to_path_buf(),
            tag,
            steps: self.step_no.load(Ordering::Relaxed),
            cached: self.cached.load(Ordering::Relaxed),
            isolation,
        })
    }

    /// `--cache-from`: a cache that cannot be read is only a warning.
    fn import_caches(&self) {
        if self.options.no_cache {
            return;
        }
        for reference in &self.options.cache_from {
            match self.import_cache(reference) {
                Ok(n) => self.say(&format!("cache from {reference}: {n} entries")),
                Err(e) => self.say(&format!("warning: no cache from {reference}: {e}")),
            }
        }
    }

    /// Run every platform's plan, at the same time when there are several.
    fn run_platforms(&self, builds: &[multiplatform::PlatformBuild]) -> Vec<R<StageResult>> {
        let shared = multiplatform::SharedStages::default();
        match builds {
            [one] => vec![self.run_plan(one, &shared)],
            many => std::thread::scope(|s| {
                let shared = &shared;
                let handles: Vec<_> = many
                    .iter()
                    .map(|b| s.spawn(move || self.run_plan(b, shared)))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join().unwrap_or_else(|_| {
                            Err(ExecError::Internal("a platform's build panicked".into()))
                        })
                    })
                    .collect()
            }),
        }
    }

    /// Put the images (under an index when there are several platforms)
    /// into the cache layout, tagged `build-DIGEST`: the manifest and tag.
    fn store_images(&self, built: &[BuiltImage]) -> R<(Manifest, String)> {
        let manifest = if self.options.platforms.len() > 1 {
            let children: Vec<(Manifest, String)> = built
                .iter()
                .map(|i| (i.manifest.clone(), i.platform.clone()))
                .collect();
            outputs::image_index(&children, &self.options.annotations)
                .map_err(ExecError::InvalidOutput)?
        } else {
            built[0].manifest.clone()
        };
        let tag = format!("build-{}", manifest.digest.hex());
        let dest = self
            .runtime
            .block_on(OciLayoutDest::create(self.layout.dir(), Some(&tag)))?;
        self.runtime.block_on(async {
            if manifest.is_index() {
                for image in built {
                    dest.put_manifest(&image.manifest, None).await?;
                }
            }
            dest.put_manifest(&manifest, Some(&tag)).await?;
            dest.commit().await
        })?;
        Ok((manifest, tag))
    }

    fn step_error(&self, step: &crate::plan::Step, message: &str) -> ExecError {
        self.in_file(BuildError::at(step.line, Some(&step.instruction), message))
    }
}
