//! Reading an untrusted archive: every member hashed and checked against the
//! manifest, every record against the schema, memory and bytes bounded, nothing
//! written anywhere but the sink the caller gives (a staged tenant, or nothing
//! at all for `verify`).
//!
//! Both layouts of [`format`](super::format) are read: format 2 (`schema.json`
//! first, `manifest.json` last: members are checked when the manifest arrives)
//! and format 1 (`manifest.json` first: each member is checked as it ends).
//!
//! Refused, each with its own message: data that is not zstd or not tar, a
//! truncated stream, a first member that is neither, a member the manifest does
//! not name (path traversal, absolute paths and extra files included), anything
//! after a trailing manifest, a link, device, directory or any non-regular
//! entry, a duplicate, a member whose size or SHA-256 differs from the manifest,
//! a missing member or manifest, counts that lie, an unknown schema, a record
//! that violates it or repeats an id (format 2: ids out of order), a line longer
//! than the record limit, and more decompressed bytes than the total limit (the
//! zstd bomb).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, BufRead, BufReader, Read};

use ring::digest::{Context, SHA256};
use serde_json::{Map, Value};

use super::format::{
    collection_of, Limits, Manifest, ARCHIVE_FORMAT, ARCHIVE_VERSION, ARCHIVE_VERSION_1,
    MANIFEST_PATH, SCHEMA_PATH,
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

/// Receives the archive's contents as they are read. `begin` comes once the
/// schema is known and matches this host's; `record` for each valid record. A
/// record handed to the sink may still belong to a member whose hash later
/// fails: the caller must treat everything as provisional until
/// `read_archive` returns `Ok`.
pub trait ArchiveSink {
    fn begin(&mut self, schema: &Schema) -> Result<(), BackupError>;
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
    fn begin(&mut self, _: &Schema) -> Result<(), BackupError> {
        Ok(())
    }
    fn record(&mut self, _: &str, _: &RecordId, _: &Map<String, Value>) -> Result<(), BackupError> {
        Ok(())
    }
}

fn bad(message: String) -> BackupError {
    BackupError::BadArchive(message)
}

pub fn read_archive<R: Read>(
    input: R,
    schemas: &Registry,
    limits: Limits,
    sink: &mut dyn ArchiveSink,
) -> Result<ArchiveSummary, BackupError> {
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
    let entries = archive.entries().map_err(|e| bad(describe_io(&e)))?;
    let mut reading = Reading {
        schemas,
        limits,
        sink,
        layout: None,
        declared: BTreeMap::new(),
        manifest: None,
        schema: None,
        seen: BTreeMap::new(),
        counts: BTreeMap::new(),
        records: 0,
    };
    for entry in entries {
        let mut entry = entry.map_err(|e| bad(describe_io(&e)))?;
        let path = entry_path(&entry)?;
        check_regular(&entry, &path)?;
        let size = entry.header().size().map_err(|e| bad(describe_io(&e)))?;
        reading.member(&path, size, &mut entry)?;
    }
    let (manifest, records) = reading.finish()?;
    let decompressed_bytes = archive.into_inner().total;
    Ok(ArchiveSummary {
        manifest,
        records,
        decompressed_bytes,
    })
}

#[derive(Clone, Copy, PartialEq)]
enum Layout {
    /// Format 1: the manifest first, members checked against it as they end.
    ManifestFirst,
    /// Format 2: the schema first, the manifest last.
    ManifestLast,
}

struct Reading<'a> {
    schemas: &'a Registry,
    limits: Limits,
    sink: &'a mut dyn ArchiveSink,
    layout: Option<Layout>,
    /// Format 1: each member's size and SHA-256 as the manifest declared them.
    declared: BTreeMap<String, (u64, String)>,
    manifest: Option<Manifest>,
    schema: Option<Schema>,
    /// Each member read: its size and SHA-256.
    seen: BTreeMap<String, (u64, String)>,
    counts: BTreeMap<String, u64>,
    records: u64,
}

impl Reading<'_> {
    /// One member, `header_size` bytes long by its tar header.
    fn member(
        &mut self,
        path: &str,
        header_size: u64,
        entry: &mut impl Read,
    ) -> Result<(), BackupError> {
        match self.layout {
            None if path == MANIFEST_PATH => {
                self.layout = Some(Layout::ManifestFirst);
                let bytes = read_small(entry, self.limits.max_metadata_bytes, path)?;
                return self.manifest_first(&bytes);
            }
            None if path == SCHEMA_PATH => self.layout = Some(Layout::ManifestLast),
            None if collection_of(path).is_some() => {
                return Err(bad("schema.json must come before the collections".into()))
            }
            None => {
                return Err(bad(format!(
                    "the first member must be schema.json (or manifest.json in format 1), found {path:?}"
                )))
            }
            Some(Layout::ManifestLast) if self.manifest.is_some() => {
                return Err(bad(format!(
                    "member {path:?} after manifest.json (the manifest is the last member)"
                )))
            }
            Some(Layout::ManifestLast) if path == MANIFEST_PATH => {
                let bytes = read_small(entry, self.limits.max_metadata_bytes, path)?;
                let manifest = parse_manifest(&bytes, ARCHIVE_VERSION)?;
                self.manifest = Some(manifest);
                return Ok(());
            }
            Some(_) => {}
        }
        if self.seen.contains_key(path) || path == MANIFEST_PATH {
            return Err(bad(format!("member {path:?} appears twice")));
        }
        if header_size > self.limits.max_total_bytes {
            return Err(bad(format!(
                "member {path:?} is {header_size} bytes, beyond the limit of {} bytes",
                self.limits.max_total_bytes
            )));
        }
        let declared = match self.layout {
            Some(Layout::ManifestFirst) => {
                let (size, sha256) = self.declared.get(path).cloned().ok_or_else(|| {
                    bad(format!("unexpected member {path:?} (not in the manifest)"))
                })?;
                if header_size != size {
                    return Err(bad(format!(
                        "member {path:?} is {header_size} bytes, the manifest says {size}"
                    )));
                }
                Some((size, sha256))
            }
            // Format 2: the schema decides (below), nothing else is allowed.
            _ if path != SCHEMA_PATH && collection_of(path).is_none() => {
                return Err(bad(format!("unexpected member {path:?}")));
            }
            _ => None,
        };
        let mut hashing = HashingReader {
            inner: entry,
            hasher: Context::new(&SHA256),
            total: 0,
        };
        if path == SCHEMA_PATH {
            let bytes = read_small(&mut hashing, self.limits.max_metadata_bytes, path)?;
            self.schema_member(&bytes)?;
        } else {
            let Some(schema) = &self.schema else {
                return Err(bad("schema.json must come before the collections".into()));
            };
            let collection = collection_of(path).expect("checked above").to_string();
            let spec = schema
                .collection(&collection)
                .ok_or_else(|| {
                    bad(format!(
                        "unexpected member {path:?} (not part of this archive's schema)"
                    ))
                })?
                .clone();
            let ordered = self.layout == Some(Layout::ManifestLast);
            let count = read_records(
                &mut hashing,
                path,
                &collection,
                &spec,
                ordered,
                self.limits,
                &mut *self.sink,
            )?;
            self.counts.insert(collection, count);
            self.records += count;
        }
        // Drain what a reader above left (nothing, unless the member lied).
        io::copy(&mut hashing, &mut io::sink())
            .map_err(|e| bad(format!("{path}: {}", describe_io(&e))))?;
        let digest = encode_hex(hashing.hasher.finish().as_ref());
        if let Some((size, sha256)) = declared {
            if hashing.total != size {
                return Err(bad(format!(
                    "member {path:?} is {} bytes, the manifest says {size}",
                    hashing.total
                )));
            }
            if digest != sha256 {
                return Err(bad(format!(
                    "member {path:?} does not match its SHA-256 in the manifest"
                )));
            }
        }
        self.seen.insert(path.to_string(), (hashing.total, digest));
        Ok(())
    }

    /// Format 1: the manifest opens the archive and declares every member.
    fn manifest_first(&mut self, bytes: &[u8]) -> Result<(), BackupError> {
        let manifest = parse_manifest(bytes, ARCHIVE_VERSION_1)?;
        for member in &manifest.members {
            if member.path != SCHEMA_PATH && collection_of(&member.path).is_none() {
                return Err(bad(format!(
                    "manifest names an unexpected member {:?}",
                    member.path
                )));
            }
            if self
                .declared
                .insert(member.path.clone(), (member.size, member.sha256.clone()))
                .is_some()
            {
                return Err(bad(format!("manifest names {:?} twice", member.path)));
            }
        }
        let schema = self
            .schemas
            .get(&manifest.schema.name, manifest.schema.version)
            .map_err(|e| bad(format!("archive schema: {e}")))?;
        let declared: BTreeSet<&str> = self
            .declared
            .keys()
            .filter_map(|p| collection_of(p))
            .collect();
        let collections: BTreeSet<&str> = schema.collections.keys().map(String::as_str).collect();
        if declared != collections || !self.declared.contains_key(SCHEMA_PATH) {
            return Err(bad(format!(
                "manifest members do not match schema {} v{}: expected schema.json and one file per collection",
                schema.name, schema.version
            )));
        }
        self.manifest = Some(manifest);
        Ok(())
    }

    /// `schema.json`: one of this host's schemas, exactly.
    fn schema_member(&mut self, bytes: &[u8]) -> Result<(), BackupError> {
        let archived: Value = serde_json::from_slice(bytes)
            .map_err(|e| bad(format!("schema.json is not JSON: {e}")))?;
        let (name, version) = match &self.manifest {
            // Format 1: the manifest said which schema.
            Some(manifest) => (manifest.schema.name.clone(), manifest.schema.version),
            None => {
                let name = archived.get("name").and_then(Value::as_str);
                let version = archived
                    .get("version")
                    .and_then(Value::as_u64)
                    .and_then(|v| u32::try_from(v).ok());
                match (name, version) {
                    (Some(name), Some(version)) => (name.to_string(), version),
                    _ => return Err(bad("schema.json has no name and version".into())),
                }
            }
        };
        let schema = self
            .schemas
            .get(&name, version)
            .map_err(|e| bad(format!("archive schema: {e}")))?
            .clone();
        let ours = serde_json::to_value(&schema).expect("a schema always serialises");
        if archived != ours {
            return Err(bad(format!(
                "schema.json differs from this host's {} v{}",
                schema.name, schema.version
            )));
        }
        self.sink.begin(&schema)?;
        self.schema = Some(schema);
        Ok(())
    }

    /// After the last member: everything the manifest says, checked.
    fn finish(self) -> Result<(Manifest, u64), BackupError> {
        let Some(manifest) = self.manifest else {
            return Err(bad(match self.layout {
                None => "empty archive: no members".into(),
                _ => "manifest.json is missing (archive truncated?)".into(),
            }));
        };
        let Some(schema) = self.schema else {
            return Err(bad(
                "member \"schema.json\" is missing (archive truncated?)".into(),
            ));
        };
        if manifest.schema.name != schema.name || manifest.schema.version != schema.version {
            return Err(bad(format!(
                "manifest.json names schema {} v{}, schema.json holds {} v{}",
                manifest.schema.name, manifest.schema.version, schema.name, schema.version
            )));
        }
        let mut named = BTreeSet::new();
        for member in &manifest.members {
            if !named.insert(member.path.as_str()) {
                return Err(bad(format!("manifest names {:?} twice", member.path)));
            }
            let Some((size, sha256)) = self.seen.get(&member.path) else {
                return Err(bad(format!(
                    "member {:?} is missing (archive truncated?)",
                    member.path
                )));
            };
            if *size != member.size {
                return Err(bad(format!(
                    "member {:?} is {size} bytes, the manifest says {}",
                    member.path, member.size
                )));
            }
            if *sha256 != member.sha256 {
                return Err(bad(format!(
                    "member {:?} does not match its SHA-256 in the manifest",
                    member.path
                )));
            }
        }
        for path in self.seen.keys() {
            if !named.contains(path.as_str()) {
                return Err(bad(format!(
                    "unexpected member {path:?} (not in the manifest)"
                )));
            }
        }
        for collection in schema.collections.keys() {
            let path = super::format::collection_path(collection);
            if !self.seen.contains_key(&path) {
                return Err(bad(format!(
                    "member {path:?} is missing (archive truncated?)"
                )));
            }
        }
        for collection in manifest.counts.keys() {
            if !schema.collections.contains_key(collection) {
                return Err(bad(format!(
                    "manifest counts an unknown collection {collection:?}"
                )));
            }
        }
        for collection in schema.collections.keys() {
            let found = self.counts.get(collection).copied().unwrap_or(0);
            let claimed = manifest.counts.get(collection).copied().unwrap_or(0);
            if found != claimed {
                return Err(bad(format!(
                    "manifest counts {claimed} records in {collection}, the archive holds {found}"
                )));
            }
        }
        Ok((manifest, self.records))
    }
}

fn parse_manifest(bytes: &[u8], version: u32) -> Result<Manifest, BackupError> {
    let manifest: Manifest = serde_json::from_slice(bytes)
        .map_err(|e| bad(format!("manifest.json is not a valid manifest: {e}")))?;
    if manifest.format != ARCHIVE_FORMAT
        || !(manifest.format_version == ARCHIVE_VERSION_1
            || manifest.format_version == ARCHIVE_VERSION)
    {
        return Err(bad(format!(
            "unsupported archive format {:?} version {} (this host reads {ARCHIVE_FORMAT} {ARCHIVE_VERSION_1} and {ARCHIVE_VERSION})",
            manifest.format, manifest.format_version
        )));
    }
    if manifest.format_version != version {
        return Err(bad(format!(
            "manifest.json says format {} but sits where format {version} puts it",
            manifest.format_version
        )));
    }
    Ok(manifest)
}

/// Reads one collection's NDJSON, validating and handing each record to the
/// sink; returns how many lines it held. `ordered`: ids must ascend (format 2),
/// else a set of the ids seen catches repeats (format 1).
fn read_records(
    input: &mut impl Read,
    path: &str,
    collection: &str,
    spec: &crate::schema::Collection,
    ordered: bool,
    limits: Limits,
    sink: &mut dyn ArchiveSink,
) -> Result<u64, BackupError> {
    let mut ids = IdSet::default();
    let mut previous: Option<RecordId> = None;
    let mut lines = BufReader::with_capacity(64 * 1024, input);
    let mut line = Vec::new();
    let mut number = 0u64;
    loop {
        line.clear();
        let n = (&mut lines)
            .take(limits.max_record_bytes as u64 + 1)
            .read_until(b'\n', &mut line)
            .map_err(|e| bad(format!("{path}: {}", describe_io(&e))))?;
        if n == 0 {
            return Ok(number);
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
            .ok_or_else(|| bad(format!("{path} line {number}: missing or invalid \"id\"")))?;
        if ordered {
            match &previous {
                Some(p) if *p == id => {
                    return Err(bad(format!("{path} line {number}: record id {id} repeats")))
                }
                Some(p) if p.as_str() > id.as_str() => {
                    return Err(bad(format!(
                        "{path} line {number}: record id {id} is out of order (ids ascend)"
                    )))
                }
                _ => {}
            }
        } else if !ids.insert(&id) {
            return Err(bad(format!("{path} line {number}: record id {id} repeats")));
        }
        spec.validate(&Value::Object(fields.clone()))
            .map_err(|e| bad(format!("{path} line {number}: {e}")))?;
        sink.record(collection, &id, &fields)?;
        if ordered {
            previous = Some(id);
        }
    }
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
