//! Setting up a RUN's mounts on the host, for the step about to run: the
//! bind sources (context files, a view of a stage or image), cache
//! folders under their locks, secrets on a tmpfs, SSH agent proxies.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde_json::json;

use super::{bind_entry, cache_hash, flock, mount_tmpfs, resolve_in_root, AgentProxy, Prepared};
use crate::exec::error::{ExecError, R};
use crate::exec::files::{Matched, SourceRoot};
use crate::exec::{Executor, ImageInfo, StageResult};
use crate::mounts::{MountFrom, RunMount, Sharing};

/// What a RUN's bind mounts and cache seeds may read, and where it stages.
#[derive(Clone, Copy)]
struct MountSources<'m> {
    results: &'m [Option<StageResult>],
    images: &'m BTreeMap<String, ImageInfo>,
    step: &'m crate::plan::Step,
    scratch: &'m Path,
}

impl Executor<'_> {
    /// The part of a RUN's cache key for what its mounts read (see
    /// `crate::mounts::content_key`): the bound context files' content
    /// hash, a stage's key, an image's digest.
    pub(in crate::exec) fn mount_content(
        &self,
        mounts: &[RunMount],
        results: &[Option<StageResult>],
        images: &BTreeMap<String, ImageInfo>,
        step: &crate::plan::Step,
    ) -> R<Option<String>> {
        let mut parts = Vec::new();
        for m in mounts {
            let (Some(target), Some(from)) = (m.target(), m.source()) else {
                continue;
            };
            let content = match from {
                MountFrom::Stage { index } => results[*index]
                    .as_ref()
                    .map(|r| r.key.clone())
                    .ok_or_else(|| ExecError::Internal(format!("stage {index} has not run")))?,
                MountFrom::Image { reference } => images
                    .get(reference)
                    .map(|i| i.digest.to_string())
                    .ok_or_else(|| ExecError::Internal(format!("{reference} was not resolved")))?,
                MountFrom::Context => {
                    let source = match m {
                        RunMount::Bind { source, .. } | RunMount::Cache { source, .. } => source,
                        _ => "",
                    };
                    let (root, matched) = self.context_source(source, step)?;
                    root.content_hash(&[matched])
                        .map_err(|source| ExecError::Io {
                            what: "cannot read the build context".into(),
                            source,
                        })?
                }
            };
            parts.push((target.to_string(), content));
        }
        Ok(crate::mounts::content_key(&parts))
    }

    /// A bind source in the build context: symlinks resolved inside it,
    /// and not excluded by .dockerignore.
    fn context_source(
        &self,
        source: &str,
        step: &crate::plan::Step,
    ) -> R<(SourceRoot<'_>, Matched)> {
        let root = SourceRoot {
            root: &self.options.context,
            ignore: self.options.ignore.as_ref(),
            is_context: true,
            exclude: None,
        };
        let rel = resolve_in_root(&self.options.context, source)
            .map_err(|e| self.step_error(step, &format!("--mount source={source}: {e}")))?;
        let rel = rel.to_string_lossy().into_owned();
        let path = self.options.context.join(&rel);
        let excluded = !rel.is_empty()
            && self
                .options
                .ignore
                .as_ref()
                .is_some_and(|i| i.is_excluded(&rel));
        if fs::symlink_metadata(&path).is_err() || excluded {
            return Err(self.step_error(
                step,
                &format!(
                    "--mount source={}: not found in the build context (or excluded by .dockerignore)",
                    if source.is_empty() { "." } else { source }
                ),
            ));
        }
        Ok((root, Matched { path, rel }))
    }

    /// Set up a RUN's mounts on the host (see the module's notes).
    pub(in crate::exec) fn prepare_mounts(
        &self,
        mounts: &[RunMount],
        results: &[Option<StageResult>],
        images: &BTreeMap<String, ImageInfo>,
        step: &crate::plan::Step,
        scratch: &Path,
    ) -> R<Prepared> {
        let mut out = Prepared::default();
        let fail = |m: String| self.step_error(step, &m);
        let mut order: Vec<&RunMount> = mounts.iter().collect();
        // Parents before children (a mount under another one's target).
        order.sort_by_key(|m| m.target().map_or(0, |t| t.matches('/').count()));
        self.lock_caches_in_order(mounts, &mut out)
            .map_err(|e| fail(format!("--mount type=cache: cannot lock: {e}")))?;
        let sources = MountSources {
            results,
            images,
            step,
            scratch,
        };
        let mut secrets_dir: Option<PathBuf> = None;
        let mut ssh_seen = false;
        for (n, m) in order.into_iter().enumerate() {
            match m {
                RunMount::Bind {
                    target,
                    from,
                    source,
                    readwrite,
                } => {
                    let path = self.bind_source(from, source, &sources, n, &mut out)?;
                    let path = if *readwrite {
                        writable(&path, &scratch.join(format!("mount-rw-{n}")), &mut out).map_err(
                            |e| {
                                fail(format!(
                                    "--mount target={target}: cannot make a writable copy: {e}"
                                ))
                            },
                        )?
                    } else {
                        path
                    };
                    out.spec.push(bind_entry(target, &path, !readwrite));
                    out.targets.push(target.clone());
                }
                RunMount::Cache {
                    id,
                    target,
                    readonly,
                    sharing,
                    from,
                    source,
                    mode,
                    uid,
                    gid,
                } => {
                    let seed = match from {
                        Some(from) => Some(self.bind_source(from, source, &sources, n, &mut out)?),
                        None => None,
                    };
                    let dir = self
                        .cache_mount(id, *sharing, (*mode, *uid, *gid), seed.as_deref(), &mut out)
                        .map_err(|e| fail(format!("--mount type=cache,id={id}: {e}")))?;
                    out.spec.push(bind_entry(target, &dir, *readonly));
                    out.targets.push(target.clone());
                }
                RunMount::Tmpfs { target, size } => {
                    let mut options =
                        vec!["nosuid".to_string(), "nodev".into(), "mode=1777".into()];
                    if let Some(size) = size {
                        options.push(format!("size={size}"));
                    }
                    out.spec.push(json!({"destination": target, "type": "tmpfs", "source": "tmpfs", "options": options}));
                    out.targets.push(target.clone());
                }
                RunMount::Secret { .. } => {
                    self.prepare_secret(m, step, scratch, n, &mut secrets_dir, &mut out)?
                }
                RunMount::Ssh {
                    id,
                    target,
                    required,
                    mode,
                    uid,
                    gid,
                } => {
                    let Some(agent) = self.options.ssh_agents.get(id) else {
                        if *required {
                            return Err(fail(format!("SSH agent {id:?} is required but the build was not given one: pass --ssh {id}=$SSH_AUTH_SOCK")));
                        }
                        continue;
                    };
                    let (proxy, socket) = AgentProxy::start(agent, *mode, *uid, *gid)
                        .map_err(|e| fail(format!("cannot forward SSH agent {id:?}: {e}")))?;
                    out.guards.push(Box::new(proxy));
                    out.spec.push(bind_entry(target, &socket, false));
                    out.targets.push(target.clone());
                    if !ssh_seen {
                        out.env.push(format!("SSH_AUTH_SOCK={target}"));
                        ssh_seen = true;
                    }
                }
            }
        }
        Ok(out)
    }

    /// `type=secret`: its value as a variable and/or a file on a tmpfs
    /// (mounted on the first secret, with the runc bundle moved onto it,
    /// so no secret touches the disk).
    fn prepare_secret(
        &self,
        mount: &RunMount,
        step: &crate::plan::Step,
        scratch: &Path,
        n: usize,
        secrets_dir: &mut Option<PathBuf>,
        out: &mut Prepared,
    ) -> R<()> {
        let RunMount::Secret {
            id,
            target,
            env,
            required,
            mode,
            uid,
            gid,
        } = mount
        else {
            return Ok(());
        };
        let fail = |m: String| self.step_error(step, &m);
        let Some(value) = self.options.secrets.get(id) else {
            if *required {
                return Err(fail(format!("secret {id:?} is required but the build was not given it: pass --secret id={id},src=FILE")));
            }
            return Ok(());
        };
        if secrets_dir.is_none() {
            let dir = scratch.join("secrets");
            let guard = mount_tmpfs(&dir, "mode=0700")
                .map_err(|e| fail(format!("cannot mount a tmpfs for secrets: {e}")))?;
            out.guards.push(Box::new(guard));
            out.bundle = Some(dir.join("bundle"));
            *secrets_dir = Some(dir);
        }
        if let Some(var) = env {
            let text = std::str::from_utf8(&value.0)
                .ok()
                .filter(|t| !t.contains('\0'))
                .ok_or_else(|| fail(format!("secret {id:?} cannot be the variable {var}: its value is not text (UTF-8 without NUL)")))?;
            out.env.push(format!("{var}={text}"));
        }
        if let (Some(target), Some(dir)) = (target, secrets_dir.as_ref()) {
            let file = dir.join(format!("secret-{n}"));
            fs::write(&file, &value.0)
                .and_then(|_| std::os::unix::fs::chown(&file, Some(*uid), Some(*gid)))
                .and_then(|_| fs::set_permissions(&file, fs::Permissions::from_mode(*mode)))
                .map_err(|e| fail(format!("cannot write secret {id:?}: {e}")))?;
            out.spec.push(bind_entry(target, &file, true));
            out.targets.push(target.clone());
        }
        Ok(())
    }

    /// The host path a bind mount (or a cache seed) reads.
    fn bind_source(
        &self,
        from: &MountFrom,
        source: &str,
        sources: &MountSources<'_>,
        n: usize,
        out: &mut Prepared,
    ) -> R<PathBuf> {
        let MountSources {
            results,
            images,
            step,
            scratch,
        } = *sources;
        let fail = |m: String| self.step_error(step, &m);
        let layers = match from {
            MountFrom::Context => {
                let (root, matched) = self.context_source(source, step)?;
                if self.options.ignore.is_none() {
                    return Ok(matched.path);
                }
                // Only what .dockerignore lets through, as BuildKit sends it.
                let staged = scratch.join(format!("mount-context-{n}"));
                stage_context(&root, &matched, &staged).map_err(|e| {
                    fail(format!(
                        "--mount source={source}: cannot stage the context files: {e}"
                    ))
                })?;
                return Ok(staged);
            }
            MountFrom::Stage { index } => {
                &results[*index]
                    .as_ref()
                    .ok_or_else(|| fail(format!("stage {index} has not run")))?
                    .layers
            }
            MountFrom::Image { reference } => {
                &images
                    .get(reference)
                    .ok_or_else(|| fail(format!("{reference} was not resolved")))?
                    .layers
            }
        };
        let view = self.view(layers, scratch)?;
        let rel = resolve_in_root(&view.path, source)
            .map_err(|e| fail(format!("--mount source={source}: {e}")))?;
        let path = view.path.join(rel);
        if fs::symlink_metadata(&path).is_err() {
            return Err(fail(format!(
                "--mount source={source}: not found in {}",
                match from {
                    MountFrom::Stage { index } => format!("stage {index}"),
                    MountFrom::Image { reference } => reference.clone(),
                    MountFrom::Context => "the build context".into(),
                }
            )));
        }
        out.guards.push(Box::new(view));
        Ok(path)
    }

    /// Take the waiting (shared and locked) cache locks of a step in one
    /// order for every step, by id hash: two steps that name the same ids
    /// in other orders (their targets sort by depth) must not each hold
    /// one and wait for the other's forever.
    fn lock_caches_in_order(&self, mounts: &[RunMount], out: &mut Prepared) -> io::Result<()> {
        let mut wanted: BTreeMap<String, bool> = BTreeMap::new();
        for m in mounts {
            if let RunMount::Cache { id, sharing, .. } = m {
                if *sharing != Sharing::Private {
                    *wanted.entry(cache_hash(id)).or_default() |= *sharing == Sharing::Locked;
                }
            }
        }
        if wanted.is_empty() {
            return Ok(());
        }
        let locks = self.options.cache_dir.join("mounts").join("locks");
        fs::create_dir_all(&locks)?;
        for (hash, exclusive) in wanted {
            if let Some(lock) = flock(&locks.join(format!("{hash}.0")), exclusive, true)? {
                out.prelocked.insert(hash, lock);
            }
        }
        Ok(())
    }

    /// The directory of a cache mount, locked as `sharing` says; made
    /// (owned and moded as asked, seeded from `seed`) when new.
    fn cache_mount(
        &self,
        id: &str,
        sharing: Sharing,
        (mode, uid, gid): (u32, u32, u32),
        seed: Option<&Path>,
        out: &mut Prepared,
    ) -> io::Result<PathBuf> {
        if sharing != Sharing::Private {
            if let Some(path) = out.held.get(id) {
                return Ok(path.clone());
            }
        }
        let base = self.options.cache_dir.join("mounts");
        let hash = cache_hash(id);
        let dir = base.join("cache").join(&hash);
        let locks = base.join("locks");
        fs::create_dir_all(&dir)?;
        fs::create_dir_all(&locks)?;
        // A step may leave set-uid files in its cache: closed to other users.
        fs::set_permissions(&base, fs::Permissions::from_mode(0o700))?;
        fs::write(dir.join("id"), id)?;
        let lock_path = |n: usize| locks.join(format!("{hash}.{n}"));
        let prelocked = out.prelocked.remove(&hash);
        let (instance, lock) = match sharing {
            Sharing::Shared | Sharing::Locked if prelocked.is_some() => (0, prelocked),
            Sharing::Shared => (0, flock(&lock_path(0), false, true)?),
            Sharing::Locked => (0, flock(&lock_path(0), true, true)?),
            Sharing::Private => {
                let mut n = 0;
                loop {
                    if let Some(lock) = flock(&lock_path(n), true, false)? {
                        break (n, Some(lock));
                    }
                    n += 1;
                }
            }
        };
        out.guards.push(Box::new(lock));
        let path = dir.join(instance.to_string());
        if !path.is_dir() {
            let tmp = tempfile::Builder::new().prefix(".new-").tempdir_in(&dir)?;
            if let Some(seed) = seed {
                if !seed.is_dir() {
                    return Err(io::Error::other("its from/source is not a directory"));
                }
                crate::exec::chroot::materialize(&[seed.to_path_buf()], tmp.path())?;
            }
            std::os::unix::fs::chown(tmp.path(), Some(uid), Some(gid))?;
            fs::set_permissions(tmp.path(), fs::Permissions::from_mode(mode))?;
            let made = tmp.keep();
            if fs::rename(&made, &path).is_err() {
                // Another build made it first.
                let _ = fs::remove_dir_all(&made);
            }
        }
        out.held.insert(id.to_string(), path.clone());
        Ok(path)
    }
}

/// A writable stand-in for `path` whose writes are discarded: an overlay
/// over a directory, a copy of a file (or of a directory an overlay
/// cannot take).
fn writable(path: &Path, scratch: &Path, out: &mut Prepared) -> io::Result<PathBuf> {
    let (upper, work, merged) = (scratch.join("u"), scratch.join("w"), scratch.join("m"));
    for d in [&upper, &work, &merged] {
        fs::create_dir_all(d)?;
    }
    if path.is_dir() {
        if let Ok(mount) =
            crate::exec::runc::Mount::overlay(&[path.to_path_buf()], Some((&upper, &work)), &merged)
        {
            out.guards.push(Box::new(mount));
            return Ok(merged);
        }
        crate::exec::chroot::materialize(&[path.to_path_buf()], &merged)?;
        return Ok(merged);
    }
    let copy = scratch.join("file");
    fs::copy(path, &copy)?;
    Ok(copy)
}

/// Copy (hard-link where possible) what `.dockerignore` lets through of a
/// context source into `dest`.
fn stage_context(root: &SourceRoot<'_>, matched: &Matched, dest: &Path) -> io::Result<()> {
    root.walk(matched, &mut |path, sub| {
        let target = if sub.is_empty() {
            dest.to_path_buf()
        } else {
            dest.join(sub)
        };
        let meta = fs::symlink_metadata(path)?;
        if meta.is_dir() {
            fs::create_dir_all(&target)?;
            fs::set_permissions(&target, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
        } else if meta.file_type().is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(path)?, &target)?;
        } else if fs::hard_link(path, &target).is_err() {
            fs::copy(path, &target)?;
        }
        Ok(())
    })
}
