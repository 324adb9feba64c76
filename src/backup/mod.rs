//! Backups: the archive format, portable exports, sealed disaster-recovery
//! backups in a store, verification, and restore into a new tenant.
//!
//! - [`format`] — the archive (tar + zstd, manifest first) and its limits.
//! - [`export`] — writes an archive from a consistent [`Snapshot`].
//! - [`import`] — reads an untrusted archive, checking everything.
//! - [`sealed`] — the STREAM-sealed DR object around an archive.
//! - [`store`] — the host's spool: sealed backups wait here (write-once,
//!   manifest last) until `replication` has them in every region.
//!
//! Restores never touch a live tenant: they fill a staged tenant and publish
//! it in one catalog write, or remove every file they wrote.
//!
//! [`Snapshot`]: crate::storage::Snapshot

pub mod export;
pub mod format;
pub mod import;
pub mod sealed;
pub mod store;

use std::io::{Read, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::crypto::{self, CryptoError, SecretKey};
use crate::ids::{unix_now, RecordId, Region, TenantId};
use crate::replication::{Replication, ReplicationError, StoreError};
use crate::schema::{Registry, Schema};
use crate::storage::{
    CopyOf, InheritedAdmin, NewTenant, StagedTenant, Storage, StorageError, TenantRecord,
};
use format::Limits;
use import::ArchiveSink;
use store::{LocalStore, StoredBackup};

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The archive or sealed backup is damaged, hostile or not ours.
    #[error("{0}")]
    BadArchive(String),
    #[error("{0}")]
    Inconsistent(String),
    #[error("backup store: {0}")]
    Store(String),
    #[error("backup not found")]
    NotFound,
    #[error("{0}")]
    Invalid(String),
    #[error("i/o: {0}")]
    Io(String),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl BackupError {
    /// I/O errors carry the damage found by the sealed reader; keep its message.
    pub fn from_io(error: std::io::Error) -> Self {
        match error
            .get_ref()
            .and_then(|e| e.downcast_ref::<sealed::SealedDamage>())
        {
            Some(damage) => BackupError::BadArchive(damage.0.clone()),
            None => BackupError::Io(error.to_string()),
        }
    }

    fn from_sealed_io(error: &std::io::Error) -> Self {
        match error
            .get_ref()
            .and_then(|e| e.downcast_ref::<sealed::SealedDamage>())
        {
            Some(damage) => BackupError::BadArchive(damage.0.clone()),
            None if error.kind() == std::io::ErrorKind::UnexpectedEof => {
                BackupError::BadArchive("sealed backup truncated".into())
            }
            None => BackupError::Io(error.to_string()),
        }
    }
}

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
}

/// A backup job as the host tracks it (catalog tree `backups`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackupJob {
    pub format: u32,
    pub id: String,
    pub tenant: TenantId,
    pub kind: String,
    pub state: JobState,
    pub created_at: u64,
    #[serde(default)]
    pub finished_at: Option<u64>,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub stored: Option<StoredBackup>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Pending,
    Running,
    Done,
    Failed,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::Running => "running",
            JobState::Done => "done",
            JobState::Failed => "failed",
        }
    }
}

pub const JOBS_TREE: &str = "backups";

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
        })
    }

    /// After a restart: jobs that were running are failed (their spool files
    /// removed), and a job published to the spool but not yet registered for
    /// replication (a crash between the two) is registered.
    pub fn recover(&self, storage: &Storage) {
        let jobs: Vec<BackupJob> = storage.catalog.list_json(JOBS_TREE).unwrap_or_default();
        for mut job in jobs {
            match job.state {
                JobState::Pending | JobState::Running => {
                    self.spool.discard(job.tenant.as_str(), &job.id);
                    job.state = JobState::Failed;
                    job.error = Some("interrupted by a host restart".into());
                    job.finished_at = Some(unix_now());
                    let _ = storage.catalog.put_json(JOBS_TREE, &job.id, &job);
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
        storage.catalog.put_json(JOBS_TREE, &job.id, &job)?;
        Ok(job)
    }

    /// Runs a backup job to its end and records the outcome.
    pub fn run(
        &self,
        storage: &Storage,
        schemas: &Registry,
        mut job: BackupJob,
        retain_secs: u64,
    ) -> BackupJob {
        job.state = JobState::Running;
        let _ = storage.catalog.put_json(JOBS_TREE, &job.id, &job);
        match self.write_backup(storage, schemas, &job, retain_secs) {
            Ok(stored) => {
                job.state = JobState::Done;
                job.stored = Some(stored);
            }
            Err(error) => {
                tracing::error!(backup_id = %job.id, %error, "backup failed");
                self.spool.discard(job.tenant.as_str(), &job.id);
                job.state = JobState::Failed;
                job.error = Some(error.to_string());
            }
        }
        job.finished_at = Some(unix_now());
        if let Err(error) = storage.catalog.put_json(JOBS_TREE, &job.id, &job) {
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
        };
        let backup_id: [u8; 16] = crypto::decode_hex(&job.id)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| BackupError::Invalid("backup id".into()))?;
        let (file, _) = self.spool.create_archive(tenant.id.as_str(), &job.id)?;
        let hashing = HashingWriter::new(std::io::BufWriter::with_capacity(256 * 1024, file));
        let mut sealing =
            sealed::seal(hashing, &self.backup_key, &backup_id, &tenant.id, &envelope)?;
        let summary = export::write_archive(&mut sealing, &tenant, &schema, &snapshot)?;
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
        };
        self.spool.publish(&stored)?;
        self.replication.register(storage, &stored)?;
        Ok(stored)
    }

    /// Opens a stored backup's archive stream from `region`, or from the
    /// spool or the first region that has it. The sealed chunks authenticate
    /// every byte as it is read (truncation included).
    pub fn open_stored(
        &self,
        tenant: &str,
        backup: &str,
        region: Option<&str>,
    ) -> Result<(sealed::Envelope, impl Read), BackupError> {
        let source: Box<dyn Read + Send> = match region {
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
        };
        let (header, envelope, reader) = sealed::open(
            std::io::BufReader::with_capacity(256 * 1024, source),
            &self.backup_key,
        )?;
        if header.tenant_id != tenant || header.backup_id != backup {
            return Err(BackupError::BadArchive(
                "the stored object belongs to another backup".into(),
            ));
        }
        Ok((envelope, reader))
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
        let (envelope, reader) = self.open_stored(tenant, backup, region)?;
        restore_archive(
            storage,
            schemas,
            reader,
            name,
            keep_id,
            self.region.clone(),
            self.limits,
            &envelope.admins,
            mint_token,
            copy_of,
        )
    }
}

/// The schema a tenant lives on, or a clear error.
pub fn tenant_schema(schemas: &Registry, tenant: &TenantRecord) -> Result<Schema, BackupError> {
    schemas
        .get(&tenant.schema, tenant.schema_version)
        .cloned()
        .map_err(|e| BackupError::Invalid(e.to_string()))
}

/// A tenant made from an archive.
#[derive(Debug)]
pub struct Restored {
    pub tenant: TenantRecord,
    /// A new admin token, when one was asked for.
    pub token: Option<String>,
    /// Records restored, per collection (as the archive's manifest counted them
    /// and the reader checked).
    pub counts: std::collections::BTreeMap<String, u64>,
    pub records: u64,
}

/// Reads an archive into a staged tenant and publishes it, or removes it.
/// `copy_of` records where it came from in the new tenant's own catalog
/// entry (published with it, so no copy exists unrecorded); for an import
/// its tenant is taken from the archive's manifest, and kept only when that
/// tenant lives on this host.
#[allow(clippy::too_many_arguments)]
pub fn restore_archive(
    storage: &Storage,
    schemas: &Registry,
    reader: impl Read,
    name: String,
    keep_id: Option<TenantId>,
    region: Region,
    limits: Limits,
    inherit: &[InheritedAdmin],
    mint_token: bool,
    copy_of: Option<CopyOf>,
) -> Result<Restored, BackupError> {
    let mut sink = StagingSink {
        storage,
        name,
        keep_id,
        region,
        staged: None,
        schema: None,
    };
    let result = import::read_archive(reader, schemas, limits, &mut sink);
    let staged = sink.staged.take();
    match (result, staged) {
        (Ok(summary), Some(mut staged)) => {
            staged.record.copy_of = copy_of.and_then(|mut copy| {
                if copy.kind == "import" {
                    copy.tenant = TenantId::parse(&summary.manifest.tenant.id)?;
                    storage.catalog.tenant(&copy.tenant)?;
                }
                Some(copy)
            });
            let (tenant, token) = storage.commit_staged(staged, inherit, mint_token)?;
            Ok(Restored {
                tenant,
                token,
                counts: summary.manifest.counts,
                records: summary.records,
            })
        }
        (Ok(_), None) => Err(BackupError::BadArchive("archive holds no schema".into())),
        (Err(error), staged) => {
            if let Some(staged) = staged {
                storage.abort_staged(staged);
            }
            Err(error)
        }
    }
}

struct StagingSink<'a> {
    storage: &'a Storage,
    name: String,
    keep_id: Option<TenantId>,
    region: Region,
    staged: Option<StagedTenant>,
    schema: Option<Schema>,
}

impl ArchiveSink for StagingSink<'_> {
    fn begin(&mut self, schema: &Schema) -> Result<(), BackupError> {
        let staged = self.storage.stage_tenant(NewTenant {
            id: self.keep_id.take(),
            name: std::mem::take(&mut self.name),
            region: self.region.clone(),
            schema: schema.name.clone(),
            schema_version: schema.version,
        })?;
        self.staged = Some(staged);
        self.schema = Some(schema.clone());
        Ok(())
    }

    fn record(
        &mut self,
        collection: &str,
        id: &RecordId,
        fields: &Map<String, Value>,
    ) -> Result<(), BackupError> {
        let (Some(staged), Some(schema)) = (&self.staged, &self.schema) else {
            return Err(BackupError::BadArchive("records before the schema".into()));
        };
        let spec = schema
            .collection(collection)
            .ok_or_else(|| BackupError::BadArchive(format!("unknown collection {collection}")))?;
        staged
            .db()
            .load_with_id(collection, spec, id, fields)
            .map_err(|e| match e {
                StorageError::Duplicate(field) if field == "id" => {
                    BackupError::BadArchive(format!("record id {id} repeats in {collection}"))
                }
                StorageError::Duplicate(field) => BackupError::BadArchive(format!(
                    "two records in {collection} share the unique {field}"
                )),
                other => BackupError::Storage(other),
            })
    }
}

/// What `verify` found.
#[derive(Debug, Serialize)]
pub struct VerifyReport {
    pub kind: &'static str,
    pub tenant: String,
    pub schema: String,
    pub schema_version: u32,
    pub records: u64,
    pub decompressed_bytes: u64,
    pub collections: std::collections::BTreeMap<String, u64>,
}

/// Verifies an archive file (portable export), or a sealed DR backup when a
/// backup key is given, without restoring anything.
pub fn verify_file(
    path: &Path,
    backup_key: Option<&SecretKey>,
    schemas: &Registry,
    limits: Limits,
) -> Result<VerifyReport, BackupError> {
    let file = std::fs::File::open(path)
        .map_err(|e| BackupError::Invalid(format!("open {}: {e}", path.display())))?;
    let mut reader = std::io::BufReader::with_capacity(256 * 1024, file);
    let mut magic = [0u8; 5];
    let sealed_file = {
        use std::io::BufRead;
        let head = reader.fill_buf().map_err(BackupError::from_io)?;
        head.len() >= 5 && {
            magic.copy_from_slice(&head[..5]);
            &magic == sealed::SEALED_MAGIC
        }
    };
    let (kind, summary) = if sealed_file {
        let key = backup_key.ok_or_else(|| {
            BackupError::Invalid("this is a sealed DR backup: give --backup-key-file".into())
        })?;
        let (_, _, opened) = sealed::open(reader, key)?;
        (
            "sealed DR backup",
            import::read_archive(opened, schemas, limits, &mut import::Discard)?,
        )
    } else {
        (
            "portable export",
            import::read_archive(reader, schemas, limits, &mut import::Discard)?,
        )
    };
    Ok(VerifyReport {
        kind,
        tenant: summary.manifest.tenant.id.clone(),
        schema: summary.manifest.schema.name.clone(),
        schema_version: summary.manifest.schema.version,
        records: summary.records,
        decompressed_bytes: summary.decompressed_bytes,
        collections: summary.manifest.counts.clone(),
    })
}

/// Counts and hashes what passes through.
struct HashingWriter<W> {
    inner: W,
    hasher: ring::digest::Context,
    total: u64,
}

impl<W: Write> HashingWriter<W> {
    fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: ring::digest::Context::new(&ring::digest::SHA256),
            total: 0,
        }
    }

    fn finish(self) -> (u64, String, W) {
        (
            self.total,
            crypto::encode_hex(self.hasher.finish().as_ref()),
            self.inner,
        )
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(data)?;
        self.hasher.update(&data[..n]);
        self.total += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A tenant's own backup interval, overriding the host default (catalog tree
/// `backup_schedules`). Zero hours turns scheduled backups off for the tenant.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    pub interval_hours: u64,
}

pub const SCHEDULES_TREE: &str = "backup_schedules";

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
        let jobs: Vec<BackupJob> = storage.catalog.list_json(JOBS_TREE).unwrap_or_default();
        let now = unix_now();
        let mut ran = 0;
        for tenant in storage.catalog.tenants() {
            if tenant.state != crate::storage::TenantState::Active {
                continue;
            }
            let interval = match storage
                .catalog
                .get_json::<Schedule>(SCHEDULES_TREE, tenant.id.as_str())
            {
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
