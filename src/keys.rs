//! Master keys on disk: load, generate, and rotate the keyring.
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
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use crate::crypto::{Keyring, MasterKey, SecretKey};
use crate::storage::Storage;

/// Where the master key comes from.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// The keyring directory under the data directory (generated on first start).
    DataDir,
    /// One key in a file managed outside Coffer.
    File(PathBuf),
    /// One key, hex, in `COFFER_MASTER_KEY`.
    Environment,
}

pub const MASTER_KEY_ENV: &str = "COFFER_MASTER_KEY";

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

/// Rotates the master key of a data-directory keyring; see the module doc.
/// `after_each(done, total)` is called after every re-wrapped tenant.
pub fn rotate(
    storage: &Storage,
    source: &KeySource,
    after_each: impl FnMut(usize, usize),
) -> anyhow::Result<RotationReport> {
    let KeySource::DataDir = source else {
        bail!("the master key is managed outside Coffer (file or environment), and Coffer rotates only the keyring in its data directory; do not swap the external key, tenants wrapped under it would no longer open");
    };
    let _rotating = storage
        .rotation
        .try_lock()
        .map_err(|_| anyhow::anyhow!("a master key rotation is already running"))?;
    let dir = storage.root().join("keys");
    let new_key = MasterKey::new(SecretKey::generate()?);
    write_key_file(
        &dir.join(format!("kek-{}.key", new_key.id)),
        new_key.secret(),
    )?;
    write_atomically(&dir.join("current"), new_key.id.as_bytes())?;
    storage.add_kek(new_key.clone(), true);
    let rewrapped = storage.rewrap_all(after_each)?;
    let in_use = storage.kek_ids_in_use();
    let mut retired = Vec::new();
    for entry in fs::read_dir(&dir).context("list keys directory")? {
        let path = entry?.path();
        let Some(id) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("kek-"))
            .and_then(|n| n.strip_suffix(".key"))
        else {
            continue;
        };
        if id != new_key.id && !in_use.iter().any(|used| used == id) {
            fs::remove_file(&path).with_context(|| format!("retire {}", path.display()))?;
            retired.push(id.to_string());
        }
    }
    sync_dir(&dir)?;
    storage.retire_keks(&in_use);
    Ok(RotationReport {
        new_kek_id: new_key.id,
        rewrapped,
        retired,
    })
}

#[derive(Debug, serde::Serialize)]
pub struct RotationReport {
    pub new_kek_id: String,
    pub rewrapped: usize,
    pub retired: Vec<String>,
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

/// Reads a secret file, refusing one that group or others can read.
pub fn read_key_file(path: &Path) -> anyhow::Result<SecretKey> {
    check_private(path)?;
    let text = zeroize::Zeroizing::new(
        fs::read_to_string(path).with_context(|| format!("read key file {}", path.display()))?,
    );
    SecretKey::from_hex(&text)
        .map_err(|_| anyhow::anyhow!("key file {} must hold 64 hex digits", path.display()))
}

/// Refuses a secret file whose mode lets group or others read or write it.
pub fn check_private(path: &Path) -> anyhow::Result<()> {
    let mode = fs::metadata(path)
        .with_context(|| format!("read {}", path.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        bail!(
            "{} has mode {:o}; secret files must be 0600 (chmod 600 {})",
            path.display(),
            mode & 0o777,
            path.display()
        );
    }
    Ok(())
}

fn write_key_file(path: &Path, key: &SecretKey) -> anyhow::Result<()> {
    let hex = key.to_hex();
    write_secret(path, format!("{}\n", hex.as_str()).as_bytes())
}

/// Writes a 0600 file atomically (temp file, fsync, rename, fsync directory).
pub fn write_secret(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("create {}", tmp.display()))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&tmp, path).with_context(|| format!("rename into {}", path.display()))?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    write_secret(path, bytes)
}

fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("sync {}", dir.display()))
}
