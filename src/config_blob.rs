//! Reading an image's config blob: small, capped and verified. Shared by the image commands
//! and the error hints, apart from the session so neither has to import the other.

use anyhow::{bail, Context, Result};
use berth_client::image::ImageSource;
use futures::TryStreamExt;

use crate::progress::human_bytes;

/// Read a config blob, capped (configs are small; a huge one is an attack or a mistake).
pub(crate) async fn read_small_blob(
    source: &dyn ImageSource,
    blob: &berth_client::BlobInfo,
) -> Result<Vec<u8>> {
    const MAX: u64 = 16 << 20;
    if blob.size > MAX {
        bail!(
            "the image config is {} — too big to be a config",
            human_bytes(blob.size)
        );
    }
    let mut verifier = berth_client::image::BlobVerifier::new(blob);
    let mut out = Vec::with_capacity(blob.size as usize);
    let mut stream = source.blob(blob, 0).await?;
    while let Some(chunk) = stream
        .try_next()
        .await
        .context("reading the image config")?
    {
        verifier.update(&chunk)?;
        out.extend_from_slice(&chunk);
    }
    verifier.finish()?;
    Ok(out)
}
