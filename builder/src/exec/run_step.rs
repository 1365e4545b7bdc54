//! A RUN step: in runc over an overlay of the image's layers (the upper
//! directory is the layer), or, without runc/overlayfs, chrooted in a copy
//! of the image (the layer is found by a scan).

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use serde_json::{json, Value};

use super::error::{ExecError, IoContext, R};
use super::scratch::COUNTER;
use super::{chroot, files, mounts, multiplatform, netfiles, runc, Executor, Isolation, Layer};
use crate::plan::Step;
use crate::platforms::Execution;
use crate::BuildError;

/// Everything one RUN needs: the plan's step, expanded for this build.
pub(super) struct RunCtx<'p> {
    pub step: &'p Step,
    /// The step's number in the progress output (`#3 | ...`).
    pub no: usize,
    /// The platform of the stage.
    pub platform: &'p str,
    pub argv: Vec<String>,
    /// `NAME=value`, the step's own environment and its mounts' (secrets,
    /// `SSH_AUTH_SOCK`).
    pub env: Vec<String>,
    pub user: Option<&'p str>,
    pub workdir: &'p str,
    /// `RUN --network=none`.
    pub network_none: bool,
    /// A `#!` heredoc script (see [`HEREDOC_PATH`]).
    pub script: Option<String>,
    /// `RUN --mount`s, set up on the host.
    pub mounts: &'p mounts::Prepared,
    /// `RUN --security=insecure` (allowed).
    pub insecure: bool,
}

/// The PATH a RUN gets when its environment sets none (Docker's default).
const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

impl Executor<'_> {
    fn report_isolation(&self) {
        if !self.isolation_reported.swap(true, Ordering::Relaxed) {
            self.say(&format!("isolation: {}", self.isolation.describe()));
        }
    }

    /// Run a RUN step over `layers`: its layer, or None when it changed
    /// nothing.
    pub(super) fn run_step(
        &self,
        mut ctx: RunCtx<'_>,
        layers: &[Layer],
        scratch: &Path,
    ) -> R<Option<Layer>> {
        let execution = self.execution_for(&ctx)?;
        self.report_isolation();
        if !ctx.env.iter().any(|e| e.starts_with("PATH=")) {
            ctx.env.insert(0, DEFAULT_PATH.into());
        }
        match self.isolation {
            Isolation::Chroot(_) => self.run_in_chroot(&ctx, layers, scratch),
            Isolation::Runc => self.run_in_runc(&ctx, layers, &execution, scratch),
        }
    }

    /// How this machine runs the stage's platform: natively or under a
    /// registered emulator (announced; chroot needs its F flag).
    fn execution_for(&self, ctx: &RunCtx<'_>) -> R<Execution> {
        let execution = crate::plan::Platform::parse(ctx.platform)
            .and_then(|wanted| crate::platforms::execution_for(&wanted))
            .map_err(|e| self.step_error(ctx.step, &e))?;
        if let Execution::Emulated(emulator) = &execution {
            self.say(&format!(
                "#{} {} under the {} emulator ({})",
                ctx.no,
                ctx.platform,
                emulator.name,
                emulator.interpreter.display()
            ));
            if !emulator.fix_binary && matches!(self.isolation, Isolation::Chroot(_)) {
                return Err(self.step_error(ctx.step, &format!("the {} emulator is registered without the F flag, which chroot isolation needs; register it with the F flag (qemu-user-static does)", emulator.name)));
            }
        }
        Ok(execution)
    }

    /// The error for a RUN whose process exited with `code`.
    fn process_failed(&self, ctx: &RunCtx<'_>, argv: &[String], code: i32) -> ExecError {
        ExecError::RunFailed {
            at: BuildError::at(ctx.step.line, Some(&ctx.step.instruction), "")
                .in_file(&self.options.dockerfile_name),
            command: argv.join(" "),
            code,
        }
    }

    /// RUN in runc: the rootfs is an overlay whose upper directory, once
    /// cleared of the mount points runc made, is the layer.
    fn run_in_runc(
        &self,
        ctx: &RunCtx<'_>,
        layers: &[Layer],
        execution: &Execution,
        scratch: &Path,
    ) -> R<Option<Layer>> {
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
            fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
        }
        let mut lowers: Vec<PathBuf> = layers.iter().rev().map(|l| l.dir.clone()).collect();
        // The network files' mount points, below the image (see
        // netfiles::mount_point_layer); it also stands in for an empty image.
        let netbase = scratch.join("netbase");
        netfiles::mount_point_layer(&netbase)
            .with_context(|| format!("cannot create {}", netbase.display()))?;
        lowers.push(netbase);
        let net = netfiles::NetFiles::write(
            &scratch.join("net"),
            ctx.network_none,
            &self.options.add_hosts,
        )
        .with_context(|| "cannot write the step's resolv.conf and hosts".to_string())?;
        let code;
        {
            let mount = runc::Mount::overlay(&lowers, Some((&upper, &work)), &rootfs)
                .runtime_context(|| "cannot mount the overlay for RUN".to_string())?;
            let (uid, gid, additional_gids) =
                files::resolve_user(mount.path(), ctx.user.unwrap_or("0"))
                    .map_err(|e| self.step_error(ctx.step, &e))?;
            let missing: Vec<&str> = runc::MOUNT_POINTS
                .iter()
                .copied()
                .filter(|m| fs::symlink_metadata(rootfs.join(&m[1..])).is_err())
                .collect();
            let mount_points = mounts::missing_mount_points(&rootfs, &ctx.mounts.targets);
            let script = match &ctx.script {
                Some(body) => Some(write_script(&scratch.join("heredoc"), body)?),
                None => None,
            };
            let mut spec = runc::runtime_spec(&runc::Process {
                argv: ctx.argv.clone(),
                env: ctx.env.clone(),
                cwd: ctx.workdir.to_string(),
                uid,
                gid,
                additional_gids,
                network_none: ctx.network_none,
            });
            if let Some(path) = &script {
                push_mount(&mut spec, bind_ro(HEREDOC_PATH, path));
            }
            if ctx.insecure {
                mounts::make_insecure(&mut spec);
            }
            let net_mounted: Vec<&str> = net
                .pairs()
                .into_iter()
                .filter(|(target, _)| netfiles::mountable(&rootfs, target))
                .map(|(target, source)| {
                    push_mount(&mut spec, bind_ro(&format!("/{target}"), source));
                    target
                })
                .collect();
            if let Some(list) = spec["mounts"].as_array_mut() {
                list.extend(ctx.mounts.spec.iter().cloned());
            }
            let emulator_mount = multiplatform::EmulatorMount::add(execution, &rootfs, &mut spec);
            let id = format!(
                "berth-build-{}-{}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            );
            let progress = self.progress;
            let no = ctx.no;
            code = runc::run(&bundle, &self.state_dir, &id, &spec, &|line| {
                progress(&format!("#{no} | {line}"))
            })
            .runtime_context(|| "cannot run runc".to_string())?;
            drop(mount);
            mounts::remove_mount_points(&upper, &mount_points);
            emulator_mount.clean(&upper);
            remove_runc_mount_points(&upper, &missing, &net_mounted);
        }
        if code != 0 {
            return Err(self.process_failed(ctx, &ctx.argv, code));
        }
        self.commit_dir(&upper)
    }

    /// RUN without runc/overlayfs: copy the image into a directory, chroot,
    /// and diff by scanning.
    fn run_in_chroot(
        &self,
        ctx: &RunCtx<'_>,
        layers: &[Layer],
        scratch: &Path,
    ) -> R<Option<Layer>> {
        let step = ctx.step;
        let rootfs = scratch.join("rootfs");
        let upper = scratch.join("upper");
        for d in [&rootfs, &upper] {
            fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
        }
        let dirs: Vec<PathBuf> = layers.iter().map(|l| l.dir.clone()).collect();
        chroot::materialize(&dirs, &rootfs)
            .with_context(|| "cannot copy the image's layers".to_string())?;
        // The network files' and RUN --mount points: made before the scan,
        // so the diff does not see them (the copy is this step's alone).
        let mut binds = self.chroot_net_binds(ctx, &rootfs, scratch)?;
        binds.extend(
            mounts::chroot_mounts(&rootfs, ctx.mounts)
                .map_err(|e| self.step_error(step, &format!("cannot prepare RUN --mount: {e}")))?,
        );
        let before =
            chroot::snapshot(&rootfs).with_context(|| "cannot scan the image".to_string())?;
        let script_path = rootfs.join(".berth-heredoc");
        let argv = match &ctx.script {
            Some(body) => {
                write_script(&script_path, body)?;
                vec!["/.berth-heredoc".to_string()]
            }
            None => ctx.argv.clone(),
        };
        let (uid, gid, groups) = files::resolve_user(&rootfs, ctx.user.unwrap_or("0"))
            .map_err(|e| self.step_error(step, &e))?;
        let progress = self.progress;
        let no = ctx.no;
        let ids = chroot::Ids { uid, gid, groups };
        let code = chroot::run(
            &rootfs,
            &argv,
            &ctx.env,
            ctx.workdir,
            &ids,
            ctx.network_none,
            &binds,
            &|line| progress(&format!("#{no} | {line}")),
        )
        .map_err(|e| self.step_error(step, &format!("cannot run {:?}: {e}", argv.join(" "))))?;
        if code != 0 {
            return Err(self.process_failed(ctx, &argv, code));
        }
        let _ = fs::remove_file(&script_path);
        chroot::diff(&rootfs, &before, &upper)
            .with_context(|| "cannot find the step's changes".to_string())?;
        self.commit_dir(&upper)
    }

    /// The step's resolv.conf and hosts, bound read-only over files made
    /// in the copied rootfs where the image has none.
    fn chroot_net_binds(
        &self,
        ctx: &RunCtx<'_>,
        rootfs: &Path,
        scratch: &Path,
    ) -> R<Vec<chroot::ChrootMount>> {
        let net = netfiles::NetFiles::write(
            &scratch.join("net"),
            ctx.network_none,
            &self.options.add_hosts,
        )
        .with_context(|| "cannot write the step's resolv.conf and hosts".to_string())?;
        let mut binds = Vec::new();
        for (target, source) in net.pairs() {
            if !netfiles::mountable(rootfs, target) {
                continue;
            }
            let point = rootfs.join(target);
            if fs::symlink_metadata(&point).is_err() {
                fs::create_dir_all(rootfs.join("etc"))
                    .and_then(|_| fs::write(&point, b""))
                    .with_context(|| format!("cannot create /{target}"))?;
            }
            binds.push(chroot::ChrootMount {
                target: point,
                source: Some(source.to_path_buf()),
                readonly: true,
                data: String::new(),
            });
        }
        Ok(binds)
    }
}

/// Write a heredoc script, executable, at `path`.
fn write_script(path: &Path, body: &str) -> R<PathBuf> {
    fs::write(path, body)
        .and_then(|_| fs::set_permissions(path, fs::Permissions::from_mode(0o755)))
        .with_context(|| "cannot write the heredoc script".to_string())?;
    Ok(path.to_path_buf())
}

/// A read-only bind mount entry of a runc spec.
fn bind_ro(destination: &str, source: &Path) -> Value {
    json!({
        "destination": destination, "type": "bind",
        "source": source, "options": ["rbind", "ro"],
    })
}

fn push_mount(spec: &mut Value, mount: Value) {
    if let Some(mounts) = spec["mounts"].as_array_mut() {
        mounts.push(mount);
    }
}

/// Remove from the layer the mount points runc made: the directories of
/// its standard mounts (`missing`: those the image lacked), and the empty
/// network files it created where a layer above the bottom one whited out
/// ours (the step could not write there: they were mounted read-only).
fn remove_runc_mount_points(upper: &Path, missing: &[&str], net_mounted: &[&str]) {
    for m in missing {
        let p = upper.join(&m[1..]);
        if fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
            let _ = fs::remove_dir_all(&p);
        }
    }
    for target in net_mounted {
        let p = upper.join(target);
        if fs::symlink_metadata(&p).is_ok_and(|m| m.is_file() && m.len() == 0) {
            let _ = fs::remove_file(&p);
        }
    }
}

/// Where a `RUN <<EOF` script with a `#!` line is put for the command: in
/// runc's /dev tmpfs (bind-mounted), so it never lands in the layer.
const HEREDOC_PATH: &str = "/dev/.berth-heredoc";

/// `RUN <<EOF` with nothing but the heredoc runs its body as the script
/// (BuildKit's rule): with the shell, or, when it starts with `#!`, as an
/// executable file (returned second); anything else runs as written.
pub(super) fn heredoc_script(
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

/// Pass each line the child prints (stdout and stderr) to `output` as it
/// comes, then reap it: the exit code, or 128 + the signal that killed it.
pub(super) fn stream_output_and_wait(
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
