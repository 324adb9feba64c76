//! The tenant's change log: every acknowledged write, in order, under the
//! tenant's write sequence, sealed with the tenant's key in its own database
//! (keys `l` seq), until the shipper (`service::changelog`) has sealed it into
//! a segment in the spool and trimmed it here.
//!
//! An entry is written last in a write (after the record and its index
//! entries) and made durable by the same flush: sled recovers a prefix of its
//! log, so an entry that survived a crash names a change that did too.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::crypto::change_aad;
use crate::ids::TenantId;
use crate::storage::StorageError;

use super::layout::*;
use super::TenantDb;

/// Meta key (default tree): the last sequence shipped and trimmed, u64 BE.
const SHIPPED_KEY: &[u8] = b"log_shipped";
/// Meta key (default tree): the log's generation, 32 hex digits, made when the
/// database first logs. A restored, moved or upgraded tenant is a new
/// database, so its log is a new generation: two databases never share one.
const GENERATION_KEY: &[u8] = b"log_generation";

/// One change: the record after it (`None`: deleted). Plaintext only in
/// memory and inside a sealed segment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Change {
    pub seq: u64,
    /// Unix milliseconds when the write was applied.
    pub at_ms: u64,
    pub collection: String,
    pub id: String,
    #[serde(default)]
    pub fields: Option<Map<String, Value>>,
}

/// Tenants with changes not yet shipped (fed by every logged write; read by
/// the shipper).
#[derive(Default)]
pub struct ChangeFeed {
    dirty: Mutex<BTreeSet<TenantId>>,
}

impl ChangeFeed {
    pub fn mark(&self, tenant: &TenantId) {
        self.dirty
            .lock()
            .expect("change feed")
            .insert(tenant.clone());
    }

    /// Takes the set of tenants with new changes.
    pub fn take(&self) -> BTreeSet<TenantId> {
        std::mem::take(&mut *self.dirty.lock().expect("change feed"))
    }
}

pub(super) use crate::ids::unix_now_ms as now_ms;

impl TenantDb {
    /// From now on every write of this database is logged (live tenants of a
    /// host whose change log is on; never staged ones).
    pub fn log_to(&self, feed: Arc<ChangeFeed>) -> Result<(), StorageError> {
        let generation = match self.db.get(GENERATION_KEY)? {
            Some(v) => String::from_utf8_lossy(&v).into_owned(),
            None => {
                let fresh = crate::crypto::encode_hex(&crate::crypto::random_bytes::<16>()?);
                self.db.insert(GENERATION_KEY, fresh.as_bytes())?;
                self.db.flush()?;
                fresh
            }
        };
        let _ = self.generation.set(generation);
        let _ = self.log.set(feed);
        Ok(())
    }

    /// The log's generation, when this database logs its writes.
    pub fn log_generation(&self) -> Option<String> {
        self.log.get().and(self.generation.get().cloned())
    }

    /// The sequence of the last write applied (logged or not yet).
    pub fn last_seq(&self) -> u64 {
        self.write_lock
            .lock()
            .expect("tenant write lock poisoned")
            .seq
    }

    /// Sets where a tenant's sequence continues from (a restored tenant
    /// continues from the point it was restored to). Only before any write.
    pub fn continue_from(&self, seq: u64) -> Result<(), StorageError> {
        let mut state = self.write_lock.lock().expect("tenant write lock poisoned");
        if seq > state.seq {
            state.seq = seq;
            self.db.insert(SHIPPED_KEY, &seq.to_be_bytes())?;
        }
        Ok(())
    }

    /// The sequence stored at open: the newest log entry, else what was shipped.
    pub(super) fn stored_seq(db: &sled::Db, data: &sled::Tree) -> Result<u64, StorageError> {
        let shipped = match db.get(SHIPPED_KEY)? {
            Some(v) => u64::from_be_bytes(
                v.as_ref()
                    .try_into()
                    .map_err(|_| StorageError::Damaged("log position".into()))?,
            ),
            None => 0,
        };
        let newest = match data.scan_prefix([LOG_PREFIX]).next_back() {
            Some(item) => log_seq_from(&item?.0)?,
            None => 0,
        };
        Ok(shipped.max(newest))
    }

    /// Seals one change into the database (called under the write lock).
    pub(super) fn append_change(&self, change: &Change) -> Result<(), StorageError> {
        let plain = serde_json::to_vec(change).expect("a change always serialises");
        let sealed = self
            .keys()
            .seal(&change_aad(self.tenant.as_str(), change.seq), &plain)?;
        self.data.insert(log_key(change.seq), sealed)?;
        Ok(())
    }

    /// Logged changes after `after`, oldest first, up to about `max_bytes` of
    /// sealed entries (at least one).
    pub fn changes_after(&self, after: u64, max_bytes: usize) -> Result<Vec<Change>, StorageError> {
        let mut out = Vec::new();
        let mut bytes = 0;
        for item in self.data.range(log_key(after + 1)..log_key(u64::MAX)) {
            let (key, sealed) = item?;
            let seq = log_seq_from(&key)?;
            let plain = self
                .open_sealed(&change_aad(self.tenant.as_str(), seq), &sealed)
                .map_err(|_| StorageError::Damaged(format!("change {seq} of the log")))?;
            let change: Change = serde_json::from_slice(&plain)
                .map_err(|_| StorageError::Damaged(format!("change {seq} of the log")))?;
            if change.seq != seq {
                return Err(StorageError::Damaged(format!("change {seq} of the log")));
            }
            bytes += sealed.len();
            out.push(change);
            if bytes >= max_bytes {
                break;
            }
        }
        Ok(out)
    }

    /// Removes the changes up to `upto` (they are in the spool now), durably.
    pub fn trim_log(&self, upto: u64) -> Result<(), StorageError> {
        self.db.insert(SHIPPED_KEY, &upto.to_be_bytes())?;
        for item in self.data.range(log_key(0)..=log_key(upto)) {
            let (key, _) = item?;
            self.data.remove(key)?;
        }
        self.db.flush()?;
        Ok(())
    }
}
