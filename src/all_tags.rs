//! `berth pull -a REPO` and `berth push --all-tags REPO`: every tag of a
//! repository, as docker's flags of the same names.

use anyhow::{bail, Result};
use berth_client::layout::OciLayout;
use berth_client::location::Location;
use berth_client::ImageRef;

use crate::session::{Session, TransferArgs};

/// Every tag of `repository` on its registry, into the local store.
pub fn pull_all(session: &Session, repository: &ImageRef, transfer: &TransferArgs) -> Result<()> {
    if repository.tag.is_some() || repository.digest.is_some() {
        bail!(
            "pull --all-tags takes a repository without tag or digest: {}",
            repository.name()
        );
    }
    let tags = session.runtime.block_on(async {
        session
            .client
            .registry(&repository.registry)?
            .tags(&repository.repository)
            .await
    })?;
    if tags.is_empty() {
        bail!("{} has no tags to pull", repository.name());
    }
    for tag in tags {
        let mut one = repository.clone();
        one.tag = Some(tag);
        let src = Location::Registry(one.clone());
        let dst = Location::Local(one);
        let report = session.copy(&src, &dst, transfer)?;
        session.report(&dst, &report);
    }
    Ok(())
}

/// Every tag the local store holds of `src`'s repository, to its registry.
pub fn push_all(session: &Session, src: &Location, transfer: &TransferArgs) -> Result<()> {
    let Location::Local(repository) = src else {
        bail!("push --all-tags pushes from the local store: give a repository name such as HOST:PORT/app");
    };
    if repository.tag.is_some() || repository.digest.is_some() {
        bail!(
            "push --all-tags takes a repository without tag or digest: {}",
            repository.name()
        );
    }
    let prefix = format!("{}:", repository.name());
    let names = session.runtime.block_on(async {
        let layout = OciLayout::new(&session.store);
        if !layout.exists().await {
            return Ok(Vec::new());
        }
        layout.tags().await
    })?;
    let tags: Vec<&str> = names
        .iter()
        .filter_map(|n| n.strip_prefix(&prefix))
        .filter(|t| !t.contains('@'))
        .collect();
    if tags.is_empty() {
        bail!(
            "the local store holds no tag of {}; `berth images` lists what is there",
            repository.name()
        );
    }
    for tag in tags {
        let mut one = repository.clone();
        one.tag = Some(tag.to_string());
        let src = Location::Local(one.clone());
        let dst = Location::Registry(one);
        let report = session.copy(&src, &dst, transfer)?;
        session.report(&dst, &report);
    }
    Ok(())
}
