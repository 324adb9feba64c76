//! The keys of a tenant's database (see the table in `tenant_db`'s header).

use super::StorageError;
use crate::ids::RecordId;

/// Version of the key layout above. Written under `m` `layout`; never change.
pub const TENANT_LAYOUT_V1: u8 = 1;

pub(super) const TAG_LEN: usize = 32;

/// First byte of the change log's keys: `l` seq (u64 BE).
pub(super) const LOG_PREFIX: u8 = b'l';

pub(super) fn log_key(seq: u64) -> [u8; 9] {
    let mut key = [LOG_PREFIX; 9];
    key[1..].copy_from_slice(&seq.to_be_bytes());
    key
}

pub(super) fn log_seq_from(key: &[u8]) -> Result<u64, StorageError> {
    match key {
        [LOG_PREFIX, rest @ ..] if rest.len() == 8 => {
            Ok(u64::from_be_bytes(rest.try_into().expect("eight bytes")))
        }
        _ => Err(StorageError::Damaged("a change log key".into())),
    }
}

pub(super) fn collection_prefix(collection: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(collection.len() + 2);
    key.push(b'r');
    key.extend_from_slice(collection.as_bytes());
    key.push(0);
    key
}

pub(super) fn record_key(collection: &str, id: &RecordId) -> Vec<u8> {
    let mut key = collection_prefix(collection);
    key.extend_from_slice(id.as_str().as_bytes());
    key
}

pub(super) fn index_prefix(collection: &str, field: &str, tag: &[u8; TAG_LEN]) -> Vec<u8> {
    let mut key = Vec::with_capacity(collection.len() + field.len() + TAG_LEN + 3);
    key.push(b'i');
    key.extend_from_slice(collection.as_bytes());
    key.push(0);
    key.extend_from_slice(field.as_bytes());
    key.push(0);
    key.extend_from_slice(tag);
    key
}

pub(super) fn index_key(
    collection: &str,
    field: &str,
    tag: &[u8; TAG_LEN],
    id: &RecordId,
) -> Vec<u8> {
    let mut key = index_prefix(collection, field, tag);
    key.extend_from_slice(id.as_str().as_bytes());
    key
}

pub(super) fn record_id_from(bytes: &[u8]) -> Result<RecordId, StorageError> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(RecordId::parse)
        .ok_or_else(|| StorageError::Damaged("a record key".into()))
}
