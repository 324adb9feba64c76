//! The archive format, version 2 (see `ops/archive-format.md`).
//!
//! A tar stream (ustar headers) compressed with zstd. Members, in this order:
//!
//! 1. `schema.json` — the tenant's schema version as this host knew it (its
//!    `name` and `version` say which one).
//! 2. `collections/<name>.ndjson` — one per collection of the schema, in name
//!    order, one record per line: a JSON object with `"id"` and its fields,
//!    ids strictly ascending (so a reader finds a repeated id in O(1) memory).
//! 3. `manifest.json` — [`Manifest`]: format and version, tenant, schema, the
//!    consistency point, per-collection record counts, and the size and SHA-256
//!    of every other member. Last, so that the writer hashes as it writes, in
//!    one pass; a streaming reader hashes every member as it reads and checks
//!    them all against the manifest, and nothing it read counts until then.
//!
//! Nothing else: a reader refuses other members, links, devices, directories,
//! duplicates, anything after the manifest, and any member whose size or hash
//! differs from the manifest.
//!
//! Version 1 (written until 2026-11-23, still read) is the same with
//! `manifest.json` first and ids in any order.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The `format` field of every Coffer archive manifest.
pub const ARCHIVE_FORMAT: &str = "coffer-archive";
/// The archive layout version this code writes. Never change a version's meaning.
pub const ARCHIVE_VERSION: u32 = 2;
/// The first version, manifest first; still read.
pub const ARCHIVE_VERSION_1: u32 = 1;
pub const MANIFEST_PATH: &str = "manifest.json";
pub const SCHEMA_PATH: &str = "schema.json";
/// zstd level for archives: level 3 is zstd's default speed/ratio balance.
pub const ZSTD_LEVEL: i32 = 3;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    pub format_version: u32,
    pub tenant: ManifestTenant,
    pub schema: ManifestSchema,
    pub consistency_point: ConsistencyPoint,
    pub created_at: String,
    /// Records per collection.
    pub counts: BTreeMap<String, u64>,
    /// Every member after the manifest, in archive order.
    pub members: Vec<Member>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ManifestTenant {
    pub id: String,
    pub name: String,
    pub region: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ManifestSchema {
    pub name: String,
    pub version: u32,
}

/// The moment the archive reflects: every write acknowledged before it, none after.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConsistencyPoint {
    /// When the snapshot was taken (RFC 3339).
    pub at: String,
    /// Writes the tenant's database had taken since it was opened, at that moment.
    pub sequence: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Member {
    pub path: String,
    pub size: u64,
    /// SHA-256 of the member's bytes, lowercase hex.
    pub sha256: String,
}

/// The collection a member path names, if it is `collections/<identifier>.ndjson`.
pub fn collection_of(path: &str) -> Option<&str> {
    let name = path.strip_prefix("collections/")?.strip_suffix(".ndjson")?;
    crate::schema::is_identifier(name).then_some(name)
}

pub fn collection_path(collection: &str) -> String {
    format!("collections/{collection}.ndjson")
}

/// Bounds on what a reader accepts from an untrusted archive.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Decompressed bytes in all (the zstd bomb bound).
    pub max_total_bytes: u64,
    /// One NDJSON line, that is one record.
    pub max_record_bytes: usize,
    /// `manifest.json` and `schema.json`.
    pub max_metadata_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_total_bytes: 64 << 30,
            max_record_bytes: 2 << 20,
            max_metadata_bytes: 4 << 20,
        }
    }
}
