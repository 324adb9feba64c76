//! The checkpoint shipper: signs the audit log's checkpoints while entries
//! arrive and writes each one to every backup region (write-once names), so
//! that a host-local rewrite of the log is caught against the copies. It
//! joins two rooms (`audit`, `replication`), so it lives here.

use std::sync::Arc;

use crate::audit::{checkpoint_name, region_checkpoint_dir, AuditLog};
use crate::replication::{Replication, StoreError};

/// Signs a checkpoint every `interval` while entries arrive, and writes each
/// one to every backup region (write-once names); copies that fail are
/// retried on the next tick.
pub async fn run_checkpointer(
    log: Arc<AuditLog>,
    replication: Arc<Replication>,
    interval: std::time::Duration,
    stop: crate::tasks::Stop,
) {
    // The newest checkpoint goes out again at start (a crash may have kept it
    // from a region); a copy already there is left as it is.
    let mut unshipped: Vec<(u64, String, Vec<String>)> = log
        .latest_checkpoint()
        .map(|(size, note)| {
            let regions = replication
                .regions
                .iter()
                .map(|r| r.name.to_string())
                .collect();
            (size, note, regions)
        })
        .into_iter()
        .collect();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let signer = log.clone();
        match crate::tasks::blocking(move || signer.checkpoint()).await {
            Ok(Ok(Some((size, note)))) => {
                let regions = replication
                    .regions
                    .iter()
                    .map(|r| r.name.to_string())
                    .collect();
                unshipped.push((size, note, regions));
            }
            Ok(Ok(None)) => {}
            Ok(Err(error)) => tracing::error!(%error, "sign audit checkpoint"),
            Err(error) => tracing::error!(%error, "audit checkpoint task"),
        }
        ship(&log, &replication, &mut unshipped).await;
    }
}

/// Writes checkpoints to the regions that do not have them yet.
pub async fn ship(
    log: &AuditLog,
    replication: &Replication,
    unshipped: &mut Vec<(u64, String, Vec<String>)>,
) {
    let dir = region_checkpoint_dir(log.origin());
    for (size, note, regions) in unshipped.iter_mut() {
        let name = checkpoint_name(*size);
        let mut parts: Vec<&str> = dir.iter().map(String::as_str).collect();
        parts.push(&name);
        let mut left = Vec::new();
        for region in regions.drain(..) {
            let Ok(store) = replication.region(&region) else {
                continue;
            };
            let path = store.path(&parts);
            match store
                .put_small(&path, bytes::Bytes::from(note.clone()))
                .await
            {
                Ok(()) => {}
                Err(StoreError::Conflict(_)) => {
                    // Already there (a retry after a lost answer): keep it if it is ours.
                    if store.get_bytes(&path).await.ok().as_deref() != Some(note.as_bytes()) {
                        tracing::error!(%region, size = *size, "a different checkpoint is stored under this name");
                    }
                }
                Err(error) => {
                    tracing::warn!(%region, size = *size, %error, "copy audit checkpoint to region; will retry");
                    left.push(region);
                }
            }
        }
        *regions = left;
    }
    unshipped.retain(|(_, _, regions)| !regions.is_empty());
}
