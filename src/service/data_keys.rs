//! Online data-key rotation: a tenant's records, blind-index tags and
//! change-log entries re-sealed under a new data key while it serves, then
//! the old key shredded (the steps are `storage::rekey` and
//! `tenant_db::rekey`).
//!
//! A rotation is a job in the catalog (tree `dek_rotations`), asked for
//! through the API or by the schedule (`[data_keys] rotate_every`, off by
//! default). One loop runs the jobs, one at a time, in order: it re-seals
//! a batch, records the cursor and the progress, and goes on. Killed at any
//! moment, every value still opens under a key the catalog holds, and the
//! next start resumes the job from its last recorded cursor. A job is done
//! when every value is re-sealed, every snapshot taken before (an export,
//! a backup) has finished, and the catalog holds only the new key.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::audit::{Actor, AuditLog, Event};
use crate::crypto;
use crate::ids::{unix_now, TenantId};
use crate::schema::Registry;
use crate::storage::{Kind, Storage, StorageError, TenantRecord, TenantState};
use crate::tasks::Stop;

/// Rotation jobs, by `<tenant id>/<job id>`.
pub const ROTATIONS: Kind<DekRotation> = Kind::new("dek_rotations");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RotationState {
    Pending,
    Running,
    Done,
    Failed,
}

impl RotationState {
    pub fn as_str(self) -> &'static str {
        match self {
            RotationState::Pending => "pending",
            RotationState::Running => "running",
            RotationState::Done => "done",
            RotationState::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DekRotation {
    pub id: String,
    pub tenant: TenantId,
    pub state: RotationState,
    /// `manual` or `scheduled`.
    pub kind: String,
    /// Who asked (a person, or `host` for the schedule).
    pub requested_by: String,
    pub created_at: u64,
    pub finished_at: Option<u64>,
    /// The id of the key being made (known once the job began).
    pub key_id: Option<u32>,
    /// Records when the job began (for progress).
    pub records_total: u64,
    /// Records and change-log entries re-sealed so far.
    pub records_resealed: u64,
    pub changes_resealed: u64,
    /// Where the walk goes on (hex of a database key); empty at the start.
    #[serde(default)]
    pub cursor: String,
    pub error: Option<String>,
}

impl DekRotation {
    fn key(&self) -> String {
        format!("{}/{}", self.tenant, self.id)
    }

    fn live(&self) -> bool {
        matches!(self.state, RotationState::Pending | RotationState::Running)
    }
}

#[derive(Debug, Clone, Copy)]
pub struct DataKeySettings {
    /// Each tenant's key is rotated when it is older than this (off: `None`).
    pub rotate_every: Option<Duration>,
    /// Values re-sealed under the write lock at a time.
    pub batch: usize,
    /// Rest between two batches (writers and other tenants go first).
    pub pause: Duration,
    /// How often the loop looks for due tenants when nobody wakes it.
    pub check: Duration,
}

/// Why a rotation is refused.
#[derive(Debug, thiserror::Error)]
pub enum RotationRefused {
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

pub struct DataKeys {
    storage: Arc<Storage>,
    schemas: Registry,
    audit: Arc<AuditLog>,
    settings: DataKeySettings,
    wake: tokio::sync::Notify,
    /// Requests are checked and recorded one at a time.
    requests: std::sync::Mutex<()>,
}

impl DataKeys {
    pub fn new(
        storage: Arc<Storage>,
        schemas: Registry,
        audit: Arc<AuditLog>,
        settings: DataKeySettings,
    ) -> DataKeys {
        DataKeys {
            storage,
            schemas,
            audit,
            settings,
            wake: tokio::sync::Notify::new(),
            requests: std::sync::Mutex::new(()),
        }
    }

    /// Every rotation job of `tenant`, oldest first.
    pub fn jobs_of(&self, tenant: &TenantId) -> Vec<DekRotation> {
        let mut jobs = ROTATIONS
            .with_prefix(&self.storage.catalog, &format!("{tenant}/"))
            .unwrap_or_default();
        jobs.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        jobs
    }

    pub fn job(&self, tenant: &TenantId, id: &str) -> Option<DekRotation> {
        ROTATIONS
            .get(&self.storage.catalog, &format!("{tenant}/{id}"))
            .ok()
            .flatten()
    }

    /// Records a rotation of `tenant` (refused while one is under way, or
    /// while the tenant is not active, is being moved or upgraded) and wakes
    /// the loop. Call from a blocking thread.
    /// `before_recording` runs once the checks passed, before the job is
    /// stored (the API audits the request there; an error stores nothing).
    pub fn request<E>(
        &self,
        tenant: &TenantId,
        kind: &str,
        requested_by: &str,
        before_recording: impl FnOnce(&DekRotation) -> Result<(), E>,
    ) -> Result<Result<DekRotation, E>, RotationRefused> {
        let _one = self.requests.lock().expect("rotation requests poisoned");
        let record = self
            .storage
            .catalog
            .tenant(tenant)
            .ok_or(StorageError::NotFound)?;
        refuse_unless_rotatable(&record)?;
        if let Some(live) = self.jobs_of(tenant).into_iter().find(DekRotation::live) {
            return Err(RotationRefused::Conflict(format!(
                "a rotation of this tenant's data key is already {} (job {})",
                live.state.as_str(),
                live.id
            )));
        }
        let job = DekRotation {
            id: crypto::encode_hex(&crypto::random_bytes::<16>().map_err(StorageError::from)?),
            tenant: tenant.clone(),
            state: RotationState::Pending,
            kind: kind.to_string(),
            requested_by: requested_by.to_string(),
            created_at: unix_now(),
            finished_at: None,
            key_id: None,
            records_total: 0,
            records_resealed: 0,
            changes_resealed: 0,
            cursor: String::new(),
            error: None,
        };
        if let Err(error) = before_recording(&job) {
            return Ok(Err(error));
        }
        ROTATIONS.put(&self.storage.catalog, &job.key(), &job)?;
        self.wake.notify_one();
        Ok(Ok(job))
    }

    /// Runs one job to its end (or to `stop`, leaving it to resume), and
    /// records its outcome. Returns the job as it stands.
    pub fn run(&self, mut job: DekRotation, stop: &Stop) -> DekRotation {
        let resumed = job.state == RotationState::Running;
        job.state = RotationState::Running;
        match self.rotate(&mut job, resumed, stop) {
            Ok(true) => {
                job.state = RotationState::Done;
                job.finished_at = Some(unix_now());
                tracing::info!(tenant_id = %job.tenant, rotation = %job.id, key_id = job.key_id, records = job.records_resealed, changes = job.changes_resealed, "data key rotated");
                self.audit_outcome(&job, "key.rotated");
            }
            Ok(false) => {
                tracing::info!(tenant_id = %job.tenant, rotation = %job.id, records = job.records_resealed, "data-key rotation paused at shutdown; it resumes at the next start");
            }
            Err(error) => {
                job.state = RotationState::Failed;
                job.finished_at = Some(unix_now());
                job.error = Some(error.to_string());
                tracing::error!(tenant_id = %job.tenant, rotation = %job.id, %error, "data-key rotation failed");
                self.audit_outcome(&job, "key.rotation_failed");
            }
        }
        self.save(&job);
        job
    }

    /// The job's steps; `Ok(false)` when stopped before the end.
    fn rotate(
        &self,
        job: &mut DekRotation,
        resumed: bool,
        stop: &Stop,
    ) -> Result<bool, RotationError> {
        let storage = &self.storage;
        let record = storage
            .catalog
            .tenant(&job.tenant)
            .ok_or(StorageError::NotFound)?;
        refuse_unless_rotatable(&record).map_err(|e| RotationError::Stopped(e.to_string()))?;
        let schema = self
            .schemas
            .get(&record.schema, record.schema_version)
            .map_err(|e| RotationError::Stopped(e.to_string()))?
            .clone();
        // Step 1 (idempotent): the new key, durable before it seals anything.
        let (db, key_id) = storage.begin_dek_rotation(&job.tenant)?;
        if job.key_id.is_none() {
            job.key_id = Some(key_id);
            job.records_total = schema
                .collections
                .keys()
                .map(|c| db.count(c).unwrap_or(0))
                .sum();
            self.save(job);
        }
        // Step 2: re-seal from the cursor; the first batch after a restart
        // also clears index entries a kill may have left behind.
        let mut cursor = crypto::decode_hex(&job.cursor).unwrap_or_default();
        let mut thorough = resumed;
        loop {
            if stop.is_cancelled() {
                return Ok(false);
            }
            storage
                .catalog
                .still_serving(&job.tenant, "data-key rotation")
                .map_err(RotationError::Stopped)?;
            let batch = db.reseal_batch(&schema, &cursor, self.settings.batch.max(1), thorough)?;
            thorough = false;
            job.records_resealed += batch.records;
            job.changes_resealed += batch.changes;
            let Some(next) = batch.next else {
                break;
            };
            cursor = next;
            job.cursor = crypto::encode_hex(&cursor);
            self.save(job);
            if !self.settings.pause.is_zero() {
                std::thread::sleep(self.settings.pause);
            }
        }
        job.cursor = String::from("end");
        self.save(job);
        // Snapshots taken before the end may hold pre-images sealed by the
        // old key: exports and backups in progress finish first.
        let cutoff = db.next_snapshot_id();
        while db.snapshots_before(cutoff) {
            if stop.is_cancelled() {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Step 3: the new key alone; the old one shredded.
        storage.end_dek_rotation(&job.tenant, &db)?;
        Ok(true)
    }

    fn save(&self, job: &DekRotation) {
        if let Err(error) = ROTATIONS.put(&self.storage.catalog, &job.key(), job) {
            tracing::error!(rotation = %job.id, %error, "record a data-key rotation's progress");
        }
    }

    fn audit_outcome(&self, job: &DekRotation, kind: &'static str) {
        let mut event = Event::new(kind, Actor::host())
            .tenant(&job.tenant)
            .detail("rotation", job.id.as_str())
            .detail("records", job.records_resealed);
        if let Some(key_id) = job.key_id {
            event = event.detail("key_id", u64::from(key_id));
        }
        if let Some(error) = &job.error {
            event = event.detail("error", error.as_str());
        }
        if let Err(error) = self.audit.append(event) {
            tracing::error!(%error, "cannot audit a data-key rotation");
        }
    }

    /// The oldest job not finished, if any.
    fn next_job(&self) -> Option<DekRotation> {
        let mut live: Vec<_> = ROTATIONS
            .all(&self.storage.catalog)
            .unwrap_or_default()
            .into_iter()
            .filter(DekRotation::live)
            .collect();
        live.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        live.into_iter().next()
    }

    /// Asks for a rotation of every active tenant whose key is older than
    /// `rotate_every` (its last rotation's end, or its creation).
    fn schedule_due(&self) {
        let Some(every) = self.settings.rotate_every else {
            return;
        };
        let now = unix_now();
        for tenant in self.storage.catalog.tenants() {
            if tenant.state != TenantState::Active {
                continue;
            }
            let jobs = self.jobs_of(&tenant.id);
            if jobs.iter().any(DekRotation::live) {
                continue;
            }
            let since = jobs
                .iter()
                .filter(|j| j.state == RotationState::Done)
                .filter_map(|j| j.finished_at)
                .max()
                .unwrap_or(tenant.created_at);
            if now.saturating_sub(since) >= every.as_secs() {
                // Closed because its own key is unavailable: nothing to re-seal.
                if let Some(why) = self.storage.closed_because(&tenant.id) {
                    tracing::warn!(tenant_id = %tenant.id, reason = %why, "scheduled data-key rotation skipped: the tenant is closed");
                    continue;
                }
                let audited = |job: &DekRotation| {
                    self.audit
                        .append(
                            Event::new("key.rotation_requested", Actor::host())
                                .tenant(&tenant.id)
                                .detail("rotation", job.id.as_str())
                                .detail("kind", "scheduled"),
                        )
                        .map(|_| ())
                };
                let error = match self.request(&tenant.id, "scheduled", "host", audited) {
                    Ok(Ok(_)) => continue,
                    Ok(Err(error)) => error.to_string(),
                    Err(error) => error.to_string(),
                };
                tracing::warn!(tenant_id = %tenant.id, %error, "scheduled data-key rotation not started");
            }
        }
    }

    /// Runs jobs as they come, one at a time, until `stop` (a job in progress
    /// stops between two batches and resumes at the next start).
    pub async fn run_loop(self: Arc<Self>, stop: Stop) {
        loop {
            let this = self.clone();
            let stopping = stop.clone();
            // A thread of its own: a rotation is a long job, kept off the
            // blocking pool that requests use.
            let (tx, rx) = tokio::sync::oneshot::channel();
            let span = tracing::Span::current();
            let spawned = std::thread::Builder::new()
                .name("coffer-rekey".into())
                .spawn(move || {
                    let ran = span.in_scope(|| {
                        this.schedule_due();
                        match this.next_job() {
                            Some(job) => {
                                this.run(job, &stopping);
                                true
                            }
                            None => false,
                        }
                    });
                    let _ = tx.send(ran);
                });
            let ran = match spawned {
                Ok(_) => rx.await.unwrap_or(false),
                Err(error) => {
                    tracing::error!(%error, "cannot start a thread for data-key rotations");
                    false
                }
            };
            if ran {
                continue;
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(self.settings.check.max(Duration::from_millis(100))) => {}
            }
        }
    }
}

/// Why a job could not go on.
#[derive(Debug, thiserror::Error)]
enum RotationError {
    #[error("{0}")]
    Stopped(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

fn refuse_unless_rotatable(record: &TenantRecord) -> Result<(), RotationRefused> {
    if record.state != TenantState::Active {
        return Err(RotationRefused::Conflict(format!(
            "the tenant is {}: only an active tenant's data key is rotated",
            record.state.as_str()
        )));
    }
    if record.pending_upgrade.is_some() {
        return Err(RotationRefused::Conflict(
            "the tenant is being upgraded; rotate its data key when that is done".into(),
        ));
    }
    if record.wrapped_dek.is_none() {
        return Err(RotationRefused::Storage(StorageError::Shredded));
    }
    Ok(())
}
