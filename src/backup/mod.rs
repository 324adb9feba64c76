//! Backups: the archive format, portable exports, sealed disaster-recovery
//! backups in a store, verification, and restore into a new tenant.
//!
//! - [`format`] — the archive (tar + zstd, manifest first) and its limits.
//! - [`export`] — writes an archive from a consistent [`Snapshot`].
//! - [`import`] — reads an untrusted archive, checking everything.
//! - [`sealed`] — the STREAM-sealed DR object around an archive.
//! - [`store`] — the host's spool: sealed backups wait here (write-once,
//!   manifest last) until `replication` has them in every region.
//! - [`watch`] — long jobs that stop when their tenant is deactivated or purged.
//!
//! Restores never touch a live tenant: they fill a staged tenant and publish
//! it in one catalog write, or remove every file they wrote.
//!
//! [`Snapshot`]: crate::storage::Snapshot

pub mod drill;
pub mod export;
pub mod format;
pub mod import;
pub mod sealed;
pub mod segment;
pub mod store;
pub mod watch;

use std::io::{Read, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::crypto::{self, CryptoError, SecretKey};
use crate::ids::{RecordId, Region, TenantId};
use crate::schema::{Registry, Schema};
use crate::storage::{
    CopyOf, InheritedAdmin, Kind, NewTenant, StagedTenant, Storage, StorageError, TenantRecord,
};
use format::Limits;
use import::ArchiveSink;
use store::StoredBackup;

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
    /// Stopped because its tenant was deactivated or purged meanwhile.
    #[error("{0}")]
    Stopped(String),
    /// What was asked cannot be done from what is stored (a point-in-time
    /// restore without a base or across a gap in the log).
    #[error("{0}")]
    Conflict(String),
    /// The tenant's own key did not wrap or unwrap a backup's key.
    #[error("{0}")]
    KeyUnavailable(String),
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

    pub fn from_sealed_io(error: &std::io::Error) -> Self {
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

pub const JOBS: Kind<BackupJob> = Kind::new("backups");

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
    tenant_key: TenantKey<'_>,
) -> Result<Restored, BackupError> {
    restore_archive_then(
        storage,
        schemas,
        reader,
        NewCopy {
            name,
            keep_id,
            region,
            inherit,
            mint_token,
            copy_of,
            tenant_key,
        },
        limits,
        &mut |_, _| Ok(()),
    )
}

/// Who a restored tenant is, besides its records.
pub struct NewCopy<'a> {
    pub name: String,
    pub keep_id: Option<TenantId>,
    pub region: Region,
    pub inherit: &'a [InheritedAdmin],
    pub mint_token: bool,
    pub copy_of: Option<CopyOf>,
    /// A copy of a customer-keyed tenant: the tenant's key and its wrapping
    /// of the backup's key, so that the copy is published under it too.
    pub tenant_key: TenantKey<'a>,
}

/// The tenant's own key a restored copy stays under, when it had one.
pub type TenantKey<'a> = Option<(&'a dyn sealed::OuterKey, Vec<u8>)>;

/// Like [`restore_archive`], with `then` run on the staged tenant once the
/// archive is in and before it is published (a point-in-time restore replays
/// its change log there). Its error removes the staged tenant.
pub fn restore_archive_then(
    storage: &Storage,
    schemas: &Registry,
    reader: impl Read,
    copy: NewCopy<'_>,
    limits: Limits,
    then: &mut dyn FnMut(&crate::storage::TenantDb, &Schema) -> Result<(), BackupError>,
) -> Result<Restored, BackupError> {
    let NewCopy {
        name,
        keep_id,
        region,
        inherit,
        mint_token,
        copy_of,
        tenant_key,
    } = copy;
    let mut sink = StagingSink {
        storage,
        replacing: None,
        name,
        keep_id,
        region,
        staged: None,
        schema: None,
    };
    let mut result = import::read_archive(reader, schemas, limits, &mut sink);
    let staged = sink.staged.take();
    if let (Ok(summary), Some(staged), Some(schema)) = (&mut result, &staged, &sink.schema) {
        match then(staged.db(), schema) {
            Ok(()) => {
                // Replayed changes alter what the archive counted.
                let mut total = 0;
                for (collection, count) in summary.manifest.counts.iter_mut() {
                    *count = staged.db().count(collection)?;
                    total += *count;
                }
                summary.records = total;
            }
            Err(error) => result = Err(error),
        }
    }
    match (result, staged) {
        (Ok(summary), Some(mut staged)) => {
            staged.record.copy_of = copy_of.and_then(|mut copy| {
                if copy.kind == "import" {
                    copy.tenant = TenantId::parse(&summary.manifest.tenant.id)?;
                    storage.catalog.tenant(&copy.tenant)?;
                }
                Some(copy)
            });
            if let Some((outer, wrapped)) = &tenant_key {
                // Under the tenant's own key before it is published: no
                // moment exists when the copy opens without it.
                let put = outer
                    .prepare(&staged.record.id, wrapped)
                    .map_err(|why| {
                        BackupError::KeyUnavailable(format!(
                            "the copy could not be put under the tenant's own key ({why}); nothing was restored"
                        ))
                    })
                    .and_then(|()| Ok(storage.stage_under_customer_key(&mut staged)?));
                if let Err(error) = put {
                    storage.abort_staged(staged);
                    return Err(error);
                }
            }
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

/// Reads an archive into a replacement of `tenant`'s database, runs `then`
/// on it (the change log's replay), and swaps it in: the tenant keeps its id,
/// its admins and its name; its records become the archive's. Crash-safe like
/// an upgrade's swap. The caller freezes the live database first.
pub fn restore_in_place_then(
    storage: &Storage,
    schemas: &Registry,
    reader: impl Read,
    tenant: &TenantRecord,
    limits: Limits,
    then: &mut dyn FnMut(&crate::storage::TenantDb, &Schema) -> Result<(), BackupError>,
) -> Result<(TenantRecord, u64), BackupError> {
    let mut sink = StagingSink {
        storage,
        replacing: Some(tenant),
        name: tenant.name.clone(),
        keep_id: None,
        region: tenant.region.clone(),
        staged: None,
        schema: None,
    };
    let mut result = import::read_archive(reader, schemas, limits, &mut sink);
    let staged = sink.staged.take();
    if let (Ok(_), Some(staged), Some(schema)) = (&result, &staged, &sink.schema) {
        if let Err(error) = then(staged.db(), schema) {
            result = Err(error);
        }
    }
    match (result, staged, sink.schema) {
        (Ok(_), Some(staged), Some(schema)) => {
            let mut records = 0;
            for collection in schema.collections.keys() {
                records += staged.db().count(collection)?;
            }
            let swapped = storage.swap_in_replacement(staged, schema.version)?;
            Ok((swapped, records))
        }
        (Ok(_), staged, _) => {
            if let Some(staged) = staged {
                storage.abort_staged(staged);
            }
            Err(BackupError::BadArchive("archive holds no schema".into()))
        }
        (Err(error), staged, _) => {
            if let Some(staged) = staged {
                storage.abort_staged(staged);
            }
            Err(error)
        }
    }
}

struct StagingSink<'a> {
    storage: &'a Storage,
    /// Restoring in place: the tenant whose database the archive replaces.
    replacing: Option<&'a TenantRecord>,
    name: String,
    keep_id: Option<TenantId>,
    region: Region,
    staged: Option<StagedTenant>,
    schema: Option<Schema>,
}

impl ArchiveSink for StagingSink<'_> {
    fn begin(&mut self, schema: &Schema) -> Result<(), BackupError> {
        if let Some(tenant) = self.replacing {
            if schema.name != tenant.schema {
                return Err(BackupError::BadArchive(format!(
                    "the archive holds a {} tenant, not {}",
                    schema.name, tenant.schema
                )));
            }
            let mut staged = self.storage.stage_replacement(tenant)?;
            staged.record.schema_version = schema.version;
            self.staged = Some(staged);
            self.schema = Some(schema.clone());
            return Ok(());
        }
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
pub struct HashingWriter<W> {
    inner: W,
    hasher: ring::digest::Context,
    total: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: ring::digest::Context::new(&ring::digest::SHA256),
            total: 0,
        }
    }

    pub fn finish(self) -> (u64, String, W) {
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

pub const SCHEDULES: Kind<Schedule> = Kind::new("backup_schedules");
