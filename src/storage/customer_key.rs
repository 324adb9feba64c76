//! Customer-managed keys, the catalog's side: a tenant's data key wrapped by
//! its own key service *inside* the master key's wrap. The wrapped data key
//! then holds `seal_blob(master key, service_wrap(DEK))` (`customer: true`),
//! so opening the tenant needs the master key **and** one call to the
//! tenant's key service ([`KeyService`], set by the host at start).
//!
//! Attaching and detaching are one durable catalog write each: the record
//! holds the old wrapping or the new one, never both and never neither (a
//! kill at any moment leaves the tenant readable under exactly one). The
//! service call is made before the write and outside the update lock; the
//! write happens only if the wrapping it replaces is still the one read.
//!
//! A tenant whose key the service refused is *closed*: dropped from the pool
//! (its data key with it), and refused until an unwrap succeeds again (tried
//! at most once a second per tenant).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use zeroize::Zeroizing;

use super::catalog::{TenantRecord, WrappedDek};
use super::{Storage, StorageError};
use crate::crypto::{self, SecretKey};
use crate::ids::TenantId;

/// A tenant's own key service, asked to wrap and unwrap its data key.
pub trait KeyService: Send + Sync {
    fn wrap(&self, tenant: &TenantId, key: &[u8]) -> Result<Vec<u8>, KeyUnavailable>;
    fn unwrap(
        &self,
        tenant: &TenantId,
        wrapped: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, KeyUnavailable>;
}

/// Why a tenant's own key did not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyUnavailable {
    /// The service answered no: key disabled or deleted, token revoked.
    #[error("the tenant's key service refused: {0}")]
    Refused(String),
    /// No answer (down, timed out, sealed).
    #[error("the tenant's key service is unreachable: {0}")]
    Unreachable(String),
    #[error(
        "the tenant's data key is wrapped by its own key service, which this host has no access to"
    )]
    NoService,
}

/// Tenants closed because their key was refused: why, and when an unwrap
/// was last tried.
#[derive(Default)]
pub(super) struct Closed(std::sync::Mutex<HashMap<TenantId, (String, Instant)>>);

const RETRY_CLOSED_EVERY: Duration = Duration::from_secs(1);

fn blob_label(tenant: &TenantId) -> String {
    format!("customer-wrapped dek:{tenant}")
}

impl Storage {
    /// The host's access to tenants' own key services.
    pub fn set_key_service(&self, service: Arc<dyn KeyService>) {
        *self.key_service.write().expect("key service lock poisoned") = Some(service);
    }

    fn key_service(&self) -> Result<Arc<dyn KeyService>, KeyUnavailable> {
        self.key_service
            .read()
            .expect("key service lock poisoned")
            .clone()
            .ok_or(KeyUnavailable::NoService)
    }

    /// Opens a wrapping made by [`Storage::wrap_for_customer`]: the master
    /// key's seal, then the tenant's key service.
    pub(super) fn unwrap_customer(
        &self,
        tenant: &TenantId,
        wrapped: &WrappedDek,
    ) -> Result<SecretKey, StorageError> {
        let inner = self.open_customer_seal(tenant, wrapped)?;
        let service = self.key_service().map_err(StorageError::KeyUnavailable)?;
        let plain = service
            .unwrap(tenant, &inner)
            .map_err(StorageError::KeyUnavailable)?;
        SecretKey::from_bytes(&plain)
            .map_err(|_| StorageError::Damaged("the key service's unwrapped data key".into()))
    }

    /// `dek` wrapped by the tenant's key service, then sealed by the current
    /// master key.
    pub(super) fn wrap_for_customer(
        &self,
        tenant: &TenantId,
        dek: &SecretKey,
        key_id: u32,
    ) -> Result<WrappedDek, StorageError> {
        let service = self.key_service().map_err(StorageError::KeyUnavailable)?;
        let inner = service
            .wrap(tenant, &dek.bytes_to_wrap())
            .map_err(StorageError::KeyUnavailable)?;
        let kek = self.current_kek();
        Ok(WrappedDek {
            kek_id: kek.id.clone(),
            sealed: crypto::encode_hex(&kek.seal_blob(&blob_label(tenant), &inner)?),
            key_id,
            customer: true,
        })
    }

    /// Re-seals a customer wrapping under the current master key (master-key
    /// rotation): the key service's part is kept as it is, no call made.
    pub(super) fn reseal_customer(
        &self,
        tenant: &TenantId,
        wrapped: &WrappedDek,
    ) -> Result<WrappedDek, StorageError> {
        let inner = self.open_customer_seal(tenant, wrapped)?;
        let current = self.current_kek();
        Ok(WrappedDek {
            kek_id: current.id.clone(),
            sealed: crypto::encode_hex(&current.seal_blob(&blob_label(tenant), &inner)?),
            key_id: wrapped.key_id,
            customer: true,
        })
    }

    /// A staged copy's data key wrapped by its own key service too, before
    /// the copy is published (the key service's configuration for the new
    /// tenant is in place).
    pub fn stage_under_customer_key(
        &self,
        staged: &mut super::StagedTenant,
    ) -> Result<(), StorageError> {
        let id = staged.record.id.clone();
        let wrapped = staged
            .record
            .wrapped_dek
            .clone()
            .ok_or(StorageError::Shredded)?;
        if wrapped.customer {
            return Ok(());
        }
        let dek = self.unwrap(&id, &wrapped)?;
        staged.record.wrapped_dek = Some(self.wrap_for_customer(&id, &dek, wrapped.key_id)?);
        Ok(())
    }

    /// Wraps the tenant's data key by its own key service too (one durable
    /// write). Refused while a data-key rotation runs, and when already done.
    pub fn attach_customer_key(&self, id: &TenantId) -> Result<TenantRecord, StorageError> {
        self.swap_wrapping(id, true)
    }

    /// Back to the master key alone (one durable write); needs the tenant's
    /// key to answer.
    pub fn detach_customer_key(&self, id: &TenantId) -> Result<TenantRecord, StorageError> {
        self.swap_wrapping(id, false)
    }

    fn swap_wrapping(&self, id: &TenantId, customer: bool) -> Result<TenantRecord, StorageError> {
        let record = self.catalog.tenant(id).ok_or(StorageError::NotFound)?;
        let wrapped = record.wrapped_dek.clone().ok_or(StorageError::Shredded)?;
        if record.rotating_to.is_some() {
            return Err(StorageError::Exists(
                "a data-key rotation is running; try again when it is done".into(),
            ));
        }
        if wrapped.customer == customer {
            return Err(StorageError::Exists(if customer {
                "the tenant's data key is already wrapped by its own key".into()
            } else {
                "the tenant has no key of its own attached".into()
            }));
        }
        let dek = self.unwrap(id, &wrapped)?;
        let next = if customer {
            self.wrap_for_customer(id, &dek, wrapped.key_id)?
        } else {
            let kek = self.current_kek();
            WrappedDek {
                kek_id: kek.id.clone(),
                sealed: crypto::encode_hex(&kek.wrap_dek(id.as_str(), &dek)?),
                key_id: wrapped.key_id,
                customer: false,
            }
        };
        let outcome = self.update_tenant(id, |record| {
            let unchanged = record
                .wrapped_dek
                .as_ref()
                .is_some_and(|w| w.sealed == wrapped.sealed && w.kek_id == wrapped.kek_id)
                && record.rotating_to.is_none();
            if !unchanged {
                return Err(StorageError::Exists(
                    "the tenant's data key changed meanwhile; try again".into(),
                ));
            }
            record.wrapped_dek = Some(next);
            Ok(())
        })?;
        outcome
    }

    /// The tenant's stored wrapping as its key service made it (the master
    /// key's seal opened): to try a new token for the same key on it.
    pub fn customer_wrapping(&self, id: &TenantId) -> Result<Zeroizing<Vec<u8>>, StorageError> {
        let record = self.catalog.tenant(id).ok_or(StorageError::NotFound)?;
        let wrapped = record.wrapped_dek.as_ref().ok_or(StorageError::Shredded)?;
        if !wrapped.customer {
            return Err(StorageError::NotFound);
        }
        self.open_customer_seal(id, wrapped)
    }

    /// The master key's seal of a customer wrapping opened: what the
    /// tenant's key service made of its data key.
    fn open_customer_seal(
        &self,
        tenant: &TenantId,
        wrapped: &WrappedDek,
    ) -> Result<Zeroizing<Vec<u8>>, StorageError> {
        let keyring = self.keyring.read().expect("keyring lock poisoned");
        let kek = keyring
            .get(&wrapped.kek_id)
            .ok_or_else(|| StorageError::MissingKek(wrapped.kek_id.clone()))?;
        let sealed = crypto::decode_hex(&wrapped.sealed)
            .ok_or_else(|| StorageError::Damaged("wrapped data key".into()))?;
        kek.open_blob(&blob_label(tenant), &sealed)
            .map_err(|_| StorageError::Damaged("wrapped data key".into()))
    }

    /// One unwrap of the tenant's stored wrapping by its key service: the
    /// check that its key is still live (a Transit call the tenant sees).
    pub fn check_customer_key(&self, id: &TenantId) -> Result<(), StorageError> {
        let record = self.catalog.tenant(id).ok_or(StorageError::NotFound)?;
        let wrapped = record.wrapped_dek.as_ref().ok_or(StorageError::Shredded)?;
        if !wrapped.customer {
            return Ok(());
        }
        self.unwrap_customer(id, wrapped).map(drop)
    }

    /// Closes the tenant: out of the pool (its keys dropped once the last
    /// request in flight ends), refused until its key answers again.
    pub fn close_tenant(&self, id: &TenantId, why: &str) {
        self.closed
            .0
            .lock()
            .expect("closed lock poisoned")
            .insert(id.clone(), (why.to_string(), Instant::now()));
        self.pool.forget(id);
    }

    /// Marks the tenant closed without touching the pool (from inside an
    /// open that failed: it is not open).
    pub fn mark_closed(&self, id: &TenantId, why: &str) {
        self.closed
            .0
            .lock()
            .expect("closed lock poisoned")
            .insert(id.clone(), (why.to_string(), Instant::now()));
    }

    /// Why the tenant is closed, if it is.
    pub fn closed_because(&self, id: &TenantId) -> Option<String> {
        self.closed
            .0
            .lock()
            .expect("closed lock poisoned")
            .get(id)
            .map(|(why, _)| why.clone())
    }

    /// Before a closed tenant is opened: refused at once when an unwrap was
    /// tried less than a second ago; else the open goes on (its unwrap is the
    /// try) and `Ok(true)` says to [`Storage::reopened`] it once it worked.
    pub(super) fn reopen_if_closed(&self, record: &TenantRecord) -> Result<bool, StorageError> {
        let mut closed = self.closed.0.lock().expect("closed lock poisoned");
        let Some((why, tried)) = closed.get_mut(&record.id) else {
            return Ok(false);
        };
        if tried.elapsed() < RETRY_CLOSED_EVERY {
            return Err(StorageError::KeyUnavailable(KeyUnavailable::Refused(
                why.clone(),
            )));
        }
        *tried = Instant::now();
        Ok(true)
    }

    /// A closed tenant's key answered again: it is open from now on.
    pub(super) fn reopened(&self, id: &TenantId) {
        self.closed
            .0
            .lock()
            .expect("closed lock poisoned")
            .remove(id);
    }

    /// Whether the tenant's database is open now.
    pub fn is_open(&self, id: &TenantId) -> bool {
        self.pool.is_open(id)
    }
}
