//! `RUN --mount=...`, `--network` and `--security`, as the Dockerfile
//! reference defines them: parsed and checked at plan time (pure, no
//! filesystem), so a bad option is a `Dockerfile:LINE: RUN: ...` error
//! before anything runs. The executor's side is `exec::mounts`.
//!
//! Values are CSV fields (`type=cache,target=/root/.cache,sharing=locked`);
//! `ro`, `rw` and `required` may stand alone (meaning true), as BuildKit
//! takes them. Relative targets are under the step's working directory.

use std::collections::BTreeSet;

use serde::Serialize;

/// Where a bind mount (or the seed of a cache mount) reads from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum MountFrom {
    Context,
    Stage { index: usize },
    Image { reference: String },
}

/// How concurrent steps share one cache mount.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Sharing {
    /// Every step mounts the same directory at once (the default).
    Shared,
    /// A step that finds it in use gets another instance of its own.
    Private,
    /// A step waits until no other step has it mounted.
    Locked,
}

/// One `--mount` of a RUN, checked and with defaults applied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum RunMount {
    /// Files of the context, a stage or an image; writes (with `rw`) are discarded.
    Bind {
        target: String,
        from: MountFrom,
        /// Path in `from`, relative, cleaned (empty: its root).
        source: String,
        readwrite: bool,
    },
    /// A directory kept in the build cache folder across builds.
    Cache {
        id: String,
        target: String,
        readonly: bool,
        sharing: Sharing,
        /// Seeds a new cache directory.
        from: Option<MountFrom>,
        source: String,
        mode: u32,
        uid: u32,
        gid: u32,
    },
    Tmpfs {
        target: String,
        /// Bytes; the kernel's default (half the memory) when unset.
        size: Option<u64>,
    },
    /// A `--secret` value as a file (`target`) and/or a variable (`env`);
    /// the value itself is never part of the plan.
    Secret {
        id: String,
        target: Option<String>,
        env: Option<String>,
        required: bool,
        mode: u32,
        uid: u32,
        gid: u32,
    },
    /// A `--ssh` agent socket.
    Ssh {
        id: String,
        target: String,
        required: bool,
        mode: u32,
        uid: u32,
        gid: u32,
    },
}

impl RunMount {
    /// Where it appears in the step's filesystem (None: an env-only secret).
    pub fn target(&self) -> Option<&str> {
        match self {
            RunMount::Bind { target, .. }
            | RunMount::Cache { target, .. }
            | RunMount::Tmpfs { target, .. }
            | RunMount::Ssh { target, .. } => Some(target),
            RunMount::Secret { target, .. } => target.as_deref(),
        }
    }

    /// The stage or image it reads, if any.
    pub fn source(&self) -> Option<&MountFrom> {
        match self {
            RunMount::Bind { from, .. } => Some(from),
            RunMount::Cache { from, .. } => from.as_ref(),
            _ => None,
        }
    }
}

/// What the build was given for RUN mounts and entitlements: the ids
/// only (values stay with the executor).
#[derive(Clone, Debug, Default)]
pub struct RunInputs {
    /// `--secret id=...` ids.
    pub secrets: BTreeSet<String>,
    /// `--ssh ID=...` ids.
    pub ssh: BTreeSet<String>,
    /// `--allow security.insecure`.
    pub allow_insecure: bool,
    /// `berth build --network`: the network of every RUN that does not
    /// name its own with `RUN --network` (docker build's flag).
    pub network: Option<String>,
}

/// The part of a RUN's cache key that stands for what its mounts read:
/// (target, content digest or stage key) pairs; None without any.
pub fn content_key(parts: &[(String, String)]) -> Option<String> {
    if parts.is_empty() {
        return None;
    }
    Some(
        parts
            .iter()
            .map(|(target, content)| format!("mount {target}={content}"))
            .collect::<Vec<_>>()
            .join("\n"),
    )
}

/// The default SSH mount id and `--ssh` name.
pub const DEFAULT_SSH_ID: &str = "default";

const TYPES: &str = "bind, cache, tmpfs, secret or ssh";

/// Parse a step's `--mount` values. `workdir` makes relative targets
/// absolute; `resolve_from` turns a `from=` name into a stage or image.
pub fn parse_mounts(
    values: &[String],
    workdir: &str,
    resolve_from: &mut dyn FnMut(&str) -> Result<MountFrom, String>,
) -> Result<Vec<RunMount>, String> {
    let mut mounts = Vec::new();
    let mut targets = BTreeSet::new();
    let mut ssh_count = 0;
    for value in values {
        let mount = parse_mount(value, workdir, ssh_count, resolve_from)
            .map_err(|e| format!("--mount={value}: {e}"))?;
        if matches!(mount, RunMount::Ssh { .. }) {
            ssh_count += 1;
        }
        if let Some(target) = mount.target() {
            if !targets.insert(target.to_string()) {
                return Err(format!(
                    "--mount={value}: another mount of this RUN has the target {target}"
                ));
            }
        }
        mounts.push(mount);
    }
    Ok(mounts)
}

/// The fields of one `--mount` value, keys lower case.
fn fields(value: &str) -> Result<Vec<(String, Option<String>)>, String> {
    let mut out = Vec::new();
    for field in split_csv(value)? {
        let field = field.trim();
        if field.is_empty() {
            continue;
        }
        match field.split_once('=') {
            Some((k, v)) => out.push((k.trim().to_ascii_lowercase(), Some(v.to_string()))),
            None => out.push((field.to_ascii_lowercase(), None)),
        }
    }
    Ok(out)
}

/// CSV as Go's encoding/csv reads one record: commas split, a field in
/// double quotes may hold commas, `""` is a quote inside one.
fn split_csv(value: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut chars = value.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            '"' => quoted = !quoted,
            ',' if !quoted => fields.push(std::mem::take(&mut field)),
            c => field.push(c),
        }
    }
    if quoted {
        return Err("unterminated quote".into());
    }
    fields.push(field);
    Ok(fields)
}

fn parse_bool(key: &str, value: Option<&str>) -> Result<bool, String> {
    match value {
        None => Ok(true),
        Some("1" | "t" | "T" | "true" | "TRUE" | "True") => Ok(true),
        Some("0" | "f" | "F" | "false" | "FALSE" | "False") => Ok(false),
        Some(v) => Err(format!("{key}={v}: use true or false")),
    }
}

fn parse_mode(value: &str) -> Result<u32, String> {
    u32::from_str_radix(value, 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| format!("mode={value}: use an octal file mode, e.g. 0755"))
}

fn parse_id(key: &str, value: &str) -> Result<u32, String> {
    value
        .parse::<u32>()
        .map_err(|_| format!("{key}={value}: use a numeric id"))
}

/// A size as `docker run --tmpfs` takes it: bytes, or with a k/m/g/t
/// suffix (powers of 1024; `b`, `kb`, `kib` and case are all accepted).
pub fn parse_size(value: &str) -> Result<u64, String> {
    let bad = || format!("size={value}: use bytes or a size like 64m or 1g");
    let lower = value.trim().to_ascii_lowercase();
    let split = lower
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(lower.len());
    let (number, unit) = lower.split_at(split);
    let number: f64 = number.parse().map_err(|_| bad())?;
    let unit = unit.trim_end_matches("ib").trim_end_matches('b');
    let factor: u64 = match unit {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        "p" => 1 << 50,
        _ => return Err(bad()),
    };
    let bytes = number * factor as f64;
    if !bytes.is_finite() || bytes < 1.0 || bytes > u64::MAX as f64 {
        return Err(bad());
    }
    Ok(bytes as u64)
}

/// Clean a path: `.` and `..` resolved lexically; None when `..` climbs
/// above the start.
fn clean_relative(path: &str) -> Option<Vec<&str>> {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    Some(parts)
}

/// An absolute, cleaned target; relative ones are under `workdir`.
fn absolute_target(target: &str, workdir: &str) -> Result<String, String> {
    let joined = if target.starts_with('/') {
        target.to_string()
    } else {
        format!("{}/{target}", workdir.trim_end_matches('/'))
    };
    // `..` above the root stays at the root, as in any path lookup.
    let mut parts: Vec<&str> = Vec::new();
    for part in joined.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        return Err(format!(
            "target={target}: cannot mount over the root directory"
        ));
    }
    Ok(format!("/{}", parts.join("/")))
}

fn parse_mount(
    value: &str,
    workdir: &str,
    ssh_index: usize,
    resolve_from: &mut dyn FnMut(&str) -> Result<MountFrom, String>,
) -> Result<RunMount, String> {
    let options = MountOptions::parse(&fields(value)?)?;
    let common = options.common(workdir, resolve_from)?;
    Ok(match options.kind.as_str() {
        "bind" => RunMount::Bind {
            target: options.need_target(&common)?,
            from: common.from.unwrap_or(MountFrom::Context),
            source: common.source,
            readwrite: !common.readonly.unwrap_or(true),
        },
        "cache" => cache_mount(&options, common)?,
        "tmpfs" => RunMount::Tmpfs {
            target: options.need_target(&common)?,
            size: options.text("size").map(|s| parse_size(&s)).transpose()?,
        },
        "secret" => secret_mount(&options, common)?,
        _ => RunMount::Ssh {
            id: options
                .text("id")
                .filter(|i| !i.is_empty())
                .unwrap_or_else(|| DEFAULT_SSH_ID.to_string()),
            target: common
                .target
                .unwrap_or_else(|| format!("/run/buildkit/ssh_agent.{ssh_index}")),
            required: options.flag("required")?.unwrap_or(false),
            mode: options.mode(0o600)?,
            uid: common.uid,
            gid: common.gid,
        },
    })
}

/// A `--mount`'s type and options, aliases folded (`dst` is `target`,
/// `ro` is `readonly`), each checked against what the type takes.
struct MountOptions {
    kind: String,
    values: std::collections::BTreeMap<&'static str, Option<String>>,
}

/// The options every mount type reads the same way.
struct CommonOptions {
    /// Absolute, under WORKDIR when relative.
    target: Option<String>,
    uid: u32,
    gid: u32,
    /// Relative to what the mount reads; empty for its root.
    source: String,
    from: Option<MountFrom>,
    /// From `ro`/`readonly` or `rw`/`readwrite`; None when neither is given.
    readonly: Option<bool>,
}

impl MountOptions {
    fn parse(fields: &[(String, Option<String>)]) -> Result<MountOptions, String> {
        let mut kind = "bind".to_string();
        for (k, v) in fields {
            if k == "type" {
                kind = v.clone().unwrap_or_default().to_ascii_lowercase();
            }
        }
        let allowed = allowed_options(&kind)?;
        let mut values = std::collections::BTreeMap::new();
        for (k, v) in fields {
            let key = match k.as_str() {
                "type" => continue,
                "target" | "dst" | "destination" => "target",
                "source" | "src" => "source",
                "ro" | "readonly" => "readonly",
                "rw" | "readwrite" => "readwrite",
                "from" => "from",
                "id" => "id",
                "sharing" => "sharing",
                "mode" => "mode",
                "uid" => "uid",
                "gid" => "gid",
                "size" => "size",
                "env" => "env",
                "required" => "required",
                other => {
                    return Err(format!(
                        "unknown option {other:?} (type={kind} takes {})",
                        allowed.join(", ")
                    ))
                }
            };
            if !allowed.contains(&key) {
                return Err(format!(
                    "type={kind} does not take {k:?} (it takes {})",
                    allowed.join(", ")
                ));
            }
            let flag = matches!(key, "readonly" | "readwrite" | "required");
            if v.is_none() && !flag {
                return Err(format!("{k} needs a value: write {k}=..."));
            }
            if values.insert(key, v.clone()).is_some() {
                return Err(format!("{k} is given twice"));
            }
        }
        Ok(MountOptions { kind, values })
    }

    fn text(&self, key: &str) -> Option<String> {
        self.values.get(key).cloned().flatten()
    }

    fn flag(&self, key: &str) -> Result<Option<bool>, String> {
        self.values
            .get(key)
            .map(|v| parse_bool(key, v.as_deref()))
            .transpose()
    }

    fn mode(&self, default: u32) -> Result<u32, String> {
        self.text("mode").map_or(Ok(default), |m| parse_mode(&m))
    }

    fn need_target(&self, common: &CommonOptions) -> Result<String, String> {
        common
            .target
            .clone()
            .ok_or_else(|| format!("type={} needs target=PATH (where to mount it)", self.kind))
    }

    fn common(
        &self,
        workdir: &str,
        resolve_from: &mut dyn FnMut(&str) -> Result<MountFrom, String>,
    ) -> Result<CommonOptions, String> {
        let target = match self.text("target") {
            Some(t) if t.is_empty() => return Err("target is empty".into()),
            Some(t) => Some(absolute_target(&t, workdir)?),
            None => None,
        };
        let uid = self.text("uid").map_or(Ok(0), |v| parse_id("uid", &v))?;
        let gid = self.text("gid").map_or(Ok(0), |v| parse_id("gid", &v))?;
        let source = match self.text("source") {
            Some(s) => clean_relative(&s)
                .map(|p| p.join("/"))
                .ok_or_else(|| format!("source={s} climbs above the root of what it reads"))?,
            None => String::new(),
        };
        let from = match self.text("from") {
            Some(f) if f.is_empty() => return Err("from is empty".into()),
            Some(f) => Some(resolve_from(&f)?),
            None => None,
        };
        let readonly = match (self.flag("readonly")?, self.flag("readwrite")?) {
            (Some(ro), Some(rw)) if ro == rw => {
                return Err("ro and rw contradict each other".into());
            }
            (Some(ro), _) => Some(ro),
            (None, Some(rw)) => Some(!rw),
            (None, None) => None,
        };
        Ok(CommonOptions {
            target,
            uid,
            gid,
            source,
            from,
            readonly,
        })
    }
}

/// The options each mount type takes (aliases folded).
fn allowed_options(kind: &str) -> Result<&'static [&'static str], String> {
    Ok(match kind {
        "bind" => &["target", "source", "from", "readonly", "readwrite"],
        "cache" => &[
            "target",
            "id",
            "readonly",
            "readwrite",
            "sharing",
            "from",
            "source",
            "mode",
            "uid",
            "gid",
        ],
        "tmpfs" => &["target", "size"],
        "secret" => &["target", "id", "env", "required", "mode", "uid", "gid"],
        "ssh" => &["target", "id", "required", "mode", "uid", "gid"],
        other => return Err(format!("unknown mount type {other:?}: use {TYPES}")),
    })
}

/// `type=cache`: the id defaults to the target.
fn cache_mount(options: &MountOptions, common: CommonOptions) -> Result<RunMount, String> {
    let target = options.need_target(&common)?;
    let id = match options.text("id") {
        Some(id) => {
            check_cache_id(&id)?;
            id
        }
        None => target.clone(),
    };
    let sharing = match options.text("sharing").as_deref() {
        None | Some("shared") => Sharing::Shared,
        Some("private") => Sharing::Private,
        Some("locked") => Sharing::Locked,
        Some(other) => return Err(format!("sharing={other}: use shared, private or locked")),
    };
    Ok(RunMount::Cache {
        id,
        target,
        readonly: common.readonly.unwrap_or(false),
        sharing,
        from: common.from,
        source: common.source,
        mode: options.mode(0o755)?,
        uid: common.uid,
        gid: common.gid,
    })
}

/// `type=secret`: a file (by default /run/secrets/ID), a variable, or both.
fn secret_mount(options: &MountOptions, common: CommonOptions) -> Result<RunMount, String> {
    let env = options.text("env");
    if let Some(name) = &env {
        if name.is_empty()
            || name.contains('=')
            || name.contains('\0')
            || name.starts_with(|c: char| c.is_ascii_digit())
        {
            return Err(format!("env={name}: not a valid variable name"));
        }
    }
    let id = match (options.text("id"), &common.target) {
        (Some(id), _) if !id.is_empty() => id,
        (Some(_), _) => return Err("id is empty".into()),
        (None, Some(t)) => t.rsplit('/').next().unwrap_or_default().to_string(),
        (None, None) => return Err("type=secret needs id=ID (the --secret id it reads)".into()),
    };
    // A file at /run/secrets/ID unless only a variable was asked for.
    let target = match (common.target, &env) {
        (Some(t), _) => Some(t),
        (None, Some(_)) => None,
        (None, None) => Some(absolute_target(&format!("/run/secrets/{id}"), "/")?),
    };
    Ok(RunMount::Secret {
        id,
        target,
        env,
        required: options.flag("required")?.unwrap_or(false),
        mode: options.mode(0o400)?,
        uid: common.uid,
        gid: common.gid,
    })
}

/// A cache id names a folder of the build cache: no path separators, no
/// `..`, nothing empty.
fn check_cache_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("id is empty".into());
    }
    if id.contains(['/', '\\', '\0']) || id.contains("..") {
        return Err(format!(
            "id={id}: a cache id cannot hold path separators or \"..\" (use a plain name, e.g. id=npm-cache)"
        ));
    }
    Ok(())
}

/// Check a step's mounts against what the build was given: a required
/// secret or SSH agent that is missing is an error.
pub fn check_inputs(mounts: &[RunMount], inputs: &RunInputs) -> Result<(), String> {
    for m in mounts {
        match m {
            RunMount::Secret {
                id, required: true, ..
            } if !inputs.secrets.contains(id) => {
                return Err(format!(
                    "secret {id:?} is required but the build was not given it: pass --secret id={id},src=FILE (or id={id},env=VARIABLE)"
                ))
            }
            RunMount::Ssh {
                id, required: true, ..
            } if !inputs.ssh.contains(id) => {
                return Err(format!(
                    "SSH agent {id:?} is required but the build was not given one: pass --ssh {id}=$SSH_AUTH_SOCK"
                ))
            }
            _ => {}
        }
    }
    Ok(())
}

/// Where a `berth build --secret` value comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretSource {
    File(std::path::PathBuf),
    Env(String),
}

/// Parse `--secret id=ID[,src=FILE|,env=VAR][,type=file|env]`, as
/// `docker build` takes it: `src` (or `source`) reads a file, `env` a
/// variable, and `id=ID` alone the variable named ID.
pub fn parse_secret_flag(spec: &str) -> Result<(String, SecretSource), String> {
    let bad =
        |why: String| format!("--secret {spec}: {why}; write id=ID,src=FILE or id=ID,env=VARIABLE");
    let mut id = None;
    let mut src = None;
    let mut env = None;
    let mut kind = None;
    for field in split_csv(spec).map_err(bad)? {
        let Some((k, v)) = field.split_once('=') else {
            return Err(bad(format!("{field:?} is not KEY=VALUE")));
        };
        match k.trim().to_ascii_lowercase().as_str() {
            "id" => id = Some(v.to_string()),
            "src" | "source" => src = Some(v.to_string()),
            "env" => env = Some(v.to_string()),
            "type" => kind = Some(v.to_ascii_lowercase()),
            other => return Err(bad(format!("unknown key {other:?}"))),
        }
    }
    let id = id
        .filter(|i| !i.is_empty())
        .ok_or_else(|| bad("no id".into()))?;
    let source = match (kind.as_deref(), src, env) {
        (_, Some(_), Some(_)) => return Err(bad("give src or env, not both".into())),
        (None | Some("file"), Some(path), None) => SecretSource::File(path.into()),
        (None | Some("env"), None, Some(var)) => SecretSource::Env(var),
        (Some("env"), Some(var), None) => SecretSource::Env(var),
        (Some("file"), None, None) => SecretSource::File(id.clone().into()),
        (None | Some("env"), None, None) => SecretSource::Env(id.clone()),
        (Some(other), _, _) => return Err(bad(format!("type={other}: use file or env"))),
    };
    Ok((id, source))
}

/// Parse `--ssh ID[=SOCKET]` (`default` alone takes `$SSH_AUTH_SOCK`);
/// key files are not supported (an agent socket is).
pub fn parse_ssh_flag(spec: &str) -> Result<(String, Option<std::path::PathBuf>), String> {
    let (id, paths) = match spec.split_once('=') {
        Some((id, paths)) => (id, Some(paths)),
        None => (spec, None),
    };
    if id.is_empty() {
        return Err(format!(
            "--ssh {spec}: no id; write --ssh default=$SSH_AUTH_SOCK"
        ));
    }
    match paths {
        Some(p) if p.contains(',') => Err(format!(
            "--ssh {spec}: one agent socket per id (key files are not supported: load them into an ssh-agent)"
        )),
        Some("") => Err(format!("--ssh {spec}: the socket path is empty")),
        Some(p) => Ok((id.to_string(), Some(p.into()))),
        None => Ok((id.to_string(), None)),
    }
}

/// `RUN --network`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Network {
    /// The host's network (BuildKit's default for a daemonless builder).
    Default,
    None,
    Host,
}

pub fn parse_network(value: Option<&str>) -> Result<Network, String> {
    match value {
        None | Some("default") => Ok(Network::Default),
        Some("none") => Ok(Network::None),
        Some("host") => Ok(Network::Host),
        Some(other) => Err(format!("--network={other}: use default, none or host")),
    }
}

/// `RUN --security`: true for `insecure` (all capabilities), which needs
/// the `security.insecure` entitlement.
pub fn parse_security(value: Option<&str>, allow_insecure: bool) -> Result<bool, String> {
    match value {
        None | Some("sandbox") => Ok(false),
        Some("insecure") if allow_insecure => Ok(true),
        Some("insecure") => Err(
            "--security=insecure runs the step with every capability of root on this machine: allow it with `berth build --allow security.insecure`".into(),
        ),
        Some(other) => Err(format!("--security={other}: use sandbox or insecure")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(name: &str) -> Result<MountFrom, String> {
        match name {
            "build" => Ok(MountFrom::Stage { index: 0 }),
            "later" => Err("stage later is defined after this one".into()),
            other => Ok(MountFrom::Image {
                reference: other.into(),
            }),
        }
    }

    fn one(value: &str) -> Result<RunMount, String> {
        parse_mounts(&[value.to_string()], "/work", &mut resolve).map(|mut v| v.remove(0))
    }

    fn err(value: &str) -> String {
        one(value).unwrap_err()
    }

    #[test]
    fn cache_defaults_and_options() {
        assert_eq!(
            one("type=cache,target=/root/.cache").unwrap(),
            RunMount::Cache {
                id: "/root/.cache".into(),
                target: "/root/.cache".into(),
                readonly: false,
                sharing: Sharing::Shared,
                from: None,
                source: String::new(),
                mode: 0o755,
                uid: 0,
                gid: 0,
            }
        );
        assert_eq!(
            one("type=cache,id=go,dst=gocache,sharing=locked,from=build,source=/a/../b,mode=0700,uid=1000,gid=100,ro").unwrap(),
            RunMount::Cache {
                id: "go".into(),
                target: "/work/gocache".into(),
                readonly: true,
                sharing: Sharing::Locked,
                from: Some(MountFrom::Stage { index: 0 }),
                source: "b".into(),
                mode: 0o700,
                uid: 1000,
                gid: 100,
            }
        );
        assert!(matches!(
            one("type=cache,target=/c,sharing=private,readonly=false").unwrap(),
            RunMount::Cache {
                sharing: Sharing::Private,
                readonly: false,
                ..
            }
        ));
    }

    #[test]
    fn bind_tmpfs_secret_ssh() {
        assert_eq!(
            one("target=/src").unwrap(),
            RunMount::Bind {
                target: "/src".into(),
                from: MountFrom::Context,
                source: String::new(),
                readwrite: false,
            }
        );
        assert_eq!(
            one("type=bind,from=alpine:3,src=etc,target=/x,rw").unwrap(),
            RunMount::Bind {
                target: "/x".into(),
                from: MountFrom::Image {
                    reference: "alpine:3".into()
                },
                source: "etc".into(),
                readwrite: true,
            }
        );
        assert_eq!(
            one("type=tmpfs,target=/t,size=64m").unwrap(),
            RunMount::Tmpfs {
                target: "/t".into(),
                size: Some(64 << 20),
            }
        );
        assert_eq!(
            one("type=secret,id=aws").unwrap().target(),
            Some("/run/secrets/aws")
        );
        assert_eq!(
            one("type=secret,id=tok,env=TOKEN,required").unwrap(),
            RunMount::Secret {
                id: "tok".into(),
                target: None,
                env: Some("TOKEN".into()),
                required: true,
                mode: 0o400,
                uid: 0,
                gid: 0,
            }
        );
        // The id defaults to the target's name.
        assert!(matches!(
            one("type=secret,target=/root/.npmrc,mode=0440").unwrap(),
            RunMount::Secret { ref id, mode: 0o440, .. } if id == ".npmrc"
        ));
        let ssh = parse_mounts(
            &["type=ssh".into(), "type=ssh,id=work,required=true".into()],
            "/",
            &mut resolve,
        )
        .unwrap();
        assert_eq!(ssh[0].target(), Some("/run/buildkit/ssh_agent.0"));
        assert_eq!(ssh[1].target(), Some("/run/buildkit/ssh_agent.1"));
        assert!(matches!(&ssh[0], RunMount::Ssh { id, required: false, .. } if id == "default"));
        assert!(matches!(&ssh[1], RunMount::Ssh { id, required: true, .. } if id == "work"));
        // Quoted CSV fields may hold commas.
        assert_eq!(
            one("type=tmpfs,\"target=/a,b\"").unwrap().target(),
            Some("/a,b")
        );
    }

    #[test]
    fn bad_mounts_are_named() {
        for (value, wanted) in [
            ("type=volume,target=/x", "unknown mount type \"volume\""),
            (
                "type=cache,target=/x,colour=blue",
                "unknown option \"colour\"",
            ),
            ("type=tmpfs,target=/x,from=build", "does not take \"from\""),
            (
                "type=bind,target=/x,sharing=locked",
                "does not take \"sharing\"",
            ),
            ("type=cache", "needs target=PATH"),
            ("type=cache,target=/x,id=a/b", "path separators"),
            ("type=cache,target=/x,id=..", "path separators"),
            (
                "type=cache,target=/x,sharing=sometimes",
                "use shared, private or locked",
            ),
            ("type=cache,target=/x,mode=999", "octal"),
            ("type=cache,target=/x,uid=me", "numeric id"),
            ("type=bind,target=/x,source=../etc", "climbs above"),
            ("type=bind,target=/x,source=a/../../etc", "climbs above"),
            ("type=bind,target=/", "over the root"),
            ("type=bind,target=/x,from=later", "defined after"),
            ("type=bind,target=/x,ro=maybe", "true or false"),
            ("type=bind,target=/x,ro,rw", "contradict"),
            ("type=tmpfs,target=/x,size=lots", "size=lots"),
            ("type=secret", "needs id=ID"),
            ("type=secret,id=x,env=1A", "not a valid variable name"),
            ("type=cache,target", "needs a value"),
            ("type=cache,target=/x,target=/y", "given twice"),
            ("type=tmpfs,\"target=/x", "unterminated quote"),
        ] {
            let e = err(value);
            assert!(e.contains(wanted), "{value}: {e}");
            assert!(e.starts_with(&format!("--mount={value}")), "{e}");
        }
        let dup = parse_mounts(
            &[
                "type=tmpfs,target=/x".into(),
                "type=cache,target=/x/".into(),
            ],
            "/",
            &mut resolve,
        )
        .unwrap_err();
        assert!(
            dup.contains("another mount of this RUN has the target /x"),
            "{dup}"
        );
    }

    #[test]
    fn secret_and_ssh_flags() {
        let f = |s: &str| parse_secret_flag(s);
        assert_eq!(
            f("id=aws,src=/home/me/.aws/credentials").unwrap(),
            (
                "aws".into(),
                SecretSource::File("/home/me/.aws/credentials".into())
            )
        );
        assert_eq!(
            f("id=tok,env=GITHUB_TOKEN").unwrap().1,
            SecretSource::Env("GITHUB_TOKEN".into())
        );
        assert_eq!(f("id=TOKEN").unwrap().1, SecretSource::Env("TOKEN".into()));
        assert_eq!(
            f("id=x,type=file,source=a.txt").unwrap().1,
            SecretSource::File("a.txt".into())
        );
        assert_eq!(
            f("type=env,id=x,src=VAR").unwrap().1,
            SecretSource::Env("VAR".into())
        );
        for bad in [
            "src=a",
            "id=x,src=a,env=B",
            "id=x,colour=red",
            "id=x,type=pipe",
            "id",
        ] {
            assert!(f(bad).unwrap_err().contains("--secret"), "{bad}");
        }
        assert_eq!(parse_ssh_flag("default").unwrap(), ("default".into(), None));
        assert_eq!(
            parse_ssh_flag("work=/run/agent.sock").unwrap().1,
            Some("/run/agent.sock".into())
        );
        assert!(parse_ssh_flag("default=a,b").is_err());
        assert!(parse_ssh_flag("=x").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1024").unwrap(), 1024);
        assert_eq!(parse_size("64m").unwrap(), 64 << 20);
        assert_eq!(parse_size("1GB").unwrap(), 1 << 30);
        assert_eq!(parse_size("2kib").unwrap(), 2048);
        assert_eq!(parse_size("1.5k").unwrap(), 1536);
        assert!(parse_size("0").is_err());
        assert!(parse_size("m").is_err());
        assert!(parse_size("5x").is_err());
    }

    #[test]
    fn required_inputs_network_security() {
        let mounts = parse_mounts(
            &[
                "type=secret,id=tok,required".into(),
                "type=secret,id=opt".into(),
                "type=ssh,required".into(),
            ],
            "/",
            &mut resolve,
        )
        .unwrap();
        let mut inputs = RunInputs::default();
        assert!(check_inputs(&mounts, &inputs)
            .unwrap_err()
            .contains("secret \"tok\" is required"));
        inputs.secrets.insert("tok".into());
        assert!(check_inputs(&mounts, &inputs)
            .unwrap_err()
            .contains("--ssh default=$SSH_AUTH_SOCK"));
        inputs.ssh.insert("default".into());
        check_inputs(&mounts, &inputs).unwrap();

        assert_eq!(parse_network(None).unwrap(), Network::Default);
        assert_eq!(parse_network(Some("none")).unwrap(), Network::None);
        assert_eq!(parse_network(Some("host")).unwrap(), Network::Host);
        assert!(parse_network(Some("bridge")).is_err());
        assert!(!parse_security(Some("sandbox"), false).unwrap());
        assert!(parse_security(Some("insecure"), false)
            .unwrap_err()
            .contains("--allow security.insecure"));
        assert!(parse_security(Some("insecure"), true).unwrap());
        assert!(parse_security(Some("privileged"), true).is_err());
    }
}
