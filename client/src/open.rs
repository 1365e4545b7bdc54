//! Turn a [`Location`] into an image source or destination.

use std::path::Path;

use crate::archive::{DockerArchiveDest, DockerArchiveSource};
use crate::error::Result;
use crate::image::{ImageDest, ImageSource};
use crate::layout::{OciLayoutDest, OciLayoutSource};
use crate::location::Location;
use crate::registry::Client;
use crate::remote::{RegistryDest, RegistrySource};

/// A destination, and the tag to write there (if the location names one).
pub struct Opened {
    pub dest: Box<dyn ImageDest>,
    pub tag: Option<String>,
}

/// Open a location to read an image from. `store` is the local store's folder.
pub async fn open_source(
    client: &Client,
    location: &Location,
    store: &Path,
) -> Result<Box<dyn ImageSource>> {
    Ok(match location {
        Location::Registry(r) => Box::new(RegistrySource::new(
            client.registry(&r.registry)?,
            r.clone(),
        )),
        Location::Oci { dir, tag } => Box::new(OciLayoutSource::open(dir, tag.as_deref()).await?),
        Location::DockerArchive { file, reference } => {
            Box::new(DockerArchiveSource::open(file, reference.as_deref()).await?)
        }
        Location::Local(r) => {
            let name = Location::store_name(r);
            Box::new(OciLayoutSource::open(store, Some(&name)).await.map_err(|e| match e {
                crate::Error::NotFound { .. } => crate::Error::not_found(format!(
                    "{name} in the local store ({}); `berth pull {r}` fetches it, `berth images` lists what is there",
                    store.display()
                )),
                other => other,
            })?)
        }
    })
}

/// Open a location to write an image to.
pub async fn open_dest(
    client: &Client,
    location: &Location,
    store: &Path,
    jobs: usize,
) -> Result<Opened> {
    Ok(match location {
        Location::Registry(r) => Opened {
            dest: Box::new(RegistryDest::new(
                client.registry(&r.registry)?,
                r.clone(),
                jobs,
            )),
            tag: r.tag_or_latest(),
        },
        Location::Oci { dir, tag } => Opened {
            dest: Box::new(OciLayoutDest::create(dir, tag.as_deref()).await?),
            tag: tag.clone(),
        },
        Location::DockerArchive { file, reference } => {
            let tags = reference.iter().cloned().collect();
            Opened {
                dest: Box::new(DockerArchiveDest::create(file, tags).await?),
                tag: None,
            }
        }
        Location::Local(r) => {
            let name = Location::store_name(r);
            Opened {
                dest: Box::new(OciLayoutDest::create(store, Some(&name)).await?),
                tag: Some(name),
            }
        }
    })
}
