//! Reading an untrusted archive: every member checked against the manifest,
//! every record against the schema, memory and bytes bounded, nothing written
//! anywhere but the sink the caller gives (a staged tenant, or nothing at all
//! for `verify`).
//!
//! Refused, each with its own message: data that is not zstd or not tar, a
//! truncated stream, a first member that is not a valid manifest, a member the
//! manifest does not name (path traversal, absolute paths and extra files
//! included), a link, device, directory or any non-regular entry, a duplicate,
//! a member whose size or SHA-256 differs from the manifest, a missing member,
//! counts that lie, an unknown schema, a record that violates it or repeats an
//! id, a line longer than the record limit, and more decompressed bytes than
//! the total limit (the zstd bomb).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, BufRead, BufReader, Read};

use ring::digest::{Context, SHA256};
use serde_json::{Map, Value};

use super::format::{
    collection_of, Limits, Manifest, ARCHIVE_FORMAT, ARCHIVE_VERSION, MANIFEST_PATH, SCHEMA_PATH,
};
use super::BackupError;
use crate::crypto::encode_hex;
use crate::ids::RecordId;
use crate::schema::{Registry, Schema};

/// What a verified archive holds.
#[derive(Debug, Clone)]
pub struct ArchiveSummary {
    pub manifest: Manifest,
    pub records: u64,
    pub decompressed_bytes: u64,
}

/// Receives the archive's contents as they are verified. `begin` comes after the
/// manifest and schema passed; `record` for each valid record. A record handed
/// to the sink may still belong to a member whose hash later fails: the caller
/// must treat everything as provisional until `read_archive` returns `Ok`.
pub trait ArchiveSink {
    fn begin(&mut self, manifest: &Manifest, schema: &Schema) -> Result<(), BackupError>;
    fn record(
        &mut self,
        collection: &str,
        id: &RecordId,
        fields: &Map<String, Value>,
    ) -> Result<(), BackupError>;
}

/// A sink that keeps nothing (verification only).
pub struct Discard;

impl ArchiveSink for Discard {
    fn begin(&mut self, _: &Manifest, _: &Schema) -> Result<(), BackupError> {
        Ok(())
    }
    fn record(&mut self, _: &str, _: &RecordId, _: &Map<String, Value>) -> Result<(), BackupError> {
        Ok(())
    }
}

pub fn read_archive<R: Read>(
    input: R,
    schemas: &Registry,
    limits: Limits,
    sink: &mut dyn ArchiveSink,
) -> Result<ArchiveSummary, BackupError> {
    let bad = |message: String| BackupError::BadArchive(message);
    let mut decoder = zstd::stream::read::Decoder::new(input)
        .map_err(|e| bad(format!("not a zstd stream: {e}")))?;
    // Bound the decoder's window (memory) to 8 MiB; Coffer writes level 3 (≤ 2 MiB).
    decoder
        .window_log_max(23)
        .map_err(|e| bad(format!("zstd: {e}")))?;
    let counted = CountingReader {
        inner: decoder,
        total: 0,
        limit: limits.max_total_bytes,
    };
    let mut archive = tar::Archive::new(counted);
    let mut entries = archive.entries().map_err(|e| bad(describe_io(&e)))?;

    // 1. The manifest, first.
    let mut entry = entries
        .next()
        .ok_or_else(|| bad("empty archive: no manifest.json".into()))?
        .map_err(|e| bad(describe_io(&e)))?;
    let path = entry_path(&entry)?;
    if path != MANIFEST_PATH {
        return Err(bad(format!(
            "the first member must be manifest.json, found {path:?}"
        )));
    }
    check_regular(&entry, &path)?;
    let manifest_bytes = read_small(&mut entry, limits.max_metadata_bytes, &path)?;
    drop(entry);
    let manifest: Manifest = serde_json::from_slice(&manifest_bytes)
        .map_err(|e| bad(format!("manifest.json is not a valid manifest: {e}")))?;
    if manifest.format != ARCHIVE_FORMAT || manifest.format_version != ARCHIVE_VERSION {
        return Err(bad(format!(
            "unsupported archive format {:?} version {} (this host reads {ARCHIVE_FORMAT} {ARCHIVE_VERSION})",
            manifest.format, manifest.format_version
        )));
    }
    let mut expected: BTreeMap<String, (u64, String)> = BTreeMap::new();
    for member in &manifest.members {
        if member.path != SCHEMA_PATH && collection_of(&member.path).is_none() {
            return Err(bad(format!(
                "manifest names an unexpected member {:?}",
                member.path
            )));
        }
        if expected
            .insert(member.path.clone(), (member.size, member.sha256.clone()))
            .is_some()
        {
            return Err(bad(format!("manifest names {:?} twice", member.path)));
        }
    }
    let schema = schemas
        .get(&manifest.schema.name, manifest.schema.version)
        .map_err(|e| bad(format!("archive schema: {e}")))?
        .clone();
    let archive_collections: BTreeSet<&str> =
        expected.keys().filter_map(|p| collection_of(p)).collect();
    let schema_collections: BTreeSet<&str> =
        schema.collections.keys().map(String::as_str).collect();
    if archive_collections != schema_collections || !expected.contains_key(SCHEMA_PATH) {
        return Err(bad(format!(
            "manifest members do not match schema {} v{}: expected schema.json and one file per collection",
            schema.name, schema.version
        )));
    }
    for (collection, count) in &manifest.counts {
        if !schema_collections.contains(collection.as_str()) {
            return Err(bad(format!(
                "manifest counts an unknown collection {collection:?}"
            )));
        }
        let _ = count;
    }

    // 2. Every other member, each checked against the manifest.
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    let mut began = false;
    let mut records = 0u64;
    for entry in entries {
        let mut entry = entry.map_err(|e| bad(describe_io(&e)))?;
        let path = entry_path(&entry)?;
        check_regular(&entry, &path)?;
        let Some((size, sha256)) = expected.get(&path).cloned() else {
            return Err(bad(format!(
                "unexpected member {path:?} (not in the manifest)"
            )));
        };
        if !seen.insert(path.clone()) {
            return Err(bad(format!("member {path:?} appears twice")));
        }
        let header_size = entry.header().size().map_err(|e| bad(describe_io(&e)))?;
        if header_size != size {
            return Err(bad(format!(
                "member {path:?} is {header_size} bytes, the manifest says {size}"
            )));
        }
        let mut hashing = HashingReader {
            inner: &mut entry,
            hasher: Context::new(&SHA256),
            total: 0,
        };
        if path == SCHEMA_PATH {
            let bytes = read_small(&mut hashing, limits.max_metadata_bytes, &path)?;
            let archived: Value = serde_json::from_slice(&bytes)
                .map_err(|e| bad(format!("schema.json is not JSON: {e}")))?;
            let ours = serde_json::to_value(&schema).expect("a schema always serialises");
            if archived != ours {
                return Err(bad(format!(
                    "schema.json differs from this host's {} v{}",
                    schema.name, schema.version
                )));
            }
            if !began {
                sink.begin(&manifest, &schema)?;
                began = true;
            }
        } else {
            if !began {
                return Err(bad("schema.json must come before the collections".into()));
            }
            let collection = collection_of(&path)
                .expect("checked against the manifest")
                .to_string();
            let spec = schema
                .collection(&collection)
                .expect("checked against the schema")
                .clone();
            let mut ids = IdSet::default();
            let mut lines = BufReader::with_capacity(64 * 1024, &mut hashing);
            let mut line = Vec::new();
            let mut number = 0u64;
            loop {
                line.clear();
                let n = (&mut lines)
                    .take(limits.max_record_bytes as u64 + 1)
                    .read_until(b'\n', &mut line)
                    .map_err(|e| bad(format!("{path}: {}", describe_io(&e))))?;
                if n == 0 {
                    break;
                }
                number += 1;
                if line.last() != Some(&b'\n') {
                    return Err(bad(if n > limits.max_record_bytes {
                        format!(
                            "{path} line {number}: a record longer than {} bytes",
                            limits.max_record_bytes
                        )
                    } else {
                        format!("{path} line {number}: the last line has no newline")
                    }));
                }
                let value: Value = serde_json::from_slice(&line)
                    .map_err(|e| bad(format!("{path} line {number}: not JSON: {e}")))?;
                let Value::Object(mut fields) = value else {
                    return Err(bad(format!(
                        "{path} line {number}: a record must be a JSON object"
                    )));
                };
                let id = fields
                    .remove("id")
                    .and_then(|v| v.as_str().and_then(RecordId::parse))
                    .ok_or_else(|| {
                        bad(format!("{path} line {number}: missing or invalid \"id\""))
                    })?;
                if !ids.insert(&id) {
                    return Err(bad(format!("{path} line {number}: record id {id} repeats")));
                }
                spec.validate(&Value::Object(fields.clone()))
                    .map_err(|e| bad(format!("{path} line {number}: {e}")))?;
                sink.record(&collection, &id, &fields)?;
            }
            counts.insert(collection, number);
            records += number;
        }
        // Drain what a reader above left (nothing, unless the member lied).
        io::copy(&mut hashing, &mut io::sink())
            .map_err(|e| bad(format!("{path}: {}", describe_io(&e))))?;
        let digest = encode_hex(hashing.hasher.finish().as_ref());
        if hashing.total != size || digest != sha256 {
            return Err(bad(format!(
                "member {path:?} does not match its SHA-256 in the manifest"
            )));
        }
    }
    for path in expected.keys() {
        if !seen.contains(path) {
            return Err(bad(format!(
                "member {path:?} is missing (archive truncated?)"
            )));
        }
    }
    for collection in schema.collections.keys() {
        let found = counts.get(collection).copied().unwrap_or(0);
        let claimed = manifest.counts.get(collection).copied().unwrap_or(0);
        if found != claimed {
            return Err(bad(format!(
                "manifest counts {claimed} records in {collection}, the archive holds {found}"
            )));
        }
    }
    let decompressed_bytes = archive.into_inner().total;
    Ok(ArchiveSummary {
        manifest,
        records,
        decompressed_bytes,
    })
}

fn entry_path<R: Read>(entry: &tar::Entry<'_, R>) -> Result<String, BackupError> {
    let raw = entry.path_bytes();
    let path = std::str::from_utf8(&raw)
        .map_err(|_| BackupError::BadArchive("a member path is not UTF-8".into()))?
        .to_string();
    if path.starts_with('/') || path.split('/').any(|part| part == ".." || part == ".") {
        return Err(BackupError::BadArchive(format!(
            "member path {path:?} escapes the archive (absolute or with ..)"
        )));
    }
    Ok(path)
}

fn check_regular<R: Read>(entry: &tar::Entry<'_, R>, path: &str) -> Result<(), BackupError> {
    let kind = entry.header().entry_type();
    if kind.is_file() {
        return Ok(());
    }
    let what = if kind.is_symlink() {
        "a symbolic link"
    } else if kind.is_hard_link() {
        "a hard link"
    } else if kind.is_character_special() || kind.is_block_special() {
        "a device file"
    } else if kind.is_dir() {
        "a directory"
    } else if kind.is_fifo() {
        "a FIFO"
    } else {
        "not a regular file"
    };
    Err(BackupError::BadArchive(format!(
        "member {path:?} is {what}; only regular files are allowed"
    )))
}

fn read_small(reader: &mut impl Read, limit: u64, path: &str) -> Result<Vec<u8>, BackupError> {
    let mut bytes = Vec::new();
    reader
        .take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| BackupError::BadArchive(format!("{path}: {}", describe_io(&e))))?;
    if bytes.len() as u64 > limit {
        return Err(BackupError::BadArchive(format!(
            "{path} is larger than {limit} bytes"
        )));
    }
    Ok(bytes)
}

fn describe_io(error: &io::Error) -> String {
    if let Some(inner) = error.get_ref().and_then(|e| e.downcast_ref::<TooLarge>()) {
        return inner.to_string();
    }
    match error.kind() {
        io::ErrorKind::UnexpectedEof => "archive truncated".into(),
        _ => format!("unreadable archive: damaged zstd or tar data ({error})"),
    }
}

#[derive(Debug, thiserror::Error)]
#[error("archive expands beyond the limit of {0} bytes")]
struct TooLarge(u64);

/// Counts decompressed bytes and fails past the limit.
struct CountingReader<R> {
    inner: R,
    total: u64,
    limit: u64,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.total += n as u64;
        if self.total > self.limit {
            return Err(io::Error::other(TooLarge(self.limit)));
        }
        Ok(n)
    }
}

struct HashingReader<R> {
    inner: R,
    hasher: Context,
    total: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.total += n as u64;
        Ok(n)
    }
}

/// Record ids seen in one collection. Ids are 16 bytes; a million records cost
/// 16 MB here, bounded by the archive's own size limit.
#[derive(Default)]
struct IdSet(std::collections::HashSet<[u8; 16]>);

impl IdSet {
    fn insert(&mut self, id: &RecordId) -> bool {
        let bytes = crate::crypto::decode_hex(id.as_str()).unwrap_or_default();
        let mut key = [0u8; 16];
        key.copy_from_slice(&bytes[..16]);
        self.0.insert(key)
    }
}
