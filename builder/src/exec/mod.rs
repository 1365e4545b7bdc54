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

pub mod chroot;
mod copy;
pub mod files;
pub mod git;
mod git_limits;
pub mod layer;
pub mod mounts;
mod multiplatform;
pub mod netfiles;
pub mod outputs;
mod remote;
pub mod runc;

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use berth_client::copy::{copy_image, CopyOptions, Platforms};
use berth_client::image::{media, BlobInfo, ImageDest, ManifestKind, NoProgress};
use berth_client::import::{ContainerConfig, Empty};
use berth_client::layout::{OciLayout, OciLayoutDest};
use berth_client::location::Location;
use berth_client::registry::Client;
use berth_client::remote::RegistrySource;
use berth_client::{ImageRef, Manifest};
use berth_oci::Digest;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::plan::{Action, Plan, Source, Stage, StageConfig};
use crate::{BuildError, DockerIgnore, PlanOptions};

use layer::{unpack_tar, write_tar};

/// An execution error, ready to show the user.
#[derive(Debug)]
pub struct ExecError(pub String);

impl fmt::Display for ExecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ExecError {}

impl From<berth_client::Error> for ExecError {
    fn from(e: berth_client::Error) -> Self {
        ExecError(e.to_string())
    }
}

type R<T> = Result<T, ExecError>;

trait Ctx<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> R<T>;
}

impl<T, E: fmt::Display> Ctx<T> for Result<T, E> {
    fn ctx(self, what: impl FnOnce() -> String) -> R<T> {
        self.map_err(|e| ExecError(format!("{}: {e}", what())))
    }
}

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

/// The config media type of a cache pushed with `--cache-to`.
pub const CACHE_MEDIA_TYPE: &str = "application/vnd.berth.build.cache.v1+json";

/// The config blob of a pushed cache: key → layer.
#[derive(Serialize, Deserialize)]
struct CacheFile {
    entries: BTreeMap<String, CacheEntry>,
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

/// What the cache remembers for one key.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct CacheEntry {
    /// None: the step changed nothing (no layer).
    layer: Option<LayerRecord>,
    created: String,
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

/// A root-filesystem view of some layers: the one layer directory, an
/// empty directory, or a read-only overlay (unmounted on drop).
struct View {
    path: PathBuf,
    _mount: Option<runc::Mount>,
    _dir: Option<tempfile::TempDir>,
}

/// Removes a directory tree on drop (after the mounts in it are gone:
/// declare it before them).
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// How RUN steps are isolated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Isolation {
    /// runc over an overlay mount; the layer is the upper directory.
    Runc,
    /// chroot in new namespaces over a copied tree; the layer is found by
    /// a scan. Holds why runc/overlayfs could not be used.
    Chroot(String),
}

impl Isolation {
    /// `BERTH_BUILD_ISOLATION=runc|chroot` forces one; otherwise runc when
    /// runc and overlayfs work here, else the chroot fallback.
    fn choose(scratch: &Path) -> R<Isolation> {
        let forced = std::env::var("BERTH_BUILD_ISOLATION").unwrap_or_default();
        match forced.as_str() {
            "" | "auto" => Ok(match runc::probe(scratch) {
                Ok(()) => Isolation::Runc,
                Err(why) => Isolation::Chroot(why),
            }),
            "runc" => runc::probe(scratch)
                .map(|_| Isolation::Runc)
                .map_err(|e| ExecError(format!("BERTH_BUILD_ISOLATION=runc: {e}"))),
            "chroot" => Ok(Isolation::Chroot("BERTH_BUILD_ISOLATION=chroot".into())),
            other => Err(ExecError(format!(
                "BERTH_BUILD_ISOLATION={other:?}: use runc, chroot or auto"
            ))),
        }
    }

    fn describe(&self) -> String {
        match self {
            Isolation::Runc => "runc + overlayfs (RUN shares the host network namespace)".into(),
            Isolation::Chroot(why) => format!(
                "chroot in new mount/uts/ipc namespaces with a scan-based diff (slower; RUN shares the host network and pid namespaces), because {why}"
            ),
        }
    }
}

/// Unmount and remove what a killed build left in `run_dir` (directories
/// are named PID-N; a PID that no longer runs left them).
fn sweep_stale(run_dir: &Path, state_dir: &Path) {
    let Ok(entries) = fs::read_dir(run_dir) else {
        return;
    };
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let dir = entry.path();
        let prefix = dir.display().to_string();
        let mut stale: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(1))
            .filter(|m| m.starts_with(&prefix))
            .collect();
        stale.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in stale {
            if let Ok(c) = std::ffi::CString::new(m) {
                // SAFETY: a valid path; a lazy unmount of our own mount.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
        }
        if let Ok(states) = fs::read_dir(state_dir) {
            for s in states.flatten() {
                let id = s.file_name().to_string_lossy().into_owned();
                if id.starts_with(&format!("berth-build-{pid}-")) {
                    let _ = std::process::Command::new("runc")
                        .arg("--root")
                        .arg(state_dir)
                        .args(["delete", "--force", &id])
                        .stdout(std::process::Stdio::null())
                        .stderr(std::process::Stdio::null())
                        .status();
                }
            }
        }
        let _ = fs::remove_dir_all(&dir);
    }
}

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
    isolation_reported: std::sync::atomic::AtomicBool,

    /// The cache entries this build used or made (for `--cache-to`).
    used: std::sync::Mutex<BTreeMap<String, CacheEntry>>,
    /// ADD URL bodies fetched during this build (hashed for the key, then copied).
    fetched: std::sync::Mutex<BTreeMap<String, remote::Fetched>>,
    /// ADD git sources resolved during this build: commit and ref name.
    git_commits: std::sync::Mutex<BTreeMap<String, (String, Option<String>)>>,
    step_no: AtomicUsize,
    cached: AtomicUsize,
}

/// What one RUN needs besides the plan's step.
struct RunCtx<'p> {
    /// The platform of the stage.
    platform: &'p str,
    /// `RUN --network=none`.
    network_none: bool,
    /// A `#!` heredoc script (see [`HEREDOC_PATH`]).
    script: Option<String>,
    /// `RUN --mount`s, set up on the host.
    mounts: &'p mounts::Prepared,
    /// `RUN --security=insecure` (allowed).
    insecure: bool,
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
            return Err(ExecError(
                "berth build needs root (overlay mounts, runc, file owners in layers): run it as root, e.g. with sudo or in a privileged CI container; rootless builds are not supported yet".into(),
            ));
        }
        let dir = &options.cache_dir;
        let ex = Executor {
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
            isolation_reported: std::sync::atomic::AtomicBool::new(false),
            fetched: std::sync::Mutex::new(BTreeMap::new()),
            git_commits: std::sync::Mutex::new(BTreeMap::new()),
            used: std::sync::Mutex::new(BTreeMap::new()),
            step_no: AtomicUsize::new(0),
            cached: AtomicUsize::new(0),
        };
        let mut ex = ex;
        for d in [&ex.layers_dir, &ex.keys_dir, &ex.run_dir, &ex.state_dir] {
            fs::create_dir_all(d).ctx(|| format!("cannot create {}", d.display()))?;
            // Image trees live here (set-uid files a RUN made too): closed
            // to other users of the host, as Docker's own folder is.
            use std::os::unix::fs::PermissionsExt as _;
            fs::set_permissions(d, fs::Permissions::from_mode(0o700))
                .ctx(|| format!("cannot restrict {}", d.display()))?;
        }
        sweep_stale(&ex.run_dir, &ex.state_dir);
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
        ExecError(e.in_file(&self.options.dockerfile_name).to_string())
    }

    /// Plan, resolve base images, run every needed stage, write the image.
    pub fn build(self) -> R<Built> {
        if !self.options.no_cache {
            for reference in &self.options.cache_from {
                match self.import_cache(reference) {
                    Ok(n) => self.say(&format!("cache from {reference}: {n} entries")),
                    Err(e) => self.say(&format!("warning: no cache from {reference}: {e}")),
                }
            }
        }
        let mut resolved = BTreeMap::new();
        let mut warned = std::collections::BTreeSet::new();
        let mut builds = Vec::new();
        for target in self.target_platforms() {
            builds.push(self.prepare_platform(target.as_deref(), &mut resolved, &mut warned)?);
        }
        let shared = multiplatform::SharedStages::default();
        let results: Vec<R<StageResult>> = match builds.as_slice() {
            [one] => vec![self.run_plan(one, &shared)],
            many => std::thread::scope(|s| {
                let this = &self;
                let shared = &shared;
                let handles: Vec<_> = many
                    .iter()
                    .map(|b| s.spawn(move || this.run_plan(b, shared)))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join().unwrap_or_else(|_| {
                            Err(ExecError("a platform's build panicked".into()))
                        })
                    })
                    .collect()
            }),
        };
        let mut built = Vec::new();
        for (b, result) in builds.iter().zip(results) {
            let target = &b.plan.stages[b.plan.target];
            built.push(self.write_image(&b.plan, target, &result?, &b.images)?);
        }
        let manifest = if self.options.platforms.len() > 1 {
            let children: Vec<(Manifest, String)> = built
                .iter()
                .map(|i| (i.manifest.clone(), i.platform.clone()))
                .collect();
            outputs::image_index(&children, &self.options.annotations).map_err(ExecError)?
        } else {
            built[0].manifest.clone()
        };
        let tag = format!("build-{}", manifest.digest.hex());
        let dest = self
            .runtime
            .block_on(OciLayoutDest::create(self.layout.dir(), Some(&tag)))?;
        self.runtime.block_on(async {
            if manifest.is_index() {
                for image in &built {
                    dest.put_manifest(&image.manifest, None).await?;
                }
            }
            dest.put_manifest(&manifest, Some(&tag)).await?;
            dest.commit().await
        })?;
        let plan = builds.swap_remove(0).plan;
        let config = built[0].config.clone();
        if let Some(reference) = &self.options.cache_to {
            self.export_cache(reference)
                .map_err(|e| ExecError(format!("--cache-to {reference}: {e}")))?;
            self.say(&format!(
                "cache to {reference}: {} entries",
                self.used.lock().map(|u| u.len()).unwrap_or(0)
            ));
        }
        let isolation = match &self.isolation {
            Isolation::Runc => "runc".to_string(),
            Isolation::Chroot(_) => "chroot".to_string(),
        };
        let steps = self.step_no.load(Ordering::Relaxed);
        let cached = self.cached.load(Ordering::Relaxed);
        Ok(Built {
            plan,
            manifest,
            config,
            images: built,
            layout: self.layout.dir().to_path_buf(),
            tag,
            steps,
            cached,
            isolation,
        })
    }

    /// Pull an image into the cache layout and unpack its layers.
    fn resolve_image(&self, reference: &str, platform: &str) -> R<ImageInfo> {
        let r = ImageRef::parse(reference)?;
        let mut tag = Location::store_name(&r);
        if platform != crate::plan::Platform::host().to_string() {
            // One tag per platform: pulling another platform's image must
            // not take the tag (and so the blobs' protection) from this one.
            tag = format!("{tag}#{}", platform.replace('/', "-"));
        }
        self.say(&format!("resolving {reference} for {platform}"));
        let wanted: berth_client::Platform = platform.parse()?;
        let registry = self.client.registry(&r.registry)?;
        let layout_dir = self.layout.dir().to_path_buf();
        let local_store = match &self.options.local_store {
            Some(store)
                if berth_client::location::is_bare_name(reference)
                    && self
                        .runtime
                        .block_on(berth_client::location::local_store_has(store, &r)) =>
            {
                self.say(&format!("using {reference} from the local store"));
                Some(store.clone())
            }
            _ => None,
        };
        let report = self
            .runtime
            .block_on(async {
                let source: Box<dyn berth_client::image::ImageSource> = match &local_store {
                    Some(store) => Box::new(
                        berth_client::layout::OciLayoutSource::open(
                            store,
                            Some(&Location::store_name(&r)),
                        )
                        .await?,
                    ),
                    None => Box::new(RegistrySource::new(registry, r.clone())),
                };
                let dest = OciLayoutDest::create(&layout_dir, Some(&tag)).await?;
                copy_image(
                    source.as_ref(),
                    &dest,
                    Some(&tag),
                    &CopyOptions {
                        platforms: Platforms::One(wanted.clone()),
                        jobs: 4,
                        oci_media_types: false,
                    },
                    &NoProgress,
                )
                .await
            })
            .ctx(|| format!("cannot pull the base image {reference}"))?;
        let bytes = self
            .runtime
            .block_on(self.layout.read_small_blob(&report.digest))?;
        let manifest = Manifest::new(bytes, report.media_type.clone());
        let ManifestKind::Image { config, layers } = manifest.parse()? else {
            return Err(ExecError(format!("{reference}: not an image manifest")));
        };
        let config_bytes = self
            .runtime
            .block_on(self.layout.read_small_blob(&config.digest))?;
        let value: Value = serde_json::from_slice(&config_bytes)
            .ctx(|| format!("{reference}: the image config is not JSON"))?;
        let pulled_arch = value["architecture"].as_str().unwrap_or_default();
        if !pulled_arch.is_empty() && pulled_arch != wanted.architecture {
            // BuildKit's InvalidBaseImagePlatform check: a single-platform
            // image is used as it is, whatever platform it was made for.
            self.say(&format!(
                "warning: {reference} is a {}/{pulled_arch} image, used for {platform}: its programs may not run there (InvalidBaseImagePlatform)",
                value["os"].as_str().unwrap_or("linux")
            ));
        }
        let container: ContainerConfig =
            serde_json::from_value(value.get("config").cloned().unwrap_or(Value::Null))
                .or_else(|_| Ok::<_, serde_json::Error>(ContainerConfig::default()))
                .ctx(|| format!("{reference}: bad config"))?;
        let diff_ids: Vec<Digest> = value["rootfs"]["diff_ids"]
            .as_array()
            .map(|a| a.iter().filter_map(|d| d.as_str()?.parse().ok()).collect())
            .unwrap_or_default();
        if diff_ids.len() != layers.len() {
            return Err(ExecError(format!(
                "{reference}: the config lists {} diff_ids for {} layers",
                diff_ids.len(),
                layers.len()
            )));
        }
        let mut out = Vec::new();
        for (blob, diff_id) in layers.into_iter().zip(diff_ids) {
            let record = LayerRecord { diff_id, blob };
            let dir = self.ensure_layer_dir(&record)?;
            out.push(Layer { record, dir });
        }
        Ok(ImageInfo {
            digest: report.digest,
            config: container,
            created: value["created"]
                .as_str()
                .unwrap_or("1970-01-01T00:00:00Z")
                .to_string(),
            layers: out,
            history: value["history"].as_array().cloned().unwrap_or_default(),
        })
    }

    /// Pull a cache pushed by `--cache-to` and add its entries (keys this
    /// cache has already win). Returns how many entries it held.
    fn import_cache(&self, reference: &str) -> R<usize> {
        let r = ImageRef::parse(reference)?;
        let registry = self.client.registry(&r.registry)?;
        let layout_dir = self.layout.dir().to_path_buf();
        let tag = format!("cache-from/{}", Location::store_name(&r));
        let report = self.runtime.block_on(async {
            let source = RegistrySource::new(registry, r.clone());
            let dest = OciLayoutDest::create(&layout_dir, Some(&tag)).await?;
            copy_image(
                &source,
                &dest,
                Some(&tag),
                &CopyOptions::default(),
                &NoProgress,
            )
            .await
        })?;
        let bytes = self
            .runtime
            .block_on(self.layout.read_small_blob(&report.digest))?;
        let ManifestKind::Image { config, .. } =
            Manifest::new(bytes, report.media_type.clone()).parse()?
        else {
            return Err(ExecError("not a build cache (an index)".into()));
        };
        if config.media_type != CACHE_MEDIA_TYPE {
            return Err(ExecError(format!(
                "not a build cache (its config is {}, not {CACHE_MEDIA_TYPE})",
                config.media_type
            )));
        }
        let bytes = self
            .runtime
            .block_on(self.layout.read_small_blob(&config.digest))?;
        let file: CacheFile =
            serde_json::from_slice(&bytes).ctx(|| "the cache index is not valid".to_string())?;
        for (key, entry) in &file.entries {
            let hex = key.trim_start_matches("sha256:");
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                continue;
            }
            if !self.keys_dir.join(hex).exists() {
                self.write_entry(key, entry)?;
            }
        }
        Ok(file.entries.len())
    }

    /// Push this build's cache entries and their layers as one artifact.
    fn export_cache(&self, reference: &str) -> R<()> {
        let r = ImageRef::parse(reference)?;
        let file = CacheFile {
            entries: self.used.lock().map(|u| u.clone()).unwrap_or_default(),
        };
        let config_bytes = serde_json::to_vec(&file).ctx(|| "cache index".to_string())?;
        let config_digest = Digest::sha256_of(&config_bytes);
        self.runtime
            .block_on(self.layout.put_blob_bytes(&config_digest, &config_bytes))?;
        let mut seen = std::collections::BTreeSet::new();
        let layers: Vec<Value> = file
            .entries
            .values()
            .filter_map(|e| e.layer.as_ref())
            .filter(|l| seen.insert(l.blob.digest.clone()))
            .map(|l| json!({"mediaType": l.blob.media_type, "digest": l.blob.digest.to_string(), "size": l.blob.size}))
            .collect();
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": media::OCI_MANIFEST,
            "artifactType": CACHE_MEDIA_TYPE,
            "config": {"mediaType": CACHE_MEDIA_TYPE, "digest": config_digest.to_string(), "size": config_bytes.len()},
            "layers": layers,
        });
        let manifest = Manifest::new(
            serde_json::to_vec(&manifest).ctx(|| "cache manifest".to_string())?,
            media::OCI_MANIFEST,
        );
        let tag = "cache-to";
        let layout_dir = self.layout.dir().to_path_buf();
        let registry = self.client.registry(&r.registry)?;
        self.runtime.block_on(async {
            let dest = OciLayoutDest::create(&layout_dir, Some(tag)).await?;
            dest.put_manifest(&manifest, Some(tag)).await?;
            dest.commit().await?;
            let source =
                berth_client::layout::OciLayoutSource::open(&layout_dir, Some(tag)).await?;
            let remote = berth_client::remote::RegistryDest::new(registry, r.clone(), 4);
            copy_image(
                &source,
                &remote,
                r.tag_or_latest().as_deref(),
                &CopyOptions::default(),
                &NoProgress,
            )
            .await
        })?;
        Ok(())
    }

    /// The unpacked directory of a layer, unpacking its blob if needed.
    fn ensure_layer_dir(&self, record: &LayerRecord) -> R<PathBuf> {
        let dir = self.layers_dir.join(record.diff_id.hex());
        if dir.is_dir() {
            return Ok(dir);
        }
        let blob = self.layout.blob_path(&record.blob.digest);
        let tmp = tempfile::Builder::new()
            .prefix(".tmp-")
            .tempdir_in(&self.layers_dir)
            .ctx(|| format!("cannot create a directory in {}", self.layers_dir.display()))?;
        let file = fs::File::open(&blob).ctx(|| format!("cannot open {}", blob.display()))?;
        let reader = layer::decompressing_reader(file, &record.blob.media_type)
            .ctx(|| format!("layer {}", record.blob.digest))?;
        let digest = unpack_tar(reader, tmp.path())
            .ctx(|| format!("cannot unpack layer {}", record.blob.digest))?;
        if digest != record.diff_id {
            return Err(ExecError(format!(
                "layer {} unpacks to {digest}, but the image config says {}",
                record.blob.digest, record.diff_id
            )));
        }
        let tmp_path = tmp.keep();
        if fs::rename(&tmp_path, &dir).is_err() {
            // Another build unpacked it first.
            let _ = fs::remove_dir_all(&tmp_path);
        }
        Ok(dir)
    }

    fn cache_get(&self, key: &str) -> Option<(Option<Layer>, String)> {
        if self.options.no_cache {
            return None;
        }
        let path = self.keys_dir.join(key.trim_start_matches("sha256:"));
        let entry: CacheEntry = serde_json::from_slice(&fs::read(path).ok()?).ok()?;
        match entry.layer {
            None => Some((None, entry.created)),
            Some(record) => {
                let blob = self.layout.blob_path(&record.blob.digest);
                if !fs::metadata(&blob).is_ok_and(|m| m.len() == record.blob.size) {
                    return None;
                }
                let dir = self.ensure_layer_dir(&record).ok()?;
                Some((Some(Layer { record, dir }), entry.created))
            }
        }
    }

    fn cache_put(&self, key: &str, layer: Option<&Layer>, created: &str) -> R<()> {
        let entry = CacheEntry {
            layer: layer.map(|l| l.record.clone()),
            created: created.to_string(),
        };
        self.write_entry(key, &entry)
    }

    fn write_entry(&self, key: &str, entry: &CacheEntry) -> R<()> {
        let path = self.keys_dir.join(key.trim_start_matches("sha256:"));
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        fs::write(&tmp, serde_json::to_vec(entry).unwrap_or_default())
            .and_then(|_| fs::rename(&tmp, &path))
            .ctx(|| format!("cannot write {}", path.display()))
    }

    /// Turn a directory (an overlay upper or a COPY staging directory) into
    /// a layer: tar it (sorted, whiteouts converted), gzip it into the
    /// cache layout, and move the directory to its layer directory. An
    /// empty directory is no layer.
    fn commit_dir(&self, dir: &Path) -> R<Option<Layer>> {
        let empty = fs::read_dir(dir)
            .ctx(|| format!("cannot read {}", dir.display()))?
            .next()
            .is_none();
        if empty {
            return Ok(None);
        }
        let (reader, writer) = io::pipe().ctx(|| "cannot create a pipe".to_string())?;
        let root = dir.to_path_buf();
        let clamp = self.options.source_date_epoch;
        let tar_thread = std::thread::spawn(move || write_tar(&root, writer, clamp).map(drop));
        let blobs = self.layout.dir().join("blobs");
        let written = outputs::write_blob(Box::new(reader), self.options.compression, &blobs);
        let tarred = tar_thread
            .join()
            .map_err(|_| ExecError("the layer writer panicked".into()))?;
        tarred.ctx(|| format!("cannot make a layer of {}", dir.display()))?;
        let out = written.ctx(|| format!("cannot write a layer of {}", dir.display()))?;
        let path = self.layout.blob_path(&out.blob.digest);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).ctx(|| format!("cannot create {}", parent.display()))?;
        }
        out.tmp
            .persist(&path)
            .ctx(|| format!("cannot write {}", path.display()))?;
        let record = LayerRecord {
            diff_id: out.diff_id,
            blob: out.blob,
        };
        let final_dir = self.layers_dir.join(record.diff_id.hex());
        if final_dir.exists() {
            let _ = fs::remove_dir_all(dir);
        } else if let Err(e) = fs::rename(dir, &final_dir) {
            // Another build sharing the cache made the same layer first.
            if !final_dir.is_dir() {
                return Err(ExecError(format!(
                    "cannot move {} to {}: {e}",
                    dir.display(),
                    final_dir.display()
                )));
            }
            let _ = fs::remove_dir_all(dir);
        }
        Ok(Some(Layer {
            record,
            dir: final_dir,
        }))
    }

    fn work_dir(&self) -> R<Cleanup> {
        let id = format!(
            "{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let dir = self.run_dir.join(id);
        fs::create_dir_all(&dir).ctx(|| format!("cannot create {}", dir.display()))?;
        Ok(Cleanup(dir))
    }

    /// A read-only view of `layers` for reading files (COPY sources, users).
    fn view(&self, layers: &[Layer], scratch: &Path) -> R<View> {
        match layers {
            [] => {
                let dir = tempfile::Builder::new()
                    .prefix("empty-")
                    .tempdir_in(scratch)
                    .ctx(|| "cannot create a directory".to_string())?;
                Ok(View {
                    path: dir.path().to_path_buf(),
                    _mount: None,
                    _dir: Some(dir),
                })
            }
            [one] => Ok(View {
                path: one.dir.clone(),
                _mount: None,
                _dir: None,
            }),
            many if matches!(self.isolation, Isolation::Chroot(_)) => {
                let dir = tempfile::Builder::new()
                    .prefix("view-")
                    .tempdir_in(scratch)
                    .ctx(|| "cannot create a directory".to_string())?;
                let dirs: Vec<PathBuf> = many.iter().map(|l| l.dir.clone()).collect();
                chroot::materialize(&dirs, dir.path())
                    .ctx(|| "cannot copy the image's layers".to_string())?;
                Ok(View {
                    path: dir.path().to_path_buf(),
                    _mount: None,
                    _dir: Some(dir),
                })
            }
            many => {
                let dir = tempfile::Builder::new()
                    .prefix("view-")
                    .tempdir_in(scratch)
                    .ctx(|| "cannot create a directory".to_string())?;
                let lowers: Vec<PathBuf> = many.iter().rev().map(|l| l.dir.clone()).collect();
                let mount = runc::Mount::overlay(&lowers, None, dir.path())
                    .ctx(|| "cannot mount a read-only overlay of the image".to_string())?;
                Ok(View {
                    path: dir.path().to_path_buf(),
                    _mount: Some(mount),
                    _dir: Some(dir),
                })
            }
        }
    }

    fn run_stage(
        &self,
        plan: &Plan,
        index: usize,
        results: &[Option<StageResult>],
        images: &BTreeMap<String, ImageInfo>,
    ) -> R<StageResult> {
        let stage = &plan.stages[index];
        let platform = stage
            .platform
            .clone()
            .unwrap_or_else(|| plan.target_platform.clone());
        let label = match &stage.name {
            Some(n) => format!("stage {index} ({n})"),
            None => format!("stage {index}"),
        };
        let label = match self.options.platforms.len() > 1 {
            true => format!("{} {label}", plan.target_platform),
            false => label,
        };
        let images = &multiplatform::images_on(images, &platform);
        let (mut layers, mut history, mut key, mut created) = match &stage.base {
            crate::plan::Base::Scratch => (Vec::new(), Vec::new(), stage.base_key.clone(), None),
            crate::plan::Base::Image { reference, .. } => {
                let info = images
                    .get(reference)
                    .ok_or_else(|| ExecError(format!("{reference} was not resolved")))?;
                (
                    info.layers.clone(),
                    info.history.clone(),
                    stage.base_key.clone(),
                    Some(info.created.clone()),
                )
            }
            crate::plan::Base::Stage { index: base } => {
                let r = results[*base]
                    .as_ref()
                    .ok_or_else(|| ExecError(format!("stage {base} has not run")))?;
                (
                    r.layers.clone(),
                    r.history.clone(),
                    r.key.clone(),
                    Some(r.created.clone()),
                )
            }
        };
        let mut current_user = match &stage.base {
            crate::plan::Base::Scratch => None,
            crate::plan::Base::Image { reference, .. } => {
                images.get(reference).and_then(|i| i.config.user.clone())
            }
            crate::plan::Base::Stage { index } => plan.stages[*index].config.user.clone(),
        }
        .filter(|u| !u.is_empty());
        let total = stage.steps.len();
        for (n, step) in stage.steps.iter().enumerate() {
            if step.instruction == "USER" {
                current_user = step.text.strip_prefix("USER ").map(str::to_string);
            }
            let material = step.key_material.clone().unwrap_or_default();
            let header = format!("[{label} {}/{total}] {}", n + 1, one_line(&step.text));
            match &step.action {
                Action::Arg { .. } => continue,
                Action::Config => {
                    history.push(json!({
                        "created": created.clone().unwrap_or_else(|| self.now()),
                        "created_by": step.text,
                        "comment": "berth build",
                        "empty_layer": true,
                    }));
                    continue;
                }
                _ => {}
            }
            let no = self.step_no.fetch_add(1, Ordering::Relaxed) + 1;
            self.say(&format!("#{no} {header}"));
            let started = Instant::now();
            let scratch = self.work_dir()?;
            let content = match &step.action {
                Action::Copy { .. } => self.copy_content(step, results, images)?,
                // `--add-host` entries are part of a RUN's key, as in
                // BuildKit (only when given: other keys stay as they were).
                Action::Run { mounts, .. } => {
                    let hosts = (!self.options.add_hosts.is_empty()).then(|| {
                        netfiles::hosts(&self.options.add_hosts)
                            .lines()
                            .skip(2)
                            .collect::<Vec<_>>()
                            .join(";")
                    });
                    match (hosts, self.mount_content(mounts, results, images, step)?) {
                        (Some(h), Some(m)) => Some(format!("{h}\n{m}")),
                        (h, m) => h.or(m),
                    }
                }
                _ => None,
            };
            // The layer's key and the key after the step (they differ for COPY --link).
            let (new_key, next_key) =
                copy::copy_keys(&key, &material, content.as_deref(), &step.action);
            if let Some((layer, when)) = self.cache_get(&new_key) {
                if let Ok(mut used) = self.used.lock() {
                    used.insert(
                        new_key.clone(),
                        CacheEntry {
                            layer: layer.as_ref().map(|l| l.record.clone()),
                            created: when.clone(),
                        },
                    );
                }
                self.cached.fetch_add(1, Ordering::Relaxed);
                self.say(&format!("#{no} CACHED"));
                history.push(history_entry(&when, &step.text, layer.is_none()));
                layers.extend(layer);
                created = Some(when);
                key = next_key;
                continue;
            }
            let layer = match &step.action {
                Action::Run {
                    argv,
                    heredocs,
                    env,
                    uncached_env,
                    user,
                    workdir,
                    mounts,
                    network,
                    security,
                } => {
                    let network_none = crate::mounts::parse_network(network.as_deref())
                        .map_err(|e| self.step_error(step, &e))?
                        == crate::mounts::Network::None;
                    let insecure = crate::mounts::parse_security(
                        security.as_deref(),
                        self.options.plan_options.run_inputs.allow_insecure,
                    )
                    .map_err(|e| self.step_error(step, &e))?;
                    let prepared =
                        self.prepare_mounts(mounts, results, images, step, scratch.0.as_path())?;
                    let (argv, script) = heredoc_script(argv, heredocs);
                    let ctx = RunCtx {
                        platform: &platform,
                        network_none,
                        script,
                        mounts: &prepared,
                        insecure,
                    };
                    let mut env = env.clone();
                    env.extend(uncached_env.iter().cloned());
                    env.extend(prepared.env.iter().cloned());
                    self.run_step(
                        &ctx,
                        &layers,
                        &argv,
                        env,
                        user.as_deref(),
                        workdir,
                        step,
                        no,
                        scratch.0.as_path(),
                    )?
                }
                Action::Copy { .. } => {
                    self.copy_step(&layers, step, results, images, scratch.0.as_path())?
                }
                Action::Workdir { path } => {
                    self.workdir_step(&layers, path, scratch.0.as_path(), current_user.clone())?
                }
                Action::Config | Action::Arg { .. } => None,
            };
            let when = self.now();
            self.cache_put(&new_key, layer.as_ref(), &when)?;
            if let Ok(mut used) = self.used.lock() {
                used.insert(
                    new_key.clone(),
                    CacheEntry {
                        layer: layer.as_ref().map(|l| l.record.clone()),
                        created: when.clone(),
                    },
                );
            }
            history.push(history_entry(&when, &step.text, layer.is_none()));
            layers.extend(layer);
            created = Some(when);
            key = next_key;
            self.say(&format!(
                "#{no} DONE {:.1}s",
                started.elapsed().as_secs_f64()
            ));
        }
        Ok(StageResult {
            layers,
            history,
            key,
            created: created.unwrap_or_else(|| self.now()),
        })
    }

    fn step_error(&self, step: &crate::plan::Step, message: &str) -> ExecError {
        self.in_file(BuildError::at(step.line, Some(&step.instruction), message))
    }

    fn report_isolation(&self) {
        if !self.isolation_reported.swap(true, Ordering::Relaxed) {
            self.say(&format!("isolation: {}", self.isolation.describe()));
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn run_step(
        &self,
        ctx: &RunCtx<'_>,
        layers: &[Layer],
        argv: &[String],
        mut env: Vec<String>,
        user: Option<&str>,
        workdir: &str,
        step: &crate::plan::Step,
        no: usize,
        scratch: &Path,
    ) -> R<Option<Layer>> {
        let execution = crate::plan::Platform::parse(ctx.platform)
            .and_then(|wanted| crate::platforms::execution_for(&wanted))
            .map_err(|e| self.step_error(step, &e))?;
        if let crate::platforms::Execution::Emulated(emulator) = &execution {
            self.say(&format!(
                "#{no} {} under the {} emulator ({})",
                ctx.platform,
                emulator.name,
                emulator.interpreter.display()
            ));
            if !emulator.fix_binary && matches!(self.isolation, Isolation::Chroot(_)) {
                return Err(self.step_error(step, &format!("the {} emulator is registered without the F flag, which chroot isolation needs; register it with the F flag (qemu-user-static does)", emulator.name)));
            }
        }
        self.report_isolation();
        if !env.iter().any(|e| e.starts_with("PATH=")) {
            env.insert(
                0,
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            );
        }
        if let Isolation::Chroot(_) = self.isolation {
            return self.run_step_chroot(ctx, layers, argv, env, user, workdir, step, no, scratch);
        }
        let upper = scratch.join("upper");
        let work = scratch.join("work");
        // With secrets, the bundle (config.json holds `env=` secrets) is in memory.
        let bundle = ctx
            .mounts
            .bundle
            .clone()
            .unwrap_or_else(|| scratch.join("bundle"));
        let rootfs = bundle.join("rootfs");
        for d in [&upper, &work, &rootfs] {
            fs::create_dir_all(d).ctx(|| format!("cannot create {}", d.display()))?;
        }
        let mut lowers: Vec<PathBuf> = layers.iter().rev().map(|l| l.dir.clone()).collect();
        // The network files' mount points, below the image (see
        // netfiles::mount_point_layer); it also stands in for an empty image.
        let netbase = scratch.join("netbase");
        netfiles::mount_point_layer(&netbase)
            .ctx(|| format!("cannot create {}", netbase.display()))?;
        lowers.push(netbase);
        let net = netfiles::NetFiles::write(
            &scratch.join("net"),
            ctx.network_none,
            &self.options.add_hosts,
        )
        .ctx(|| "cannot write the step's resolv.conf and hosts".to_string())?;
        let code;
        {
            let mount = runc::Mount::overlay(&lowers, Some((&upper, &work)), &rootfs)
                .ctx(|| "cannot mount the overlay for RUN".to_string())?;
            let (uid, gid, additional_gids) =
                files::resolve_user(mount.path(), user.unwrap_or("0"))
                    .map_err(|e| self.step_error(step, &e))?;
            let missing: Vec<&str> = runc::MOUNT_POINTS
                .iter()
                .copied()
                .filter(|m| fs::symlink_metadata(rootfs.join(&m[1..])).is_err())
                .collect();
            let mount_points = mounts::missing_mount_points(&rootfs, &ctx.mounts.targets);
            let script = match &ctx.script {
                Some(body) => {
                    let path = scratch.join("heredoc");
                    fs::write(&path, body).ctx(|| "cannot write the heredoc script".to_string())?;
                    use std::os::unix::fs::PermissionsExt;
                    fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
                        .ctx(|| "cannot write the heredoc script".to_string())?;
                    Some(path)
                }
                None => None,
            };
            let mut spec = runc::runtime_spec(&runc::Process {
                argv: argv.to_vec(),
                env,
                cwd: workdir.to_string(),
                uid,
                gid,
                additional_gids,
                network_none: ctx.network_none,
            });
            if let (Some(path), Some(mounts)) = (&script, spec["mounts"].as_array_mut()) {
                mounts.push(json!({
                    "destination": HEREDOC_PATH, "type": "bind",
                    "source": path, "options": ["rbind", "ro"],
                }));
            }
            if ctx.insecure {
                mounts::make_insecure(&mut spec);
            }
            let net_mounted: Vec<&str> = net
                .pairs()
                .into_iter()
                .filter(|(target, _)| netfiles::mountable(&rootfs, target))
                .map(|(target, source)| {
                    if let Some(mounts) = spec["mounts"].as_array_mut() {
                        mounts.push(json!({
                            "destination": format!("/{target}"), "type": "bind",
                            "source": source, "options": ["rbind", "ro"],
                        }));
                    }
                    target
                })
                .collect();
            if let Some(list) = spec["mounts"].as_array_mut() {
                list.extend(ctx.mounts.spec.iter().cloned());
            }
            let emulator_mount = multiplatform::EmulatorMount::add(&execution, &rootfs, &mut spec);
            let id = format!(
                "berth-build-{}-{}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            );
            let progress = self.progress;
            code = runc::run(&bundle, &self.state_dir, &id, &spec, &|line| {
                progress(&format!("#{no} | {line}"))
            })
            .ctx(|| "cannot run runc".to_string())?;
            drop(mount);
            mounts::remove_mount_points(&upper, &mount_points);
            emulator_mount.clean(&upper);
            // Mount points runc made are not the step's output.
            for m in missing {
                let p = upper.join(&m[1..]);
                if fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
                    let _ = fs::remove_dir_all(&p);
                }
            }
            // The mount points come from the bottom layer; where a layer
            // above whited them out, runc made empty ones in the upper
            // directory (the step could not write there: mounted read-only).
            for target in net_mounted {
                let p = upper.join(target);
                if fs::symlink_metadata(&p).is_ok_and(|m| m.is_file() && m.len() == 0) {
                    let _ = fs::remove_file(&p);
                }
            }
        }
        if code != 0 {
            return Err(self.step_error(
                step,
                &format!(
                    "process {:?} did not complete successfully: exit code: {code}",
                    argv.join(" ")
                ),
            ));
        }
        self.commit_dir(&upper)
    }

    /// RUN without runc/overlayfs: copy the image into a directory, chroot,
    /// and diff by scanning.
    #[allow(clippy::too_many_arguments)]
    fn run_step_chroot(
        &self,
        ctx: &RunCtx<'_>,
        layers: &[Layer],
        argv: &[String],
        env: Vec<String>,
        user: Option<&str>,
        workdir: &str,
        step: &crate::plan::Step,
        no: usize,
        scratch: &Path,
    ) -> R<Option<Layer>> {
        let rootfs = scratch.join("rootfs");
        let upper = scratch.join("upper");
        for d in [&rootfs, &upper] {
            fs::create_dir_all(d).ctx(|| format!("cannot create {}", d.display()))?;
        }
        let dirs: Vec<PathBuf> = layers.iter().map(|l| l.dir.clone()).collect();
        chroot::materialize(&dirs, &rootfs).ctx(|| "cannot copy the image's layers".to_string())?;
        // The network files' mount points: made before the scan, so the
        // diff does not see them (the copy is this step's alone).
        let net = netfiles::NetFiles::write(
            &scratch.join("net"),
            ctx.network_none,
            &self.options.add_hosts,
        )
        .ctx(|| "cannot write the step's resolv.conf and hosts".to_string())?;
        let mut binds = Vec::new();
        for (target, source) in net.pairs() {
            if !netfiles::mountable(&rootfs, target) {
                continue;
            }
            let point = rootfs.join(target);
            if fs::symlink_metadata(&point).is_err() {
                fs::create_dir_all(rootfs.join("etc"))
                    .and_then(|_| fs::write(&point, b""))
                    .ctx(|| format!("cannot create /{target}"))?;
            }
            binds.push(chroot::ChrootMount {
                target: point,
                source: Some(source.to_path_buf()),
                readonly: true,
                data: String::new(),
            });
        }
        // RUN --mount points: made before the scan, so not in the diff.
        binds.extend(
            mounts::chroot_mounts(&rootfs, ctx.mounts)
                .map_err(|e| self.step_error(step, &format!("cannot prepare RUN --mount: {e}")))?,
        );
        let before = chroot::snapshot(&rootfs).ctx(|| "cannot scan the image".to_string())?;
        let mut argv = argv.to_vec();
        let script_path = rootfs.join(".berth-heredoc");
        if let Some(body) = &ctx.script {
            fs::write(&script_path, body).ctx(|| "cannot write the heredoc script".to_string())?;
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&script_path, fs::Permissions::from_mode(0o755))
                .ctx(|| "cannot write the heredoc script".to_string())?;
            argv = vec!["/.berth-heredoc".to_string()];
        }
        let argv = argv.as_slice();
        let (uid, gid, groups) = files::resolve_user(&rootfs, user.unwrap_or("0"))
            .map_err(|e| self.step_error(step, &e))?;
        let progress = self.progress;
        let ids = chroot::Ids { uid, gid, groups };
        let code = chroot::run(
            &rootfs,
            argv,
            &env,
            workdir,
            &ids,
            ctx.network_none,
            &binds,
            &|line| progress(&format!("#{no} | {line}")),
        )
        .map_err(|e| self.step_error(step, &format!("cannot run {:?}: {e}", argv.join(" "))))?;
        if code != 0 {
            return Err(self.step_error(
                step,
                &format!(
                    "process {:?} did not complete successfully: exit code: {code}",
                    argv.join(" ")
                ),
            ));
        }
        let _ = fs::remove_file(&script_path);
        chroot::diff(&rootfs, &before, &upper)
            .ctx(|| "cannot find the step's changes".to_string())?;
        self.commit_dir(&upper)
    }

    fn workdir_step(
        &self,
        layers: &[Layer],
        path: &str,
        scratch: &Path,
        user: Option<String>,
    ) -> R<Option<Layer>> {
        let view = self.view(layers, scratch)?;
        let rel = path.trim_start_matches('/');
        if rel.is_empty() || view.path.join(rel).is_dir() {
            return Ok(None);
        }
        let owner = match user {
            Some(u) => files::resolve_user(&view.path, &u)
                .ok()
                .map(|(u, g, _)| (u, g)),
            None => None,
        };
        let staging = scratch.join("stage");
        fs::create_dir_all(&staging).ctx(|| "cannot create a directory".to_string())?;
        let t = self.options.source_date_epoch.unwrap_or(0) as i64;
        files::make_parents(&staging, &view.path, path, owner, t)
            .ctx(|| format!("cannot create {path}"))?;
        drop(view);
        self.commit_dir(&staging)
    }

    /// Write the config and manifest of the target stage's image.
    fn write_image(
        &self,
        plan: &Plan,
        stage: &Stage,
        result: &StageResult,
        images: &BTreeMap<String, ImageInfo>,
    ) -> R<BuiltImage> {
        let platform = stage
            .platform
            .clone()
            .unwrap_or_else(|| plan.target_platform.clone());
        let mut parts = platform.split('/');
        let os = parts.next().unwrap_or("linux").to_string();
        let arch = parts.next().unwrap_or("amd64").to_string();
        let variant = parts.next().map(str::to_string);
        let mut container = to_container_config(&stage.config);
        container.labels.extend(self.options.labels.clone());
        let created = match self.options.source_date_epoch {
            Some(_) => self.now(),
            None => result.created.clone(),
        };
        let mut config = json!({
            "created": created,
            "architecture": arch,
            "os": os,
            "config": container,
            "rootfs": {
                "type": "layers",
                "diff_ids": result.layers.iter().map(|l| l.record.diff_id.to_string()).collect::<Vec<_>>(),
            },
            "history": result.history,
        });
        if let Some(v) = variant {
            config["variant"] = v.into();
        }
        if let Some(a) = &stage.config.author {
            config["author"] = a.clone().into();
        }
        let config_bytes = serde_json::to_vec(&config).ctx(|| "image config".to_string())?;
        let config_blob = BlobInfo {
            media_type: media::OCI_CONFIG.to_string(),
            digest: Digest::sha256_of(&config_bytes),
            size: config_bytes.len() as u64,
        };
        let mut layers: Vec<Value> = Vec::new();
        for l in &result.layers {
            let blob = self.output_blob(l, images)?;
            let media_type = match blob.media_type.as_str() {
                media::DOCKER_LAYER_GZIP => media::OCI_LAYER_GZIP,
                media::DOCKER_LAYER => media::OCI_LAYER,
                other => other,
            };
            layers.push(json!({"mediaType": media_type, "digest": blob.digest.to_string(), "size": blob.size}));
        }
        let mut manifest = json!({
            "schemaVersion": 2,
            "mediaType": media::OCI_MANIFEST,
            "config": {"mediaType": media::OCI_CONFIG, "digest": config_blob.digest.to_string(), "size": config_blob.size},
            "layers": layers,
        });
        let annotations = outputs::annotations_for(
            &self.options.annotations,
            outputs::AnnotationLevel::Manifest,
            Some(&platform),
        );
        if !annotations.is_empty() {
            manifest["annotations"] = json!(annotations);
        }
        let manifest_bytes = serde_json::to_vec(&manifest).ctx(|| "manifest".to_string())?;
        self.runtime.block_on(
            self.layout
                .put_blob_bytes(&config_blob.digest, &config_bytes),
        )?;
        Ok(BuiltImage {
            platform,
            manifest: Manifest::new(manifest_bytes, media::OCI_MANIFEST),
            config: config_blob,
            layer_dirs: result.layers.iter().map(|l| l.dir.clone()).collect(),
        })
    }

    /// A layer's blob in the build's compression: layers of base images
    /// stay as pulled (unless `force_compression`), the others are
    /// recompressed when their cached blob has another compression.
    fn output_blob(&self, layer: &Layer, images: &BTreeMap<String, ImageInfo>) -> R<BlobInfo> {
        let blob = &layer.record.blob;
        let wanted = self.options.compression;
        if outputs::Compression::of_media_type(&blob.media_type) == Some(wanted) {
            return Ok(blob.clone());
        }
        let from_base = images
            .values()
            .any(|i| i.layers.iter().any(|b| b.record.blob.digest == blob.digest));
        if from_base && !self.options.force_compression {
            return Ok(blob.clone());
        }
        outputs::recompress(
            &self.layout.blob_path(&blob.digest),
            blob,
            &layer.record.diff_id,
            wanted,
            &self.layout.dir().join("blobs"),
            &self.options.cache_dir.join("recompressed"),
            |d| self.layout.blob_path(d),
        )
        .ctx(|| {
            format!(
                "cannot recompress layer {} as {}",
                blob.digest,
                wanted.name()
            )
        })
    }
}

fn is_url(s: &str) -> bool {
    s.starts_with("http://") || s.starts_with("https://")
}

fn history_entry(created: &str, text: &str, empty: bool) -> Value {
    let mut v = json!({"created": created, "created_by": text, "comment": "berth build"});
    if empty {
        v["empty_layer"] = true.into();
    }
    v
}

fn one_line(text: &str) -> String {
    let first = text.lines().next().unwrap_or("");
    let mut shown: String = first.chars().take(100).collect();
    if shown.len() < text.len() {
        shown.push_str(" ...");
    }
    shown
}

/// Where a `RUN <<EOF` script with a `#!` line is put for the command: in
/// runc's /dev tmpfs (bind-mounted), so it never lands in the layer.
const HEREDOC_PATH: &str = "/dev/.berth-heredoc";

/// `RUN <<EOF` with nothing but the heredoc runs its body as the script
/// (BuildKit's rule): with the shell, or, when it starts with `#!`, as an
/// executable file (returned second); anything else runs as written.
fn heredoc_script(
    argv: &[String],
    heredocs: &[crate::dockerfile::Heredoc],
) -> (Vec<String>, Option<String>) {
    if let ([h], Some(last)) = (heredocs, argv.last()) {
        let first = last.lines().next().unwrap_or("").trim();
        let marker = first
            .trim_start_matches("<<")
            .trim_start_matches('-')
            .trim_matches(['"', '\'']);
        if first.starts_with("<<") && marker == h.name && argv.len() >= 2 {
            if h.body.starts_with("#!") {
                return (vec![HEREDOC_PATH.to_string()], Some(h.body.clone()));
            }
            let mut out = argv[..argv.len() - 1].to_vec();
            out.push(h.body.clone());
            return (out, None);
        }
    }
    (argv.to_vec(), None)
}

/// The plan's config with Docker's names, as it goes into the image.
/// Pass each line the child prints (stdout and stderr) to `output` as it
/// comes, then reap it: the exit code, or 128 + the signal that killed it.
fn stream_output_and_wait(
    mut child: std::process::Child,
    output: &(dyn Fn(&str) + Sync),
) -> io::Result<i32> {
    use std::io::{BufRead, BufReader};
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    std::thread::scope(|s| {
        if let Some(out) = stdout {
            s.spawn(move || {
                for line in BufReader::new(out).split(b'\n').map_while(Result::ok) {
                    output(&String::from_utf8_lossy(&line));
                }
            });
        }
        if let Some(err) = stderr {
            s.spawn(move || {
                for line in BufReader::new(err).split(b'\n').map_while(Result::ok) {
                    output(&String::from_utf8_lossy(&line));
                }
            });
        }
    });
    let status = child.wait()?;
    Ok(status.code().unwrap_or_else(|| {
        128 + std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0)
    }))
}

pub fn to_container_config(c: &StageConfig) -> ContainerConfig {
    ContainerConfig {
        user: c.user.clone(),
        exposed_ports: c
            .exposed_ports
            .iter()
            .map(|p| (p.clone(), Empty {}))
            .collect(),
        env: c.env.clone(),
        entrypoint: c.entrypoint.clone(),
        cmd: c.cmd.clone(),
        volumes: c.volumes.iter().map(|p| (p.clone(), Empty {})).collect(),
        working_dir: c.working_dir.clone(),
        labels: c.labels.clone(),
        stop_signal: c.stop_signal.clone(),
        on_build: c.on_build.clone(),
        healthcheck: c.healthcheck.clone(),
        shell: c.shell.clone(),
    }
}

/// An image's config as the plan's starting point.
pub fn to_stage_config(c: &ContainerConfig) -> StageConfig {
    StageConfig {
        user: c.user.clone().filter(|u| !u.is_empty()),
        exposed_ports: c.exposed_ports.keys().cloned().collect(),
        env: c.env.clone(),
        entrypoint: c.entrypoint.clone(),
        cmd: c.cmd.clone(),
        volumes: c.volumes.keys().cloned().collect(),
        working_dir: c.working_dir.clone().filter(|w| !w.is_empty()),
        labels: c.labels.clone(),
        stop_signal: c.stop_signal.clone(),
        on_build: c.on_build.clone(),
        healthcheck: c.healthcheck.clone(),
        shell: c.shell.clone(),
        author: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heredoc_only_runs_its_body() {
        let h = crate::dockerfile::Heredoc {
            name: "EOF".into(),
            body: "echo hi\necho there\n".into(),
            expand: true,
            strip_tabs: false,
            fd: None,
        };
        let argv = vec![
            "/bin/sh".to_string(),
            "-c".into(),
            "<<EOF\necho hi\necho there\nEOF".into(),
        ];
        assert_eq!(
            heredoc_script(&argv, std::slice::from_ref(&h)),
            (
                vec![
                    "/bin/sh".to_string(),
                    "-c".into(),
                    "echo hi\necho there\n".into()
                ],
                None
            )
        );
        let argv = vec![
            "/bin/sh".to_string(),
            "-c".into(),
            "<<EOF bash\necho hi\nEOF".into(),
        ];
        assert_eq!(
            heredoc_script(&argv, std::slice::from_ref(&h)),
            (argv, None)
        );
        let script = crate::dockerfile::Heredoc {
            body: "#!/bin/busybox sh\necho hi\n".into(),
            ..h
        };
        let argv = vec![
            "/bin/sh".to_string(),
            "-c".into(),
            "<<EOF\n#!/bin/busybox sh\necho hi\nEOF".into(),
        ];
        assert_eq!(
            heredoc_script(&argv, std::slice::from_ref(&script)),
            (vec![HEREDOC_PATH.to_string()], Some(script.body.clone()))
        );
    }
}
