//! The host's backups as a service: the spool, the regions and the backup
//! key together. Takes jobs (manual and scheduled), seals them into the
//! spool and hands them to replication, recovers after a restart, and opens
//! stored backups from the spool or any region for restores. It joins
//! `backup` (the archive, sealing, the spool) and `replication` (the
//! regions), so it lives above both.

use std::io::Read;
use std::path::Path;

use crate::backup::format::Limits;
use crate::backup::segment::Covers;
use crate::backup::store::{LocalStore, StoredBackup};
use crate::backup::watch::Watch;
use crate::backup::{
    export, restore_archive, sealed, tenant_schema, BackupError, BackupJob, HashingWriter,
    JobState, Restored, JOBS, SCHEDULES,
};
use crate::crypto::{self, SecretKey};
use crate::ids::{unix_now, Region, TenantId};
use crate::replication::{Replication, ReplicationError, StoreError};
use crate::schema::Registry;
use crate::storage::{CopyOf, Storage};

/// The backup spool, regions and keys of one host.
pub struct Backups {
    pub spool: LocalStore,
    pub replication: std::sync::Arc<Replication>,
    backup_key: SecretKey,
    /// The region this host serves (restored tenants live here).
    pub region: Region,
    pub limits: Limits,
    /// Seconds a backup is kept (`manual` and `scheduled`).
    pub retention_secs: u64,
    /// Bytes per second a backup or restore moves at most (none: no cap).
    pub max_rate: Option<u64>,
    /// Where a failed backup is recorded (`backup.failed`, which the
    /// tenant's and the host's webhooks tell of).
    pub audit: Option<std::sync::Arc<crate::audit::AuditLog>>,
    /// Tenants' own keys: each customer-keyed tenant's backups and change-log
    /// segments have their keys wrapped by it too (`sealed` version 2).
    pub outer: Option<std::sync::Arc<dyn sealed::OuterKey>>,
}

impl Backups {
    pub fn new(
        spool_dir: &Path,
        replication: std::sync::Arc<Replication>,
        backup_key: SecretKey,
        region: Region,
        retention_secs: u64,
    ) -> Result<Backups, BackupError> {
        Ok(Backups {
            spool: LocalStore::new(spool_dir)?,
            replication,
            backup_key,
            region,
            limits: Limits::default(),
            retention_secs,
            max_rate: None,
            audit: None,
            outer: None,
        })
    }

    /// After a restart: jobs that were running are failed (their spool files
    /// removed), and a job published to the spool but not yet registered for
    /// replication (a crash between the two) is registered.
    pub fn recover(&self, storage: &Storage) {
        let jobs: Vec<BackupJob> = JOBS.all(&storage.catalog).unwrap_or_default();
        for mut job in jobs {
            match job.state {
                JobState::Pending | JobState::Running => {
                    self.spool.discard(job.tenant.as_str(), &job.id);
                    job.state = JobState::Failed;
                    job.error = Some("interrupted by a host restart".into());
                    job.finished_at = Some(unix_now());
                    let _ = JOBS.put(&storage.catalog, &job.id, &job);
                    tracing::warn!(backup_id = %job.id, "backup interrupted by a restart marked failed");
                }
                JobState::Done => {
                    if let Some(stored) = &job.stored {
                        if self.replication.replicas_of(storage, &job.id).is_empty()
                            && self
                                .spool
                                .get(job.tenant.as_str(), &job.id)
                                .ok()
                                .flatten()
                                .is_some()
                        {
                            let _ = self.replication.register(storage, stored);
                        }
                    }
                }
                JobState::Failed => {}
            }
        }
    }

    fn audit_failure(&self, job: &BackupJob) {
        let Some(audit) = &self.audit else {
            return;
        };
        let event = crate::audit::Event::new("backup.failed", crate::audit::Actor::host())
            .tenant(&job.tenant)
            .detail("backup", job.id.as_str())
            .detail("kind", job.kind.as_str())
            .detail("error", job.error.as_deref().unwrap_or_default());
        if let Err(error) = audit.append(event) {
            tracing::error!(backup_id = %job.id, %error, "cannot audit a failed backup");
        }
    }

    /// Registers a pending backup job and returns it; [`Backups::run`] does it.
    pub fn enqueue(
        &self,
        storage: &Storage,
        tenant: &TenantId,
        kind: &str,
    ) -> Result<BackupJob, BackupError> {
        let job = BackupJob {
            format: 1,
            id: crypto::encode_hex(&crypto::random_bytes::<16>()?),
            tenant: tenant.clone(),
            kind: kind.to_string(),
            state: JobState::Pending,
            created_at: unix_now(),
            finished_at: None,
            error: None,
            stored: None,
        };
        JOBS.put(&storage.catalog, &job.id, &job)?;
        Ok(job)
    }

    /// Runs a backup job to its end and records the outcome.
    pub fn run(
        &self,
        storage: &Storage,
        schemas: &Registry,
        job: BackupJob,
        retain_secs: u64,
    ) -> BackupJob {
        self.run_then_free(storage, schemas, job, retain_secs, || {})
    }

    /// As [`run`](Self::run), calling `free` once the work is over and before
    /// the outcome is recorded: a caller who sees the job done finds what it
    /// held (a job slot) already given back.
    pub fn run_then_free(
        &self,
        storage: &Storage,
        schemas: &Registry,
        mut job: BackupJob,
        retain_secs: u64,
        free: impl FnOnce(),
    ) -> BackupJob {
        job.state = JobState::Running;
        let _ = JOBS.put(&storage.catalog, &job.id, &job);
        let written = crate::metrics::timed_job("backup", || {
            self.write_backup(storage, schemas, &job, retain_secs)
        });
        // What sled kept of the tenant for this read goes with its database
        // when the host's memory is above its high mark.
        storage.after_whole_read(&job.tenant);
        match written {
            Ok(stored) => {
                job.state = JobState::Done;
                job.stored = Some(stored);
            }
            Err(error) => {
                tracing::error!(backup_id = %job.id, %error, "backup failed");
                self.spool.discard(job.tenant.as_str(), &job.id);
                job.state = JobState::Failed;
                job.error = Some(error.to_string());
                self.audit_failure(&job);
            }
        }
        job.finished_at = Some(unix_now());
        free();
        if let Err(error) = JOBS.put(&storage.catalog, &job.id, &job) {
            tracing::error!(backup_id = %job.id, %error, "record backup outcome");
        }
        job
    }

    fn write_backup(
        &self,
        storage: &Storage,
        schemas: &Registry,
        job: &BackupJob,
        retain_secs: u64,
    ) -> Result<StoredBackup, BackupError> {
        let tenant = storage
            .catalog
            .tenant(&job.tenant)
            .ok_or(BackupError::NotFound)?;
        let schema = tenant_schema(schemas, &tenant)?;
        let db = storage.tenant_db(&tenant)?;
        let snapshot = db.snapshot()?;
        let envelope = sealed::Envelope {
            format: 1,
            backup_id: job.id.clone(),
            tenant_id: tenant.id.to_string(),
            admins: storage.admin_credentials(&tenant.id)?,
            log: None,
        };
        let backup_id: [u8; 16] = crypto::decode_hex(&job.id)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| BackupError::Invalid("backup id".into()))?;
        let (file, _) = self.spool.create_archive(tenant.id.as_str(), &job.id)?;
        let hashing = HashingWriter::new(std::io::BufWriter::with_capacity(256 * 1024, file));
        let mut sealing = sealed::seal_for(
            hashing,
            &self.backup_key,
            self.outer(),
            &backup_id,
            &tenant.id,
            &envelope,
        )?;
        // Deactivating or purging the tenant stops the backup.
        let watch = Watch::new(|| storage.catalog.still_serving(&tenant.id, "backup"))
            .at_most(self.max_rate);
        let written =
            export::write_archive(&mut watch.wrap(&mut sealing), &tenant, &schema, &snapshot);
        if let Some(why) = watch.stopped() {
            return Err(BackupError::Stopped(why));
        }
        let summary = written?;
        let hashing = sealing.finish()?;
        let (size, sha256, buffered) = hashing.finish();
        let file = buffered
            .into_inner()
            .map_err(|e| BackupError::Io(e.to_string()))?;
        file.sync_all().map_err(BackupError::from_io)?;
        let stored = StoredBackup {
            format: 1,
            backup_id: job.id.clone(),
            tenant_id: tenant.id.to_string(),
            created_at: job.created_at,
            kind: job.kind.clone(),
            retain_until: job.created_at + retain_secs,
            archive_size: size,
            archive_sha256: sha256,
            records: summary.records,
            covers: db.log_generation().map(|generation| Covers {
                generation,
                seq: snapshot.log_seq,
                at_ms: snapshot.taken_at_ms,
            }),
            log: None,
        };
        self.spool.publish(&stored)?;
        self.replication.register(storage, &stored)?;
        Ok(stored)
    }

    /// Opens a stored backup's archive stream from `region`, or from the
    /// spool or the first region that has it. The sealed chunks authenticate
    /// every byte as it is read (truncation included).
    /// The stored object of a backup or segment, unopened: from `region`, or
    /// from the spool or the first region that has it.
    pub fn open_raw(
        &self,
        tenant: &str,
        backup: &str,
        region: Option<&str>,
    ) -> Result<Box<dyn Read + Send>, BackupError> {
        Ok(match region {
            Some(region) => Box::new(self.open_in_region(region, tenant, backup)?),
            None => match self.spool.get(tenant, backup)? {
                Some(_) => Box::new(self.spool.open_archive(tenant, backup)?),
                None => {
                    let mut last = BackupError::NotFound;
                    let mut found = None;
                    for name in self.replication.regions.iter().map(|r| r.name.to_string()) {
                        match self.open_in_region(&name, tenant, backup) {
                            Ok(reader) => {
                                found = Some(reader);
                                break;
                            }
                            Err(BackupError::NotFound) => {}
                            Err(error) => last = error,
                        }
                    }
                    Box::new(found.ok_or(last)?)
                }
            },
        })
    }

    /// The key segments and backups are sealed under (for `changelog`).
    pub(super) fn backup_key(&self) -> &SecretKey {
        &self.backup_key
    }

    /// Tenants' own keys, which wrap their backups' keys too.
    pub(super) fn outer(&self) -> Option<&dyn sealed::OuterKey> {
        self.outer.as_deref()
    }

    pub fn open_stored(
        &self,
        tenant: &str,
        backup: &str,
        region: Option<&str>,
    ) -> Result<(sealed::Envelope, impl Read), BackupError> {
        self.open_stored_keyed(tenant, backup, region)
            .map(|(envelope, reader, _)| (envelope, reader))
    }

    /// What a copy of a customer-keyed tenant stays under: the tenant's key
    /// and its wrapping of the backup's key.
    pub fn tenant_key(&self, wrapped: Option<Vec<u8>>) -> crate::backup::TenantKey<'_> {
        Some((self.outer()?, wrapped?))
    }

    /// As [`open_stored`](Self::open_stored), with the backup key as the
    /// tenant's own key wrapped it (version 2), if it did.
    pub fn open_stored_keyed(
        &self,
        tenant: &str,
        backup: &str,
        region: Option<&str>,
    ) -> Result<(sealed::Envelope, impl Read, Option<Vec<u8>>), BackupError> {
        let source = self.open_raw(tenant, backup, region)?;
        let (header, envelope, reader) = sealed::open_for(
            std::io::BufReader::with_capacity(256 * 1024, source),
            &self.backup_key,
            self.outer(),
        )?;
        if header.tenant_id != tenant || header.backup_id != backup {
            return Err(BackupError::BadArchive(
                "the stored object belongs to another backup".into(),
            ));
        }
        Ok((envelope, reader, header.tenant_key))
    }

    fn open_in_region(
        &self,
        region: &str,
        tenant: &str,
        backup: &str,
    ) -> Result<impl Read + Send, BackupError> {
        match self.replication.open_archive(region, tenant, backup) {
            Ok((_, reader)) => Ok(reader),
            Err(ReplicationError::Store(StoreError::NotFound)) => Err(BackupError::NotFound),
            Err(ReplicationError::UnknownRegion(name)) => Err(BackupError::Invalid(format!(
                "no backup region {name:?} on this host"
            ))),
            Err(other) => Err(BackupError::Store(format!("region {region}: {other}"))),
        }
    }

    /// Restores a stored backup into a new tenant named `name`, read from
    /// `region` (or from wherever it is).
    #[allow(clippy::too_many_arguments)]
    pub fn restore(
        &self,
        storage: &Storage,
        schemas: &Registry,
        tenant: &str,
        backup: &str,
        region: Option<&str>,
        name: String,
        keep_id: Option<TenantId>,
        mint_token: bool,
        copy_of: Option<CopyOf>,
    ) -> Result<Restored, BackupError> {
        crate::metrics::timed_job("restore", || {
            let (envelope, reader, tenant_key) = self.open_stored_keyed(tenant, backup, region)?;
            // A restore from a tenant's backups stops when that tenant (when it
            // lives here) is deactivated or purged meanwhile: no copy outlives
            // the purge it raced.
            let source = TenantId::parse(tenant);
            let live_at_start = source
                .as_ref()
                .and_then(|id| storage.catalog.tenant(id))
                .filter(|t| storage.catalog.still_serving(&t.id, "restore").is_ok())
                .map(|t| t.id);
            let watch = Watch::new(|| match &live_at_start {
                Some(id) => storage.catalog.still_serving(id, "restore"),
                None => Ok(()),
            })
            .at_most(self.max_rate);
            let restored = restore_archive(
                storage,
                schemas,
                watch.wrap(reader),
                name,
                keep_id,
                self.region.clone(),
                self.limits,
                &envelope.admins,
                mint_token,
                copy_of,
                self.tenant_key(tenant_key),
            );
            match watch.stopped() {
                Some(why) => Err(BackupError::Stopped(format!("{why}; nothing was restored"))),
                None => restored,
            }
        })
    }
}

impl Backups {
    /// Runs a backup for every active tenant whose last successful backup is
    /// older than its interval (its own, or `default_secs`). Returns how many ran.
    /// `before` is asked first for each (the audit entry); a `false` skips
    /// the tenant until the next round.
    pub fn run_due(
        &self,
        storage: &Storage,
        schemas: &Registry,
        default_secs: Option<u64>,
        before: &dyn Fn(&TenantId) -> bool,
    ) -> usize {
        let jobs: Vec<BackupJob> = JOBS.all(&storage.catalog).unwrap_or_default();
        let now = unix_now();
        let mut ran = 0;
        for tenant in storage.catalog.tenants() {
            if tenant.state != crate::storage::TenantState::Active {
                continue;
            }
            let interval = match SCHEDULES.get(&storage.catalog, tenant.id.as_str()) {
                Ok(Some(schedule)) => Some(schedule.interval_hours * 3600).filter(|s| *s > 0),
                _ => default_secs,
            };
            let Some(interval) = interval else { continue };
            let last = jobs
                .iter()
                .filter(|j| j.tenant == tenant.id && j.state != JobState::Failed)
                .map(|j| j.created_at)
                .max()
                .unwrap_or(0);
            if now.saturating_sub(last) < interval {
                continue;
            }
            let span = tracing::info_span!("scheduled_backup", tenant_id = %tenant.id);
            let _enter = span.enter();
            // Closed because its own key is unavailable (known, or found by
            // opening it now): nothing to read, and no failed job made.
            if let Some(why) = storage.closed_because(&tenant.id) {
                tracing::warn!(reason = %why, "scheduled backup skipped: the tenant is closed");
                continue;
            }
            if let Err(crate::storage::StorageError::KeyUnavailable(why)) =
                storage.tenant_db(&tenant)
            {
                tracing::warn!(reason = %why, "scheduled backup skipped: the tenant's own key is unavailable");
                continue;
            }
            if !before(&tenant.id) {
                continue;
            }
            match self.enqueue(storage, &tenant.id, "scheduled") {
                Ok(job) => {
                    let done = self.run(storage, schemas, job, self.retention_secs);
                    tracing::info!(backup_id = %done.id, state = done.state.as_str(), "scheduled backup");
                    ran += 1;
                }
                Err(error) => tracing::error!(%error, "schedule a backup"),
            }
        }
        ran
    }
}
