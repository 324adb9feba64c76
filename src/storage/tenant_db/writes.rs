//! The write path: a write is applied under the tenant's write lock (unique
//! checks, index entries in, the record, stale entries out, pre-images for
//! running snapshots) and acknowledged once group commit made it durable.

use serde_json::{Map, Value};

use crate::crypto::{record_aad, TenantCipher};
use crate::ids::RecordId;
use crate::schema::{index_form, same_indexed_value, Collection, Field};
use crate::storage::StorageError;

use super::changelog::{now_ms, Change};
use super::layout::*;
use super::snapshot::line_len;
use super::{TenantDb, PRE_IMAGE_ABSENT, PRE_IMAGE_VALUE};

/// What a write expects of the record's old version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Old {
    /// A fresh id: there is none (not even read).
    Fresh,
    /// Replace or delete: `NotFound` without one.
    MustExist,
    /// Replaying a change: either (deleting an absent record is a no-op).
    MayExist,
}

impl TenantDb {
    /// Applies a write and waits until it is durable (group commit).
    pub(super) fn write(
        &self,
        collection_name: &str,
        collection: &Collection,
        id: &RecordId,
        fields: Option<&Map<String, Value>>,
        must_exist: bool,
    ) -> Result<(), StorageError> {
        let started = std::time::Instant::now();
        let old = if must_exist {
            Old::MustExist
        } else {
            Old::Fresh
        };
        self.apply(collection_name, collection, id, fields, old, true)?;
        let applied = started.elapsed();
        let result = self
            .commit
            .wait_durable(|| self.db.flush().map(|_| ()))
            .map_err(StorageError::Flush);
        if result.is_ok() {
            if let Some(feed) = self.log.get() {
                feed.mark(&self.tenant);
            }
        }
        let total = started.elapsed();
        if total > std::time::Duration::from_millis(500) {
            tracing::warn!(
                apply_ms = applied.as_millis() as u64,
                durable_ms = (total - applied).as_millis() as u64,
                "slow write"
            );
        }
        result
    }

    /// Applies a write in memory (sled's log); durable at the next flush.
    /// `logged`: also into the change log, when this database keeps one.
    pub(super) fn apply(
        &self,
        collection_name: &str,
        collection: &Collection,
        id: &RecordId,
        fields: Option<&Map<String, Value>>,
        old: Old,
        logged: bool,
    ) -> Result<(), StorageError> {
        {
            let mut state = self.write_lock.lock().expect("tenant write lock poisoned");
            if self.frozen.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(StorageError::Frozen);
            }
            let key = record_key(collection_name, id);
            // A fresh id (128 bits, 80 of them random) has no old version to read.
            let (old, old_sealed) = match old {
                Old::Fresh => (None, None),
                Old::MustExist | Old::MayExist => match self.data.get(&key)? {
                    Some(sealed) => (
                        Some(self.open_record(collection_name, id, &sealed)?),
                        Some(sealed),
                    ),
                    None if old == Old::MustExist => return Err(StorageError::NotFound),
                    None if fields.is_none() => return Ok(()),
                    None => (None, None),
                },
            };
            // Every open snapshot keeps the first pre-image of every record changed
            // after it was taken; see `Snapshot`.
            for (_, tree) in &state.snapshots {
                if !tree.contains_key(&key)? {
                    let mut pre_image =
                        Vec::with_capacity(1 + old_sealed.as_ref().map_or(0, |v| v.len()));
                    match &old_sealed {
                        Some(sealed) => {
                            pre_image.push(PRE_IMAGE_VALUE);
                            pre_image.extend_from_slice(sealed);
                        }
                        None => pre_image.push(PRE_IMAGE_ABSENT),
                    }
                    tree.insert(&key, pre_image)?;
                }
            }
            state.writes += 1;
            self.changed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // The keys cannot change while the write lock is held.
            let keys = self.keys();
            // A record's index entries are under the key that sealed it (a
            // rotation re-indexes each record as it re-seals it). The new
            // version's go under the sealing key; those of the old version
            // under any key go, unless the new version has them too.
            let new_tags = fields
                .map(|f| self.index_tags(keys.current(), collection_name, collection, f))
                .unwrap_or_default();
            let old_tags: Vec<_> = match &old {
                Some(o) => keys
                    .all()
                    .flat_map(|key| self.index_tags(key, collection_name, collection, o))
                    .collect(),
                None => Vec::new(),
            };
            let sealed_by_current = old_sealed
                .as_ref()
                .and_then(|v| keys.sealer_of(v))
                .is_some_and(|key| key.id() == keys.current().id());
            let added: Vec<_> = new_tags
                .iter()
                .filter(|t| !(sealed_by_current && old_tags.contains(t)))
                .collect();
            let dropped: Vec<_> = old_tags.iter().filter(|t| !new_tags.contains(t)).collect();
            for (field, tag, unique) in &added {
                // A value the old version held already was checked when written.
                if *unique && !old_tags.contains(&(field.clone(), *tag, true)) {
                    let value = fields
                        .and_then(|f| f.get(field))
                        .expect("a tag has a value");
                    let spec = &collection.fields[field];
                    self.check_unique(collection_name, field, spec, value, id)?;
                }
            }
            let sealed = match fields {
                Some(fields) => {
                    let plain = serde_json::to_vec(fields).expect("a JSON map always serialises");
                    Some(keys.seal(
                        &record_aad(self.tenant.as_str(), collection_name, id.as_str()),
                        &plain,
                    )?)
                }
                None => None,
            };
            // Order matters for crashes: new index entries, then the record, then
            // the removal of stale entries. sled recovers a prefix of its log, so a
            // crash leaves at worst index entries that no longer match their
            // record, which `find` and `check_unique` verify and skip.
            for (field, tag, _) in &added {
                self.data
                    .insert(index_key(collection_name, field, tag, id), &[])?;
            }
            let id_len = id.as_str().len();
            let before = old_sealed.as_ref().and_then(|v| line_len(id_len, v));
            let after = sealed.as_ref().and_then(|v| line_len(id_len, v));
            match sealed {
                Some(sealed) => self.data.insert(key, sealed)?,
                None => self.data.remove(key)?,
            };
            state.book(collection_name, before, after);
            for (field, tag, _) in &dropped {
                self.data
                    .remove(index_key(collection_name, field, tag, id))?;
            }
            // Last: an entry that survives a crash names a change that did.
            if logged && self.log.get().is_some() {
                state.seq += 1;
                self.append_change(&Change {
                    seq: state.seq,
                    at_ms: now_ms(),
                    collection: collection_name.to_string(),
                    id: id.as_str().to_string(),
                    fields: fields.cloned(),
                })?;
            }
        }
        Ok(())
    }

    /// `Duplicate` if another record really holds `value` in `field`. Index
    /// entries left stale by a crash (their record no longer holds the value) do
    /// not count, and are removed.
    /// Refuses `value` for unique `field` when another record holds the same
    /// value (as the index compares it), under today's index key or one an
    /// index from before normalisation used. Index entries whose record no
    /// longer holds the value are stale and removed on the way.
    pub(super) fn check_unique(
        &self,
        collection: &str,
        field: &str,
        spec: &Field,
        value: &Value,
        writer: &RecordId,
    ) -> Result<(), StorageError> {
        for tag in self.lookup_tags(collection, field, spec, value) {
            let prefix = index_prefix(collection, field, &tag);
            for item in self.data.scan_prefix(&prefix) {
                let (key, _) = item?;
                let holder = record_id_from(&key[prefix.len()..])?;
                if &holder == writer {
                    continue;
                }
                let holds = self
                    .get(collection, &holder)?
                    .and_then(|(_, fields)| fields.get(field).cloned())
                    .is_some_and(|stored| same_indexed_value(spec, &stored, value));
                if holds {
                    return Err(StorageError::Duplicate(field.to_string()));
                }
                self.data.remove(key)?;
            }
        }
        Ok(())
    }

    /// The index entries (field, tag, unique) of `fields` under `key`.
    pub(super) fn index_tags(
        &self,
        key: &TenantCipher,
        collection_name: &str,
        collection: &Collection,
        fields: &Map<String, Value>,
    ) -> Vec<(String, [u8; TAG_LEN], bool)> {
        collection
            .fields
            .iter()
            .filter(|(_, spec)| spec.is_indexed())
            .filter_map(|(name, spec)| {
                let value = fields.get(name).filter(|v| !v.is_null())?;
                let tag = key.blind_index(collection_name, name, &index_form(spec, value));
                Some((name.clone(), tag, spec.unique))
            })
            .collect()
    }
}
