//! A repository on a registry as an image source and destination.

use std::sync::Arc;

use async_trait::async_trait;
use berth_oci::{ByteStream, Digest};

use crate::error::Result;
use crate::image::{BlobInfo, BlobOutcome, BlobProgress, ImageDest, ImageSource, Manifest};
use crate::reference::ImageRef;
use crate::registry::Registry;

pub struct RegistrySource {
    registry: Arc<Registry>,
    reference: ImageRef,
}

impl RegistrySource {
    pub fn new(registry: Arc<Registry>, reference: ImageRef) -> RegistrySource {
        RegistrySource {
            registry,
            reference,
        }
    }
}

#[async_trait]
impl ImageSource for RegistrySource {
    fn describe(&self) -> String {
        self.reference.to_string()
    }

    async fn manifest(&self) -> Result<Manifest> {
        self.registry
            .manifest_get(&self.reference.repository, &self.reference.reference())
            .await
    }

    async fn manifest_by_digest(&self, digest: &Digest) -> Result<Manifest> {
        self.registry
            .manifest_get(&self.reference.repository, &digest.to_string())
            .await
    }

    async fn blob(&self, blob: &BlobInfo, offset: u64) -> Result<ByteStream> {
        self.registry
            .blob_get(&self.reference.repository, &blob.digest, offset)
            .await
    }

    fn registry_repository(&self) -> Option<(String, String)> {
        Some((
            self.registry.name().to_string(),
            self.reference.repository.clone(),
        ))
    }
}

pub struct RegistryDest {
    registry: Arc<Registry>,
    reference: ImageRef,
    parallel: usize,
}

impl RegistryDest {
    pub fn new(registry: Arc<Registry>, reference: ImageRef, parallel: usize) -> RegistryDest {
        RegistryDest {
            registry,
            reference,
            parallel: parallel.max(1),
        }
    }
}

#[async_trait]
impl ImageDest for RegistryDest {
    fn describe(&self) -> String {
        self.reference.to_string()
    }

    fn max_parallel_blobs(&self) -> usize {
        self.parallel
    }

    async fn put_blob(
        &self,
        blob: &BlobInfo,
        source: &dyn ImageSource,
        progress: &dyn BlobProgress,
    ) -> Result<BlobOutcome> {
        self.registry
            .blob_push(&self.reference.repository, blob, source, progress)
            .await
    }

    async fn put_manifest(&self, manifest: &Manifest, tag: Option<&str>) -> Result<()> {
        let reference = match tag {
            Some(t) => t.to_string(),
            None => manifest.digest.to_string(),
        };
        self.registry
            .manifest_put(&self.reference.repository, &reference, manifest)
            .await
    }
}
