//! What `berth ship` builds: every image a selected host runs from a service with a build
//! context, once per image reference, however many hosts and replicas run it.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::app::Build;
use crate::desired::DesiredHost;

/// One image to build and push.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ImageBuild {
    /// The rendered image reference the build is pushed to (and the hosts pull).
    pub image: String,
    pub build: Build,
    /// Services (app file keys) that run it.
    pub services: BTreeSet<String>,
    /// Hosts that run it.
    pub hosts: BTreeSet<String>,
}

/// The builds `desired` needs, sorted by image. Two hosts may render one image reference
/// from different build settings (a build arg taken from a host variable): one tag cannot
/// hold both images, so that is an error naming both hosts.
pub fn image_builds(desired: &[DesiredHost]) -> Result<Vec<ImageBuild>, String> {
    collect_builds(desired.iter().flat_map(|host| {
        host.containers.iter().filter_map(|container| {
            Some(BuildUse {
                image: &container.spec.image,
                build: container.build.as_ref()?,
                service: &container.service,
                host: &host.host,
            })
        })
    }))
}

/// A service (or one replica of it) on a host that runs an image built from `build`.
pub(crate) struct BuildUse<'a> {
    pub image: &'a str,
    pub build: &'a Build,
    pub service: &'a str,
    pub host: &'a str,
}

/// One build per image reference, for container mode and Swarm alike: an image pinned by
/// digest cannot take a build, and one tag cannot hold two different builds.
pub(crate) fn collect_builds<'a>(
    uses: impl IntoIterator<Item = BuildUse<'a>>,
) -> Result<Vec<ImageBuild>, String> {
    let mut builds: BTreeMap<String, ImageBuild> = BTreeMap::new();
    for used in uses {
        let image = used.image;
        if image.contains('@') {
            return Err(format!(
                "service {} has a build context but its image {image} is pinned by digest; \
                 name a tag to push the build to",
                used.service
            ));
        }
        let entry = builds
            .entry(image.to_string())
            .or_insert_with(|| ImageBuild {
                image: image.to_string(),
                build: used.build.clone(),
                services: BTreeSet::new(),
                hosts: BTreeSet::new(),
            });
        if entry.build != *used.build {
            return Err(build_clash(entry, &used));
        }
        entry.services.insert(used.service.to_string());
        entry.hosts.insert(used.host.to_string());
    }
    Ok(builds.into_values().collect())
}

/// Why `used` cannot share `existing`'s image: on one host two services disagree (the app
/// file itself), across hosts a host variable does.
fn build_clash(existing: &ImageBuild, used: &BuildUse) -> String {
    let image = &existing.image;
    if existing.hosts.contains(used.host) {
        let other = existing.services.iter().next().cloned().unwrap_or_default();
        format!(
            "image {image} is built differently by services {other} and {}: one tag cannot hold both",
            used.service
        )
    } else {
        let other = existing.hosts.iter().next().cloned().unwrap_or_default();
        format!(
            "image {image} is built differently for host {other} and host {} \
             (service {}): one tag cannot hold both; put the differing variable \
             into the image tag too",
            used.host, used.service
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{desired_state, AppSource, Inventory};

    fn desired(app: &str, host_vars: &[(&str, &str)]) -> Vec<DesiredHost> {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("app.yml"), app).expect("app");
        let inventory = dir.path().join("inv");
        std::fs::create_dir_all(inventory.join("host_vars")).expect("inv");
        std::fs::write(
            inventory.join("hosts.yml"),
            "all:\n  hosts:\n    a: { ansible_connection: local }\n    b: { ansible_connection: local }\n",
        )
        .expect("hosts");
        for (host, vars) in host_vars {
            std::fs::write(inventory.join(format!("host_vars/{host}.yml")), vars).expect("vars");
        }
        let source = AppSource::load(&dir.path().join("app.yml")).expect("app loads");
        let inventory = Inventory::load(&inventory).expect("inventory loads");
        desired_state(&source, &inventory, None).expect("desired")
    }

    const APP: &str = r#"
name: shop
variables: { tag: v1, base: busybox }
services:
  web:
    image: "reg:5000/shop:{{ tag }}"
    replicas: 2
    build: { context: ./web, args: { BASE: "{{ base }}" } }
  worker:
    image: "reg:5000/shop:{{ tag }}"
    build: { context: ./web, args: { BASE: "{{ base }}" } }
  cache:
    image: reg:5000/redis:7
"#;

    #[test]
    fn one_build_per_image_across_hosts_services_and_replicas() {
        let builds = image_builds(&desired(APP, &[])).expect("builds");
        assert_eq!(builds.len(), 1, "{builds:?}");
        let build = &builds[0];
        assert_eq!(build.image, "reg:5000/shop:v1");
        assert_eq!(build.build.context, "./web");
        assert_eq!(build.build.args["BASE"], "busybox");
        assert_eq!(
            build.services,
            BTreeSet::from(["web".to_string(), "worker".to_string()])
        );
        assert_eq!(
            build.hosts,
            BTreeSet::from(["a".to_string(), "b".to_string()])
        );
    }

    #[test]
    fn per_host_tags_build_twice_and_clashing_args_are_refused() {
        let builds =
            image_builds(&desired(APP, &[("b", "tag: v2\nbase: alpine\n")])).expect("builds");
        let images: Vec<&str> = builds.iter().map(|b| b.image.as_str()).collect();
        assert_eq!(images, ["reg:5000/shop:v1", "reg:5000/shop:v2"]);

        let error = image_builds(&desired(APP, &[("b", "base: alpine\n")])).expect_err("clash");
        assert!(error.contains("reg:5000/shop:v1"), "{error}");
        assert!(
            error.contains("host a") && error.contains("host b"),
            "{error}"
        );
    }
}
