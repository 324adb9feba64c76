//! One tenant's database: a sled directory holding only sealed values and blind
//! index tags.
//!
//! Layout of the single tree `data`:
//!
//! | key | value |
//! |---|---|
//! | `r` collection `0x00` record-id | sealed record JSON (AAD: tenant, collection, id) |
//! | `i` collection `0x00` field `0x00` tag(32) record-id | empty |
//!
//! Collection and field names come from the schema, not from the tenant. Writes to
//! one tenant are serialised by a mutex (so unique checks and index maintenance see
//! a stable state) and made durable by [`GroupCommit`].
//!
//! Index entries are hints, always checked against the record they name: a write
//! inserts its new entries, then the record, then removes stale entries, each a
//! single-key sled write (sled's `apply_batch` serialises against flushes and cost
//! 3x in throughput here). A crash between those steps can only leave an entry
//! whose record does not hold the value, and readers skip such entries.
//!
//! Its rooms: `layout` (the keys above), `writes` (the write path: unique
//! checks, index maintenance, group commit) and `snapshot` (point-in-time
//! views and their NDJSON lines, for exports and backups); opening, reads and
//! the raw access of tooling are here.

mod changelog;
mod layout;
mod rekey;
mod snapshot;
#[cfg(test)]
mod tests;
mod writes;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use serde_json::{Map, Value};

use super::commit::GroupCommit;
use super::StorageError;
use crate::crypto::{record_aad, CryptoError, TenantKeys};
use crate::ids::{RecordId, TenantId};
use crate::schema::{index_form, legacy_index_forms, same_indexed_value, Collection, Field};

pub use changelog::{Change, ChangeFeed};
pub use layout::TENANT_LAYOUT_V1;
use layout::*;
pub use snapshot::{Snapshot, SnapshotRecords};
use snapshot::{PRE_IMAGE_ABSENT, PRE_IMAGE_VALUE};
use writes::Old;

/// sled's log segment (and write buffer) size for tenant databases created
/// from now on. sled persists a database's size in its `conf` and refuses to
/// open it with another, so each database keeps the size it was created with
/// ([`segment_size_of`]): those created before 2026-12-04 have 64 KiB.
///
/// Why 512 KiB (sled's default), not 64 KiB: sled's work at a database's open
/// grows with its number of segments, the first stabilisation as its square
/// (see [`settle`]). A 1 GiB tenant's 3.7 GB log is 56,472 segments of 64 KiB
/// and took 6.0 s to settle; it is 7,000 of 512 KiB. The cost is memory: each
/// open database holds its current segment's buffer, of which only the pages
/// written since the segment began are resident, and glibc returns a finished
/// segment's buffer to the system (`serve` fixes the trim threshold, which
/// keeps such blocks `mmap`ed). Measured with both sizes in `benches/RESULTS.md`.
const SEGMENT_BYTES: usize = 512 * 1024;

/// The segment size of databases created before [`SEGMENT_BYTES`] grew.
#[cfg(test)]
const LEGACY_SEGMENT_BYTES: usize = 64 * 1024;

/// Databases of more segments than this are settled (and their segment
/// headers read ahead) when opened.
const SETTLE_ABOVE_SEGMENTS: u64 = 1024;

/// The segment size `dir`'s database was created with, from sled's `conf`
/// (lines such as `segment_size: 65536`); [`SEGMENT_BYTES`] for a new one.
/// A `conf` that cannot be read is left for sled to report.
fn segment_size_of(dir: &Path) -> usize {
    let Ok(conf) = std::fs::read(dir.join("conf")) else {
        return SEGMENT_BYTES;
    };
    String::from_utf8_lossy(&conf)
        .lines()
        .find_map(|line| line.strip_prefix("segment_size: ")?.trim().parse().ok())
        .unwrap_or(SEGMENT_BYTES)
}

/// Settles a large database's log before anyone writes to it. After sled 0.34
/// opens a database, the first write that completes a log segment deactivates
/// every segment it recovered, each deactivation counting every segment's
/// state, all under the log's segment lock (`SegmentAccountant::stabilize`,
/// which starts from `max_stabilized_lsn: -1`): 6-7 s for a 1 GiB tenant of
/// 56,472 segments of 64 KiB, during which every write to that tenant waited
/// (seen under a cold export, gdb on the host). Writing a few segments' worth
/// of scratch here, then removing it, pays that inside the open, where
/// requests for this tenant wait anyway and nobody else does (see `Pool`).
fn settle(db: &sled::Db, segment_bytes: usize) -> Result<(), StorageError> {
    if db.size_on_disk()? < SETTLE_ABOVE_SEGMENTS * segment_bytes as u64 {
        return Ok(());
    }
    let started = std::time::Instant::now();
    let key = |i: u32| [b"settle/".as_slice(), &i.to_be_bytes()].concat();
    let scratch = 4 * segment_bytes / 4096;
    for i in 0..scratch as u32 {
        db.insert(key(i), vec![0u8; 4096])?;
        if i % 8 == 7 {
            db.flush()?;
        }
    }
    for i in 0..scratch as u32 {
        db.remove(key(i))?;
    }
    db.flush()?;
    tracing::info!(
        ms = started.elapsed().as_millis() as u64,
        "settled a large tenant database after opening it"
    );
    Ok(())
}

/// Readers of [`warm_segment_headers`].
const HEADER_READERS: u64 = 8;

/// Reads the header of every log segment of a large database into the page
/// cache, on threads of its own, before sled opens it. sled 0.34 reads those
/// headers at every open through its one process-wide I/O pool, one task per
/// segment (56,472 for a 1 GiB tenant of 64 KiB segments), and every other
/// database's log writes queue behind them in that pool: another tenant's
/// durable write waited up to 0.9 s (1.3 s on 2026-12-03) while a 1 GiB
/// tenant opened cold, and 20-37 ms with this. Read here first, sled's tasks
/// find the pages cached. Errors are left for sled's own reads to report.
fn warm_segment_headers(dir: &Path, segment_bytes: usize) {
    use std::os::unix::fs::FileExt;
    let Ok(file) = std::fs::File::open(dir.join("db")) else {
        return;
    };
    let Ok(len) = file.metadata().map(|m| m.len()) else {
        return;
    };
    let segment = segment_bytes as u64;
    let segments = len.div_ceil(segment);
    if segments < SETTLE_ABOVE_SEGMENTS {
        return;
    }
    let started = std::time::Instant::now();
    std::thread::scope(|scope| {
        for first in 0..HEADER_READERS {
            let file = &file;
            scope.spawn(move || {
                let mut header = [0u8; 20];
                let mut index = first;
                while index < segments {
                    let _ = file.read_at(&mut header, index * segment);
                    index += HEADER_READERS;
                }
            });
        }
    });
    tracing::info!(
        segments,
        ms = started.elapsed().as_millis() as u64,
        "read a large tenant database's segment headers before opening it"
    );
}

/// A database closed after this many changes since its open is worth a
/// [`checkpoint`]: at about 4.5 KiB of sled log per 1 KiB record written
/// (measured), some 220 MB for sled to replay, half a second here.
pub(super) const CHECKPOINT_AFTER_CHANGES: u64 = 50_000;

/// Opens `dir`'s (closed) database and closes it again, so that sled writes
/// its snapshot of the page table. sled 0.34 writes that snapshot only while
/// opening a database, after replaying every log entry since the previous
/// one, so without this the next open replays everything written since the
/// database was last opened: a 4 GiB tenant opened after loading took 39 s
/// (its requests answered 408 in the meantime), against 5 s once its
/// snapshot was current. Paid where nobody waits for the tenant: when a host
/// stops, and inside a restore or upgrade before the tenant is published.
pub(super) fn checkpoint(dir: &Path) -> Result<(), StorageError> {
    let segment_bytes = segment_size_of(dir);
    warm_segment_headers(dir, segment_bytes);
    let db = sled::Config::new()
        .path(dir)
        .cache_capacity(1 << 20)
        .segment_size(segment_bytes)
        .flush_every_ms(None)
        .open()
        .map_err(|e| StorageError::Open(dir.display().to_string(), e.to_string()))?;
    db.flush()?;
    drop(db);
    Ok(())
}

pub struct TenantDb {
    tenant: TenantId,
    /// Its data keys; replaced (under the write lock) when a rotation starts
    /// and when it ends (see `rekey`).
    keys: std::sync::RwLock<std::sync::Arc<TenantKeys>>,
    db: sled::Db,
    data: sled::Tree,
    /// Held by every writer; the state lists the snapshots writers must feed.
    write_lock: Mutex<WriterState>,
    /// Set while the tenant is being upgraded: writes are refused, reads served.
    frozen: std::sync::atomic::AtomicBool,
    next_snapshot: std::sync::atomic::AtomicU64,
    /// Records loaded by [`TenantDb::load_with_id`].
    loads: std::sync::atomic::AtomicU64,
    /// Records written, loaded, replayed or re-sealed since this database was
    /// opened: what sled replays when it is next opened (see [`checkpoint`]).
    changed: std::sync::atomic::AtomicU64,
    commit: GroupCommit,
    /// Set on live tenants of a host that keeps change logs (see `changelog`).
    log: std::sync::OnceLock<std::sync::Arc<ChangeFeed>>,
    generation: std::sync::OnceLock<String>,
}

/// Loads between flushes of a bulk load (see [`TenantDb::load_with_id`]).
const LOAD_FLUSH_EVERY: u64 = 4096;

#[derive(Default)]
struct WriterState {
    /// Acknowledged-or-in-flight writes since this database was opened.
    writes: u64,
    /// Open snapshots: (id, tree of pre-images).
    snapshots: Vec<(u64, sled::Tree)>,
    /// Records and NDJSON bytes per collection, kept up to date by every write
    /// once known; `None` until a snapshot has counted them (see
    /// [`Snapshot::line_stats`]).
    stats: Option<LineStats>,
    /// While a snapshot counts: its id, and the changes written since it was taken.
    counting: Option<(u64, Changes)>,
    /// The tenant's write sequence: the last change logged.
    seq: u64,
}

impl WriterState {
    /// Books one record's change: `before`/`after` are its NDJSON line lengths.
    fn book(&mut self, collection: &str, before: Option<u64>, after: Option<u64>) {
        let records = i64::from(after.is_some()) - i64::from(before.is_some());
        let bytes = after.unwrap_or(0) as i64 - before.unwrap_or(0) as i64;
        if records == 0 && bytes == 0 {
            return;
        }
        if let Some(stats) = &mut self.stats {
            let entry = stats.entry(collection.to_string()).or_default();
            entry.0 = entry.0.saturating_add_signed(records);
            entry.1 = entry.1.saturating_add_signed(bytes);
        }
        if let Some((_, changes)) = &mut self.counting {
            let entry = changes.entry(collection.to_string()).or_default();
            entry.0 += records;
            entry.1 += bytes;
        }
    }
}

/// Per collection: how many records, and the bytes of their NDJSON lines.
pub type LineStats = BTreeMap<String, (u64, u64)>;
/// Per collection: records and bytes added (negative: removed).
type Changes = BTreeMap<String, (i64, i64)>;

/// A record as the API sees it: its id and its fields.
pub type Record = (RecordId, Map<String, Value>);

impl TenantDb {
    /// Opens (or creates) the tenant's directory. `cache_bytes` bounds sled's page
    /// cache; no flusher thread is started, since every write flushes by itself.
    pub fn open(
        dir: &Path,
        tenant: TenantId,
        keys: TenantKeys,
        cache_bytes: u64,
    ) -> Result<TenantDb, StorageError> {
        let segment_bytes = segment_size_of(dir);
        warm_segment_headers(dir, segment_bytes);
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            .segment_size(segment_bytes)
            .flush_every_ms(None)
            .open()
            .map_err(|e| StorageError::Open(tenant.to_string(), e.to_string()))?;
        let data = db.open_tree("data")?;
        match db.get(b"layout")? {
            Some(v) if v.as_ref() == [TENANT_LAYOUT_V1] => {}
            Some(_) => {
                return Err(StorageError::Open(
                    tenant.to_string(),
                    "unknown layout version".into(),
                ))
            }
            None => {
                db.insert(b"layout", &[TENANT_LAYOUT_V1])?;
                db.flush()?;
            }
        }
        settle(&db, segment_bytes)?;
        // Snapshots are per process: pre-images left by a crash are garbage.
        for name in db.tree_names() {
            if name.starts_with(b"snapshot-") {
                db.drop_tree(&name)?;
            }
        }
        let seq = TenantDb::stored_seq(&db, &data)?;
        Ok(TenantDb {
            tenant,
            keys: std::sync::RwLock::new(std::sync::Arc::new(keys)),
            db,
            data,
            write_lock: Mutex::new(WriterState {
                seq,
                ..WriterState::default()
            }),
            frozen: std::sync::atomic::AtomicBool::new(false),
            next_snapshot: std::sync::atomic::AtomicU64::new(0),
            loads: std::sync::atomic::AtomicU64::new(0),
            changed: std::sync::atomic::AtomicU64::new(0),
            commit: GroupCommit::default(),
            log: std::sync::OnceLock::new(),
            generation: std::sync::OnceLock::new(),
        })
    }

    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }

    /// Records written, loaded, replayed or re-sealed since it was opened.
    pub(super) fn changed_since_open(&self) -> u64 {
        self.changed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Inserts a new record (already validated against `collection`).
    pub fn insert(
        &self,
        collection_name: &str,
        collection: &Collection,
        fields: &Map<String, Value>,
    ) -> Result<RecordId, StorageError> {
        let id = RecordId::generate()?;
        self.write(collection_name, collection, &id, Some(fields), false)?;
        Ok(id)
    }

    /// Inserts a record under a given id (restores keep their ids, so that
    /// references between records survive). `Duplicate("id")` if it exists.
    /// Not durable on return: for staged tenants, which are flushed when
    /// published. Still flushed every [`LOAD_FLUSH_EVERY`] loads: a tree
    /// loaded without flushes cost sled 2-3x the memory on its first full
    /// read (a 256 MiB tenant exported: 279-421 MiB peak RSS, against 151 MiB
    /// loaded with flushes).
    pub fn load_with_id(
        &self,
        collection_name: &str,
        collection: &Collection,
        id: &RecordId,
        fields: &Map<String, Value>,
    ) -> Result<(), StorageError> {
        if self.data.contains_key(record_key(collection_name, id))? {
            return Err(StorageError::Duplicate("id".into()));
        }
        self.apply(
            collection_name,
            collection,
            id,
            Some(fields),
            Old::Fresh,
            false,
        )?;
        let loaded = self
            .loads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if (loaded + 1) % LOAD_FLUSH_EVERY == 0 {
            self.db.flush()?;
        }
        Ok(())
    }

    /// Replays one logged change on a staged tenant (point-in-time restore):
    /// the record becomes what the change says, whatever it was. Not logged,
    /// not durable on return (like `load_with_id`).
    pub fn replay(&self, collection: &Collection, change: &Change) -> Result<(), StorageError> {
        let id = RecordId::parse(&change.id)
            .ok_or_else(|| StorageError::Damaged(format!("change {}: a record id", change.seq)))?;
        self.apply(
            &change.collection,
            collection,
            &id,
            change.fields.as_ref(),
            Old::MayExist,
            false,
        )
    }

    /// Replaces an existing record; `NotFound` if it does not exist.
    pub fn replace(
        &self,
        collection_name: &str,
        collection: &Collection,
        id: &RecordId,
        fields: &Map<String, Value>,
    ) -> Result<(), StorageError> {
        self.write(collection_name, collection, id, Some(fields), true)
    }

    /// Deletes a record; `NotFound` if it does not exist.
    pub fn delete(
        &self,
        collection_name: &str,
        collection: &Collection,
        id: &RecordId,
    ) -> Result<(), StorageError> {
        self.write(collection_name, collection, id, None, true)
    }

    pub fn get(&self, collection: &str, id: &RecordId) -> Result<Option<Record>, StorageError> {
        match self.data.get(record_key(collection, id))? {
            None => Ok(None),
            Some(sealed) => Ok(Some((
                id.clone(),
                self.open_record(collection, id, &sealed)?,
            ))),
        }
    }

    /// Up to `limit` records after `after`, in id order (that is, creation order).
    pub fn list(
        &self,
        collection: &str,
        after: Option<&RecordId>,
        limit: usize,
    ) -> Result<Vec<Record>, StorageError> {
        let prefix = collection_prefix(collection);
        let start = match after {
            Some(after) => {
                let mut key = record_key(collection, after);
                key.push(0);
                key
            }
            None => prefix.clone(),
        };
        let mut out = Vec::new();
        for item in self.data.range(start..) {
            let (key, sealed) = item?;
            if !key.starts_with(&prefix) || out.len() >= limit {
                break;
            }
            let id = record_id_from(&key[prefix.len()..])?;
            let fields = self.open_record(collection, &id, &sealed)?;
            out.push((id, fields));
        }
        Ok(out)
    }

    /// Records whose indexed `field` (declared as `spec`) holds `value`
    /// (compared as the index compares: NFC, and ignoring case where the
    /// field says so), looked up by blind index.
    pub fn find(
        &self,
        collection: &str,
        field: &str,
        spec: &Field,
        value: &Value,
        limit: usize,
    ) -> Result<Vec<Record>, StorageError> {
        let mut out: Vec<Record> = Vec::new();
        for tag in self.lookup_tags(collection, field, spec, value) {
            let prefix = index_prefix(collection, field, &tag);
            for item in self.data.scan_prefix(&prefix) {
                let (key, _) = item?;
                let id = record_id_from(&key[prefix.len()..])?;
                if out.iter().any(|(seen, _)| seen == &id) {
                    continue;
                }
                if let Some((id, fields)) = self.get(collection, &id)? {
                    // The tag is a 256-bit MAC, so a false match is not expected; the
                    // comparison keeps a damaged index from returning a wrong record.
                    if fields
                        .get(field)
                        .is_some_and(|stored| same_indexed_value(spec, stored, value))
                    {
                        out.push((id, fields));
                    }
                }
                if out.len() >= limit {
                    return Ok(out);
                }
            }
        }
        Ok(out)
    }

    /// The index tags under which records holding `value` in `field` may be
    /// found: today's index form and the legacy ones, each under every key
    /// the tenant has (during a rotation, a record's entries are under the
    /// key that sealed it).
    pub(super) fn lookup_tags(
        &self,
        collection: &str,
        field: &str,
        spec: &Field,
        value: &Value,
    ) -> Vec<[u8; TAG_LEN]> {
        let keys = self.keys();
        std::iter::once(index_form(spec, value))
            .chain(legacy_index_forms(spec, value))
            .flat_map(|form| {
                keys.all()
                    .map(|k| k.blind_index(collection, field, &form))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// How many records a collection holds (a key scan; nothing is decrypted).
    pub fn count(&self, collection: &str) -> Result<u64, StorageError> {
        let mut n = 0;
        for item in self.data.scan_prefix(collection_prefix(collection)) {
            item?;
            n += 1;
        }
        Ok(n)
    }

    /// Records per collection: from the counts every write keeps once a
    /// snapshot has counted them (no scan), else by a key scan.
    pub fn record_counts<'a>(
        &self,
        collections: impl Iterator<Item = &'a str>,
    ) -> Result<BTreeMap<String, u64>, StorageError> {
        let known = self
            .write_lock
            .lock()
            .expect("tenant write lock poisoned")
            .stats
            .clone();
        collections
            .map(|c| {
                let n = match &known {
                    Some(stats) => stats.get(c).map_or(0, |(records, _)| *records),
                    None => self.count(c)?,
                };
                Ok((c.to_string(), n))
            })
            .collect()
    }

    /// Makes everything written so far durable.
    pub fn flush(&self) -> Result<(), StorageError> {
        self.db.flush()?;
        Ok(())
    }

    fn open_record(
        &self,
        collection: &str,
        id: &RecordId,
        sealed: &[u8],
    ) -> Result<Map<String, Value>, StorageError> {
        let damaged = || StorageError::Damaged(format!("record {id} in {collection}"));
        let plain = self.open_plain(collection, id, sealed)?;
        match serde_json::from_slice(&plain) {
            Ok(Value::Object(map)) => Ok(map),
            _ => Err(damaged()),
        }
    }

    /// Decrypts a record's sealed bytes: the JSON object this module sealed.
    fn open_plain(
        &self,
        collection: &str,
        id: &RecordId,
        sealed: &[u8],
    ) -> Result<Vec<u8>, StorageError> {
        self.open_sealed(
            &record_aad(self.tenant.as_str(), collection, id.as_str()),
            sealed,
        )
        .map_err(|_| StorageError::Damaged(format!("record {id} in {collection}")))
    }

    /// The tenant's data keys as they are now.
    pub(super) fn keys(&self) -> std::sync::Arc<TenantKeys> {
        self.keys.read().expect("tenant keys lock poisoned").clone()
    }

    /// Opens a value sealed by any of the tenant's keys. A reader that took
    /// the keys just before a rotation began may meet a value sealed by the
    /// new one: it takes the keys again.
    pub(super) fn open_sealed(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let keys = self.keys();
        match keys.sealer_of(sealed) {
            Some(key) => key.open(aad, sealed),
            None => self.keys().open(aad, sealed),
        }
    }

    /// As [`open_sealed`](Self::open_sealed), onto the end of `out`.
    pub(super) fn open_sealed_append(
        &self,
        aad: &[u8],
        sealed: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), CryptoError> {
        let keys = self.keys();
        match keys.sealer_of(sealed) {
            Some(key) => key.open_append(aad, sealed, out),
            None => self.keys().open_append(aad, sealed, out),
        }
    }

    /// Refuses every write from now on (under the write lock, so no write is half
    /// way through) until [`TenantDb::thaw`]. Used by the schema upgrade service.
    pub fn freeze(&self) {
        let _state = self.write_lock.lock().expect("tenant write lock poisoned");
        self.frozen.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn thaw(&self) {
        self.frozen
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }

    /// Test and tooling access to the raw sealed bytes of one record.
    pub fn raw_record(
        &self,
        collection: &str,
        id: &RecordId,
    ) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self
            .data
            .get(record_key(collection, id))?
            .map(|v| v.to_vec()))
    }

    /// Overwrites the raw sealed bytes of one record (used by tests that prove a
    /// moved ciphertext fails to open).
    pub fn put_raw_record(
        &self,
        collection: &str,
        id: &RecordId,
        sealed: &[u8],
    ) -> Result<(), StorageError> {
        let mut state = self.write_lock.lock().expect("tenant write lock poisoned");
        self.data.insert(record_key(collection, id), sealed)?;
        // Not booked: the next snapshot counts again.
        state.stats = None;
        drop(state);
        self.db.flush()?;
        Ok(())
    }
}
