//! Master-key rotation: a new key in the data directory's keyring, every
//! tenant's DEK re-wrapped under it, old key files retired. Crash-safe by
//! ordering (see `keys`): a kill at any point leaves each tenant wrapped
//! under a key whose file still exists; running it again finishes the job.

use std::fs;

use anyhow::{bail, Context};

use crate::config::KeySource;
use crate::crypto::{MasterKey, SecretKey};
use crate::keys::{write_atomically, write_key_file};
use crate::secret_file::sync_dir;
use crate::storage::Storage;

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
