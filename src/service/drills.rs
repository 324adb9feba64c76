//! Restore drills: evidence that backups restore, not only that they upload.
//! For every active tenant, at least every `every` (default 7 days), the
//! drill restores its newest finished backup from one of the regions that
//! verified it — the next in turn each time — into a scratch tenant that no
//! API ever sees, checks it against the backup's manifest
//! (`backup::drill`), times it, and removes it. The result per tenant is in
//! the catalog (tree `drills`), in `/copies` (`last_drill`), in
//! `GET /v1/drills`, in the metrics (`coffer_jobs_total{kind="drill"}`) and
//! in the audit log (`backup.drilled`, with its outcome).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::audit::{Actor, AuditLog, Event};
use crate::backup::drill::drill_archive;
use crate::backup::store::StoredBackup;
use crate::backup::watch::Watch;
use crate::backup::{JobState, JOBS};
use crate::ids::{unix_now, TenantId};
use crate::replication::ReplicaState;
use crate::schema::Registry;
use crate::service::Backups;
use crate::storage::{Kind, Storage, TenantState};
use crate::tasks::Stop;

/// The newest drill of each tenant, by tenant id.
pub const DRILLS: Kind<DrillRecord> = Kind::new("drills");

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DrillRecord {
    pub tenant: TenantId,
    pub backup_id: String,
    /// When the drilled backup was taken (Unix seconds).
    pub backup_created_at: u64,
    pub region: String,
    /// When the drill started (Unix seconds).
    pub at: u64,
    pub duration_ms: u64,
    /// `passed` or `failed`.
    pub outcome: String,
    pub error: Option<String>,
    pub records: u64,
    /// Drills of this tenant so far (picks the next region in turn).
    pub count: u64,
}

/// How often drills run.
#[derive(Debug, Clone, Copy)]
pub struct DrillSettings {
    /// Each tenant's newest backup is drilled at least this often.
    pub every: Duration,
    /// How often the scheduler looks for tenants due.
    pub check: Duration,
}

/// Every tenant's newest finished backup (not change-log segments), in one
/// read of the backup jobs.
fn newest_backups(storage: &Storage) -> HashMap<TenantId, StoredBackup> {
    let mut newest: HashMap<TenantId, StoredBackup> = HashMap::new();
    for job in JOBS.all(&storage.catalog).unwrap_or_default() {
        let Some(stored) = job
            .stored
            .filter(|s| job.state == JobState::Done && s.log.is_none())
        else {
            continue;
        };
        let newer = newest
            .get(&job.tenant)
            .is_none_or(|n| (stored.created_at, &stored.backup_id) > (n.created_at, &n.backup_id));
        if newer {
            newest.insert(job.tenant, stored);
        }
    }
    newest
}

/// Drills `newest`, `tenant`'s newest finished backup, now, from the next
/// region in turn that holds it verified. `None` when no region does yet.
fn drill_backup(
    backups: &Backups,
    storage: &Storage,
    schemas: &Registry,
    audit: &AuditLog,
    tenant: &TenantId,
    newest: &StoredBackup,
) -> Option<DrillRecord> {
    let verified: Vec<String> = backups
        .replication
        .replicas_of(storage, &newest.backup_id)
        .into_iter()
        .filter(|r| r.state == ReplicaState::Verified)
        .map(|r| r.region.as_str().to_string())
        .collect();
    if verified.is_empty() {
        return None;
    }
    let count = DRILLS
        .get(&storage.catalog, tenant.as_str())
        .ok()
        .flatten()
        .map_or(0, |d| d.count);
    let region = verified[(count % verified.len() as u64) as usize].clone();
    let at = unix_now();
    let started = Instant::now();
    let drilled = backups
        .open_stored(tenant.as_str(), &newest.backup_id, Some(&region))
        .and_then(|(_, reader)| {
            let watch = Watch::new(|| Ok(())).at_most(backups.max_rate);
            drill_archive(
                storage,
                schemas,
                watch.wrap(reader),
                backups.limits,
                backups.region.clone(),
            )
        });
    let elapsed = started.elapsed();
    let record = DrillRecord {
        tenant: tenant.clone(),
        backup_id: newest.backup_id.clone(),
        backup_created_at: newest.created_at,
        region,
        at,
        duration_ms: elapsed.as_millis() as u64,
        outcome: if drilled.is_ok() { "passed" } else { "failed" }.into(),
        error: drilled.as_ref().err().map(|e| e.to_string()),
        records: drilled.as_ref().map_or(0, |d| d.records),
        count: count + 1,
    };
    crate::metrics::job(
        "drill",
        if drilled.is_ok() { "ok" } else { "failed" },
        elapsed,
    );
    match &drilled {
        Ok(_) => {
            tracing::info!(tenant_id = %tenant, backup_id = %record.backup_id, region = %record.region, duration_ms = record.duration_ms, records = record.records, "restore drill passed")
        }
        Err(error) => {
            tracing::error!(tenant_id = %tenant, backup_id = %record.backup_id, region = %record.region, %error, "restore drill failed")
        }
    }
    let mut event = Event::new("backup.drilled", Actor::host())
        .tenant(tenant)
        .detail("backup", record.backup_id.as_str())
        .detail("region", record.region.as_str())
        .detail("outcome", record.outcome.as_str())
        .detail("duration_ms", record.duration_ms);
    if let Some(error) = &record.error {
        event = event.detail("error", error.as_str());
    }
    if let Err(error) = audit.append(event) {
        tracing::error!(%error, "cannot audit a restore drill");
    }
    if let Err(error) = DRILLS.put(&storage.catalog, tenant.as_str(), &record) {
        tracing::error!(%error, "record a restore drill");
    }
    Some(record)
}

/// One round: every active tenant whose last drill is older than `every`.
/// Returns the drills run.
pub fn run_due(
    backups: &Backups,
    storage: &Storage,
    schemas: &Registry,
    audit: &AuditLog,
    every: Duration,
) -> usize {
    let now = unix_now();
    let mut ran = 0;
    let mut newest = newest_backups(storage);
    for tenant in storage.catalog.tenants() {
        if tenant.state != TenantState::Active {
            continue;
        }
        let last = DRILLS
            .get(&storage.catalog, tenant.id.as_str())
            .ok()
            .flatten();
        if last.is_some_and(|d| now.saturating_sub(d.at) < every.as_secs()) {
            continue;
        }
        let Some(backup) = newest.remove(&tenant.id) else {
            continue;
        };
        // Closed because its own key is unavailable: its backups do not open.
        if let Some(why) = storage.closed_because(&tenant.id) {
            tracing::warn!(tenant_id = %tenant.id, reason = %why, "restore drill skipped: the tenant is closed");
            continue;
        }
        if drill_backup(backups, storage, schemas, audit, &tenant.id, &backup).is_some() {
            ran += 1;
        }
    }
    ran
}

/// Runs rounds every `settings.check` until `stop` (a drill in progress
/// finishes first).
pub async fn run_drills(
    backups: Arc<Backups>,
    storage: Arc<Storage>,
    schemas: Registry,
    audit: Arc<AuditLog>,
    settings: DrillSettings,
    stop: Stop,
) {
    let mut ticker = tokio::time::interval(settings.check.max(Duration::from_millis(100)));
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let (backups, storage, schemas, audit) = (
            backups.clone(),
            storage.clone(),
            schemas.clone(),
            audit.clone(),
        );
        let every = settings.every;
        if let Err(error) =
            crate::tasks::blocking(move || run_due(&backups, &storage, &schemas, &audit, every))
                .await
        {
            tracing::error!(%error, "restore drill round failed");
        }
    }
}
