//! `berth build` against a hostile Dockerfile, build context and git server (a malicious
//! repository built in CI): whatever they ask, no file outside the build's own folders is
//! written, read or deleted on the host; set-uid files a step leaves are closed to other
//! users; a killed build's secret mounts are swept; concurrent cache mounts share as asked
//! and never deadlock. Each attack here once worked, or is checked to hold.
//!
//! Needs root, runc and git; with `CI=true` their absence fails the test.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// `COPY --parents LINK LINK/FILE` and `COPY LINK <<LINK/FILE`: the first source puts the
/// context's symlink (to a host directory) in the staging folder; the second source's path
/// `LINK/FILE` must not be written through it onto the host; nor may a heredoc named
/// `<<../../HOST/PATH` climb out of the staging folder.
#[test]
fn copy_parents_never_writes_through_a_copied_symlink() {
    if !can_build() {
        return;
    }
    let cli = BerthCli::new();
    let victim = cli.path("victim");
    fs::create_dir_all(&victim).unwrap();
    let context = cli.path("ctx");
    fs::create_dir_all(&context).unwrap();
    std::os::unix::fs::symlink(&victim, context.join("a")).unwrap();
    // What `a/pwned` names inside the context (the link's target taken from the context root).
    let inside = context.join(victim.strip_prefix("/").unwrap());
    write(&inside.join("pwned"), "written by the build", 0o644);
    let layout = cli.path("layout");
    let out_arg = format!("oci:{}:img", layout.display());
    // A heredoc named like a path: through the copied symlink, or up with `..`.
    let ups = "../".repeat(victim.components().count() + 4);
    let up_target = format!("{ups}{}/up", victim.strip_prefix("/").unwrap().display());
    for (n, dockerfile) in [
        "FROM scratch\nCOPY --parents a a/pwned /out/\n".to_string(),
        "FROM scratch\nCOPY a <<a/pwned /out/\nx\na/pwned\n".to_string(),
        format!("FROM scratch\nCOPY <<{up_target} /out/\nx\n{up_target}\n"),
    ]
    .iter()
    .enumerate()
    {
        write(&context.join("Dockerfile"), dockerfile, 0o644);
        let out = run(build_cmd(&cli, &context, &["--output", &out_arg]), BUILD_T);
        let written: Vec<_> = fs::read_dir(&victim)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        assert!(
            written.is_empty(),
            "{dockerfile}: the build wrote onto the host: {written:?}\n{}",
            out.describe()
        );
        if n == 0 {
            assert!(out.status.success(), "{}", out.describe());
        }
    }
}

/// A `git daemon` serving the repositories under a folder on 127.0.0.1; stopped by PID.
struct GitDaemon {
    child: std::process::Child,
    port: u16,
}

impl GitDaemon {
    fn start(base: &Path) -> GitDaemon {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("git")
            .args([
                "daemon",
                "--reuseaddr",
                "--export-all",
                "--listen=127.0.0.1",
            ])
            .arg(format!("--port={port}"))
            .arg(format!("--base-path={}", base.display()))
            .arg(base)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("git daemon");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "git daemon did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        GitDaemon { child, port }
    }
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .output()
        .expect("git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Every file under `dir` whose content holds `needle`.
fn files_holding(dir: &Path, needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let Ok(m) = fs::symlink_metadata(&p) else {
                continue;
            };
            if m.is_dir() {
                todo.push(p);
            } else if m.is_file()
                && fs::read(&p).is_ok_and(|b| String::from_utf8_lossy(&b).contains(needle))
            {
                found.push(p.display().to_string());
            }
        }
    }
    found
}

/// A git server the attacker controls: `ADD git://…#:LINK/DIR` with LINK a symlink in the
/// repository to a host directory must not copy the host's DIR; a submodule whose URL is a
/// `file://` repository on the host must not be checked out.
#[test]
fn add_git_never_reads_the_host() {
    if !can_build() || !require_tool("git") {
        return;
    }
    let cli = BerthCli::new();
    let host_secret = "host-only-5f1c2a";
    let victim = cli.path("victim");
    write(&victim.join("inner/secret.txt"), host_secret, 0o644);
    // A repository on the host, not meant for the build.
    let host_repo = cli.path("host-repo");
    fs::create_dir_all(&host_repo).unwrap();
    git(&host_repo, &["init", "-q"]);
    write(&host_repo.join("secret.txt"), host_secret, 0o644);
    git(&host_repo, &["add", "."]);
    git(&host_repo, &["commit", "-qm", "host"]);
    let host_commit = git(&host_repo, &["rev-parse", "HEAD"]);

    let served = cli.path("srv");
    let evil = served.join("evil.git");
    fs::create_dir_all(&evil).unwrap();
    git(&evil, &["init", "-q"]);
    std::os::unix::fs::symlink(&victim, evil.join("link")).unwrap();
    git(&evil, &["add", "link"]);
    git(&evil, &["commit", "-qm", "evil"]);
    let evil_sub = served.join("evilsub.git");
    fs::create_dir_all(&evil_sub).unwrap();
    git(&evil_sub, &["init", "-q"]);
    write(
        &evil_sub.join(".gitmodules"),
        &format!(
            "[submodule \"sub\"]\n\tpath = sub\n\turl = file://{}\n",
            host_repo.display()
        ),
        0o644,
    );
    git(&evil_sub, &["add", ".gitmodules"]);
    git(
        &evil_sub,
        &[
            "update-index",
            "--add",
            "--cacheinfo",
            &format!("160000,{host_commit},sub"),
        ],
    );
    git(&evil_sub, &["commit", "-qm", "evil"]);
    // A repository the host's own git config points an alias at (as credential helpers,
    // `insteadOf` and extra headers in ~/.gitconfig would reach private repositories).
    let hidden = served.join("hidden.git");
    fs::create_dir_all(&hidden).unwrap();
    git(&hidden, &["init", "-q"]);
    write(&hidden.join("secret.txt"), host_secret, 0o644);
    git(&hidden, &["add", "."]);
    git(&hidden, &["commit", "-qm", "hidden"]);
    let daemon = GitDaemon::start(&served);
    let url = format!("git://127.0.0.1:{}/evil.git", daemon.port);
    let url_sub = format!("git://127.0.0.1:{}/evilsub.git", daemon.port);
    let url_alias = format!("git://127.0.0.1:{}/alias.git", daemon.port);
    let home = cli.path("home");
    write(
        &home.join(".gitconfig"),
        &format!(
            "[url \"git://127.0.0.1:{}/hidden.git\"]\n\tinsteadOf = {url_alias}\n",
            daemon.port
        ),
        0o644,
    );
    // The alias works for the host's git: the test would prove nothing otherwise.
    let listed = run(
        cmd("git", ["ls-remote", "--", url_alias.as_str()]).env("HOME", &home),
        BUILD_T,
    );
    assert!(listed.status.success(), "{}", listed.describe());

    let context = cli.path("ctx");
    for (n, add) in [
        format!("ADD {url}#main:link/inner /x/"),
        format!("ADD {url_sub} /y/"),
        format!("ADD {url_alias} /z/"),
    ]
    .iter()
    .enumerate()
    {
        write(
            &context.join("Dockerfile"),
            &format!("FROM scratch\n{add}\n"),
            0o644,
        );
        let dest = cli.path(&format!("out-{n}"));
        let out_arg = format!("type=local,dest={}", dest.display());
        let mut build = build_cmd(&cli, &context, &["--output", &out_arg]);
        build.env("HOME", &home);
        let out = run(build, BUILD_T);
        let leaked = files_holding(&dest, host_secret);
        assert!(
            leaked.is_empty(),
            "{add}: host files in the image: {leaked:?}\n{}",
            out.describe()
        );
        assert!(
            !out.status.success(),
            "{add} should fail:\n{}",
            out.describe()
        );
    }
}

/// Every path under `dir`, relative, sorted.
fn tree(dir: &Path) -> Vec<String> {
    let mut all = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            all.push(p.strip_prefix(dir).unwrap().display().to_string());
            if fs::symlink_metadata(&p).unwrap().is_dir() {
                todo.push(p);
            }
        }
    }
    all.sort();
    all
}

/// RUN --mount targets under symlinks the image holds (to a host directory) are made inside
/// the rootfs, under runc and under the chroot isolation; and a step that swaps a mount
/// point's parent for such a symlink does not make the clean-up of mount points delete
/// the host's files.
#[test]
fn mount_targets_stay_inside_the_rootfs() {
    if !can_build() {
        return;
    }
    let s = setup();
    let victim = s.cli.path("victim");
    fs::create_dir_all(victim.join("a/b")).unwrap();
    fs::create_dir_all(victim.join("c")).unwrap();
    write(&victim.join("c/d"), "", 0o644);
    let before = tree(&victim);
    let context = s.cli.path("ctx");
    write(&context.join("bound"), "bound", 0o644);
    // With a .dockerignore the bound context is hard links to these files.
    write(&context.join(".dockerignore"), "ignored\n", 0o644);
    let secret = s.cli.path("secret");
    write(&secret, "s3cr3t-value", 0o600);
    let v = victim.display();
    write(
        &context.join("Dockerfile"),
        &format!(
            "FROM {base}\n\
             RUN ln -s {v} /mnt && ln -s {v}/a /lnk\n\
             RUN --mount=type=tmpfs,target=/mnt/t1 --mount=type=bind,target=/lnk/b2 \
                 --mount=type=cache,target=/mnt/c1 --mount=type=secret,id=s,target=/mnt/s1 \
                 --mount=type=bind,source=bound,target=/mnt/c/d true\n\
             RUN --mount=type=tmpfs,target=/newdir/a/b --mount=type=bind,source=bound,target=/new2/c/d \
                 mv /newdir /moved && ln -s {v} /newdir && mv /new2 /moved2 && ln -s {v} /new2\n\
             RUN --mount=type=bind,target=/ctx sh -c 'echo pwned > /ctx/bound; echo pwned > /ctx/new; true'\n\
             RUN --mount=type=cache,target=/c cp /bin/busybox /c/sh && chmod 4755 /c/sh \
                 && cp /bin/busybox /suid && chmod 4755 /suid\n",
            base = s.base
        ),
        0o644,
    );
    let secret_arg = format!("id=s,src={}", secret.display());
    for isolation in ["runc", "chroot"] {
        let mut cmd = build_cmd(&s.cli, &context, &["--no-cache", "--secret", &secret_arg]);
        if isolation == "chroot" {
            cmd.env("BERTH_BUILD_ISOLATION", "chroot");
        }
        let out = run(cmd, BUILD_T);
        assert_eq!(
            tree(&victim),
            before,
            "{isolation}: the build changed the host's files:\n{}",
            out.describe()
        );
        assert!(out.status.success(), "{isolation}: {}", out.describe());
        assert_eq!(fs::read_to_string(context.join("bound")).unwrap(), "bound");
        assert!(
            !context.join("new").exists(),
            "{isolation}: a read-only bind was written"
        );
    }
    // A mount nested in a read-only bind of the context (no .dockerignore: the context folder
    // itself is bound) needs a mount point: never made in the user's context.
    let plain = s.cli.path("ctx-plain");
    write(
        &plain.join("Dockerfile"),
        &format!(
            "FROM {}
RUN --mount=type=bind,target=/ctx --mount=type=tmpfs,target=/ctx/newdir              --mount=type=secret,id=s,target=/ctx/newfile true
",
            s.base
        ),
        0o644,
    );
    let out = run(
        build_cmd(&s.cli, &plain, &["--secret", &secret_arg]),
        BUILD_T,
    );
    let made: Vec<_> = fs::read_dir(&plain)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(made, vec!["Dockerfile"], "{}", out.describe());
    // (runc cannot make the mount point in the read-only bind: the step fails, by its line.)
    assert!(
        out.stderr.contains("Dockerfile:2: RUN:"),
        "{}",
        out.describe()
    );
    // The set-uid copies of a shell that the steps left in the cache mount and in the layer
    // are on the host: no other user may reach them.
    let cache = s.cli.path("../build-cache");
    let mut suid = Vec::new();
    for d in ["mounts", "layers"] {
        let found = files_holding_mode(&cache.join(d), 0o4000);
        assert!(!found.is_empty(), "no set-uid file under {d}");
        suid.extend(found);
    }
    for file in suid {
        let open_path = file
            .ancestors()
            .skip(1)
            .take_while(|a| a.starts_with(&cache) && *a != cache)
            .all(|a| fs::metadata(a).unwrap().permissions().mode() & 0o001 != 0);
        assert!(!open_path, "{} is reachable by every user", file.display());
    }
}

/// The files under `dir` with any of `bits` in their mode.
fn files_holding_mode(dir: &Path, bits: u32) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            let m = fs::symlink_metadata(e.path()).unwrap();
            if m.is_dir() {
                todo.push(e.path());
            } else if m.is_file() && m.permissions().mode() & bits != 0 {
                found.push(e.path());
            }
        }
    }
    found
}

/// A build `kill -9`ed while a RUN holds a secret (on its tmpfs), a tmpfs and a writable
/// bind: the next build unmounts and removes all of it, and the secret is in no file of the
/// build cache.
#[test]
fn a_killed_build_leaves_no_secret_behind() {
    if !can_build() {
        return;
    }
    let s = setup();
    let context = s.cli.path("ctx");
    let secret_value = "killed-build-secret-8d2e";
    let secret = s.cli.path("secret");
    write(&secret, secret_value, 0o600);
    write(&context.join("bound"), "bound", 0o644);
    write(
        &context.join("Dockerfile"),
        &format!(
            "FROM {}\nRUN --mount=type=secret,id=s,env=S --mount=type=bind,target=/b,rw \
             --mount=type=tmpfs,target=/t sh -c 'touch /t/x /b/x; sleep 60'\n",
            s.base
        ),
        0o644,
    );
    let secret_arg = format!("id=s,src={}", secret.display());
    let mut build = build_cmd(&s.cli, &context, &["--secret", &secret_arg]);
    let mut child = build
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("berth build");
    let cache = s.cli.path("../build-cache");
    let run_mounts = || -> Vec<String> {
        let Ok(run) = cache.join("run").canonicalize() else {
            return Vec::new();
        };
        let prefix = run.display().to_string();
        fs::read_to_string("/proc/self/mounts")
            .unwrap()
            .lines()
            .filter_map(|l| l.split(' ').nth(1))
            .filter(|m| m.starts_with(&prefix))
            .map(str::to_string)
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !run_mounts().iter().any(|m| m.ends_with("/secrets")) {
        assert!(
            Instant::now() < deadline,
            "the step never mounted its secrets"
        );
        assert!(child.try_wait().unwrap().is_none(), "the build ended early");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Let runc start the step, then kill the build where it stands.
    std::thread::sleep(Duration::from_millis(500));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!run_mounts().is_empty(), "the killed build left its mounts");

    write(
        &context.join("Dockerfile"),
        &format!("FROM {}\nRUN true\n", s.base),
        0o644,
    );
    let out = run(build_cmd(&s.cli, &context, &[]), BUILD_T);
    assert!(out.status.success(), "{}", out.describe());
    assert_eq!(
        run_mounts(),
        Vec::<String>::new(),
        "mounts left after the sweep"
    );
    let leaked = files_holding(&cache, secret_value);
    assert!(leaked.is_empty(), "the secret is on disk: {leaked:?}");
    assert_eq!(fs::read_to_string(context.join("bound")).unwrap(), "bound");
    assert!(
        !context.join("x").exists(),
        "the rw bind wrote into the context"
    );
}

/// Two builds at once on one build cache: a `sharing=private` cache mount is never used by
/// two steps at once (each its own folder), a `sharing=locked` one is held by one step at a
/// time (the second waits), and both builds succeed.
#[test]
fn concurrent_builds_share_cache_mounts_as_asked() {
    if !can_build() {
        return;
    }
    let s = setup();
    // Each step marks the cache busy for a while and notes whether it found it busy.
    let step = |sharing: &str, id: &str| {
        format!(
            "RUN --mount=type=cache,id={id},sharing={sharing},target=/c sh -c \
             'if [ -e /c/busy ]; then echo overlap >> /c/log; fi; touch /c/busy; \
              echo run >> /c/log; sleep 1; rm /c/busy'\n"
        )
    };
    let mut children = Vec::new();
    for n in 0..2 {
        let context = s.cli.path(&format!("ctx{n}"));
        write(
            &context.join("Dockerfile"),
            &format!(
                "FROM {}\nARG N={n}\n{}{}",
                s.base,
                step("private", "pv"),
                step("locked", "lk")
            ),
            0o644,
        );
        children.push(
            build_cmd(&s.cli, &context, &["--no-cache"])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("berth build"),
        );
    }
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let cache = s.cli.path("../build-cache/mounts/cache");
    let mut logs = BTreeMap::new();
    for entry in fs::read_dir(&cache).unwrap().flatten() {
        let id = fs::read_to_string(entry.path().join("id")).unwrap();
        for instance in fs::read_dir(entry.path()).unwrap().flatten() {
            if let Ok(log) = fs::read_to_string(instance.path().join("log")) {
                logs.entry(id.clone()).or_insert_with(Vec::new).push(log);
            }
        }
    }
    assert_eq!(logs["lk"], vec!["run\nrun\n".to_string()], "{logs:?}");
    // Private instances: never two steps in one folder (two folders when they overlapped).
    let private: Vec<&str> = logs["pv"].iter().flat_map(|l| l.lines()).collect();
    assert_eq!(private, vec!["run", "run"], "{logs:?}");
}

/// Two stages that run at the same time lock the same two `sharing=locked` cache mounts in
/// opposite orders (by their targets' depth): each seeds its first cache from a big stage
/// while holding its lock, so each takes its first lock before the other asks for it. The
/// build must not wait on itself forever.
#[test]
fn locked_cache_mounts_in_opposite_orders_do_not_deadlock() {
    if !can_build() {
        return;
    }
    let s = setup();
    let context = s.cli.path("ctx");
    write(
        &context.join("Dockerfile"),
        &format!(
            "FROM {base} AS big\n\
             RUN mkdir /many && cd /many && for i in $(seq 1 2000); do echo $i > f$i; done\n\
             FROM {base} AS one\n\
             RUN --mount=type=cache,id=A,sharing=locked,target=/a,from=big,source=/many \
                 --mount=type=cache,id=B,sharing=locked,target=/b/c echo one > /one\n\
             FROM big AS two\n\
             RUN --mount=type=cache,id=B,sharing=locked,target=/b,from=big,source=/many \
                 --mount=type=cache,id=A,sharing=locked,target=/a/c echo two > /two\n\
             FROM {base}\n\
             COPY --from=one /one /one\n\
             COPY --from=two /two /two\n",
            base = s.base
        ),
        0o644,
    );
    let mut child = build_cmd(&s.cli, &context, &[])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("berth build");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("the build still waits after 60 s: its stages hold each other's cache locks");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut stderr = String::new();
    use std::io::Read as _;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(status.success(), "{stderr}");
}
