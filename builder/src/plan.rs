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

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::dockerfile::{
    self, AddOptions, Command, CommandLine, Copy, Directives, Heredoc, Instruction,
};
use crate::expand::{expand_heredoc, expand_word, lookup_in};
use crate::mounts::{self, MountFrom, RunInputs, RunMount};
use crate::{BuildError, Warning};

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

/// Variables in scope at one point of a stage.
#[derive(Clone, Debug, Default)]
struct Scope {
    env: Vec<String>,
    args: Vec<ArgValue>,
}

impl Scope {
    fn lookup(&self, name: &str) -> Option<String> {
        lookup_in(&self.env, name).or_else(|| {
            self.args
                .iter()
                .rev()
                .find(|a| a.name == name)
                .and_then(|a| a.value.clone())
        })
    }

    fn set_arg(&mut self, arg: ArgValue) {
        self.args.retain(|a| a.name != arg.name);
        self.args.push(arg);
    }

    fn set_env(&mut self, key: &str, value: &str) {
        let prefix = format!("{key}=");
        self.env.retain(|e| !e.starts_with(&prefix));
        self.env.push(format!("{key}={value}"));
    }
}

struct Planner<'a> {
    options: &'a PlanOptions,
    directives: Directives,
    instructions: Vec<Instruction>,
    warnings: Vec<Warning>,
    target_platform: Platform,
    build_platform: Platform,
    /// Global ARGs plus the automatic platform ARGs.
    global: Scope,
    declared_global: Vec<ArgValue>,
    /// Every ARG name the Dockerfile declares (for unused build args).
    declared: BTreeSet<String>,
    /// Every stage name, to its index.
    stage_names: BTreeMap<String, usize>,
}

impl<'a> Planner<'a> {
    fn new(
        parsed: dockerfile::Dockerfile,
        options: &'a PlanOptions,
    ) -> Result<Planner<'a>, BuildError> {
        let build_platform = match &options.build_platform {
            Some(p) => Platform::parse(p).map_err(BuildError::options)?,
            None => Platform::host(),
        };
        let target_platform = match &options.target_platform {
            Some(p) => Platform::parse(p).map_err(BuildError::options)?,
            None => build_platform.clone(),
        };
        let mut global = Scope::default();
        for (prefix, p) in [("TARGET", &target_platform), ("BUILD", &build_platform)] {
            for (suffix, value) in [
                ("PLATFORM", p.to_string()),
                ("OS", p.os.clone()),
                ("ARCH", p.arch.clone()),
                ("VARIANT", p.variant.clone().unwrap_or_default()),
            ] {
                global.set_arg(ArgValue {
                    name: format!("{prefix}{suffix}"),
                    value: Some(value),
                });
            }
        }
        Ok(Planner {
            options,
            directives: parsed.directives,
            instructions: parsed.instructions,
            warnings: parsed.warnings,
            target_platform,
            build_platform,
            global,
            declared_global: Vec::new(),
            declared: BTreeSet::new(),
            stage_names: BTreeMap::new(),
        })
    }

    fn escape(&self) -> char {
        self.directives.escape
    }

    fn run(mut self) -> Result<Plan, BuildError> {
        let instructions = std::mem::take(&mut self.instructions);
        let first_from = instructions.iter().position(|i| i.keyword == "FROM");
        for instruction in &instructions[..first_from.unwrap_or(instructions.len())] {
            if !matches!(instruction.command, Command::Arg { .. }) {
                return Err(BuildError::at(
                    instruction.line,
                    Some(&instruction.keyword),
                    "only ARG may come before the first FROM",
                ));
            }
        }
        let first_from = first_from.ok_or_else(|| BuildError {
            file: "Dockerfile".into(),
            line: None,
            instruction: None,
            message: "no FROM instruction: a Dockerfile must start with FROM (after parser directives, comments and ARGs)".into(),
        })?;
        for instruction in &instructions[..first_from] {
            let Command::Arg { args } = &instruction.command else {
                continue;
            };
            for decl in args {
                self.declared.insert(decl.name.clone());
                let value = match self.options.build_args.get(&decl.name) {
                    Some(v) => Some(v.clone()),
                    None => match &decl.default {
                        Some(d) => Some(self.expand(&self.global.clone(), d, instruction)?),
                        None => None,
                    },
                };
                let arg = ArgValue {
                    name: decl.name.clone(),
                    value,
                };
                self.global.set_arg(arg.clone());
                self.declared_global.retain(|a| a.name != arg.name);
                self.declared_global.push(arg);
            }
        }

        // Split into stages at each FROM.
        let mut stage_bodies: Vec<&[Instruction]> = Vec::new();
        let mut start = first_from;
        for (i, instruction) in instructions.iter().enumerate().skip(first_from + 1) {
            if instruction.keyword == "FROM" {
                stage_bodies.push(&instructions[start..i]);
                start = i;
            }
        }
        stage_bodies.push(&instructions[start..]);
        for (index, body) in stage_bodies.iter().enumerate() {
            if let Command::From {
                stage_name: Some(name),
                ..
            } = &body[0].command
            {
                self.stage_names.entry(name.clone()).or_insert(index);
            }
        }

        // Pass 1: resolve every stage (expansion, config, dependencies). An
        // error is kept with its stage: it only fails the build if the
        // target needs that stage, as in BuildKit.
        let mut stages: Vec<Stage> = Vec::new();
        let mut scopes: Vec<Scope> = Vec::new();
        for body in &stage_bodies {
            let (stage, scope) = self.compile_stage(body, &stages, &scopes, stage_bodies.len());
            stages.push(stage);
            scopes.push(scope);
        }

        let target = self.resolve_target(&stages)?;
        let needed = needed_stages(&stages, target);
        for stage in &mut stages {
            stage.needed = needed.contains(&stage.index);
        }
        if let Some(error) = stages
            .iter()
            .filter(|s| s.needed)
            .find_map(|s| s.error.clone())
        {
            return Err(error);
        }
        let order = topological_order(&stages, &needed)?;
        let schedule = schedule_groups(&stages, &order);

        // Pass 2: cache keys. Sources are always earlier stages, so file
        // order has every dependency keyed first; skipped stages get keys
        // too (unless they failed), which costs nothing and shows in JSON.
        for index in 0..stages.len() {
            if stages[index].error.is_none() {
                self.assign_keys(&mut stages, index);
            }
        }

        for name in self.options.build_args.keys() {
            let predefined = PROXY_ARGS.contains(&name.as_str())
                || name.starts_with("BUILDKIT_")
                || name == "SOURCE_DATE_EPOCH";
            if !predefined && !self.declared.contains(name) {
                self.warnings.push(Warning {
                    line: None,
                    check: "UnusedBuildArg".into(),
                    message: format!(
                        "build argument {name} was not consumed: no ARG {name} in the Dockerfile"
                    ),
                });
            }
        }
        self.warnings.sort_by_key(|w| w.line);

        Ok(Plan {
            target,
            target_platform: self.target_platform.to_string(),
            build_platform: self.build_platform.to_string(),
            syntax: self.directives.syntax.clone(),
            global_args: self.declared_global.clone(),
            stages,
            schedule,
            warnings: self.warnings,
        })
    }

    fn resolve_target(&self, stages: &[Stage]) -> Result<usize, BuildError> {
        let Some(wanted) = &self.options.target else {
            return Ok(stages.len() - 1);
        };
        let lower = wanted.to_ascii_lowercase();
        stages
            .iter()
            .find(|s| s.name.as_deref() == Some(lower.as_str()))
            .map(|s| s.index)
            .ok_or_else(|| {
                let names: Vec<&str> = stages.iter().filter_map(|s| s.name.as_deref()).collect();
                BuildError::options(if names.is_empty() {
                    format!("target stage {wanted:?} could not be found: no stage has a name (FROM IMAGE AS NAME)")
                } else {
                    format!(
                        "target stage {wanted:?} could not be found; the named stages are: {}",
                        names.join(", ")
                    )
                })
            })
    }

    fn expand(&self, scope: &Scope, text: &str, at: &Instruction) -> Result<String, BuildError> {
        expand_word(text, self.escape(), &|name| scope.lookup(name))
            .map_err(|e| BuildError::at(at.line, Some(&at.keyword), e))
    }

    /// Resolve one stage; errors are stored in the stage.
    fn compile_stage(
        &mut self,
        body: &[Instruction],
        earlier: &[Stage],
        earlier_scopes: &[Scope],
        stage_count: usize,
    ) -> (Stage, Scope) {
        let index = earlier.len();
        let from = &body[0];
        let Command::From {
            image,
            stage_name,
            platform,
        } = &from.command
        else {
            unreachable!("stages are split at FROM")
        };
        let mut stage = Stage {
            index,
            name: stage_name.clone(),
            line: from.line,
            base: Base::Scratch,
            platform: None,
            needed: false,
            depends_on: Vec::new(),
            steps: Vec::new(),
            config: StageConfig::default(),
            base_config_known: true,
            base_key: String::new(),
            final_key: String::new(),
            error: None,
            base_provisional: false,
        };
        if let Some(name) = stage_name {
            if earlier
                .iter()
                .any(|s| s.name.as_deref() == Some(name.as_str()))
            {
                stage.error = Some(BuildError::at(
                    from.line,
                    Some("FROM"),
                    format!("duplicate stage name {name:?}"),
                ));
                return (stage, Scope::default());
            }
        }
        let mut scope = Scope::default();
        match self.start_stage(
            &mut stage,
            &mut scope,
            from,
            image,
            platform.as_deref(),
            earlier,
            earlier_scopes,
        ) {
            Ok(()) => {}
            Err(e) => {
                stage.error = Some(e);
                return (stage, scope);
            }
        }
        let mut state = StageState::default();
        // ONBUILD triggers of the base (a stage, or an image whose config
        // is known) run first in the child, as if written right after its
        // FROM, and are not inherited further.
        let triggers = std::mem::take(&mut stage.config.on_build);
        let mut trigger_instructions = Vec::new();
        {
            for trigger in &triggers {
                let text = format!("# escape={}\n{trigger}", self.escape());
                match dockerfile::parse(&text) {
                    Ok(parsed) => {
                        for mut instruction in parsed.instructions {
                            instruction.line = from.line;
                            instruction.end_line = from.line;
                            trigger_instructions.push(instruction);
                        }
                    }
                    Err(e) => {
                        stage.error = Some(BuildError::at(from.line, Some("ONBUILD"), e.message));
                        return (stage, scope);
                    }
                }
            }
        }
        for instruction in trigger_instructions.iter().chain(&body[1..]) {
            if let Err(e) =
                self.compile_step(&mut stage, &mut scope, &mut state, instruction, stage_count)
            {
                stage.error = Some(e);
                break;
            }
        }
        stage.depends_on.sort_unstable();
        stage.depends_on.dedup();
        (stage, scope)
    }

    #[allow(clippy::too_many_arguments)]
    fn start_stage(
        &mut self,
        stage: &mut Stage,
        scope: &mut Scope,
        from: &Instruction,
        image: &str,
        platform: Option<&str>,
        earlier: &[Stage],
        earlier_scopes: &[Scope],
    ) -> Result<(), BuildError> {
        // FROM sees only the global ARGs; note any name it uses that none
        // declares (BuildKit's UndefinedArgInFrom check).
        let undefined = RefCell::new(Vec::new());
        let global = &self.global;
        let lookup = |name: &str| {
            let value = global.lookup(name);
            if value.is_none() && !global.args.iter().any(|a| a.name == name) {
                undefined.borrow_mut().push(name.to_string());
            }
            value
        };
        let fail = |e: String| BuildError::at(from.line, Some("FROM"), e);
        let reference = expand_word(image, self.escape(), &lookup).map_err(fail)?;
        stage.platform = match platform {
            Some(p) => Some(expand_word(p, self.escape(), &lookup).map_err(fail)?),
            None => None,
        };
        for name in undefined.into_inner() {
            self.warnings.push(Warning {
                line: Some(from.line),
                check: "UndefinedArgInFrom".into(),
                message: format!(
                    "FROM uses ${name}, which no ARG before the first FROM declares: it expands empty"
                ),
            });
        }
        if let Some(p) = &stage.platform {
            stage.platform = Some(crate::platforms::normalize(p).map_err(fail)?.to_string());
        }
        if reference.is_empty() {
            return Err(fail(format!("the base image {image:?} expands to nothing: give the ARG a default or a --build-arg")));
        }
        let lower = reference.to_ascii_lowercase();
        if let Some(base) = earlier
            .iter()
            .find(|s| s.name.as_deref() == Some(lower.as_str()))
        {
            stage.base = Base::Stage { index: base.index };
            stage.depends_on.push(base.index);
            stage.config = base.config.clone();
            stage.base_config_known = base.base_config_known;
            // A stage inherits its base stage's ARGs and ENV.
            *scope = earlier_scopes[base.index].clone();
        } else if lower == "scratch" {
            stage.base = Base::Scratch;
        } else {
            let on = stage.platform.clone();
            let on = on.unwrap_or_else(|| self.target_platform.to_string());
            let known = self.options.base_image(&reference, &on);
            stage.base = Base::Image {
                reference: reference.clone(),
                digest: known.and_then(|k| k.digest.clone()),
            };
            stage.base_config_known = known.is_some();
            if let Some(known) = known {
                if let Some(config) = &known.config {
                    stage.config = config.clone();
                }
                stage.config.env = known.env.clone();
                scope.env = known.env.clone();
            }
        }
        Ok(())
    }

    fn compile_step(
        &mut self,
        stage: &mut Stage,
        scope: &mut Scope,
        state: &mut StageState,
        instruction: &Instruction,
        stage_count: usize,
    ) -> Result<(), BuildError> {
        let keyword = instruction.keyword.as_str();
        let fail = |e: String| BuildError::at(instruction.line, Some(keyword), e);
        let config = &mut stage.config;
        let workdir = config.working_dir.clone().unwrap_or_else(|| "/".into());
        let mut text = instruction.source.clone();
        let action = match &instruction.command {
            Command::From { .. } => unreachable!("stages are split at FROM"),
            Command::Arg { args } => {
                let mut resolved = Vec::new();
                for decl in args {
                    self.declared.insert(decl.name.clone());
                    let value = match self.options.build_args.get(&decl.name) {
                        Some(v) => Some(v.clone()),
                        None => match &decl.default {
                            Some(d) => Some(self.expand(scope, d, instruction)?),
                            // `ARG NAME` inherits a global value.
                            None => self.global.lookup(&decl.name),
                        },
                    };
                    let arg = ArgValue {
                        name: decl.name.clone(),
                        value,
                    };
                    scope.set_arg(arg.clone());
                    resolved.push(arg);
                }
                // Show the values the build will use, not the defaults.
                let shown: Vec<String> = resolved.iter().map(arg_text).collect();
                text = format!("ARG {}", shown.join(" "));
                Action::Arg { args: resolved }
            }
            Command::Env { vars, legacy } => {
                if *legacy {
                    self.legacy_warning(instruction);
                }
                // Every substitution in one ENV sees the values from before
                // it (the reference: `ENV abc=bye def=$abc` uses the old abc).
                let mut pairs = Vec::new();
                for kv in vars {
                    pairs.push(self.key_value(scope, kv, *legacy, instruction)?);
                }
                let mut shown = Vec::new();
                for (k, v) in pairs {
                    scope.set_env(&k, &v);
                    shown.push(format!("{k}={v}"));
                }
                config.env = scope.env.clone();
                text = format!("ENV {}", shown.join(" "));
                Action::Config
            }
            Command::Label { labels, legacy } => {
                if *legacy {
                    self.legacy_warning(instruction);
                }
                let mut pairs = Vec::new();
                for kv in labels {
                    pairs.push(self.key_value(scope, kv, *legacy, instruction)?);
                }
                for (k, v) in pairs {
                    config.labels.insert(k, v);
                }
                Action::Config
            }
            Command::Maintainer { name } => {
                self.warnings.push(Warning {
                    line: Some(instruction.line),
                    check: "MaintainerDeprecated".into(),
                    message:
                        "MAINTAINER is deprecated: use LABEL org.opencontainers.image.authors=..."
                            .into(),
                });
                config.author = Some(name.clone());
                Action::Config
            }
            Command::Run(run) => {
                let shell = config
                    .shell
                    .clone()
                    .unwrap_or_else(|| DEFAULT_SHELL.iter().map(|s| s.to_string()).collect());
                let argv = match &run.command {
                    CommandLine::Exec(argv) => argv.clone(),
                    CommandLine::Shell(script) => {
                        // A shell reads heredoc bodies after the line that
                        // opens them.
                        let mut full = script.clone();
                        for h in &instruction.heredocs {
                            full.push('\n');
                            full.push_str(&h.body);
                            full.push_str(&h.name);
                        }
                        let mut argv = shell.clone();
                        argv.push(full);
                        argv
                    }
                };
                let mut expanded = Vec::new();
                for m in &run.mounts {
                    expanded.push(self.expand(scope, m, instruction)?);
                }
                let fail = |m: String| BuildError::at(instruction.line, Some("RUN"), m);
                let mounts =
                    mounts::parse_mounts(&expanded, &workdir, &mut |name| match find_stage(
                        &self.stage_names,
                        stage_count,
                        name,
                        stage.index,
                        instruction,
                    ) {
                        Some(Ok(index)) => Ok(MountFrom::Stage { index }),
                        Some(Err(e)) => Err(e.message.replace("cannot copy from", "cannot mount")),
                        None => Ok(MountFrom::Image {
                            reference: name.to_string(),
                        }),
                    })
                    .map_err(fail)?;
                mounts::check_inputs(&mounts, &self.options.run_inputs).map_err(fail)?;
                for m in &mounts {
                    if let Some(MountFrom::Stage { index }) = m.source() {
                        stage.depends_on.push(*index);
                    }
                }
                let network = opt_expand(self, scope, &run.network, instruction)?
                    .or_else(|| self.options.run_inputs.network.clone());
                let security = opt_expand(self, scope, &run.security, instruction)?;
                mounts::parse_network(network.as_deref()).map_err(fail)?;
                mounts::parse_security(security.as_deref(), self.options.run_inputs.allow_insecure)
                    .map_err(fail)?;
                // ARGs in scope, then ENV: ENV wins on a shared name.
                let mut env: Vec<String> = scope
                    .args
                    .iter()
                    .filter(|a| lookup_in(&scope.env, &a.name).is_none())
                    .filter_map(|a| a.value.as_ref().map(|v| format!("{}={v}", a.name)))
                    .collect();
                env.extend(scope.env.iter().cloned());
                let uncached_env = PROXY_ARGS
                    .iter()
                    .filter(|p| !scope.args.iter().any(|a| a.name == **p))
                    .filter_map(|p| self.options.build_args.get(*p).map(|v| format!("{p}={v}")))
                    .collect();
                Action::Run {
                    argv,
                    heredocs: instruction.heredocs.clone(),
                    env,
                    uncached_env,
                    user: config.user.clone(),
                    workdir,
                    mounts,
                    network,
                    security,
                }
            }
            Command::Cmd { command } => {
                self.once_per_stage(state, instruction);
                config.cmd = Some(self.command_argv(config, command, instruction));
                state.cmd_set = true;
                Action::Config
            }
            Command::Entrypoint { command } => {
                self.once_per_stage(state, instruction);
                config.entrypoint = Some(self.command_argv(config, command, instruction));
                // A new ENTRYPOINT drops a CMD inherited from the base, as
                // Docker does; one set in this stage stays.
                if !state.cmd_set {
                    config.cmd = None;
                }
                Action::Config
            }
            Command::Shell { shell } => {
                config.shell = Some(shell.clone());
                Action::Config
            }
            Command::Workdir { path } => {
                let expanded = self.expand(scope, path, instruction)?;
                if expanded.is_empty() {
                    return Err(fail("the path expands to nothing".into()));
                }
                let joined = if expanded.starts_with('/') {
                    expanded
                } else {
                    format!("{workdir}/{expanded}")
                };
                let resolved = crate::dockerignore::clean(&joined);
                config.working_dir = Some(resolved.clone());
                text = format!("WORKDIR {resolved}");
                Action::Workdir { path: resolved }
            }
            Command::User { user } => {
                let expanded = self.expand(scope, user, instruction)?;
                if expanded.is_empty() {
                    return Err(fail("the user expands to nothing".into()));
                }
                text = format!("USER {expanded}");
                config.user = Some(expanded);
                Action::Config
            }
            Command::Expose { ports } => {
                let mut shown = Vec::new();
                for p in ports {
                    let expanded = self.expand(scope, p, instruction)?;
                    for port in parse_ports(&expanded).map_err(fail)? {
                        config.exposed_ports.insert(port);
                    }
                    shown.push(expanded);
                }
                text = format!("EXPOSE {}", shown.join(" "));
                Action::Config
            }
            Command::Volume { paths } => {
                for p in paths {
                    let expanded = self.expand(scope, p, instruction)?;
                    if expanded.trim().is_empty() {
                        return Err(fail(format!("the volume {p:?} expands to nothing")));
                    }
                    config.volumes.insert(expanded);
                }
                Action::Config
            }
            Command::StopSignal { signal } => {
                let expanded = self.expand(scope, signal, instruction)?;
                if !is_signal(&expanded) {
                    return Err(fail(format!(
                        "{expanded:?} is not a signal: use a name such as SIGTERM or SIGQUIT, or a number"
                    )));
                }
                text = format!("STOPSIGNAL {expanded}");
                config.stop_signal = Some(expanded);
                Action::Config
            }
            Command::Healthcheck { check } => {
                state.healthchecks += 1;
                if state.healthchecks == 2 {
                    self.multiple_warning(instruction);
                }
                config.healthcheck = Some(match check {
                    None => HealthConfig {
                        test: vec!["NONE".into()],
                        ..Default::default()
                    },
                    Some(h) => HealthConfig {
                        test: match &h.test {
                            CommandLine::Exec(argv) => std::iter::once("CMD".to_string())
                                .chain(argv.iter().cloned())
                                .collect(),
                            CommandLine::Shell(text) => vec!["CMD-SHELL".into(), text.clone()],
                        },
                        interval: h.interval.unwrap_or(0),
                        timeout: h.timeout.unwrap_or(0),
                        start_period: h.start_period.unwrap_or(0),
                        start_interval: h.start_interval.unwrap_or(0),
                        retries: h.retries.map(u64::from).unwrap_or(0),
                    },
                });
                Action::Config
            }
            Command::OnBuild { trigger } => {
                // Stored as written: it is expanded when a child build runs it.
                config.on_build.push(trigger.source.clone());
                Action::Config
            }
            Command::Copy(copy) | Command::Add(copy) => {
                let (action, shown) =
                    self.copy_action(scope, stage, copy, instruction, &workdir, stage_count)?;
                text = shown;
                action
            }
        };
        stage.steps.push(Step {
            line: instruction.line,
            instruction: instruction.keyword.clone(),
            text,
            action,
            cache_key: None,
            key_material: None,
            provisional: false,
        });
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn copy_action(
        &self,
        scope: &Scope,
        stage: &mut Stage,
        copy: &Copy,
        instruction: &Instruction,
        workdir: &str,
        stage_count: usize,
    ) -> Result<(Action, String), BuildError> {
        let fail = |e: String| BuildError::at(instruction.line, Some(&instruction.keyword), e);
        // BuildKit refuses variables in --from (a stage's name must be
        // known before any stage runs); so does Berth, with its advice.
        let from_name = match &copy.from {
            None => None,
            Some(raw) => {
                let processed = expand_word(raw, self.escape(), &|_| None).map_err(fail)?;
                if processed != *raw {
                    return Err(fail(format!(
                        "--from={raw}: variable expansion is not supported for --from; define a stage with FROM using a global ARG instead"
                    )));
                }
                Some(processed)
            }
        };
        let from = match from_name.clone() {
            None => Source::Context,
            Some(name) => match find_stage(
                &self.stage_names,
                stage_count,
                &name,
                stage.index,
                instruction,
            ) {
                Some(index) => {
                    let index = index?;
                    stage.depends_on.push(index);
                    Source::Stage { index }
                }
                None => Source::Image { reference: name },
            },
        };
        let mut sources = Vec::new();
        let mut inline_files = Vec::new();
        for source in &copy.sources {
            if let Some(h) = heredoc_for(source, &instruction.heredocs) {
                let content = if h.expand {
                    expand_heredoc(&h.body, self.escape(), &|name| scope.lookup(name))
                        .map_err(fail)?
                } else {
                    h.body.clone()
                };
                inline_files.push(InlineFile {
                    name: h.name.clone(),
                    content,
                });
                continue;
            }
            let expanded = self.expand(scope, source, instruction)?;
            if expanded.is_empty() {
                return Err(fail(format!("the source {source:?} expands to nothing")));
            }
            sources.push(expanded);
        }
        let dest = self.expand(scope, &copy.dest, instruction)?;
        if dest.is_empty() {
            return Err(fail("the destination expands to nothing".into()));
        }
        if sources.len() + inline_files.len() > 1 && !dest.ends_with('/') {
            return Err(fail(format!(
                "with several sources the destination must be a directory ending in /: write {dest}/"
            )));
        }
        let absolute = if dest.starts_with('/') {
            dest.clone()
        } else {
            format!("{}/{dest}", workdir.trim_end_matches('/'))
        };
        let mut resolved_dest = crate::dockerignore::clean(&absolute);
        if (dest.ends_with('/') || dest == "." || dest.ends_with("/."))
            && !resolved_dest.ends_with('/')
        {
            resolved_dest.push('/');
        }
        let mut exclude = Vec::new();
        for e in &copy.exclude {
            exclude.push(self.expand(scope, e, instruction)?);
        }
        let add = match &copy.add {
            Some(a) => Some(AddOptions {
                checksum: opt_expand(self, scope, &a.checksum, instruction)?,
                keep_git_dir: a.keep_git_dir,
                unpack: a.unpack,
            }),
            None => None,
        };
        let chown = opt_expand(self, scope, &copy.chown, instruction)?;
        let chmod = opt_expand(self, scope, &copy.chmod, instruction)?;
        crate::copyflags::check(
            &sources,
            copy.link,
            chown.as_deref(),
            add.as_ref(),
            &exclude,
        )
        .map_err(fail)?;
        let mut shown = vec![instruction.keyword.clone()];
        for (flag, value) in [("from", &from_name), ("chown", &chown), ("chmod", &chmod)] {
            if let Some(value) = value {
                shown.push(format!("--{flag}={value}"));
            }
        }
        if copy.link {
            shown.push("--link".into());
        }
        if copy.parents {
            shown.push("--parents".into());
        }
        shown.extend(exclude.iter().map(|e| format!("--exclude={e}")));
        shown.extend(sources.iter().cloned());
        shown.extend(inline_files.iter().map(|f| format!("<<{}", f.name)));
        shown.push(dest);
        Ok((
            Action::Copy {
                from,
                sources,
                inline_files,
                dest: resolved_dest,
                chown,
                chmod,
                link: copy.link,
                parents: copy.parents,
                exclude,
                add,
            },
            shown.join(" "),
        ))
    }

    fn key_value(
        &self,
        scope: &Scope,
        kv: &dockerfile::KeyValue,
        legacy: bool,
        at: &Instruction,
    ) -> Result<(String, String), BuildError> {
        if legacy {
            return Ok((
                self.expand(scope, &kv.key, at)?,
                self.expand(scope, &kv.value, at)?,
            ));
        }
        // The whole `K=V` word is processed, as BuildKit does, then split.
        let word = self.expand(scope, &format!("{}={}", kv.key, kv.value), at)?;
        let (k, v) = word.split_once('=').unwrap_or((word.as_str(), ""));
        if k.is_empty() {
            return Err(BuildError::at(
                at.line,
                Some(&at.keyword),
                format!("{:?} has an empty name", kv.key),
            ));
        }
        Ok((k.to_string(), v.to_string()))
    }

    fn command_argv(
        &mut self,
        config: &StageConfig,
        command: &CommandLine,
        at: &Instruction,
    ) -> Vec<String> {
        match command {
            CommandLine::Exec(argv) => argv.clone(),
            CommandLine::Shell(text) => {
                self.warnings.push(Warning {
                    line: Some(at.line),
                    check: "JSONArgsRecommended".into(),
                    message: format!(
                        "{} in shell form runs under a shell that does not pass signals on: prefer the JSON form, e.g. {} [\"prog\", \"arg\"]",
                        at.keyword, at.keyword
                    ),
                });
                let mut argv = config
                    .shell
                    .clone()
                    .unwrap_or_else(|| DEFAULT_SHELL.iter().map(|s| s.to_string()).collect());
                argv.push(text.clone());
                argv
            }
        }
    }

    fn once_per_stage(&mut self, state: &mut StageState, at: &Instruction) {
        let count = match at.keyword.as_str() {
            "CMD" => &mut state.cmds,
            _ => &mut state.entrypoints,
        };
        *count += 1;
        if *count == 2 {
            self.multiple_warning(at);
        }
    }

    fn multiple_warning(&mut self, at: &Instruction) {
        self.warnings.push(Warning {
            line: Some(at.line),
            check: "MultipleInstructionsDisallowed".into(),
            message: format!(
                "more than one {} in a stage: only the last one takes effect",
                at.keyword
            ),
        });
    }

    fn legacy_warning(&mut self, at: &Instruction) {
        self.warnings.push(Warning {
            line: Some(at.line),
            check: "LegacyKeyValueFormat".into(),
            message: format!(
                "\"{} key value\" is deprecated: write {} key=value",
                at.keyword, at.keyword
            ),
        });
    }

    /// Give every layer step of a stage its key (its dependencies have
    /// theirs already).
    fn assign_keys(&self, stages: &mut [Stage], index: usize) {
        let on_platform = stages[index]
            .platform
            .clone()
            .unwrap_or_else(|| self.target_platform.to_string());
        let (base_key, mut provisional) = match &stages[index].base {
            Base::Scratch => (chain_key("", "scratch", None), false),
            Base::Image { reference, digest } => {
                let material = serde_json::json!({
                    "image": reference,
                    "digest": digest,
                    "platform": stages[index].platform.clone().unwrap_or_else(|| self.target_platform.to_string()),
                });
                (chain_key("", &material.to_string(), None), digest.is_none())
            }
            Base::Stage { index: base } => (
                stages[*base].final_key.clone(),
                stages[*base].base_provisional,
            ),
        };
        let sources: Vec<(String, bool)> = stages
            .iter()
            .map(|s| (s.final_key.clone(), s.base_provisional))
            .collect();
        let stage = &mut stages[index];
        stage.base_key = base_key.clone();
        let mut parent = base_key;
        for step in &mut stage.steps {
            let (material, content, pending) = match &step.action {
                Action::Run {
                    argv,
                    env,
                    user,
                    workdir,
                    mounts,
                    network,
                    security,
                    ..
                } => {
                    let mut env = env.clone();
                    env.sort();
                    let material = serde_json::json!({
                        "run": argv, "env": env, "user": user, "workdir": workdir,
                        "mounts": mounts, "network": network, "security": security,
                    });
                    // What bind mounts (and cache seeds) read decides the
                    // result too, as in BuildKit.
                    let mut pending = false;
                    let parts: Vec<(String, String)> = mounts
                        .iter()
                        .filter_map(|m| Some((m.target()?.to_string(), m.source()?)))
                        .map(|(target, from)| {
                            let content = match from {
                                MountFrom::Stage { index } => {
                                    pending |= sources[*index].1;
                                    sources[*index].0.clone()
                                }
                                MountFrom::Image { reference } => match self
                                    .options
                                    .base_images
                                    .get(reference)
                                    .and_then(|b| b.digest.clone())
                                {
                                    Some(digest) => digest,
                                    None => {
                                        pending = true;
                                        format!("pending:image:{reference}")
                                    }
                                },
                                MountFrom::Context => {
                                    pending = true;
                                    PENDING_CONTEXT.to_string()
                                }
                            };
                            (target, content)
                        })
                        .collect();
                    (material, mounts::content_key(&parts), pending)
                }
                Action::Copy {
                    from,
                    sources: paths,
                    inline_files,
                    dest,
                    chown,
                    chmod,
                    link,
                    parents,
                    exclude,
                    add,
                } => {
                    let material = serde_json::json!({
                        "copy": paths, "inline": inline_files, "dest": dest, "chown": chown,
                        "chmod": chmod, "link": link, "parents": parents, "exclude": exclude,
                        "add": add, "from": from,
                    });
                    let (content, pending) = match from {
                        Source::Stage { index } => {
                            (Some(sources[*index].0.clone()), sources[*index].1)
                        }
                        Source::Image { reference } => match self
                            .options
                            .base_image(reference, &on_platform)
                            .and_then(|b| b.digest.clone())
                        {
                            Some(digest) => (Some(digest), false),
                            None => (Some(format!("pending:image:{reference}")), true),
                        },
                        Source::Context if paths.is_empty() => (None, false),
                        Source::Context => match add.as_ref().and_then(|a| a.checksum.clone()) {
                            // ADD --checksum names the content itself (a git
                            // source's key is its commit, asked at execution).
                            Some(checksum)
                                if !paths.iter().any(|p| crate::exec::git::is_git_url(p)) =>
                            {
                                (Some(checksum), false)
                            }
                            Some(_) => (Some(PENDING_CONTEXT.to_string()), true),
                            None => (Some(PENDING_CONTEXT.to_string()), true),
                        },
                    };
                    (material, content, pending)
                }
                Action::Workdir { path } => (serde_json::json!({ "mkdir": path }), None, false),
                Action::Config | Action::Arg { .. } => continue,
            };
            let material = material.to_string();
            provisional |= pending;
            let link = matches!(step.action, Action::Copy { link: true, .. });
            let (key, next) =
                crate::copyflags::layer_keys(&parent, &material, content.as_deref(), link);
            step.cache_key = Some(key);
            step.key_material = Some(material);
            step.provisional = provisional;
            parent = next;
        }
        stage.final_key = parent;
        stage.base_provisional = provisional;
    }
}

/// Per-stage counters for warnings and the CMD/ENTRYPOINT interplay.
#[derive(Default)]
struct StageState {
    cmds: usize,
    entrypoints: usize,
    healthchecks: usize,
    cmd_set: bool,
}

fn opt_expand(
    planner: &Planner<'_>,
    scope: &Scope,
    value: &Option<String>,
    at: &Instruction,
) -> Result<Option<String>, BuildError> {
    value
        .as_ref()
        .map(|v| planner.expand(scope, v, at))
        .transpose()
}

/// The heredoc a COPY source like `<<EOF` or `<<-"EOF"` names.
fn heredoc_for<'h>(source: &str, heredocs: &'h [Heredoc]) -> Option<&'h Heredoc> {
    let rest = source
        .trim_start_matches(|c: char| c.is_ascii_digit())
        .strip_prefix("<<")?;
    let rest = rest.strip_prefix('-').unwrap_or(rest);
    let name: String = rest.chars().filter(|c| *c != '"' && *c != '\'').collect();
    heredocs.iter().find(|h| h.name == name)
}

/// A `--from` value naming a stage: by index (`0`) or by name. `None`
/// means it names an image; `Some(Err)` a stage it may not use (itself, or
/// one defined after it).
fn find_stage(
    stage_names: &BTreeMap<String, usize>,
    stage_count: usize,
    name: &str,
    current: usize,
    at: &Instruction,
) -> Option<Result<usize, BuildError>> {
    let fail = |message: String| Some(Err(BuildError::at(at.line, Some(&at.keyword), message)));
    let found = match name.parse::<usize>() {
        Ok(n) if n >= stage_count => {
            return fail(format!(
                "--from={n}: there is no stage {n} (stages are numbered from 0, and there are {stage_count})"
            ))
        }
        Ok(n) => n,
        Err(_) => *stage_names.get(&name.to_ascii_lowercase())?,
    };
    if found == current {
        return fail(format!("--from={name} names the stage it is in"));
    }
    // Stages run in file order as far as sources go (BuildKit's rule).
    if found > current {
        return fail(format!(
            "cannot copy from stage {name:?}: it must be defined before the current stage ({current})"
        ));
    }
    Some(Ok(found))
}

/// The stages the target needs, itself included.
fn needed_stages(stages: &[Stage], target: usize) -> BTreeSet<usize> {
    let mut needed = BTreeSet::new();
    let mut todo = vec![target];
    while let Some(index) = todo.pop() {
        if needed.insert(index) {
            todo.extend(stages[index].depends_on.iter().copied());
        }
    }
    needed
}

/// The needed stages, dependencies first; a cycle is an error.
fn topological_order(stages: &[Stage], needed: &BTreeSet<usize>) -> Result<Vec<usize>, BuildError> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Visiting,
        Done,
    }
    fn visit(
        stages: &[Stage],
        index: usize,
        marks: &mut [Mark],
        path: &mut Vec<usize>,
        order: &mut Vec<usize>,
    ) -> Result<(), BuildError> {
        match marks[index] {
            Mark::Done => return Ok(()),
            Mark::Visiting => {
                let start = path.iter().position(|&p| p == index).unwrap_or(0);
                let names: Vec<String> = path[start..]
                    .iter()
                    .chain(std::iter::once(&index))
                    .map(|&i| stage_label(&stages[i]))
                    .collect();
                return Err(BuildError::at(
                    stages[index].line,
                    Some("FROM"),
                    format!("circular dependency between stages: {}", names.join(" -> ")),
                ));
            }
            Mark::New => {}
        }
        marks[index] = Mark::Visiting;
        path.push(index);
        for &dep in &stages[index].depends_on {
            visit(stages, dep, marks, path, order)?;
        }
        path.pop();
        marks[index] = Mark::Done;
        order.push(index);
        Ok(())
    }
    let mut marks = vec![Mark::New; stages.len()];
    let mut order = Vec::new();
    for &index in needed {
        visit(stages, index, &mut marks, &mut Vec::new(), &mut order)?;
    }
    Ok(order)
}

/// Group stages by depth: a stage's group is one after its deepest
/// dependency's, so each group's stages can run in parallel.
fn schedule_groups(stages: &[Stage], order: &[usize]) -> Vec<Vec<usize>> {
    let mut depth = vec![0usize; stages.len()];
    for &index in order {
        depth[index] = stages[index]
            .depends_on
            .iter()
            .map(|&d| depth[d] + 1)
            .max()
            .unwrap_or(0);
    }
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for &index in order {
        let d = depth[index];
        if groups.len() <= d {
            groups.resize(d + 1, Vec::new());
        }
        groups[d].push(index);
    }
    for group in &mut groups {
        group.sort_unstable();
    }
    groups
}

fn stage_label(stage: &Stage) -> String {
    match &stage.name {
        Some(name) => format!("{} ({name})", stage.index),
        None => stage.index.to_string(),
    }
}

// EXPOSE and STOPSIGNAL are checked as `berth import --change` checks them.
use berth_client::import::{is_signal, parse_ports};

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let target = &self.stages[self.target];
        writeln!(
            f,
            "target: stage {} for {} (building on {})",
            stage_label(target),
            self.target_platform,
            self.build_platform
        )?;
        if !self.global_args.is_empty() {
            let args: Vec<String> = self.global_args.iter().map(arg_text).collect();
            writeln!(f, "global args: {}", args.join(" "))?;
        }
        writeln!(f, "run order (the stages of a group can run in parallel):")?;
        for (n, group) in self.schedule.iter().enumerate() {
            let labels: Vec<String> = group
                .iter()
                .map(|&i| stage_label(&self.stages[i]))
                .collect();
            writeln!(f, "  {}. {}", n + 1, labels.join(", "))?;
        }
        for stage in &self.stages {
            writeln!(f)?;
            let base = match &stage.base {
                Base::Scratch => "scratch".to_string(),
                Base::Image {
                    reference,
                    digest: Some(d),
                } => format!("{reference}@{d}"),
                Base::Image {
                    reference,
                    digest: None,
                } => reference.clone(),
                Base::Stage { index } => format!("stage {}", stage_label(&self.stages[*index])),
            };
            let skipped = if stage.needed {
                ""
            } else {
                "  [skipped: the target does not need it]"
            };
            writeln!(
                f,
                "stage {} FROM {base} (line {}){skipped}",
                stage_label(stage),
                stage.line
            )?;
            if !stage.needed {
                continue;
            }
            for step in &stage.steps {
                let key = match &step.cache_key {
                    Some(k) => {
                        let short = k.strip_prefix("sha256:").unwrap_or(k);
                        let mark = if step.provisional { "~" } else { "" };
                        format!("  {mark}{}", &short[..12.min(short.len())])
                    }
                    None => String::new(),
                };
                writeln!(f, "  {:>4}  {}{key}", step.line, one_line(&step.text))?;
            }
        }
        if self
            .stages
            .iter()
            .any(|s| s.steps.iter().any(|st| st.provisional))
        {
            writeln!(
                f,
                "\n(~ key: completed at execution from context content or an image digest)"
            )?;
        }
        if !self.warnings.is_empty() {
            writeln!(f, "\nwarnings:")?;
            for w in &self.warnings {
                writeln!(f, "  {w}")?;
            }
        }
        Ok(())
    }
}

fn arg_text(arg: &ArgValue) -> String {
    match &arg.value {
        Some(v) => format!("{}={v}", arg.name),
        None => arg.name.clone(),
    }
}

/// Long or multi-line step text, cut to one readable line.
fn one_line(text: &str) -> String {
    let first = text.lines().next().unwrap_or("");
    let mut shown: String = first.chars().take(100).collect();
    if shown.len() < text.len() {
        shown.push_str(" ...");
    }
    shown
}

#[cfg(test)]
mod tests;
