//! Master keys on disk: load and generate the keyring and the backup key
//! (rotation, which re-wraps every tenant, is `service::key_rotation`).
//!
//! The keyring lives in `<data-dir>/keys/` (never inside a tenant directory):
//! `kek-<id>.key` files of 64 hex digits, mode 0600, and `current`, naming the key
//! that wraps new data keys. A master key may instead come from a file
//! (`--master-key-file`) or the environment (`COFFER_MASTER_KEY`); such a key is
//! managed outside Coffer, so Coffer does not rotate it.
//!
//! Rotation is crash-safe by ordering: (1) the new key file is written and synced,
//! (2) `current` names it, (3) every tenant's DEK is re-wrapped, one durable
//! catalog write each, (4) only then are old key files deleted. A kill at any
//! point leaves each tenant wrapped under a key whose file still exists; running
//! the rotation again finishes the job.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::Context;

use crate::crypto::{Keyring, MasterKey, SecretKey};
pub use crate::secret_file::{check_private, read_key_file, write_secret};

pub use crate::config::{KeySource, MASTER_KEY_ENV};

/// Loads the keyring, generating the first key when the data directory is new.
pub fn load(data_dir: &Path, source: &KeySource) -> anyhow::Result<Keyring> {
    match source {
        KeySource::File(path) => {
            let key = read_key_file(path)?;
            Ok(Keyring::new(MasterKey::new(key)))
        }
        KeySource::Environment => {
            let text = zeroize::Zeroizing::new(
                std::env::var(MASTER_KEY_ENV).with_context(|| format!("read {MASTER_KEY_ENV}"))?,
            );
            let key = SecretKey::from_hex(&text)
                .map_err(|_| anyhow::anyhow!("{MASTER_KEY_ENV} must hold 64 hex digits"))?;
            Ok(Keyring::new(MasterKey::new(key)))
        }
        KeySource::DataDir => {
            let dir = data_dir.join("keys");
            fs::create_dir_all(&dir).context("create keys directory")?;
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
                .context("restrict keys directory")?;
            let current_file = dir.join("current");
            if !current_file.exists() {
                let key = MasterKey::new(SecretKey::generate()?);
                write_key_file(&dir.join(format!("kek-{}.key", key.id)), key.secret())?;
                write_atomically(&current_file, key.id.as_bytes())?;
                tracing::info!(kek_id = %key.id, dir = %dir.display(), "generated a new master key");
            }
            let current_id = fs::read_to_string(&current_file)
                .context("read keys/current")?
                .trim()
                .to_string();
            let mut keys = Vec::new();
            for entry in fs::read_dir(&dir).context("list keys directory")? {
                let path = entry?.path();
                let is_key = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("kek-") && n.ends_with(".key"));
                if is_key {
                    keys.push(MasterKey::new(read_key_file(&path)?));
                }
            }
            let current = keys
                .iter()
                .find(|k| k.id == current_id)
                .cloned()
                .with_context(|| {
                    format!("keys/current names {current_id}, which has no key file")
                })?;
            let mut keyring = Keyring::new(current);
            for key in keys {
                keyring.add(key);
            }
            Ok(keyring)
        }
    }
}

/// The backup key: from `file` (0600), or `<data-dir>/backup.key`, generated on
/// first start. Held apart from the master key: a host in another region needs
/// only this key and the backup store to restore.
pub fn load_backup_key(data_dir: &Path, file: Option<&Path>) -> anyhow::Result<SecretKey> {
    if let Some(path) = file {
        return read_key_file(path);
    }
    let path = data_dir.join("backup.key");
    if !path.exists() {
        let key = SecretKey::generate()?;
        write_key_file(&path, &key)?;
        tracing::info!(path = %path.display(), "generated a new backup key; keep a copy off this host");
    }
    read_key_file(&path)
}

pub(crate) fn write_key_file(path: &Path, key: &SecretKey) -> anyhow::Result<()> {
    let hex = key.to_hex();
    write_secret(path, format!("{}\n", hex.as_str()).as_bytes())
}

pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    write_secret(path, bytes)
}
