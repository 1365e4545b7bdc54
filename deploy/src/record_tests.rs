use std::collections::BTreeMap;
use std::path::PathBuf;

use super::*;
use crate::actual::{ActualContainer, ContainerState};
use crate::inventory::DockerEndpoint;
use crate::run::{HostReport, Mode};

const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
const D0: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

fn facts() -> RunFacts {
    RunFacts {
        app: "shop".into(),
        inventory: "prod".into(),
        time: "2026-01-01T10:00:00.000Z".into(),
        berth_version: "0.1.0".into(),
        local_user: "ci@builder".into(),
    }
}

fn host(name: &str) -> HostReport {
    let endpoint = DockerEndpoint::Unix {
        path: PathBuf::from("/run/docker.sock"),
    };
    HostReport::empty(name, &endpoint)
}

fn report(hosts: Vec<HostReport>) -> RunReport {
    RunReport {
        app: "shop".into(),
        mode: Mode::Deploy,
        images: BTreeMap::from([("127.0.0.1:5000/shop:1".to_string(), D1.to_string())]),
        hosts,
    }
}

fn services(hosts: &[&str]) -> BTreeMap<String, Vec<(String, String)>> {
    hosts
        .iter()
        .map(|h| {
            let list = vec![
                ("web".to_string(), "127.0.0.1:5000/shop:1".to_string()),
                ("worker".to_string(), "127.0.0.1:5000/shop:1".to_string()),
            ];
            (h.to_string(), list)
        })
        .collect()
}

#[test]
fn one_record_per_image_with_each_hosts_services_and_result() {
    let mut failed = host("h2");
    failed.failed = 1;
    let records = container_records(
        &facts(),
        &services(&["h1", "h2"]),
        &report(vec![host("h1"), failed]),
    );
    assert_eq!(records.len(), 1);
    let r = &records[0];
    assert_eq!(r.subject.name(), "127.0.0.1:5000/shop");
    assert_eq!(
        r.subject.digest.as_ref().map(|d| d.to_string()).as_deref(),
        Some(D1)
    );
    assert_eq!(r.record.result, Status::Failed);
    assert_eq!(r.record.hosts[0].host, "h1");
    assert_eq!(r.record.hosts[0].services, ["web", "worker"]);
    assert_eq!(r.record.hosts[0].result, Status::Ok);
    assert_eq!(r.record.hosts[1].result, Status::Failed);
    let json = serde_json::to_value(&r.record).expect("serialises");
    assert_eq!(json["app"], "shop");
    assert_eq!(json["inventory"], "prod");
    assert_eq!(json["who"], "ci@builder");
    assert_eq!(json["hosts"][0]["result"], "ok");
    assert!(json.get("swarm_services").is_none());
}

#[test]
fn an_image_taken_off_a_host_gets_its_own_record_unless_placed_there_again() {
    let mut h1 = host("h1");
    h1.taken_off = vec![
        TakenOff {
            service: "web".into(),
            image: format!("127.0.0.1:5000/shop@{D0}"),
            status: Status::Replaced,
        },
        // Same image as deployed on h1 now (a config change): not a removal.
        TakenOff {
            service: "worker".into(),
            image: format!("127.0.0.1:5000/shop@{D1}"),
            status: Status::Replaced,
        },
    ];
    let records = container_records(&facts(), &services(&["h1"]), &report(vec![h1]));
    assert_eq!(records.len(), 2);
    let old = records
        .iter()
        .find(|p| p.record.digest == D0)
        .expect("a record for the old image");
    assert_eq!(old.record.hosts.len(), 1);
    assert_eq!(old.record.hosts[0].result, Status::Replaced);
    assert_eq!(old.record.hosts[0].services, ["web"]);
    assert_eq!(old.record.result, Status::Ok);
    let new = records.iter().find(|p| p.record.digest == D1).expect("new");
    assert_eq!(new.record.hosts.len(), 1);
    assert_eq!(new.record.hosts[0].result, Status::Ok);
}

#[test]
fn unpinned_images_get_no_record() {
    let mut unpinned = report(vec![host("h1")]);
    unpinned.images.clear();
    assert!(container_records(&facts(), &services(&["h1"]), &unpinned).is_empty());
}

#[test]
fn swarm_records_name_the_services() {
    let list = [
        ("shop_web".to_string(), "127.0.0.1:5000/shop:1".to_string()),
        ("shop_db".to_string(), "127.0.0.1:5000/db:1".to_string()),
    ];
    let records = swarm_records(&facts(), &list, &report(vec![host("manager")]));
    assert_eq!(records.len(), 1, "db:1 was not resolved");
    assert_eq!(records[0].record.swarm_services[0].service, "shop_web");
    assert!(records[0].record.hosts.is_empty());
}

fn container(id: &str, image: &str, digests: &[&str]) -> ActualContainer {
    ActualContainer {
        id: id.into(),
        name: format!("shop_{id}"),
        labels: BTreeMap::from([(crate::labels::SERVICE.to_string(), "web".to_string())]),
        image: image.into(),
        image_id: "sha256:cfg".into(),
        image_digests: digests.iter().map(|d| d.to_string()).collect(),
        state: ContainerState::Running,
        health: None,
    }
}

#[test]
fn removed_containers_name_their_image_by_digest() {
    let actual = ActualHost {
        containers: vec![
            container("a", &format!("127.0.0.1:5000/shop@{D0}"), &[]),
            container("b", "127.0.0.1:5000/shop:old", &[D1]),
            container("c", "local-only:1", &[]),
            container("d", &format!("127.0.0.1:5000/shop@{D1}"), &[]),
        ],
        ..ActualHost::default()
    };
    let remove = |id: &str| Action::RemoveContainer {
        name: format!("shop_{id}"),
        id: id.into(),
        reason: "obsolete".into(),
    };
    let plan = HostPlan {
        host: "h1".into(),
        endpoint: "unix:///run/docker.sock".into(),
        actions: vec![remove("a"), remove("b"), remove("c"), remove("d")],
        unchanged: Vec::new(),
        warnings: Vec::new(),
        error: None,
    };
    let result = |outcome| ActionResult {
        action: "remove".into(),
        outcome,
        message: None,
    };
    let results = [
        result(Outcome::Changed),
        result(Outcome::Changed),
        result(Outcome::Changed),
        result(Outcome::Failed),
    ];
    let gone = taken_off(&plan, &actual, &results);
    let images: Vec<&str> = gone.iter().map(|g| g.image.as_str()).collect();
    assert_eq!(
        images,
        [
            format!("127.0.0.1:5000/shop@{D0}"),
            format!("127.0.0.1:5000/shop@{D1}")
        ]
    );
    assert!(gone
        .iter()
        .all(|g| g.status == Status::Removed && g.service == "web"));
}

/// `berth rollback`: the host's record lists what runs there afterwards (the kept releases
/// put back and the containers it did not touch), the containers the kept releases replaced
/// are `replaced`, a container of the rolled-back deploy it removed is `removed` unless its
/// image still runs there; a swap that failed changes nothing; a host where nothing was
/// rolled back records nothing; another app's containers are not named.
#[test]
fn a_rollback_records_what_runs_afterwards_and_what_it_took_off() {
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";
    let shop = |id: &str, image: &str, digests: &[&str]| {
        let mut c = container(id, image, digests);
        c.labels
            .insert(crate::labels::SERVICE.to_string(), id.to_string());
        c.labels
            .insert(crate::labels::APP.to_string(), "shop".to_string());
        c
    };
    let kept = |id: &str, image: &str, digests: &[&str]| ActualContainer {
        name: format!("shop_{id}{}", crate::labels::PREVIOUS_SUFFIX),
        ..shop(id, image, digests)
    };
    let pinned = |digest: &str| format!("127.0.0.1:5000/shop@{digest}");
    let mut foreign = container("other", &pinned(D1), &[]);
    foreign.name = "other_app".into();
    let actual = ActualHost {
        containers: vec![
            shop("a", &pinned(D1), &[]),
            shop("w", &pinned(D1), &[]),
            shop("new", &format!("127.0.0.1:5000/extra@{D2}"), &[]),
            shop("db", &pinned(D1), &[]),
            foreign,
        ],
        previous: vec![
            kept("a", &pinned(D0), &[]),
            kept("w", "127.0.0.1:5000/shop:1", &[D0]),
        ],
        ..ActualHost::default()
    };
    let created = [&actual.containers[2]];
    let result = |outcome| ActionResult {
        action: "rollback".into(),
        outcome,
        message: None,
    };
    let (running, gone) = rolled_back(
        &actual,
        "shop",
        &created,
        &[
            result(Outcome::Changed),
            result(Outcome::Failed),
            result(Outcome::Changed),
        ],
    );
    assert_eq!(
        running
            .into_iter()
            .map(|r| (r.service, r.image))
            .collect::<Vec<_>>(),
        [
            ("a".to_string(), pinned(D0)),
            ("w".to_string(), pinned(D1)),
            ("db".to_string(), pinned(D1)),
        ],
        "w's swap failed: it still runs D1"
    );
    let gone: Vec<(String, Status)> = gone.into_iter().map(|g| (g.service, g.status)).collect();
    assert_eq!(
        gone,
        [
            ("a".to_string(), Status::Replaced),
            ("new".to_string(), Status::Removed)
        ]
    );
    let nothing = rolled_back(&actual, "shop", &created, &[result(Outcome::Failed)]);
    assert_eq!(nothing, (Vec::new(), Vec::new()), "nothing rolled back");

    let mut h1 = host("h1");
    (h1.running_after_rollback, h1.taken_off) = rolled_back(
        &actual,
        "shop",
        &created,
        &[result(Outcome::Changed), result(Outcome::Changed)],
    );
    let mut run = report(vec![h1]);
    run.mode = Mode::Rollback;
    run.images.clear();
    let records = rollback_records(&facts(), &run);
    let entry = |digest: &str| {
        let record = &records
            .iter()
            .find(|p| p.record.digest == digest)
            .unwrap_or_else(|| panic!("a record for {digest}"))
            .record;
        assert_eq!(record.hosts.len(), 1, "{record:?}");
        (record.hosts[0].result, record.hosts[0].services.clone())
    };
    assert_eq!(
        records.len(),
        3,
        "D0 put back, D1 still runs (db), D2 untouched"
    );
    let names = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(entry(D0), (Status::Ok, names(&["a", "w"])));
    assert_eq!(
        entry(D1),
        (Status::Ok, names(&["db"])),
        "db still runs D1: the host entry says ok, not replaced"
    );
    assert_eq!(entry(D2), (Status::Ok, names(&["new"])));
}

#[test]
fn the_artifact_manifest_follows_the_image_spec_artifact_guidance() {
    let record = container_records(&facts(), &services(&["h1"]), &report(vec![host("h1")]))
        .remove(0)
        .record;
    let subject = Manifest::new(&b"{\"schemaVersion\":2}"[..], media::OCI_MANIFEST);
    let blob = |bytes: &[u8], media_type: &str| berth_client::image::BlobInfo {
        media_type: media_type.into(),
        digest: berth_client::image::sha256(bytes),
        size: bytes.len() as u64,
    };
    let empty = blob(b"{}", berth_oci::media_type::OCI_EMPTY);
    let layer = blob(b"record", ARTIFACT_TYPE);
    let m = artifact_manifest(&record, &subject, &empty, &layer);
    assert_eq!(m["artifactType"], ARTIFACT_TYPE);
    assert_eq!(m["config"]["mediaType"], berth_oci::media_type::OCI_EMPTY);
    assert_eq!(
        m["config"]["digest"],
        "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
    );
    assert_eq!(m["layers"][0]["mediaType"], ARTIFACT_TYPE);
    assert_eq!(m["subject"]["digest"], subject.digest.to_string());
    assert_eq!(m["subject"]["size"], 19);
    assert_eq!(
        m["annotations"]["org.opencontainers.image.created"],
        "2026-01-01T10:00:00.000Z"
    );
}

#[test]
fn inventory_names_are_file_stems() {
    assert_eq!(
        inventory_name(std::path::Path::new("/x/production.yml")),
        "production"
    );
    assert_eq!(inventory_name(std::path::Path::new("hosts")), "hosts");
}

#[tokio::test]
async fn a_registry_that_is_down_is_a_warning_per_record() {
    // A port nothing listens on: bind one, note it, close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let mut report = report(vec![host("h1")]);
    report.images = BTreeMap::from([(format!("127.0.0.1:{port}/shop:1"), D1.to_string())]);
    let services = BTreeMap::from([(
        "h1".to_string(),
        vec![("web".to_string(), format!("127.0.0.1:{port}/shop:1"))],
    )]);
    let records = container_records(&facts(), &services, &report);
    assert_eq!(records.len(), 1);
    let config = ClientConfig {
        attempts: 1,
        ..ClientConfig::default()
    };
    let outcomes = push_all(&config, records).await;
    assert_eq!(outcomes.len(), 1);
    let warning = outcomes[0].as_ref().expect_err("nothing listens there");
    assert!(
        warning.starts_with(&format!(
            "warning: the deployment record for 127.0.0.1:{port}/shop@{D1} could not be pushed: "
        )),
        "{warning}"
    );
}
