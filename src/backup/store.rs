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
        self.write_manifest(stored, true)
    }

    /// Publishes like `publish` but leaves the archive, the manifest and
    /// their directories to reach the disk at `sync`: for change-log
    /// segments, whose changes stay in the tenant's database until `sync`
    /// has run, so that uploading need not wait for the disk (a copy a crash
    /// tore before `sync` is found at the next start: `ChangeLog::recover`).
    pub fn publish_unsynced(&self, stored: &StoredBackup) -> Result<(), BackupError> {
        self.write_manifest(stored, false)
    }

    /// Makes a backup published with `publish_unsynced` durable. A backup no
    /// longer in the spool is fine: it went because every region holds it
    /// (or it was tombstoned).
    pub fn sync(&self, tenant: &str, backup: &str) -> Result<(), BackupError> {
        let dir = self.dir(tenant, backup);
        let sync = |path: &Path| match fs::File::open(path).and_then(|f| f.sync_all()) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => other.map_err(BackupError::from_io),
        };
        sync(&dir.join(ARCHIVE_OBJECT))?;
        sync(&dir.join(MANIFEST_OBJECT))?;
        sync(&dir)?;
        sync(&self.root.join("tenants").join(tenant))
    }

    /// Whether the spool's copy is whole: published, and its archive has the
    /// size and SHA-256 its manifest names.
    pub fn intact(&self, tenant: &str, backup: &str) -> bool {
        let Ok(Some(stored)) = self.get(tenant, backup) else {
            return false;
        };
        let Ok(file) = self.open_archive(tenant, backup) else {
            return false;
        };
        let mut hashing = super::HashingWriter::new(std::io::sink());
        if std::io::copy(&mut std::io::BufReader::new(file), &mut hashing).is_err() {
            return false;
        }
        let (size, sha256, _) = hashing.finish();
        size == stored.archive_size && sha256 == stored.archive_sha256
    }

    fn write_manifest(&self, stored: &StoredBackup, durable: bool) -> Result<(), BackupError> {
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
            .and_then(|_| if durable { file.sync_all() } else { Ok(()) })
            .map_err(BackupError::from_io)?;
        fs::rename(&tmp, &path).map_err(BackupError::from_io)?;
        if !durable {
            return Ok(());
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(tenant: &str, backup: &str, archive: &[u8]) -> StoredBackup {
        let mut hashing = crate::backup::HashingWriter::new(std::io::sink());
        hashing.write_all(archive).unwrap();
        let (size, sha256, _) = hashing.finish();
        StoredBackup {
            format: 1,
            backup_id: backup.into(),
            tenant_id: tenant.into(),
            created_at: 1,
            kind: "log".into(),
            retain_until: 2,
            archive_size: size,
            archive_sha256: sha256,
            records: 1,
            covers: None,
            log: None,
        }
    }

    #[test]
    fn an_unsynced_copy_is_published_synced_later_and_checked_whole() {
        let root = std::env::temp_dir().join(format!("coffer-spool-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let spool = LocalStore::new(&root).unwrap();
        let (tenant, backup) = ("t1", "log-1");
        let archive = b"sealed bytes of a segment".to_vec();
        let (mut file, path) = spool.create_archive(tenant, backup).unwrap();
        file.write_all(&archive).unwrap();
        drop(file);
        spool
            .publish_unsynced(&stored(tenant, backup, &archive))
            .unwrap();
        assert_eq!(spool.get(tenant, backup).unwrap().unwrap().archive_size, 25);
        assert!(spool.intact(tenant, backup));
        spool.sync(tenant, backup).unwrap();

        // What a crash before `sync` can leave: a short archive, other bytes,
        // no manifest. None counts as whole.
        fs::write(&path, &archive[..10]).unwrap();
        assert!(!spool.intact(tenant, backup));
        let mut flipped = archive.clone();
        flipped[3] ^= 1;
        fs::write(&path, &flipped).unwrap();
        assert!(!spool.intact(tenant, backup));
        fs::write(&path, &archive).unwrap();
        assert!(spool.intact(tenant, backup));
        fs::remove_file(path.with_file_name(MANIFEST_OBJECT)).unwrap();
        assert!(!spool.intact(tenant, backup));

        // A copy that left the spool (in every region) needs no sync.
        spool.remove(tenant, backup);
        spool.sync(tenant, backup).unwrap();
        let _ = fs::remove_dir_all(&root);
    }
}
