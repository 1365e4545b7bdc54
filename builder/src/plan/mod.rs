//! Compile a Dockerfile into a build plan: pure data that says what each
//! stage and step will do, in what order, and under which cache key, before
//! anything runs (BuildKit's "compile, then execute").
//!
//! Scoping follows the Dockerfile reference:
//! - ARGs before the first FROM are global: usable in FROM lines only; a
//!   stage sees one after re-declaring it with `ARG NAME` (no default);
//! - an ARG is in scope from its line to the end of its stage, and in the
//!   stages built FROM that stage; `--build-arg` overrides its default;
//! - ENV wins over an ARG of the same name; both are in RUN's environment;
//! - TARGETPLATFORM, BUILDPLATFORM and their OS/ARCH/VARIANT parts are
//!   automatic global ARGs; HTTP_PROXY and friends reach RUN from
//!   `--build-arg` without an ARG, but stay out of the cache key unless
//!   declared (Docker's rule, so a proxy change does not rebuild).
//!
//! Cache keys chain like BuildKit's: a layer step's key hashes its parent
//! layer's key and everything that decides its result (the expanded
//! instruction, RUN's environment, user, working directory and shell).
//! Metadata-only instructions (CMD, LABEL, EXPOSE, ...) change the image
//! config, not a layer, so they take no key and do not invalidate the
//! layers after them. What is only known at execution — the content of
//! context files for COPY/ADD, the digest of a base image not given in
//! [`PlanOptions::base_images`] — enters the key as a placeholder, and the
//! step is marked `provisional`; the executor recomputes the chain with
//! [`chain_key`] once it knows them.
//!
//! The planner's parts: `planner` splits the Dockerfile into stages and
//! resolves each stage's FROM; `step` compiles one instruction (one
//! function per instruction); `keys` chains the cache keys; `order` finds
//! the needed stages and their schedule; `display` is `--dry-run`'s text.

mod display;
mod keys;
mod order;
mod planner;
mod step;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::dockerfile::{self, AddOptions, Heredoc};
use crate::mounts::{RunInputs, RunMount};
use crate::{BuildError, Warning};
use planner::Planner;

/// What to build, besides the Dockerfile.
#[derive(Clone, Debug, Default)]
pub struct PlanOptions {
    /// `--build-arg NAME=VALUE`.
    pub build_args: BTreeMap<String, String>,
    /// `--target STAGE`; the last stage when unset.
    pub target: Option<String>,
    /// `--platform OS/ARCH[/VARIANT]`; the build platform when unset.
    pub target_platform: Option<String>,
    /// The platform doing the build; this machine's when unset.
    pub build_platform: Option<String>,
    /// What is known about base images, by the reference written in the
    /// Dockerfile (after expansion). The executor fills this after
    /// resolving the images and plans again, so that `$PATH` and friends
    /// expand from the image's ENV and keys name exact digests.
    pub base_images: BTreeMap<String, BaseImage>,
    /// The secret and SSH ids and entitlements the build was given, for
    /// `RUN --mount` and `--security` checks.
    pub run_inputs: RunInputs,
}

impl PlanOptions {
    /// The key of [`PlanOptions::base_images`] for `reference` pulled for
    /// `platform`: one reference can be used on two platforms in one build
    /// (`FROM --platform=$BUILDPLATFORM img` and `FROM img`).
    pub fn image_key(reference: &str, platform: &str) -> String {
        format!("{reference} for {platform}")
    }

    /// What is known about `reference` on `platform`: the entry for that
    /// platform, else the one under the bare reference.
    pub fn base_image(&self, reference: &str, platform: &str) -> Option<&BaseImage> {
        self.base_images
            .get(&Self::image_key(reference, platform))
            .or_else(|| self.base_images.get(reference))
    }
}

/// A base image's facts that matter to the plan.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct BaseImage {
    /// The manifest digest the reference resolved to.
    pub digest: Option<String>,
    /// The image config's `Env`.
    pub env: Vec<String>,
    /// The rest of the image's run-time config (Cmd, Entrypoint, User,
    /// WorkingDir, ...), which the stage starts from; its `env` is ignored
    /// in favour of the field above.
    pub config: Option<StageConfig>,
}

/// The build plan.
#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    /// The stage the build produces.
    pub target: usize,
    pub target_platform: String,
    pub build_platform: String,
    pub syntax: Option<String>,
    /// ARGs before the first FROM with their values.
    pub global_args: Vec<ArgValue>,
    pub stages: Vec<Stage>,
    /// The needed stages in run order: each group's stages depend only on
    /// earlier groups, so a group's stages can run in parallel.
    pub schedule: Vec<Vec<usize>>,
    pub warnings: Vec<Warning>,
}

/// An ARG and the value it ended up with (None: declared without one).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ArgValue {
    pub name: String,
    pub value: Option<String>,
}

/// One build stage (one FROM).
#[derive(Clone, Debug, Serialize)]
pub struct Stage {
    pub index: usize,
    /// `AS name`, lower case.
    pub name: Option<String>,
    /// The FROM line.
    pub line: usize,
    pub base: Base,
    /// `FROM --platform=...`, expanded.
    pub platform: Option<String>,
    /// False when the target does not need this stage: it is skipped.
    pub needed: bool,
    /// Stages this one needs first (its base, `COPY --from`, `RUN --mount from=`).
    pub depends_on: Vec<usize>,
    pub steps: Vec<Step>,
    /// The image config this stage ends with, as far as the Dockerfile and
    /// the known base image say.
    pub config: StageConfig,
    /// False when the base image's config was not given in
    /// [`PlanOptions::base_images`]: `config` then holds only what this
    /// Dockerfile sets, and `$VARS` from the image's ENV expanded empty.
    pub base_config_known: bool,
    /// The key of the stage's starting point (the base image or stage).
    pub base_key: String,
    /// The key of its last layer (`base_key` when it adds none).
    pub final_key: String,
    #[serde(skip)]
    error: Option<BuildError>,
    #[serde(skip)]
    base_provisional: bool,
}

/// Where a stage starts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Base {
    Scratch,
    Image {
        reference: String,
        digest: Option<String>,
    },
    Stage {
        index: usize,
    },
}

/// One instruction of a stage, resolved.
#[derive(Clone, Debug, Serialize)]
pub struct Step {
    pub line: usize,
    pub instruction: String,
    /// The instruction as it will run: variables expanded where the builder
    /// expands them, as written elsewhere.
    pub text: String,
    pub action: Action,
    /// Layer steps only: the key under which its layer is cached.
    pub cache_key: Option<String>,
    /// What the key hashes besides the parent key (canonical JSON): what
    /// the executor needs to recompute the chain.
    pub key_material: Option<String>,
    /// The key depends on something known only at execution (context
    /// content, an unresolved base image), here or upstream.
    pub provisional: bool,
}

/// What a step does.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Action {
    /// Run a command in a container; its changes are a layer.
    Run {
        /// The argv: the exec form as written, or SHELL + the shell text
        /// (with heredoc bodies appended, as a shell reads them).
        argv: Vec<String>,
        heredocs: Vec<Heredoc>,
        /// `NAME=value` for the command: ARGs in scope then ENV (ENV wins).
        env: Vec<String>,
        /// Proxy variables from `--build-arg`, in the environment but not
        /// in the cache key.
        uncached_env: Vec<String>,
        user: Option<String>,
        workdir: String,
        /// `--mount`s, checked, with defaults applied (secret values are
        /// never here: only their ids).
        mounts: Vec<RunMount>,
        network: Option<String>,
        security: Option<String>,
    },
    /// COPY or ADD; the copied files are a layer.
    Copy {
        from: Source,
        /// Source paths or patterns, expanded (heredoc markers excluded).
        sources: Vec<String>,
        /// `COPY <<EOF dest` files: name and (expanded) content.
        inline_files: Vec<InlineFile>,
        /// Absolute destination; a trailing `/` means "into this directory".
        dest: String,
        chown: Option<String>,
        chmod: Option<String>,
        link: bool,
        parents: bool,
        exclude: Vec<String>,
        /// Set for ADD.
        add: Option<AddOptions>,
    },
    /// WORKDIR creates its directory (a layer when it did not exist).
    Workdir { path: String },
    /// Changes only the image config (see the stage's `config`).
    Config,
    /// ARG: changes what later steps see, nothing else.
    Arg { args: Vec<ArgValue> },
}

/// Where COPY/ADD reads from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Source {
    Context,
    Stage { index: usize },
    Image { reference: String },
}

/// A file written from a heredoc.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct InlineFile {
    pub name: String,
    pub content: String,
}

/// The run-time config a stage ends with, with Docker's field names.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct StageConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(skip_serializing_if = "BTreeSet::is_empty")]
    pub exposed_ports: BTreeSet<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(skip_serializing_if = "BTreeSet::is_empty")]
    pub volumes: BTreeSet<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub on_build: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<HealthConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shell: Option<Vec<String>>,
    /// MAINTAINER: the image config's top-level `author`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
}

/// Docker's `Healthcheck` config, the same type the image config uses.
pub use berth_client::import::HealthConfig;

/// Build args Docker passes to RUN without an ARG, and keeps out of the
/// cache key and history unless the Dockerfile declares them.
pub const PROXY_ARGS: &[&str] = &[
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// The default SHELL on Linux.
const DEFAULT_SHELL: [&str; 2] = ["/bin/sh", "-c"];

/// Stands for context file content in a key until the executor hashes it.
const PENDING_CONTEXT: &str = "pending:context";

/// A layer's cache key: sha256 of the parent layer's key, the step's
/// material and the content digest of what it reads (None when it reads
/// nothing outside the material).
pub fn chain_key(parent: &str, material: &str, content: Option<&str>) -> String {
    let mut hasher = Sha256::new();
    for part in [parent, material, content.unwrap_or("")] {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    format!("sha256:{}", hex::encode(hasher.finalize()))
}

/// An `os/arch[/variant]` platform.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub arch: String,
    pub variant: Option<String>,
}

impl Platform {
    pub fn parse(text: &str) -> Result<Platform, String> {
        let parts: Vec<&str> = text.split('/').collect();
        match parts.as_slice() {
            [os, arch] | [os, arch, _] if !os.is_empty() && !arch.is_empty() => Ok(Platform {
                os: os.to_ascii_lowercase(),
                arch: arch.to_ascii_lowercase(),
                variant: parts
                    .get(2)
                    .filter(|v| !v.is_empty())
                    .map(|v| v.to_string()),
            }),
            _ => Err(format!(
                "invalid platform {text:?}: use OS/ARCH[/VARIANT], e.g. linux/amd64"
            )),
        }
    }

    /// This machine, in OCI's words.
    pub fn host() -> Platform {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            other => other,
        };
        Platform {
            os: "linux".into(),
            arch: arch.into(),
            variant: None,
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.arch)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// Compile a Dockerfile into a plan.
pub fn plan(dockerfile_text: &str, options: &PlanOptions) -> Result<Plan, BuildError> {
    let parsed = dockerfile::parse(dockerfile_text)?;
    Planner::new(parsed, options)?.run()
}

#[cfg(test)]
mod tests;
