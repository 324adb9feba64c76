//! Secret files: written 0600 and atomically, refused when group or others
//! can read them. A leaf: the keyring, the audit log's signing key, the
//! backup key, tokens on disk and the CLI's token files all go through here.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::{bail, Context};

use crate::crypto::SecretKey;

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

/// Syncs a directory, so that a rename into it is durable.
pub fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("sync {}", dir.display()))
}
