//! `berth build` COPY/ADD flags end to end (root + runc, a busybox base on `berth serve`):
//! `COPY --exclude` and `--parents` (with the `./` pivot, from the context and from a stage)
//! give the trees the Dockerfile reference describes; a `COPY --link` layer is reused (CACHED,
//! same layer digest) after the base image under its tag changes while a plain COPY re-runs;
//! `ADD` of a Git repository made here and served over dumb HTTP on loopback (default
//! branch, `#tag:subdir`, `#branch` with `--keep-git-dir`, `--checksum` of the commit, an
//! unknown ref and a wrong checksum refused with their line); `ADD` of a URL revalidated with
//! `If-None-Match` (a `304` keeps the step CACHED without the body; a new ETag re-fetches), its
//! mtime from `Last-Modified`. Bad flag combinations are refused before anything runs.
//!
//! Needs root, runc and git; with `CI=true` their absence fails the test.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use common::*;
use serde_json::Value;

/// One file of an image: mode, mtime, content (empty for directories).
#[derive(Debug, Clone)]
struct Entry {
    mode: u32,
    mtime: u64,
    owner: (u64, u64),
    dir: bool,
    content: String,
}

fn blob(layout: &Path, digest: &str) -> Vec<u8> {
    let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
    fs::read(layout.join("blobs/sha256").join(hex)).expect("read blob")
}

fn manifest(layout: &Path) -> Value {
    let index: Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).expect("index.json"))
            .expect("index.json");
    let digest = index["manifests"][0]["digest"]
        .as_str()
        .expect("a manifest");
    serde_json::from_slice(&blob(layout, digest)).expect("manifest")
}

/// The layer digests of the image an `--output oci:DIR:TAG` wrote, base first.
fn layer_digests(layout: &Path) -> Vec<String> {
    manifest(layout)["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(|l| l["digest"].as_str().expect("digest").to_string())
        .collect()
}

/// The entries of one layer.
fn layer_entries(layout: &Path, digest: &str) -> BTreeMap<String, Entry> {
    let bytes = blob(layout, digest);
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(&bytes[..]));
    let mut out = BTreeMap::new();
    for e in tar.entries().expect("layer tar") {
        let mut e = e.expect("layer tar entry");
        let path = e.path().expect("path").display().to_string();
        let path = path
            .trim_start_matches("./")
            .trim_end_matches('/')
            .to_string();
        let mut bytes = Vec::new();
        let dir = e.header().entry_type().is_dir();
        if e.header().entry_type().is_file() {
            e.read_to_end(&mut bytes).expect("read entry");
        }
        let content = String::from_utf8_lossy(&bytes).into_owned();
        out.insert(
            path,
            Entry {
                mode: e.header().mode().expect("mode") & 0o7777,
                mtime: e.header().mtime().expect("mtime"),
                owner: (e.header().uid().unwrap_or(0), e.header().gid().unwrap_or(0)),
                dir,
                content,
            },
        );
    }
    out
}

/// The image's files: every layer applied in order (the base's too).
fn image_files(layout: &Path) -> BTreeMap<String, Entry> {
    let mut all = BTreeMap::new();
    for d in layer_digests(layout) {
        all.extend(layer_entries(layout, &d));
    }
    all
}

/// The paths under `prefix/` (files and directories), relative to it.
fn under(files: &BTreeMap<String, Entry>, prefix: &str) -> Vec<String> {
    files
        .keys()
        .filter_map(|k| k.strip_prefix(&format!("{prefix}/")).map(str::to_string))
        .collect()
}

/// Whether the step whose header contains `needle` was CACHED, from the progress lines.
fn step_cached(stderr: &str, needle: &str) -> bool {
    let no = stderr
        .lines()
        .find(|l| l.starts_with('#') && l.contains(needle) && l.contains(" ["))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no step {needle:?} in:\n{stderr}"))
        .to_string();
    stderr.lines().any(|l| l.trim() == format!("{no} CACHED"))
}

/// Build into an OCI layout (progress on): the manifest digest and the progress lines.
fn build_to(s: &Setup, context: &Path, layout: &Path) -> (String, String) {
    let out_arg = format!("oci:{}:img", layout.display());
    let _ = fs::remove_dir_all(layout);
    let out = run(build_cmd(&s.cli, context, &["--output", &out_arg]), BUILD_T);
    assert!(
        out.status.success(),
        "berth build failed:\n{}",
        out.describe()
    );
    let index: Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).expect("index.json"))
            .expect("index.json");
    let digest = index["manifests"][0]["digest"]
        .as_str()
        .expect("a manifest");
    (
        digest.to_string(),
        format!("{}\n{}", out.stdout, out.stderr),
    )
}

/// Whether every layer step of a build's progress was CACHED.
fn all_cached(progress: &str) -> bool {
    let steps: Vec<&str> = progress
        .lines()
        .filter(|l| l.starts_with('#') && l.contains(" ["))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    !steps.is_empty()
        && steps
            .iter()
            .all(|no| progress.lines().any(|l| l.trim() == format!("{no} CACHED")))
}

fn build_fails(s: &Setup, context: &Path) -> String {
    let out = run(build_cmd(&s.cli, context, &[]), BUILD_T);
    assert!(!out.status.success(), "the build should fail");
    out.stderr
}

#[test]
fn exclude_parents_and_link_layers_that_outlive_a_new_base() {
    if !can_build() {
        return;
    }
    let s = setup();
    let context = s.cli.path("tree");
    for (path, body) in [
        ("home.txt", "h"),
        ("homework.md", "hw"),
        ("homedir/keep", "k"),
        ("homedir/skip.txt", "s"),
        ("app/main.go", "package main"),
        ("app/README.md", "readme"),
        ("app/storage/views/v.html", "v"),
        ("app/storage/cache/c", "c"),
        ("src/one/pkg.json", "1"),
        ("src/two/pkg.json", "2"),
        ("src/two/other", "o"),
        ("x/y/a.txt", "a"),
        ("x/y/b.txt", "b"),
        ("x/y/c.md", "c"),
        ("linked/l1", "l1"),
        ("plain.txt", "plain"),
    ] {
        write(&context.join(path), body, 0o644);
    }
    fs::set_permissions(
        context.join("src/two"),
        std::os::unix::fs::PermissionsExt::from_mode(0o750),
    )
    .unwrap();
    // The base the --link part builds on, under a tag this test moves.
    let moving = format!("{}/base/moving:1", s.server.host());
    let base_ctx = s.cli.path("base-ctx");
    let push_base = |extra: Option<&str>| {
        let copy = extra.map_or(String::new(), |e| format!("COPY {e} /{e}\n"));
        write(
            &base_ctx.join("Dockerfile"),
            &format!("FROM {}\n{copy}", s.base),
            0o644,
        );
        write(&base_ctx.join("extra"), "extra", 0o644);
        build_json(&s.cli, &base_ctx, &["-t", &moving, "--push"]);
    };
    push_base(None);
    write(
        &context.join("Dockerfile"),
        &format!(
            "FROM {base} AS files\nCOPY x /srcx\n\
             FROM {moving}\n\
             COPY --exclude=*.txt --exclude=*.md hom* /mydir/\n\
             COPY --exclude=storage/views --exclude=*.md app/ /app/\n\
             COPY --parents src/*/pkg.json /deps/\n\
             COPY --parents ./x/./y/*.txt /pivot/\n\
             COPY --from=files --parents --exclude=b.txt /srcx/./y /fromstage/\n\
             COPY --link --chown=7 linked/ /opt/linked/\n\
             COPY plain.txt /opt/plain.txt\n",
            base = s.base
        ),
        0o644,
    );
    let layout = s.cli.path("tree-layout");
    let (first, stderr) = build_to(&s, &context, &layout);
    let files = image_files(&layout);
    assert_eq!(under(&files, "mydir"), ["keep"], "{stderr}");
    assert_eq!(
        under(&files, "app"),
        ["main.go", "storage", "storage/cache", "storage/cache/c"]
    );
    assert_eq!(
        under(&files, "deps"),
        [
            "src",
            "src/one",
            "src/one/pkg.json",
            "src/two",
            "src/two/pkg.json"
        ]
    );
    // --parents copies the source's own directories (mode 0750 kept).
    assert_eq!(files["deps/src/two"].mode, 0o750);
    assert_eq!(under(&files, "pivot"), ["y", "y/a.txt", "y/b.txt"]);
    assert_eq!(under(&files, "fromstage"), ["y", "y/a.txt", "y/c.md"]);

    // The --link layer holds just its files, under fresh root-owned parents.
    let digests = layer_digests(&layout);
    let link_layer = digests[digests.len() - 2].clone();
    let linked = layer_entries(&layout, &link_layer);
    assert_eq!(
        linked.keys().collect::<Vec<_>>(),
        ["opt", "opt/linked", "opt/linked/l1"],
        "{linked:?}"
    );
    assert!(linked["opt"].dir && linked["opt"].mode == 0o755 && linked["opt"].owner == (0, 0));
    assert_eq!(linked["opt/linked/l1"].content, "l1");
    // A numeric --chown without a group: the same number for both, as BuildKit does.
    assert_eq!(linked["opt/linked/l1"].owner, (7, 7));

    // Same base: everything cached, the same image.
    let (again, stderr) = build_to(&s, &context, &layout);
    assert_eq!(again, first, "{stderr}");
    assert!(all_cached(&stderr), "{stderr}");

    // A new base under the same tag: the --link layer is reused as it was, the plain COPY
    // (and everything not linked) runs again on the new base.
    push_base(Some("extra"));
    let (moved, stderr) = build_to(&s, &context, &layout);
    assert_ne!(moved, first);
    assert!(step_cached(&stderr, "linked/ /opt/linked/"), "{stderr}");
    assert!(!step_cached(&stderr, "COPY plain.txt"), "{stderr}");
    assert!(!step_cached(&stderr, "hom*"), "{stderr}");
    let digests = layer_digests(&layout);
    assert_eq!(
        digests[digests.len() - 2],
        link_layer,
        "the same --link layer"
    );
    let files = image_files(&layout);
    assert_eq!(files["extra"].content, "extra", "the new base is below");
    assert_eq!(files["opt/plain.txt"].content, "plain");

    // A context symlink to a host directory leads nowhere: sources resolve inside the context.
    std::os::unix::fs::symlink("/etc", context.join("hostlink")).unwrap();
    for source in ["hostlink/passwd", "--parents hostlink/passwd"] {
        write(
            &context.join("Dockerfile"),
            &format!("FROM scratch\nCOPY {source} /x/\n"),
            0o644,
        );
        let stderr = build_fails(&s, &context);
        assert!(
            stderr.contains("Dockerfile:2: COPY: \"hostlink/passwd\" not found"),
            "{stderr}"
        );
    }
}

#[test]
fn bad_copy_flags_are_refused_with_their_line() {
    let cli = BerthCli::new();
    let context = cli.path("bad");
    write(&context.join("a"), "a", 0o644);
    let sha = format!("sha256:{}", "0".repeat(64));
    for (line, expected) in [
        (
            "COPY --link --chown=app:app a /a",
            "COPY: --chown=app:app with --link",
        ),
        (
            &format!("ADD --checksum={sha} a /a") as &str,
            "ADD: --checksum can't be specified for non-HTTP(S) sources",
        ),
        (
            "ADD --checksum=md5:00 http://127.0.0.1:9/f /f",
            "ADD: --checksum=md5:00: expected sha256:",
        ),
        (
            "ADD --checksum=xyz http://127.0.0.1:9/r.git#main /r",
            "ADD: --checksum=xyz: for a git source",
        ),
        ("COPY --exclude= a /a", "COPY: --exclude"),
    ] {
        write(
            &context.join("Dockerfile"),
            &format!("FROM scratch\n{line}\n"),
            0o644,
        );
        let out = run(build_cmd(&cli, &context, &["--dry-run"]), BUILD_T);
        assert!(!out.status.success(), "{line}: {}", out.describe());
        assert!(
            out.stderr.contains(&format!("Dockerfile:2: {expected}")),
            "{line}: {}",
            out.stderr
        );
    }
}

/// A static HTTP/1.1 server on loopback for a directory: ETag (from the content) and a fixed
/// Last-Modified, `304` to a matching `If-None-Match`; every answer is logged as (path, status).
struct StaticHttp {
    port: u16,
    log: Arc<Mutex<Vec<(String, u16)>>>,
}

/// Last-Modified of every served file: 1994-11-15 08:12:31 UTC.
const LAST_MODIFIED: &str = "Tue, 15 Nov 1994 08:12:31 GMT";
const LAST_MODIFIED_SECS: u64 = 784_887_151;

impl StaticHttp {
    fn start(root: PathBuf) -> StaticHttp {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let port = listener.local_addr().unwrap().port();
        let log = Arc::new(Mutex::new(Vec::new()));
        let log2 = log.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let root = root.clone();
                let log = log2.clone();
                std::thread::spawn(move || {
                    let _ = serve_one(conn, &root, &log);
                });
            }
        });
        StaticHttp { port, log }
    }

    fn count(&self, path: &str, status: u16) -> usize {
        let log = self.log.lock().unwrap();
        log.iter()
            .filter(|(p, s)| p == path && *s == status)
            .count()
    }
}

fn serve_one(
    conn: std::net::TcpStream,
    root: &Path,
    log: &Mutex<Vec<(String, u16)>>,
) -> std::io::Result<()> {
    conn.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut out = conn;
    loop {
        let mut request = String::new();
        if reader.read_line(&mut request)? == 0 {
            return Ok(());
        }
        let target = request.split_whitespace().nth(1).unwrap_or("/").to_string();
        let mut if_none_match = None;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("if-none-match") {
                    if_none_match = Some(v.trim().to_string());
                }
            }
        }
        let path = target.split('?').next().unwrap_or("/").to_string();
        let file = root.join(path.trim_start_matches('/'));
        let (status, body, etag) = match fs::read(&file) {
            Ok(body) if file.is_file() => {
                let etag = format!("\"{:x}-{}\"", fnv(&body), body.len());
                if if_none_match.as_deref() == Some(etag.as_str()) {
                    (304, Vec::new(), Some(etag))
                } else {
                    (200, body, Some(etag))
                }
            }
            _ => (404, Vec::new(), None),
        };
        log.lock().unwrap().push((path, status));
        let reason = match status {
            200 => "OK",
            304 => "Not Modified",
            _ => "Not Found",
        };
        let mut head = format!(
            "HTTP/1.1 {status} {reason}\r\nContent-Length: {}\r\nLast-Modified: {LAST_MODIFIED}\r\n",
            body.len()
        );
        if let Some(e) = etag {
            head.push_str(&format!("ETag: {e}\r\n"));
        }
        head.push_str("\r\n");
        out.write_all(head.as_bytes())?;
        out.write_all(&body)?;
        out.flush()?;
    }
}

fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
    })
}

fn git(dir: &Path, args: &[&str]) -> String {
    let mut c = Command::new("git");
    c.arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.invalid")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.invalid")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir);
    run_ok(c, BUILD_T).trim().to_string()
}

#[test]
fn add_git_repositories_and_revalidated_urls() {
    if !can_build() || !require_tool("git") {
        return;
    }
    let s = setup();
    // A repository: v1 (annotated tag) with docs/ and an executable, then a second commit
    // on main, and a dev branch.
    let work = s.cli.path("repo-work");
    fs::create_dir_all(&work).unwrap();
    git(&work, &["init", "-q", "-b", "main"]);
    write(&work.join("README"), "v1 readme\n", 0o644);
    write(&work.join("docs/guide.md"), "guide\n", 0o644);
    write(&work.join("bin/tool"), "#!/bin/sh\n", 0o755);
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-q", "-m", "v1"]);
    git(&work, &["tag", "-a", "v1", "-m", "v1"]);
    let v1 = git(&work, &["rev-parse", "HEAD"]);
    write(&work.join("README"), "main readme\n", 0o644);
    git(&work, &["commit", "-q", "-am", "two"]);
    git(&work, &["checkout", "-q", "-b", "dev"]);
    write(&work.join("dev.txt"), "dev\n", 0o644);
    git(&work, &["add", "dev.txt"]);
    git(&work, &["commit", "-q", "-m", "dev"]);
    git(&work, &["checkout", "-q", "main"]);
    // Served over dumb HTTP: a bare clone with update-server-info's files.
    let srv = s.cli.path("srv");
    fs::create_dir_all(&srv).unwrap();
    git(
        &srv,
        &["clone", "-q", "--bare", work.to_str().unwrap(), "repo.git"],
    );
    git(&srv.join("repo.git"), &["update-server-info"]);
    write(&srv.join("data.txt"), "first body\n", 0o644);
    let http = StaticHttp::start(srv.clone());
    let repo = format!("http://127.0.0.1:{}/repo.git", http.port);
    let data = format!("http://127.0.0.1:{}/data.txt", http.port);

    let context = s.cli.path("git-ctx");
    write(
        &context.join("Dockerfile"),
        &format!(
            "FROM {}\n\
             ADD {repo} /head/\n\
             ADD {repo}#v1:docs /docs-v1\n\
             ADD --keep-git-dir=true {repo}#dev /dev/\n\
             ADD --checksum={} {repo}#v1 /v1/\n\
             ADD {repo}#{v1} /by-commit/\n\
             ADD {repo}?tag=v1&subdir=docs /by-query/\n\
             ADD {data} /data.txt\n",
            s.base,
            &v1[..10]
        ),
        0o644,
    );
    let layout = s.cli.path("git-layout");
    let (first, stderr) = build_to(&s, &context, &layout);
    let files = image_files(&layout);
    assert_eq!(files["head/README"].content, "main readme\n", "{stderr}");
    assert!(
        !files.contains_key("head/.git"),
        "no .git without --keep-git-dir"
    );
    assert!(!files.contains_key("head/dev.txt"));
    assert_eq!(files["head/bin/tool"].mode, 0o755);
    assert_eq!(files["head/README"].mode, 0o644);
    assert_eq!(under(&files, "docs-v1"), ["guide.md"]);
    assert!(
        files.contains_key("dev/.git/HEAD"),
        "--keep-git-dir keeps .git"
    );
    assert_eq!(files["dev/dev.txt"].content, "dev\n");
    assert_eq!(files["v1/README"].content, "v1 readme\n");
    assert_eq!(files["by-commit/README"].content, "v1 readme\n");
    assert_eq!(under(&files, "by-query"), ["guide.md"]);
    assert_eq!(files["data.txt"].content, "first body\n");
    assert_eq!(files["data.txt"].mode, 0o600);
    assert_eq!(
        files["data.txt"].mtime, LAST_MODIFIED_SECS,
        "mtime from Last-Modified"
    );
    assert_eq!(http.count("/data.txt", 200), 1);

    // Again: the URL is revalidated (304, no body) and every step stays cached.
    let (again, stderr) = build_to(&s, &context, &layout);
    assert_eq!(again, first, "{stderr}");
    assert!(all_cached(&stderr), "{stderr}");
    assert_eq!(
        http.count("/data.txt", 200),
        1,
        "the body was not fetched again"
    );
    assert_eq!(http.count("/data.txt", 304), 1);

    // A new body (a new ETag) is fetched and rebuilds the step.
    write(&srv.join("data.txt"), "second body\n", 0o644);
    let (changed, stderr) = build_to(&s, &context, &layout);
    assert_ne!(changed, first);
    assert!(!step_cached(&stderr, "data.txt /data.txt"), "{stderr}");
    assert_eq!(http.count("/data.txt", 200), 2);
    assert_eq!(image_files(&layout)["data.txt"].content, "second body\n");

    // A wrong checksum names both commits; an unknown ref is named.
    let bad = s.cli.path("git-bad");
    for (line, expected) in [
        (
            format!("ADD --checksum=0123abc {repo}#v1 /v1/"),
            format!(
                "Dockerfile:2: ADD: {repo}: checksum mismatch: expected commit 0123abc, got {v1}"
            ),
        ),
        (
            format!("ADD {repo}#nope /x/"),
            format!("Dockerfile:2: ADD: {repo}: unknown git ref \"nope\""),
        ),
    ] {
        write(
            &bad.join("Dockerfile"),
            &format!("FROM scratch\n{line}\n"),
            0o644,
        );
        let stderr = build_fails(&s, &bad);
        assert!(stderr.contains(&expected), "{line}:\n{stderr}");
    }
}
