//! `ADD <http(s) URL>` with a memory between builds: the last body of each
//! URL is kept in the build cache with its `ETag` and `Last-Modified`, and
//! the next build asks with `If-None-Match`/`If-Modified-Since`; a `304`
//! reuses the kept body (the step's key, the body's digest, is unchanged, so
//! the step stays CACHED). With `--checksum`, a kept body of that digest is
//! used without asking at all.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use berth_oci::Digest;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// Bounds on one ADD download, so a broken or hostile server cannot fill the
/// build host's disk or hang the build: a connect timeout, an idle timeout
/// (no byte for that long) and a maximum body size. Each is overridable by
/// an environment variable (tests use short ones).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub connect: Duration,
    pub idle: Duration,
    pub max_bytes: u64,
}

impl Limits {
    pub fn from_env() -> Limits {
        let num = |name: &str, default: u64| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(default)
        };
        Limits {
            connect: Duration::from_secs(num("BERTH_BUILD_ADD_CONNECT_TIMEOUT", 30)),
            idle: Duration::from_secs(num("BERTH_BUILD_ADD_IDLE_TIMEOUT", 60)),
            max_bytes: num("BERTH_BUILD_ADD_MAX_BYTES", 16 << 30),
        }
    }
}

/// What the cache keeps of a URL's last response.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct UrlRecord {
    pub url: String,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    /// `sha256:` of the kept body.
    pub digest: String,
}

/// A fetched (or revalidated) body, on disk (never whole in memory).
#[derive(Clone)]
pub struct Fetched {
    pub path: PathBuf,
    pub digest: String,
    /// From `Last-Modified`: the ADDed file's mtime, as Docker sets it.
    pub modified: Option<SystemTime>,
}

/// The URL cache: `DIR/<sha256 of the URL>.json` and `.body`.
pub struct UrlCache {
    dir: PathBuf,
}

impl UrlCache {
    pub fn new(dir: &Path) -> UrlCache {
        UrlCache {
            dir: dir.to_path_buf(),
        }
    }

    fn paths(&self, url: &str) -> (PathBuf, PathBuf) {
        let name = Digest::sha256_of(url.as_bytes()).hex().to_string();
        (
            self.dir.join(format!("{name}.json")),
            self.dir.join(format!("{name}.body")),
        )
    }

    /// The kept record and body of `url`, when both are there and agree.
    fn kept(&self, url: &str) -> Option<(UrlRecord, PathBuf)> {
        let (meta, body) = self.paths(url);
        let record: UrlRecord = serde_json::from_slice(&fs::read(meta).ok()?).ok()?;
        (record.url == url && sha256_of_file(&body).ok()? == record.digest)
            .then_some((record, body))
    }

    /// Moves a downloaded body into place as `url`'s body; with `record`
    /// (a validator or checksum makes it worth revalidating), its record too.
    fn keep(
        &self,
        url: &str,
        record: Option<&UrlRecord>,
        download: &Path,
    ) -> Result<PathBuf, String> {
        let (meta, body) = self.paths(url);
        // A stale record must not vouch for the new body.
        let _ = fs::remove_file(&meta);
        fs::rename(download, &body).map_err(|e| format!("cannot write {}: {e}", body.display()))?;
        if let Some(record) = record {
            let tmp = meta.with_extension(format!("tmp{}", std::process::id()));
            fs::write(&tmp, serde_json::to_vec(record).unwrap_or_default())
                .and_then(|_| fs::rename(&tmp, &meta))
                .map_err(|e| format!("cannot write {}: {e}", meta.display()))?;
        }
        Ok(body)
    }

    /// The body of `url`: with `checksum`, a kept body of that digest or a
    /// download that must hash to it; without, a revalidation of the kept
    /// body or a download.
    pub async fn fetch(&self, url: &str, checksum: Option<&str>) -> Result<Fetched, String> {
        let kept = self.kept(url);
        if let (Some(expected), Some((record, body))) = (checksum, &kept) {
            if record.digest == expected {
                return Ok(fetched(body.clone(), record));
            }
        }
        let limits = Limits::from_env();
        // Without a checksum, the kept body is revalidated.
        let revalidate = match (checksum, &kept) {
            (None, Some((record, _))) => Some(record),
            _ => None,
        };
        let response = send(url, revalidate, &limits).await?;
        if response.status() == reqwest::StatusCode::NOT_MODIFIED {
            if let Some((record, body)) = kept {
                return Ok(fetched(body, &record));
            }
        }
        let response = response
            .error_for_status()
            .map_err(|e| format!("cannot fetch {url}: {e}"))?;
        let header = |name: reqwest::header::HeaderName| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let etag = header(reqwest::header::ETAG);
        let last_modified = header(reqwest::header::LAST_MODIFIED);
        let (download, digest) = self.download(url, response, &limits).await?;
        if let Some(expected) = checksum {
            if digest != expected {
                return Err(format!(
                    "{url}: checksum mismatch: expected {expected}, got {digest}"
                ));
            }
        }
        let record = UrlRecord {
            url: url.to_string(),
            etag,
            last_modified,
            digest,
        };
        // Only a validator makes a kept body useful (or a checksum to match);
        // without one the body still lives there, for this build's copy.
        let worth_keeping =
            record.etag.is_some() || record.last_modified.is_some() || checksum.is_some();
        let (_, path) = download
            .keep()
            .map_err(|e| format!("cannot keep the download of {url}: {e}"))?;
        let body = self.keep(url, worth_keeping.then_some(&record), &path)?;
        Ok(fetched(body, &record))
    }

    /// Stream the body to a temporary file beside the cache (removed if
    /// dropped on an error), hashed on the way and held to the size limit.
    async fn download(
        &self,
        url: &str,
        mut response: reqwest::Response,
        limits: &Limits,
    ) -> Result<(tempfile::NamedTempFile, String), String> {
        let too_big = || {
            format!(
                "{url}: the body is larger than {} bytes; raise BERTH_BUILD_ADD_MAX_BYTES if that is expected",
                limits.max_bytes
            )
        };
        if response
            .content_length()
            .is_some_and(|n| n > limits.max_bytes)
        {
            return Err(too_big());
        }
        fs::create_dir_all(&self.dir)
            .map_err(|e| format!("cannot create {}: {e}", self.dir.display()))?;
        let mut download = tempfile::Builder::new()
            .prefix(".download")
            .tempfile_in(&self.dir)
            .map_err(|e| format!("cannot create a file in {}: {e}", self.dir.display()))?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        loop {
            let chunk = tokio::time::timeout(limits.idle, response.chunk())
                .await
                .map_err(|_| {
                    format!(
                        "{url}: the server sent nothing for {}s after {size} bytes; check that it is up (the limit is BERTH_BUILD_ADD_IDLE_TIMEOUT, in seconds)",
                        limits.idle.as_secs()
                    )
                })?
                .map_err(|e| format!("cannot fetch {url}: {e}"))?;
            let Some(chunk) = chunk else { break };
            size += chunk.len() as u64;
            if size > limits.max_bytes {
                return Err(too_big());
            }
            hasher.update(&chunk);
            download
                .write_all(&chunk)
                .map_err(|e| format!("cannot write {}: {e}", download.path().display()))?;
        }
        download
            .flush()
            .map_err(|e| format!("cannot write {}: {e}", download.path().display()))?;
        Ok((
            download,
            format!("sha256:{}", hex::encode(hasher.finalize())),
        ))
    }
}

/// GET `url` (conditional on `revalidate`'s validators), within the
/// connect and idle limits.
async fn send(
    url: &str,
    revalidate: Option<&UrlRecord>,
    limits: &Limits,
) -> Result<reqwest::Response, String> {
    let client = reqwest::Client::builder()
        .connect_timeout(limits.connect)
        .build()
        .map_err(|e| format!("cannot fetch {url}: {e}"))?;
    let mut request = client.get(url);
    if let Some(record) = revalidate {
        if let Some(etag) = &record.etag {
            request = request.header(reqwest::header::IF_NONE_MATCH, etag);
        }
        if let Some(lm) = &record.last_modified {
            request = request.header(reqwest::header::IF_MODIFIED_SINCE, lm);
        }
    }
    let silent = || {
        format!(
            "{url}: no response for {}s; check that the server is up (the limit is BERTH_BUILD_ADD_IDLE_TIMEOUT, in seconds)",
            limits.idle.as_secs()
        )
    };
    tokio::time::timeout(limits.idle, request.send())
        .await
        .map_err(|_| silent())?
        .map_err(|e| {
            if e.is_connect() && e.is_timeout() {
                format!(
                    "{url}: cannot connect within {}s; check the URL and the network (the limit is BERTH_BUILD_ADD_CONNECT_TIMEOUT, in seconds)",
                    limits.connect.as_secs()
                )
            } else {
                format!("cannot fetch {url}: {e}")
            }
        })
}

/// `sha256:<hex>` of a file, read in pieces.
fn sha256_of_file(path: &Path) -> std::io::Result<String> {
    let mut file = fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(format!("sha256:{}", hex::encode(hasher.finalize())))
}

fn fetched(path: PathBuf, record: &UrlRecord) -> Fetched {
    Fetched {
        modified: record
            .last_modified
            .as_deref()
            .and_then(|v| httpdate::parse_http_date(v).ok()),
        digest: record.digest.clone(),
        path,
    }
}

/// The file name `ADD URL DIR/` writes: the URL path's last part.
pub fn file_name(url: &str) -> &str {
    url.split(['?', '#'])
        .next()
        .and_then(|u| u.split_once("://").map_or(Some(u), |(_, rest)| Some(rest)))
        .and_then(|rest| rest.split_once('/').map(|(_, path)| path))
        .and_then(|path| path.rsplit('/').next())
        .filter(|n| !n.is_empty())
        .unwrap_or("index.html")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_from_url_paths() {
        assert_eq!(file_name("http://h/a/b.tgz?x=1#f"), "b.tgz");
        assert_eq!(file_name("http://h:80/b"), "b");
        assert_eq!(file_name("http://h/"), "index.html");
        assert_eq!(file_name("http://h"), "index.html");
    }
}
