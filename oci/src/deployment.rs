//! Deployment records: the small JSON document `berth deploy` and `berth ship` push as an
//! OCI artifact referring to each image they deployed (or took off a host), and the rule
//! that reads them back: for each (app, inventory, host or Swarm service) the newest record
//! tells the truth, and an image runs there when that record says `ok`.
//!
//! Written by the deployer, read by the registry's web UI and retention; here because
//! both sides must agree on it and neither may import the other.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `artifactType` of a record's manifest, and media type of its one layer.
pub const ARTIFACT_TYPE: &str = "application/vnd.berth.deployment.v1+json";

/// A record larger than this is not one of ours: readers skip it unread.
pub const MAX_RECORD_BYTES: u64 = 256 * 1024;

/// One deploy run's word about one image (manifest digest).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub app: String,
    /// The inventory's name: its file stem (or folder name).
    pub inventory: String,
    /// The image reference as the app file writes it.
    pub image: String,
    /// The manifest digest deployed (the record's `subject`).
    pub digest: String,
    /// When the run ended, RFC 3339 in UTC with milliseconds (fixed width, so records of
    /// one writer order as strings).
    pub time: String,
    /// The registry login of whoever deployed, else `$USER@hostname`.
    pub who: String,
    pub berth_version: String,
    /// `ok` when every host (or the Swarm) of this image took it, else `failed`.
    pub result: Status,
    /// Container mode: each host with the services that run this image there.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<HostEntry>,
    /// Swarm mode: the services that run this image.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub swarm_services: Vec<SwarmEntry>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostEntry {
    pub host: String,
    pub services: Vec<String>,
    pub result: Status,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwarmEntry {
    pub service: String,
    pub result: Status,
}

/// What became of the image on a host (or service) in that run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Deployed and running.
    Ok,
    /// The deploy failed there. A health-gated deploy puts back what ran before, so a
    /// failed entry changes nothing about where an image runs: [`running`] skips it.
    Failed,
    /// Another image took its place.
    Replaced,
    /// `berth down` (or a service dropped from the app) took it off.
    Removed,
    /// A status a newer Berth wrote: never counts as running.
    #[serde(other)]
    Unknown,
}

/// Where a record places an image: a host (container mode) or a Swarm service.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Target {
    Host(String),
    SwarmService(String),
}

/// An image running somewhere, by the newest record for that place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    pub app: String,
    pub inventory: String,
    pub target: Target,
    pub services: Vec<String>,
    pub time: String,
    pub who: String,
}

impl Record {
    /// `(target, services, status)` of every place the record speaks of.
    fn entries(&self) -> impl Iterator<Item = (Target, &[String], Status)> {
        let hosts = self.hosts.iter().map(|h| {
            (
                Target::Host(h.host.clone()),
                h.services.as_slice(),
                h.result,
            )
        });
        let services = self
            .swarm_services
            .iter()
            .map(|s| (Target::SwarmService(s.service.clone()), &[][..], s.result));
        hosts.chain(services)
    }
}

/// For each (app, inventory, target) the newest record's word, kept when it says the image
/// runs there. Failed entries are no word at all (the deployer rolled back to what ran
/// before). Among records with the same time the later one in `records` wins. Sorted by
/// app, inventory, target.
pub fn running(records: &[Record]) -> Vec<Placement> {
    type Key = (String, String, Target);
    let mut newest: BTreeMap<Key, (&Record, &[String], Status)> = BTreeMap::new();
    for record in records {
        for (target, services, status) in record.entries() {
            if status == Status::Failed {
                continue;
            }
            let key = (record.app.clone(), record.inventory.clone(), target);
            match newest.get(&key) {
                Some((seen, _, _)) if seen.time > record.time => {}
                _ => {
                    newest.insert(key, (record, services, status));
                }
            }
        }
    }
    newest
        .into_iter()
        .filter(|(_, (_, _, status))| *status == Status::Ok)
        .map(
            |((app, inventory, target), (record, services, _))| Placement {
                app,
                inventory,
                target,
                services: services.to_vec(),
                time: record.time.clone(),
                who: record.who.clone(),
            },
        )
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(time: &str, hosts: &[(&str, Status)]) -> Record {
        Record {
            app: "shop".into(),
            inventory: "prod".into(),
            image: "reg/shop:1".into(),
            digest: "sha256:aa".into(),
            time: time.into(),
            who: "ci".into(),
            berth_version: "0.1.0".into(),
            result: Status::Ok,
            hosts: hosts
                .iter()
                .map(|(host, result)| HostEntry {
                    host: host.to_string(),
                    services: vec!["web".into()],
                    result: *result,
                })
                .collect(),
            swarm_services: Vec::new(),
        }
    }

    fn hosts(placements: &[Placement]) -> Vec<String> {
        placements
            .iter()
            .map(|p| match &p.target {
                Target::Host(h) => h.clone(),
                Target::SwarmService(s) => format!("swarm:{s}"),
            })
            .collect()
    }

    #[test]
    fn the_newest_record_per_host_decides() {
        let t1 = "2026-01-01T10:00:00.000Z";
        let t2 = "2026-01-01T11:00:00.000Z";
        // Given out of order: the later replacement on h1 wins over the earlier deploy.
        let records = [
            record(t2, &[("h1", Status::Replaced)]),
            record(t1, &[("h1", Status::Ok), ("h2", Status::Ok)]),
        ];
        let placements = running(&records);
        assert_eq!(hosts(&placements), ["h2"]);
        assert_eq!(placements[0].time, t1);
        assert_eq!(placements[0].services, ["web"]);
    }

    #[test]
    fn removed_is_not_running_a_redeploy_is_and_a_failure_changes_nothing() {
        let records = [
            record(
                "2026-01-01T10:00:00.000Z",
                &[("h1", Status::Ok), ("h2", Status::Ok)],
            ),
            // h2: a failed redeploy of the same image rolled back to it: still running.
            // h3: a first deploy that failed never ran there.
            record(
                "2026-01-01T11:00:00.000Z",
                &[
                    ("h1", Status::Removed),
                    ("h2", Status::Failed),
                    ("h3", Status::Failed),
                ],
            ),
            record("2026-01-01T12:00:00.000Z", &[("h1", Status::Ok)]),
        ];
        assert_eq!(hosts(&running(&records)), ["h1", "h2"]);
        // Replaced, then a failed attempt to bring it back: still not running.
        let records = [
            record("2026-01-01T10:00:00.000Z", &[("h1", Status::Ok)]),
            record("2026-01-01T11:00:00.000Z", &[("h1", Status::Replaced)]),
            record("2026-01-01T12:00:00.000Z", &[("h1", Status::Failed)]),
        ];
        assert!(running(&records).is_empty());
    }

    #[test]
    fn apps_inventories_and_swarm_services_are_separate_places() {
        let mut staging = record("2026-01-01T12:00:00.000Z", &[("h1", Status::Removed)]);
        staging.inventory = "staging".into();
        let mut swarm = record("2026-01-01T09:00:00.000Z", &[]);
        swarm.swarm_services = vec![SwarmEntry {
            service: "shop_web".into(),
            result: Status::Ok,
        }];
        let records = [
            record("2026-01-01T10:00:00.000Z", &[("h1", Status::Ok)]),
            staging,
            swarm,
        ];
        let placements = running(&records);
        assert_eq!(hosts(&placements), ["h1", "swarm:shop_web"]);
        assert!(placements.iter().all(|p| p.inventory == "prod"));
    }

    #[test]
    fn records_round_trip_and_unknown_statuses_never_run() {
        let r = record("2026-01-01T10:00:00.000Z", &[("h1", Status::Ok)]);
        let text = serde_json::to_string(&r).expect("serialises");
        assert!(text.contains("\"result\":\"ok\""), "{text}");
        let future = text.replace("\"result\":\"ok\"}", "\"result\":\"paused\"}");
        let parsed: Record = serde_json::from_str(&future).expect("parses");
        assert_eq!(parsed.hosts[0].result, Status::Unknown);
        assert!(running(&[parsed]).is_empty());
    }
}
