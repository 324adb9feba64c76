//! Offline verification, for operators (`coffer audit verify --data-dir`) and
//! for tenants (`coffer audit verify --bundle`). Names the first thing wrong.

use std::path::Path;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::{Deserialize, Serialize};

use std::collections::BTreeMap;

use super::merkle::{self, Hash};
use super::note::Verifier;
use super::tiles::{self, Frontier, TileReader, View, WIDTH};
use super::{scan_records, Entry, EntryHead, CHECKPOINTS, ENTRIES};
use crate::crypto::decode_hex;

#[derive(Debug, Serialize)]
pub struct LogReport {
    pub entries: u64,
    pub checkpoints: usize,
    pub newest_checkpoint: u64,
    /// Entries appended after the newest signed checkpoint (first, last):
    /// chained and well-formed, but not yet signed — what a crash, or the
    /// seconds between checkpoints, leave. Not a broken log; `--strict`
    /// treats it as one.
    pub unsigned: Option<(u64, u64)>,
}

/// Checks the whole log under `audit_dir`: every entry's position and chain,
/// every stored tile against the entries' hashes, every checkpoint there and
/// in `more` (e.g. copies from region stores, as (where, note)). Entries after
/// the newest checkpoint are reported as an unsigned tail, not as an error.
/// Memory stays flat: the tree's right edge and a few tiles.
pub fn verify_log(
    audit_dir: &Path,
    verifier: &Verifier,
    more: &[(String, String)],
) -> Result<LogReport, String> {
    // The checkpoints first (signatures), so that each root is checked the
    // moment the tree reaches its size.
    let mut notes: Vec<(String, String)> = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(audit_dir.join(CHECKPOINTS))
        .map_err(|e| format!("read checkpoints: {e}"))?
        .filter_map(|e| e.ok())
        .filter(|e| !e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    files.sort_by_key(|e| e.file_name());
    for file in files {
        let text = std::fs::read_to_string(file.path())
            .map_err(|e| format!("read {}: {e}", file.path().display()))?;
        notes.push((format!("checkpoint {}", file.path().display()), text));
    }
    notes.extend(more.iter().cloned());
    let mut wanted: BTreeMap<u64, Vec<(String, Hash)>> = BTreeMap::new();
    for (place, note) in &notes {
        let checkpoint = verifier.open(note).map_err(|e| format!("{place}: {e}"))?;
        wanted
            .entry(checkpoint.size)
            .or_default()
            .push((place.clone(), checkpoint.root));
    }
    let tiles = TileReader::new(audit_dir);
    let old_layout = audit_dir.join(ENTRIES);
    let single_file = old_layout.exists();
    // Two stages on two cores: this thread reads the entries and hashes each
    // (and reads its seq and prev); the other checks the chain, the tiles
    // and the checkpoints. Batches of 4096 entries, at most 4 in flight.
    let (tree, good_below) = std::thread::scope(|scope| -> Result<(Frontier, Vec<u64>), String> {
        let (sender, receiver) = std::sync::mpsc::sync_channel::<Vec<Checked>>(4);
        let tiles = &tiles;
        let wanted = &wanted;
        let checker = scope.spawn(move || -> Result<(Frontier, Vec<u64>), String> {
            let mut tree = Frontier::default();
            let mut previous: Option<Hash> = None;
            let mut good_below = Vec::new();
            for batch in receiver {
                for item in batch {
                    let i = tree.size();
                    let (seq, prev) = item
                        .head
                        .map_err(|e| format!("entry {i} ({}) is not a valid entry: {e}", item.place))?;
                    if seq != i {
                        return Err(format!(
                            "entry {i} ({}) says it is entry {seq}: entries were removed, reordered or inserted at {i}",
                            item.place
                        ));
                    }
                    if prev != previous {
                        return Err(format!(
                            "entry {} was altered: entry {i} ({}) records another hash for it",
                            i.saturating_sub(1),
                            item.place
                        ));
                    }
                    previous = Some(item.leaf);
                    for (level, n, hashes) in tree.push(item.leaf) {
                        if single_file {
                            continue;
                        }
                        let stored = tiles.tile(level, n)?;
                        if let Some(at) = (0..WIDTH).find(|k| stored.bottom()[*k] != hashes[*k]) {
                            return Err(format!(
                                "{} does not match the entries (hash {at}): the tile was altered",
                                tiles::tile_path(level, n, WIDTH)
                            ));
                        }
                    }
                    if let Some(expected) = wanted.get(&tree.size()) {
                        let size = tree.size();
                        let root = merkle::root(&View::new(tiles, &tree), size)?;
                        for (place, want) in expected {
                            if *want != root {
                                let from = good_below.last().copied().unwrap_or(0);
                                return Err(format!(
                                    "{place} (size {size}) does not match the log: an entry in {from}..{} was altered or the log was rewritten",
                                    size.saturating_sub(1)
                                ));
                            }
                        }
                        good_below.push(size);
                    }
                }
            }
            Ok((tree, good_below))
        });
        let mut batch = Vec::with_capacity(4096);
        let mut each = |place: Place, bytes: &[u8]| -> Result<(), String> {
            batch.push(Checked {
                place,
                head: head_of(bytes),
                leaf: merkle::leaf_hash(bytes),
            });
            if batch.len() == 4096 {
                let full = std::mem::replace(&mut batch, Vec::with_capacity(4096));
                // A closed channel: the checker stopped at an error, and says which.
                sender.send(full).map_err(|_| String::new())?;
            }
            Ok(())
        };
        let read = read_all(audit_dir, tiles, single_file, &mut each);
        if !batch.is_empty() {
            let _ = sender.send(batch);
        }
        drop(sender);
        let checked = checker
            .join()
            .map_err(|_| "the checker thread failed".to_string())?;
        // The checker's error names the first wrong thing; a read error
        // otherwise.
        let checked = checked?;
        read?;
        Ok(checked)
    })?;
    if let Some((size, expected)) = wanted.range(tree.size() + 1..).next() {
        return Err(format!(
            "{} covers {size} entries but the log holds {}: entries were removed from its end",
            expected[0].0,
            tree.size()
        ));
    }
    let covered = good_below.last().copied().unwrap_or(0);
    Ok(LogReport {
        entries: tree.size(),
        checkpoints: notes.len(),
        newest_checkpoint: covered,
        unsigned: (covered < tree.size()).then(|| (covered, tree.size() - 1)),
    })
}

/// Called with each entry: (where it is, its bytes).
type Each<'a> = dyn FnMut(Place, &[u8]) -> Result<(), String> + 'a;

/// Where an entry is (named only in errors).
#[derive(Debug, Clone, Copy)]
enum Place {
    /// Byte offset in the single-file layout.
    Byte(u64),
    /// Entry bundle of tile N, item I.
    Bundle(u64, usize),
    /// Journal of tile N, byte offset.
    Journal(u64, u64),
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Place::Byte(offset) => write!(f, "byte {offset}"),
            Place::Bundle(n, i) => write!(f, "{} item {i}", tiles::entries_path(*n, WIDTH)),
            Place::Journal(n, offset) => write!(f, "journal {n} byte {offset}"),
        }
    }
}

/// Every entry in order, as (where, bytes): the single-file layout, or the
/// entry bundles and then the journals.
fn read_all(
    audit_dir: &Path,
    tiles: &TileReader,
    single_file: bool,
    each: &mut Each,
) -> Result<(), String> {
    if single_file {
        let path = audit_dir.join(ENTRIES);
        let length = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let kept = scan_records(&path, |offset, bytes| each(Place::Byte(offset), bytes))?;
        if kept < length {
            return Err(format!(
                "the log ends inside a record at byte {kept}: truncated or damaged"
            ));
        }
        return Ok(());
    }
    let mut n = 0u64;
    while tiles.has_bundle(n) {
        for (i, bytes) in tiles.bundle(n)?.iter().enumerate() {
            each(Place::Bundle(n, i), bytes)?;
        }
        n += 1;
    }
    for j in super::journals(audit_dir).map_err(|e| format!("list the journal: {e}"))? {
        if j < n {
            continue; // a full tile's journal a crash left; the start removes it
        }
        if j != n {
            return Err(format!(
                "journal {j} does not follow the {n} full tiles: a tile is missing"
            ));
        }
        let path = super::journal_path(audit_dir, j);
        let length = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let kept = scan_records(&path, |offset, bytes| {
            each(Place::Journal(j, offset), bytes)
        })?;
        if kept < length {
            return Err(format!(
                "journal {j} ends inside a record at byte {kept}: truncated or damaged"
            ));
        }
        n += 1;
    }
    Ok(())
}

/// One entry as the reading stage saw it.
struct Checked {
    place: Place,
    /// (seq, prev) or why the entry does not parse.
    head: Result<(u64, Option<Hash>), String>,
    leaf: Hash,
}

/// The entry's `seq` and `prev` (None for an empty prev), read directly when
/// the host's layout is there, else parsed.
fn head_of(bytes: &[u8]) -> Result<(u64, Option<Hash>), String> {
    let parsed;
    let (seq, prev) = match fast_head(bytes) {
        Some(head) => head,
        None => {
            parsed = serde_json::from_slice::<EntryHead>(bytes).map_err(|e| e.to_string())?;
            (parsed.seq, parsed.prev)
        }
    };
    if prev.is_empty() {
        return Ok((seq, None));
    }
    let hash = decode_prev(prev).ok_or_else(|| "prev is not a SHA-256 in hex".to_string())?;
    Ok((seq, Some(hash)))
}

fn decode_prev(hex: &str) -> Option<Hash> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks(2).enumerate() {
        out[i] = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}

/// `{"seq":N,"at":T,"prev":"HEX"` at the start of an entry, as the host
/// writes it: (seq, prev).
fn fast_head(bytes: &[u8]) -> Option<(u64, &str)> {
    let rest = bytes.strip_prefix(b"{\"seq\":")?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let seq: u64 = std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()?;
    let rest = rest[digits..].strip_prefix(b",\"at\":")?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let rest = rest[digits..].strip_prefix(b",\"prev\":\"")?;
    let end = rest.iter().position(|b| *b == b'"')?;
    let prev = std::str::from_utf8(&rest[..end]).ok()?;
    Some((seq, prev))
}

/// A tenant's proof bundle (`GET /v1/tenants/{id}/audit-proof`).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bundle {
    pub format: u32,
    pub tenant: String,
    pub origin: String,
    pub verifier_key: String,
    /// The signed checkpoint the proofs are against.
    pub checkpoint: String,
    pub size: u64,
    pub entries: Vec<BundleEntry>,
    #[serde(default)]
    pub consistency: Vec<Consistency>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleEntry {
    pub seq: u64,
    /// The entry's exact bytes, base64.
    pub entry: String,
    /// Inclusion proof, hex hashes.
    pub proof: Vec<String>,
}

/// From a tree size the tenant saw before to this bundle's.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Consistency {
    pub from: u64,
    pub root: String,
    pub proof: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct BundleReport {
    pub tenant: String,
    pub entries: usize,
    pub size: u64,
    pub consistency: usize,
}

fn hash_of(text: &str) -> Option<Hash> {
    decode_hex(text).and_then(|b| b.try_into().ok())
}

/// Checks a bundle against the host's published key: the checkpoint's
/// signature, every entry's inclusion, that the entries are the tenant's and
/// chain without a gap, and every consistency proof. `previous` is a root the
/// tenant recorded earlier, as (size, root): it must be among the proofs.
pub fn verify_bundle(
    bundle: &Bundle,
    verifier: &Verifier,
    previous: Option<(u64, Hash)>,
) -> Result<BundleReport, String> {
    let checkpoint = verifier
        .open(&bundle.checkpoint)
        .map_err(|e| format!("checkpoint: {e}"))?;
    if checkpoint.size != bundle.size {
        return Err(format!(
            "the bundle says size {}, its checkpoint {}",
            bundle.size, checkpoint.size
        ));
    }
    let mut last_seq: Option<u64> = None;
    for (i, item) in bundle.entries.iter().enumerate() {
        let bytes = B64
            .decode(&item.entry)
            .map_err(|_| format!("entry {} (item {i}) is not base64", item.seq))?;
        let entry: Entry = serde_json::from_slice(&bytes)
            .map_err(|e| format!("entry {} is not a valid entry: {e}", item.seq))?;
        if entry.seq != item.seq || entry.tenant.as_deref() != Some(bundle.tenant.as_str()) {
            return Err(format!(
                "entry {} is not this tenant's entry {}",
                entry.seq, item.seq
            ));
        }
        if entry.tenant_prev != last_seq {
            return Err(format!(
                "entry {} follows the tenant's entry {:?}, the bundle's previous is {:?}: an entry is missing",
                entry.seq, entry.tenant_prev, last_seq
            ));
        }
        let proof: Vec<Hash> = item
            .proof
            .iter()
            .map(|h| hash_of(h))
            .collect::<Option<_>>()
            .ok_or_else(|| format!("entry {}: malformed proof", item.seq))?;
        if !merkle::verify_inclusion(
            &merkle::leaf_hash(&bytes),
            item.seq,
            bundle.size,
            &proof,
            &checkpoint.root,
        ) {
            return Err(format!(
                "entry {} is not in the signed tree of size {}",
                item.seq, bundle.size
            ));
        }
        last_seq = Some(entry.seq);
    }
    for c in &bundle.consistency {
        let old = hash_of(&c.root).ok_or("malformed consistency root")?;
        let proof: Vec<Hash> = c
            .proof
            .iter()
            .map(|h| hash_of(h))
            .collect::<Option<_>>()
            .ok_or("malformed consistency proof")?;
        if !merkle::verify_consistency(c.from, bundle.size, &proof, &old, &checkpoint.root) {
            return Err(format!(
                "the tree of size {} is not a prefix of the signed tree of size {}",
                c.from, bundle.size
            ));
        }
    }
    if let Some((size, root)) = previous {
        let matched = bundle
            .consistency
            .iter()
            .any(|c| c.from == size && hash_of(&c.root) == Some(root))
            || (size == bundle.size && root == checkpoint.root);
        if !matched {
            return Err(format!(
                "the root you saw at size {size} is not proven consistent with this bundle (log rewritten?)"
            ));
        }
    }
    Ok(BundleReport {
        tenant: bundle.tenant.clone(),
        entries: bundle.entries.len(),
        size: bundle.size,
        consistency: bundle.consistency.len(),
    })
}
