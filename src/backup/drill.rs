//! Restore drills, the backup side: an archive restored into a scratch
//! tenant that is never published (it lives under `staging/` and never
//! enters the catalog, so no API sees it), checked against the archive's own
//! manifest — the per-collection counts, and every member's size and SHA-256
//! recomputed from an export of the restored records — then removed, whatever
//! the outcome. An integrity hash says the bytes are the bytes; this says they
//! become the tenant again.

use std::io::Read;

use super::format::Limits;
use super::{export, import, BackupError, StagingSink};
use crate::ids::Region;
use crate::schema::Registry;
use crate::storage::Storage;

/// What a drill restored and checked.
#[derive(Debug, Clone)]
pub struct Drilled {
    pub records: u64,
    /// Members whose SHA-256 was recomputed and matched.
    pub members: usize,
}

/// Restores `reader` (a plain archive) into a scratch tenant, checks it, and
/// removes it. An error names what did not match.
pub fn drill_archive(
    storage: &Storage,
    schemas: &Registry,
    reader: impl Read,
    limits: Limits,
    region: Region,
) -> Result<Drilled, BackupError> {
    let mut sink = StagingSink {
        storage,
        replacing: None,
        name: "restore drill".into(),
        keep_id: None,
        region,
        staged: None,
        schema: None,
    };
    let read = import::read_archive(reader, schemas, limits, &mut sink);
    let staged = sink.staged.take();
    let checked = match (read, &staged, &sink.schema) {
        (Ok(summary), Some(staged), Some(schema)) => check(
            &summary.manifest,
            &staged.db_handle(),
            &staged.record,
            schema,
        ),
        (Ok(_), _, _) => Err(BackupError::BadArchive(
            "the archive holds no schema".into(),
        )),
        (Err(error), _, _) => Err(error),
    };
    if let Some(staged) = staged {
        storage.abort_staged(staged);
    }
    checked
}

fn check(
    manifest: &super::format::Manifest,
    db: &std::sync::Arc<crate::storage::TenantDb>,
    record: &crate::storage::TenantRecord,
    schema: &crate::schema::Schema,
) -> Result<Drilled, BackupError> {
    let snapshot = db.snapshot()?;
    let again = export::write_archive(std::io::sink(), record, schema, &snapshot)?;
    if again.manifest.counts != manifest.counts {
        return Err(BackupError::Inconsistent(format!(
            "the restored tenant holds {:?} records, the backup's manifest {:?}",
            again.manifest.counts, manifest.counts
        )));
    }
    for member in &manifest.members {
        let Some(restored) = again
            .manifest
            .members
            .iter()
            .find(|m| m.path == member.path)
        else {
            return Err(BackupError::Inconsistent(format!(
                "{} is in the backup but not in the restored tenant",
                member.path
            )));
        };
        if restored.sha256 != member.sha256 || restored.size != member.size {
            return Err(BackupError::Inconsistent(format!(
                "{} restored as {} bytes with SHA-256 {}, the manifest says {} bytes with {}",
                member.path, restored.size, restored.sha256, member.size, member.sha256
            )));
        }
    }
    Ok(Drilled {
        records: again.records,
        members: manifest.members.len(),
    })
}
