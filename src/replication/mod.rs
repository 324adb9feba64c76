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
//! spool's manifest — the archive by the `x-amz-checksum-sha256` every PUT and
//! part carries, which an S3 store (Garage too) verifies on receipt and refuses
//! on mismatch, else by reading it back and hashing it; the manifest is read
//! back too — and on any error records `failed`
//! and retries after a capped exponential backoff with jitter. A replica's
//! first try from the process that registered it, to a store that checks on
//! receipt, is two PUTs and nothing else: no object of its fresh name can
//! exist yet, and the store vouched for both bodies (a single PUT's SHA-256
//! is also compared with the one sealed into the manifest). Records live in
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
//! Rooms: `store` (the object stores), `worker` (the upload worker); replica
//! records, retention, the lag report and restore reads are here.

pub mod store;
mod worker;

pub use worker::{Backoff, Replicator};

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::backup::store::StoredBackup;
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
    put_replica_unflushed(storage, replica)?;
    storage.catalog.flush()
}

/// The replica and its due mark, durable at the next catalog flush.
fn put_replica_unflushed(storage: &Storage, replica: &Replica) -> Result<(), StorageError> {
    REPLICAS.put_unflushed(&storage.catalog, &replica.key(), replica)?;
    if replica.state == ReplicaState::Verified {
        DUE.remove_unflushed(&storage.catalog, &replica.key())
    } else {
        DUE.put_unflushed(&storage.catalog, &replica.key(), &true)
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

/// The backup regions of this host and the replication state machine.
pub struct Replication {
    pub regions: Vec<RegionStore>,
    backoff: Backoff,
    runtime: tokio::runtime::Handle,
    wake: tokio::sync::Notify,
    in_flight: Mutex<HashSet<String>>,
    /// Replicas registered by this process and not yet tried: no object of
    /// theirs can exist anywhere (backup ids are random and never reused, and
    /// only a registered replica is ever uploaded), so their first upload
    /// needs no look for an earlier one.
    fresh: Mutex<HashSet<String>>,
    /// Woken whenever a replica is verified (writes that wait for regions).
    pub verified: tokio::sync::Notify,
    /// How many replicas this process has seen verified: a waiter that saw
    /// the same count before need not read the replica states again.
    verifications: std::sync::atomic::AtomicU64,
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
            fresh: Mutex::new(HashSet::new()),
            verified: tokio::sync::Notify::new(),
            verifications: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// How many replicas have been verified since this process started
    /// (see [`Replication::verified`]); read it before the replica states it
    /// stands for.
    pub fn verifications(&self) -> u64 {
        self.verifications.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// A replica's verified state is saved: counted, and its waiters woken.
    fn announce_verified(&self) {
        self.verifications
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.verified.notify_waiters();
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
            put_replica_unflushed(storage, &replica)?;
            if !erased {
                self.fresh.lock().expect("fresh set").insert(replica.key());
            }
        }
        // One flush for every region's record.
        storage.catalog.flush()?;
        self.wake.notify_one();
        Ok(())
    }

    /// Whether the replica was registered by this process and this is its
    /// first try (asking again says no).
    fn take_fresh(&self, replica: &Replica) -> bool {
        self.fresh.lock().expect("fresh set").remove(&replica.key())
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
            self.fresh.lock().expect("fresh set").remove(&replica.key());
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
                // Backups and change-log segments are reported apart.
                let (log, backups): (Vec<&Replica>, Vec<&Replica>) = mine.iter().partition(|r| {
                    r.backup
                        .starts_with(crate::backup::segment::SEGMENT_ID_PREFIX)
                });
                let oldest = backups.iter().map(|r| r.since).min();
                let log_oldest = log.iter().map(|r| r.since).min();
                RegionLag {
                    log_behind: log.len(),
                    log_lag_seconds: log_oldest.map(|t| now.saturating_sub(t)).unwrap_or(0),
                    region: region.name.clone(),
                    location: region.location.clone(),
                    behind: backups.len(),
                    failed: backups
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
    /// not know the tenant: disaster recovery), change-log segments left out.
    pub fn list_everywhere(&self, tenant: &str) -> BTreeMap<String, (StoredBackup, Vec<Region>)> {
        let mut all = self.list_everything(tenant);
        all.retain(|_, (stored, _)| stored.log.is_none());
        all
    }

    /// Published backups and change-log segments of a tenant in every
    /// region. Regions that fail are skipped.
    pub fn list_everything(&self, tenant: &str) -> BTreeMap<String, (StoredBackup, Vec<Region>)> {
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
    /// Backups not yet verified here.
    pub behind: usize,
    /// Change-log segments not yet verified here, and how long the oldest has waited.
    pub log_behind: usize,
    pub log_lag_seconds: u64,
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
