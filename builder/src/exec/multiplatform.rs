//! One build for several platforms (`--platform linux/amd64,linux/arm64`):
//! each target platform gets its own plan (TARGETARCH and friends differ)
//! and its base images pulled for the platform each stage runs on; stages
//! whose plan key is the same in two platforms' plans (a `FROM
//! --platform=$BUILDPLATFORM` stage that does not use $TARGET*) do the same
//! work, so they run once and the other platforms take the result. The
//! platforms' builds run at the same time, one thread each. RUN for
//! a platform this machine cannot execute goes through a registered qemu
//! emulator (see [`crate::platforms`]).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use serde_json::Value;

use super::error::{ExecError, R};
use super::{Executor, ImageInfo, StageResult};
use crate::exec::to_stage_config;
use crate::plan::{Action, BaseImage, Plan, Source};
use crate::platforms::{Emulator, Execution};
use crate::PlanOptions;

/// One target platform's plan and the images its stages use, keyed by
/// [`PlanOptions::image_key`].
pub(super) struct PlatformBuild {
    pub plan: Plan,
    pub images: BTreeMap<String, ImageInfo>,
}

impl Executor<'_> {
    /// The target platforms, in the order given (None: the plan options').
    pub(super) fn target_platforms(&self) -> Vec<Option<String>> {
        if self.options.platforms.is_empty() {
            vec![self.options.plan_options.target_platform.clone()]
        } else {
            self.options.platforms.iter().cloned().map(Some).collect()
        }
    }

    /// Plan for `target`, pull the images its needed stages use (each on
    /// its stage's platform; `resolved` keeps what earlier platforms
    /// pulled), then plan again with their digests and configs (exact
    /// keys, `$PATH` from the image).
    pub(super) fn prepare_platform(
        &self,
        target: Option<&str>,
        resolved: &mut BTreeMap<String, ImageInfo>,
        warned: &mut BTreeSet<String>,
    ) -> R<PlatformBuild> {
        let mut plan_options = self.options.plan_options.clone();
        plan_options.target_platform = target.map(str::to_string);
        let first = crate::plan(&self.options.dockerfile_text, &plan_options)
            .map_err(|e| self.in_file(e))?;
        let mut images = BTreeMap::new();
        for stage in first.stages.iter().filter(|s| s.needed) {
            let on = stage
                .platform
                .clone()
                .unwrap_or_else(|| first.target_platform.clone());
            let mut refs = Vec::new();
            if let crate::plan::Base::Image { reference, .. } = &stage.base {
                refs.push(reference.clone());
            }
            for step in &stage.steps {
                if let Action::Copy {
                    from: Source::Image { reference },
                    ..
                } = &step.action
                {
                    refs.push(reference.clone());
                }
                if let Action::Run { mounts, .. } = &step.action {
                    refs.extend(mounts.iter().filter_map(|m| match m.source() {
                        Some(crate::mounts::MountFrom::Image { reference }) => {
                            Some(reference.clone())
                        }
                        _ => None,
                    }));
                }
            }
            for r in refs {
                let key = PlanOptions::image_key(&r, &on);
                if !resolved.contains_key(&key) {
                    let info = self.resolve_image(&r, &on)?;
                    resolved.insert(key.clone(), info);
                }
                if let Some(info) = resolved.get(&key) {
                    images.insert(key, info.clone());
                }
            }
        }
        for (key, info) in &images {
            plan_options.base_images.insert(
                key.clone(),
                BaseImage {
                    digest: Some(info.digest.to_string()),
                    env: info.config.env.clone(),
                    config: Some(to_stage_config(&info.config)),
                },
            );
        }
        let plan = crate::plan(&self.options.dockerfile_text, &plan_options)
            .map_err(|e| self.in_file(e))?;
        for w in &plan.warnings {
            let text = format!("warning: {w}");
            if warned.insert(text.clone()) {
                self.say(&text);
            }
        }
        Ok(PlatformBuild { plan, images })
    }

    /// Run the needed stages of one platform's plan; a stage another
    /// platform's build runs (or ran) under the same key is taken from it.
    pub(super) fn run_plan(&self, build: &PlatformBuild, shared: &SharedStages) -> R<StageResult> {
        let plan = &build.plan;
        let images = &build.images;
        let mut results: Vec<Option<StageResult>> = vec![None; plan.stages.len()];
        for group in &plan.schedule {
            // The stages of a group depend only on earlier groups: they
            // run at the same time, each on its own thread.
            let done: Vec<(usize, R<StageResult>)> = if group.len() == 1 {
                vec![(
                    group[0],
                    self.shared_stage(plan, group[0], &results, images, shared),
                )]
            } else {
                let this = &self;
                let results = &results;
                std::thread::scope(|s| {
                    let handles: Vec<_> = group
                        .iter()
                        .map(|&index| {
                            (
                                index,
                                s.spawn(move || {
                                    this.shared_stage(plan, index, results, images, shared)
                                }),
                            )
                        })
                        .collect();
                    handles
                        .into_iter()
                        .map(|(index, h)| {
                            let r = h.join().unwrap_or_else(|_| {
                                Err(ExecError::Internal(format!("stage {index} panicked")))
                            });
                            (index, r)
                        })
                        .collect()
                })
            };
            for (index, result) in done {
                results[index] = Some(result?);
            }
        }
        results[plan.target]
            .clone()
            .ok_or_else(|| ExecError::Internal("the target stage did not run".into()))
    }

    /// Run a stage, unless another platform's build runs it under the same
    /// key: then wait for that one and take its result.
    fn shared_stage(
        &self,
        plan: &Plan,
        index: usize,
        results: &[Option<StageResult>],
        images: &BTreeMap<String, ImageInfo>,
        shared: &SharedStages,
    ) -> R<StageResult> {
        let stage = &plan.stages[index];
        let cell = match shared.lock() {
            Ok(mut map) => map.entry(stage.final_key.clone()).or_default().clone(),
            Err(_) => return Err(ExecError::Internal("a stage thread panicked".into())),
        };
        let mut ran_here = false;
        let outcome = cell.get_or_init(|| {
            ran_here = true;
            self.run_stage(plan, index, results, images)
                .map(|r| (r, plan.target_platform.clone()))
                .map_err(Arc::new)
        });
        match outcome {
            Ok((result, _)) if ran_here => Ok(result.clone()),
            Ok((result, built_for)) => {
                self.say(&format!(
                    "[{}] {}: the same stage as in the {built_for} build, built once",
                    plan.target_platform,
                    stage_label(stage)
                ));
                Ok(result.clone())
            }
            Err(e) => Err(ExecError::Shared(Arc::clone(e))),
        }
    }
}

/// Stages by plan key, each run by the first platform's build that needs
/// it; the others wait for it and share the result (or the error).
pub(super) type SharedStages = std::sync::Mutex<
    BTreeMap<String, Arc<OnceLock<Result<(StageResult, String), Arc<ExecError>>>>>,
>;

fn stage_label(stage: &crate::plan::Stage) -> String {
    match &stage.name {
        Some(n) => format!("stage {} ({n})", stage.index),
        None => format!("stage {}", stage.index),
    }
}

/// The images a stage on `platform` sees, by the bare reference the
/// Dockerfile wrote (what the stage and COPY --from look up).
pub(super) fn images_on(
    images: &BTreeMap<String, ImageInfo>,
    platform: &str,
) -> BTreeMap<String, ImageInfo> {
    let suffix = PlanOptions::image_key("", platform);
    images
        .iter()
        .filter_map(|(key, info)| {
            key.strip_suffix(&suffix)
                .map(|reference| (reference.to_string(), info.clone()))
        })
        .collect()
}

/// The emulator's interpreter bind-mounted into a RUN container when it is
/// registered without the `F` flag (the kernel then opens it by path inside
/// the container); the empty mount point runc made is removed from the
/// layer afterwards.
pub(super) struct EmulatorMount {
    /// The mount point, relative to the root, when runc had to create it.
    created: Option<PathBuf>,
}

impl EmulatorMount {
    pub(super) fn add(execution: &Execution, rootfs: &std::path::Path, spec: &mut Value) -> Self {
        let Execution::Emulated(Emulator {
            interpreter,
            fix_binary: false,
            ..
        }) = execution
        else {
            return EmulatorMount { created: None };
        };
        let rel = interpreter
            .strip_prefix("/")
            .unwrap_or(interpreter)
            .to_path_buf();
        let existed = std::fs::symlink_metadata(rootfs.join(&rel)).is_ok();
        if let Some(mounts) = spec["mounts"].as_array_mut() {
            mounts.push(serde_json::json!({
                "destination": interpreter, "type": "bind",
                "source": interpreter, "options": ["rbind", "ro"],
            }));
        }
        EmulatorMount {
            created: (!existed).then_some(rel),
        }
    }

    /// Remove the mount point runc created from the step's upper directory.
    pub(super) fn clean(self, upper: &std::path::Path) {
        if let Some(rel) = self.created {
            let p = upper.join(rel);
            if std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_file() && m.len() == 0) {
                let _ = std::fs::remove_file(&p);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emulator_mount_only_without_the_f_flag() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = serde_json::json!({"mounts": []});
        let fixed = Execution::Emulated(Emulator {
            name: "qemu-aarch64".into(),
            interpreter: "/usr/bin/qemu-aarch64-static".into(),
            fix_binary: true,
        });
        EmulatorMount::add(&fixed, dir.path(), &mut spec).clean(dir.path());
        assert_eq!(spec["mounts"].as_array().unwrap().len(), 0);
        let by_path = Execution::Emulated(Emulator {
            fix_binary: false,
            ..match fixed {
                Execution::Emulated(e) => e,
                Execution::Native => unreachable!(),
            }
        });
        let mount = EmulatorMount::add(&by_path, dir.path(), &mut spec);
        assert_eq!(
            spec["mounts"][0]["destination"],
            "/usr/bin/qemu-aarch64-static"
        );
        // runc made an empty mount point in the upper directory.
        std::fs::create_dir_all(dir.path().join("usr/bin")).unwrap();
        std::fs::write(dir.path().join("usr/bin/qemu-aarch64-static"), "").unwrap();
        mount.clean(dir.path());
        assert!(!dir.path().join("usr/bin/qemu-aarch64-static").exists());
    }
}
