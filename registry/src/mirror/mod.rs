//! Pull-through cache: `[[mirror]]` upstream registries served under a local
//! repository prefix. Manifests by digest are fetched once and kept; tags are
//! answered from the cache for `manifest_ttl`, then revalidated with a HEAD;
//! blobs are streamed to the client while they are written to storage, with
//! one upstream fetch per blob however many clients ask (see [`fill`]).
//!
//! Three ways in, all mapped to the same local repository `PREFIX/NAME`:
//! - the path prefix: `/v2/PREFIX/NAME/...`;
//! - containerd's mirror parameter: `/v2/NAME/...?ns=NAMESPACE`;
//! - Docker's `registry-mirrors`: `/v2/NAME/...` on a registry whose mirror has
//!   `default = true` (every name that is not under a mirror prefix).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_client::registry::{Client, ClientConfig, Registry as Upstream};
use berth_storage::Digest;
use serde::Deserialize;

mod blobs;
mod evict;
mod fill;
mod manifests;
mod negative;
mod referrers;
mod upstream;

pub(crate) use blobs::get as blob_get;
pub use evict::Evicted;
pub(crate) use manifests::get as manifest_get;
pub(crate) use referrers::get as referrers_get;

/// One `[[mirror]]` table as written in the config file.
#[derive(Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct MirrorConfig {
    /// `https://HOST[:PORT]` (or `http://` for a loopback or trusted-network registry).
    pub upstream: String,
    /// Local repository prefix the upstream is served under, e.g. `docker.io`.
    pub prefix: String,
    /// What containerd sends as `?ns=` for this upstream (e.g. `docker.io`).
    pub namespace: Option<String>,
    /// Serve names outside every mirror prefix from this mirror (Docker's `registry-mirrors`).
    #[serde(default)]
    pub default: bool,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Docker config file with credentials for the upstream (default: `~/.docker/config.json`).
    pub docker_config: Option<String>,
    /// e.g. "5m" (the default)
    pub manifest_ttl: Option<String>,
    /// e.g. "50GiB": beyond it the least recently pulled manifests (and the blobs only
    /// they use) are evicted by housekeeping.
    pub max_size: Option<String>,
    /// How long an upstream "not found" is remembered, e.g. "30s" (the default; "0s": never).
    pub not_found_ttl: Option<String>,
    /// Further upstream URLs, tried in order when the ones before fail.
    #[serde(default)]
    pub fallback: Vec<String>,
    /// Accept pushes and deletes under the prefix (refused with DENIED by default).
    #[serde(default)]
    pub allow_push: bool,
}

pub const DEFAULT_MANIFEST_TTL: Duration = Duration::from_secs(300);
pub const DEFAULT_NOT_FOUND_TTL: Duration = Duration::from_secs(30);

/// (local repository, tag)
type TagKey = (String, String);

/// One compiled mirror.
pub struct Mirror {
    pub prefix: String,
    pub namespace: Option<String>,
    pub default: bool,
    pub manifest_ttl: Duration,
    pub not_found_ttl: Duration,
    pub max_size: Option<u64>,
    pub allow_push: bool,
    /// The upstream, then the fallbacks, as (URL as written, client).
    upstreams: Vec<(String, Arc<Upstream>)>,
    /// (local repository, tag) → (digest, when upstream last confirmed it).
    checked: Mutex<HashMap<TagKey, (Digest, Instant)>>,
    /// One upstream revalidation per tag at a time; the others wait for it.
    tag_locks: Mutex<HashMap<TagKey, Arc<tokio::sync::Mutex<()>>>>,
    /// Repositories whose tags' last validation times were read back from storage.
    seeded: Mutex<std::collections::HashSet<String>>,
    /// (local repository, tag or digest) the upstream answered 404 for, and when.
    missing: negative::Missing,
}

/// Every `[[mirror]]`, and the blob fills in flight (shared by all mirrors:
/// content is addressed by digest).
#[derive(Default)]
pub struct Mirrors {
    list: Vec<Arc<Mirror>>,
    fills: fill::Fills,
}

/// `50GiB`, `512MiB`, `10GB`, `1000`: a size in bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size: use e.g. \"50GiB\" or \"500MB\""))?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" => 1000,
        "MB" => 1000_u64.pow(2),
        "GB" => 1000_u64.pow(3),
        "TB" => 1000_u64.pow(4),
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        other => {
            return Err(format!(
            "unknown size unit {other:?} in {text:?}: use B, KB, MB, GB, TB, KiB, MiB, GiB or TiB"
        ))
        }
    };
    number
        .checked_mul(factor)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// `http(s)://HOST[:PORT]` → the client's registry name (`HOST[:PORT]`) and whether it is
/// plain HTTP.
fn upstream_host(at: &str, key: &str, url: &str) -> Result<(String, bool), String> {
    let bad = |why: &str| format!("{at}.{key} = {url:?}: {why}");
    let remote = crate::remote::parse_remote_url(url).map_err(bad)?;
    if !remote.path.is_empty() {
        return Err(bad(
            "use the registry's base URL only, e.g. https://registry-1.docker.io (no path, no user)",
        ));
    }
    Ok((remote.host, remote.http))
}

fn check_prefix(at: &str, prefix: &str) -> Result<(), String> {
    let probe = format!("{prefix}/x");
    if prefix.is_empty() || !berth_oci::names::is_valid_repository_name(&probe) {
        return Err(format!(
            "{at}.prefix = {prefix:?}: use a repository name prefix such as \"docker.io\" or \"ghcr\" (lowercase, components joined by /)"
        ));
    }
    Ok(())
}

impl Mirror {
    fn from_config(at: &str, c: &MirrorConfig) -> Result<Mirror, String> {
        check_prefix(at, &c.prefix)?;
        let manifest_ttl = match &c.manifest_ttl {
            Some(text) => humantime::parse_duration(text).map_err(|e| {
                format!("{at}.manifest_ttl = {text:?}: {e} (use e.g. \"5m\" or \"0s\")")
            })?,
            None => DEFAULT_MANIFEST_TTL,
        };
        let not_found_ttl = match &c.not_found_ttl {
            Some(text) => humantime::parse_duration(text).map_err(|e| {
                format!("{at}.not_found_ttl = {text:?}: {e} (use e.g. \"30s\" or \"0s\")")
            })?,
            None => DEFAULT_NOT_FOUND_TTL,
        };
        let max_size = c
            .max_size
            .as_deref()
            .map(parse_size)
            .transpose()
            .map_err(|e| format!("{at}.max_size: {e}"))?;
        let credentials = crate::remote::basic_credentials(at, &c.username, &c.password)?;
        let mut urls = vec![("upstream", c.upstream.as_str())];
        urls.extend(c.fallback.iter().map(|u| ("fallback", u.as_str())));
        let hosts = urls
            .iter()
            .map(|(key, url)| upstream_host(at, key, url))
            .collect::<Result<Vec<_>, _>>()?;
        let mut config = ClientConfig {
            credentials,
            // Fail over (or serve stale) soon rather than retry for seconds.
            attempts: 2,
            backoff: Duration::from_millis(100),
            ..ClientConfig::default()
        };
        if let Some(path) = &c.docker_config {
            config.docker_config = path.into();
        }
        config.insecure_registries = hosts
            .iter()
            .filter(|(_, http)| *http)
            .map(|(h, _)| h.clone())
            .collect();
        let client = Client::new(config);
        let upstreams = hosts
            .iter()
            .zip(&urls)
            .map(|((host, _), (_, url))| {
                client
                    .registry(host)
                    .map(|r| (url.to_string(), r))
                    .map_err(|e| format!("{at}: upstream {url}: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Mirror {
            prefix: c.prefix.trim_end_matches('/').to_string(),
            namespace: c.namespace.clone().filter(|n| !n.is_empty()),
            default: c.default,
            manifest_ttl,
            not_found_ttl,
            max_size,
            allow_push: c.allow_push,
            upstreams,
            checked: Mutex::default(),
            tag_locks: Mutex::default(),
            seeded: Mutex::default(),
            missing: negative::Missing::default(),
        })
    }

    /// The upstream repository for a local one under this mirror's prefix.
    fn upstream_name<'a>(&self, local: &'a str) -> Option<&'a str> {
        local
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix('/')
            .filter(|rest| !rest.is_empty())
    }
}

impl std::fmt::Debug for Mirrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.list.iter().map(|m| {
                let upstreams: Vec<&str> = m.upstreams.iter().map(|(u, _)| u.as_str()).collect();
                (m.prefix.as_str(), upstreams)
            }))
            .finish()
    }
}

impl Mirrors {
    /// Compile the tables; errors name the table and key (`mirror[0].upstream`).
    pub fn from_config(configs: &[MirrorConfig]) -> Result<Mirrors, String> {
        let mut list: Vec<Arc<Mirror>> = Vec::new();
        for (i, c) in configs.iter().enumerate() {
            let at = format!("mirror[{i}]");
            let mirror = Mirror::from_config(&at, c)?;
            for (j, other) in list.iter().enumerate() {
                let overlap = |a: &str, b: &str| a == b || a.starts_with(&format!("{b}/"));
                if overlap(&mirror.prefix, &other.prefix) || overlap(&other.prefix, &mirror.prefix)
                {
                    return Err(format!(
                        "{at}.prefix = {:?} overlaps mirror[{j}].prefix = {:?}: each repository belongs to one mirror",
                        mirror.prefix, other.prefix
                    ));
                }
                if mirror.namespace.is_some() && mirror.namespace == other.namespace {
                    return Err(format!(
                        "{at}.namespace = {:?} is also mirror[{j}]'s",
                        mirror.namespace.as_deref().unwrap_or_default()
                    ));
                }
                if mirror.default && other.default {
                    return Err(format!(
                        "{at}.default and mirror[{j}].default are both true: only one mirror can take unprefixed names"
                    ));
                }
            }
            list.push(Arc::new(mirror));
        }
        Ok(Mirrors {
            list,
            fills: fill::Fills::default(),
        })
    }

    /// Ask each upstream `GET /v2/` now, in the background: the first pull then finds the
    /// scheme and auth challenge known and a connection open, instead of paying that round
    /// trip before its first byte. A failure changes nothing (the first pull asks again).
    pub fn warm_up(&self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        for mirror in &self.list {
            for (url, upstream) in &mirror.upstreams {
                let (url, upstream) = (url.clone(), upstream.clone());
                runtime.spawn(async move {
                    if let Err(e) = upstream.base().await {
                        tracing::info!(upstream = %url, error = %e, "mirror: upstream not reachable at start; the first pull asks again");
                    }
                });
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Whether some mirror has a `max_size` (then housekeeping evicts).
    pub fn has_size_limits(&self) -> bool {
        self.list.iter().any(|m| m.max_size.is_some())
    }

    /// The local repository a request for `name` (with containerd's `?ns=`, if any) is
    /// about, when that differs from `name`: `PREFIX/name` for the `?ns=` and the
    /// default-mirror forms. `None`: use `name` as it is.
    pub fn rewrite(&self, name: &str, ns: Option<&str>) -> Option<String> {
        if let Some(ns) = ns {
            // A namespace no mirror serves is not ours to map (nor the default mirror's).
            let mirror = self
                .list
                .iter()
                .find(|m| m.namespace.as_deref() == Some(ns))?;
            return Some(format!("{}/{name}", mirror.prefix));
        }
        if self.find(name).is_some() {
            return None;
        }
        let default = self.list.iter().find(|m| m.default)?;
        Some(format!("{}/{name}", default.prefix))
    }

    /// The mirror serving the local repository `name`, and the upstream repository.
    pub fn find<'a>(&self, name: &'a str) -> Option<(&Arc<Mirror>, &'a str)> {
        self.list
            .iter()
            .find_map(|m| m.upstream_name(name).map(|up| (m, up)))
    }
}

#[cfg(test)]
mod tests;
