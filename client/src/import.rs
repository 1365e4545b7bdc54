//! `berth import`: make a one-layer image from a root filesystem tarball, as
//! `docker import` does, without a daemon.
//!
//! The tarball is read once, as a stream: its uncompressed bytes are hashed
//! (the layer's diff_id) and gzip-compressed into a blob of an OCI layout
//! while the compressed bytes are hashed (the blob's digest). Memory stays
//! at a few buffers whatever the size of the tarball. The layer is passed
//! through byte for byte (as Docker does), so the diff_id is the sha256 of
//! the tar as given.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, BufWriter, Read, Write};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use berth_oci::{Algorithm, Digest, Hasher};
use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};
use crate::image::{media, sha256, BlobInfo, ImageDest, Manifest, Platform};
use crate::layout::{OciLayout, OciLayoutDest, CHUNK};

/// gzip level for the layer. Measured on 60 MB of /usr binaries with the
/// zlib-rs backend (the `gzip_levels` test): level 1 gives 30.5 MB (its
/// "quick" strategy trades a lot of size), level 2 25.4 MB, level 3 24.4 MB
/// in the same time as level 2, level 6 23.7 MB at 1.2x the time of level 3
/// (GNU gzip: 2.4x from level 3 to 6 on 400 MB). Level 3 is the knee.
pub const DEFAULT_LEVEL: u32 = 3;

/// What to put in the image besides the filesystem.
#[derive(Clone, Debug)]
pub struct ImportOptions {
    /// Dockerfile instructions applied to the config, as `docker import --change`.
    pub changes: Vec<String>,
    /// The history entry's comment (`docker import --message`).
    pub message: Option<String>,
    /// The image's platform; this machine's when unset.
    pub platform: Option<Platform>,
    /// The creation time; `SOURCE_DATE_EPOCH` or now when unset.
    pub created: Option<SystemTime>,
    /// gzip level, 0 (store) to 9.
    pub compression_level: u32,
}

impl Default for ImportOptions {
    fn default() -> ImportOptions {
        ImportOptions {
            changes: Vec::new(),
            message: None,
            platform: None,
            created: None,
            compression_level: DEFAULT_LEVEL,
        }
    }
}

/// The image an import made.
#[derive(Clone, Debug)]
pub struct Imported {
    pub manifest: Manifest,
    pub config: BlobInfo,
    pub layer: BlobInfo,
    /// sha256 of the uncompressed layer.
    pub diff_id: Digest,
    pub uncompressed_size: u64,
}

/// The run-time part of an image config (`config` in the OCI config), with
/// Docker's `OnBuild`, which OCI tools ignore and Docker honours.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub exposed_ports: BTreeMap<String, Empty>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub volumes: BTreeMap<String, Empty>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub on_build: Vec<String>,
    /// Docker's `Healthcheck` (OCI tools ignore it; Docker and podman honour it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<HealthConfig>,
    /// Docker's `Shell` (the SHELL instruction), used by shell-form
    /// instructions of builds FROM this image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<Vec<String>>,
}

/// Docker's `Healthcheck` config: `Test` is `["NONE"]`, `["CMD", argv...]`
/// or `["CMD-SHELL", text]`; durations in nanoseconds, 0 for the default.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthConfig {
    #[serde(default)]
    pub test: Vec<String>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub interval: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub timeout: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub start_period: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub start_interval: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub retries: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The `{}` values of `ExposedPorts` and `Volumes`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

impl ContainerConfig {
    /// Apply `--change` instructions in order.
    pub fn apply_changes(&mut self, changes: &[String]) -> Result<()> {
        for c in changes {
            self.apply_change(c)?;
        }
        Ok(())
    }

    /// Apply one Dockerfile instruction (`CMD ["sh"]`, `ENV A=1`, ...).
    pub fn apply_change(&mut self, change: &str) -> Result<()> {
        let trimmed = change.trim();
        let (word, rest) = match trimmed.split_once(char::is_whitespace) {
            Some((w, r)) => (w, r.trim()),
            None => (trimmed, ""),
        };
        let instruction = word.to_ascii_uppercase();
        let fail = |why: &dyn fmt::Display| {
            Error::InvalidArgument(format!("--change {change:?}: {instruction} {why}"))
        };
        if word.is_empty() {
            return Err(Error::InvalidArgument(
                "--change \"\": give a Dockerfile instruction, e.g. --change 'CMD [\"/bin/sh\"]'"
                    .into(),
            ));
        }
        let known = [
            "CMD",
            "ENTRYPOINT",
            "ENV",
            "EXPOSE",
            "LABEL",
            "ONBUILD",
            "STOPSIGNAL",
            "USER",
            "VOLUME",
            "WORKDIR",
        ];
        if !known.contains(&instruction.as_str()) {
            return Err(Error::InvalidArgument(format!(
                "--change {change:?}: {instruction} cannot be applied to an imported image; use one of {}",
                known.join(", ")
            )));
        }
        if rest.is_empty() {
            return Err(fail(&"needs an argument"));
        }
        match instruction.as_str() {
            "CMD" => self.cmd = Some(command_form(rest)),
            "ENTRYPOINT" => self.entrypoint = Some(command_form(rest)),
            "ENV" => {
                for (k, v) in name_values(rest, &self.env).map_err(|e| fail(&e))? {
                    let prefix = format!("{k}=");
                    self.env.retain(|e| !e.starts_with(&prefix));
                    self.env.push(format!("{k}={v}"));
                }
            }
            "LABEL" => {
                for (k, v) in name_values(rest, &self.env).map_err(|e| fail(&e))? {
                    self.labels.insert(k, v);
                }
            }
            "EXPOSE" => {
                for w in words(rest, &self.env, true).map_err(|e| fail(&e))? {
                    for p in parse_ports(&w).map_err(|e| fail(&e))? {
                        self.exposed_ports.insert(p, Empty {});
                    }
                }
            }
            "VOLUME" => {
                let vols = match json_array(rest) {
                    Some(v) => v,
                    None => words(rest, &self.env, true).map_err(|e| fail(&e))?,
                };
                for v in vols {
                    if v.trim().is_empty() {
                        return Err(fail(&"cannot name an empty path"));
                    }
                    self.volumes.insert(v, Empty {});
                }
            }
            "USER" => {
                let user = one_word(rest, &self.env).map_err(|e| fail(&e))?;
                self.user = Some(user);
            }
            "WORKDIR" => {
                let dir = one_word(rest, &self.env).map_err(|e| fail(&e))?;
                // A relative WORKDIR is relative to the previous one, as in a Dockerfile.
                let joined = if dir.starts_with('/') {
                    dir
                } else {
                    format!("{}/{dir}", self.working_dir.as_deref().unwrap_or(""))
                };
                self.working_dir = Some(clean_path(&joined));
            }
            "STOPSIGNAL" => {
                let sig = one_word(rest, &self.env).map_err(|e| fail(&e))?;
                if !is_signal(&sig) {
                    return Err(fail(&format_args!(
                        "{sig:?} is not a signal; use a name such as SIGTERM or SIGQUIT, or a number"
                    )));
                }
                self.stop_signal = Some(sig);
            }
            "ONBUILD" => {
                let inner = rest
                    .split_whitespace()
                    .next()
                    .unwrap_or("")
                    .to_ascii_uppercase();
                if ["ONBUILD", "FROM", "MAINTAINER"].contains(&inner.as_str()) {
                    return Err(fail(&format_args!("cannot trigger {inner}")));
                }
                self.on_build.push(rest.to_string());
            }
            _ => unreachable!("checked against the known list"),
        }
        Ok(())
    }
}

/// A JSON array of strings (the exec form), if `s` is one.
fn json_array(s: &str) -> Option<Vec<String>> {
    if !s.starts_with('[') {
        return None;
    }
    serde_json::from_str(s).ok()
}

/// CMD/ENTRYPOINT: the exec form as given, or the shell form run by
/// `/bin/sh -c`, as Docker does (anything that is not a JSON string array
/// is shell form).
fn command_form(s: &str) -> Vec<String> {
    json_array(s).unwrap_or_else(|| vec!["/bin/sh".into(), "-c".into(), s.to_string()])
}

/// `K=V K2="v 2"` pairs, or the old `K value with spaces` form.
fn name_values(s: &str, env: &[String]) -> std::result::Result<Vec<(String, String)>, String> {
    let first = s.split_whitespace().next().unwrap_or("");
    if !first.contains('=') {
        // The old form: the first word is the name, the rest (quotes
        // processed, spaces kept) is the value.
        let (name, value) = s
            .split_once(char::is_whitespace)
            .ok_or_else(|| format!("{s:?} needs a value: write NAME=VALUE"))?;
        let value = expand(value.trim(), env, false)?
            .into_iter()
            .next()
            .unwrap_or_default();
        return Ok(vec![(name.to_string(), value)]);
    }
    let mut out = Vec::new();
    for w in words(s, env, true)? {
        let (k, v) = w
            .split_once('=')
            .ok_or_else(|| format!("{w:?} must be NAME=VALUE"))?;
        if k.is_empty() {
            return Err(format!("{w:?} has an empty name"));
        }
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

fn one_word(s: &str, env: &[String]) -> std::result::Result<String, String> {
    let w = expand(s, env, false)?
        .into_iter()
        .next()
        .unwrap_or_default();
    if w.is_empty() {
        return Err("needs a non-empty argument".into());
    }
    Ok(w)
}

fn words(s: &str, env: &[String], split: bool) -> std::result::Result<Vec<String>, String> {
    expand(s, env, split)
}

/// Dockerfile word processing: quotes group (and are removed), a backslash
/// escapes, `$NAME`/`${NAME}`/`${NAME:-default}`/`${NAME:+alt}` expand from
/// the ENV set so far (not inside single quotes). With `split`, unquoted
/// whitespace separates words; otherwise the whole text is one word.
fn expand(s: &str, env: &[String], split: bool) -> std::result::Result<Vec<String>, String> {
    let lookup = |name: &str| -> Option<String> {
        let prefix = format!("{name}=");
        env.iter()
            .rev()
            .find_map(|e| e.strip_prefix(&prefix).map(str::to_string))
    };
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars().peekable();
    #[derive(PartialEq)]
    enum Q {
        None,
        Single,
        Double,
    }
    let mut q = Q::None;
    while let Some(c) = chars.next() {
        match (&q, c) {
            (Q::Single, '\'') => q = Q::None,
            (Q::Single, c) => cur.push(c),
            (Q::Double, '"') => q = Q::None,
            (Q::None, '"') => {
                q = Q::Double;
                in_word = true;
            }
            (Q::None, '\'') => {
                q = Q::Single;
                in_word = true;
            }
            (Q::None, c) if split && c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            (_, '\\') => {
                in_word = true;
                match chars.peek().copied() {
                    Some(n) if q == Q::None || matches!(n, '"' | '\\' | '$') => {
                        cur.push(n);
                        chars.next();
                    }
                    _ => cur.push('\\'),
                }
            }
            (_, '$') => {
                in_word = true;
                match chars.peek().copied() {
                    Some('{') => {
                        chars.next();
                        let mut inner = String::new();
                        loop {
                            match chars.next() {
                                Some('}') => break,
                                Some(c) => inner.push(c),
                                None => return Err(format!("unterminated ${{ in {s:?}")),
                            }
                        }
                        if let Some((name, default)) = inner.split_once(":-") {
                            cur.push_str(
                                &lookup(name)
                                    .filter(|v| !v.is_empty())
                                    .unwrap_or_else(|| default.to_string()),
                            );
                        } else if let Some((name, alt)) = inner.split_once(":+") {
                            if lookup(name).is_some_and(|v| !v.is_empty()) {
                                cur.push_str(alt);
                            }
                        } else if inner.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                            && !inner.is_empty()
                        {
                            cur.push_str(&lookup(&inner).unwrap_or_default());
                        } else {
                            return Err(format!("unsupported substitution ${{{inner}}}"));
                        }
                    }
                    Some(n) if n.is_ascii_alphanumeric() || n == '_' => {
                        let mut name = String::new();
                        while let Some(&n) = chars.peek() {
                            if n.is_ascii_alphanumeric() || n == '_' {
                                name.push(n);
                                chars.next();
                            } else {
                                break;
                            }
                        }
                        cur.push_str(&lookup(&name).unwrap_or_default());
                    }
                    _ => cur.push('$'),
                }
            }
            (_, c) => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if q != Q::None {
        return Err(format!("unterminated quote in {s:?}"));
    }
    if in_word || !split {
        out.push(cur);
    }
    Ok(out)
}

/// `80`, `80/udp`, `8000-8002/tcp` → `["80/tcp"]`, ... (EXPOSE's port specs).
pub fn parse_ports(spec: &str) -> std::result::Result<Vec<String>, String> {
    let (ports, proto) = match spec.split_once('/') {
        Some((p, proto)) => (p, proto.to_ascii_lowercase()),
        None => (spec, "tcp".to_string()),
    };
    if !["tcp", "udp", "sctp"].contains(&proto.as_str()) {
        return Err(format!(
            "{spec:?}: protocol {proto:?} is not tcp, udp or sctp"
        ));
    }
    let port = |p: &str| -> std::result::Result<u16, String> {
        p.parse::<u16>()
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| format!("{spec:?}: {p:?} is not a port number (1-65535)"))
    };
    let (lo, hi) = match ports.split_once('-') {
        Some((a, b)) => (port(a)?, port(b)?),
        None => {
            let p = port(ports)?;
            (p, p)
        }
    };
    if hi < lo {
        return Err(format!("{spec:?}: the range ends before it starts"));
    }
    Ok((lo..=hi).map(|p| format!("{p}/{proto}")).collect())
}

/// A signal as STOPSIGNAL takes it: a number 1-64, a name with or without SIG, RTMIN+n.
pub fn is_signal(s: &str) -> bool {
    if let Ok(n) = s.parse::<u32>() {
        return (1..=64).contains(&n);
    }
    let up = s.to_ascii_uppercase();
    let name = up.strip_prefix("SIG").unwrap_or(&up);
    const NAMES: &[&str] = &[
        "ABRT", "ALRM", "BUS", "CHLD", "CLD", "CONT", "FPE", "HUP", "ILL", "INT", "IO", "IOT",
        "KILL", "PIPE", "POLL", "PROF", "PWR", "QUIT", "SEGV", "STKFLT", "STOP", "SYS", "TERM",
        "TRAP", "TSTP", "TTIN", "TTOU", "URG", "USR1", "USR2", "VTALRM", "WINCH", "XCPU", "XFSZ",
        "RTMIN", "RTMAX",
    ];
    if NAMES.contains(&name) {
        return true;
    }
    let offset = |rest: &str| rest.parse::<u32>().is_ok_and(|n| (1..=15).contains(&n));
    name.strip_prefix("RTMIN+").is_some_and(offset)
        || name.strip_prefix("RTMAX-").is_some_and(offset)
}

/// `/a/./b/../c/` → `/a/c`.
fn clean_path(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    format!("/{}", parts.join("/"))
}

/// `SOURCE_DATE_EPOCH` if set (reproducible builds), else now.
pub fn creation_time() -> Result<SystemTime> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if !v.trim().is_empty() => {
            let secs: u64 = v.trim().parse().map_err(|_| {
                Error::InvalidArgument(format!(
                    "SOURCE_DATE_EPOCH={v:?} is not a number of seconds since 1970-01-01; unset it or set e.g. SOURCE_DATE_EPOCH=$(git log -1 --format=%ct)"
                ))
            })?;
            // RFC 3339 stops at year 9999.
            if secs > 253_402_300_799 {
                return Err(Error::InvalidArgument(format!(
                    "SOURCE_DATE_EPOCH={secs} is after the year 9999"
                )));
            }
            Ok(UNIX_EPOCH + Duration::from_secs(secs))
        }
        _ => Ok(SystemTime::now()),
    }
}

#[derive(Serialize)]
struct ImageConfig<'a> {
    created: &'a str,
    architecture: &'a str,
    os: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    variant: Option<&'a str>,
    #[serde(rename = "os.version", skip_serializing_if = "Option::is_none")]
    os_version: Option<&'a str>,
    #[serde(rename = "os.features", skip_serializing_if = "Option::is_none")]
    os_features: Option<&'a [String]>,
    config: &'a ContainerConfig,
    rootfs: RootFs<'a>,
    history: [History<'a>; 1],
}

#[derive(Serialize)]
struct RootFs<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    diff_ids: [&'a Digest; 1],
}

#[derive(Serialize)]
struct History<'a> {
    created: &'a str,
    created_by: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    comment: Option<&'a str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OciManifest<'a> {
    schema_version: u32,
    media_type: &'a str,
    config: &'a BlobInfo,
    layers: [&'a BlobInfo; 1],
}

/// Compression of an input, from its first bytes.
#[derive(Debug, PartialEq, Eq)]
enum Compression {
    None,
    Gzip,
    Other(&'static str, &'static str),
}

fn detect(magic: &[u8]) -> Compression {
    if magic.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Other("zstd", "zstd -d")
    } else if magic.starts_with(b"BZh") {
        Compression::Other("bzip2", "bunzip2")
    } else if magic.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Compression::Other("xz", "unxz")
    } else {
        Compression::None
    }
}

/// Read up to `n` bytes (fewer only at the end of input): a pipe may
/// deliver the first block in pieces.
fn read_prefix(r: &mut dyn Read, n: usize) -> io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(n);
    r.take(n as u64).read_to_end(&mut buf)?;
    Ok(buf)
}

/// Whether a 512-byte block is a tar header (its checksum matches) or the
/// all-zero end of an empty archive.
fn looks_like_tar(block: &[u8]) -> bool {
    if block.len() < 512 {
        return false;
    }
    if block[..512].iter().all(|&b| b == 0) {
        return true;
    }
    let field = &block[148..156];
    let text: String = field
        .iter()
        .map(|&b| b as char)
        .filter(|c| c.is_ascii_digit())
        .collect();
    let Ok(stored) = u32::from_str_radix(&text, 8) else {
        return false;
    };
    // The checksum counts its own field as eight spaces; old tars summed
    // signed bytes, so accept either.
    let unsigned: u32 = block[..512]
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                b as u32
            }
        })
        .sum();
    let signed: i32 = block[..512]
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                b as i8 as i32
            }
        })
        .sum();
    stored == unsigned || stored as i32 == signed
}

/// Hashes and counts what passes through to the file.
struct HashingWriter<W: Write> {
    inner: W,
    hasher: Hasher,
    count: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A gzip layer blob written to a temporary file beside the blobs of a
/// layout, not yet renamed to its digest (see [`OciLayout::persist`]).
pub struct LayerOut {
    pub tmp: tempfile::TempPath,
    /// sha256 of the compressed bytes (the blob digest).
    pub digest: Digest,
    pub size: u64,
    /// sha256 of the uncompressed tar.
    pub diff_id: Digest,
    pub uncompressed_size: u64,
}

/// Check that `input` is a tar (plain or gzip) and return a reader of the
/// uncompressed tar, before anything is written.
fn open_tar(mut input: Box<dyn Read + Send>, name: &str) -> Result<Box<dyn Read + Send>> {
    let reading = |e: io::Error| {
        Error::io(
            format!("reading {name} (is it a complete tar or tar.gz file?)"),
            e,
        )
    };
    let magic = read_prefix(&mut input, 6).map_err(reading)?;
    if magic.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "{name} is empty; give a tar of a root filesystem (e.g. `tar -C rootfs -c . > rootfs.tar`)"
        )));
    }
    let raw: Box<dyn Read + Send> = Box::new(io::Cursor::new(magic.clone()).chain(input));
    let mut tar: Box<dyn Read + Send> = match detect(&magic) {
        Compression::None => raw,
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(raw)),
        Compression::Other(kind, tool) => {
            return Err(Error::Unsupported(format!(
                "{name} is {kind}-compressed; decompress it first (`{tool} {name}`, or pipe it: `{tool} -c {name} | berth import - REF`) or give a plain or gzip tar"
            )))
        }
    };
    let first = read_prefix(&mut tar, 512).map_err(reading)?;
    if !looks_like_tar(&first) {
        return Err(Error::InvalidArgument(format!(
            "{name} is not a tar archive; give a tar (or tar.gz) of a root filesystem, e.g. `tar -C rootfs -c . > rootfs.tar`"
        )));
    }
    Ok(Box::new(io::Cursor::new(first).chain(tar)))
}

/// Compress the tar into a gzip blob file in `blobs_dir`, hashing both
/// sides. Reading (and gunzipping) and hashing the tar run on their own
/// thread, compressing on this one: on two cores that overlaps the two
/// halves of the work. The channel between them holds a few chunks, so
/// memory stays bounded whatever the input's size.
pub fn write_layer(
    tar: Box<dyn Read + Send>,
    name: &str,
    blobs_dir: &Path,
    level: u32,
) -> Result<LayerOut> {
    std::fs::create_dir_all(blobs_dir).ctx(|| format!("creating {}", blobs_dir.display()))?;
    let tmp = tempfile::Builder::new()
        .permissions(crate::layout::shared_file_mode())
        .prefix(".tmp-")
        .tempfile_in(blobs_dir)
        .ctx(|| format!("creating a temporary file in {}", blobs_dir.display()))?;
    let (file, tmp_path) = tmp.into_parts();
    let writing = |e: io::Error| Error::io(format!("writing {}", tmp_path.display()), e);

    let (tx, rx) = std::sync::mpsc::sync_channel::<io::Result<Vec<u8>>>(4);
    let reader = std::thread::spawn(move || {
        let mut tar = tar;
        let mut diff = Hasher::new(Algorithm::Sha256);
        let mut total: u64 = 0;
        loop {
            let mut buf = vec![0u8; CHUNK];
            let n = match tar.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    break;
                }
            };
            buf.truncate(n);
            diff.update(&buf);
            total += n as u64;
            // The receiver is gone only when writing failed: stop reading.
            if tx.send(Ok(buf)).is_err() {
                break;
            }
        }
        (diff.finish(), total)
    });

    let sink = HashingWriter {
        inner: BufWriter::with_capacity(CHUNK, file),
        hasher: Hasher::new(Algorithm::Sha256),
        count: 0,
    };
    // mtime 0 and no file name in the gzip header: the same tar always
    // gives the same blob.
    let mut gz = flate2::GzBuilder::new()
        .mtime(0)
        .write(sink, flate2::Compression::new(level.min(9)));
    for chunk in rx {
        let chunk = chunk.map_err(|e| {
            Error::io(
                format!("reading {name} (is it a complete tar or tar.gz file?)"),
                e,
            )
        })?;
        gz.write_all(&chunk).map_err(writing)?;
    }
    let (diff_id, uncompressed) = reader.join().map_err(|_| {
        Error::io(
            format!("reading {name}"),
            io::Error::other("reader panicked"),
        )
    })?;
    let sink = gz.finish().map_err(writing)?;
    let HashingWriter {
        inner,
        hasher,
        count,
    } = sink;
    let file = inner.into_inner().map_err(|e| writing(e.into_error()))?;
    file.sync_all().map_err(writing)?;
    Ok(LayerOut {
        tmp: tmp_path,
        digest: hasher.finish(),
        size: count,
        diff_id,
        uncompressed_size: uncompressed,
    })
}

/// Import the root filesystem tarball at `input` (plain or gzip; `-` reads
/// standard input) as an image in the OCI layout `layout_dir`, named `tag`.
pub async fn import_rootfs(
    input: &Path,
    layout_dir: &Path,
    tag: Option<&str>,
    options: &ImportOptions,
) -> Result<Imported> {
    let name = input.display().to_string();
    let reader: Box<dyn Read + Send> = if input == Path::new("-") {
        Box::new(io::stdin())
    } else {
        let f = std::fs::File::open(input).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                Error::not_found(format!("root filesystem tarball {name}"))
            } else {
                Error::io(format!("opening {name}"), e)
            }
        })?;
        if f.metadata().is_ok_and(|m| m.is_dir()) {
            return Err(Error::InvalidArgument(format!(
                "{name} is a directory; make a tarball of it first: `tar -C {name} -c . > rootfs.tar`"
            )));
        }
        Box::new(f)
    };
    import_rootfs_from(reader, &name, layout_dir, tag, options).await
}

/// [`import_rootfs`] from any reader; `name` is for messages and the
/// default history comment.
pub async fn import_rootfs_from(
    input: Box<dyn Read + Send>,
    name: &str,
    layout_dir: &Path,
    tag: Option<&str>,
    options: &ImportOptions,
) -> Result<Imported> {
    // Check everything that can be wrong with the options before reading
    // what may be gigabytes.
    let mut container = ContainerConfig::default();
    container.apply_changes(&options.changes)?;
    let created = match options.created {
        Some(t) => t,
        None => creation_time()?,
    };
    let created = humantime::format_rfc3339_seconds(created).to_string();
    let platform = options.platform.clone().unwrap_or_else(Platform::current);

    let owned_name = name.to_string();
    let tar = tokio::task::spawn_blocking(move || open_tar(input, &owned_name))
        .await
        .map_err(|e| Error::io("importing", io::Error::other(e)))??;
    // Only now that the input looks right does the layout get created.
    let dest = OciLayoutDest::create(layout_dir, tag).await?;
    let layout: OciLayout = dest.layout().clone();
    let blobs_dir = layout.dir().join("blobs");
    let level = options.compression_level;
    let owned_name = name.to_string();
    let layer =
        tokio::task::spawn_blocking(move || write_layer(tar, &owned_name, &blobs_dir, level))
            .await
            .map_err(|e| Error::io("importing", io::Error::other(e)))??;
    layout
        .persist(layer.tmp, &layout.blob_path(&layer.digest))
        .await?;
    let layer_blob = BlobInfo {
        media_type: media::OCI_LAYER_GZIP.to_string(),
        digest: layer.digest,
        size: layer.size,
    };

    let default_comment;
    let comment = match &options.message {
        Some(m) => Some(m.as_str()),
        None => {
            let base = Path::new(name)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| name.to_string());
            default_comment = format!("imported from {base}");
            Some(default_comment.as_str())
        }
    };
    let config_bytes = serde_json::to_vec(&ImageConfig {
        created: &created,
        architecture: &platform.architecture,
        os: &platform.os,
        variant: platform.variant.as_deref(),
        os_version: platform.os_version.as_deref(),
        os_features: platform.os_features.as_deref(),
        config: &container,
        rootfs: RootFs {
            kind: "layers",
            diff_ids: [&layer.diff_id],
        },
        history: [History {
            created: &created,
            created_by: "berth import",
            comment,
        }],
    })
    .map_err(|e| Error::malformed("image config", e))?;
    let config_blob = BlobInfo {
        media_type: media::OCI_CONFIG.to_string(),
        digest: sha256(&config_bytes),
        size: config_bytes.len() as u64,
    };
    layout
        .put_blob_bytes(&config_blob.digest, &config_bytes)
        .await?;
    let manifest_bytes = serde_json::to_vec(&OciManifest {
        schema_version: 2,
        media_type: media::OCI_MANIFEST,
        config: &config_blob,
        layers: [&layer_blob],
    })
    .map_err(|e| Error::malformed("manifest", e))?;
    let manifest = Manifest::new(manifest_bytes, media::OCI_MANIFEST);
    dest.put_manifest(&manifest, None).await?;
    dest.commit().await?;
    Ok(Imported {
        manifest,
        config: config_blob,
        layer: layer_blob,
        diff_id: layer.diff_id,
        uncompressed_size: layer.uncompressed_size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::{ImageSource, ManifestKind};
    use crate::layout::OciLayoutSource;

    fn cfg(changes: &[&str]) -> Result<ContainerConfig> {
        let mut c = ContainerConfig::default();
        c.apply_changes(&changes.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
        Ok(c)
    }

    #[test]
    fn changes_parse_like_docker() {
        let c = cfg(&[
            r#"CMD ["/bin/busybox", "sh"]"#,
            "entrypoint /init --fast",
            "ENV A=1 B=\"two words\" C=${A}x",
            "ENV PATH /usr/bin:/bin",
            "ENV A=3",
            "EXPOSE 80 53/udp 8000-8001",
            r#"LABEL "com.example.vendor"="ACME Inc" version=1.0"#,
            "USER app:app",
            "WORKDIR /srv",
            "WORKDIR www/../html",
            "VOLUME [\"/data\", \"/logs\"]",
            "VOLUME /cache",
            "STOPSIGNAL SIGQUIT",
            "ONBUILD RUN echo hi",
        ])
        .unwrap();
        assert_eq!(c.cmd.unwrap(), vec!["/bin/busybox", "sh"]);
        assert_eq!(c.entrypoint.unwrap(), vec!["/bin/sh", "-c", "/init --fast"]);
        // As in Docker, one ENV's substitutions see the values from before
        // it: C's ${A} is still unset.
        assert_eq!(
            c.env,
            vec!["B=two words", "C=x", "PATH=/usr/bin:/bin", "A=3"]
        );
        assert_eq!(
            c.exposed_ports.keys().collect::<Vec<_>>(),
            vec!["53/udp", "80/tcp", "8000/tcp", "8001/tcp"]
        );
        assert_eq!(c.labels["com.example.vendor"], "ACME Inc");
        assert_eq!(c.labels["version"], "1.0");
        assert_eq!(c.user.as_deref(), Some("app:app"));
        assert_eq!(c.working_dir.as_deref(), Some("/srv/html"));
        assert_eq!(
            c.volumes.keys().collect::<Vec<_>>(),
            vec!["/cache", "/data", "/logs"]
        );
        assert_eq!(c.stop_signal.as_deref(), Some("SIGQUIT"));
        assert_eq!(c.on_build, vec!["RUN echo hi"]);

        // Quotes and escapes.
        let c = cfg(&["ENV X='$HOME' Y=a\\ b Z=\"q\\\"q\""]).unwrap();
        assert_eq!(c.env, vec!["X=$HOME", "Y=a b", "Z=q\"q"]);
        let c = cfg(&["ENV A=x", "ENV B=${A:-d} C=${NOPE:-d} D=${A:+alt}"]).unwrap();
        assert_eq!(&c.env[1..], ["B=x", "C=d", "D=alt"]);
        // A broken JSON array is shell form, as in Docker.
        let c = cfg(&["CMD [oops"]).unwrap();
        assert_eq!(c.cmd.unwrap(), vec!["/bin/sh", "-c", "[oops"]);
        let c = cfg(&["CMD []"]).unwrap();
        assert_eq!(c.cmd.unwrap(), Vec::<String>::new());
        // Serialised with Docker's field names; empty fields left out.
        let v = serde_json::to_value(cfg(&["EXPOSE 80", "CMD x"]).unwrap()).unwrap();
        assert_eq!(v["ExposedPorts"]["80/tcp"], serde_json::json!({}));
        assert!(v.get("Env").is_none());
    }

    #[test]
    fn change_errors_name_the_instruction() {
        for (change, needle) in [
            ("RUN make", "RUN cannot be applied"),
            ("EXPOSE 99999", "EXPOSE \"99999\""),
            ("EXPOSE 80/icmp", "EXPOSE \"80/icmp\": protocol"),
            ("ENV", "ENV needs an argument"),
            ("ENV A=1 B", "ENV \"B\" must be NAME=VALUE"),
            ("ENV A=\"open", "ENV unterminated quote"),
            (
                "STOPSIGNAL SIGNOPE",
                "STOPSIGNAL \"SIGNOPE\" is not a signal",
            ),
            ("ONBUILD FROM x", "ONBUILD cannot trigger FROM"),
            ("VOLUME [\"\"]", "VOLUME cannot name an empty path"),
            ("LABEL =x", "LABEL \"=x\" has an empty name"),
        ] {
            let err = cfg(&[change]).unwrap_err().to_string();
            assert!(err.contains(needle), "{change}: {err}");
            assert!(err.contains(&format!("{change:?}")), "{change}: {err}");
        }
        assert!(cfg(&["STOPSIGNAL 9", "STOPSIGNAL term", "STOPSIGNAL SIGRTMIN+3"]).is_ok());
    }

    fn rootfs_tar() -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        b.append_data(&mut h, "bin/", io::empty()).unwrap();
        let data = b"#!/bin/sh\necho hello\n".repeat(100);
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o755);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, "bin/hello", &data[..]).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, "bin/hi", "hello").unwrap();
        b.into_inner().unwrap()
    }

    #[tokio::test]
    async fn import_plain_and_gzip_give_the_same_layer() {
        let tmp = tempfile::tempdir().unwrap();
        let tar = rootfs_tar();
        let plain = tmp.path().join("rootfs.tar");
        std::fs::write(&plain, &tar).unwrap();
        let gz = tmp.path().join("rootfs.tar.gz");
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(&tar).unwrap();
        std::fs::write(&gz, enc.finish().unwrap()).unwrap();

        let layout = tmp.path().join("layout");
        let options = ImportOptions {
            changes: vec!["CMD [\"/bin/hello\"]".into()],
            message: Some("first".into()),
            platform: Some("linux/arm64/v8".parse().unwrap()),
            created: Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
            ..Default::default()
        };
        let a = import_rootfs(&plain, &layout, Some("a"), &options)
            .await
            .unwrap();
        assert_eq!(a.diff_id, sha256(&tar));
        assert_eq!(a.uncompressed_size, tar.len() as u64);
        let b = import_rootfs(&gz, &layout, Some("b"), &options)
            .await
            .unwrap();
        // Same tar in, same image out (the comment names no file: --message).
        assert_eq!(a.manifest.digest, b.manifest.digest);

        let src = OciLayoutSource::open(&layout, Some("a")).await.unwrap();
        let m = src.manifest().await.unwrap();
        assert_eq!(m.digest, a.manifest.digest);
        let ManifestKind::Image { config, layers } = m.parse().unwrap() else {
            panic!()
        };
        assert_eq!(layers[0].media_type, media::OCI_LAYER_GZIP);
        let cfg: serde_json::Value = serde_json::from_slice(
            &std::fs::read(layout.join("blobs/sha256").join(config.digest.hex())).unwrap(),
        )
        .unwrap();
        assert_eq!(cfg["rootfs"]["diff_ids"][0], sha256(&tar).to_string());
        assert_eq!(cfg["architecture"], "arm64");
        assert_eq!(cfg["variant"], "v8");
        assert_eq!(cfg["created"], "2023-11-14T22:13:20Z");
        assert_eq!(cfg["history"][0]["comment"], "first");
        assert_eq!(cfg["config"]["Cmd"][0], "/bin/hello");
        // The blob decompresses to the tar.
        let blob = std::fs::read(layout.join("blobs/sha256").join(layers[0].digest.hex())).unwrap();
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&blob[..])
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, tar);
    }

    #[tokio::test]
    async fn import_refuses_bad_input_before_writing() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = tmp.path().join("layout");
        let not_tar = tmp.path().join("x.txt");
        std::fs::write(&not_tar, b"hello world, not a tar at all".repeat(40)).unwrap();
        let err = import_rootfs(&not_tar, &layout, None, &ImportOptions::default())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("not a tar archive"), "{err}");
        let xz = tmp.path().join("x.tar.xz");
        std::fs::write(&xz, [0xfd, b'7', b'z', b'X', b'Z', 0, 1, 2]).unwrap();
        let err = import_rootfs(&xz, &layout, None, &ImportOptions::default())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("unxz"), "{err}");
        let options = ImportOptions {
            changes: vec!["FROM scratch".into()],
            ..Default::default()
        };
        let err = import_rootfs(&not_tar, &tmp.path().join("other"), None, &options)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("FROM"), "{err}");
        assert!(!tmp.path().join("other").exists());
        let missing = import_rootfs(
            &tmp.path().join("nope.tar"),
            &layout,
            None,
            &ImportOptions::default(),
        )
        .await
        .unwrap_err();
        assert!(missing.to_string().contains("not found"), "{missing}");
        // Bad input is refused before the layout is even created.
        assert!(!layout.exists());
    }

    /// Compressed size and time per gzip level for a real tarball:
    /// `BERTH_BENCH_TAR=/path/rootfs.tar cargo test -p berth-client --release gzip_levels -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn gzip_levels() {
        let Ok(path) = std::env::var("BERTH_BENCH_TAR") else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        for level in [1, 2, 3, 6] {
            let start = std::time::Instant::now();
            let f = std::fs::File::open(&path).unwrap();
            let tar = open_tar(Box::new(f), &path).unwrap();
            let out = write_layer(tar, &path, dir.path(), level).unwrap();
            println!(
                "level {level}: {} -> {} bytes in {:.2?}",
                out.uncompressed_size,
                out.size,
                start.elapsed()
            );
        }
    }

    #[test]
    fn tar_detection() {
        let tar = rootfs_tar();
        assert!(looks_like_tar(&tar[..512]));
        assert!(looks_like_tar(&[0u8; 512]));
        assert!(!looks_like_tar(&[b'x'; 512]));
        assert_eq!(detect(&[0x1f, 0x8b, 8]), Compression::Gzip);
        assert_eq!(detect(b"ustar"), Compression::None);
        assert_eq!(clean_path("/a/./b/../c/"), "/a/c");
        assert_eq!(clean_path("/.."), "/");
    }
}
