//! Writing an archive from a tenant snapshot, streamed: memory stays bounded by
//! one record and zstd's window, whatever the tenant's size.
//!
//! tar needs each member's size in its header and the manifest (first) needs
//! every member's hash, so the export reads the snapshot twice: pass one
//! computes sizes, hashes and counts without writing anything; pass two writes
//! the bytes and checks they hash the same. The snapshot makes both passes see
//! the same records.
//!
//! Each pass is a two-stage pipeline: a producer thread reads and decrypts the
//! snapshot into 64 KiB blocks of NDJSON, and the caller's thread hashes (pass
//! one) or tars and compresses (pass two) them, so the two cores work at once.
//! At most eight blocks are in flight.

use std::io::{self, Read, Write};

use ring::digest::{Context, SHA256};

use super::format::{
    collection_path, ConsistencyPoint, Manifest, ManifestSchema, ManifestTenant, Member,
    ARCHIVE_FORMAT, ARCHIVE_VERSION, MANIFEST_PATH, SCHEMA_PATH, ZSTD_LEVEL,
};
use super::BackupError;
use crate::crypto::encode_hex;
use crate::ids::rfc3339;
use crate::schema::Schema;
use crate::storage::{Snapshot, SnapshotRecords, TenantRecord};

/// What an export wrote.
#[derive(Debug, Clone)]
pub struct ExportSummary {
    pub manifest: Manifest,
    pub records: u64,
    /// Uncompressed bytes of all collection members.
    pub ndjson_bytes: u64,
}

/// Writes the archive of `snapshot` to `out` (compressed). `out` is flushed but
/// not closed.
pub fn write_archive<W: Write>(
    out: W,
    tenant: &TenantRecord,
    schema: &Schema,
    snapshot: &Snapshot,
) -> Result<ExportSummary, BackupError> {
    std::thread::scope(|scope| write_archive_in(scope, out, tenant, schema, snapshot))
}

fn write_archive_in<'s, W: Write>(
    scope: &'s std::thread::Scope<'s, '_>,
    out: W,
    tenant: &TenantRecord,
    schema: &Schema,
    snapshot: &'s Snapshot,
) -> Result<ExportSummary, BackupError> {
    let schema_bytes = serde_json::to_vec_pretty(schema).expect("a schema always serialises");
    let mut members = vec![Member {
        path: SCHEMA_PATH.into(),
        size: schema_bytes.len() as u64,
        sha256: sha256_hex(&schema_bytes),
    }];
    let mut counts = std::collections::BTreeMap::new();
    let mut records = 0;
    let mut ndjson_bytes = 0;
    // Pass one: sizes, hashes, counts.
    for name in schema.collections.keys() {
        let mut lines = NdjsonReader::start(scope, snapshot, name);
        let mut hasher = Context::new(&SHA256);
        let mut size = 0u64;
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let n = lines.read(&mut buffer).map_err(BackupError::from_io)?;
            if n == 0 {
                break;
            }
            hasher.update(&buffer[..n]);
            size += n as u64;
        }
        counts.insert(name.clone(), lines.count);
        records += lines.count;
        ndjson_bytes += size;
        members.push(Member {
            path: collection_path(name),
            size,
            sha256: encode_hex(hasher.finish().as_ref()),
        });
    }
    let manifest = Manifest {
        format: ARCHIVE_FORMAT.into(),
        format_version: ARCHIVE_VERSION,
        tenant: ManifestTenant {
            id: tenant.id.to_string(),
            name: tenant.name.clone(),
            region: tenant.region.to_string(),
        },
        schema: ManifestSchema {
            name: schema.name.clone(),
            version: schema.version,
        },
        consistency_point: ConsistencyPoint {
            at: rfc3339(snapshot.taken_at),
            sequence: snapshot.sequence,
        },
        created_at: rfc3339(crate::ids::unix_now()),
        counts,
        members,
    };
    let manifest_bytes =
        serde_json::to_vec_pretty(&manifest).expect("a manifest always serialises");

    // Pass two: the bytes.
    let encoder =
        zstd::stream::write::Encoder::new(out, ZSTD_LEVEL).map_err(BackupError::from_io)?;
    let mut tar = tar::Builder::new(encoder);
    let mtime = snapshot.taken_at;
    append(
        &mut tar,
        MANIFEST_PATH,
        manifest_bytes.len() as u64,
        mtime,
        &manifest_bytes[..],
    )?;
    append(
        &mut tar,
        SCHEMA_PATH,
        schema_bytes.len() as u64,
        mtime,
        &schema_bytes[..],
    )?;
    for (name, member) in schema.collections.keys().zip(&manifest.members[1..]) {
        // The snapshot makes pass two see what pass one hashed; length and count
        // are checked here (cheaply), the hash by every reader of the archive.
        let mut reader = NdjsonReader::start(scope, snapshot, name);
        append(&mut tar, &member.path, member.size, mtime, &mut reader)?;
        let mut rest = [0u8; 1];
        let longer = reader.read(&mut rest).map_err(BackupError::from_io)? > 0;
        if longer || reader.bytes != member.size || manifest.counts.get(name) != Some(&reader.count)
        {
            return Err(BackupError::Inconsistent(format!(
                "{} changed between the two passes of the export",
                member.path
            )));
        }
    }
    let encoder = tar.into_inner().map_err(BackupError::from_io)?;
    let mut out = encoder.finish().map_err(BackupError::from_io)?;
    out.flush().map_err(BackupError::from_io)?;
    Ok(ExportSummary {
        manifest,
        records,
        ndjson_bytes,
    })
}

fn append<W: Write>(
    tar: &mut tar::Builder<W>,
    path: &str,
    size: u64,
    mtime: u64,
    data: impl Read,
) -> Result<(), BackupError> {
    let mut header = tar::Header::new_ustar();
    header.set_path(path).map_err(BackupError::from_io)?;
    header.set_size(size);
    header.set_mode(0o644);
    header.set_mtime(mtime);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    // `append` copies exactly until `data` ends; a length that differs from the
    // header would corrupt the archive, so the reader is capped and checked.
    let mut capped = data.take(size);
    tar.append(&header, &mut capped)
        .map_err(BackupError::from_io)?;
    Ok(())
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    encode_hex(ring::digest::digest(&SHA256, bytes).as_ref())
}

/// The NDJSON bytes of one collection of a snapshot, as a `Read`, produced by a
/// scoped thread (see the module doc).
struct NdjsonReader {
    blocks: std::sync::mpsc::Receiver<Block>,
    current: Vec<u8>,
    position: usize,
    count: u64,
    bytes: u64,
}

enum Block {
    /// NDJSON bytes and how many records they hold.
    Lines(Vec<u8>, u64),
    Failed(crate::storage::StorageError),
}

const BLOCK_BYTES: usize = 64 * 1024;

impl NdjsonReader {
    fn start<'s>(
        scope: &'s std::thread::Scope<'s, '_>,
        snapshot: &'s Snapshot,
        collection: &str,
    ) -> Self {
        let (tx, rx) = std::sync::mpsc::sync_channel(8);
        let collection = collection.to_string();
        let span = tracing::Span::current();
        scope.spawn(move || {
            let _enter = span.enter();
            let mut records: SnapshotRecords<'_> = snapshot.records(&collection);
            let mut block = Vec::with_capacity(BLOCK_BYTES + 4096);
            let mut lines = 0u64;
            while let Some(line) = records.next_line() {
                match line {
                    Ok(line) => {
                        block.extend_from_slice(&line);
                        lines += 1;
                        if block.len() >= BLOCK_BYTES {
                            let full = std::mem::replace(
                                &mut block,
                                Vec::with_capacity(BLOCK_BYTES + 4096),
                            );
                            // A closed channel means the consumer stopped: stop too.
                            if tx.send(Block::Lines(full, lines)).is_err() {
                                return;
                            }
                            lines = 0;
                        }
                    }
                    Err(error) => {
                        let _ = tx.send(Block::Failed(error));
                        return;
                    }
                }
            }
            if !block.is_empty() {
                let _ = tx.send(Block::Lines(block, lines));
            }
        });
        NdjsonReader {
            blocks: rx,
            current: Vec::new(),
            position: 0,
            count: 0,
            bytes: 0,
        }
    }
}

impl Read for NdjsonReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.position == self.current.len() {
            match self.blocks.recv() {
                Err(_) => return Ok(0),
                Ok(Block::Failed(error)) => return Err(io::Error::other(error)),
                Ok(Block::Lines(block, lines)) => {
                    self.current = block;
                    self.position = 0;
                    self.count += lines;
                }
            }
        }
        let n = (self.current.len() - self.position).min(buf.len());
        buf[..n].copy_from_slice(&self.current[self.position..self.position + n]);
        self.position += n;
        self.bytes += n as u64;
        Ok(n)
    }
}
