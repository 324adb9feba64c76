//! The catalog: tenants (with their wrapped data keys and lifecycle state) and
//! bearer tokens (stored as SHA-256 digests). A sled database of its own beside the
//! tenant directories; every change is flushed before it is acknowledged.
//!
//! Values are JSON with a `format` marker. Tenant names, regions and schema names
//! are operator metadata, not tenant data; no record content ever reaches here.

use std::collections::HashMap;
use std::path::Path;
use std::sync::RwLock;

use serde::{Deserialize, Serialize};

use super::StorageError;
use crate::ids::{Region, TenantId, TokenId};

/// Version of the catalog's JSON values. Part of the format: never change.
pub const CATALOG_FORMAT_V1: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TenantState {
    Active,
    Deactivated,
    Destroyed,
    /// Being moved to another host: reads served, writes paused.
    Moving,
    /// Lives on another host now (`moved_to`); the local copy is purged at
    /// `destroy_after`.
    Moved,
}

impl TenantState {
    pub fn as_str(self) -> &'static str {
        match self {
            TenantState::Active => "active",
            TenantState::Deactivated => "deactivated",
            TenantState::Destroyed => "destroyed",
            TenantState::Moving => "moving",
            TenantState::Moved => "moved",
        }
    }
}

/// A tenant's data key, sealed under the master key named by `kek_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrappedDek {
    pub kek_id: String,
    /// The sealed key, hex (see `crypto`'s sealed-value layout).
    pub sealed: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TenantRecord {
    pub format: u32,
    pub id: TenantId,
    pub name: String,
    pub region: Region,
    pub schema: String,
    pub schema_version: u32,
    pub state: TenantState,
    pub created_at: u64,
    #[serde(default)]
    pub deactivated_at: Option<u64>,
    #[serde(default)]
    pub destroy_after: Option<u64>,
    #[serde(default)]
    pub destroyed_at: Option<u64>,
    /// Present while the tenant exists; removed (shredded) when it is destroyed.
    #[serde(default)]
    pub wrapped_dek: Option<WrappedDek>,
    /// Where the tenant is going (`moving`) or went (`moved`).
    #[serde(default)]
    pub moved_to: Option<MovedTo>,
    /// Set between the two halves of a schema upgrade's swap (crash recovery).
    #[serde(default)]
    pub pending_upgrade: Option<PendingUpgrade>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MovedTo {
    pub region: Region,
    /// The target host's control API, e.g. `https://coffer.sg.example.com`.
    pub url: String,
    pub at: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingUpgrade {
    pub schema_version: u32,
    pub wrapped_dek: WrappedDek,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Operator,
    TenantAdmin,
    Support,
    BackupAgent,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Operator => "operator",
            Role::TenantAdmin => "tenant-admin",
            Role::Support => "support",
            Role::BackupAgent => "backup-agent",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenRecord {
    pub format: u32,
    pub id: TokenId,
    pub role: Role,
    /// Set for tenant admins: the tenant this token was minted for.
    #[serde(default)]
    pub tenant: Option<TenantId>,
    /// Further tenants this admin token reaches: copies restored from backups of
    /// its tenant inherit the source tenant's admin credentials.
    #[serde(default)]
    pub also: Vec<TenantId>,
    pub name: String,
    pub created_at: u64,
    /// The SHA-256 of the token, kept so a lookup can compare it in constant time.
    pub digest: String,
}

pub struct Catalog {
    db: sled::Db,
    tenants: sled::Tree,
    tokens: sled::Tree,
    /// Write-through copy of `tenants`, so that every request's state check is a
    /// hash lookup.
    cache: RwLock<HashMap<TenantId, TenantRecord>>,
}

impl Catalog {
    pub fn open(dir: &Path) -> Result<Catalog, StorageError> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(16 << 20)
            .flush_every_ms(None)
            .open()
            .map_err(|e| StorageError::Open("catalog".into(), e.to_string()))?;
        let tenants = db.open_tree("tenants")?;
        let tokens = db.open_tree("tokens")?;
        let mut cache = HashMap::new();
        for item in tenants.iter() {
            let (_, value) = item?;
            let record: TenantRecord = serde_json::from_slice(&value)
                .map_err(|e| StorageError::Damaged(format!("catalog tenant entry: {e}")))?;
            cache.insert(record.id.clone(), record);
        }
        Ok(Catalog {
            db,
            tenants,
            tokens,
            cache: RwLock::new(cache),
        })
    }

    pub fn tenant(&self, id: &TenantId) -> Option<TenantRecord> {
        self.cache
            .read()
            .expect("catalog cache poisoned")
            .get(id)
            .cloned()
    }

    pub fn tenants(&self) -> Vec<TenantRecord> {
        let mut all: Vec<_> = self
            .cache
            .read()
            .expect("catalog cache poisoned")
            .values()
            .cloned()
            .collect();
        all.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        all
    }

    /// Writes a tenant record (new or changed) durably.
    pub fn put_tenant(&self, record: &TenantRecord) -> Result<(), StorageError> {
        self.tenants.insert(record.id.as_str(), to_json(record))?;
        self.db.flush()?;
        self.cache
            .write()
            .expect("catalog cache poisoned")
            .insert(record.id.clone(), record.clone());
        Ok(())
    }

    /// Writes a new tenant and its first admin token in one atomic step.
    pub fn create_tenant(
        &self,
        record: &TenantRecord,
        admin: &TokenRecord,
        admin_digest: &[u8; 32],
    ) -> Result<(), StorageError> {
        use sled::Transactional;
        let tenant_value = to_json(record);
        let token_value = to_json(admin);
        (&self.tenants, &self.tokens)
            .transaction(|(tenants, tokens)| {
                tenants.insert(record.id.as_str().as_bytes(), tenant_value.as_slice())?;
                tokens.insert(admin_digest.as_slice(), token_value.as_slice())?;
                Ok(())
            })
            .map_err(|e: sled::transaction::TransactionError<()>| {
                StorageError::Sled(format!("{e:?}"))
            })?;
        self.db.flush()?;
        self.cache
            .write()
            .expect("catalog cache poisoned")
            .insert(record.id.clone(), record.clone());
        Ok(())
    }

    /// Marks a tenant destroyed, drops its wrapped key and every token bound to it,
    /// atomically. After this returns the tenant's data can never be decrypted.
    pub fn destroy_tenant(&self, record: &TenantRecord) -> Result<(), StorageError> {
        // Tokens that reach only this tenant die; tokens that also reach restored
        // copies lose this tenant and keep the others.
        let mut batch = sled::Batch::default();
        for item in self.tokens.iter() {
            let (key, value) = item?;
            let Ok(mut token) = serde_json::from_slice::<TokenRecord>(&value) else {
                continue;
            };
            let primary = token.tenant.as_ref() == Some(&record.id);
            let secondary = token.also.contains(&record.id);
            if !primary && !secondary {
                continue;
            }
            token.also.retain(|t| t != &record.id);
            if primary {
                token.tenant = if token.also.is_empty() {
                    None
                } else {
                    Some(token.also.remove(0))
                };
            }
            if token.tenant.is_none() {
                batch.remove(key);
            } else {
                batch.insert(key, to_json(&token));
            }
        }
        let tenant_value = to_json(record);
        use sled::Transactional;
        (&self.tenants, &self.tokens)
            .transaction(|(tenants, tokens)| {
                tenants.insert(record.id.as_str().as_bytes(), tenant_value.as_slice())?;
                tokens.apply_batch(&batch)?;
                Ok(())
            })
            .map_err(|e: sled::transaction::TransactionError<()>| {
                StorageError::Sled(format!("{e:?}"))
            })?;
        self.db.flush()?;
        self.cache
            .write()
            .expect("catalog cache poisoned")
            .insert(record.id.clone(), record.clone());
        Ok(())
    }

    pub fn token(&self, digest: &[u8; 32]) -> Result<Option<TokenRecord>, StorageError> {
        match self.tokens.get(digest)? {
            None => Ok(None),
            Some(value) => serde_json::from_slice(&value)
                .map(Some)
                .map_err(|e| StorageError::Damaged(format!("catalog token entry: {e}"))),
        }
    }

    pub fn put_token(&self, digest: &[u8; 32], token: &TokenRecord) -> Result<(), StorageError> {
        self.tokens.insert(digest, to_json(token))?;
        self.db.flush()?;
        Ok(())
    }

    /// Stores a JSON value in a named tree of the catalog (jobs and other small
    /// host records of the modules above storage), durably.
    pub fn put_json<T: Serialize>(
        &self,
        tree: &str,
        key: &str,
        value: &T,
    ) -> Result<(), StorageError> {
        self.db.open_tree(tree)?.insert(key, to_json(value))?;
        self.db.flush()?;
        Ok(())
    }

    pub fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        tree: &str,
        key: &str,
    ) -> Result<Option<T>, StorageError> {
        match self.db.open_tree(tree)?.get(key)? {
            None => Ok(None),
            Some(value) => serde_json::from_slice(&value)
                .map(Some)
                .map_err(|e| StorageError::Damaged(format!("catalog {tree} entry: {e}"))),
        }
    }

    pub fn list_json<T: serde::de::DeserializeOwned>(
        &self,
        tree: &str,
    ) -> Result<Vec<T>, StorageError> {
        self.db
            .open_tree(tree)?
            .iter()
            .map(|item| {
                let (_, value) = item?;
                serde_json::from_slice(&value)
                    .map_err(|e| StorageError::Damaged(format!("catalog {tree} entry: {e}")))
            })
            .collect()
    }

    /// The keys of a named tree, in order.
    pub fn keys(&self, tree: &str) -> Result<Vec<String>, StorageError> {
        self.db
            .open_tree(tree)?
            .iter()
            .keys()
            .map(|k| Ok(String::from_utf8_lossy(&k?).into_owned()))
            .collect()
    }

    pub fn remove_json(&self, tree: &str, key: &str) -> Result<(), StorageError> {
        self.db.open_tree(tree)?.remove(key)?;
        self.db.flush()?;
        Ok(())
    }

    pub fn remove_token(&self, digest: &[u8; 32]) -> Result<(), StorageError> {
        self.tokens.remove(digest)?;
        self.db.flush()?;
        Ok(())
    }

    /// Every token (for inheriting admin credentials and for tests).
    pub fn tokens(&self) -> Result<Vec<TokenRecord>, StorageError> {
        self.tokens
            .iter()
            .map(|item| {
                let (_, value) = item?;
                serde_json::from_slice(&value)
                    .map_err(|e| StorageError::Damaged(format!("catalog token entry: {e}")))
            })
            .collect()
    }

    pub fn token_count(&self) -> usize {
        self.tokens.len()
    }
}

fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("catalog records always serialise")
}
