//! The tamper-evident audit log: every security-relevant event, as an entry in
//! an append-only file whose entries are the leaves of an RFC 9162 Merkle tree
//! ([`merkle`]), with Ed25519-signed checkpoints in the C2SP formats ([`note`]).
//!
//! On disk, under `<data-dir>/audit/`:
//!
//! ```text
//! entries            [u32 big-endian length][entry JSON] …, append-only
//! checkpoints/<size> signed notes (tree size + root), one per checkpoint
//! signing.key        Ed25519 seed (0600)      hmac.key  per-tenant HMAC root (0600)
//! public.key         the verifier key, also at GET /v1/audit/public-key
//! origin             this log's name, e.g. coffer/eu/3f9a1c2e
//! ```
//!
//! Each entry names its position (`seq`) and the leaf hash of the entry before
//! it (`prev`), so the verifier names the first entry that is wrong; the tree
//! and the signed checkpoints — also written to every backup region — catch a
//! rewrite of the whole file. Entries carry no record contents; sensitive
//! identifiers (ticket text, reasons, emails) are HMAC-SHA256 under a
//! per-tenant key.
//!
//! Durability is group-committed: appenders write their entry under a lock,
//! then share one fdatasync. An entry is acknowledged (and enters the tree,
//! proofs and checkpoints) only once it is on disk. When an entry cannot be
//! made durable the append fails, and the caller refuses the audited action
//! (503); after a failed sync the log refuses every append until restart.
//! The file is opened by path for each write, so a log moved away or
//! replaced underneath the host fails closed too.

pub mod merkle;
pub mod note;
pub mod verify;

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::crypto::{self, SecretKey};
use crate::ids::TenantId;
use merkle::{Hash, Tree};
use note::{Checkpoint, Signer};

pub const ENTRIES: &str = "entries";
pub const CHECKPOINTS: &str = "checkpoints";
/// Entries larger than this are refused (they carry ids and short details).
pub const MAX_ENTRY: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log unavailable: {0}")]
    Unavailable(String),
    #[error("audit log is damaged: {0}")]
    Damaged(String),
}

/// Who did it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Actor {
    pub role: String,
    /// The token's id (never the token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// The person: a staff identity (tenant admins have none; their token
    /// id stands for them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
}

impl Actor {
    pub fn host() -> Actor {
        Actor {
            role: "host".into(),
            token: None,
            identity: None,
        }
    }
}

/// Proof that an entry is durable in the log; made only by
/// [`AuditLog::record`].
#[derive(Debug)]
pub struct Receipt {
    seq: u64,
    grant: Option<String>,
}

impl Receipt {
    /// The entry's position in the log.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The grant the entry was written for, if any.
    pub fn grant(&self) -> Option<&str> {
        self.grant.as_deref()
    }
}

/// An event to record.
#[derive(Debug, Clone)]
pub struct Event {
    pub kind: &'static str,
    pub tenant: Option<TenantId>,
    pub actor: Actor,
    pub grant: Option<String>,
    /// Ids, states, counts: nothing sensitive.
    pub details: Map<String, Value>,
    /// Stored as HMAC-SHA256 under the tenant's audit key.
    pub sensitive: Vec<(&'static str, String)>,
}

impl Event {
    pub fn new(kind: &'static str, actor: Actor) -> Event {
        Event {
            kind,
            tenant: None,
            actor,
            grant: None,
            details: Map::new(),
            sensitive: Vec::new(),
        }
    }

    pub fn tenant(mut self, tenant: &TenantId) -> Event {
        self.tenant = Some(tenant.clone());
        self
    }

    pub fn grant(mut self, grant: &str) -> Event {
        self.grant = Some(grant.to_string());
        self
    }

    pub fn detail(mut self, key: &str, value: impl Into<Value>) -> Event {
        self.details.insert(key.to_string(), value.into());
        self
    }

    pub fn sensitive(mut self, key: &'static str, value: &str) -> Event {
        self.sensitive.push((key, value.to_string()));
        self
    }
}

/// An entry as stored (the exact JSON bytes are the Merkle leaf).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub seq: u64,
    /// Unix milliseconds.
    pub at: u64,
    /// Hex leaf hash of entry `seq - 1` (empty for the first).
    pub prev: String,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// The tenant's previous entry: a tenant's entries form a chain of their
    /// own, so a proof bundle with one of them left out does not verify.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_prev: Option<u64>,
    pub actor: Actor,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<String>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub details: Map<String, Value>,
    /// Sensitive identifiers, as hex HMAC-SHA256 under the tenant's key.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub hmac: Map<String, Value>,
}

struct State {
    /// Acknowledged (durable) entries.
    tree: Tree,
    /// File offset where each acknowledged entry's record starts.
    offsets: Vec<u64>,
    by_tenant: HashMap<TenantId, Vec<u64>>,
    /// Written, not yet durable: (leaf, offset, tenant).
    pending: Vec<(Hash, u64, Option<TenantId>)>,
    /// Bytes written to the file.
    written: u64,
    /// Leaf hash of the last written entry.
    last: Option<Hash>,
    /// Each tenant's last written entry.
    tenant_last: HashMap<TenantId, u64>,
    /// Set when a sync failed: every append refused until restart.
    failed: Option<String>,
    /// Size of the newest signed checkpoint.
    signed: u64,
}

struct SyncState {
    synced: u64,
    syncing: bool,
    failed: Option<String>,
}

pub struct AuditLog {
    dir: PathBuf,
    origin: String,
    signer: Signer,
    hmac_root: SecretKey,
    state: Mutex<State>,
    /// Group commit: bytes known durable, and whether a sync is under way.
    sync: Mutex<SyncState>,
    synced: std::sync::Condvar,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("origin", &self.origin)
            .finish()
    }
}

/// The fields of an entry the log's structure rests on, parsed without
/// building the rest (which is skipped, though still checked to be JSON).
#[derive(Debug, Deserialize)]
pub struct EntryHead<'a> {
    pub seq: u64,
    #[serde(borrow)]
    pub prev: &'a str,
    #[serde(borrow, default)]
    pub tenant: Option<&'a str>,
    #[serde(default)]
    pub tenant_prev: Option<u64>,
}

/// Streams the records of an entries file: calls `each(offset, bytes)` in
/// order. Returns the length up to the last whole record (a torn record at
/// the end — a crash mid-append, never acknowledged — is not passed on).
pub fn scan_records(
    path: &Path,
    mut each: impl FnMut(u64, &[u8]) -> Result<(), String>,
) -> Result<u64, String> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(format!("open {}: {e}", path.display())),
    };
    let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
    let mut buffer = Vec::with_capacity(4096);
    let mut offset = 0u64;
    loop {
        let mut len = [0u8; 4];
        match read_full(&mut reader, &mut len) {
            Ok(true) => {}
            Ok(false) => return Ok(offset),
            Err(e) => return Err(format!("read {}: {e}", path.display())),
        }
        let len = u32::from_be_bytes(len) as usize;
        if len > MAX_ENTRY {
            return Ok(offset);
        }
        buffer.resize(len, 0);
        match read_full(&mut reader, &mut buffer) {
            Ok(true) => {}
            Ok(false) => return Ok(offset),
            Err(e) => return Err(format!("read {}: {e}", path.display())),
        }
        each(offset, &buffer)?;
        offset += 4 + len as u64;
    }
}

/// Fills `buf`; false when the file ends first.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<bool> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..])? {
            0 => return Ok(false),
            n => filled += n,
        }
    }
    Ok(true)
}

impl AuditLog {
    /// Opens (or starts) the log under `<data_dir>/audit`. Refuses a log whose
    /// entries do not chain: run `coffer audit verify --data-dir` to see where.
    pub fn open(data_dir: &Path, region: &str) -> anyhow::Result<AuditLog> {
        use anyhow::Context;
        let dir = data_dir.join("audit");
        std::fs::create_dir_all(dir.join(CHECKPOINTS)).context("create the audit directory")?;
        let seed = key_file(&dir.join("signing.key"))?;
        let hmac_root = key_file(&dir.join("hmac.key"))?;
        let origin_path = dir.join("origin");
        let origin = match std::fs::read_to_string(&origin_path) {
            Ok(text) => text.trim().to_string(),
            Err(_) => {
                let id = crypto::encode_hex(&crypto::random_bytes::<4>()?);
                let origin = format!("coffer/{region}/{id}");
                std::fs::write(&origin_path, format!("{origin}\n"))
                    .context("write audit origin")?;
                origin
            }
        };
        let signer = Signer::new(&origin, &seed).map_err(|e| anyhow::anyhow!("{e}"))?;
        std::fs::write(
            dir.join("public.key"),
            format!("{}\n", signer.verifier_key()),
        )
        .context("write audit public key")?;
        let path = dir.join(ENTRIES);
        let mut state = State {
            tree: Tree::new(),
            offsets: Vec::new(),
            by_tenant: HashMap::new(),
            pending: Vec::new(),
            written: 0,
            last: None,
            tenant_last: HashMap::new(),
            failed: None,
            signed: 0,
        };
        let keep = scan_records(&path, |offset, bytes| {
            let at = state.tree.len();
            let head: EntryHead = serde_json::from_slice(bytes).map_err(|e| {
                format!("audit entry {at} is not valid: {e}; run coffer audit verify --data-dir")
            })?;
            let expected_prev = state.last.map(|h| crypto::encode_hex(&h)).unwrap_or_default();
            if head.seq != at || head.prev != expected_prev {
                return Err(format!(
                    "audit entry {at} does not follow entry {}: the log was altered; run coffer audit verify --data-dir",
                    at.saturating_sub(1)
                ));
            }
            let leaf = merkle::leaf_hash(bytes);
            state.tree.push(leaf);
            state.offsets.push(offset);
            if let Some(tenant) = head.tenant.and_then(TenantId::parse) {
                state.by_tenant.entry(tenant.clone()).or_default().push(at);
                state.tenant_last.insert(tenant, at);
            }
            state.last = Some(leaf);
            Ok(())
        })
        .map_err(|e| anyhow::anyhow!(e))?;
        state.written = keep;
        let on_disk = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        if keep < on_disk {
            // A torn last record: never acknowledged, never in a checkpoint.
            let file = std::fs::OpenOptions::new().write(true).open(&path)?;
            file.set_len(keep)?;
            file.sync_all()?;
            tracing::warn!(
                bytes = on_disk - keep,
                "removed a torn audit record left by a crash"
            );
        }
        state.signed = latest_checkpoint_size(&dir);
        Ok(AuditLog {
            dir,
            origin,
            signer,
            hmac_root,
            state: Mutex::new(state),
            sync: Mutex::new(SyncState {
                synced: keep,
                syncing: false,
                failed: None,
            }),
            synced: std::sync::Condvar::new(),
        })
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    pub fn verifier_key(&self) -> String {
        self.signer.verifier_key()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The tenant's HMAC of a sensitive identifier (hex).
    pub fn tag(&self, tenant: Option<&TenantId>, value: &str) -> String {
        let context = format!(
            "coffer audit v1 {}",
            tenant.map(|t| t.as_str()).unwrap_or("host")
        );
        crypto::encode_hex(&crypto::keyed_tag(
            &self.hmac_root,
            context.as_bytes(),
            value.as_bytes(),
        ))
    }

    /// Appends an event and returns once it is durable (its sequence number).
    /// Blocking: call from a blocking thread, under a timeout.
    /// Appends `event` and hands back the proof that it is durable: the only
    /// way to a [`Receipt`], which the data path asks for before a write
    /// through a grant and before anything read through one leaves.
    pub fn record(&self, event: Event) -> Result<Receipt, AuditError> {
        let grant = event.grant.clone();
        self.append(event).map(|seq| Receipt { seq, grant })
    }

    pub fn append(&self, event: Event) -> Result<u64, AuditError> {
        let mut hmac = Map::new();
        for (key, value) in &event.sensitive {
            hmac.insert(
                key.to_string(),
                Value::from(self.tag(event.tenant.as_ref(), value)),
            );
        }
        let (seq, end) = {
            let mut state = self.state.lock().expect("audit state");
            if let Some(error) = &state.failed {
                return Err(AuditError::Unavailable(error.clone()));
            }
            let seq = state.tree.len() + state.pending.len() as u64;
            let entry = Entry {
                seq,
                at: now_ms(),
                prev: state
                    .last
                    .map(|h| crypto::encode_hex(&h))
                    .unwrap_or_default(),
                kind: event.kind.to_string(),
                tenant: event.tenant.as_ref().map(|t| t.to_string()),
                tenant_prev: event
                    .tenant
                    .as_ref()
                    .and_then(|t| state.tenant_last.get(t).copied()),
                actor: event.actor,
                grant: event.grant,
                details: event.details,
                hmac,
            };
            let bytes = serde_json::to_vec(&entry).expect("entries serialise");
            if bytes.len() > MAX_ENTRY {
                return Err(AuditError::Unavailable("audit entry too large".into()));
            }
            let mut record = (bytes.len() as u32).to_be_bytes().to_vec();
            record.extend_from_slice(&bytes);
            let offset = state.written;
            if let Err(error) = self.write_at(offset, &record) {
                return Err(AuditError::Unavailable(error));
            }
            let leaf = merkle::leaf_hash(&bytes);
            state.written += record.len() as u64;
            state.last = Some(leaf);
            if let Some(tenant) = &event.tenant {
                state.tenant_last.insert(tenant.clone(), seq);
            }
            state.pending.push((leaf, offset, event.tenant));
            (seq, state.written)
        };
        self.sync_through(end)?;
        Ok(seq)
    }

    /// Writes one record at `offset` of the entries file, opened by path.
    fn write_at(&self, offset: u64, record: &[u8]) -> Result<(), String> {
        let path = self.dir.join(ENTRIES);
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| format!("open {}: {e}", path.display()))?;
        let length = file
            .metadata()
            .map_err(|e| format!("stat {}: {e}", path.display()))?
            .len();
        if length != offset {
            return Err(format!(
                "{} is {length} bytes, the host wrote {offset}: the file changed underneath the host",
                path.display()
            ));
        }
        let result = file
            .seek(SeekFrom::Start(offset))
            .and_then(|_| file.write_all(record));
        if let Err(error) = result {
            // Leave no partial record behind.
            let _ = file.set_len(offset);
            return Err(format!("write {}: {error}", path.display()));
        }
        Ok(())
    }

    /// Group commit: one fdatasync covers every record written before it.
    /// The first waiter with nothing in flight leads (syncs without holding
    /// the lock); the others sleep on the condition variable and all wake
    /// when a sync that covers them ends — no queue of hand-offs.
    fn sync_through(&self, end: u64) -> Result<(), AuditError> {
        let mut sync = self.sync.lock().expect("audit sync");
        loop {
            if sync.synced >= end {
                drop(sync);
                return self.check_failed();
            }
            if let Some(error) = &sync.failed {
                return Err(AuditError::Unavailable(error.clone()));
            }
            if !sync.syncing {
                break;
            }
            sync = self.synced.wait(sync).expect("audit sync");
        }
        sync.syncing = true;
        drop(sync);
        let target = self.state.lock().expect("audit state").written;
        let path = self.dir.join(ENTRIES);
        let result = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|f| f.sync_data())
            .map_err(|e| format!("sync {}: {e}", path.display()));
        {
            let mut state = self.state.lock().expect("audit state");
            match &result {
                Ok(()) => {
                    let split = state
                        .pending
                        .iter()
                        .position(|(_, o, _)| *o >= target)
                        .unwrap_or(state.pending.len());
                    let durable: Vec<_> = state.pending.drain(..split).collect();
                    for (leaf, offset, tenant) in durable {
                        let seq = state.tree.len();
                        state.tree.push(leaf);
                        state.offsets.push(offset);
                        if let Some(tenant) = tenant {
                            state.by_tenant.entry(tenant).or_default().push(seq);
                        }
                    }
                }
                Err(error) => {
                    state.failed = Some(error.clone());
                    tracing::error!(%error, "audit log sync failed: refusing audited actions until restart");
                }
            }
        }
        let mut sync = self.sync.lock().expect("audit sync");
        sync.syncing = false;
        match result {
            Ok(()) => sync.synced = sync.synced.max(target),
            Err(error) => sync.failed = Some(error),
        }
        self.synced.notify_all();
        let covered = sync.synced >= end;
        let failed = sync.failed.clone();
        drop(sync);
        match failed {
            Some(error) => Err(AuditError::Unavailable(error)),
            None if covered => Ok(()),
            // Written after the sync began: the next one covers it.
            None => self.sync_through(end),
        }
    }

    fn check_failed(&self) -> Result<(), AuditError> {
        match &self.state.lock().expect("audit state").failed {
            Some(error) => Err(AuditError::Unavailable(error.clone())),
            None => Ok(()),
        }
    }

    /// Acknowledged entries.
    /// Why the log refuses appends (a sync failed; until restart), if it does.
    pub fn failure(&self) -> Option<String> {
        self.state.lock().expect("audit state").failed.clone()
    }

    pub fn size(&self) -> u64 {
        self.state.lock().expect("audit state").tree.len()
    }

    /// Signs a checkpoint of the acknowledged tree when it grew since the last
    /// one; returns (size, note) of the new checkpoint.
    pub fn checkpoint(&self) -> Result<Option<(u64, String)>, AuditError> {
        let (checkpoint, signed) = {
            let state = self.state.lock().expect("audit state");
            let size = state.tree.len();
            if size == state.signed || size == 0 {
                return Ok(None);
            }
            (
                Checkpoint {
                    origin: self.origin.clone(),
                    size,
                    root: state.tree.root(size),
                },
                state.signed,
            )
        };
        let note = self.signer.sign(&checkpoint);
        let dir = self.dir.join(CHECKPOINTS);
        let name = checkpoint_name(checkpoint.size);
        let tmp = dir.join(format!("{name}.tmp"));
        let write = || -> std::io::Result<()> {
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(note.as_bytes())?;
            file.sync_all()?;
            std::fs::rename(&tmp, dir.join(&name))?;
            std::fs::File::open(&dir)?.sync_all()
        };
        write().map_err(|e| AuditError::Unavailable(format!("write checkpoint: {e}")))?;
        let mut state = self.state.lock().expect("audit state");
        if state.signed == signed {
            state.signed = checkpoint.size;
        }
        Ok(Some((checkpoint.size, note)))
    }

    /// The newest signed checkpoint: (size, note).
    pub fn latest_checkpoint(&self) -> Option<(u64, String)> {
        let size = self.state.lock().expect("audit state").signed;
        if size == 0 {
            return None;
        }
        std::fs::read_to_string(self.dir.join(CHECKPOINTS).join(checkpoint_name(size)))
            .ok()
            .map(|note| (size, note))
    }

    /// Sequence numbers of a tenant's acknowledged entries.
    pub fn entries_of(&self, tenant: &TenantId) -> Vec<u64> {
        self.state
            .lock()
            .expect("audit state")
            .by_tenant
            .get(tenant)
            .cloned()
            .unwrap_or_default()
    }

    /// The exact bytes of acknowledged entries.
    pub fn read_entries(&self, seqs: &[u64]) -> Result<Vec<Vec<u8>>, AuditError> {
        let offsets: Vec<u64> = {
            let state = self.state.lock().expect("audit state");
            seqs.iter()
                .map(|s| state.offsets.get(*s as usize).copied())
                .collect::<Option<_>>()
                .ok_or_else(|| AuditError::Damaged("no such entry".into()))?
        };
        let path = self.dir.join(ENTRIES);
        let mut file = std::fs::File::open(&path)
            .map_err(|e| AuditError::Unavailable(format!("open {}: {e}", path.display())))?;
        let mut out = Vec::with_capacity(offsets.len());
        for offset in offsets {
            let mut len = [0u8; 4];
            file.seek(SeekFrom::Start(offset))
                .and_then(|_| file.read_exact(&mut len))
                .map_err(|e| AuditError::Damaged(e.to_string()))?;
            let len = u32::from_be_bytes(len) as usize;
            if len > MAX_ENTRY {
                return Err(AuditError::Damaged(format!(
                    "record at {offset} is too long"
                )));
            }
            let mut bytes = vec![0u8; len];
            file.read_exact(&mut bytes)
                .map_err(|e| AuditError::Damaged(e.to_string()))?;
            out.push(bytes);
        }
        Ok(out)
    }

    pub fn inclusion_proof(&self, seq: u64, size: u64) -> Vec<Hash> {
        self.state
            .lock()
            .expect("audit state")
            .tree
            .inclusion_proof(seq, size)
    }

    pub fn consistency_proof(&self, from: u64, size: u64) -> Vec<Hash> {
        self.state
            .lock()
            .expect("audit state")
            .tree
            .consistency_proof(from, size)
    }

    pub fn root(&self, size: u64) -> Hash {
        self.state.lock().expect("audit state").tree.root(size)
    }
}

pub fn checkpoint_name(size: u64) -> String {
    format!("{size:020}")
}

fn latest_checkpoint_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir.join(CHECKPOINTS))
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u64>().ok()))
        .max()
        .unwrap_or(0)
}

fn key_file(path: &Path) -> anyhow::Result<SecretKey> {
    if !path.exists() {
        crate::secret_file::write_secret(path, SecretKey::generate()?.to_hex().as_bytes())?;
    }
    crate::secret_file::read_key_file(path)
}

fn now_ms() -> u64 {
    crate::ids::unix_now_ms()
}

/// Where a host's checkpoints live in a region store: `audit/<origin>/checkpoints/`.
pub fn region_checkpoint_dir(origin: &str) -> Vec<String> {
    vec![
        "audit".to_string(),
        origin.replace('/', "_"),
        "checkpoints".to_string(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_appends_are_all_durable_chained_and_verifiable() {
        let dir = std::env::temp_dir().join(format!("coffer-audit-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let log = std::sync::Arc::new(AuditLog::open(&dir, "test").unwrap());
        let tenant = TenantId::generate().unwrap();
        let threads: Vec<_> = (0..16)
            .map(|w| {
                let (log, tenant) = (log.clone(), tenant.clone());
                std::thread::spawn(move || {
                    (0..50)
                        .map(|i| {
                            log.append(
                                Event::new("test", Actor::host())
                                    .tenant(&tenant)
                                    .detail("n", w * 100 + i),
                            )
                            .unwrap()
                        })
                        .collect::<Vec<u64>>()
                })
            })
            .collect();
        let mut seqs: Vec<u64> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        seqs.sort();
        assert_eq!(seqs, (0..800).collect::<Vec<u64>>());
        assert_eq!(log.size(), 800);
        assert_eq!(log.entries_of(&tenant).len(), 800);
        log.checkpoint().unwrap();
        let verifier = note::Verifier::parse(&log.verifier_key()).unwrap();
        let report = verify::verify_log(log.dir(), &verifier, &[]).unwrap();
        assert_eq!(report.entries, 800);
        // Reopened, the log carries on from where it was.
        drop(log);
        let log = AuditLog::open(&dir, "test").unwrap();
        assert_eq!(log.append(Event::new("again", Actor::host())).unwrap(), 800);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
