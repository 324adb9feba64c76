//! Moves a log in the single-file layout of earlier versions (`entries`:
//! `[u32 length][entry JSON] …`) into tiles, once, at the first start.
//!
//! Crash-safe by a marker: `migrating` is written (and synced) before
//! anything else, the old file is removed only when every tile, the journal
//! and `heads` are durable, and the marker last. A start that finds the old
//! file and the marker throws away the half-written tiles and begins again; a
//! start that finds the old file and tiles without the marker refuses (two
//! logs, and no way to tell which is the host's).

use std::collections::HashMap;
use std::path::Path;

use super::tiles::{self, Frontier, TileReader, JOURNAL, WIDTH};
use super::{merkle, scan_records, EntryHead, Heads, ENTRIES, HEADS};
use crate::crypto;

const MARKER: &str = "migrating";

/// Migrates `audit_dir` if it holds a single-file log; returns how many
/// entries moved (0 when there was nothing to do).
pub fn run(audit_dir: &Path) -> Result<u64, String> {
    let old = audit_dir.join(ENTRIES);
    if !old.exists() {
        return Ok(0);
    }
    let marker = audit_dir.join(MARKER);
    let tile_dir = audit_dir.join("tile");
    let started = tile_dir.exists() || has_journals(audit_dir);
    if started && !marker.exists() {
        return Err(format!(
            "{} holds both a single-file audit log ({ENTRIES}) and tiles: move one away",
            audit_dir.display()
        ));
    }
    tracing::info!("moving the audit log into tiles (once)");
    tiles::write_whole(&marker, b"single-file log to tiles\n", true)
        .map_err(io("write the marker"))?;
    for dir in [tile_dir.clone(), audit_dir.join(JOURNAL)] {
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("clear {}: {e}", dir.display())),
        }
    }
    let _ = std::fs::remove_file(audit_dir.join(HEADS));
    std::fs::create_dir_all(audit_dir.join(JOURNAL)).map_err(io("create the journal"))?;

    let tiles = TileReader::new(audit_dir);
    let mut tree = Frontier::default();
    let mut last: Option<merkle::Hash> = None;
    let mut tenants: HashMap<String, u64> = HashMap::new();
    let mut filling: Vec<Vec<u8>> = Vec::with_capacity(WIDTH);
    let length = std::fs::metadata(&old).map(|m| m.len()).unwrap_or(0);
    let kept = scan_records(&old, |_, bytes| {
        let at = tree.size();
        let head: EntryHead = serde_json::from_slice(bytes)
            .map_err(|e| format!("audit entry {at} is not valid: {e}"))?;
        let expected = last.map(|h| crypto::encode_hex(&h)).unwrap_or_default();
        if head.seq != at || head.prev != expected {
            return Err(format!(
                "audit entry {at} does not follow entry {}: the log was altered",
                at.saturating_sub(1)
            ));
        }
        if bytes.len() > tiles::MAX_ENTRY {
            return Err(format!(
                "audit entry {at} is {} bytes, more than a tile holds",
                bytes.len()
            ));
        }
        if let Some(tenant) = head.tenant {
            tenants.insert(tenant.to_string(), at);
        }
        let leaf = merkle::leaf_hash(bytes);
        last = Some(leaf);
        filling.push(bytes.to_vec());
        for (level, n, hashes) in tree.push(leaf) {
            let entries = (level == 0).then(|| std::mem::take(&mut filling));
            tiles
                .write_full(level, n, &hashes, entries.as_deref())
                .map_err(|e| format!("write tile {level}/{n}: {e}"))?;
        }
        Ok(())
    })?;
    if kept < length {
        // A torn last record: never acknowledged, never in a checkpoint.
        tracing::warn!(
            bytes = length - kept,
            "left out a torn audit record a crash left"
        );
    }
    // The entries of the tile being filled go to its journal.
    let mut journal = Vec::new();
    for entry in &filling {
        journal.extend_from_slice(&(entry.len() as u32).to_be_bytes());
        journal.extend_from_slice(entry);
    }
    if !filling.is_empty() {
        let path = super::journal_path(audit_dir, tree.full_tiles(0));
        tiles::write_whole(&path, &journal, true).map_err(io("write the journal"))?;
    }
    let heads = serde_json::to_vec(&Heads {
        size: tree.size(),
        tenants,
    })
    .expect("heads serialise");
    tiles::write_whole(&audit_dir.join(HEADS), &heads, true).map_err(io("write heads"))?;
    std::fs::remove_file(&old).map_err(io("remove the single-file log"))?;
    sync_dir(audit_dir)?;
    std::fs::remove_file(&marker).map_err(io("remove the marker"))?;
    sync_dir(audit_dir)?;
    tracing::info!(entries = tree.size(), "audit log moved into tiles");
    Ok(tree.size())
}

fn has_journals(audit_dir: &Path) -> bool {
    super::journals(audit_dir).is_ok_and(|j| !j.is_empty())
}

fn sync_dir(dir: &Path) -> Result<(), String> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| format!("sync {}: {e}", dir.display()))
}

fn io(what: &'static str) -> impl Fn(std::io::Error) -> String {
    move |e| format!("{what}: {e}")
}
