//! What the mirror tests share: images docker can unpack, pushes with tokens, upstream
//! request counts from a registry's log, a token-auth upstream and a mirror server.

#![allow(dead_code)]

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use super::common::*;

pub const TIMEOUT: Duration = Duration::from_secs(300);
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// Deterministic bytes that do not compress (so layers are as big as asked).
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A gzipped tar with one file, and the sha256 of the uncompressed tar (its diff_id).
pub fn layer(path: &str, content: &[u8]) -> (Vec<u8>, String) {
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(content.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, path, content)
        .expect("tar entry");
    let raw = tar.into_inner().expect("tar");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&raw).expect("gzip");
    (gz.finish().expect("gzip"), digest_of(&raw))
}

/// A three-layer linux/amd64 image that docker can unpack.
pub struct Image {
    pub config: Vec<u8>,
    pub layers: Vec<Vec<u8>>,
    pub manifest: Vec<u8>,
    pub digest: String,
}

pub fn image(seed: u64) -> Image {
    let parts = [
        layer("big.bin", &noise(seed, 3 << 20)),
        layer("etc/motd", format!("mirrored {seed}\n").as_bytes()),
        layer("small.bin", &noise(seed + 1, 40_000)),
    ];
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["/big.bin"]},
        "rootfs": {"type": "layers", "diff_ids": parts.iter().map(|p| p.1.clone()).collect::<Vec<_>>()},
    }))
    .expect("config");
    let layers: Vec<Vec<u8>> = parts.into_iter().map(|p| p.0).collect();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": digest_of(&config), "size": config.len()},
        "layers": layers.iter().map(|l| serde_json::json!({
            "mediaType": OCI_LAYER_GZIP, "digest": digest_of(l), "size": l.len()
        })).collect::<Vec<_>>(),
    }))
    .expect("manifest");
    let digest = digest_of(&manifest);
    Image {
        config,
        layers,
        manifest,
        digest,
    }
}

/// A token from berth's `/token` for `scope`, as `user`.
pub async fn token(
    c: &reqwest::Client,
    base: &str,
    user: &str,
    password: &str,
    scope: &str,
) -> String {
    let resp = c
        .get(format!("{base}/token"))
        .query(&[("service", "berth"), ("scope", scope)])
        .basic_auth(user, Some(password))
        .send()
        .await
        .expect("token request");
    assert_eq!(resp.status().as_u16(), 200, "token for {scope}");
    let body: serde_json::Value =
        serde_json::from_slice(&resp.bytes().await.expect("token body")).expect("token json");
    body["token"].as_str().expect("token").to_string()
}

/// Pushes blobs and the manifest (as `repo:tag`), with a Bearer token when given.
pub async fn push_image(
    c: &reqwest::Client,
    base: &str,
    repo: &str,
    tag: &str,
    img: &Image,
    bearer: Option<&str>,
) {
    let auth = |r: reqwest::RequestBuilder| match bearer {
        Some(t) => r.bearer_auth(t),
        None => r,
    };
    for blob in img.layers.iter().chain([&img.config]) {
        let resp = auth(c.post(format!("{base}/v2/{repo}/blobs/uploads/")))
            .send()
            .await
            .expect("POST upload");
        assert_eq!(resp.status().as_u16(), 202, "start upload to {repo}");
        let location = header(&resp, "location").expect("Location");
        let url = with_query(&absolute(base, &location), "digest", &digest_of(blob));
        let resp = auth(c.put(url))
            .body(blob.clone())
            .send()
            .await
            .expect("PUT blob");
        assert_eq!(resp.status().as_u16(), 201, "finish upload to {repo}");
    }
    let resp = auth(c.put(format!("{base}/v2/{repo}/manifests/{tag}")))
        .header("content-type", OCI_MANIFEST)
        .body(img.manifest.clone())
        .send()
        .await
        .expect("PUT manifest");
    assert_eq!(resp.status().as_u16(), 201, "PUT manifest {repo}:{tag}");
}

/// Pushes an artifact whose subject is `subject`'s manifest; returns its digest.
pub async fn push_referrer(
    c: &reqwest::Client,
    base: &str,
    bearer: &str,
    subject: &Image,
) -> String {
    let empty = b"{}".to_vec();
    let artifact = Image {
        config: empty.clone(),
        layers: Vec::new(),
        manifest: serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": "application/vnd.example.signature",
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": digest_of(&empty), "size": 2},
            "layers": [],
            "subject": {"mediaType": OCI_MANIFEST, "digest": subject.digest, "size": subject.manifest.len()},
        }))
        .expect("artifact"),
        digest: String::new(),
    };
    let digest = digest_of(&artifact.manifest);
    push_image(c, base, "library/app", &digest, &artifact, Some(bearer)).await;
    digest
}

/// The requests a registry logged (berth: its request log lines; docker-registry: its
/// access log), optionally only those whose line contains `filter`.
pub fn requests(server: &Server, filter: &str) -> usize {
    server
        .log()
        .lines()
        .filter(|l| {
            (l.contains(" route=") && l.contains(" status="))
                || l.contains("\"GET ")
                || l.contains("\"HEAD ")
        })
        .filter(|l| l.contains(filter))
        .count()
}

/// An upstream `berth serve` with logins and its token service: `pusher` may push,
/// `puller` (the mirror's account) may pull.
pub fn token_upstream(dir: &Path) -> Server {
    let htpasswd = dir.join("htpasswd");
    write_htpasswd(
        &htpasswd,
        &[("pusher", "push-pw"), ("puller", "pull-pw")],
        4,
    );
    let toml = format!(
        "[auth]\nhtpasswd = \"{}\"\ntoken_key = \"{}\"\n\
         [[access.rules]]\nwho = \"user:pusher\"\nrepositories = [\"**\"]\nactions = [\"*\"]\n\
         [[access.rules]]\nwho = \"user:puller\"\nrepositories = [\"**\"]\nactions = [\"pull\"]\n",
        htpasswd.display(),
        dir.join("token.pem").display()
    );
    Server::start_berth_with_config(dir, &toml, true)
}

pub fn mirror_server(dir: &Path, tables: &str) -> Server {
    let mirror_dir = dir.join("mirror");
    std::fs::create_dir_all(&mirror_dir).expect("mkdir");
    Server::start_berth_with_config(&mirror_dir, tables, false)
}

pub fn hub_mirror_table(upstream: &Server, ttl: &str) -> String {
    format!(
        "[[mirror]]\nupstream = \"{}\"\nprefix = \"docker.io\"\nnamespace = \"docker.io\"\ndefault = true\n\
         username = \"puller\"\npassword = \"pull-pw\"\nmanifest_ttl = \"{ttl}\"\nmax_size = \"10GiB\"\n",
        upstream.url()
    )
}

pub fn skopeo_copy(from: &str, to: &Path) {
    run_ok(
        cmd(
            "skopeo",
            [
                "copy",
                "--src-tls-verify=false",
                "--retry-times=0",
                from,
                &format!("dir:{}", to.display()),
            ],
        ),
        TIMEOUT,
    );
}

/// skopeo wrote exactly the image's manifest and blobs.
pub fn assert_copied(dir: &Path, img: &Image) {
    let manifest = std::fs::read(dir.join("manifest.json")).expect("manifest.json");
    assert_eq!(manifest, img.manifest, "manifest bytes through the mirror");
    for blob in img.layers.iter().chain([&img.config]) {
        let hex = digest_of(blob).trim_start_matches("sha256:").to_string();
        let copied = std::fs::read(dir.join(&hex)).expect("blob file");
        assert!(copied == *blob, "blob {hex} through the mirror");
    }
}

/// GET a manifest and every blob it names through the mirror; the blobs' bytes, or the
/// first failing status.
pub async fn pull_all(c: &reqwest::Client, base: &str, repo: &str) -> Result<Vec<Vec<u8>>, u16> {
    let resp = c
        .get(format!("{base}/v2/{repo}/manifests/latest"))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .expect("GET manifest");
    if resp.status().as_u16() != 200 {
        return Err(resp.status().as_u16());
    }
    let manifest: serde_json::Value =
        serde_json::from_slice(&resp.bytes().await.expect("body")).expect("manifest json");
    let mut digests = vec![manifest["config"]["digest"].as_str().unwrap_or_default()];
    for l in manifest["layers"].as_array().into_iter().flatten() {
        digests.push(l["digest"].as_str().unwrap_or_default());
    }
    let mut blobs = Vec::new();
    for d in digests {
        let resp = c
            .get(format!("{base}/v2/{repo}/blobs/{d}"))
            .send()
            .await
            .expect("GET blob");
        if resp.status().as_u16() != 200 {
            return Err(resp.status().as_u16());
        }
        blobs.push(resp.bytes().await.expect("blob body").to_vec());
    }
    Ok(blobs)
}

impl Image {
    /// The config and the layers, in the order `pull_all` returns them.
    pub fn blobs(&self) -> Vec<Vec<u8>> {
        let mut all = vec![self.config.clone()];
        all.extend(self.layers.iter().cloned());
        all
    }
}

/// Push each image as `REPO:latest` to a token-auth upstream, as the pusher.
pub async fn push_latest<R: AsRef<str>>(
    c: &reqwest::Client,
    upstream: &Server,
    images: &[(R, Image)],
) {
    for (repo, img) in images {
        let repo = repo.as_ref();
        let scope = format!("repository:{repo}:push,pull");
        let push = token(c, &upstream.url(), "pusher", "push-pw", &scope).await;
        push_image(c, &upstream.url(), repo, "latest", img, Some(&push)).await;
    }
}

/// A mirror of `upstream` under `hub` that evicts beyond `max_size`, writes pull times every
/// second (they order the eviction) and collects with no grace.
pub fn evicting_hub_table(upstream: &Server, max_size: &str) -> String {
    format!(
        "pull_flush_interval = \"1s\"\ngc_grace = \"0s\"\n\
         [[mirror]]\nupstream = \"{}\"\nprefix = \"hub\"\nusername = \"puller\"\npassword = \"pull-pw\"\n\
         manifest_ttl = \"1h\"\nmax_size = \"{max_size}\"\n",
        upstream.url()
    )
}

/// How many eviction passes `mirror` has logged.
pub fn evictions(mirror: &Server) -> usize {
    mirror
        .log()
        .matches("mirror: evicted beyond max_size")
        .count()
}
