//! `ADD <http(s) URL>` with a memory between builds: the last body of each
//! URL is kept in the build cache with its `ETag` and `Last-Modified`, and
//! the next build asks with `If-None-Match`/`If-Modified-Since`; a `304`
//! reuses the kept body (the step's key, the body's digest, is unchanged, so
//! the step stays CACHED). With `--checksum`, a kept body of that digest is
//! used without asking at all.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use berth_storage::Digest;
use serde::{Deserialize, Serialize};

/// What the cache keeps of a URL's last response.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct UrlRecord {
    pub url: String,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    /// `sha256:` of the kept body.
    pub digest: String,
}

/// A fetched (or revalidated) body.
#[derive(Clone)]
pub struct Fetched {
    pub bytes: Vec<u8>,
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
    fn kept(&self, url: &str) -> Option<(UrlRecord, Vec<u8>)> {
        let (meta, body) = self.paths(url);
        let record: UrlRecord = serde_json::from_slice(&fs::read(meta).ok()?).ok()?;
        let bytes = fs::read(body).ok()?;
        (record.url == url && Digest::sha256_of(&bytes).to_string() == record.digest)
            .then_some((record, bytes))
    }

    fn keep(&self, record: &UrlRecord, bytes: &[u8]) -> Result<(), String> {
        fs::create_dir_all(&self.dir)
            .map_err(|e| format!("cannot create {}: {e}", self.dir.display()))?;
        let (meta, body) = self.paths(&record.url);
        let pid = std::process::id();
        let write = |path: &Path, data: &[u8]| {
            let tmp = path.with_extension(format!("tmp{pid}"));
            fs::write(&tmp, data)
                .and_then(|_| fs::rename(&tmp, path))
                .map_err(|e| format!("cannot write {}: {e}", path.display()))
        };
        write(&body, bytes)?;
        write(&meta, &serde_json::to_vec(record).unwrap_or_default())
    }

    /// The body of `url`: with `checksum`, a kept body of that digest or a
    /// download that must hash to it; without, a revalidation of the kept
    /// body or a download.
    pub async fn fetch(&self, url: &str, checksum: Option<&str>) -> Result<Fetched, String> {
        let kept = self.kept(url);
        if let (Some(expected), Some((record, bytes))) = (checksum, &kept) {
            if record.digest == expected {
                return Ok(fetched(bytes.clone(), record));
            }
        }
        let client = reqwest::Client::new();
        let mut request = client.get(url);
        if checksum.is_none() {
            if let Some((record, _)) = &kept {
                if let Some(etag) = &record.etag {
                    request = request.header(reqwest::header::IF_NONE_MATCH, etag);
                }
                if let Some(lm) = &record.last_modified {
                    request = request.header(reqwest::header::IF_MODIFIED_SINCE, lm);
                }
            }
        }
        let response = request
            .send()
            .await
            .map_err(|e| format!("cannot fetch {url}: {e}"))?;
        if response.status() == reqwest::StatusCode::NOT_MODIFIED {
            if let Some((record, bytes)) = kept {
                return Ok(fetched(bytes, &record));
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
        let bytes = response
            .bytes()
            .await
            .map_err(|e| format!("cannot fetch {url}: {e}"))?
            .to_vec();
        let digest = Digest::sha256_of(&bytes).to_string();
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
        // Only a validator makes a kept body useful (or a checksum to match).
        if record.etag.is_some() || record.last_modified.is_some() || checksum.is_some() {
            self.keep(&record, &bytes)?;
        }
        Ok(fetched(bytes, &record))
    }
}

fn fetched(bytes: Vec<u8>, record: &UrlRecord) -> Fetched {
    Fetched {
        modified: record
            .last_modified
            .as_deref()
            .and_then(|v| httpdate::parse_http_date(v).ok()),
        digest: record.digest.clone(),
        bytes,
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
