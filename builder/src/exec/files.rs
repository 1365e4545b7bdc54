//! COPY and ADD: resolve sources (globs, .dockerignore), hash them for the
//! cache key, and stage the copied files in a directory that becomes the
//! layer (so the layer holds just the copied files and their parents).

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::dockerignore::{clean, Glob};
use crate::DockerIgnore;

/// A source root to copy from: the build context (with its ignore rules)
/// or an earlier stage's / image's filesystem.
pub struct SourceRoot<'a> {
    pub root: &'a Path,
    pub ignore: Option<&'a DockerIgnore>,
    /// Context files become root-owned; files of a stage keep their owners.
    pub is_context: bool,
    /// `COPY --exclude` patterns (for any source root).
    pub exclude: Option<&'a DockerIgnore>,
}

/// One matched source: its path on disk and its path relative to the root.
#[derive(Debug, Clone)]
pub struct Matched {
    pub path: PathBuf,
    pub rel: String,
}

fn has_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// `root/rel` with the symlinks among `rel`'s directories resolved inside
/// `root` (an absolute target starts again at `root`, `..` stops there), as
/// BuildKit resolves source paths: a source never reaches outside its root
/// (the host's files behind a context symlink, or an image's absolute link
/// read on the host). The last component is not followed.
pub fn scoped_join(root: &Path, rel: &str) -> PathBuf {
    let mut parts: std::collections::VecDeque<String> = rel
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .map(str::to_string)
        .collect();
    let mut resolved: Vec<String> = Vec::new();
    let mut hops = 0;
    while let Some(part) = parts.pop_front() {
        if part == ".." {
            resolved.pop();
            continue;
        }
        if parts.is_empty() {
            resolved.push(part);
            break;
        }
        let candidate = root.join(resolved.join("/")).join(&part);
        let link = fs::symlink_metadata(&candidate)
            .ok()
            .filter(|m| m.file_type().is_symlink())
            .and_then(|_| fs::read_link(&candidate).ok());
        match link {
            Some(target) if hops < 40 => {
                hops += 1;
                let target = target.to_string_lossy().into_owned();
                if target.starts_with('/') {
                    resolved.clear();
                }
                for p in target.split('/').rev() {
                    if !p.is_empty() && p != "." {
                        parts.push_front(p.to_string());
                    }
                }
            }
            _ => resolved.push(part),
        }
    }
    if resolved.is_empty() {
        root.to_path_buf()
    } else {
        root.join(resolved.join("/"))
    }
}

/// The directories of a pattern before its first component with a glob
/// (`src/*/x` → `src`).
fn glob_base(pattern: &str) -> &str {
    let mut end = 0;
    for (i, part) in pattern.split('/').enumerate() {
        if has_glob(part) {
            break;
        }
        end = if i == 0 {
            part.len()
        } else {
            end + 1 + part.len()
        };
    }
    &pattern[..end.min(pattern.len())]
}

impl SourceRoot<'_> {
    fn excluded(&self, rel: &str) -> bool {
        !rel.is_empty() && self.ignore.is_some_and(|i| i.is_excluded(rel))
    }

    /// Whether `--exclude` drops a path: patterns match it relative to the
    /// root, or relative to the source it is copied from (`--exclude=x/y`
    /// with source `app/` drops `app/x/y`, as BuildKit does).
    fn flag_excluded(&self, rel: &str, sub: &str) -> bool {
        self.exclude.is_some_and(|e| {
            (!rel.is_empty() && e.is_excluded(rel)) || (!sub.is_empty() && e.is_excluded(sub))
        })
    }

    /// Resolve one COPY source (path or glob) to the files it names.
    pub fn resolve(&self, source: &str) -> Result<Vec<Matched>, String> {
        let cleaned = clean(&format!("/{source}"));
        let rel = cleaned.trim_start_matches('/').to_string();
        if has_glob(&rel) {
            let glob = Glob::new(&rel).map_err(|e| format!("bad pattern {source:?}: {e}"))?;
            let mut found = Vec::new();
            for entry in walkdir::WalkDir::new(self.root)
                .min_depth(1)
                .sort_by_file_name()
            {
                let entry = entry.map_err(|e| e.to_string())?;
                let r = entry
                    .path()
                    .strip_prefix(self.root)
                    .map_err(|e| e.to_string())?
                    .to_string_lossy()
                    .into_owned();
                let from_base = r
                    .strip_prefix(glob_base(&rel))
                    .unwrap_or(&r)
                    .trim_start_matches('/');
                if glob.matches(&r) && !self.excluded(&r) && !self.flag_excluded(&r, from_base) {
                    found.push(Matched {
                        path: entry.path().to_path_buf(),
                        rel: r,
                    });
                }
            }
            if found.is_empty() {
                return Err(format!(
                    "no source files were specified: {source:?} matches nothing{}",
                    self.what()
                ));
            }
            return Ok(found);
        }
        let path = scoped_join(self.root, &rel);
        if fs::symlink_metadata(&path).is_err() || self.excluded(&rel) {
            return Err(format!(
                "{source:?} not found{}",
                if self.is_context {
                    " in the build context (or excluded by .dockerignore)"
                } else {
                    ""
                }
            ));
        }
        Ok(vec![Matched { path, rel }])
    }

    /// Whether `--exclude` drops a file source named as such (by its path
    /// or its name).
    pub fn is_excluded_file(&self, m: &Matched) -> bool {
        let name = m.rel.rsplit('/').next().unwrap_or("");
        self.flag_excluded(&m.rel, name)
    }

    fn what(&self) -> &'static str {
        if self.is_context {
            " in the build context (or all excluded by .dockerignore)"
        } else {
            ""
        }
    }

    /// Walk a matched source (itself and, for a directory, everything in it
    /// that is not ignored), in sorted order.
    pub fn walk(
        &self,
        m: &Matched,
        f: &mut dyn FnMut(&Path, &str) -> io::Result<()>,
    ) -> io::Result<()> {
        let mut it = walkdir::WalkDir::new(&m.path)
            .follow_links(false)
            .sort_by_file_name()
            .into_iter();
        while let Some(entry) = it.next() {
            let entry = entry.map_err(io::Error::other)?;
            let sub = entry
                .path()
                .strip_prefix(&m.path)
                .map_err(io::Error::other)?
                .to_string_lossy()
                .into_owned();
            let full_rel = match (m.rel.is_empty(), sub.is_empty()) {
                (true, _) => sub.clone(),
                (false, true) => m.rel.clone(),
                (false, false) => format!("{}/{sub}", m.rel),
            };
            if let Some(ignore) = self.ignore {
                if !full_rel.is_empty() && ignore.is_excluded(&full_rel) {
                    if entry.file_type().is_dir() && !ignore.must_walk(&full_rel) {
                        it.skip_current_dir();
                    }
                    continue;
                }
            }
            if let Some(exclude) = self.exclude {
                if self.flag_excluded(&full_rel, &sub) {
                    // Into an excluded directory only for a `!` exception below it.
                    let walk_on = (full_rel.is_empty() || exclude.must_walk(&full_rel))
                        && (sub.is_empty() || exclude.must_walk(&sub));
                    if entry.file_type().is_dir() && !walk_on {
                        it.skip_current_dir();
                    }
                    continue;
                }
            }
            f(entry.path(), &sub)?;
        }
        Ok(())
    }

    /// A content hash of the matched sources, for the cache key: names,
    /// types, modes, sizes, file contents and link targets (not times).
    pub fn content_hash(&self, matched: &[Matched]) -> io::Result<String> {
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        for m in matched {
            h.update(m.rel.as_bytes());
            h.update([0]);
            self.walk(m, &mut |path, sub| {
                let meta = fs::symlink_metadata(path)?;
                h.update(sub.as_bytes());
                h.update([0]);
                h.update(meta.mode().to_be_bytes());
                if meta.file_type().is_symlink() {
                    h.update(fs::read_link(path)?.as_os_str().as_encoded_bytes());
                } else if meta.is_file() {
                    h.update(meta.len().to_be_bytes());
                    let mut f = fs::File::open(path)?;
                    loop {
                        let n = f.read(&mut buf)?;
                        if n == 0 {
                            break;
                        }
                        h.update(&buf[..n]);
                    }
                }
                h.update([1]);
                Ok(())
            })?;
        }
        Ok(format!("sha256:{}", hex::encode(h.finalize())))
    }
}

/// Ownership and mode rules of one COPY.
pub struct CopyRules {
    pub chown: Option<(u32, u32)>,
    pub chmod: Option<Chmod>,
    pub preserve_owner: bool,
    pub clamp: Option<u64>,
}

fn lchown(path: &Path, uid: u32, gid: u32) -> io::Result<()> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
}

fn set_times(path: &Path, mtime: i64, clamp: Option<u64>) -> io::Result<()> {
    let t = clamp.map_or(mtime, |c| mtime.min(c as i64));
    let ft = filetime::FileTime::from_unix_time(t, 0);
    filetime::set_symlink_file_times(path, ft, ft)
}

/// Copy one filesystem object (not its children) from `src` to `dst`.
pub fn copy_one(src: &Path, dst: &Path, rules: &CopyRules) -> io::Result<()> {
    let meta = fs::symlink_metadata(src)?;
    let ft = meta.file_type();
    let (uid, gid) = match rules.chown {
        Some(ids) => ids,
        None if rules.preserve_owner => (meta.uid(), meta.gid()),
        None => (0, 0),
    };
    if ft.is_symlink() {
        let _ = fs::remove_file(dst);
        std::os::unix::fs::symlink(fs::read_link(src)?, dst)?;
        lchown(dst, uid, gid)?;
    } else if ft.is_dir() {
        match fs::symlink_metadata(dst) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                fs::remove_file(dst)?;
                fs::create_dir(dst)?;
            }
            Err(_) => fs::create_dir(dst)?,
        }
        lchown(dst, uid, gid)?;
        let mode = rules.chmod.as_ref().map_or(meta.mode() & 0o7777, |c| {
            c.apply(meta.mode() & 0o7777, true)
        });
        fs::set_permissions(dst, fs::Permissions::from_mode(mode))?;
    } else if ft.is_file() {
        if let Ok(m) = fs::symlink_metadata(dst) {
            if m.is_dir() {
                fs::remove_dir_all(dst)?;
            } else {
                fs::remove_file(dst)?;
            }
        }
        fs::copy(src, dst)?;
        lchown(dst, uid, gid)?;
        let mode = rules.chmod.as_ref().map_or(meta.mode() & 0o7777, |c| {
            c.apply(meta.mode() & 0o7777, false)
        });
        fs::set_permissions(dst, fs::Permissions::from_mode(mode))?;
    } else {
        // Devices, fifos and sockets (and overlay whiteouts) are not copied.
        return Ok(());
    }
    set_times(dst, meta.mtime(), rules.clamp)
}

/// Create the directories of `dir` (absolute, inside the image) below
/// `stage`, taking each one's owner, mode and time from the image when it
/// has it (so the layer does not change them), else root, 0755 and
/// `default_time`. The last one gets `owner` when it is new.
pub fn make_parents(
    stage: &Path,
    image: &Path,
    dir: &str,
    owner: Option<(u32, u32)>,
    default_time: i64,
) -> io::Result<()> {
    let parts: Vec<&str> = dir.split('/').filter(|p| !p.is_empty()).collect();
    let mut rel = PathBuf::new();
    for (i, part) in parts.iter().enumerate() {
        rel.push(part);
        let target = stage.join(&rel);
        if fs::symlink_metadata(&target).is_ok() {
            continue;
        }
        fs::create_dir(&target)?;
        match fs::metadata(image.join(&rel)) {
            Ok(m) if m.is_dir() => {
                lchown(&target, m.uid(), m.gid())?;
                fs::set_permissions(&target, fs::Permissions::from_mode(m.mode() & 0o7777))?;
                set_times(&target, m.mtime(), None)?;
            }
            _ => {
                let (uid, gid) = if i + 1 == parts.len() {
                    owner.unwrap_or((0, 0))
                } else {
                    (0, 0)
                };
                lchown(&target, uid, gid)?;
                fs::set_permissions(&target, fs::Permissions::from_mode(0o755))?;
                set_times(&target, default_time, None)?;
            }
        }
    }
    Ok(())
}

/// Fix directory times after their contents were written (writing into a
/// directory changes its mtime).
pub fn restore_dir_times(stage: &Path, times: &[(PathBuf, i64)]) -> io::Result<()> {
    for (path, t) in times.iter().rev() {
        set_times(&stage.join(path), *t, None)?;
    }
    Ok(())
}

/// Whether a file starts like a tar archive (plain or gzip).
pub fn archive_kind(path: &Path) -> io::Result<Option<bool>> {
    let mut f = fs::File::open(path)?;
    let mut head = vec![0u8; 512];
    let mut n = 0;
    while n < head.len() {
        let r = f.read(&mut head[n..])?;
        if r == 0 {
            break;
        }
        n += r;
    }
    if head[..n].starts_with(&[0x1f, 0x8b]) {
        return Ok(Some(true));
    }
    if n >= 262 && &head[257..262] == b"ustar" {
        return Ok(Some(false));
    }
    Ok(None)
}

/// Extract a local archive (ADD) into `dest` (a directory under the stage).
pub fn extract_archive(path: &Path, gzip: bool, dest: &Path) -> io::Result<()> {
    let f = fs::File::open(path)?;
    let reader: Box<dyn Read> = if gzip {
        Box::new(flate2::read::MultiGzDecoder::new(f))
    } else {
        Box::new(f)
    };
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(true);
    archive.set_overwrite(true);
    fs::create_dir_all(dest)?;
    for entry in archive.entries()? {
        super::layer::unpack_entry(&mut entry?, dest)?;
    }
    Ok(())
}

/// `user[:group]` (names or ids) to ids, from the image's passwd and group
/// files. A user without a group takes the user's primary group.
pub fn resolve_user(image: &Path, spec: &str) -> Result<(u32, u32, Vec<u32>), String> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let passwd = fs::read_to_string(image.join("etc/passwd")).unwrap_or_default();
    let groups = fs::read_to_string(image.join("etc/group")).unwrap_or_default();
    let entry = passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 4 && (f[0] == user || f[2] == user)).then(|| {
            (
                f[0].to_string(),
                f[2].parse::<u32>().ok(),
                f[3].parse::<u32>().ok(),
            )
        })
    });
    let uid = match user.parse::<u32>() {
        Ok(n) => n,
        Err(_) => entry.as_ref().and_then(|e| e.1).ok_or_else(|| {
            format!("unable to find user {user}: no matching entries in passwd file")
        })?,
    };
    let gid = match group {
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => groups
                .lines()
                .find_map(|l| {
                    let f: Vec<&str> = l.split(':').collect();
                    (f.len() >= 3 && f[0] == g)
                        .then(|| f[2].parse::<u32>().ok())
                        .flatten()
                })
                .ok_or_else(|| {
                    format!("unable to find group {g}: no matching entries in group file")
                })?,
        },
        None => entry.as_ref().and_then(|e| e.2).unwrap_or(0),
    };
    // Supplementary groups: those that list the user by name.
    let mut extra = Vec::new();
    if group.is_none() {
        if let Some((name, _, _)) = &entry {
            for l in groups.lines() {
                let f: Vec<&str> = l.split(':').collect();
                if f.len() >= 4 && f[3].split(',').any(|m| m == name) {
                    if let Ok(g) = f[2].parse::<u32>() {
                        if g != gid {
                            extra.push(g);
                        }
                    }
                }
            }
        }
    }
    Ok((uid, gid, extra))
}

/// A `--chmod` value: an octal mode, or chmod(1)'s symbolic clauses
/// (`u+x,go-w`, `a=rX`), applied to each copied file's own mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Chmod {
    Octal(u32),
    Symbolic(Vec<(u32, char, String)>),
}

impl Chmod {
    /// The mode a file of mode `mode` gets (`dir`: X applies).
    pub fn apply(&self, mode: u32, dir: bool) -> u32 {
        let clauses = match self {
            Chmod::Octal(m) => return *m,
            Chmod::Symbolic(c) => c,
        };
        let mut mode = mode;
        for (who, op, perms) in clauses {
            let mut bits = 0;
            for p in perms.chars() {
                bits |= match p {
                    'r' => 0o444,
                    'w' => 0o222,
                    'x' => 0o111,
                    'X' if dir || mode & 0o111 != 0 => 0o111,
                    's' => 0o6000,
                    't' => 0o1000,
                    _ => 0,
                };
            }
            let mask = who
                | if who & 0o700 != 0 { 0o4000 } else { 0 }
                | if who & 0o070 != 0 { 0o2000 } else { 0 }
                | if *who == 0o777 { 0o1000 } else { 0 };
            let bits = bits & mask;
            mode = match op {
                '+' => mode | bits,
                '-' => mode & !bits,
                _ => (mode & !(who | (mask & 0o7000))) | bits,
            };
        }
        mode
    }
}

/// Parse `--chmod=0755` or `--chmod=u+x,g-w`.
pub fn parse_chmod(text: &str) -> Result<Chmod, String> {
    if let Ok(m) = u32::from_str_radix(text, 8) {
        if m <= 0o7777 {
            return Ok(Chmod::Octal(m));
        }
    }
    let bad = || {
        format!(
            "--chmod={text}: give an octal mode such as 0755 or symbolic clauses such as u+x,go-w"
        )
    };
    let mut clauses = Vec::new();
    for clause in text.split(',') {
        let at = clause.find(['+', '-', '=']).ok_or_else(bad)?;
        let (who_text, rest) = clause.split_at(at);
        let mut who = 0;
        for c in who_text.chars() {
            who |= match c {
                'u' => 0o700,
                'g' => 0o070,
                'o' => 0o007,
                'a' => 0o777,
                _ => return Err(bad()),
            };
        }
        if who == 0 {
            who = 0o777;
        }
        let mut chars = rest.chars();
        let op = chars.next().ok_or_else(bad)?;
        let perms: String = chars.collect();
        if !perms.chars().all(|c| "rwxXst".contains(c)) {
            return Err(bad());
        }
        clauses.push((who, op, perms));
    }
    Ok(Chmod::Symbolic(clauses))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_resolve_from_the_image() {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir(tmp.path().join("etc")).unwrap();
        fs::write(
            tmp.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n",
        )
        .unwrap();
        fs::write(
            tmp.path().join("etc/group"),
            "root:x:0:\nstaff:x:50:app\napp:x:1001:\n",
        )
        .unwrap();
        assert_eq!(
            resolve_user(tmp.path(), "app").unwrap(),
            (1000, 1001, vec![50])
        );
        assert_eq!(
            resolve_user(tmp.path(), "app:staff").unwrap(),
            (1000, 50, vec![])
        );
        assert_eq!(resolve_user(tmp.path(), "42:7").unwrap(), (42, 7, vec![]));
        assert_eq!(resolve_user(tmp.path(), "42").unwrap(), (42, 0, vec![]));
        assert!(resolve_user(tmp.path(), "nobody")
            .unwrap_err()
            .contains("unable to find user nobody"));
        assert_eq!(parse_chmod("0640").unwrap(), Chmod::Octal(0o640));
        let c = parse_chmod("u+x,go-w").unwrap();
        assert_eq!(c.apply(0o666, false), 0o744);
        assert_eq!(parse_chmod("a=rX").unwrap().apply(0o640, false), 0o444);
        assert_eq!(parse_chmod("a=rX").unwrap().apply(0o700, true), 0o555);
        assert_eq!(parse_chmod("+x").unwrap().apply(0o644, false), 0o755);
        assert_eq!(parse_chmod("g=").unwrap().apply(0o775, false), 0o705);
        assert!(parse_chmod("u+q").is_err());
        assert!(parse_chmod("z+x").is_err());
        assert!(parse_chmod("99999").is_err());
    }

    #[test]
    fn sources_resolve_with_globs_and_ignore_rules() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        fs::create_dir_all(root.join("src/sub")).unwrap();
        fs::write(root.join("a.txt"), "a").unwrap();
        fs::write(root.join("b.txt"), "b").unwrap();
        fs::write(root.join("secret.txt"), "s").unwrap();
        fs::write(root.join("src/sub/x"), "x").unwrap();
        let ignore = DockerIgnore::parse("secret.txt\n").unwrap();
        let ctx = SourceRoot {
            root,
            ignore: Some(&ignore),
            is_context: true,
            exclude: None,
        };
        let m = ctx.resolve("*.txt").unwrap();
        let names: Vec<&str> = m.iter().map(|m| m.rel.as_str()).collect();
        assert_eq!(names, ["a.txt", "b.txt"]);
        assert!(ctx.resolve("secret.txt").unwrap_err().contains("not found"));
        assert!(ctx.resolve("nope").is_err());
        let h1 = ctx.content_hash(&ctx.resolve(".").unwrap()).unwrap();
        fs::write(root.join("secret.txt"), "changed").unwrap();
        assert_eq!(
            h1,
            ctx.content_hash(&ctx.resolve(".").unwrap()).unwrap(),
            "ignored files do not count"
        );
        fs::write(root.join("src/sub/x"), "y").unwrap();
        assert_ne!(h1, ctx.content_hash(&ctx.resolve(".").unwrap()).unwrap());
    }

    #[test]
    fn exclude_matches_from_the_root_and_from_the_source() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        for f in [
            "home.txt",
            "homedir/keep",
            "homedir/skip.txt",
            "app/a",
            "app/storage/views/v",
            "src/hom.txt",
        ] {
            fs::create_dir_all(root.join(f).parent().unwrap()).unwrap();
            fs::write(root.join(f), f).unwrap();
        }
        let exclude = DockerIgnore::parse("*.txt\nstorage/views\n").unwrap();
        let ctx = SourceRoot {
            root,
            ignore: None,
            is_context: true,
            exclude: Some(&exclude),
        };
        let names = |source: &str| -> Vec<String> {
            let mut all = Vec::new();
            for m in ctx.resolve(source).unwrap() {
                ctx.walk(&m, &mut |_, sub| {
                    all.push(format!("{}:{sub}", m.rel));
                    Ok(())
                })
                .unwrap();
            }
            all
        };
        assert_eq!(names("hom*"), ["homedir:", "homedir:keep"]);
        assert_eq!(names("app"), ["app:", "app:a", "app:storage"]);
        assert!(
            ctx.resolve("src/hom*").is_err(),
            "relative to the glob's directory too"
        );
        assert_eq!(glob_base("src/*/x"), "src");
        assert_eq!(glob_base("*.txt"), "");
    }

    #[test]
    fn source_paths_resolve_symlinks_inside_their_root() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        fs::create_dir_all(root.join("usr/lib")).unwrap();
        fs::write(root.join("usr/lib/libx"), "x").unwrap();
        std::os::unix::fs::symlink("usr/lib", root.join("lib")).unwrap();
        std::os::unix::fs::symlink("/usr/lib", root.join("abs")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("host")).unwrap();
        std::os::unix::fs::symlink("../../../..", root.join("up")).unwrap();
        assert_eq!(scoped_join(root, "lib/libx"), root.join("usr/lib/libx"));
        assert_eq!(scoped_join(root, "abs/libx"), root.join("usr/lib/libx"));
        // Never the host's /etc/passwd, never above the root.
        assert_eq!(scoped_join(root, "host/passwd"), root.join("etc/passwd"));
        assert_eq!(
            scoped_join(root, "up/usr/lib/libx"),
            root.join("usr/lib/libx")
        );
        // The last component is the link itself.
        assert_eq!(scoped_join(root, "lib"), root.join("lib"));
        assert_eq!(scoped_join(root, ""), root.to_path_buf());
        let ctx = SourceRoot {
            root,
            ignore: None,
            is_context: true,
            exclude: None,
        };
        assert!(ctx.resolve("host/passwd").is_err());
    }
}
