//! The upload worker: uploads, verifies and deletes replicas, region by region,
//! with capped backoff; catches up after a restart.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::backup::store::{LocalStore, StoredBackup};
use crate::backup::{BackupJob, JOBS};
use crate::ids::unix_now;
use crate::storage::{Storage, StorageError};
pub use store::StoreError;

use super::*;

/// Capped exponential backoff with jitter: attempt 1 waits about `base`,
/// each further one doubles, never beyond `cap`; the wait is drawn from
/// [half, all] of that so that regions coming back are not hit in lockstep.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Backoff {
    pub fn delay(&self, attempts: u32) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << attempts.saturating_sub(1).min(20))
            .min(self.cap);
        let jitter = crate::crypto::random_bytes::<2>()
            .map(|b| u16::from_le_bytes(b) as f64 / u16::MAX as f64)
            .unwrap_or(1.0);
        exp.mul_f64(0.5 + 0.5 * jitter)
    }
}

/// The background task that uploads, verifies and deletes replicas.
pub struct Replicator {
    pub replication: Arc<Replication>,
    pub storage: Arc<Storage>,
    pub spool: LocalStore,
    /// At most this many (backup, region) transfers at once.
    pub parallel: usize,
    pub retention_sweep: Duration,
}

impl Replicator {
    /// Runs until `stop`; then waits for the uploads in flight to end.
    pub async fn run(self, stop: crate::tasks::Stop) {
        let this = Arc::new(self);
        let permits = Arc::new(tokio::sync::Semaphore::new(this.parallel.max(1)));
        let mut last_sweep = std::time::Instant::now() - this.retention_sweep;
        let mut last_lag_log = std::time::Instant::now();
        loop {
            if last_sweep.elapsed() >= this.retention_sweep {
                last_sweep = std::time::Instant::now();
                let (storage, replication) = (this.storage.clone(), this.replication.clone());
                let swept = crate::tasks::blocking(move || replication.sweep_retention(&storage))
                    .await
                    .unwrap_or(0);
                if swept > 0 {
                    tracing::info!(backups = swept, "retention ended: backups tombstoned");
                }
            }
            let replicas = this.replication.unfinished(&this.storage);
            let now = now_ms();
            let mut next_due: Option<u64> = None;
            for replica in replicas {
                if replica.state == ReplicaState::Verified {
                    continue;
                }
                if replica.next_attempt_ms > now {
                    next_due = Some(
                        next_due
                            .map_or(replica.next_attempt_ms, |d| d.min(replica.next_attempt_ms)),
                    );
                    continue;
                }
                let key = replica.key();
                if !this
                    .replication
                    .in_flight
                    .lock()
                    .expect("in-flight set")
                    .insert(key.clone())
                {
                    continue;
                }
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    return;
                };
                let worker = this.clone();
                tokio::spawn(async move {
                    worker.step(replica).await;
                    worker
                        .replication
                        .in_flight
                        .lock()
                        .expect("in-flight set")
                        .remove(&key);
                    drop(permit);
                    worker.replication.wake.notify_one();
                });
            }
            if last_lag_log.elapsed() >= Duration::from_secs(60) {
                last_lag_log = std::time::Instant::now();
                for lag in this.replication.lag(&this.storage) {
                    if lag.behind > 0 {
                        tracing::warn!(region = %lag.region, behind = lag.behind, lag_seconds = lag.lag_seconds, "replication lag");
                    }
                }
            }
            let wait = next_due
                .map(|due| Duration::from_millis(due.saturating_sub(now_ms())))
                .unwrap_or(Duration::from_secs(5))
                .clamp(Duration::from_millis(20), Duration::from_secs(5))
                .min(this.retention_sweep);
            tokio::select! {
                _ = stop.cancelled() => {
                    let all = this.parallel.max(1) as u32;
                    let _ = permits.acquire_many(all).await;
                    return;
                }
                _ = this.replication.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// One attempt at moving a replica forward; records the outcome.
    async fn step(&self, replica: Replica) {
        use tracing::Instrument;
        // Instrumented, not entered: an entered span's guard held across an
        // await leaks into whatever else the thread runs meanwhile (and
        // tracing panics when such a span is closed under another task).
        let span = tracing::info_span!("replica", tenant_id = %replica.tenant, backup_id = %replica.backup, region = %replica.region);
        self.step_in_span(replica).instrument(span).await
    }

    async fn step_in_span(&self, mut replica: Replica) {
        let outcome = match replica.state {
            ReplicaState::Deleting => self.delete(&replica).await.map(|()| None),
            _ => self.replicate(&mut replica).await.map(Some),
        };
        match outcome {
            Ok(Some(())) => {
                replica.state = ReplicaState::Verified;
                replica.verified_at = Some(unix_now());
                replica.last_error = None;
                if let Err(error) = self.save(&replica) {
                    tracing::error!(%error, "record replica state");
                    return;
                }
                tracing::debug!(attempts = replica.attempts, "replica verified");
                self.replication.announce_verified();
                self.drop_spool_when_everywhere(&replica).await;
            }
            Ok(None) => {
                let _ = REPLICAS.remove(&self.storage.catalog, &replica.key());
                tracing::info!(
                    reason = replica.deleting_because.as_deref().unwrap_or(""),
                    "replica deleted"
                );
                self.finish_tombstone(&replica).await;
            }
            Err(error) => {
                replica.attempts += 1;
                crate::metrics::replication_failure(replica.region.as_str());
                if replica.state != ReplicaState::Deleting {
                    replica.state = ReplicaState::Failed;
                }
                let delay = self.replication.backoff.delay(replica.attempts);
                replica.next_attempt_ms = now_ms() + delay.as_millis() as u64;
                replica.last_error = Some(error.to_string());
                tracing::warn!(%error, attempts = replica.attempts, retry_in_ms = delay.as_millis() as u64, lag_seconds = unix_now().saturating_sub(replica.since), "replica attempt failed");
                if let Err(error) = self.save(&replica) {
                    tracing::error!(%error, "record replica state");
                }
            }
        }
    }

    fn save(&self, replica: &Replica) -> Result<(), StorageError> {
        match REPLICAS.get(&self.storage.catalog, &replica.key())? {
            // A tombstone set while this step ran wins over the step's outcome
            // (and the retention sweep re-tombstones anything that slips by).
            Some(current)
                if current.state == ReplicaState::Deleting
                    && replica.state != ReplicaState::Deleting =>
            {
                Ok(())
            }
            // Deleted meanwhile: nothing to record.
            None => Ok(()),
            Some(_) => put_replica(&self.storage, replica),
        }
    }

    /// Upload (unless a matching object is there) and verify.
    async fn replicate(&self, replica: &mut Replica) -> Result<(), StoreError> {
        let region = self
            .replication
            .region(replica.region.as_str())
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let (tenant, backup) = (replica.tenant.as_str(), replica.backup.as_str());
        let expected = self
            .spool
            .get(tenant, backup)
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let expected = match expected {
            Some(stored) => stored,
            // The spool copy went after every region verified it; verify
            // against the manifest that regions hold.
            None => self.any_manifest(tenant, backup).await.ok_or_else(|| {
                StoreError::Unavailable("no copy of this backup left to replicate from".into())
            })?,
        };
        let manifest_bytes = Bytes::from(serde_json::to_vec_pretty(&expected).expect("serialises"));
        let archive = region.archive_path(tenant, backup);
        let manifest = region.manifest_path(tenant, backup);
        let spooled = self.spool.archive_path(tenant, backup);
        // A replica this process registered, on its first try, to a store
        // that checks each PUT's SHA-256 on receipt: nothing of its name can
        // exist yet, so it is written without looking first, and what the
        // store accepted is what was sent (for a single PUT, bytes whose
        // SHA-256 is the one the sealing recorded), so it counts as verified
        // without reading anything back: two requests and one catalog write
        // instead of six and two — the round trip `replicated` writes wait for.
        let fresh = self.replication.take_fresh(replica);
        if fresh && region.checks_on_receipt && replica.state == ReplicaState::Pending {
            let sent = region.upload_file(&archive, &spooled).await?;
            check_sent(sent, &expected)?;
            region.put_small(&manifest, manifest_bytes).await?;
            replica.replicated_at = Some(unix_now());
            tracing::info!(by = "checksum on receipt, first upload", "replica checked");
            return Ok(());
        }
        // Whether this step uploaded the archive to a store that checked it
        // on receipt.
        let mut checked_on_receipt = false;
        if replica.state != ReplicaState::Replicated {
            match region.size(&archive).await? {
                Some(size) if size == expected.archive_size => {
                    // Written before a restart; the read-back below decides.
                }
                Some(size) => {
                    return Err(StoreError::Conflict(format!(
                        "{archive} exists with {size} bytes, not {}: refusing to overwrite",
                        expected.archive_size
                    )))
                }
                None => {
                    let sent = region.upload_file(&archive, &spooled).await?;
                    check_sent(sent, &expected)?;
                    checked_on_receipt = region.checks_on_receipt;
                }
            }
            match region.get_bytes(&manifest).await {
                Ok(found) if found == manifest_bytes => {}
                Ok(_) => {
                    return Err(StoreError::Conflict(format!(
                        "{manifest} exists and differs: refusing to overwrite"
                    )))
                }
                Err(StoreError::NotFound) => {
                    region.put_small(&manifest, manifest_bytes.clone()).await?
                }
                Err(other) => return Err(other),
            }
            replica.state = ReplicaState::Replicated;
            replica.replicated_at = Some(unix_now());
            self.save(replica)
                .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        }
        // Verify. A store that checked every part's SHA-256 on receipt
        // (S3, Garage) holds what this step sent, and what was sent is the
        // spool's archive, whose SHA-256 the sealing recorded; the size must
        // still agree. Otherwise (directories, other stores, an object from
        // before a restart) read it back and hash it.
        let by_checksum =
            checked_on_receipt && region.size(&archive).await? == Some(expected.archive_size);
        if !by_checksum {
            let (size, sha256) = region.digest(&archive).await?;
            if size != expected.archive_size || sha256 != expected.archive_sha256 {
                return Err(StoreError::Conflict(format!(
                    "{archive} does not match its manifest (size {size}, sha256 {sha256})"
                )));
            }
        }
        tracing::info!(
            by = if by_checksum {
                "checksum on receipt"
            } else {
                "read-back"
            },
            "replica checked"
        );
        if region.get_bytes(&manifest).await? != manifest_bytes {
            return Err(StoreError::Conflict(format!("{manifest} was altered")));
        }
        Ok(())
    }

    async fn any_manifest(&self, tenant: &str, backup: &str) -> Option<StoredBackup> {
        for region in &self.replication.regions {
            if let Ok(Some(stored)) = region.manifest(tenant, backup).await {
                return Some(stored);
            }
        }
        None
    }

    /// Manifest first (the backup stops existing), then the data.
    async fn delete(&self, replica: &Replica) -> Result<(), StoreError> {
        let region = self
            .replication
            .region(replica.region.as_str())
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let (tenant, backup) = (replica.tenant.as_str(), replica.backup.as_str());
        region.delete(&region.manifest_path(tenant, backup)).await?;
        region.delete(&region.archive_path(tenant, backup)).await?;
        Ok(())
    }

    async fn drop_spool_when_everywhere(&self, replica: &Replica) {
        let all = self.replication.replicas_of(&self.storage, &replica.backup);
        if all.len() == self.replication.regions.len()
            && all.iter().all(|r| r.state == ReplicaState::Verified)
        {
            self.spool.remove(replica.tenant.as_str(), &replica.backup);
            tracing::info!("verified in every region; spool copy removed");
        }
    }

    async fn finish_tombstone(&self, replica: &Replica) {
        if !self
            .replication
            .replicas_of(&self.storage, &replica.backup)
            .is_empty()
        {
            return;
        }
        self.spool.remove(replica.tenant.as_str(), &replica.backup);
        let _ = JOBS.remove(&self.storage.catalog, &replica.backup);
        tracing::info!(
            reason = replica.deleting_because.as_deref().unwrap_or(""),
            "every copy of the backup is gone"
        );
        let jobs: Vec<BackupJob> = JOBS.all(&self.storage.catalog).unwrap_or_default();
        if replica.deleting_because.as_deref() == Some("erased")
            && !jobs.iter().any(|j| j.tenant == replica.tenant)
        {
            tracing::info!("every backup copy of the tenant is erased");
        }
    }
}

/// What an upload sent agrees with the manifest sealed with it: its size,
/// and its SHA-256 where the upload computed one (a single PUT).
fn check_sent(
    (size, sha256): (u64, Option<String>),
    expected: &StoredBackup,
) -> Result<(), StoreError> {
    if size != expected.archive_size {
        return Err(StoreError::Conflict(format!(
            "the spooled archive has {size} bytes, its manifest says {}",
            expected.archive_size
        )));
    }
    match sha256 {
        Some(sha256) if sha256 != expected.archive_sha256 => Err(StoreError::Conflict(format!(
            "the spooled archive's SHA-256 is {sha256}, its manifest says {}",
            expected.archive_sha256
        ))),
        _ => Ok(()),
    }
}
