//! Cache keys: each layer step's key chains its parent's key with what
//! decides its result; what only execution knows is a placeholder.

use super::planner::Planner;
use super::{chain_key, Action, Base, Source, Stage, PENDING_CONTEXT};
use crate::mounts::{self, MountFrom};

/// What decides a layer step's result: its material (the instruction as
/// JSON), the content it reads (when known at planning), and whether any
/// of that is still a placeholder for execution to fill in.
struct KeyParts {
    material: serde_json::Value,
    content: Option<String>,
    pending: bool,
}

impl Planner<'_> {
    /// Give every layer step of a stage its key (its dependencies have
    /// theirs already).
    pub(super) fn assign_keys(&self, stages: &mut [Stage], index: usize) {
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
            let Some(parts) = self.key_parts(&step.action, &sources, &on_platform) else {
                continue;
            };
            let material = parts.material.to_string();
            provisional |= parts.pending;
            let link = matches!(step.action, Action::Copy { link: true, .. });
            let (key, next) =
                crate::copyflags::layer_keys(&parent, &material, parts.content.as_deref(), link);
            step.cache_key = Some(key);
            step.key_material = Some(material);
            step.provisional = provisional;
            parent = next;
        }
        stage.final_key = parent;
        stage.base_provisional = provisional;
    }

    /// A step's key parts; None for a step that makes no layer. `sources`
    /// is each stage's final key and whether it is provisional.
    fn key_parts(
        &self,
        action: &Action,
        sources: &[(String, bool)],
        on_platform: &str,
    ) -> Option<KeyParts> {
        Some(match action {
            Action::Run { .. } => self.run_key_parts(action, sources),
            Action::Copy { .. } => self.copy_key_parts(action, sources, on_platform),
            Action::Workdir { path } => KeyParts {
                material: serde_json::json!({ "mkdir": path }),
                content: None,
                pending: false,
            },
            Action::Config | Action::Arg { .. } => return None,
        })
    }

    /// RUN: the command and its environment; what bind mounts (and cache
    /// seeds) read decides the result too, as in BuildKit.
    fn run_key_parts(&self, action: &Action, sources: &[(String, bool)]) -> KeyParts {
        let Action::Run {
            argv,
            env,
            user,
            workdir,
            mounts,
            network,
            security,
            ..
        } = action
        else {
            unreachable!("called for RUN steps")
        };
        let mut env = env.clone();
        env.sort();
        let material = serde_json::json!({
            "run": argv, "env": env, "user": user, "workdir": workdir,
            "mounts": mounts, "network": network, "security": security,
        });
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
        KeyParts {
            material,
            content: mounts::content_key(&parts),
            pending,
        }
    }

    /// COPY/ADD: the flags and paths; the content is the source stage's
    /// key, the image's digest, or (context files) a placeholder.
    fn copy_key_parts(
        &self,
        action: &Action,
        sources: &[(String, bool)],
        on_platform: &str,
    ) -> KeyParts {
        let Action::Copy {
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
        } = action
        else {
            unreachable!("called for COPY/ADD steps")
        };
        let material = serde_json::json!({
            "copy": paths, "inline": inline_files, "dest": dest, "chown": chown,
            "chmod": chmod, "link": link, "parents": parents, "exclude": exclude,
            "add": add, "from": from,
        });
        let (content, pending) = match from {
            Source::Stage { index } => (Some(sources[*index].0.clone()), sources[*index].1),
            Source::Image { reference } => match self
                .options
                .base_image(reference, on_platform)
                .and_then(|b| b.digest.clone())
            {
                Some(digest) => (Some(digest), false),
                None => (Some(format!("pending:image:{reference}")), true),
            },
            Source::Context if paths.is_empty() => (None, false),
            Source::Context => match add.as_ref().and_then(|a| a.checksum.clone()) {
                // ADD --checksum names the content itself (a git
                // source's key is its commit, asked at execution).
                Some(checksum) if !paths.iter().any(|p| crate::exec::git::is_git_url(p)) => {
                    (Some(checksum), false)
                }
                Some(_) => (Some(PENDING_CONTEXT.to_string()), true),
                None => (Some(PENDING_CONTEXT.to_string()), true),
            },
        };
        KeyParts {
            material,
            content,
            pending,
        }
    }
}
