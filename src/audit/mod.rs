//! The tamper-evident audit log: every security-relevant event, as an entry in
//! an append-only log whose entries are the leaves of an RFC 9162 Merkle tree
//! ([`merkle`]), stored in the C2SP tlog-tiles layout ([`tiles`]), with
//! Ed25519-signed checkpoints in the C2SP formats ([`note`]).
//!
//! On disk, under `<data-dir>/audit/`:
//!
//! ```text
//! tile/…             hash tiles and entry bundles (see `tiles`)
//! journal/<N>        entries of the tile being filled, [u32 length][JSON] …
//! checkpoint         the newest signed note (tree size + root)
//! checkpoints/<size> every signed note, one per checkpoint
//! heads              at the newest checkpoint: its size and each tenant's last
//!                    entry, so that a start reads only what came after
//! signing.key        Ed25519 seed (0600)      hmac.key  per-tenant HMAC root (0600)
//! public.key         the verifier key, also at GET /v1/audit/public-key
//! origin             this log's name, e.g. coffer/eu/3f9a1c2e
//! ```
//!
//! Each entry names its position (`seq`) and the leaf hash of the entry before
//! it (`prev`), so the verifier names the first entry that is wrong; the tree
//! and the signed checkpoints — also written to every backup region — catch a
//! rewrite of the whole log. Entries carry no record contents; sensitive
//! identifiers (ticket text, reasons, emails) are HMAC-SHA256 under a
//! per-tenant key. A start reads the newest checkpoint, `heads` and the
//! entries after them, and checks the checkpoint's root against the tiles;
//! the whole chain is `coffer audit verify`'s work ([`verify`]). A log in the
//! single-file layout of earlier versions is moved into tiles at the first
//! start ([`migrate`]).
//!
//! Its rooms: `event` (events, entries, actors, receipts), `journal` (the
//! record format of the tile being filled), `load` (what a start reads and
//! checks), and this file: appends, group-committed syncs, checkpoints and
//! proofs.
//!
//! Durability is group-committed: appenders write their entry to the journal
//! under a lock, then share one fdatasync. An entry is acknowledged (and
//! enters the tree, proofs and checkpoints) only once it is on disk. When an
//! entry cannot be made durable the append fails, and the caller refuses the
//! audited action (503); after a failed sync the log refuses every append
//! until restart. The journal is opened by path for each write, so a log
//! moved away or replaced underneath the host fails closed too.

pub mod merkle;
pub mod migrate;
pub mod note;
pub mod tiles;
pub mod verify;

mod event;
mod journal;
mod load;

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::crypto::{self, SecretKey};
use crate::ids::TenantId;
use merkle::Hash;
use note::{Checkpoint, Signer};
use tiles::{Frontier, TileReader, View, JOURNAL, WIDTH};

pub use event::{Actor, Entry, Event, Receipt};
pub use journal::{journal_path, journals, read_journal, scan_records, EntryHead};
use load::{check_newest_checkpoint, load};

/// The single-file log of earlier versions (migrated at start).
pub const ENTRIES: &str = "entries";
pub const CHECKPOINTS: &str = "checkpoints";
pub const CHECKPOINT: &str = "checkpoint";
pub const HEADS: &str = "heads";
/// Entries larger than this are refused (they carry ids and short details;
/// entry bundles store lengths in 16 bits).
pub const MAX_ENTRY: usize = tiles::MAX_ENTRY;

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log unavailable: {0}")]
    Unavailable(String),
    #[error("audit log is damaged: {0}")]
    Damaged(String),
}

struct State {
    /// The tree of acknowledged (durable) entries: its right edge.
    tree: Frontier,
    /// Written, not yet durable, in order: (leaf, tenant).
    pending: Vec<(Hash, Option<TenantId>)>,
    /// Bytes written to the journal of the tile being filled.
    journal_len: u64,
    /// Leaf hash of the last written entry.
    last: Option<Hash>,
    /// Each tenant's last written entry, and last acknowledged one.
    tenant_last: HashMap<TenantId, u64>,
    durable_last: HashMap<TenantId, u64>,
    /// Set when a sync failed: every append refused until restart.
    failed: Option<String>,
    /// Size of the newest signed checkpoint.
    signed: u64,
}

impl State {
    /// Entries written (acknowledged or not).
    fn written(&self) -> u64 {
        self.tree.size() + self.pending.len() as u64
    }
}

struct SyncState {
    /// Entries known durable.
    synced: u64,
    syncing: bool,
    failed: Option<String>,
}

/// What the last start read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Opened {
    /// Entries in the log.
    pub size: u64,
    /// Entries read to get there (after the newest `heads`).
    pub read: u64,
    /// Entries moved from the single-file layout.
    pub migrated: u64,
}

pub struct AuditLog {
    dir: PathBuf,
    origin: String,
    signer: Signer,
    hmac_root: SecretKey,
    tiles: TileReader,
    state: Mutex<State>,
    /// Group commit: entries known durable, and whether a sync is under way.
    sync: Mutex<SyncState>,
    synced: std::sync::Condvar,
    /// Told after every sync that made entries durable (see [`AuditLog::grew`]).
    grown: tokio::sync::Notify,
    opened: Opened,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("origin", &self.origin)
            .finish()
    }
}

/// `heads`: the tree size of a checkpoint and each tenant's last entry in it.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Heads {
    pub size: u64,
    pub tenants: HashMap<String, u64>,
}

impl AuditLog {
    /// Opens (or starts) the log under `<data_dir>/audit`, moving a
    /// single-file log into tiles first. Reads the entries after the newest
    /// `heads` and checks the newest checkpoint against the tiles; refuses a
    /// log where either does not hold: run `coffer audit verify --data-dir`
    /// to see where.
    pub fn open(data_dir: &Path, region: &str) -> anyhow::Result<AuditLog> {
        use anyhow::Context;
        let dir = data_dir.join("audit");
        std::fs::create_dir_all(dir.join(CHECKPOINTS)).context("create the audit directory")?;
        std::fs::create_dir_all(dir.join(JOURNAL)).context("create the audit journal")?;
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
        let migrated = migrate::run(&dir).map_err(|e| anyhow::anyhow!(e))?;
        let tiles = TileReader::new(&dir);
        let found = load(&dir, &tiles)
            .map_err(|e| anyhow::anyhow!("{e}; run coffer audit verify --data-dir"))?;
        let verifier =
            note::Verifier::parse(&signer.verifier_key()).map_err(|e| anyhow::anyhow!("{e}"))?;
        let signed = check_newest_checkpoint(&dir, &tiles, &found.tree, &verifier)
            .map_err(|e| anyhow::anyhow!("{e}; run coffer audit verify --data-dir"))?;
        let size = found.tree.size();
        let opened = Opened {
            size,
            read: found.read,
            migrated,
        };
        tracing::info!(entries = size, read = found.read, "audit log open");
        Ok(AuditLog {
            dir,
            origin,
            signer,
            hmac_root,
            tiles,
            state: Mutex::new(State {
                tree: found.tree,
                pending: Vec::new(),
                journal_len: found.journal_len,
                last: found.last,
                tenant_last: found.tenant_last.clone(),
                durable_last: found.tenant_last,
                failed: None,
                signed,
            }),
            sync: Mutex::new(SyncState {
                synced: size,
                syncing: false,
                failed: None,
            }),
            synced: std::sync::Condvar::new(),
            grown: tokio::sync::Notify::new(),
            opened,
        })
    }

    /// What the start read.
    pub fn opened(&self) -> Opened {
        self.opened
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

    /// Appends `event` and hands back the proof that it is durable: the only
    /// way to a [`Receipt`], which the data path asks for before a write
    /// through a grant and before anything read through one leaves.
    /// Blocking: call from a blocking thread, under a timeout.
    pub fn record(&self, event: Event) -> Result<Receipt, AuditError> {
        let grant = event.grant.clone();
        self.append(event).map(|seq| Receipt { seq, grant })
    }

    /// Appends an event and returns once it is durable (its sequence number).
    pub fn append(&self, event: Event) -> Result<u64, AuditError> {
        let mut hmac = Map::new();
        for (key, value) in &event.sensitive {
            hmac.insert(
                key.to_string(),
                Value::from(self.tag(event.tenant.as_ref(), value)),
            );
        }
        let seq = {
            let mut state = self.state.lock().expect("audit state");
            if let Some(error) = &state.failed {
                return Err(AuditError::Unavailable(error.clone()));
            }
            let seq = state.written();
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
            let tile = seq / WIDTH as u64;
            if seq % WIDTH as u64 == 0 {
                state.journal_len = 0;
            }
            let offset = state.journal_len;
            if let Err(error) = self.write_at(tile, offset, &record) {
                return Err(AuditError::Unavailable(error));
            }
            let leaf = merkle::leaf_hash(&bytes);
            state.journal_len += record.len() as u64;
            state.last = Some(leaf);
            if let Some(tenant) = &event.tenant {
                state.tenant_last.insert(tenant.clone(), seq);
            }
            state.pending.push((leaf, event.tenant));
            seq
        };
        self.sync_through(seq + 1)?;
        Ok(seq)
    }

    /// Writes one record at `offset` of tile `tile`'s journal, opened by path
    /// (a new journal's directory entry is synced before its first record).
    fn write_at(&self, tile: u64, offset: u64, record: &[u8]) -> Result<(), String> {
        let path = journal_path(&self.dir, tile);
        let mut file = std::fs::OpenOptions::new()
            .create(offset == 0)
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
        if offset == 0 {
            std::fs::File::open(self.dir.join(JOURNAL))
                .and_then(|d| d.sync_all())
                .map_err(|e| format!("sync the journal directory: {e}"))?;
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
    /// when a sync that covers them ends — no queue of hand-offs. The
    /// leader also writes the tiles its sync completed.
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
        let from = sync.synced;
        drop(sync);
        let target = self.state.lock().expect("audit state").written();
        let started = std::time::Instant::now();
        let mut result = Ok(());
        // The journals holding entries from..target (one, or two across a
        // tile's edge).
        for tile in from / WIDTH as u64..=(target - 1) / WIDTH as u64 {
            let path = journal_path(&self.dir, tile);
            result = std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .and_then(|f| f.sync_data())
                .map_err(|e| format!("sync {}: {e}", path.display()));
            if result.is_err() {
                break;
            }
        }
        {
            let mut state = self.state.lock().expect("audit state");
            if result.is_ok() {
                let count = (target - state.tree.size()) as usize;
                let durable: Vec<_> = state.pending.drain(..count).collect();
                for (leaf, tenant) in durable {
                    let seq = state.tree.size();
                    if let Some(tenant) = tenant {
                        state.durable_last.insert(tenant, seq);
                    }
                    let full = state.tree.push(leaf);
                    if let Err(error) = self.write_tiles(full) {
                        result = Err(error);
                        break;
                    }
                }
            }
            if let Err(error) = &result {
                state.failed = Some(error.clone());
                tracing::error!(%error, "audit log sync failed: refusing audited actions until restart");
            }
        }
        if result.is_ok() {
            crate::metrics::audit_sync(target - from, started.elapsed());
            self.grown.notify_one();
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

    /// Writes the tiles a durable entry completed; a full level-0 tile takes
    /// its entries from the journal, which then goes.
    fn write_tiles(&self, full: Vec<tiles::FullTile>) -> Result<(), String> {
        let mut journal = None;
        for (level, n, hashes) in full {
            let entries = if level == 0 {
                let (entries, _) = read_journal(&self.dir, n)?;
                if entries.len() != WIDTH {
                    return Err(format!(
                        "journal {n} holds {} entries, not {WIDTH}",
                        entries.len()
                    ));
                }
                journal = Some(n);
                Some(entries)
            } else {
                None
            };
            self.tiles
                .write_full(level, n, &hashes, entries.as_deref())
                .map_err(|e| format!("write tile {level}/{n}: {e}"))?;
        }
        if let Some(n) = journal {
            std::fs::remove_file(journal_path(&self.dir, n))
                .map_err(|e| format!("remove journal {n}: {e}"))?;
        }
        Ok(())
    }

    fn check_failed(&self) -> Result<(), AuditError> {
        match &self.state.lock().expect("audit state").failed {
            Some(error) => Err(AuditError::Unavailable(error.clone())),
            None => Ok(()),
        }
    }

    /// Why the log refuses appends (a sync failed; until restart), if it does.
    pub fn failure(&self) -> Option<String> {
        self.state.lock().expect("audit state").failed.clone()
    }

    /// Resolves once entries became durable since the last time it resolved
    /// (for the one reader that follows the log: the webhook dispatcher).
    pub async fn grew(&self) {
        self.grown.notified().await
    }

    /// Acknowledged entries.
    pub fn size(&self) -> u64 {
        self.state.lock().expect("audit state").tree.size()
    }

    /// The right edge of the acknowledged tree, for proofs without the lock.
    fn frontier(&self) -> Frontier {
        self.state.lock().expect("audit state").tree.clone()
    }

    /// Signs a checkpoint of the acknowledged tree when it grew since the last
    /// one; returns (size, note) of the new checkpoint. Also writes the
    /// checkpoint's partial tiles and `heads`.
    pub fn checkpoint(&self) -> Result<Option<(u64, String)>, AuditError> {
        let (tree, heads, signed) = {
            let state = self.state.lock().expect("audit state");
            let size = state.tree.size();
            if size == state.signed || size == 0 {
                return Ok(None);
            }
            let heads = Heads {
                size,
                tenants: state
                    .durable_last
                    .iter()
                    .map(|(t, s)| (t.to_string(), *s))
                    .collect(),
            };
            (state.tree.clone(), heads, state.signed)
        };
        let unavailable = |e: String| AuditError::Unavailable(format!("write checkpoint: {e}"));
        let checkpoint = Checkpoint {
            origin: self.origin.clone(),
            size: tree.size(),
            root: merkle::root(&View::new(&self.tiles, &tree), tree.size()).map_err(unavailable)?,
        };
        let note = self.signer.sign(&checkpoint);
        // The entries of the partial tile: from the journal, or from the
        // bundle if the tile filled since the snapshot.
        let (n, width) = (tree.full_tiles(0), tree.row(0).len());
        let (mut tail, _) = read_journal(&self.dir, n).map_err(unavailable)?;
        if tail.len() < width {
            tail = self.tiles.bundle(n).map_err(unavailable)?;
        }
        tail.truncate(width);
        let tail = &tail[..];
        let write = || -> std::io::Result<()> {
            self.tiles.write_partials(&tree, tail)?;
            let dir = self.dir.join(CHECKPOINTS);
            tiles::write_whole(
                &dir.join(checkpoint_name(checkpoint.size)),
                note.as_bytes(),
                true,
            )?;
            tiles::write_whole(&self.dir.join(CHECKPOINT), note.as_bytes(), true)?;
            let heads = serde_json::to_vec(&heads).expect("heads serialise");
            tiles::write_whole(&self.dir.join(HEADS), &heads, false)
        };
        write().map_err(|e| unavailable(e.to_string()))?;
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

    /// Sequence numbers of a tenant's acknowledged entries, oldest first.
    pub fn entries_of(&self, tenant: &TenantId) -> Result<Vec<u64>, AuditError> {
        Ok(self
            .tenant_entries(tenant)?
            .into_iter()
            .map(|(seq, _)| seq)
            .collect())
    }

    /// A tenant's acknowledged entries (sequence, exact bytes), oldest first:
    /// its chain (`tenant_prev`) walked back from its last entry, each tile
    /// read once per run of the tenant's entries in it.
    pub fn tenant_entries(&self, tenant: &TenantId) -> Result<Vec<(u64, Vec<u8>)>, AuditError> {
        let last = self
            .state
            .lock()
            .expect("audit state")
            .durable_last
            .get(tenant)
            .copied();
        let mut out = Vec::new();
        let mut reader = EntryReader::new(self);
        let mut next = last;
        while let Some(seq) = next {
            let bytes = reader.get(seq)?;
            let head: EntryHead = serde_json::from_slice(&bytes)
                .map_err(|e| AuditError::Damaged(format!("entry {seq}: {e}")))?;
            if head.seq != seq || head.tenant != Some(tenant.as_str()) {
                return Err(AuditError::Damaged(format!(
                    "entry {seq} is not the tenant's entry its chain names"
                )));
            }
            if head.tenant_prev.is_some_and(|p| p >= seq) {
                return Err(AuditError::Damaged(format!(
                    "entry {seq}: its tenant chain goes forward"
                )));
            }
            next = head.tenant_prev;
            out.push((seq, bytes));
        }
        out.reverse();
        Ok(out)
    }

    /// The exact bytes of acknowledged entries (each tile read once for
    /// entries in order).
    pub fn read_entries(&self, seqs: &[u64]) -> Result<Vec<Vec<u8>>, AuditError> {
        let size = self.size();
        let mut reader = EntryReader::new(self);
        seqs.iter()
            .map(|seq| {
                if *seq >= size {
                    return Err(AuditError::Damaged("no such entry".into()));
                }
                reader.get(*seq)
            })
            .collect()
    }

    pub fn inclusion_proof(&self, seq: u64, size: u64) -> Result<Vec<Hash>, AuditError> {
        self.prove(|view| merkle::inclusion_proof(view, seq, size), size)
    }

    pub fn consistency_proof(&self, from: u64, size: u64) -> Result<Vec<Hash>, AuditError> {
        self.prove(|view| merkle::consistency_proof(view, from, size), size)
    }

    pub fn root(&self, size: u64) -> Result<Hash, AuditError> {
        self.prove(|view| merkle::root(view, size), size)
    }

    /// Many proofs against one snapshot of the tree.
    pub fn prover(&self) -> Prover<'_> {
        Prover {
            log: self,
            tree: self.frontier(),
        }
    }

    fn prove<T>(
        &self,
        f: impl FnOnce(&View) -> Result<T, String>,
        size: u64,
    ) -> Result<T, AuditError> {
        let tree = self.frontier();
        if size > tree.size() {
            return Err(AuditError::Damaged(format!(
                "the tree holds {} entries, not {size}",
                tree.size()
            )));
        }
        f(&View::new(&self.tiles, &tree)).map_err(AuditError::Damaged)
    }
}

/// Proofs against one snapshot of the acknowledged tree.
pub struct Prover<'a> {
    log: &'a AuditLog,
    tree: Frontier,
}

impl Prover<'_> {
    pub fn size(&self) -> u64 {
        self.tree.size()
    }

    pub fn view(&self) -> View<'_> {
        View::new(&self.log.tiles, &self.tree)
    }
}

/// Reads entries by sequence, keeping the last tile or journal it read.
struct EntryReader<'a> {
    log: &'a AuditLog,
    held: Option<(u64, Vec<Vec<u8>>)>,
}

impl<'a> EntryReader<'a> {
    fn new(log: &'a AuditLog) -> EntryReader<'a> {
        EntryReader { log, held: None }
    }

    fn get(&mut self, seq: u64) -> Result<Vec<u8>, AuditError> {
        let tile = seq / WIDTH as u64;
        if self.held.as_ref().map(|(n, _)| *n) != Some(tile) {
            // The journal while the tile fills; the bundle once it is full
            // (also when the tile filled between the two looks).
            let entries = match read_journal(&self.log.dir, tile) {
                Ok((entries, _)) if !entries.is_empty() => entries,
                _ => self.log.tiles.bundle(tile).map_err(AuditError::Damaged)?,
            };
            self.held = Some((tile, entries));
        }
        let (_, entries) = self.held.as_ref().expect("held");
        entries
            .get((seq % WIDTH as u64) as usize)
            .cloned()
            .ok_or_else(|| AuditError::Damaged(format!("entry {seq} is not in its tile")))
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
mod tests;
