//! Run one stage's steps in order: each layer step's key is completed with
//! what it reads (COPY sources, RUN mounts), looked up in the cache, and
//! run on a miss; metadata steps only add history.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Instant;

use serde_json::{json, Value};

use super::error::{ExecError, IoContext, R};
use super::run_step::{heredoc_script, RunCtx};
use super::{copy, files, multiplatform, netfiles, Executor, ImageInfo, Layer, StageResult};
use crate::plan::{Action, Base, Plan, Stage, Step};

/// What a stage's steps run with: the plan, the stage's platform, and the
/// results and images they may read from.
struct StageInputs<'s> {
    plan: &'s Plan,
    stage: &'s Stage,
    platform: String,
    /// `[PLATFORM ]stage N (NAME)`, for the progress lines.
    label: String,
    results: &'s [Option<StageResult>],
    images: BTreeMap<String, ImageInfo>,
}

/// A stage as far as it has run: what its next step builds on.
struct StageSoFar {
    layers: Vec<Layer>,
    history: Vec<Value>,
    /// The cache key of the state after the last step.
    key: String,
    /// When the last layer was made (None: not yet known, a scratch base).
    created: Option<String>,
    /// The USER in effect, for WORKDIR's new directories.
    user: Option<String>,
}

impl Executor<'_> {
    pub(super) fn run_stage(
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
        let inputs = StageInputs {
            plan,
            stage,
            images: multiplatform::images_on(images, &platform),
            platform,
            label,
            results,
        };
        let mut so_far = self.stage_base(&inputs)?;
        for (n, step) in stage.steps.iter().enumerate() {
            if step.instruction == "USER" {
                so_far.user = step.text.strip_prefix("USER ").map(str::to_string);
            }
            match &step.action {
                Action::Arg { .. } => {}
                Action::Config => {
                    let created = so_far.created.clone().unwrap_or_else(|| self.now());
                    so_far
                        .history
                        .push(history_entry(&created, &step.text, true));
                }
                _ => self.layer_step(&inputs, n, step, &mut so_far)?,
            }
        }
        Ok(StageResult {
            layers: so_far.layers,
            history: so_far.history,
            key: so_far.key,
            created: so_far.created.unwrap_or_else(|| self.now()),
        })
    }

    /// What the stage starts from: its base image's or base stage's layers,
    /// history, key and USER (nothing for scratch).
    fn stage_base(&self, inputs: &StageInputs<'_>) -> R<StageSoFar> {
        let stage = inputs.stage;
        let so_far = match &stage.base {
            Base::Scratch => StageSoFar {
                layers: Vec::new(),
                history: Vec::new(),
                key: stage.base_key.clone(),
                created: None,
                user: None,
            },
            Base::Image { reference, .. } => {
                let info = inputs
                    .images
                    .get(reference)
                    .ok_or_else(|| ExecError::Internal(format!("{reference} was not resolved")))?;
                StageSoFar {
                    layers: info.layers.clone(),
                    history: info.history.clone(),
                    key: stage.base_key.clone(),
                    created: Some(info.created.clone()),
                    user: info.config.user.clone(),
                }
            }
            Base::Stage { index: base } => {
                let r = inputs.results[*base]
                    .as_ref()
                    .ok_or_else(|| ExecError::Internal(format!("stage {base} has not run")))?;
                StageSoFar {
                    layers: r.layers.clone(),
                    history: r.history.clone(),
                    key: r.key.clone(),
                    created: Some(r.created.clone()),
                    user: inputs.plan.stages[*base].config.user.clone(),
                }
            }
        };
        Ok(StageSoFar {
            user: so_far.user.filter(|u| !u.is_empty()),
            ..so_far
        })
    }

    /// A step that may make a layer (RUN, COPY/ADD, WORKDIR): taken from
    /// the cache under its key, or run.
    fn layer_step(
        &self,
        inputs: &StageInputs<'_>,
        n: usize,
        step: &Step,
        so_far: &mut StageSoFar,
    ) -> R<()> {
        let no = self.step_no.fetch_add(1, Ordering::Relaxed) + 1;
        self.say(&format!(
            "#{no} [{} {}/{}] {}",
            inputs.label,
            n + 1,
            inputs.stage.steps.len(),
            one_line(&step.text)
        ));
        let started = Instant::now();
        let scratch = self.work_dir()?;
        let content = self.step_content(inputs, step)?;
        let material = step.key_material.clone().unwrap_or_default();
        // The layer's key and the key after the step (they differ for COPY --link).
        let (new_key, next_key) =
            copy::copy_keys(&so_far.key, &material, content.as_deref(), &step.action);
        if let Some((layer, when)) = self.cache_get(&new_key) {
            self.record_used(&new_key, layer.as_ref(), &when);
            self.cached.fetch_add(1, Ordering::Relaxed);
            self.say(&format!("#{no} CACHED"));
            so_far.add(step, layer, when, next_key);
            return Ok(());
        }
        let layer = self.execute_step(
            inputs,
            step,
            no,
            &so_far.layers,
            so_far.user.clone(),
            &scratch.0,
        )?;
        let when = self.now();
        self.cache_put(&new_key, layer.as_ref(), &when)?;
        self.record_used(&new_key, layer.as_ref(), &when);
        so_far.add(step, layer, when, next_key);
        self.say(&format!(
            "#{no} DONE {:.1}s",
            started.elapsed().as_secs_f64()
        ));
        Ok(())
    }

    /// The part of a step's key only known now: what COPY/ADD and RUN's
    /// mounts read, and RUN's `--add-host` entries.
    fn step_content(&self, inputs: &StageInputs<'_>, step: &Step) -> R<Option<String>> {
        Ok(match &step.action {
            Action::Copy { .. } => self.copy_content(step, inputs.results, &inputs.images)?,
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
                match (
                    hosts,
                    self.mount_content(mounts, inputs.results, &inputs.images, step)?,
                ) {
                    (Some(h), Some(m)) => Some(format!("{h}\n{m}")),
                    (h, m) => h.or(m),
                }
            }
            _ => None,
        })
    }

    /// Run a layer step on a cache miss: its layer, or None when it
    /// changed nothing.
    fn execute_step(
        &self,
        inputs: &StageInputs<'_>,
        step: &Step,
        no: usize,
        layers: &[Layer],
        current_user: Option<String>,
        scratch: &Path,
    ) -> R<Option<Layer>> {
        match &step.action {
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
                    self.prepare_mounts(mounts, inputs.results, &inputs.images, step, scratch)?;
                let (argv, script) = heredoc_script(argv, heredocs);
                let mut env = env.clone();
                env.extend(uncached_env.iter().cloned());
                env.extend(prepared.env.iter().cloned());
                let ctx = RunCtx {
                    step,
                    no,
                    platform: &inputs.platform,
                    argv,
                    env,
                    user: user.as_deref(),
                    workdir,
                    network_none,
                    script,
                    mounts: &prepared,
                    insecure,
                };
                self.run_step(ctx, layers, scratch)
            }
            Action::Copy { .. } => {
                self.copy_step(layers, step, inputs.results, &inputs.images, scratch)
            }
            Action::Workdir { path } => self.workdir_step(layers, path, scratch, current_user),
            Action::Config | Action::Arg { .. } => Ok(None),
        }
    }

    /// WORKDIR: create the directory (owned by the current USER) unless
    /// the image has it.
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
        fs::create_dir_all(&staging).with_context(|| "cannot create a directory".to_string())?;
        let t = self.options.source_date_epoch.unwrap_or(0) as i64;
        files::make_parents(&staging, &view.path, path, owner, t)
            .with_context(|| format!("cannot create {path}"))?;
        drop(view);
        self.commit_dir(&staging)
    }
}

impl StageSoFar {
    /// Add a layer step's outcome (made or cached at `when`).
    fn add(&mut self, step: &Step, layer: Option<Layer>, when: String, next_key: String) {
        self.history
            .push(history_entry(&when, &step.text, layer.is_none()));
        self.layers.extend(layer);
        self.created = Some(when);
        self.key = next_key;
    }
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
