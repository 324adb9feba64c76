//! The schema upgrade service: moves a tenant to a newer version of its schema.
//!
//! 1. Writes to the tenant are frozen (reads go on), so nothing written during
//!    the upgrade can be lost.
//! 2. A DR backup of the tenant is taken first and kept (`pre-upgrade`, four
//!    months by default); if it fails, nothing else happens.
//! 3. Every record of a snapshot is migrated along each declared step
//!    (`tenant-schemas/<schema>/v<N>.toml`, `[[migration]]`), validated against
//!    the target version and written, under a fresh data key, into a staged copy
//!    of the tenant.
//! 4. The copy is swapped in crash-safely (`Storage::swap_in_replacement`).
//!
//! Any failure before the swap removes the copy and thaws the tenant: it is
//! exactly as it was.

use serde_json::Value;

use crate::backup::{BackupError, JobState};
use crate::ids::RecordId;
use crate::schema::Registry;
use crate::service::Backups;
use crate::storage::{Storage, StorageError, TenantRecord, TenantState};

/// Pre-upgrade backups are kept this long (about four months).
pub const PRE_UPGRADE_RETENTION_SECS: u64 = 120 * 86_400;

#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("tenant is {0}; only an active tenant can be upgraded")]
    NotActive(&'static str),
    #[error("tenant is on {schema} v{current}; choose a newer version than that")]
    NotNewer { schema: String, current: u32 },
    #[error("{0}")]
    UnknownVersion(String),
    #[error("the pre-upgrade backup failed, so nothing was changed: {0}")]
    BackupFailed(String),
    #[error("record {id} in {collection} does not fit v{version} after migration: {reason}")]
    RecordDoesNotFit {
        collection: String,
        id: RecordId,
        version: u32,
        reason: String,
    },
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Backup(#[from] BackupError),
}

#[derive(Debug, serde::Serialize)]
pub struct UpgradeReport {
    pub schema: String,
    pub from_version: u32,
    pub to_version: u32,
    pub records: u64,
    pub backup_id: String,
}

/// Whether `tenant` can be upgraded to `target` at all (active, a newer
/// version that exists): checked before anything is audited or done.
pub fn check(schemas: &Registry, tenant: &TenantRecord, target: u32) -> Result<(), UpgradeError> {
    if tenant.state != TenantState::Active {
        return Err(UpgradeError::NotActive(tenant.state.as_str()));
    }
    if tenant.rotating_to.is_some() {
        return Err(UpgradeError::Storage(StorageError::Exists(
            crate::storage::ROTATING.into(),
        )));
    }
    if target <= tenant.schema_version {
        return Err(UpgradeError::NotNewer {
            schema: tenant.schema.clone(),
            current: tenant.schema_version,
        });
    }
    schemas
        .get(&tenant.schema, target)
        .map_err(|e| UpgradeError::UnknownVersion(e.to_string()))?;
    Ok(())
}

pub fn upgrade(
    storage: &Storage,
    schemas: &Registry,
    backups: &Backups,
    tenant: &TenantRecord,
    target: u32,
    changelog: Option<&super::changelog::ChangeLog>,
) -> Result<UpgradeReport, UpgradeError> {
    check(schemas, tenant, target)?;
    let steps = (tenant.schema_version + 1..=target)
        .map(|v| schemas.get(&tenant.schema, v).cloned())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| UpgradeError::UnknownVersion(e.to_string()))?;
    let source = schemas
        .get(&tenant.schema, tenant.schema_version)
        .map_err(|e| UpgradeError::UnknownVersion(e.to_string()))?
        .clone();
    let target_schema = steps.last().expect("at least one step").clone();

    let db = storage.tenant_db(tenant)?;
    db.freeze();
    let outcome = (|| {
        // Writes are frozen: what the log holds goes to the spool first, since
        // the old database leaves with the swap. The new database is a new
        // generation of the log, continuing the same sequence.
        if let Some(log) = changelog {
            log.ship(&tenant.id)
                .map_err(|e| UpgradeError::BackupFailed(e.to_string()))?;
        }
        let job = backups.enqueue(storage, &tenant.id, "pre-upgrade")?;
        let job = backups.run(storage, schemas, job, PRE_UPGRADE_RETENTION_SECS);
        if job.state != JobState::Done {
            return Err(UpgradeError::BackupFailed(job.error.unwrap_or_default()));
        }
        let snapshot = db.snapshot()?;
        let staged = storage.stage_replacement(tenant)?;
        staged.db().continue_from(db.last_seq())?;
        let mut records = 0u64;
        for collection in source.collections.keys() {
            let spec = target_schema
                .collection(collection)
                .expect("migrations never remove collections (checked by the schema test)");
            for item in snapshot.records(collection) {
                let (id, mut fields) = item?;
                for step in &steps {
                    step.migrate_record(collection, &mut fields);
                }
                spec.validate(&Value::Object(fields.clone())).map_err(|e| {
                    UpgradeError::RecordDoesNotFit {
                        collection: collection.clone(),
                        id: id.clone(),
                        version: target,
                        reason: e.to_string(),
                    }
                })?;
                staged
                    .db()
                    .load_with_id(collection, spec, &id, &fields)
                    .map_err(|e| match e {
                        // A field that became case-insensitive can make two
                        // records' values one value.
                        StorageError::Duplicate(field) => UpgradeError::RecordDoesNotFit {
                            collection: collection.clone(),
                            id: id.clone(),
                            version: target,
                            reason: format!(
                                "another record has the same {field} as this one does, compared as v{target} compares it (e.g. ignoring case); change one of them, then upgrade"
                            ),
                        },
                        other => UpgradeError::Storage(other),
                    })?;
                records += 1;
            }
        }
        drop(snapshot);
        Ok((staged, records, job.id))
    })();
    match outcome {
        Ok((staged, records, backup_id)) => {
            drop(db);
            let swapped = storage.swap_in_replacement(staged, target)?;
            Ok(UpgradeReport {
                schema: swapped.schema,
                from_version: tenant.schema_version,
                to_version: target,
                records,
                backup_id,
            })
        }
        Err(error) => {
            db.thaw();
            Err(error)
        }
    }
}
