//! Storage: the only user of sled. The catalog, one database per tenant, the
//! bounded pool of open tenant databases, and the on-disk lifecycle steps that
//! must be crash-safe (create, shred, re-wrap).
//!
//! Layout under the data directory:
//!
//! ```text
//! catalog/          sled: tenants, wrapped DEKs, token digests
//! tenants/<id>/     sled: one tenant's sealed records and blind index tags
//! trash/<id>-<n>/   destroyed tenants' directories, awaiting removal
//! keys/             master keys (owned by the `keys` module, never read here)
//! ```
//!
//! Rooms: `catalog`, `tenant_db`, `commit` (group commit), `pool` (open
//! tenant databases), `new_token`, `staged` (tenants staged for restores and
//! upgrades, committed or swapped in); `Storage` and its crash-safe steps here.

mod catalog;
mod commit;
mod customer_key;
mod new_token;
mod pool;
mod rekey;
mod secrets;
mod staged;
mod tenant_db;

pub use customer_key::{KeyService, KeyUnavailable};
use new_token::new_token;
pub use new_token::NewToken;
use pool::Pool;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

pub use catalog::{
    Catalog, CopyOf, Durability, Identity, Kind, MovedTo, PendingUpgrade, Revocation, Role,
    TenantRecord, TenantState, TokenRecord, WrappedDek, DATA_DIR_CREATOR, FIRST_OPERATOR,
};
pub use staged::{InheritedAdmin, StagedTenant};
pub use tenant_db::{Change, ChangeFeed, Record, Snapshot, SnapshotRecords, TenantDb};

use crate::crypto::{self, CryptoError, Keyring, MasterKey, SecretKey, TenantCipher, TenantKeys};
use crate::ids::{unix_now, Region, TenantId, TokenId};

/// Why a tenant's data cannot be replaced (upgrade, restore in place) now.
pub const ROTATING: &str =
    "the tenant's data key is being rotated; try again when the rotation is done";

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("open {0}: {1}")]
    Open(String, String),
    #[error("storage: {0}")]
    Sled(String),
    #[error("flush to disk failed: {0}")]
    Flush(String),
    #[error("{0} is damaged and cannot be opened")]
    Damaged(String),
    #[error("not found")]
    NotFound,
    #[error("another record already has this {0}")]
    Duplicate(String),
    #[error("no master key {0} to unwrap this tenant's data key")]
    MissingKek(String),
    #[error("tenant's data key is gone (tenant destroyed)")]
    Shredded,
    #[error("tenant is being upgraded to a new schema version; writes resume when it is done")]
    Frozen,
    #[error("file system: {0}")]
    Io(String),
    #[error("{0}")]
    Exists(String),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// The tenant's own key service did not give its data key back.
    #[error(transparent)]
    KeyUnavailable(#[from] KeyUnavailable),
}

impl From<sled::Error> for StorageError {
    fn from(e: sled::Error) -> Self {
        StorageError::Sled(e.to_string())
    }
}

impl From<std::io::Error> for StorageError {
    fn from(e: std::io::Error) -> Self {
        StorageError::Io(e.to_string())
    }
}

/// Everything a new tenant needs besides its key, which storage makes itself.
pub struct NewTenant {
    /// Keep this id (a tenant moved here from another host); else a new one.
    pub id: Option<TenantId>,
    pub name: String,
    pub region: Region,
    pub schema: String,
    pub schema_version: u32,
}

pub struct Storage {
    root: PathBuf,
    pub catalog: Catalog,
    keyring: RwLock<Keyring>,
    pool: Pool,
    cache_bytes_per_tenant: u64,
    /// Serialises read-modify-write of tenant records (lifecycle, re-wrap).
    tenant_update: Mutex<()>,
    /// Held for a whole master-key rotation: two at once could retire each
    /// other's new key.
    pub rotation: Mutex<()>,
    /// Tenants with changes to ship, when live tenants keep change logs.
    pub changes: Arc<ChangeFeed>,
    change_logs: std::sync::atomic::AtomicBool,
    /// Tenants' own key services (customer-managed keys), when configured.
    key_service: RwLock<Option<Arc<dyn KeyService>>>,
    closed: customer_key::Closed,
    /// Resident bytes above which a tenant read whole by a job is closed
    /// afterwards ([`Storage::after_whole_read`]); `u64::MAX`: never.
    memory_high: std::sync::atomic::AtomicU64,
}

impl Storage {
    /// Opens the data directory, creating what is missing, and finishes any
    /// removal a crash interrupted (trash, directories the catalog never named).
    pub fn open(
        root: &Path,
        keyring: Keyring,
        open_tenants_max: usize,
        cache_bytes_per_tenant: u64,
    ) -> Result<Storage, StorageError> {
        for dir in ["tenants", "trash", "staging"] {
            std::fs::create_dir_all(root.join(dir))?;
        }
        let catalog = Catalog::open(&root.join("catalog"))?;
        let storage = Storage {
            root: root.to_path_buf(),
            catalog,
            keyring: RwLock::new(keyring),
            pool: Pool::new(open_tenants_max),
            cache_bytes_per_tenant,
            tenant_update: Mutex::new(()),
            rotation: Mutex::new(()),
            changes: Arc::new(ChangeFeed::default()),
            change_logs: std::sync::atomic::AtomicBool::new(false),
            key_service: RwLock::new(None),
            closed: Default::default(),
            memory_high: std::sync::atomic::AtomicU64::new(u64::MAX),
        };
        storage.recover_upgrades()?;
        storage.sweep_orphans()?;
        Ok(storage)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Live tenants opened from now on log every write (`coffer serve` with
    /// the change log on; call before any tenant is opened).
    pub fn keep_change_logs(&self) {
        self.change_logs
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    fn live(&self, db: TenantDb) -> Result<TenantDb, StorageError> {
        if self.change_logs.load(std::sync::atomic::Ordering::SeqCst) {
            db.log_to(self.changes.clone())?;
        }
        Ok(db)
    }

    fn tenant_dir(&self, id: &TenantId) -> PathBuf {
        self.root.join("tenants").join(id.as_str())
    }

    /// A fresh tenant id and data key, and the catalog entry that wraps the key
    /// under the current master key.
    /// A fresh data key for `tenant`, and its wrapping under the current master key.
    fn new_wrapped_dek(&self, tenant: &TenantId) -> Result<(WrappedDek, SecretKey), StorageError> {
        let dek = SecretKey::generate()?;
        let kek = self.current_kek();
        let wrapped = WrappedDek {
            kek_id: kek.id.clone(),
            sealed: crypto::encode_hex(&kek.wrap_dek(tenant.as_str(), &dek)?),
            key_id: 0,
            customer: false,
        };
        Ok((wrapped, dek))
    }

    fn new_tenant_record(&self, new: NewTenant) -> Result<(TenantRecord, SecretKey), StorageError> {
        let id = match new.id {
            Some(id) if self.catalog.tenant(&id).is_some() => {
                return Err(StorageError::Exists(format!(
                    "tenant {id} already exists on this host"
                )))
            }
            Some(id) => id,
            None => TenantId::generate()?,
        };
        let (wrapped_dek, dek) = self.new_wrapped_dek(&id)?;
        let record = TenantRecord {
            format: catalog::CATALOG_FORMAT_V1,
            id: id.clone(),
            name: new.name,
            region: new.region,
            schema: new.schema,
            schema_version: new.schema_version,
            state: TenantState::Active,
            created_at: unix_now(),
            deactivated_at: None,
            destroy_after: None,
            destroyed_at: None,
            pending_upgrade: None,
            moved_to: None,
            proposed_move: None,
            rotating_to: None,
            copy_of: None,
            durability: Default::default(),
            wrapped_dek: Some(wrapped_dek),
        };
        Ok((record, dek))
    }

    /// Creates the tenant's directory and key, then its catalog entry and first
    /// admin token in one atomic write. Returns the record and the admin token.
    pub fn create_tenant(&self, new: NewTenant) -> Result<(TenantRecord, String), StorageError> {
        let (record, dek) = self.new_tenant_record(new)?;
        let id = record.id.clone();
        // The directory first: a crash before the catalog write leaves an orphan
        // directory that the next start removes, never a tenant without a home.
        let db = self.live(TenantDb::open(
            &self.tenant_dir(&id),
            id.clone(),
            TenantKeys::new(TenantCipher::new(&dek)),
            self.cache_bytes_per_tenant,
        )?)?;
        let (token, secret) = new_token(NewToken::admin(&id, "initial admin", DATA_DIR_CREATOR))?;
        self.catalog
            .create_tenant(&record, &token, &crypto::token_digest(&secret))?;
        self.pool.insert(id, Arc::new(db));
        Ok((record, secret))
    }

    /// When a host stops: closes each open tenant database that has
    /// changed much since it was opened and [`tenant_db::checkpoint`]s it,
    /// so that the next start does not replay all of it. A database still
    /// held is left as it is.
    pub fn checkpoint_changed_tenants(&self) {
        self.pool
            .close_changed(tenant_db::CHECKPOINT_AFTER_CHANGES, |id| {
                self.checkpoint_dir(&self.tenant_dir(id), id);
            });
    }

    fn checkpoint_dir(&self, dir: &Path, id: &TenantId) {
        let started = std::time::Instant::now();
        match tenant_db::checkpoint(dir) {
            Ok(()) => tracing::info!(
                tenant_id = %id,
                ms = started.elapsed().as_millis() as u64,
                "checkpointed a tenant database"
            ),
            // Only the next open's speed depends on it.
            Err(error) => {
                tracing::warn!(tenant_id = %id, %error, "checkpoint of a tenant database")
            }
        }
    }

    /// Sets the host's memory high mark (see [`Storage::after_whole_read`]).
    pub fn set_memory_high(&self, bytes: u64) {
        self.memory_high
            .store(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    /// After a job read a tenant whole (an export, a DR backup): when the
    /// host's resident memory is above its high mark, the tenant's database
    /// is closed if nothing else holds it, and the allocator is asked to
    /// give freed memory back. sled keeps a page-table entry and cached
    /// pages for what a scan read until its `Db` is dropped, so without this
    /// a host that exported several large tenants in turn held each one's
    /// high-water mark while they stayed in the pool. Below the mark nothing
    /// happens: the next request would pay a cold open (seconds for a GiB).
    /// Returns whether the database was closed.
    pub fn after_whole_read(&self, id: &TenantId) -> bool {
        let high = self.memory_high.load(std::sync::atomic::Ordering::Relaxed);
        let Some(before) = crate::memory::resident_bytes().filter(|rss| *rss > high) else {
            return false;
        };
        let closed = self.pool.close_if_idle(id);
        let trimmed = crate::memory::release_free_heap();
        let after = crate::memory::resident_bytes().unwrap_or(before);
        crate::metrics::memory_released(closed, before.saturating_sub(after));
        tracing::info!(
            tenant_id = %id,
            closed,
            trimmed,
            rss_before_mib = before >> 20,
            rss_after_mib = after >> 20,
            high_mib = high >> 20,
            "memory above its high mark after a job read a tenant whole"
        );
        closed
    }

    /// The open database of an existing tenant (opened on demand).
    pub fn tenant_db(&self, record: &TenantRecord) -> Result<Arc<TenantDb>, StorageError> {
        self.pool.get_or_open(&record.id, || {
            // The keys as the catalog holds them now: `record` may be older
            // than a data-key rotation.
            let fresh = self.catalog.tenant(&record.id);
            let current = fresh.as_ref().unwrap_or(record);
            let was_closed = self.reopen_if_closed(current)?;
            let keys = self.keys_of(current)?;
            if was_closed {
                self.reopened(&record.id);
            }
            TenantDb::open(
                &self.tenant_dir(&record.id),
                record.id.clone(),
                keys,
                self.cache_bytes_per_tenant,
            )
            .and_then(|db| self.live(db))
        })
    }

    /// Read-modify-write of one tenant's catalog entry under the update lock.
    pub fn update_tenant<E>(
        &self,
        id: &TenantId,
        change: impl FnOnce(&mut TenantRecord) -> Result<(), E>,
    ) -> Result<Result<TenantRecord, E>, StorageError> {
        let _guard = self
            .tenant_update
            .lock()
            .expect("tenant update lock poisoned");
        let mut record = self.catalog.tenant(id).ok_or(StorageError::NotFound)?;
        if let Err(e) = change(&mut record) {
            return Ok(Err(e));
        }
        self.catalog.put_tenant(&record)?;
        Ok(Ok(record))
    }

    /// Destroys a tenant: the catalog forgets its wrapped key and tokens (one
    /// durable write, after which nothing can decrypt its data), then its directory
    /// is renamed into the trash and removed in the background. Both steps are O(1)
    /// in the tenant's size; the removal itself is not on the caller's path.
    /// `only_if` is checked under the update lock; when it says no, nothing
    /// happens and `None` is returned.
    pub fn destroy_tenant(
        &self,
        id: &TenantId,
        only_if: impl FnOnce(&TenantRecord) -> bool,
    ) -> Result<Option<TenantRecord>, StorageError> {
        let record = {
            let _guard = self
                .tenant_update
                .lock()
                .expect("tenant update lock poisoned");
            let mut record = self.catalog.tenant(id).ok_or(StorageError::NotFound)?;
            if !only_if(&record) {
                return Ok(None);
            }
            record.state = TenantState::Destroyed;
            record.destroyed_at = Some(unix_now());
            record.destroy_after = None;
            record.wrapped_dek = None;
            record.rotating_to = None;
            self.catalog.destroy_tenant(&record)?;
            record
        };
        self.pool.forget(id);
        let dir = self.tenant_dir(id);
        if dir.exists() {
            let trash = self
                .root
                .join("trash")
                .join(format!("{}-{}", id, unix_now()));
            std::fs::rename(&dir, &trash)?;
            std::thread::spawn(move || {
                if let Err(error) = std::fs::remove_dir_all(&trash) {
                    tracing::warn!(%error, path = %trash.display(), "remove destroyed tenant directory; retried at next start");
                }
            });
        }
        Ok(Some(record))
    }

    /// Mints a bearer token. The secret is returned once and stored only hashed.
    pub fn issue_token(&self, new: NewToken) -> Result<(TokenRecord, String), StorageError> {
        self.issue_token_with(new, |_| Ok::<(), StorageError>(()))?
    }

    /// Mints a bearer token, running `before_store` on its record (the id is
    /// known by then) before anything is stored: an error there stores nothing.
    pub fn issue_token_with<E>(
        &self,
        new: NewToken,
        before_store: impl FnOnce(&TokenRecord) -> Result<(), E>,
    ) -> Result<Result<(TokenRecord, String), E>, StorageError> {
        let (record, secret) = new_token(new)?;
        if let Err(e) = before_store(&record) {
            return Ok(Err(e));
        }
        self.catalog
            .put_token(&crypto::token_digest(&secret), &record)?;
        Ok(Ok((record, secret)))
    }

    /// Read-modify-write of one token (by its public id) under the token
    /// lock. `change` also sees every other token, for rules such as "not
    /// the last admin token".
    pub fn update_token<E>(
        &self,
        id: &TokenId,
        change: impl FnOnce(&mut TokenRecord, &[TokenRecord]) -> Result<(), E>,
    ) -> Result<Result<TokenRecord, E>, StorageError> {
        let _guard = self.catalog.lock_tokens();
        let all = self.catalog.tokens_by_digest()?;
        let Some((digest, mut token)) = all.iter().find(|(_, t)| &t.id == id).cloned() else {
            return Err(StorageError::NotFound);
        };
        let others: Vec<TokenRecord> = all
            .into_iter()
            .filter(|(_, t)| &t.id != id)
            .map(|(_, t)| t)
            .collect();
        if let Err(e) = change(&mut token, &others) {
            return Ok(Err(e));
        }
        self.catalog.put_token(&digest, &token)?;
        Ok(Ok(token))
    }

    /// The token's record, if the presented secret is a live token.
    pub fn authenticate(&self, secret: &str) -> Result<Option<TokenRecord>, StorageError> {
        let digest = crypto::token_digest(secret);
        let Some(record) = self.catalog.token(&digest)? else {
            return Ok(None);
        };
        let stored = crypto::decode_hex(&record.digest).unwrap_or_default();
        Ok(crypto::constant_time_eq(&stored, &digest).then_some(record))
    }

    pub fn current_kek(&self) -> MasterKey {
        self.keyring
            .read()
            .expect("keyring lock poisoned")
            .current()
            .clone()
    }

    pub fn add_kek(&self, key: MasterKey, make_current: bool) {
        let mut keyring = self.keyring.write().expect("keyring lock poisoned");
        let id = key.id.clone();
        keyring.add(key);
        if make_current {
            keyring.set_current(&id);
        }
    }

    /// Re-wraps every tenant's DEK that is not under the current master key.
    /// Each tenant is one durable catalog write, so a kill at any point leaves
    /// every tenant under either the old or the new key, both still on file.
    /// `after_each` runs after every re-wrapped tenant (progress, pacing).
    pub fn rewrap_all(
        &self,
        mut after_each: impl FnMut(usize, usize),
    ) -> Result<usize, StorageError> {
        let current = self.current_kek();
        let todo: Vec<TenantId> = self
            .catalog
            .tenants()
            .into_iter()
            .filter(|t| {
                t.wrapped_dek
                    .iter()
                    .chain(&t.rotating_to)
                    .any(|w| w.kek_id != current.id)
            })
            .map(|t| t.id)
            .collect();
        let total = todo.len();
        for (done, id) in todo.iter().enumerate() {
            let outcome = self.update_tenant(id, |record| -> Result<(), StorageError> {
                let Some(wrapped) = record.wrapped_dek.clone() else {
                    return Ok(());
                };
                record.wrapped_dek = Some(self.rewrapped(id, &wrapped)?);
                // A data-key rotation's new key is wrapped the same way.
                if let Some(next) = record.rotating_to.take() {
                    record.rotating_to = Some(self.rewrapped(id, &next)?);
                }
                Ok(())
            })?;
            outcome?;
            after_each(done + 1, total);
        }
        self.rewrap_secrets()?;
        Ok(total)
    }

    /// `wrapped` under the current master key; a tenant's own key service's
    /// part is kept as it is (no call to it).
    fn rewrapped(&self, id: &TenantId, wrapped: &WrappedDek) -> Result<WrappedDek, StorageError> {
        if wrapped.customer {
            return self.reseal_customer(id, wrapped);
        }
        let current = self.current_kek();
        let dek = self.unwrap(id, wrapped)?;
        Ok(WrappedDek {
            kek_id: current.id.clone(),
            sealed: crypto::encode_hex(&current.wrap_dek(id.as_str(), &dek)?),
            key_id: wrapped.key_id,
            customer: false,
        })
    }

    /// Admin credentials of a tenant, as digests (what a DR backup carries).
    pub fn admin_credentials(
        &self,
        tenant: &TenantId,
    ) -> Result<Vec<InheritedAdmin>, StorageError> {
        Ok(self
            .catalog
            .tokens()?
            .into_iter()
            .filter(|t| t.admin_of(tenant) && t.state_at(unix_now()) == "active")
            .filter_map(|t| {
                let digest = crypto::decode_hex(&t.digest)?.try_into().ok()?;
                Some(InheritedAdmin {
                    digest,
                    name: t.name,
                })
            })
            .collect())
    }

    /// Master key ids that some tenant's DEK is still wrapped under.
    pub fn kek_ids_in_use(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .catalog
            .tenants()
            .into_iter()
            .flat_map(|t| t.wrapped_dek.into_iter().chain(t.rotating_to))
            .map(|w| w.kek_id)
            .chain(self.secret_kek_ids())
            .collect();
        ids.sort();
        ids.dedup();
        ids
    }

    /// Drops keys no tenant uses any more from the in-memory keyring.
    pub fn retire_keks(&self, in_use: &[String]) {
        self.keyring
            .write()
            .expect("keyring lock poisoned")
            .retain(|id| in_use.iter().any(|used| used == id));
    }

    pub fn open_tenant_count(&self) -> usize {
        self.pool.open_count()
    }

    /// Tenants whose open database something besides the pool holds now
    /// (a request, a long job).
    pub fn held_tenants(&self) -> Vec<TenantId> {
        self.pool.held()
    }

    fn sweep_orphans(&self) -> Result<(), StorageError> {
        for dir in ["trash", "staging"] {
            for entry in std::fs::read_dir(self.root.join(dir))? {
                let path = entry?.path();
                std::fs::remove_dir_all(&path)?;
            }
        }
        for entry in std::fs::read_dir(self.root.join("tenants"))? {
            let entry = entry?;
            let name = entry.file_name();
            let known = name
                .to_str()
                .and_then(TenantId::parse)
                .and_then(|id| self.catalog.tenant(&id))
                .is_some_and(|t| t.state != TenantState::Destroyed);
            if !known {
                tracing::warn!(dir = %entry.path().display(), "removing a tenant directory the catalog does not name (interrupted create or destroy)");
                std::fs::remove_dir_all(entry.path())?;
            }
        }
        Ok(())
    }
}
