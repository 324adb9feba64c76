//! Cross-region replication of sealed backups, retention and erasure.
//!
//! A backup is first sealed into the host's spool (`backup::store`). For each
//! backup region a *replica* record in the catalog (tree `replicas`, key
//! `<backup>/<region>`) then walks
//!
//! ```text
//! pending ──upload──▶ replicated ──checksums match──▶ verified
//!    ▲                                                          
//!    └── failed (last error, attempts, next attempt) ◀── any error
//! ```
//!
//! The [`Replicator`] task drives every replica that is not verified: it
//! uploads the archive (data first, manifest last), checks both against the
//! spool's manifest — the archive by the ETag the store computed on receipt
//! when it is the MD5 of what we sent (S3, Garage), else by reading it back and
//! hashing it; the manifest is always read back — and on any error records `failed`
//! and retries after a capped exponential backoff with jitter. Records live in
//! the catalog, so a restart resumes where the host stopped; an interrupted
//! multipart upload is never visible as an object, and a complete object from
//! before a crash is recognised by size and hash instead of being rewritten.
//! Regions are independent: one that is down holds up nobody else.
//!
//! Write-once without help from the store: names carry the backup id (random,
//! never reused); an upload first looks for an existing object and refuses to
//! replace one that differs; verification catches an object replaced later.
//! Create-only PUTs are requested where the store honours them (AWS S3,
//! directories); Garage does not.
//!
//! Deletion is a *tombstone*: a replica set to `deleting` is retried like an
//! upload until its objects are gone, so a region that was down during a
//! retention sweep or an erasure loses its copy when it returns. The spool
//! copy goes once every region holds the backup, and with the last tombstone.
//!
//! Over 800 lines because replica records, retention, the lag report and the
//! upload worker still share it; their split is the open part of the
//! structure work.

pub mod store;

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::backup::store::{LocalStore, StoredBackup};
use crate::backup::{BackupJob, JobState, JOBS};
use crate::ids::{rfc3339, unix_now, Region, TenantId};
use crate::storage::{Kind, Storage, StorageError};
pub use store::{RegionStore, StoreError};

pub const REPLICAS: Kind<Replica> = Kind::new("replicas");
/// Keys of the replicas with work left (not verified): what the replicator
/// and the lag report walk, so their cost does not grow with every backup
/// ever verified.
pub const DUE: Kind<bool> = Kind::new("replicas_due");
/// Tenants whose backups an operator erased: backups finishing later are
/// erased too (key: tenant id).
pub const ERASED: Kind<u64> = Kind::new("erased_tenants");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplicaState {
    Pending,
    Replicated,
    Verified,
    Failed,
    /// Tombstoned: the region's objects are being deleted.
    Deleting,
}

impl ReplicaState {
    pub fn as_str(self) -> &'static str {
        match self {
            ReplicaState::Pending => "pending",
            ReplicaState::Replicated => "replicated",
            ReplicaState::Verified => "verified",
            ReplicaState::Failed => "failed",
            ReplicaState::Deleting => "deleting",
        }
    }
}

/// One backup in one region.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Replica {
    pub backup: String,
    pub tenant: TenantId,
    pub region: Region,
    pub state: ReplicaState,
    /// When the backup was taken (replication lag counts from here).
    pub since: u64,
    #[serde(default)]
    pub attempts: u32,
    #[serde(default)]
    pub last_error: Option<String>,
    /// Unix milliseconds before which the replicator leaves it alone.
    #[serde(default)]
    pub next_attempt_ms: u64,
    #[serde(default)]
    pub replicated_at: Option<u64>,
    #[serde(default)]
    pub verified_at: Option<u64>,
    /// Why it is being deleted (`retention`, `erased`).
    #[serde(default)]
    pub deleting_because: Option<String>,
}

impl Replica {
    fn key(&self) -> String {
        replica_key(&self.backup, &self.region)
    }

    pub fn to_json(&self) -> serde_json::Value {
        let mut body =
            serde_json::json!({ "state": self.state.as_str(), "attempts": self.attempts });
        if let Some(error) = &self.last_error {
            body["error"] = error.clone().into();
        }
        if let Some(at) = self.replicated_at {
            body["replicated_at"] = rfc3339(at).into();
        }
        if let Some(at) = self.verified_at {
            body["verified_at"] = rfc3339(at).into();
        }
        if self.state == ReplicaState::Failed {
            body["next_attempt_at"] = rfc3339(self.next_attempt_ms / 1000).into();
        }
        if let Some(why) = &self.deleting_because {
            body["deleting_because"] = why.clone().into();
        }
        body
    }
}

/// Stores a replica's state, and whether it still has work left.
fn put_replica(storage: &Storage, replica: &Replica) -> Result<(), StorageError> {
    REPLICAS.put(&storage.catalog, &replica.key(), replica)?;
    if replica.state == ReplicaState::Verified {
        DUE.remove(&storage.catalog, &replica.key())
    } else {
        DUE.put(&storage.catalog, &replica.key(), &true)
    }
}

fn replica_key(backup: &str, region: &Region) -> String {
    format!("{backup}/{}", region.as_str())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

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

/// The backup regions of this host and the replication state machine.
pub struct Replication {
    pub regions: Vec<RegionStore>,
    backoff: Backoff,
    runtime: tokio::runtime::Handle,
    wake: tokio::sync::Notify,
    in_flight: Mutex<HashSet<String>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    #[error("no backup region {0:?} on this host")]
    UnknownRegion(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl Replication {
    pub fn new(
        regions: Vec<RegionStore>,
        backoff: Backoff,
        runtime: tokio::runtime::Handle,
    ) -> Replication {
        Replication {
            regions,
            backoff,
            runtime,
            wake: tokio::sync::Notify::new(),
            in_flight: Mutex::new(HashSet::new()),
        }
    }

    pub fn region(&self, name: &str) -> Result<&RegionStore, ReplicationError> {
        self.regions
            .iter()
            .find(|r| r.name.as_str() == name)
            .ok_or_else(|| ReplicationError::UnknownRegion(name.to_string()))
    }

    /// Runs a future on the host's runtime from a blocking thread.
    pub fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    /// A backup sealed into the spool: one pending replica per region.
    pub fn register(&self, storage: &Storage, stored: &StoredBackup) -> Result<(), StorageError> {
        let tenant = TenantId::parse(&stored.tenant_id)
            .ok_or_else(|| StorageError::Damaged("backup of a malformed tenant id".into()))?;
        let erased = ERASED.get(&storage.catalog, tenant.as_str())?.is_some();
        for region in &self.regions {
            let replica = Replica {
                backup: stored.backup_id.clone(),
                tenant: tenant.clone(),
                region: region.name.clone(),
                state: if erased {
                    ReplicaState::Deleting
                } else {
                    ReplicaState::Pending
                },
                since: stored.created_at,
                attempts: 0,
                last_error: None,
                next_attempt_ms: 0,
                replicated_at: None,
                verified_at: None,
                deleting_because: erased.then(|| "erased".to_string()),
            };
            put_replica(storage, &replica)?;
        }
        self.wake.notify_one();
        Ok(())
    }

    /// Replicas with work left: pending, replicated, failed or deleting.
    pub fn unfinished(&self, storage: &Storage) -> Vec<Replica> {
        DUE.keys(&storage.catalog)
            .unwrap_or_default()
            .iter()
            .filter_map(|key| REPLICAS.get(&storage.catalog, key).ok().flatten())
            .collect()
    }

    pub fn replicas_of(&self, storage: &Storage, backup: &str) -> Vec<Replica> {
        self.regions
            .iter()
            .filter_map(|r| {
                REPLICAS
                    .get(&storage.catalog, &replica_key(backup, &r.name))
                    .ok()
                    .flatten()
            })
            .collect()
    }

    /// Tombstones one backup in every region (retention or erasure).
    pub fn tombstone(
        &self,
        storage: &Storage,
        backup: &str,
        why: &str,
    ) -> Result<(), StorageError> {
        let mut replicas = self.replicas_of(storage, backup);
        if replicas.is_empty() {
            // Never registered (failed before the spool was complete): only
            // the job record and any spool leftovers remain.
            if let Some(job) = JOBS.get(&storage.catalog, backup)? {
                JOBS.remove(&storage.catalog, backup)?;
                tracing::info!(backup_id = backup, tenant_id = %job.tenant, reason = why, "backup record removed; no copies existed");
            }
            return Ok(());
        }
        for replica in &mut replicas {
            if replica.state == ReplicaState::Deleting {
                continue;
            }
            replica.state = ReplicaState::Deleting;
            replica.deleting_because = Some(why.to_string());
            replica.attempts = 0;
            replica.next_attempt_ms = 0;
            replica.last_error = None;
            put_replica(storage, replica)?;
        }
        self.wake.notify_one();
        Ok(())
    }

    /// Erases every backup of a tenant, everywhere, now and later.
    pub fn erase_tenant(
        &self,
        storage: &Storage,
        tenant: &TenantId,
    ) -> Result<usize, StorageError> {
        ERASED.put(&storage.catalog, tenant.as_str(), &unix_now())?;
        let jobs: Vec<BackupJob> = JOBS.all(&storage.catalog)?;
        let mut count = 0;
        for job in jobs.iter().filter(|j| &j.tenant == tenant) {
            self.tombstone(storage, &job.id, "erased")?;
            count += 1;
        }
        Ok(count)
    }

    /// Tombstones every backup whose retention has ended, and any of an
    /// erased tenant that is not being deleted yet. Returns how many.
    pub fn sweep_retention(&self, storage: &Storage) -> usize {
        let now = unix_now();
        let jobs: Vec<BackupJob> = JOBS.all(&storage.catalog).unwrap_or_default();
        let mut count = 0;
        for job in jobs {
            let erased = matches!(
                ERASED.get(&storage.catalog, job.tenant.as_str()),
                Ok(Some(_))
            );
            let expired = erased
                || match (&job.stored, job.state) {
                    (Some(stored), _) => stored.retain_until <= now,
                    (None, JobState::Failed) => job.created_at + 86_400 <= now,
                    _ => false,
                };
            if !expired {
                continue;
            }
            let live = self
                .replicas_of(storage, &job.id)
                .iter()
                .any(|r| r.state != ReplicaState::Deleting);
            if live || self.replicas_of(storage, &job.id).is_empty() {
                match self.tombstone(
                    storage,
                    &job.id,
                    if erased { "erased" } else { "retention" },
                ) {
                    Ok(()) => count += 1,
                    Err(error) => tracing::error!(backup_id = %job.id, %error, "tombstone"),
                }
            }
        }
        count
    }

    /// Per region: replicas not yet verified and the oldest of them.
    pub fn lag(&self, storage: &Storage) -> Vec<RegionLag> {
        let replicas = self.unfinished(storage);
        let now = unix_now();
        self.regions
            .iter()
            .map(|region| {
                let mine: Vec<&Replica> = replicas
                    .iter()
                    .filter(|r| {
                        r.region == region.name
                            && r.state != ReplicaState::Verified
                            && r.state != ReplicaState::Deleting
                    })
                    .collect();
                let oldest = mine.iter().map(|r| r.since).min();
                RegionLag {
                    region: region.name.clone(),
                    location: region.location.clone(),
                    behind: mine.len(),
                    failed: mine
                        .iter()
                        .filter(|r| r.state == ReplicaState::Failed)
                        .count(),
                    deleting: replicas
                        .iter()
                        .filter(|r| r.region == region.name && r.state == ReplicaState::Deleting)
                        .count(),
                    oldest_unreplicated: oldest,
                    lag_seconds: oldest.map(|t| now.saturating_sub(t)).unwrap_or(0),
                    last_error: mine.iter().filter_map(|r| r.last_error.clone()).next(),
                }
            })
            .collect()
    }

    /// Opens a backup's sealed archive in a region as a blocking reader.
    /// Call from a blocking thread.
    pub fn open_archive(
        &self,
        region: &str,
        tenant: &str,
        backup: &str,
    ) -> Result<(StoredBackup, impl std::io::Read), ReplicationError> {
        let store = self.region(region)?;
        let stored = self
            .block_on(store.manifest(tenant, backup))?
            .ok_or(StoreError::NotFound)?;
        let stream = self.block_on(store.stream(&store.archive_path(tenant, backup)))?;
        Ok((
            stored,
            StreamReader {
                runtime: self.runtime.clone(),
                stream,
                chunk: Bytes::new(),
            },
        ))
    }

    /// Published backups of a tenant in every region (for a host that does
    /// not know the tenant: disaster recovery). Regions that fail are skipped.
    pub fn list_everywhere(&self, tenant: &str) -> BTreeMap<String, (StoredBackup, Vec<Region>)> {
        let mut out: BTreeMap<String, (StoredBackup, Vec<Region>)> = BTreeMap::new();
        for region in &self.regions {
            match self.block_on(region.list(tenant)) {
                Ok(list) => {
                    for stored in list {
                        out.entry(stored.backup_id.clone())
                            .or_insert_with(|| (stored, Vec::new()))
                            .1
                            .push(region.name.clone());
                    }
                }
                Err(error) => {
                    tracing::warn!(region = %region.name, %error, "list backups in region")
                }
            }
        }
        out
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RegionLag {
    pub region: Region,
    pub location: String,
    /// Replicas not yet verified here.
    pub behind: usize,
    pub failed: usize,
    pub deleting: usize,
    pub oldest_unreplicated: Option<u64>,
    pub lag_seconds: u64,
    pub last_error: Option<String>,
}

/// A blocking `Read` over an object's byte stream.
struct StreamReader {
    runtime: tokio::runtime::Handle,
    stream: futures::stream::BoxStream<'static, object_store::Result<Bytes>>,
    chunk: Bytes,
}

impl std::io::Read for StreamReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use futures::StreamExt;
        while self.chunk.is_empty() {
            match self.runtime.block_on(self.stream.next()) {
                None => return Ok(0),
                Some(Ok(chunk)) => self.chunk = chunk,
                Some(Err(error)) => {
                    return Err(std::io::Error::other(format!("read from region: {error}")))
                }
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk[..n]);
        let _ = self.chunk.split_to(n);
        Ok(n)
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
    /// Expected ETags of spooled archives, by backup (shared by the regions).
    pub etags: EtagCache,
}

/// Per backup: the ETag once computed, and when the entry was made.
pub type EtagCache = Mutex<
    std::collections::HashMap<String, (Arc<tokio::sync::OnceCell<String>>, std::time::Instant)>,
>;

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
    async fn step(&self, mut replica: Replica) {
        let span = tracing::info_span!("replica", tenant_id = %replica.tenant, backup_id = %replica.backup, region = %replica.region);
        let _enter = span.enter();
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
                tracing::info!(attempts = replica.attempts, "replica verified");
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
        // The ETag the store should report for what this step uploads.
        let mut uploaded_etag = None;
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
                    // The expected ETag is computed while the bytes go out.
                    let file = self.spool.archive_path(tenant, backup);
                    let (sent, etag) = tokio::join!(
                        region.upload_file(&archive, &file),
                        self.expected_etag(backup, file.clone())
                    );
                    sent?;
                    uploaded_etag = Some(etag?);
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
        // Verify. Where the store's ETag is the MD5 of what this step sent
        // (S3 and Garage compute it on receipt), it vouches for the archive
        // without reading it back; otherwise (directories, other stores, an
        // object from before a restart) read it back and hash it.
        let by_etag = match &uploaded_etag {
            Some(expected_etag) => {
                region.etag(&archive).await?.as_deref() == Some(expected_etag.as_str())
                    && region.size(&archive).await? == Some(expected.archive_size)
            }
            None => false,
        };
        if !by_etag {
            let (size, sha256) = region.digest(&archive).await?;
            if size != expected.archive_size || sha256 != expected.archive_sha256 {
                return Err(StoreError::Conflict(format!(
                    "{archive} does not match its manifest (size {size}, sha256 {sha256})"
                )));
            }
        }
        tracing::info!(
            by = if by_etag { "etag" } else { "read-back" },
            "replica checked"
        );
        if region.get_bytes(&manifest).await? != manifest_bytes {
            return Err(StoreError::Conflict(format!("{manifest} was altered")));
        }
        Ok(())
    }

    /// The S3 ETag of a spooled archive, computed once per backup however
    /// many regions it goes to.
    async fn expected_etag(
        &self,
        backup: &str,
        file: std::path::PathBuf,
    ) -> Result<String, StoreError> {
        let cell = {
            let mut etags = self.etags.lock().expect("etag cache");
            etags.retain(|_, (_, at)| at.elapsed() < Duration::from_secs(3600));
            etags
                .entry(backup.to_string())
                .or_insert_with(|| {
                    (
                        Arc::new(tokio::sync::OnceCell::new()),
                        std::time::Instant::now(),
                    )
                })
                .0
                .clone()
        };
        cell.get_or_try_init(|| async move {
            crate::tasks::blocking(move || store::s3_etag_of(&file))
                .await
                .map_err(|e| StoreError::Unavailable(e.to_string()))?
                .map_err(|e| StoreError::Unavailable(format!("read the spooled archive: {e}")))
        })
        .await
        .cloned()
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
