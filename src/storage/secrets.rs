//! Host secrets other than data keys (webhook signing secrets, tenants' key
//! service tokens), wrapped under
//! the master key like DEKs and kept in the catalog (tree `secrets`), so that
//! master-key rotation re-wraps them and never retires a key they need.

use serde::{Deserialize, Serialize};

use super::catalog::{Kind, WrappedDek};
use super::{Storage, StorageError};
use crate::crypto::{self, SecretKey};

/// Wrapped secrets by name (the name is also their associated data).
const SECRETS: Kind<WrappedSecret> = Kind::new("secrets");

#[derive(Debug, Clone, Serialize, Deserialize)]
struct WrappedSecret {
    wrapped: WrappedDek,
    /// Text of any length (a token) rather than a 32-byte key.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    text: bool,
}

impl Storage {
    /// Stores `secret` under `name`, wrapped by the current master key.
    pub fn put_secret(&self, name: &str, secret: &SecretKey) -> Result<(), StorageError> {
        let kek = self.current_kek();
        let wrapped = WrappedDek {
            kek_id: kek.id.clone(),
            sealed: crypto::encode_hex(&kek.wrap_dek(&label(name), secret)?),
            key_id: 0,
            customer: false,
        };
        SECRETS.put(
            &self.catalog,
            name,
            &WrappedSecret {
                wrapped,
                text: false,
            },
        )
    }

    /// Stores a secret text (a key service's token) under `name`.
    pub fn put_secret_text(&self, name: &str, text: &str) -> Result<(), StorageError> {
        let kek = self.current_kek();
        let wrapped = WrappedDek {
            kek_id: kek.id.clone(),
            sealed: crypto::encode_hex(&kek.seal_blob(&label(name), text.as_bytes())?),
            key_id: 0,
            customer: false,
        };
        SECRETS.put(
            &self.catalog,
            name,
            &WrappedSecret {
                wrapped,
                text: true,
            },
        )
    }

    /// The secret text stored under `name`.
    pub fn secret_text(&self, name: &str) -> Result<zeroize::Zeroizing<String>, StorageError> {
        self.open_secret(name, |kek, label, sealed| {
            let plain = kek.open_blob(label, sealed).map_err(|_| ())?;
            String::from_utf8(plain.to_vec())
                .map(zeroize::Zeroizing::new)
                .map_err(|_| ())
        })
    }

    /// The secret stored under `name`.
    pub fn secret(&self, name: &str) -> Result<SecretKey, StorageError> {
        self.open_secret(name, |kek, label, sealed| {
            kek.unwrap_dek(label, sealed).map_err(|_| ())
        })
    }

    /// Opens the secret stored under `name` with its master key.
    fn open_secret<T>(
        &self,
        name: &str,
        open: impl FnOnce(&crypto::MasterKey, &str, &[u8]) -> Result<T, ()>,
    ) -> Result<T, StorageError> {
        let stored = SECRETS
            .get(&self.catalog, name)?
            .ok_or(StorageError::NotFound)?;
        let keyring = self.keyring.read().expect("keyring lock poisoned");
        let kek = keyring
            .get(&stored.wrapped.kek_id)
            .ok_or_else(|| StorageError::MissingKek(stored.wrapped.kek_id.clone()))?;
        let sealed = crypto::decode_hex(&stored.wrapped.sealed)
            .ok_or_else(|| StorageError::Damaged("a wrapped secret".into()))?;
        open(kek, &label(name), &sealed)
            .map_err(|()| StorageError::Damaged("a wrapped secret".into()))
    }

    pub fn remove_secret(&self, name: &str) -> Result<(), StorageError> {
        SECRETS.remove(&self.catalog, name)
    }

    /// Re-wraps every secret not under the current master key; returns how
    /// many.
    pub(super) fn rewrap_secrets(&self) -> Result<usize, StorageError> {
        let current = self.current_kek();
        let mut done = 0;
        for name in SECRETS.keys(&self.catalog)? {
            let Some(stored) = SECRETS.get(&self.catalog, &name)? else {
                continue;
            };
            if stored.wrapped.kek_id != current.id {
                if stored.text {
                    let text = self.secret_text(&name)?;
                    self.put_secret_text(&name, &text)?;
                } else {
                    let secret = self.secret(&name)?;
                    self.put_secret(&name, &secret)?;
                }
                done += 1;
            }
        }
        Ok(done)
    }

    /// The master keys some secret is wrapped under.
    pub(super) fn secret_kek_ids(&self) -> Vec<String> {
        SECRETS
            .all(&self.catalog)
            .unwrap_or_default()
            .into_iter()
            .map(|s| s.wrapped.kek_id)
            .collect()
    }
}

fn label(name: &str) -> String {
    format!("secret:{name}")
}
