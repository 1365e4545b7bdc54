//! The few registry API calls the workloads need (OCI Distribution v1.1).

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, LOCATION};
use reqwest::{Body, Client, Response, StatusCode};

/// The layers the workloads push are gzip-compressed tars.
pub use berth_oci::media_type::OCI_LAYER_GZIP as OCI_LAYER;
pub use berth_oci::media_type::{DOCKER_MANIFEST, OCI_CONFIG, OCI_MANIFEST};

/// A registry at one base URL (`http://127.0.0.1:PORT`, no trailing slash).
#[derive(Clone)]
pub struct Registry {
    pub client: Client,
    pub base: String,
}

/// Fails with the status and the start of the body when `resp` is not `want`.
async fn expect(resp: Response, want: StatusCode, what: &str) -> Result<Response> {
    if resp.status() == want {
        return Ok(resp);
    }
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    let body: String = body.chars().take(300).collect();
    bail!("{what}: expected {want}, got {status}: {body}")
}

impl Registry {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Checks that `/v2/` answers 200.
    pub async fn ping(&self) -> Result<()> {
        let resp = self
            .client
            .get(self.url("/v2/"))
            .send()
            .await
            .context("GET /v2/")?;
        expect(resp, StatusCode::OK, "GET /v2/").await?;
        Ok(())
    }

    /// Starts an upload session and returns the absolute upload URL.
    pub async fn start_upload(&self, repo: &str) -> Result<String> {
        let what = format!("POST /v2/{repo}/blobs/uploads/");
        let resp = self
            .client
            .post(self.url(&format!("/v2/{repo}/blobs/uploads/")))
            .header(CONTENT_LENGTH, 0)
            .send()
            .await
            .with_context(|| what.clone())?;
        let resp = expect(resp, StatusCode::ACCEPTED, &what).await?;
        let loc = resp
            .headers()
            .get(LOCATION)
            .with_context(|| format!("{what}: no Location header"))?
            .to_str()
            .with_context(|| format!("{what}: Location is not text"))?;
        Ok(
            if loc.starts_with("http://") || loc.starts_with("https://") {
                loc.to_string()
            } else if loc.starts_with('/') {
                self.url(loc)
            } else {
                bail!("{what}: unsupported relative Location {loc:?}")
            },
        )
    }

    /// Finishes an upload monolithically: one PUT `?digest=` carrying the whole body.
    pub async fn finish_upload(
        &self,
        upload_url: &str,
        digest: &str,
        len: u64,
        body: Body,
    ) -> Result<()> {
        let sep = if upload_url.contains('?') { '&' } else { '?' };
        let url = format!("{upload_url}{sep}digest={digest}");
        let what = format!("PUT upload ?digest={digest}");
        let resp = self
            .client
            .put(url)
            .header(CONTENT_LENGTH, len)
            .header(CONTENT_TYPE, "application/octet-stream")
            .body(body)
            .send()
            .await
            .with_context(|| what.clone())?;
        expect(resp, StatusCode::CREATED, &what).await?;
        Ok(())
    }

    /// POST + monolithic PUT of a small in-memory blob.
    pub async fn push_blob(&self, repo: &str, digest: &str, data: Bytes) -> Result<()> {
        let upload = self.start_upload(repo).await?;
        let len = data.len() as u64;
        self.finish_upload(&upload, digest, len, Body::from(data))
            .await
    }

    /// Whether `repo` already has the blob (HEAD 200).
    pub async fn has_blob(&self, repo: &str, digest: &str) -> Result<bool> {
        let resp = self
            .client
            .head(self.url(&format!("/v2/{repo}/blobs/{digest}")))
            .send()
            .await
            .context("HEAD blob")?;
        Ok(resp.status() == StatusCode::OK)
    }

    /// PUT a manifest under `reference` (a tag or digest).
    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: Bytes,
    ) -> Result<()> {
        let what = format!("PUT /v2/{repo}/manifests/{reference}");
        let resp = self
            .client
            .put(self.url(&format!("/v2/{repo}/manifests/{reference}")))
            .header(CONTENT_TYPE, media_type)
            .body(body)
            .send()
            .await
            .with_context(|| what.clone())?;
        expect(resp, StatusCode::CREATED, &what).await?;
        Ok(())
    }

    /// GET a blob, returning the response once its status is 200.
    pub async fn get_blob(&self, repo: &str, digest: &str) -> Result<Response> {
        let what = format!("GET /v2/{repo}/blobs/{digest}");
        let resp = self
            .client
            .get(self.url(&format!("/v2/{repo}/blobs/{digest}")))
            .send()
            .await
            .with_context(|| what.clone())?;
        expect(resp, StatusCode::OK, &what).await
    }
}
