//! Change-log segments: a tenant's changes between two sequences, sealed the
//! way DR backups are (`sealed`: a fresh key per segment, wrapped by the
//! host's backup key with the header — segment id, tenant — as associated
//! data), with the range sealed inside the envelope so that a manifest that
//! lies about it is caught on opening. A segment is stored like a backup
//! (`archive.cfrdr` + `manifest.json`, manifest last) under a random id that
//! is never reused; its manifest names the range, its log's generation and
//! the schema its records follow, and nothing else about the tenant.
//!
//! Plaintext (inside the seal only): one JSON line per change, in sequence
//! order, `{"seq","at_ms","collection","id","fields"?}` (no `fields`: deleted).

use std::io::{BufRead, Read, Write};

use serde::{Deserialize, Serialize};

use super::sealed::{self, Envelope};
use super::store::StoredBackup;
use super::BackupError;
use crate::crypto::SecretKey;
use crate::ids::TenantId;
use crate::storage::Change;

/// `kind` of a segment's manifest.
pub const SEGMENT_KIND: &str = "log";
/// Segment ids (and object names) are this and 32 hex digits, so that they
/// never look like a backup's.
pub const SEGMENT_ID_PREFIX: &str = "log-";
/// A segment's plaintext is refused beyond this (segments close at a few MiB).
pub const MAX_SEGMENT_BYTES: u64 = 256 << 20;

/// Where a full backup stands in its tenant's change log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Covers {
    pub generation: String,
    /// Every change up to this sequence is in the backup; none after.
    pub seq: u64,
    /// Unix milliseconds of the snapshot.
    pub at_ms: u64,
}

/// What a segment holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogRange {
    pub generation: String,
    pub first_seq: u64,
    pub last_seq: u64,
    pub first_at_ms: u64,
    pub last_at_ms: u64,
    pub schema: String,
    pub schema_version: u32,
}

/// Seals `changes` (consecutive, of one generation) into `out`.
pub fn write_segment<W: Write>(
    out: W,
    backup_key: &SecretKey,
    outer: Option<&dyn sealed::OuterKey>,
    segment_id: &[u8; 16],
    tenant: &TenantId,
    range: &LogRange,
    changes: &[Change],
) -> Result<W, BackupError> {
    let envelope = Envelope {
        format: 1,
        backup_id: crate::crypto::encode_hex(segment_id),
        tenant_id: tenant.to_string(),
        admins: Vec::new(),
        log: Some(range.clone()),
    };
    let mut sealing = sealed::seal_for(out, backup_key, outer, segment_id, tenant, &envelope)?;
    for change in changes {
        let mut line = serde_json::to_vec(change).expect("a change always serialises");
        line.push(b'\n');
        sealing.write_all(&line).map_err(BackupError::from_io)?;
    }
    sealing.finish()
}

/// Opens a segment and checks it against its manifest: the ids in the
/// header, the sealed range, and every sequence from first to last once, in
/// order.
pub fn read_segment(
    reader: impl Read,
    backup_key: &SecretKey,
    outer: Option<&dyn sealed::OuterKey>,
    manifest: &StoredBackup,
) -> Result<Vec<Change>, BackupError> {
    let damaged =
        |why: &str| BackupError::BadArchive(format!("log segment {}: {why}", manifest.backup_id));
    let range = manifest
        .log
        .as_ref()
        .ok_or_else(|| damaged("not a segment"))?;
    let (header, envelope, plain) = sealed::open_for(reader, backup_key, outer)?;
    let id = manifest
        .backup_id
        .strip_prefix(SEGMENT_ID_PREFIX)
        .ok_or_else(|| damaged("not a segment id"))?;
    if header.backup_id != id || header.tenant_id != manifest.tenant_id {
        return Err(damaged("the stored object belongs to another segment"));
    }
    if envelope.log.as_ref() != Some(range) {
        return Err(damaged("its manifest does not match what was sealed"));
    }
    let mut changes = Vec::new();
    let mut expect = range.first_seq;
    for line in std::io::BufReader::new(plain.take(MAX_SEGMENT_BYTES)).lines() {
        let line = line.map_err(|e| damaged(&e.to_string()))?;
        let change: Change = serde_json::from_str(&line).map_err(|_| damaged("a change"))?;
        if change.seq != expect {
            return Err(damaged(&format!(
                "change {} where {expect} belongs",
                change.seq
            )));
        }
        expect += 1;
        changes.push(change);
    }
    if expect != range.last_seq + 1 {
        return Err(damaged("it ends before its last change"));
    }
    Ok(changes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(seq: u64) -> Change {
        let mut fields = serde_json::Map::new();
        fields.insert("name".into(), "canary-plaintext".into());
        Change {
            seq,
            at_ms: 1_000 + seq,
            collection: "contacts".into(),
            id: format!("{seq:032x}"),
            fields: (seq % 2 == 0).then_some(fields),
        }
    }

    #[test]
    fn a_segment_opens_only_as_what_its_manifest_says() {
        let key = SecretKey::generate().unwrap();
        let tenant = TenantId::generate().unwrap();
        let range = LogRange {
            generation: "g".repeat(32),
            first_seq: 5,
            last_seq: 7,
            first_at_ms: 1005,
            last_at_ms: 1007,
            schema: "crm".into(),
            schema_version: 3,
        };
        let changes: Vec<Change> = (5..=7).map(change).collect();
        let id = [7u8; 16];
        let sealed = write_segment(Vec::new(), &key, None, &id, &tenant, &range, &changes).unwrap();
        assert!(
            !sealed.windows(7).any(|w| w == b"canary-"),
            "plaintext in a segment"
        );
        let manifest = StoredBackup {
            format: 1,
            backup_id: format!("{SEGMENT_ID_PREFIX}{}", crate::crypto::encode_hex(&id)),
            tenant_id: tenant.to_string(),
            created_at: 1,
            kind: SEGMENT_KIND.into(),
            retain_until: 2,
            archive_size: sealed.len() as u64,
            archive_sha256: String::new(),
            records: 3,
            covers: None,
            log: Some(range.clone()),
        };
        assert_eq!(
            read_segment(&sealed[..], &key, None, &manifest).unwrap(),
            changes
        );
        // A manifest that claims another range is caught.
        let mut lying = manifest.clone();
        lying.log.as_mut().unwrap().last_seq = 9;
        assert!(read_segment(&sealed[..], &key, None, &lying).is_err());
        // Another key cannot open it; a flipped byte is caught.
        assert!(read_segment(
            &sealed[..],
            &SecretKey::generate().unwrap(),
            None,
            &manifest
        )
        .is_err());
        let mut flipped = sealed.clone();
        let at = flipped.len() - 20;
        flipped[at] ^= 1;
        assert!(read_segment(&flipped[..], &key, None, &manifest).is_err());
    }
}
