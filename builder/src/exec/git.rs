//! `ADD <git URL>`: which sources are Git repositories, what their URL
//! fragment or query asks for, and a checkout through the system `git`.
//!
//! The Dockerfile reference's forms: `https://host/repo.git`, `git@host:repo`,
//! `ssh://…`, `git://…`, with `#ref:subdir` (either part may be empty) or the
//! query form `?ref=|branch=|tag=|subdir=|checksum=|commit=`. The commit a
//! ref names is the content (and the cache key); `--checksum` is a prefix of
//! that commit. Without `--keep-git-dir` the checkout has no `.git`.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::dockerignore::clean;

/// A Git source of `ADD`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GitSource {
    /// What `git` fetches from (the URL without fragment and build query).
    pub remote: String,
    /// A branch, tag, other ref or full commit; None: the remote's HEAD.
    pub reference: Option<String>,
    /// A directory of the repository to add instead of its root (cleaned,
    /// relative).
    pub subdir: Option<String>,
    /// `?checksum=`/`?commit=`: a commit (prefix) the ref must resolve to.
    pub commit: Option<String>,
    /// The SSH agent git may use: the build's `--ssh default=SOCKET`, never
    /// the host's own (see [`git`]).
    pub ssh_agent: Option<std::path::PathBuf>,
}

/// Whether an ADD source is a Git repository, by the reference's forms.
pub fn is_git_url(source: &str) -> bool {
    if source.starts_with("git://") || source.starts_with("ssh://") {
        return true;
    }
    // scp-like `git@host:path` (a user, a host, a colon before any slash).
    if let Some(rest) = source.strip_prefix("git@") {
        return rest
            .find(':')
            .is_some_and(|c| !rest[..c].contains('/') && c > 0);
    }
    if source.starts_with("http://") || source.starts_with("https://") {
        let path = source.split(['#', '?']).next().unwrap_or("");
        return path.trim_end_matches('/').ends_with(".git");
    }
    false
}

/// Parse a source that [`is_git_url`] accepted.
pub fn parse(source: &str) -> Result<GitSource, String> {
    let (rest, fragment) = match source.split_once('#') {
        Some((r, f)) => (r, Some(f)),
        None => (source, None),
    };
    let mut src = GitSource {
        remote: rest.to_string(),
        reference: None,
        subdir: None,
        commit: None,
        ssh_agent: None,
    };
    // The query form (http(s) only: scp-like paths have no query).
    if rest.starts_with("http://") || rest.starts_with("https://") {
        if let Some((base, query)) = rest.split_once('?') {
            let mut own = true;
            let mut pairs = Vec::new();
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                if !matches!(
                    k,
                    "ref" | "branch" | "tag" | "subdir" | "checksum" | "commit"
                ) {
                    own = false;
                }
                pairs.push((k, v));
            }
            if own && !pairs.is_empty() {
                src.remote = base.to_string();
                for (k, v) in pairs {
                    if v.is_empty() {
                        return Err(format!("{source}: the query key {k} needs a value"));
                    }
                    let slot = match k {
                        "ref" => &mut src.reference,
                        "branch" => {
                            src.reference = Some(format!("refs/heads/{v}"));
                            continue;
                        }
                        "tag" => {
                            src.reference = Some(format!("refs/tags/{v}"));
                            continue;
                        }
                        "subdir" => &mut src.subdir,
                        _ => &mut src.commit,
                    };
                    *slot = Some(v.to_string());
                }
            }
        }
    }
    if let Some(fragment) = fragment {
        if src.reference.is_some() || src.subdir.is_some() {
            return Err(format!(
                "{source}: use either a #ref:subdir fragment or the ?ref=&subdir= query, not both"
            ));
        }
        let (reference, subdir) = fragment.split_once(':').unwrap_or((fragment, ""));
        src.reference = (!reference.is_empty()).then(|| reference.to_string());
        src.subdir = (!subdir.is_empty()).then(|| subdir.to_string());
    }
    if let Some(sub) = src.subdir.take() {
        let cleaned = clean(&format!("/{sub}"));
        let cleaned = cleaned.trim_start_matches('/');
        src.subdir = (!cleaned.is_empty()).then(|| cleaned.to_string());
    }
    if let Some(r) = &src.reference {
        // Options or odd characters would reach git's command line.
        if r.starts_with('-') || r.contains(['\0', ' ', '\n', '~', '^', ':']) || r.contains("..") {
            return Err(format!("{source}: {r:?} is not a valid git ref"));
        }
    }
    if src.remote.starts_with('-') {
        return Err(format!("{source}: not a git URL"));
    }
    Ok(src)
}

fn is_commit(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The commit a remote's `ls-remote` output names for `reference` (None:
/// HEAD) and the full ref name to fetch: a branch, then a tag (peeled to its
/// commit), then the ref as written.
pub fn pick_ref(listing: &str, reference: Option<&str>) -> Option<(String, String)> {
    let refs: Vec<(&str, &str)> = listing
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(sha, name)| (sha.trim(), name.trim()))
        .collect();
    let find = |name: &str| {
        refs.iter()
            .find(|(_, n)| *n == name)
            .map(|(s, _)| s.to_string())
    };
    let wanted = reference.unwrap_or("HEAD");
    let candidates = [
        format!("refs/heads/{wanted}"),
        format!("refs/tags/{wanted}"),
        wanted.to_string(),
        format!("refs/{wanted}"),
    ];
    for name in candidates {
        // An annotated tag lists its commit as NAME^{}.
        if let Some(sha) = find(&format!("{name}^{{}}")).or_else(|| find(&name)) {
            return Some((sha, name));
        }
    }
    None
}

/// Runs git without the host's identity: a Dockerfile is untrusted input, and
/// with the host's `~/.gitconfig` (credential helpers, `insteadOf`, extra
/// headers), its SSH keys and agent, `ADD git@host:private.git` would read any
/// repository the build machine can. As BuildKit, only what the build is given
/// is used: the `--ssh default` agent. Protocols are limited to the forms ADD
/// accepts (no `ext::`, no `file://`, also for submodules).
fn git(args: &[&str], dir: Option<&Path>, ssh_agent: Option<&Path>) -> Result<String, String> {
    let mut cmd = Command::new("git");
    if let Some(d) = dir {
        cmd.arg("-C").arg(d);
    }
    cmd.args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_ASKPASS", "true")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_ALLOW_PROTOCOL", "http:https:git:ssh")
        // -F /dev/null: not the host's ssh config; no identity files, only the agent.
        .env(
            "GIT_SSH_COMMAND",
            "ssh -F /dev/null -o IdentitiesOnly=no -o IdentityFile=none -o BatchMode=yes -o StrictHostKeyChecking=accept-new -o UserKnownHostsFile=/dev/null",
        )
        .env_remove("SSH_AUTH_SOCK")
        .env_remove("GIT_SSH")
        .env_remove("GIT_PROXY_COMMAND")
        .stdin(Stdio::null());
    if let Some(agent) = ssh_agent {
        cmd.env("SSH_AUTH_SOCK", agent);
    }
    super::git_limits::apply_low_speed(&mut cmd);
    let limit = super::git_limits::deadline();
    let out = super::git_limits::output_within(&mut cmd, limit).map_err(|e| {
        let Some(e) = e else {
            return format!(
                "git {} did not finish within {}s; check the repository's server (the limit is BERTH_BUILD_ADD_GIT_TIMEOUT, in seconds)",
                args.first().unwrap_or(&""),
                limit.as_secs()
            );
        };
        if e.kind() == std::io::ErrorKind::NotFound {
            "ADD of a git repository needs git: install it (e.g. apt-get install git)".to_string()
        } else {
            format!("cannot run git: {e}")
        }
    })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr
            .lines()
            .rfind(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim()
            .to_string();
        return Err(format!(
            "git {} failed: {last}",
            args.first().unwrap_or(&"")
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The commit `src` names now (asks the remote unless the ref is a commit),
/// checked against a `--checksum` (a commit prefix) and the query's commit.
/// Also the full ref name to fetch (None for a commit).
pub fn resolve(
    src: &GitSource,
    checksum: Option<&str>,
) -> Result<(String, Option<String>), String> {
    let (commit, name) = match src.reference.as_deref() {
        Some(r) if is_commit(r) => (r.to_ascii_lowercase(), None),
        reference => {
            let listing = git(
                &["ls-remote", "--", &src.remote],
                None,
                src.ssh_agent.as_deref(),
            )
            .map_err(|e| format!("{}: {e}", src.remote))?;
            let (sha, name) = pick_ref(&listing, reference).ok_or_else(|| match reference {
                Some(r) => format!("{}: unknown git ref {r:?}", src.remote),
                None => format!("{}: the repository has no HEAD", src.remote),
            })?;
            (sha, Some(name))
        }
    };
    for expected in [checksum, src.commit.as_deref()].into_iter().flatten() {
        let expected = expected.to_ascii_lowercase();
        if expected.is_empty() || !commit.starts_with(&expected) {
            return Err(format!(
                "{}: checksum mismatch: expected commit {expected}, got {commit}",
                src.remote
            ));
        }
    }
    Ok((commit, name))
}

/// Fetch `commit` (by `ref_name` when known) into `dir` (created) and check
/// it out; shallow when the server allows (dumb HTTP does not). Removes
/// `.git` unless `keep_git_dir`.
pub fn checkout(
    src: &GitSource,
    commit: &str,
    ref_name: Option<&str>,
    dir: &Path,
    keep_git_dir: bool,
) -> Result<(), String> {
    let fail = |e: String| format!("{}: {e}", src.remote);
    let agent = src.ssh_agent.as_deref();
    std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
    git(&["init", "-q"], Some(dir), agent).map_err(fail)?;
    git(&["remote", "add", "origin", &src.remote], Some(dir), agent).map_err(fail)?;
    let want = ref_name.unwrap_or(commit);
    let shallow = git(
        &["fetch", "-q", "--depth=1", "--no-tags", "origin", want],
        Some(dir),
        agent,
    );
    if shallow.is_err() {
        // Dumb HTTP has no shallow fetch, and some servers refuse a commit
        // by id: fetch branches and tags whole.
        let full = match ref_name {
            Some(name) => git(
                &["fetch", "-q", "--no-tags", "origin", name],
                Some(dir),
                agent,
            ),
            None => git(
                &[
                    "fetch",
                    "-q",
                    "origin",
                    "+refs/heads/*:refs/remotes/origin/*",
                    "+refs/tags/*:refs/tags/*",
                ],
                Some(dir),
                agent,
            ),
        };
        full.map_err(fail)?;
    }
    git(
        &["-c", "advice.detachedHead=false", "checkout", "-q", commit],
        Some(dir),
        agent,
    )
    .map_err(|e| fail(format!("commit {commit}: {e}")))?;
    // Submodules come along, as BuildKit's git source fetches them.
    if dir.join(".gitmodules").is_file() {
        git(
            &["submodule", "update", "--init", "--recursive", "--depth=1"],
            Some(dir),
            agent,
        )
        .map_err(|e| fail(format!("submodules: {e}")))?;
    }
    if !keep_git_dir {
        std::fs::remove_dir_all(dir.join(".git")).map_err(|e| fail(e.to_string()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_urls_by_the_references_forms() {
        for yes in [
            "https://github.com/moby/buildkit.git",
            "https://github.com/moby/buildkit.git#v0.10.1",
            "http://127.0.0.1:8080/repo.git#main:docs",
            "https://host/repo.git?branch=main&subdir=docs",
            "git@github.com:moby/buildkit.git#v0.14.1:docs",
            "git://host/repo",
            "ssh://git@host/repo.git",
        ] {
            assert!(is_git_url(yes), "{yes}");
        }
        for no in [
            "https://example.com/a.tar.gz",
            "https://example.com/file.git.txt",
            "git@nohost",
            "local/dir.git",
            "git@a/b:c",
        ] {
            assert!(!is_git_url(no), "{no}");
        }
    }

    #[test]
    fn fragment_and_query_name_ref_and_subdir() {
        let s = parse("https://h/r.git#v1.2:docs/./api/").unwrap();
        assert_eq!(s.remote, "https://h/r.git");
        assert_eq!(s.reference.as_deref(), Some("v1.2"));
        assert_eq!(s.subdir.as_deref(), Some("docs/api"));
        let s = parse("git@h:o/r.git#:sub").unwrap();
        assert_eq!((s.reference, s.subdir.as_deref()), (None, Some("sub")));
        let s = parse("https://h/r.git?branch=main&subdir=x&checksum=abc").unwrap();
        assert_eq!(s.remote, "https://h/r.git");
        assert_eq!(s.reference.as_deref(), Some("refs/heads/main"));
        assert_eq!(s.subdir.as_deref(), Some("x"));
        assert_eq!(s.commit.as_deref(), Some("abc"));
        let s = parse("https://h/r.git?tag=v2").unwrap();
        assert_eq!(s.reference.as_deref(), Some("refs/tags/v2"));
        // A subdirectory cannot leave the repository.
        let s = parse("https://h/r.git#main:../../etc").unwrap();
        assert_eq!(s.subdir.as_deref(), Some("etc"));
        assert!(parse("https://h/r.git#--upload-pack=x").is_err());
        assert!(parse("https://h/r.git?ref=a#b").is_err());
    }

    #[test]
    fn refs_resolve_branch_then_tag_peeled() {
        let listing = "1111111111111111111111111111111111111111\tHEAD\n\
                       1111111111111111111111111111111111111111\trefs/heads/main\n\
                       2222222222222222222222222222222222222222\trefs/heads/dev\n\
                       3333333333333333333333333333333333333333\trefs/tags/v1\n\
                       4444444444444444444444444444444444444444\trefs/tags/v1^{}\n";
        assert_eq!(pick_ref(listing, None).unwrap().0, "1".repeat(40));
        assert_eq!(
            pick_ref(listing, Some("dev")).unwrap(),
            ("2".repeat(40), "refs/heads/dev".to_string())
        );
        assert_eq!(pick_ref(listing, Some("v1")).unwrap().0, "4".repeat(40));
        assert_eq!(
            pick_ref(listing, Some("refs/heads/main")).unwrap().1,
            "refs/heads/main"
        );
        assert!(pick_ref(listing, Some("nope")).is_none());
    }
}
