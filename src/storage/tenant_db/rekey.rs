//! Re-sealing a tenant under a new data key while it serves (the database's
//! side of a data-key rotation; the steps around it are `storage::rekey`).
//!
//! While a rotation runs the database holds two keys: the new one seals every
//! write, both open. [`TenantDb::reseal_batch`] walks the tree in key order
//! from a cursor, under the write lock one batch at a time: each record still
//! sealed by the old key is re-sealed by the new one and re-indexed (the new
//! key's index entries in first, then the record, then the old key's entries
//! out — the order of the write path, so a crash leaves only entries that are
//! hints), and each change-log entry is re-sealed in place unless the shipper
//! removed it meanwhile. Writers keep their invariant: a record's index
//! entries are under the key that sealed it. A re-seal keeps the plaintext,
//! so snapshots taken before it read the same record either way.

use std::collections::BTreeMap;

use crate::crypto::{change_aad, record_aad, sealed_key_id, TenantKeys};
use crate::schema::{index_form, legacy_index_forms, Schema};
use crate::storage::StorageError;

use super::layout::*;
use super::TenantDb;

/// One batch's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resealed {
    /// Where the next batch starts; `None` when the walk reached the end.
    pub next: Option<Vec<u8>>,
    /// Records and change-log entries this batch re-sealed.
    pub records: u64,
    pub changes: u64,
}

impl TenantDb {
    /// Replaces the database's keys (under the write lock: no write is half
    /// way through with the old set).
    pub fn set_keys(&self, keys: TenantKeys) {
        let _state = self.write_lock.lock().expect("tenant write lock poisoned");
        *self.keys.write().expect("tenant keys lock poisoned") = std::sync::Arc::new(keys);
    }

    /// The id of the key that seals new values.
    pub fn sealing_key_id(&self) -> u32 {
        self.keys().current().id()
    }

    /// Re-seals up to `batch` values from `from` on (see the module doc) and
    /// makes them durable. `thorough`: also clear the old key's index entries
    /// of records already re-sealed (the batch a crash may have cut short).
    pub fn reseal_batch(
        &self,
        schema: &Schema,
        from: &[u8],
        batch: usize,
        thorough: bool,
    ) -> Result<Resealed, StorageError> {
        let mut done = Resealed {
            next: None,
            records: 0,
            changes: 0,
        };
        {
            let _state = self.write_lock.lock().expect("tenant write lock poisoned");
            if self.frozen.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(StorageError::Frozen);
            }
            let keys = self.keys();
            let mut at = from.to_vec();
            let mut seen = 0;
            'walk: loop {
                for item in self.data.range(at.clone()..) {
                    let (key, sealed) = item?;
                    if seen == batch {
                        done.next = Some(key.to_vec());
                        break 'walk;
                    }
                    match key.first() {
                        Some(&b'i') => {
                            // Index entries are not sealed values: skip them all.
                            at = vec![b'i' + 1];
                            continue 'walk;
                        }
                        Some(&b'r') => {
                            let resealed =
                                self.reseal_record(schema, &keys, &key, &sealed, thorough)?;
                            done.records += u64::from(resealed);
                            self.changed
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        Some(&LOG_PREFIX) => {
                            let resealed = self.reseal_change(&keys, &key, &sealed)?;
                            done.changes += u64::from(resealed);
                        }
                        _ => {}
                    }
                    seen += 1;
                }
                break;
            }
        }
        self.commit
            .wait_durable(|| self.db.flush().map(|_| ()))
            .map_err(StorageError::Flush)?;
        Ok(done)
    }

    /// Re-seals and re-indexes one record; false if it was sealed by the new
    /// key already.
    fn reseal_record(
        &self,
        schema: &Schema,
        keys: &TenantKeys,
        key: &[u8],
        sealed: &[u8],
        thorough: bool,
    ) -> Result<bool, StorageError> {
        let current = keys.current();
        let already = sealed_key_id(sealed) == Some(current.id());
        if already && !thorough {
            return Ok(false);
        }
        let split = key
            .iter()
            .position(|b| *b == 0)
            .ok_or_else(|| StorageError::Damaged("a record key".into()))?;
        let name = std::str::from_utf8(&key[1..split])
            .map_err(|_| StorageError::Damaged("a record key".into()))?;
        let id = record_id_from(&key[split + 1..])?;
        let collection = schema.collections.get(name).ok_or_else(|| {
            StorageError::Damaged(format!("collection {name} is not in the tenant's schema"))
        })?;
        let aad = record_aad(self.tenant.as_str(), name, id.as_str());
        let plain = keys
            .open(&aad, sealed)
            .map_err(|_| StorageError::Damaged(format!("record {id} in {name}")))?;
        let fields: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&plain)
            .map_err(|_| StorageError::Damaged(format!("record {id} in {name}")))?;
        for (field, tag, _) in self.index_tags(current, name, collection, &fields) {
            self.data.insert(index_key(name, &field, &tag, &id), &[])?;
        }
        if !already {
            self.data.insert(key, current.seal(&aad, &plain)?)?;
        }
        if let Some(previous) = keys.previous() {
            for (field, spec) in collection.fields.iter().filter(|(_, s)| s.is_indexed()) {
                let Some(value) = fields.get(field).filter(|v| !v.is_null()) else {
                    continue;
                };
                let forms =
                    std::iter::once(index_form(spec, value)).chain(legacy_index_forms(spec, value));
                for form in forms {
                    let tag = previous.blind_index(name, field, &form);
                    self.data.remove(index_key(name, field, &tag, &id))?;
                }
            }
        }
        Ok(!already)
    }

    /// Re-seals one change-log entry where it is, unless it was shipped and
    /// removed meanwhile; false if there was nothing to do.
    fn reseal_change(
        &self,
        keys: &TenantKeys,
        key: &[u8],
        sealed: &sled::IVec,
    ) -> Result<bool, StorageError> {
        let current = keys.current();
        if sealed_key_id(sealed) == Some(current.id()) {
            return Ok(false);
        }
        let seq = log_seq_from(key)?;
        let aad = change_aad(self.tenant.as_str(), seq);
        let plain = keys
            .open(&aad, sealed)
            .map_err(|_| StorageError::Damaged(format!("change {seq} of the log")))?;
        let resealed = current.seal(&aad, &plain)?;
        // Compare-and-swap: an entry the shipper removed stays removed.
        let swapped = self
            .data
            .compare_and_swap(key, Some(sealed), Some(resealed))?;
        Ok(swapped.is_ok())
    }

    /// Whether a snapshot taken before `cutoff` (a snapshot id) is still open:
    /// its pre-images may hold values sealed by a key about to be dropped.
    pub fn snapshots_before(&self, cutoff: u64) -> bool {
        let state = self.write_lock.lock().expect("tenant write lock poisoned");
        state.snapshots.iter().any(|(id, _)| *id < cutoff)
    }

    /// The id the next snapshot will get.
    pub fn next_snapshot_id(&self) -> u64 {
        self.next_snapshot.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// How many records and change-log entries each key id sealed (tests and
    /// tooling: after a rotation, only the new key's id is left).
    pub fn sealed_key_ids(&self) -> Result<BTreeMap<u32, u64>, StorageError> {
        let mut counts = BTreeMap::new();
        for item in self.data.iter() {
            let (key, sealed) = item?;
            if matches!(key.first(), Some(&b'r') | Some(&LOG_PREFIX)) {
                let id = sealed_key_id(&sealed)
                    .ok_or_else(|| StorageError::Damaged("a sealed value".into()))?;
                *counts.entry(id).or_insert(0) += 1;
            }
        }
        Ok(counts)
    }
}
