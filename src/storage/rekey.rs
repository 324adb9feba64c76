//! A tenant's data-key rotation, the catalog's side: the new key wrapped
//! beside the old one, then in its place. The database's side (re-sealing
//! while it serves) is `tenant_db::rekey`; the job around both is
//! `service::data_keys`.
//!
//! Crash-safe by ordering. (1) [`Storage::begin_dek_rotation`] writes the new
//! wrapped key as `rotating_to` in one durable catalog write, before any value
//! is sealed by it; from then on the tenant opens with both keys. (2) The
//! database is re-sealed batch by batch. (3) [`Storage::end_dek_rotation`]
//! makes the new key the tenant's only one in one durable catalog write (the
//! old wrapped key is gone: shredded), then the open database forgets the old
//! key. A kill between any two steps leaves every value openable by a key the
//! catalog holds.

use std::sync::Arc;

use super::catalog::{TenantRecord, WrappedDek};
use super::tenant_db::TenantDb;
use super::{Storage, StorageError};
use crate::crypto::{self, SecretKey, TenantCipher, TenantKeys};
use crate::ids::TenantId;

impl Storage {
    /// Unwraps one of `tenant`'s wrapped data keys.
    pub(super) fn unwrap(
        &self,
        tenant: &TenantId,
        wrapped: &WrappedDek,
    ) -> Result<SecretKey, StorageError> {
        if wrapped.customer {
            return self.unwrap_customer(tenant, wrapped);
        }
        let keyring = self.keyring.read().expect("keyring lock poisoned");
        let kek = keyring
            .get(&wrapped.kek_id)
            .ok_or_else(|| StorageError::MissingKek(wrapped.kek_id.clone()))?;
        let sealed = crypto::decode_hex(&wrapped.sealed)
            .ok_or_else(|| StorageError::Damaged("wrapped data key".into()))?;
        kek.unwrap_dek(tenant.as_str(), &sealed)
            .map_err(|_| StorageError::Damaged("wrapped data key".into()))
    }

    /// The keys a tenant's database opens with: its data key, and during a
    /// rotation the new one, which seals.
    pub(super) fn keys_of(&self, record: &TenantRecord) -> Result<TenantKeys, StorageError> {
        let wrapped = record.wrapped_dek.as_ref().ok_or(StorageError::Shredded)?;
        let key = TenantCipher::with_id(&self.unwrap(&record.id, wrapped)?, wrapped.key_id);
        Ok(match &record.rotating_to {
            Some(next) => TenantKeys::rotating(
                TenantCipher::with_id(&self.unwrap(&record.id, next)?, next.key_id),
                key,
            ),
            None => TenantKeys::new(key),
        })
    }

    /// Step 1: a new data key for the tenant, wrapped beside its key, and the
    /// open database sealing with it. Returns the database (held open by the
    /// caller for the whole rotation, so that nobody opens it with a stale set
    /// of keys) and the new key's id. A rotation already begun is resumed.
    pub fn begin_dek_rotation(&self, id: &TenantId) -> Result<(Arc<TenantDb>, u32), StorageError> {
        let record = self.catalog.tenant(id).ok_or(StorageError::NotFound)?;
        let db = self.tenant_db(&record)?;
        let record = match &record.rotating_to {
            Some(_) => record,
            None => {
                let dek = SecretKey::generate()?;
                let kek = self.current_kek();
                let current = record.wrapped_dek.as_ref().ok_or(StorageError::Shredded)?;
                // A tenant with its own key has the new key wrapped by it too
                // (the call made before the update lock is taken).
                let next = if current.customer {
                    self.wrap_for_customer(id, &dek, current.key_id + 1)?
                } else {
                    WrappedDek {
                        kek_id: kek.id.clone(),
                        sealed: crypto::encode_hex(&kek.wrap_dek(id.as_str(), &dek)?),
                        key_id: current.key_id + 1,
                        customer: false,
                    }
                };
                let outcome = self.update_tenant(id, |record| {
                    let Some(wrapped) = &record.wrapped_dek else {
                        return Err(StorageError::Shredded);
                    };
                    if wrapped.customer != next.customer || wrapped.key_id + 1 != next.key_id {
                        return Err(StorageError::Exists(
                            "the tenant's data key changed meanwhile; try again".into(),
                        ));
                    }
                    if record.rotating_to.is_none() {
                        record.rotating_to = Some(next);
                    }
                    Ok(())
                })?;
                outcome?
            }
        };
        let keys = self.keys_of(&record)?;
        let new_id = keys.current().id();
        db.set_keys(keys);
        Ok((db, new_id))
    }

    /// Step 3: the new key becomes the tenant's only one; the old wrapped key
    /// is removed from the catalog in the same durable write. Call once every
    /// value is re-sealed and no snapshot from before is open.
    pub fn end_dek_rotation(&self, id: &TenantId, db: &TenantDb) -> Result<(), StorageError> {
        let outcome = self.update_tenant(id, |record| {
            if let Some(next) = record.rotating_to.take() {
                record.wrapped_dek = Some(next);
            }
            Ok::<(), StorageError>(())
        })?;
        let record = outcome?;
        db.set_keys(self.keys_of(&record)?);
        Ok(())
    }
}
