//! COPY and ADD steps: their cache keys' content part, and the staging of
//! the copied files into a directory that becomes the layer.
//!
//! - `--exclude` drops matching paths (the `.dockerignore` matcher, see
//!   [`crate::copyflags`]) from context, stage and image sources.
//! - `--parents` keeps each match's path (after a `./` pivot) under the
//!   destination, its directories copied with their own metadata.
//! - `--link` copies into an empty filesystem: nothing of the image below is
//!   read (no symlink in the destination path is followed, parents are new
//!   root-owned 0755 directories), and the layer's cache key does not chain
//!   on the steps before it (see [`copy_keys`]), so a changed base or earlier
//!   step reuses it.
//! - ADD of a Git repository checks out the ref with the system `git`
//!   ([`super::git`]); ADD of an http(s) URL revalidates the last download
//!   ([`super::remote`]).

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::error::{ExecError, IoContext, R};
use super::files::{self, CopyRules, Matched, SourceRoot};
use super::git;
use super::remote::{self, UrlCache};
use super::scratch::View;
use super::{Executor, ImageInfo, Layer, StageResult};
use crate::copyflags::{exclude_rules, kept_path, parents_pivot};
use crate::plan::{chain_key, Action, Source, Step};

/// An ADD source fetched over http(s).
fn is_url(s: &str) -> bool {
    s.starts_with("http://") || s.starts_with("https://")
}

/// The key a step's layer is cached under and the key after the step (see
/// [`crate::copyflags::layer_keys`]; they differ for `--link`).
pub(super) fn copy_keys(
    parent: &str,
    material: &str,
    content: Option<&str>,
    action: &Action,
) -> (String, String) {
    let link = matches!(action, Action::Copy { link: true, .. });
    crate::copyflags::layer_keys(parent, material, content, link)
}

impl Executor<'_> {
    /// The content part of a COPY/ADD key: the source stage's key, the
    /// image's digest, or what the context sources hold now (file contents;
    /// an http(s) body's digest, revalidated; a Git ref's commit).
    pub(super) fn copy_content(
        &self,
        step: &Step,
        results: &[Option<StageResult>],
        images: &std::collections::BTreeMap<String, ImageInfo>,
    ) -> R<Option<String>> {
        let Action::Copy {
            from,
            sources,
            add,
            exclude,
            ..
        } = &step.action
        else {
            return Ok(None);
        };
        Ok(match from {
            Source::Stage { index } => Some(
                results[*index]
                    .as_ref()
                    .map(|r| r.key.clone())
                    .ok_or_else(|| ExecError::Internal(format!("stage {index} has not run")))?,
            ),
            Source::Image { reference } => images.get(reference).map(|i| i.digest.to_string()),
            Source::Context if sources.is_empty() => None,
            Source::Context => {
                let checksum = add.as_ref().and_then(|a| a.checksum.as_deref());
                match checksum {
                    // ADD --checksum of an http(s) file names its content.
                    Some(c) if !sources.iter().any(|s| git::is_git_url(s)) => Some(c.to_string()),
                    _ => Some(self.context_hash(sources, exclude, checksum, step)?),
                }
            }
        })
    }

    fn context_hash(
        &self,
        sources: &[String],
        exclude: &[String],
        checksum: Option<&str>,
        step: &Step,
    ) -> R<String> {
        let fail = |e: String| self.step_error(step, &e);
        let rules = exclude_rules(exclude).map_err(fail)?;
        let ctx = SourceRoot {
            root: &self.options.context,
            ignore: self.options.ignore.as_ref(),
            is_context: true,
            exclude: rules.as_ref(),
        };
        let mut matched = Vec::new();
        let mut remote = Vec::new();
        for s in sources {
            if is_url(s) || git::is_git_url(s) {
                remote.push(s.clone());
                continue;
            }
            matched.extend(ctx.resolve(s).map_err(fail)?);
        }
        let mut hash = ctx
            .content_hash(&matched)
            .with_context(|| "cannot read the build context".to_string())?;
        for u in remote {
            // The content decides: the commit a ref names now, or the body
            // (fetched or revalidated once; the copy uses the same bytes).
            let content = if git::is_git_url(&u) {
                self.git_commit(&u, checksum).map_err(fail)?.0
            } else {
                self.fetch(&u, None).map_err(fail)?.digest
            };
            hash = chain_key(&hash, &u, Some(&content));
        }
        Ok(hash)
    }

    /// The commit (and ref name) a Git source names, asked once per build.
    fn git_commit(
        &self,
        source: &str,
        checksum: Option<&str>,
    ) -> Result<(String, Option<String>), String> {
        if let Some(known) = self
            .git_commits
            .lock()
            .ok()
            .and_then(|m| m.get(source).cloned())
        {
            return Ok(known);
        }
        let mut src = git::parse(source)?;
        src.ssh_agent = self.options.ssh_agents.get("default").cloned();
        let resolved = git::resolve(&src, checksum)?;
        if let Ok(mut m) = self.git_commits.lock() {
            m.insert(source.to_string(), resolved.clone());
        }
        Ok(resolved)
    }

    /// ADD URL: the body, fetched once per build (revalidated against the
    /// cache's last copy), checked against `--checksum` when given.
    fn fetch(&self, url: &str, checksum: Option<&str>) -> Result<remote::Fetched, String> {
        let known = self.fetched.lock().ok().and_then(|m| m.get(url).cloned());
        let got = match known {
            Some(f) => f,
            None => {
                let cache = UrlCache::new(&self.options.cache_dir.join("urls"));
                self.runtime.block_on(cache.fetch(url, checksum))?
            }
        };
        if let Some(expected) = checksum {
            if got.digest != expected {
                return Err(format!(
                    "{url}: checksum mismatch: expected {expected}, got {}",
                    got.digest
                ));
            }
        }
        if let Ok(mut m) = self.fetched.lock() {
            m.insert(url.to_string(), got.clone());
        }
        Ok(got)
    }

    /// COPY/ADD on a cache miss: stage what the sources name under the
    /// destination in a new directory, which becomes the layer.
    pub(super) fn copy_step(
        &self,
        layers: &[Layer],
        step: &Step,
        results: &[Option<StageResult>],
        images: &std::collections::BTreeMap<String, ImageInfo>,
        scratch: &Path,
    ) -> R<Option<Layer>> {
        let Action::Copy {
            from,
            sources,
            inline_files,
            dest,
            chown,
            chmod,
            link,
            parents: keep_parents,
            exclude,
            add,
        } = &step.action
        else {
            return Ok(None);
        };
        let fail = |m: String| self.step_error(step, &m);
        let exclude_rules = exclude_rules(exclude).map_err(fail)?;
        // --link reads nothing of the image: it copies into an empty one.
        let image = self.view(if *link { &[] } else { layers }, scratch)?;
        let source_view = self.copy_source_view(step, from, results, images, scratch)?;
        let root = SourceRoot {
            root: source_view
                .as_ref()
                .map_or(self.options.context.as_path(), |v| v.path.as_path()),
            ignore: if source_view.is_none() {
                self.options.ignore.as_ref()
            } else {
                None
            },
            is_context: source_view.is_none(),
            exclude: exclude_rules.as_ref(),
        };
        let clamp = self.options.source_date_epoch;
        let dest_clean = dest.trim_end_matches('/');
        let target = CopyTarget {
            dest,
            clean: if dest_clean.is_empty() {
                "/"
            } else {
                dest_clean
            },
            is_dir: dest.ends_with('/')
                || *keep_parents
                || sources.len() + inline_files.len() > 1
                || image.path.join(dest.trim_start_matches('/')).is_dir(),
            owner: self.copy_owner(step, chown.as_deref(), &image.path)?,
            mode: match chmod {
                Some(m) => Some(files::parse_chmod(m).map_err(fail)?),
                None => None,
            },
            clamp,
            default_time: clamp.unwrap_or(0) as i64,
        };
        let rules = CopyRules {
            chown: target.owner,
            chmod: target.mode.clone(),
            preserve_owner: !root.is_context,
            clamp,
        };
        let staging = scratch.join("stage");
        fs::create_dir_all(&staging).with_context(|| "cannot create a directory".to_string())?;
        let mut out = Stager {
            staging: &staging,
            image: &image.path,
            rules: &rules,
            default_time: target.default_time,
            dir_times: Vec::new(),
        };
        let unpack = add.as_ref().map(|a| a.unpack.unwrap_or(true));
        for (n, source) in sources.iter().enumerate() {
            if git::is_git_url(source) || is_url(source) {
                let Some(add) = add else {
                    return Err(fail(format!("{source}: COPY cannot fetch URLs; use ADD")));
                };
                let checkout = scratch.join(format!("git-{n}"));
                let remote = RemoteSource {
                    url: source,
                    add,
                    checkout: &checkout,
                    exclude: exclude_rules.as_ref(),
                };
                self.copy_remote(step, &remote, &target, &mut out)?;
                continue;
            }
            let local = LocalSource {
                root: &root,
                source,
                keep_parents: *keep_parents,
                unpack,
            };
            self.copy_local(step, &local, &target, &mut out)?;
        }
        for file in inline_files {
            self.copy_inline(step, file, &target, &mut out)?;
        }
        files::restore_dir_times(&staging, &out.dir_times)
            .map_err(|e| self.copying_error(step, e))?;
        drop(source_view);
        drop(image);
        self.commit_dir(&staging)
    }

    /// A view of the stage or image `--from` names (None: the context).
    fn copy_source_view(
        &self,
        step: &Step,
        from: &Source,
        results: &[Option<StageResult>],
        images: &std::collections::BTreeMap<String, ImageInfo>,
        scratch: &Path,
    ) -> R<Option<View>> {
        let fail = |m: String| self.step_error(step, &m);
        Ok(match from {
            Source::Context => None,
            Source::Stage { index } => {
                let r = results[*index]
                    .as_ref()
                    .ok_or_else(|| fail(format!("stage {index} has not run")))?;
                Some(self.view(&r.layers, scratch)?)
            }
            Source::Image { reference } => {
                let i = images
                    .get(reference)
                    .ok_or_else(|| fail(format!("{reference} was not resolved")))?;
                Some(self.view(&i.layers, scratch)?)
            }
        })
    }

    /// `--chown`: the owner, resolved in the image. A numeric user alone
    /// gets the same numeric group, as BuildKit does (a name gets its
    /// passwd group).
    fn copy_owner(&self, step: &Step, chown: Option<&str>, image: &Path) -> R<Option<(u32, u32)>> {
        let Some(spec) = chown else {
            return Ok(None);
        };
        files::resolve_user(image, spec)
            .map(|(u, g, _)| Some((u, if spec.parse::<u32>().is_ok() { u } else { g })))
            .map_err(|e| self.step_error(step, &format!("--chown={spec}: {e}")))
    }

    fn copying_error(&self, step: &Step, e: io::Error) -> ExecError {
        self.step_error(step, &format!("copying: {e}"))
    }

    /// ADD of a Git repository (checked out, then copied as a directory)
    /// or of an http(s) URL (the body, as a file).
    fn copy_remote(
        &self,
        step: &Step,
        remote: &RemoteSource<'_>,
        target: &CopyTarget<'_>,
        out: &mut Stager<'_>,
    ) -> R<()> {
        let fail = |m: String| self.step_error(step, &m);
        let io_fail = |e: io::Error| self.copying_error(step, e);
        let checksum = remote.add.checksum.as_deref();
        if git::is_git_url(remote.url) {
            let matched = self
                .git_checkout(
                    remote.url,
                    checksum,
                    remote.add.keep_git_dir,
                    remote.checkout,
                )
                .map_err(fail)?;
            let git_root = SourceRoot {
                root: remote.checkout,
                ignore: None,
                is_context: true,
                exclude: remote.exclude,
            };
            return out
                .directory(&git_root, &matched, target.clean)
                .map_err(io_fail);
        }
        let got = self.fetch(remote.url, checksum).map_err(fail)?;
        let file = if target.is_dir {
            format!("{}/{}", target.clean, remote::file_name(remote.url))
        } else {
            target.clean.to_string()
        };
        // Docker sets the file's mtime from Last-Modified.
        let mtime = got
            .modified
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(target.default_time, |d| d.as_secs() as i64);
        let mtime = target.clamp.map_or(mtime, |c| mtime.min(c as i64));
        out.new_file_from(
            &file,
            &got.path,
            0o600,
            target.mode.as_ref(),
            target.owner,
            mtime,
        )
        .map_err(io_fail)
    }

    /// A source in the context, a stage or an image: each file or
    /// directory it matches (archives unpacked for ADD).
    fn copy_local(
        &self,
        step: &Step,
        local: &LocalSource<'_, '_>,
        target: &CopyTarget<'_>,
        out: &mut Stager<'_>,
    ) -> R<()> {
        let io_fail = |e: io::Error| self.copying_error(step, e);
        let root = local.root;
        let dest_clean = target.clean;
        let owner = target.owner;
        let strip = if local.keep_parents {
            parents_pivot(local.source)
        } else {
            String::new()
        };
        let matched = root
            .resolve(local.source)
            .map_err(|m| self.step_error(step, &m))?;
        for m in &matched {
            let meta = fs::symlink_metadata(&m.path).map_err(io_fail)?;
            if meta.is_file() && local.unpack == Some(true) {
                if let Some(gzip) = files::archive_kind(&m.path).map_err(io_fail)? {
                    out.parents(dest_clean, owner).map_err(io_fail)?;
                    let into = out.path(dest_clean);
                    files::extract_archive(&m.path, gzip, &into).map_err(io_fail)?;
                    continue;
                }
            }
            if local.keep_parents {
                let kept = kept_path(&m.rel, &strip);
                out.parents(dest_clean, owner).map_err(io_fail)?;
                out.source_dirs(root, &strip, kept, dest_clean)
                    .map_err(io_fail)?;
                let file = join(dest_clean, kept);
                if meta.is_dir() {
                    out.directory(root, m, &file).map_err(io_fail)?;
                } else if !root.is_excluded_file(m) {
                    files::copy_one(&m.path, &out.path(&file), out.rules).map_err(io_fail)?;
                }
                continue;
            }
            if meta.is_dir() {
                out.directory(root, m, dest_clean).map_err(io_fail)?;
            } else if !root.is_excluded_file(m) {
                let name = Path::new(&m.rel)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let file = if target.is_dir {
                    format!("{}/{name}", dest_clean.trim_end_matches('/'))
                } else {
                    dest_clean.to_string()
                };
                let (parent, _) = file.rsplit_once('/').unwrap_or(("", &file));
                out.parents(parent, if target.is_dir { owner } else { None })
                    .map_err(io_fail)?;
                files::copy_one(&m.path, &out.path(&file), out.rules).map_err(io_fail)?;
            }
        }
        Ok(())
    }

    /// A heredoc source (`COPY <<EOF /dest`): a new file.
    fn copy_inline(
        &self,
        step: &Step,
        file: &crate::plan::InlineFile,
        target: &CopyTarget<'_>,
        out: &mut Stager<'_>,
    ) -> R<()> {
        // A heredoc named like a path (`<<a/b`, `<<../../x`) is a file
        // of that base name, as a source file is: never a path that
        // climbs out of the staging folder or through a copied link.
        let cleaned = crate::dockerignore::clean(&format!("/{}", file.name));
        let Some(name) = cleaned.rsplit('/').next().filter(|n| !n.is_empty()) else {
            return Err(self.step_error(step, &format!("<<{}: not a file name", file.name)));
        };
        let path = if target.dest.ends_with('/') {
            format!("{}/{name}", target.clean.trim_end_matches('/'))
        } else {
            target.clean.to_string()
        };
        out.new_file(
            &path,
            file.content.as_bytes(),
            0o644,
            target.mode.as_ref(),
            target.owner,
            target.default_time,
        )
        .map_err(|e| self.copying_error(step, e))
    }

    /// Check out a Git source into `checkout` with the reference's modes
    /// (directories and executables 755, other files 644) and times, and
    /// name what to copy (the subdirectory, or everything).
    fn git_checkout(
        &self,
        source: &str,
        checksum: Option<&str>,
        keep_git_dir: bool,
        checkout: &Path,
    ) -> Result<Matched, String> {
        let mut src = git::parse(source)?;
        src.ssh_agent = self.options.ssh_agents.get("default").cloned();
        let (commit, ref_name) = self.git_commit(source, checksum)?;
        git::checkout(&src, &commit, ref_name.as_deref(), checkout, keep_git_dir)?;
        let time = filetime::FileTime::from_unix_time(
            self.options.source_date_epoch.unwrap_or(0) as i64,
            0,
        );
        for entry in walkdir::WalkDir::new(checkout).follow_links(false) {
            let entry = entry.map_err(|e| e.to_string())?;
            let path = entry.path();
            let meta = fs::symlink_metadata(path).map_err(|e| e.to_string())?;
            if !meta.file_type().is_symlink() {
                let mode = if meta.is_dir() || meta.mode() & 0o100 != 0 {
                    0o755
                } else {
                    0o644
                };
                fs::set_permissions(path, fs::Permissions::from_mode(mode))
                    .map_err(|e| e.to_string())?;
            }
            filetime::set_symlink_file_times(path, time, time).map_err(|e| e.to_string())?;
        }
        let rel = src.subdir.clone().unwrap_or_default();
        // Symlinks in the subdirectory's path resolve inside the checkout
        // (a repository's link to a host directory must not be followed).
        let path = if rel.is_empty() {
            checkout.to_path_buf()
        } else {
            files::scoped_join(checkout, &rel)
        };
        if !fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
            return Err(format!(
                "{source}: no directory {rel:?} in the repository at commit {commit}"
            ));
        }
        Ok(Matched {
            path,
            rel: String::new(),
        })
    }
}

fn join(dir: &str, rel: &str) -> String {
    if rel.is_empty() {
        dir.to_string()
    } else {
        format!("{}/{rel}", dir.trim_end_matches('/'))
    }
}

/// Where and how a COPY/ADD writes, the same for all its sources.
struct CopyTarget<'d> {
    /// The destination as planned (a trailing `/` names a directory).
    dest: &'d str,
    /// The destination without its trailing `/` (`/` for the root).
    clean: &'d str,
    /// The sources go inside the destination (it ends in `/`, there are
    /// several, `--parents`, or the image has a directory there).
    is_dir: bool,
    /// `--chown`, resolved.
    owner: Option<(u32, u32)>,
    /// `--chmod`.
    mode: Option<files::Chmod>,
    /// SOURCE_DATE_EPOCH.
    clamp: Option<u64>,
    /// The time of files that bring none (heredocs, new directories).
    default_time: i64,
}

/// An ADD source fetched from elsewhere.
struct RemoteSource<'r> {
    url: &'r str,
    add: &'r crate::dockerfile::AddOptions,
    /// Where a Git source is checked out.
    checkout: &'r Path,
    /// `--exclude`, applied to a Git checkout.
    exclude: Option<&'r crate::dockerignore::DockerIgnore>,
}

/// A COPY/ADD source read from the context, a stage or an image.
struct LocalSource<'l, 'r> {
    root: &'l SourceRoot<'r>,
    source: &'l str,
    /// `--parents`.
    keep_parents: bool,
    /// ADD unpacks local archives (unless `--unpack=false`); None: COPY.
    unpack: Option<bool>,
}

/// Writes copied files below the staging directory, creating parents as the
/// image has them and remembering directory times to restore at the end.
struct Stager<'s> {
    staging: &'s Path,
    image: &'s Path,
    rules: &'s CopyRules,
    default_time: i64,
    dir_times: Vec<(PathBuf, i64)>,
}

impl Stager<'_> {
    fn path(&self, target: &str) -> PathBuf {
        self.staging.join(target.trim_start_matches('/'))
    }

    /// The directories of `dir` (absolute), with the image's metadata where
    /// it has them (see [`files::make_parents`]).
    fn parents(&mut self, dir: &str, owner: Option<(u32, u32)>) -> io::Result<()> {
        files::make_parents(self.staging, self.image, dir, owner, self.default_time)?;
        let mut rel = PathBuf::new();
        for part in dir.split('/').filter(|p| !p.is_empty()) {
            rel.push(part);
            if let Ok(m) = fs::metadata(self.staging.join(&rel)) {
                self.dir_times.push((rel.clone(), m.mtime()));
            }
        }
        Ok(())
    }

    /// `--parents`: the source's directories between the pivot and the
    /// match, under `dest`, copied with their own metadata.
    fn source_dirs(
        &mut self,
        root: &SourceRoot<'_>,
        strip: &str,
        kept: &str,
        dest: &str,
    ) -> io::Result<()> {
        let parts: Vec<&str> = kept.split('/').filter(|p| !p.is_empty()).collect();
        let mut rel = String::new();
        for part in parts.iter().take(parts.len().saturating_sub(1)) {
            rel = join(&rel, part).trim_start_matches('/').to_string();
            let target = self.path(&join(dest, &rel));
            match fs::symlink_metadata(&target) {
                Ok(m) if m.is_dir() => continue,
                // A symlink (or file) an earlier source put here: writes
                // below it would follow it onto the host.
                Ok(_) => fs::remove_file(&target)?,
                Err(_) => {}
            }
            // A directory of the source as it is; a symlink there becomes a
            // plain directory (never a link the next writes would follow).
            let source = files::scoped_join(root.root, &join(strip, &rel));
            if fs::symlink_metadata(&source).is_ok_and(|m| m.is_dir()) {
                files::copy_one(&source, &target, self.rules)?;
            } else {
                fs::create_dir(&target)?;
                fs::set_permissions(&target, fs::Permissions::from_mode(0o755))?;
                let t = filetime::FileTime::from_unix_time(self.default_time, 0);
                filetime::set_file_times(&target, t, t)?;
            }
            let t = fs::metadata(&target)?.mtime();
            if let Ok(r) = target.strip_prefix(self.staging) {
                self.dir_times.push((r.to_path_buf(), t));
            }
        }
        Ok(())
    }

    /// A directory source: its contents into `target` (the directory itself
    /// keeps the image's metadata when the image has it).
    fn directory(&mut self, root: &SourceRoot<'_>, m: &Matched, target: &str) -> io::Result<()> {
        let (parent, _) = target.rsplit_once('/').unwrap_or(("", target));
        self.parents(parent, None)?;
        let existing = self.image.join(target.trim_start_matches('/')).is_dir();
        let base = self.path(target);
        let staging = self.staging;
        let image = self.image;
        let rules = self.rules;
        let default_time = self.default_time;
        let dir_times = &mut self.dir_times;
        root.walk(m, &mut |path, sub| {
            let dst = if sub.is_empty() {
                base.clone()
            } else {
                base.join(sub)
            };
            if sub.is_empty() && existing {
                return files::make_parents(staging, image, target, None, default_time);
            }
            files::copy_one(path, &dst, rules)?;
            if fs::symlink_metadata(&dst).is_ok_and(|m| m.is_dir()) {
                let t = fs::metadata(&dst)?.mtime();
                if let Ok(rel) = dst.strip_prefix(staging) {
                    dir_times.push((rel.to_path_buf(), t));
                }
            }
            Ok(())
        })
    }

    /// A file made by the step (a URL's body, a heredoc).
    fn new_file(
        &mut self,
        target: &str,
        content: &[u8],
        default_mode: u32,
        chmod: Option<&files::Chmod>,
        owner: Option<(u32, u32)>,
        mtime: i64,
    ) -> io::Result<()> {
        let (parent, _) = target.rsplit_once('/').unwrap_or(("", target));
        self.parents(parent, None)?;
        let path = self.path(target);
        fs::write(&path, content)?;
        self.finish_file(&path, default_mode, chmod, owner, mtime)
    }

    /// As `new_file`, the content copied from a file (an ADD URL download).
    fn new_file_from(
        &mut self,
        target: &str,
        source: &Path,
        default_mode: u32,
        chmod: Option<&files::Chmod>,
        owner: Option<(u32, u32)>,
        mtime: i64,
    ) -> io::Result<()> {
        let (parent, _) = target.rsplit_once('/').unwrap_or(("", target));
        self.parents(parent, None)?;
        let path = self.path(target);
        let _ = fs::remove_file(&path);
        fs::copy(source, &path)?;
        self.finish_file(&path, default_mode, chmod, owner, mtime)
    }

    fn finish_file(
        &self,
        path: &Path,
        default_mode: u32,
        chmod: Option<&files::Chmod>,
        owner: Option<(u32, u32)>,
        mtime: i64,
    ) -> io::Result<()> {
        let path = path.to_path_buf();
        let (uid, gid) = owner.unwrap_or((0, 0));
        std::os::unix::fs::lchown(&path, Some(uid), Some(gid))?;
        let m = chmod.map_or(default_mode, |c| c.apply(default_mode, false));
        fs::set_permissions(&path, fs::Permissions::from_mode(m))?;
        let ft = filetime::FileTime::from_unix_time(mtime, 0);
        filetime::set_file_times(&path, ft, ft)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_layers_key_without_their_parent() {
        let link = Action::Copy {
            from: Source::Context,
            sources: vec!["a".into()],
            inline_files: vec![],
            dest: "/a".into(),
            chown: None,
            chmod: None,
            link: true,
            parents: false,
            exclude: vec![],
            add: None,
        };
        let (layer1, next1) = copy_keys("parent-1", "m", Some("c"), &link);
        let (layer2, next2) = copy_keys("parent-2", "m", Some("c"), &link);
        assert_eq!(layer1, layer2, "the layer does not depend on the parent");
        assert_ne!(next1, next2, "the steps after it still do");
        let Action::Copy {
            from,
            sources,
            inline_files,
            dest,
            ..
        } = link
        else {
            unreachable!()
        };
        let plain = Action::Copy {
            from,
            sources,
            inline_files,
            dest,
            chown: None,
            chmod: None,
            link: false,
            parents: false,
            exclude: vec![],
            add: None,
        };
        let (a, b) = copy_keys("parent-1", "m", Some("c"), &plain);
        assert_eq!(a, b);
        assert_ne!(a, copy_keys("parent-2", "m", Some("c"), &plain).0);
    }
}
