//! What `berth serve` runs in the background: expiring abandoned uploads
//! and, when asked, periodic garbage collection.

use std::sync::Arc;
use std::time::Duration;

use crate::config::Settings;

/// Start the background tasks the settings ask for. Read-only: the
/// server's own deletions (expiry, GC) stay off too.
pub fn spawn(settings: &Settings, storage: Arc<dyn berth_storage::Storage>) {
    if settings.read_only {
        tracing::warn!("read-only mode: pulls work, every write is refused with 405; upload expiry and GC are off");
    } else {
        tokio::spawn(purge_abandoned_uploads(
            storage.clone(),
            settings.limits.upload_expiry,
        ));
    }
    if let Some(every) = settings.gc_interval.filter(|_| !settings.read_only) {
        tokio::spawn(collect_garbage_periodically(
            storage,
            every,
            settings.gc_grace,
        ));
    }
}

/// Upload sessions untouched for `max_age` are abandoned pushes.
async fn purge_abandoned_uploads(storage: Arc<dyn berth_storage::Storage>, max_age: Duration) {
    // Hourly, or more often when sessions expire sooner than that.
    let mut every = tokio::time::interval(
        (max_age / 4).clamp(Duration::from_secs(1), Duration::from_secs(3600)),
    );
    loop {
        every.tick().await;
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
) {
    let mut ticks = tokio::time::interval(every);
    ticks.tick().await; // the first tick is immediate: wait one interval first
    loop {
        ticks.tick().await;
        match storage.collect_garbage(grace, false).await {
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
