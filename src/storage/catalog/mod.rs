//! The catalog: tenants (with their wrapped data keys and lifecycle state) and
//! bearer tokens (stored as SHA-256 digests). A sled database of its own beside the
//! tenant directories; every change is flushed before it is acknowledged.
//!
//! Values are JSON with a `format` marker. Tenant names, regions and schema names
//! are operator metadata, not tenant data; no record content ever reaches here.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::path::Path;
use std::sync::{Mutex, RwLock};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::StorageError;
use crate::ids::{Region, TenantId, TokenId};

/// Version of the catalog's JSON values. Part of the format: never change.
pub const CATALOG_FORMAT_V1: u32 = 1;

/// The name of the operator whose token the first start writes to
/// `<data-dir>/operator.token`.
pub const FIRST_OPERATOR: &str = "first operator";

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
    /// Which of the tenant's data keys this is: 0 for its first, one more at
    /// every rotation (values sealed under it carry this id).
    #[serde(default)]
    pub key_id: u32,
    /// `sealed` holds the key as the tenant's own key service wrapped it
    /// (customer-managed keys): opening needs that service too.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub customer: bool,
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
    /// While its data key is rotated: the new key, which seals every new
    /// value; `wrapped_dek` still opens the rest. Shredded with the tenant.
    #[serde(default)]
    pub rotating_to: Option<WrappedDek>,
    /// Where the tenant is going (`moving`) or went (`moved`).
    #[serde(default)]
    pub moved_to: Option<MovedTo>,
    /// Set between the two halves of a schema upgrade's swap (crash recovery).
    #[serde(default)]
    pub pending_upgrade: Option<PendingUpgrade>,
    /// A move an operator proposed, waiting for the tenant's admin.
    #[serde(default)]
    pub proposed_move: Option<MovedTo>,
    /// Set when this tenant was made from another tenant's backup or export.
    #[serde(default)]
    pub copy_of: Option<CopyOf>,
    /// How its writes are acknowledged.
    #[serde(default)]
    pub durability: Durability,
}

/// How a tenant's writes are acknowledged (continuous backup).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Once durable on this host; the change log ships within seconds.
    #[default]
    Local,
    /// Once its change is verified in enough backup regions.
    Replicated,
}

impl Durability {
    pub fn as_str(self) -> &'static str {
        match self {
            Durability::Local => "local",
            Durability::Replicated => "replicated",
        }
    }

    pub fn parse(text: &str) -> Option<Durability> {
        match text {
            "local" => Some(Durability::Local),
            "replicated" => Some(Durability::Replicated),
            _ => None,
        }
    }
}

/// Where a restored or imported tenant came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyOf {
    pub tenant: TenantId,
    /// The backup id (restores), or `None` for an import of an export.
    pub backup: Option<String>,
    /// `restore` or `import`.
    pub kind: String,
    /// The person who made it (identity, or `token:<id>` for the tenant's admin).
    pub made_by: String,
    pub made_by_role: Role,
    pub at: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MovedTo {
    pub region: Region,
    /// The target host's control API, e.g. `https://coffer.sg.example.com`
    /// (always one of the config's `[hosts]`).
    pub url: String,
    pub at: u64,
    /// Who started the move, and (an operator's move) the tenant admin who
    /// agreed to it.
    #[serde(default)]
    pub requested_by: Option<String>,
    #[serde(default)]
    pub approved_by: Option<String>,
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
    /// Staff tokens: the identity (the person) this token belongs to. Two
    /// tokens of one identity are one person to every two-person rule.
    #[serde(default)]
    pub identity: Option<String>,
    /// Who minted it: a staff identity's name, `token:<id>` for a tenant
    /// admin, `data-dir` for the first operator and offline additions.
    #[serde(default)]
    pub created_by: Option<String>,
    #[serde(default)]
    pub expires_at: Option<u64>,
    #[serde(default)]
    pub revoked: Option<Revocation>,
}

/// A revoked token is kept (listed as revoked) but never authenticates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    pub at: u64,
    pub by: String,
}

impl TokenRecord {
    /// `active`, `expired`, `revoked`, or `pending-approval` (set by the
    /// caller from the identity: see [`Identity`]).
    pub fn state_at(&self, now: u64) -> &'static str {
        if self.revoked.is_some() {
            "revoked"
        } else if self.expires_at.is_some_and(|at| now >= at) {
            "expired"
        } else {
            "active"
        }
    }

    /// Reaches `tenant` as its admin (its own tenant, or a restored copy).
    pub fn admin_of(&self, tenant: &TenantId) -> bool {
        self.role == Role::TenantAdmin
            && (self.tenant.as_ref() == Some(tenant) || self.also.contains(tenant))
    }
}

/// A staff member: operator, support engineer or backup agent. Every staff
/// token belongs to one; every two-person rule counts these, never tokens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub format: u32,
    pub name: String,
    pub role: Role,
    pub created_at: u64,
    /// The identity that created it; `data-dir` for the first operator and
    /// for `coffer tokens add` (whoever holds the disk).
    pub created_by: String,
    /// A new operator identity works only once a different operator
    /// approved it.
    pub approved_by: Option<String>,
    pub pending: bool,
}

/// One kind of host record kept in a tree of the catalog: backup jobs, grants,
/// replicas, schedules… The module that owns the kind declares it once
/// (`pub const JOBS: Kind<BackupJob> = Kind::new("backups")`), so the tree's
/// name lives in one place and its values can only be read and written as that
/// type. Every write is flushed before it returns.
pub struct Kind<T> {
    tree: &'static str,
    value: PhantomData<fn() -> T>,
}

impl<T: Serialize + DeserializeOwned> Kind<T> {
    pub const fn new(tree: &'static str) -> Kind<T> {
        Kind {
            tree,
            value: PhantomData,
        }
    }

    pub fn get(&self, catalog: &Catalog, key: &str) -> Result<Option<T>, StorageError> {
        catalog.get_json(self.tree, key)
    }

    pub fn put(&self, catalog: &Catalog, key: &str, value: &T) -> Result<(), StorageError> {
        catalog.put_json(self.tree, key, value)
    }

    /// Every value, in key order.
    pub fn all(&self, catalog: &Catalog) -> Result<Vec<T>, StorageError> {
        catalog.list_json(self.tree)
    }

    /// The values whose keys start with `prefix`, in key order.
    pub fn with_prefix(&self, catalog: &Catalog, prefix: &str) -> Result<Vec<T>, StorageError> {
        catalog
            .db
            .open_tree(self.tree)?
            .scan_prefix(prefix)
            .map(|item| {
                let (_, value) = item?;
                serde_json::from_slice(&value)
                    .map_err(|e| StorageError::Damaged(format!("catalog {} entry: {e}", self.tree)))
            })
            .collect()
    }

    /// Every key, in order.
    pub fn keys(&self, catalog: &Catalog) -> Result<Vec<String>, StorageError> {
        catalog.keys(self.tree)
    }

    pub fn remove(&self, catalog: &Catalog, key: &str) -> Result<(), StorageError> {
        catalog.remove_json(self.tree, key)
    }

    /// Like `put`, durable only at the next [`Catalog::flush`]: for a step
    /// that writes several records and flushes once.
    pub fn put_unflushed(
        &self,
        catalog: &Catalog,
        key: &str,
        value: &T,
    ) -> Result<(), StorageError> {
        catalog
            .db
            .open_tree(self.tree)?
            .insert(key, to_json(value))?;
        Ok(())
    }

    pub fn remove_unflushed(&self, catalog: &Catalog, key: &str) -> Result<(), StorageError> {
        catalog.db.open_tree(self.tree)?.remove(key)?;
        Ok(())
    }
}

/// Who created identities and tokens before identities existed.
pub const DATA_DIR_CREATOR: &str = "data-dir";

pub struct Catalog {
    db: sled::Db,
    tenants: sled::Tree,
    tokens: sled::Tree,
    identities: sled::Tree,
    /// Token id → the time it was last used (seconds), written without a
    /// flush at most once a minute per token: a hint, never a decision.
    token_used: sled::Tree,
    /// Write-through copy of `tenants`, so that every request's state check is a
    /// hash lookup.
    cache: RwLock<HashMap<TenantId, TenantRecord>>,
    /// Write-through copy of `identities` (checked on every staff request).
    identity_cache: RwLock<HashMap<String, Identity>>,
    /// Last-used times already written, so a busy token is not written on
    /// every request.
    used_cache: Mutex<HashMap<TokenId, u64>>,
    /// Every read-modify-write of token records (restores inheriting admins,
    /// revocations, destruction) holds this: two restores never lose each
    /// other's additions.
    token_update: Mutex<()>,
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
        let identities = db.open_tree("identities")?;
        let token_used = db.open_tree("token_used")?;
        let mut cache = HashMap::new();
        for item in tenants.iter() {
            let (_, value) = item?;
            let record: TenantRecord = serde_json::from_slice(&value)
                .map_err(|e| StorageError::Damaged(format!("catalog tenant entry: {e}")))?;
            cache.insert(record.id.clone(), record);
        }
        let mut identity_cache = HashMap::new();
        for item in identities.iter() {
            let (_, value) = item?;
            let identity: Identity = serde_json::from_slice(&value)
                .map_err(|e| StorageError::Damaged(format!("catalog identity entry: {e}")))?;
            identity_cache.insert(identity.name.clone(), identity);
        }
        let catalog = Catalog {
            db,
            tenants,
            tokens,
            identities,
            token_used,
            cache: RwLock::new(cache),
            identity_cache: RwLock::new(identity_cache),
            used_cache: Mutex::new(HashMap::new()),
            token_update: Mutex::new(()),
        };
        catalog.migrate_staff_identities()?;
        let swept = catalog.sweep_tokens()?;
        if swept > 0 {
            tracing::info!(
                tokens = swept,
                "unbound tokens from tenants a crash left gone"
            );
        }
        Ok(catalog)
    }

    /// Staff tokens minted before identities existed get one: the first
    /// operator's own, every other token an identity named after it. An
    /// operator token minted by another operator then was never approved by
    /// a second person: its identity starts pending, like a new one today.
    fn migrate_staff_identities(&self) -> Result<(), StorageError> {
        let _guard = self.lock_tokens();
        for item in self.tokens.iter() {
            let (key, value) = item?;
            let mut token: TokenRecord = serde_json::from_slice(&value)
                .map_err(|e| StorageError::Damaged(format!("catalog token entry: {e}")))?;
            if token.role == Role::TenantAdmin || token.identity.is_some() {
                continue;
            }
            let first = token.role == Role::Operator && token.name == FIRST_OPERATOR;
            let mut name = token.name.clone();
            if self
                .identity(&name)
                .is_some_and(|existing| existing.role != token.role)
            {
                name = format!("{} ({})", token.name, token.role.as_str());
            }
            if self.identity(&name).is_none() {
                self.put_identity(&Identity {
                    format: CATALOG_FORMAT_V1,
                    name: name.clone(),
                    role: token.role,
                    created_at: token.created_at,
                    created_by: DATA_DIR_CREATOR.into(),
                    approved_by: None,
                    pending: token.role == Role::Operator && !first,
                })?;
            }
            token.identity = Some(name);
            token
                .created_by
                .get_or_insert_with(|| DATA_DIR_CREATOR.into());
            self.tokens.insert(key, to_json(&token))?;
        }
        self.db.flush()?;
        Ok(())
    }

    pub fn identity(&self, name: &str) -> Option<Identity> {
        self.identity_cache
            .read()
            .expect("identity cache poisoned")
            .get(name)
            .cloned()
    }

    pub fn identities(&self) -> Vec<Identity> {
        let mut all: Vec<Identity> = self
            .identity_cache
            .read()
            .expect("identity cache poisoned")
            .values()
            .cloned()
            .collect();
        all.sort_by(|a, b| (a.created_at, &a.name).cmp(&(b.created_at, &b.name)));
        all
    }

    /// Writes an identity (new or changed) durably.
    pub fn put_identity(&self, identity: &Identity) -> Result<(), StorageError> {
        self.identities
            .insert(identity.name.as_bytes(), to_json(identity))?;
        self.db.flush()?;
        self.identity_cache
            .write()
            .expect("identity cache poisoned")
            .insert(identity.name.clone(), identity.clone());
        Ok(())
    }

    /// Held for every read-modify-write of token records.
    pub fn lock_tokens(&self) -> std::sync::MutexGuard<'_, ()> {
        self.token_update
            .lock()
            .expect("token update lock poisoned")
    }

    /// Notes that a token was used at `now` (at most one write a minute).
    pub fn note_token_used(&self, id: &TokenId, now: u64) {
        let mut seen = self.used_cache.lock().expect("token use cache poisoned");
        if seen.get(id).is_some_and(|last| now < last + 60) {
            return;
        }
        seen.insert(id.clone(), now);
        drop(seen);
        // Not flushed: the next durable write carries it; losing it loses a hint.
        if let Err(error) = self.token_used.insert(id.as_str(), &now.to_be_bytes()) {
            tracing::warn!(%error, "record token use");
        }
    }

    pub fn token_last_used(&self, id: &TokenId) -> Option<u64> {
        if let Some(at) = self
            .used_cache
            .lock()
            .expect("token use cache poisoned")
            .get(id)
        {
            return Some(*at);
        }
        let value = self.token_used.get(id.as_str()).ok()??;
        Some(u64::from_be_bytes(value.as_ref().try_into().ok()?))
    }

    pub fn tenant(&self, id: &TenantId) -> Option<TenantRecord> {
        self.cache
            .read()
            .expect("catalog cache poisoned")
            .get(id)
            .cloned()
    }

    /// Whether long work for the tenant (an export, a backup, a restore from
    /// its backups) is still wanted: `Err` says why not, once the tenant was
    /// deactivated, purged or is gone.
    pub fn still_serving(&self, id: &TenantId, work: &str) -> Result<(), String> {
        match self.tenant(id) {
            Some(t) if matches!(t.state, TenantState::Active | TenantState::Moving) => Ok(()),
            Some(t) => Err(format!(
                "the tenant was {} during the {work}: it was stopped",
                t.state.as_str()
            )),
            None => Err(format!("the tenant is gone: the {work} was stopped")),
        }
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

    fn cache_tenant(&self, record: &TenantRecord) {
        self.cache
            .write()
            .expect("catalog cache poisoned")
            .insert(record.id.clone(), record.clone());
    }

    /// Writes a tenant record (new or changed) durably.
    pub fn put_tenant(&self, record: &TenantRecord) -> Result<(), StorageError> {
        self.tenants.insert(record.id.as_str(), to_json(record))?;
        self.db.flush()?;
        self.cache_tenant(record);
        Ok(())
    }

    /// Writes a new tenant and its first admin token, durably. No sled
    /// transaction or batch: one of either switches sled 0.34 into a
    /// process-wide lock that every operation of every tenant's database then
    /// takes (`concurrency_control`), so the catalog is crash-safe by write
    /// order instead: the token first, then the tenant, one flush. sled
    /// recovers a prefix of its log, so a crash leaves nothing, a token whose
    /// tenant does not exist (its secret was never handed out; removed at the
    /// next open, see [`Catalog::sweep_tokens`]), or both.
    pub fn create_tenant(
        &self,
        record: &TenantRecord,
        admin: &TokenRecord,
        admin_digest: &[u8; 32],
    ) -> Result<(), StorageError> {
        self.tokens
            .insert(admin_digest.as_slice(), to_json(admin))?;
        self.tenants.insert(record.id.as_str(), to_json(record))?;
        self.db.flush()?;
        self.cache_tenant(record);
        Ok(())
    }

    /// Marks a tenant destroyed (its wrapped key gone) durably, then unbinds
    /// every token from it. After the first flush the tenant's data can never
    /// be decrypted and no token reaches it (a destroyed tenant serves
    /// nothing); a crash before the tokens are rewritten is finished by the
    /// next open ([`Catalog::sweep_tokens`]). No sled transaction: see
    /// [`Catalog::create_tenant`].
    pub fn destroy_tenant(&self, record: &TenantRecord) -> Result<(), StorageError> {
        self.tenants.insert(record.id.as_str(), to_json(record))?;
        self.db.flush()?;
        self.cache_tenant(record);
        let _guard = self.lock_tokens();
        self.unbind_tokens(|tenant| tenant == &record.id)?;
        self.db.flush()?;
        Ok(())
    }

    /// Tokens lose every tenant `gone` says is gone: a token that reaches
    /// only such tenants is removed; one that also reaches restored copies
    /// keeps those. Unflushed; the caller holds [`Catalog::lock_tokens`].
    fn unbind_tokens(&self, gone: impl Fn(&TenantId) -> bool) -> Result<usize, StorageError> {
        let mut changed = 0;
        for item in self.tokens.iter() {
            let (key, value) = item?;
            let Ok(mut token) = serde_json::from_slice::<TokenRecord>(&value) else {
                continue;
            };
            let bound = token.tenant.iter().chain(token.also.iter()).any(&gone);
            if !bound {
                continue;
            }
            token.also.retain(|t| !gone(t));
            if token.tenant.as_ref().is_some_and(&gone) {
                token.tenant = if token.also.is_empty() {
                    None
                } else {
                    Some(token.also.remove(0))
                };
            }
            if token.tenant.is_none() {
                self.tokens.remove(key)?;
            } else {
                self.tokens.insert(key, to_json(&token))?;
            }
            changed += 1;
        }
        Ok(changed)
    }

    /// Finishes what a crash interrupted: tokens bound to a destroyed tenant
    /// or to one that was never written (a crash inside `create_tenant`) lose
    /// it. Runs at every open; returns how many tokens changed.
    fn sweep_tokens(&self) -> Result<usize, StorageError> {
        let _guard = self.lock_tokens();
        let cache = self.cache.read().expect("catalog cache poisoned").clone();
        let changed = self.unbind_tokens(|tenant| {
            cache
                .get(tenant)
                .is_none_or(|t| t.state == TenantState::Destroyed)
        })?;
        if changed > 0 {
            self.db.flush()?;
        }
        Ok(changed)
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

    fn put_json<T: Serialize>(&self, tree: &str, key: &str, value: &T) -> Result<(), StorageError> {
        self.db.open_tree(tree)?.insert(key, to_json(value))?;
        self.db.flush()?;
        Ok(())
    }

    fn get_json<T: DeserializeOwned>(
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

    fn list_json<T: DeserializeOwned>(&self, tree: &str) -> Result<Vec<T>, StorageError> {
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

    fn keys(&self, tree: &str) -> Result<Vec<String>, StorageError> {
        self.db
            .open_tree(tree)?
            .iter()
            .keys()
            .map(|k| Ok(String::from_utf8_lossy(&k?).into_owned()))
            .collect()
    }

    fn remove_json(&self, tree: &str, key: &str) -> Result<(), StorageError> {
        self.db.open_tree(tree)?.remove(key)?;
        self.db.flush()?;
        Ok(())
    }

    /// Every token with the digest it is stored under.
    pub fn tokens_by_digest(&self) -> Result<Vec<([u8; 32], TokenRecord)>, StorageError> {
        self.tokens
            .iter()
            .map(|item| {
                let (key, value) = item?;
                let digest: [u8; 32] = key
                    .as_ref()
                    .try_into()
                    .map_err(|_| StorageError::Damaged("catalog token key".into()))?;
                let token = serde_json::from_slice(&value)
                    .map_err(|e| StorageError::Damaged(format!("catalog token entry: {e}")))?;
                Ok((digest, token))
            })
            .collect()
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

    /// Makes every write so far durable (after `Kind::put_unflushed`).
    pub fn flush(&self) -> Result<(), StorageError> {
        self.db.flush()?;
        Ok(())
    }

    pub fn token_count(&self) -> usize {
        self.tokens.len()
    }
}

fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("catalog records always serialise")
}

#[cfg(test)]
mod tests;
