//! What `berth serve` runs in the background: expiring abandoned uploads,
//! when asked periodic garbage collection and retention, writing noted pull
//! times, and the config reload on SIGHUP.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use berth_registry::immutable::ImmutableTags;
use berth_registry::metrics::Metrics;
use berth_registry::ops::{ReadOnly, Reloadable};
use berth_registry::pulls::PullLog;
use berth_registry::quota::Quotas;
use berth_registry::retention::RetentionPolicies;

use crate::config::Settings;

/// Start the background tasks the settings ask for. While read-only (at start, or after a
/// SIGHUP turned it on) the server's own deletions (expiry, GC) skip their turns.
pub fn spawn(
    settings: &Settings,
    storage: Arc<dyn berth_storage::Storage>,
    read_only: ReadOnly,
    metrics: Option<Metrics>,
) {
    if settings.read_only {
        tracing::warn!("read-only mode: pulls work, every write is refused with 405; upload expiry and GC are off");
    }
    tokio::spawn(purge_abandoned_uploads(
        storage.clone(),
        settings.limits.upload_expiry,
        read_only.clone(),
    ));
    if let Some(every) = settings.gc_interval {
        tokio::spawn(collect_garbage_periodically(
            storage.clone(),
            every,
            settings.gc_grace,
            read_only.clone(),
            metrics.clone(),
        ));
    }
    for job in &settings.sync_jobs.jobs {
        tokio::spawn(run_sync_job(
            job.clone(),
            storage.clone(),
            read_only.clone(),
            metrics.clone(),
        ));
    }
}

/// A `[[sync]]` job: a run at start, then one `interval` after each run ends (a long run is
/// not stacked); a log line per run; skipped while read-only.
async fn run_sync_job(
    job: Arc<berth_registry::sync_jobs::SyncJob>,
    storage: Arc<dyn berth_storage::Storage>,
    read_only: ReadOnly,
    metrics: Option<Metrics>,
) {
    loop {
        if !read_only.is_on() {
            let started = std::time::Instant::now();
            let outcome = job.run_once(storage.clone()).await;
            if let Some(m) = &metrics {
                m.record_sync(
                    outcome
                        .as_ref()
                        .ok()
                        .map(|s| (s.copied, s.skipped, s.failed)),
                );
            }
            match outcome {
                Ok(s) => tracing::info!(
                    source = %job.source_url,
                    repositories = s.repositories,
                    copied = s.copied,
                    skipped = s.skipped,
                    failed = s.failed,
                    bytes = s.bytes_copied,
                    seconds = started.elapsed().as_secs_f64(),
                    "sync run"
                ),
                Err(e) => tracing::warn!(source = %job.source_url, error = %e, "sync run failed"),
            }
        }
        tokio::time::sleep(job.interval).await;
    }
}

/// What a scheduled retention run needs besides the storage.
pub struct RetentionJob {
    pub policies: Reloadable<RetentionPolicies>,
    pub immutable: Reloadable<ImmutableTags>,
    pub every: Duration,
    pub grace: Duration,
}

/// Write noted pulls every `every` (skipped while read-only: they wait in memory).
pub fn spawn_pull_flushes(
    storage: Arc<dyn berth_storage::Storage>,
    pulls: PullLog,
    every: Duration,
    read_only: ReadOnly,
) {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            if read_only.is_on() {
                continue;
            }
            flush_pulls(storage.as_ref(), &pulls).await;
        }
    });
}

/// What the mirrors' eviction needs besides the storage.
pub struct Eviction {
    pub mirrors: Arc<berth_registry::mirror::Mirrors>,
    pub pulls: PullLog,
    pub every: Duration,
    pub grace: Duration,
}

/// Every `job.every`, write the noted pulls (they order the eviction), then evict the
/// least recently used content of each mirror beyond its `max_size` (skipped while
/// read-only).
pub fn spawn_mirror_eviction(
    storage: Arc<dyn berth_storage::Storage>,
    job: Eviction,
    read_only: ReadOnly,
) {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(job.every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            if read_only.is_on() {
                continue;
            }
            flush_pulls(storage.as_ref(), &job.pulls).await;
            if let Err(e) = job.mirrors.evict(storage.as_ref(), job.grace).await {
                tracing::warn!(error = %e, "mirror: eviction failed; tried again next time");
            }
        }
    });
}

/// Write the noted pulls now (also at shutdown, so a clean stop loses none).
pub async fn flush_pulls(storage: &dyn berth_storage::Storage, pulls: &PullLog) {
    match pulls.flush(storage).await {
        Ok(0) => {}
        Ok(n) => tracing::debug!(digests = n, "pull times written"),
        Err(e) => tracing::warn!(error = %e, "could not write pull times; kept for the next flush"),
    }
}

/// Run the `[[retention]]` policies every `job.every`, beside GC, skipping
/// turns while read-only.
pub fn spawn_retention(
    storage: Arc<dyn berth_storage::Storage>,
    job: RetentionJob,
    read_only: ReadOnly,
    metrics: Option<Metrics>,
) {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(job.every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await; // the first tick is immediate: wait one interval first
        loop {
            ticks.tick().await;
            if read_only.is_on() {
                continue;
            }
            let started = std::time::Instant::now();
            let outcome = berth_registry::retention::run(
                storage.as_ref(),
                &job.policies.current(),
                &job.immutable.current(),
                job.grace,
                false,
            )
            .await;
            if let Some(m) = &metrics {
                m.record_retention(started.elapsed(), outcome.as_ref().map_err(|_| ()));
            }
            match outcome {
                Ok(r) => tracing::info!(
                    tags = r.tags_removed,
                    manifests = r.manifests_removed,
                    skipped = r.skipped.len(),
                    "retention applied"
                ),
                Err(e) => tracing::warn!(error = %e, "retention failed"),
            }
        }
    });
}

/// Upload sessions untouched for `max_age` are abandoned pushes.
async fn purge_abandoned_uploads(
    storage: Arc<dyn berth_storage::Storage>,
    max_age: Duration,
    read_only: ReadOnly,
) {
    // Hourly, or more often when sessions expire sooner than that.
    let mut every = tokio::time::interval(
        (max_age / 4).clamp(Duration::from_secs(1), Duration::from_secs(3600)),
    );
    loop {
        every.tick().await;
        if read_only.is_on() {
            continue;
        }
        match storage.purge_uploads(max_age).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(sessions = n, "purged abandoned upload sessions"),
            Err(e) => tracing::warn!(error = %e, "could not purge abandoned uploads"),
        }
    }
}

async fn collect_garbage_periodically(
    storage: Arc<dyn berth_storage::Storage>,
    every: Duration,
    grace: Duration,
    read_only: ReadOnly,
    metrics: Option<Metrics>,
) {
    let mut ticks = tokio::time::interval(every);
    // A collection that outlasts the interval (a big bucket, a loaded machine) is followed by
    // a whole interval, not by the ticks it missed run back to back.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await; // the first tick is immediate: wait one interval first
    loop {
        ticks.tick().await;
        if read_only.is_on() {
            continue;
        }
        let started = std::time::Instant::now();
        let outcome = storage.collect_garbage(grace, false).await;
        if let Some(m) = &metrics {
            m.record_gc(started.elapsed(), outcome.as_ref().map_err(|_| ()));
        }
        match outcome {
            Ok(r) => tracing::info!(
                links = r.links_removed,
                blobs = r.blobs_removed,
                bytes = r.bytes_freed,
                "garbage collected"
            ),
            Err(e) => tracing::warn!(error = %e, "garbage collection failed"),
        }
    }
}

/// The rules a SIGHUP replaces, shared with the router and the schedule.
pub struct ReloadTargets {
    pub read_only: ReadOnly,
    /// `--read-only` on the command line: read-only stays on whatever the file says.
    pub read_only_flag: bool,
    pub immutable: Reloadable<ImmutableTags>,
    pub quotas: Reloadable<Quotas>,
    pub retention: Reloadable<RetentionPolicies>,
}

/// SIGHUP re-reads the config file and puts in force `[storage] read_only`, `[[immutable]]`,
/// `[[quota]]` and `[[retention]]`; every other key needs a restart. A file that no longer
/// parses (or whose rules do not compile) changes nothing.
pub fn reload_on_sighup(config: Option<PathBuf>, targets: ReloadTargets) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGHUP: the config cannot be reloaded");
            return;
        }
    };
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            let Some(path) = &config else {
                tracing::warn!("SIGHUP: no --config file to reload; nothing changed");
                continue;
            };
            match crate::config::reloadable_in_file(path) {
                Ok(new) => {
                    let on = targets.read_only_flag || new.read_only;
                    let was = targets.read_only.is_on();
                    targets.read_only.set(on);
                    targets.immutable.replace(new.immutable);
                    targets.quotas.replace(new.quotas);
                    targets.retention.replace(new.retention);
                    tracing::warn!(read_only = on, was, config = %path.display(), "SIGHUP: reloaded [storage] read_only, [[immutable]], [[quota]] and [[retention]] (restart for the other keys)");
                }
                Err(e) => {
                    tracing::error!(
                        error = format!("{e:#}"),
                        "SIGHUP: config not reloaded; the rules in force stay (read_only {})",
                        targets.read_only.is_on()
                    );
                }
            }
        }
    });
}
