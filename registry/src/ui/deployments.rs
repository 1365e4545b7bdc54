//! "Running on": where an image runs, by the deployment records that refer to it (see
//! `berth_oci::deployment`): for each (app, inventory, host or Swarm service) the newest
//! record decides, and the image is shown as running there when that record says `ok`.

use std::time::{Duration, SystemTime};

use berth_oci::deployment::{self, Placement, Record, Target, ARTIFACT_TYPE, MAX_RECORD_BYTES};
use berth_storage::{Descriptor, Digest, Storage};
use maud::{html, Markup};

/// Records read per page at most, newest first (by their `created` annotation): a deploy
/// pipeline that records every few minutes must not make the page read thousands.
const MAX_RECORDS_READ: usize = 200;

/// Where the subject of `referrers` runs. Records that cannot be read are skipped.
pub async fn placements(
    s: &dyn Storage,
    repository: &str,
    subject: &Digest,
    referrers: &[Descriptor],
) -> Vec<Placement> {
    let created = |d: &Descriptor| {
        d.annotations
            .as_ref()
            .and_then(|a| a.get("org.opencontainers.image.created").cloned())
            .unwrap_or_default()
    };
    let mut candidates: Vec<&Descriptor> = referrers
        .iter()
        .filter(|d| d.artifact_type.as_deref() == Some(ARTIFACT_TYPE))
        .collect();
    candidates.sort_by_key(|d| std::cmp::Reverse(created(d)));
    candidates.truncate(MAX_RECORDS_READ);
    let mut records = Vec::new();
    for d in candidates {
        if let Some(record) = load_record(s, repository, &d.digest).await {
            if record.digest == subject.to_string() {
                records.push(record);
            }
        }
    }
    deployment::running(&records)
}

/// The record a deployment artifact carries as its one layer, if it is readable.
async fn load_record(s: &dyn Storage, repository: &str, artifact: &Digest) -> Option<Record> {
    let (_, json, _) = super::summary::load_manifest(s, repository, artifact)
        .await
        .ok()??;
    let layer = json.get("layers")?.get(0)?;
    if layer.get("mediaType")?.as_str()? != ARTIFACT_TYPE
        || layer.get("size")?.as_u64()? > MAX_RECORD_BYTES
    {
        return None;
    }
    let digest: Digest = layer.get("digest")?.as_str()?.parse().ok()?;
    if !s.blob_linked(repository, &digest).await.ok()? {
        return None;
    }
    let bytes = s.blob_bytes(&digest).await.ok()??;
    serde_json::from_slice(&bytes).ok()
}

/// "3 h ago", coarse on purpose.
fn ago(now: SystemTime, time: &str) -> String {
    let Ok(then) = humantime::parse_rfc3339(time) else {
        return time.to_string();
    };
    let secs = now.duration_since(then).unwrap_or(Duration::ZERO).as_secs();
    match secs {
        0..=59 => "just now".into(),
        60..=3599 => format!("{} min ago", secs / 60),
        3600..=86_399 => format!("{} h ago", secs / 3600),
        _ => format!("{} d ago", secs / 86_400),
    }
}

fn target_name(target: &Target) -> String {
    match target {
        Target::Host(host) => host.clone(),
        Target::SwarmService(service) => format!("service {service}"),
    }
}

/// The "Running on" section: one line per (app, inventory), its hosts or services, and when
/// and by whom the newest of them was deployed. Nothing when the image runs nowhere.
pub fn section(placements: &[Placement], now: SystemTime) -> Markup {
    let mut groups: Vec<(&str, &str, Vec<&Placement>)> = Vec::new();
    for p in placements {
        match groups.last_mut() {
            Some((app, inventory, list)) if *app == p.app && *inventory == p.inventory => {
                list.push(p)
            }
            _ => groups.push((&p.app, &p.inventory, vec![p])),
        }
    }
    html! {
        @if !groups.is_empty() {
            section.running aria-labelledby="running-on" {
                h2 #running-on { "Running on" }
                ul.plain { @for (app, inventory, list) in &groups {
                    @let newest = list.iter().max_by(|a, b| a.time.cmp(&b.time));
                    li {
                        strong { (list.iter().map(|p| target_name(&p.target)).collect::<Vec<_>>().join(", ")) }
                        " (" (app) ", " (inventory)
                        @if let Some(n) = newest {
                            ", deployed " time datetime=(n.time) title=(n.time) { (ago(now, &n.time)) }
                            " by " (n.who)
                        }
                        ")"
                    }
                } }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placement(app: &str, host: &str, time: &str) -> Placement {
        Placement {
            app: app.into(),
            inventory: "prod".into(),
            target: Target::Host(host.into()),
            services: vec!["web".into()],
            time: time.into(),
            who: "<b>ci</b>".into(),
        }
    }

    #[test]
    fn hosts_of_one_app_share_a_line_with_the_newest_time() {
        let now = humantime::parse_rfc3339("2026-01-01T12:00:00Z").expect("time");
        let text = section(
            &[
                placement("shop", "h1", "2026-01-01T10:00:00.000Z"),
                placement("shop", "h2", "2026-01-01T09:00:00.000Z"),
                placement("zoo", "h3", "2026-01-01T11:59:30.000Z"),
            ],
            now,
        )
        .into_string();
        assert!(text.contains("Running on"), "{text}");
        assert!(
            text.contains("<strong>h1, h2</strong> (shop, prod, deployed "),
            "{text}"
        );
        assert!(text.contains(">2 h ago</time>"), "{text}");
        assert!(text.contains(">just now</time>"), "{text}");
        assert!(text.contains("by &lt;b&gt;ci&lt;/b&gt;"), "escaped: {text}");
    }

    #[test]
    fn nothing_running_shows_nothing() {
        assert!(section(&[], SystemTime::now()).into_string().is_empty());
    }
}
