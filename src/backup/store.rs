//! The host's spool: sealed backups are written here first, then replicated to
//! every backup region (`crate::replication`) and removed once all hold them.
//!
//! Layout: `tenants/<tenant>/<backup>/archive.cfrdr`, then
//! `tenants/<tenant>/<backup>/manifest.json` written last. A backup whose
//! manifest is missing does not exist (an interrupted upload is ignored and
//! cleaned up). Names are never reused.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::BackupError;

pub const ARCHIVE_OBJECT: &str = "archive.cfrdr";
pub const MANIFEST_OBJECT: &str = "manifest.json";

/// The public description of a stored backup. Holds ids, sizes, hashes and
/// times only: a holder of the store learns nothing else.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StoredBackup {
    pub format: u32,
    pub backup_id: String,
    pub tenant_id: String,
    pub created_at: u64,
    /// Why it was taken: `manual`, `scheduled` or `pre-upgrade`.
    pub kind: String,
    pub retain_until: u64,
    pub archive_size: u64,
    pub archive_sha256: String,
    pub records: u64,
    /// Full backups: the tenant's write sequence at the snapshot (its change
    /// log continues after it) and the log's generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub covers: Option<crate::backup::segment::Covers>,
    /// Change-log segments (`kind` = `log`): what the segment holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<crate::backup::segment::LogRange>,
}

#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    pub fn new(root: &Path) -> Result<LocalStore, BackupError> {
        fs::create_dir_all(root).map_err(BackupError::from_io)?;
        Ok(LocalStore {
            root: root.to_path_buf(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn dir(&self, tenant: &str, backup: &str) -> PathBuf {
        self.root.join("tenants").join(tenant).join(backup)
    }

    /// A new file for the archive object; refuses a name that exists (write-once).
    pub fn create_archive(
        &self,
        tenant: &str,
        backup: &str,
    ) -> Result<(fs::File, PathBuf), BackupError> {
        let dir = self.dir(tenant, backup);
        fs::create_dir_all(&dir).map_err(BackupError::from_io)?;
        let path = dir.join(ARCHIVE_OBJECT);
        let file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| BackupError::Store(format!("create {}: {e}", path.display())))?;
        Ok((file, path))
    }

    /// Publishes a backup by writing its manifest, last and atomically.
    pub fn publish(&self, stored: &StoredBackup) -> Result<(), BackupError> {
        let dir = self.dir(&stored.tenant_id, &stored.backup_id);
        let path = dir.join(MANIFEST_OBJECT);
        if path.exists() {
            return Err(BackupError::Store(format!(
                "{} already exists",
                path.display()
            )));
        }
        let tmp = dir.join("manifest.json.tmp");
        let mut file = fs::File::create(&tmp).map_err(BackupError::from_io)?;
        file.write_all(&serde_json::to_vec_pretty(stored).expect("serialises"))
            .and_then(|_| file.sync_all())
            .map_err(BackupError::from_io)?;
        fs::rename(&tmp, &path).map_err(BackupError::from_io)?;
        fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(BackupError::from_io)
    }

    pub fn archive_path(&self, tenant: &str, backup: &str) -> PathBuf {
        self.dir(tenant, backup).join(ARCHIVE_OBJECT)
    }

    /// Removes a backup from the spool (it is in every region, or tombstoned):
    /// the manifest first, so a crash in between leaves an unpublished upload.
    pub fn remove(&self, tenant: &str, backup: &str) {
        let dir = self.dir(tenant, backup);
        let _ = fs::remove_file(dir.join(MANIFEST_OBJECT));
        let _ = fs::remove_dir_all(&dir);
        let _ = fs::remove_dir(self.root.join("tenants").join(tenant));
    }

    pub fn open_archive(&self, tenant: &str, backup: &str) -> Result<fs::File, BackupError> {
        let path = self.dir(tenant, backup).join(ARCHIVE_OBJECT);
        fs::File::open(&path).map_err(|_| BackupError::NotFound)
    }

    pub fn get(&self, tenant: &str, backup: &str) -> Result<Option<StoredBackup>, BackupError> {
        let path = self.dir(tenant, backup).join(MANIFEST_OBJECT);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| BackupError::Store(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(BackupError::from_io(e)),
        }
    }

    /// Published backups of one tenant, oldest first.
    pub fn list(&self, tenant: &str) -> Result<Vec<StoredBackup>, BackupError> {
        let dir = self.root.join("tenants").join(tenant);
        let mut out = Vec::new();
        let Ok(entries) = fs::read_dir(&dir) else {
            return Ok(out);
        };
        for entry in entries {
            let name = entry.map_err(BackupError::from_io)?.file_name();
            if let Some(stored) = self.get(tenant, &name.to_string_lossy())? {
                out.push(stored);
            }
        }
        out.sort_by(|a, b| (a.created_at, &a.backup_id).cmp(&(b.created_at, &b.backup_id)));
        Ok(out)
    }

    /// Tenants that have at least one object in the store.
    pub fn tenants(&self) -> Result<Vec<String>, BackupError> {
        let Ok(entries) = fs::read_dir(self.root.join("tenants")) else {
            return Ok(Vec::new());
        };
        let mut out: Vec<String> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        out.sort();
        Ok(out)
    }

    /// Removes an unpublished (interrupted) upload.
    pub fn discard(&self, tenant: &str, backup: &str) {
        let dir = self.dir(tenant, backup);
        if !dir.join(MANIFEST_OBJECT).exists() {
            let _ = fs::remove_dir_all(dir);
        }
    }
}
