//! What a start does: find the log's size from its bundles and journals,
//! finish the tiles a crash left, rebuild the right edge, read the entries
//! after `heads`, and check the newest checkpoint against the tiles.

use super::*;

/// The log as a start finds it.
pub(super) struct Found {
    pub(super) tree: Frontier,
    pub(super) last: Option<Hash>,
    pub(super) journal_len: u64,
    pub(super) tenant_last: HashMap<TenantId, u64>,
    pub(super) read: u64,
}

/// Finds the log's size from its bundles and journals, finishes the tiles a
/// crash left unwritten, rebuilds the right edge, and reads the entries after
/// `heads` (all of them when `heads` is missing).
pub(super) fn load(dir: &Path, tiles: &TileReader) -> Result<Found, String> {
    let heads: Option<Heads> = std::fs::read(dir.join(HEADS))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    // Full bundles run from 0 without a gap; start looking at heads'.
    let mut full = heads.as_ref().map_or(0, |h| h.size / WIDTH as u64);
    while full > 0 && !tiles.has_bundle(full - 1) {
        full -= 1;
    }
    while tiles.has_bundle(full) {
        full += 1;
    }
    // Journals of full tiles are what a crash left between writing the tiles
    // and removing the journal; a full journal, one a crash left before its
    // tiles were written. Finish both.
    let mut tail: Vec<Vec<u8>> = Vec::new();
    let mut journal_len = 0;
    for n in journals(dir).map_err(|e| format!("list the audit journal: {e}"))? {
        let (entries, kept) = read_journal(dir, n)?;
        if n < full || entries.len() == WIDTH {
            if n > full {
                return Err(format!(
                    "journal {n} follows tile {full}: a tile is missing"
                ));
            }
            if entries.len() != WIDTH {
                return Err(format!(
                    "journal {n} of a full tile holds {} entries",
                    entries.len()
                ));
            }
            finish_tile(tiles, n, &entries)?;
            full = full.max(n + 1);
            std::fs::remove_file(journal_path(dir, n))
                .map_err(|e| format!("remove journal {n}: {e}"))?;
            continue;
        }
        if n != full {
            return Err(format!("journal {n} does not follow the {full} full tiles"));
        }
        let on_disk = std::fs::metadata(journal_path(dir, n))
            .map(|m| m.len())
            .unwrap_or(0);
        if kept < on_disk {
            // A torn last record: never acknowledged, never in a checkpoint.
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(journal_path(dir, n))
                .map_err(|e| e.to_string())?;
            file.set_len(kept)
                .and_then(|_| file.sync_all())
                .map_err(|e| e.to_string())?;
            tracing::warn!(
                bytes = on_disk - kept,
                "removed a torn audit record left by a crash"
            );
        }
        tail = entries;
        journal_len = kept;
    }
    let size = full * WIDTH as u64 + tail.len() as u64;
    // The tail chains on from the last full tile.
    let mut last = match full {
        0 => None,
        n => Some(tiles.tile(0, n - 1)?.bottom()[WIDTH - 1]),
    };
    let mut leaves = Vec::with_capacity(tail.len());
    for (i, bytes) in tail.iter().enumerate() {
        let at = full * WIDTH as u64 + i as u64;
        let head: EntryHead = serde_json::from_slice(bytes)
            .map_err(|e| format!("audit entry {at} is not valid: {e}"))?;
        let expected = last.map(|h| crypto::encode_hex(&h)).unwrap_or_default();
        if head.seq != at || head.prev != expected {
            return Err(format!(
                "audit entry {at} does not follow entry {}: the log was altered",
                at.saturating_sub(1)
            ));
        }
        let leaf = merkle::leaf_hash(bytes);
        leaves.push(leaf);
        last = Some(leaf);
    }
    let tree = Frontier::rebuild(tiles, size, leaves)?;
    // Each tenant's last entry: heads, then what came after it.
    let (mut tenant_last, from) = match heads.filter(|h| h.size <= size) {
        Some(h) => (
            h.tenants
                .into_iter()
                .filter_map(|(t, s)| Some((TenantId::parse(&t)?, s)))
                .collect(),
            h.size,
        ),
        None => {
            if size > 0 {
                tracing::warn!(entries = size, "no audit heads: reading the whole log once");
            }
            (HashMap::new(), 0)
        }
    };
    let mut note = |seq: u64, bytes: &[u8]| -> Result<(), String> {
        let head: EntryHead = serde_json::from_slice(bytes)
            .map_err(|e| format!("audit entry {seq} is not valid: {e}"))?;
        if let Some(tenant) = head.tenant.and_then(TenantId::parse) {
            tenant_last.insert(tenant, seq);
        }
        Ok(())
    };
    for n in from / WIDTH as u64..full {
        for (i, bytes) in tiles.bundle(n)?.iter().enumerate() {
            let seq = n * WIDTH as u64 + i as u64;
            if seq >= from {
                note(seq, bytes)?;
            }
        }
    }
    for (i, bytes) in tail.iter().enumerate() {
        let seq = full * WIDTH as u64 + i as u64;
        if seq >= from {
            note(seq, bytes)?;
        }
    }
    Ok(Found {
        tree,
        last,
        journal_len,
        tenant_last,
        read: size - from,
    })
}

/// Writes full tile `n` from its journal's entries, and every higher tile
/// that it completes (from the tiles below it).
pub(super) fn finish_tile(tiles: &TileReader, n: u64, entries: &[Vec<u8>]) -> Result<(), String> {
    let leaves: Vec<Hash> = entries.iter().map(|e| merkle::leaf_hash(e)).collect();
    tiles
        .write_full(0, n, &leaves, Some(entries))
        .map_err(|e| format!("write tile 0/{n}: {e}"))?;
    let (mut level, mut index) = (0u32, n);
    while index % WIDTH as u64 == WIDTH as u64 - 1 {
        let first = index - (WIDTH as u64 - 1);
        let roots = (first..=index)
            .map(|i| Ok(tiles.tile(level, i)?.root().expect("a full tile")))
            .collect::<Result<Vec<Hash>, String>>()?;
        level += 1;
        index /= WIDTH as u64;
        tiles
            .write_full(level, index, &roots, None)
            .map_err(|e| format!("write tile {level}/{index}: {e}"))?;
    }
    Ok(())
}

/// The newest checkpoint, checked: signed by this log's key, not larger than
/// the log, and its root the tiles' root at its size. Returns its size.
pub(super) fn check_newest_checkpoint(
    dir: &Path,
    tiles: &TileReader,
    tree: &Frontier,
    verifier: &note::Verifier,
) -> Result<u64, String> {
    let note = match std::fs::read_to_string(dir.join(CHECKPOINT)) {
        Ok(note) => note,
        Err(_) => match latest_checkpoint_size(dir) {
            0 => return Ok(0),
            size => std::fs::read_to_string(dir.join(CHECKPOINTS).join(checkpoint_name(size)))
                .map_err(|e| format!("read checkpoint {size}: {e}"))?,
        },
    };
    let checkpoint = verifier
        .open(&note)
        .map_err(|e| format!("the newest audit checkpoint: {e}"))?;
    if checkpoint.size > tree.size() {
        return Err(format!(
            "the newest audit checkpoint covers {} entries, the log holds {}: entries were removed",
            checkpoint.size,
            tree.size()
        ));
    }
    let root = merkle::root(&View::new(tiles, tree), checkpoint.size)?;
    if root != checkpoint.root {
        return Err(format!(
            "the audit log does not match its newest checkpoint (size {}): it was altered",
            checkpoint.size
        ));
    }
    if !dir
        .join(CHECKPOINTS)
        .join(checkpoint_name(checkpoint.size))
        .exists()
    {
        tiles::write_whole(
            &dir.join(CHECKPOINTS).join(checkpoint_name(checkpoint.size)),
            note.as_bytes(),
            true,
        )
        .map_err(|e| e.to_string())?;
    }
    Ok(checkpoint.size)
}
