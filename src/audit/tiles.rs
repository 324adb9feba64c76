//! The audit log's tree on disk in the C2SP tlog-tiles layout, and the
//! journal that holds the entries of the tile being filled.
//!
//! ```text
//! tile/<L>/<N>[.p/<W>]      level L: the tree's nodes at height 8·L, 256 to
//!                           a full tile, 32 bytes each (tile/0: leaf hashes)
//! tile/entries/<N>[.p/<W>]  the entries of level-0 tile N: [u16 length][bytes] …
//! journal/<N>               the entries of tile N while it fills:
//!                           [u32 length][bytes] …, synced by group commit
//! ```
//!
//! `<N>` is written in groups of three digits, all but the last prefixed with
//! `x` (1234067 → `x001/x234/067`). Full tiles are written once, when their
//! last entry is durable, and never change; partial tiles (`.p/<W>`) are
//! written for each signed checkpoint, so the directory is a complete
//! tlog-tiles log at the checkpoint's size. Memory holds only the tree's
//! right edge ([`Frontier`]: at most 255 hashes per level) and a small cache
//! of full tiles; every other hash is read from its tile.

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::merkle::{self, Hash, Nodes};

/// Hashes in a full tile, and the tile's height.
pub const WIDTH: usize = 256;
pub const HEIGHT: u32 = 8;
/// Entry bundles store lengths as 16 bits.
pub const MAX_ENTRY: usize = u16::MAX as usize;
pub const JOURNAL: &str = "journal";
/// Full tiles the reader keeps (each with its inner nodes: 16 KiB).
const CACHED_TILES: usize = 64;

/// `<N>` of a tile path.
pub fn index_path(n: u64) -> String {
    let mut parts = vec![format!("{:03}", n % 1000)];
    let mut rest = n / 1000;
    while rest > 0 {
        parts.push(format!("x{:03}", rest % 1000));
        rest /= 1000;
    }
    parts.reverse();
    parts.join("/")
}

fn partial_suffix(width: usize) -> String {
    if width == WIDTH {
        String::new()
    } else {
        format!(".p/{width}")
    }
}

/// `tile/<L>/<N>[.p/<W>]`.
pub fn tile_path(level: u32, n: u64, width: usize) -> String {
    format!("tile/{level}/{}{}", index_path(n), partial_suffix(width))
}

/// `tile/entries/<N>[.p/<W>]`.
pub fn entries_path(n: u64, width: usize) -> String {
    format!("tile/entries/{}{}", index_path(n), partial_suffix(width))
}

/// A tile's hashes and every complete node above them inside the tile.
#[derive(Debug, Clone)]
pub struct TileTree {
    rows: Vec<Vec<Hash>>,
}

impl TileTree {
    pub fn new(bottom: Vec<Hash>) -> TileTree {
        let mut rows = vec![bottom];
        while rows.last().is_some_and(|r| r.len() > 1) {
            let below = rows.last().expect("a row");
            let row = below
                .chunks_exact(2)
                .map(|pair| merkle::node_hash(&pair[0], &pair[1]))
                .collect();
            rows.push(row);
        }
        TileTree { rows }
    }

    /// The node `k` levels above the tile's bottom, `j`-th from the left.
    fn get(&self, k: u32, j: u64) -> Option<Hash> {
        self.rows.get(k as usize)?.get(j as usize).copied()
    }

    /// The root of a full tile.
    pub fn root(&self) -> Option<Hash> {
        (self.rows[0].len() == WIDTH).then(|| self.rows[HEIGHT as usize][0])
    }

    pub fn bottom(&self) -> &[Hash] {
        &self.rows[0]
    }
}

/// The right edge of a tree: per level, the complete subtrees of height
/// 8·level not yet in a full tile of that level.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Frontier {
    size: u64,
    rows: Vec<Vec<Hash>>,
}

/// A tile a leaf completed: (level, index, its 256 hashes).
pub type FullTile = (u32, u64, Vec<Hash>);

impl Frontier {
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Full tiles at `level`.
    pub fn full_tiles(&self, level: u32) -> u64 {
        full_tiles(self.size, level)
    }

    pub fn row(&self, level: u32) -> &[Hash] {
        self.rows.get(level as usize).map_or(&[], |r| r.as_slice())
    }

    /// Adds a leaf; returns the tiles it completed, lowest first.
    pub fn push(&mut self, leaf: Hash) -> Vec<FullTile> {
        self.size += 1;
        let mut done = Vec::new();
        let (mut level, mut hash) = (0u32, leaf);
        loop {
            if self.rows.len() <= level as usize {
                self.rows.push(Vec::new());
            }
            let row = &mut self.rows[level as usize];
            row.push(hash);
            if row.len() < WIDTH {
                return done;
            }
            let full = std::mem::take(row);
            hash = TileTree::new(full.clone()).root().expect("a full tile");
            done.push((level, full_tiles(self.size, level) - 1, full));
            level += 1;
        }
    }

    /// Rebuilds the right edge of a tree of `size` leaves from its full tiles
    /// and the leaves after the last full level-0 tile.
    pub fn rebuild(tiles: &TileReader, size: u64, tail: Vec<Hash>) -> Result<Frontier, String> {
        if tail.len() as u64 != size % WIDTH as u64 {
            return Err(format!(
                "{} entries after the last full tile, a tree of {size} has {}",
                tail.len(),
                size % WIDTH as u64
            ));
        }
        let mut rows = vec![tail];
        let mut level = 1;
        while size >> (HEIGHT * level) > 0 {
            // Complete subtrees of height 8·level: roots of level-1 tiles.
            let below = full_tiles(size, level - 1);
            let first = below - below % WIDTH as u64;
            let mut row = Vec::with_capacity((below - first) as usize);
            for n in first..below {
                row.push(tiles.tile(level - 1, n)?.root().expect("a full tile"));
            }
            rows.push(row);
            level += 1;
        }
        Ok(Frontier { size, rows })
    }
}

fn full_tiles(size: u64, level: u32) -> u64 {
    let shift = HEIGHT * (level + 1);
    if shift >= 64 {
        0
    } else {
        size >> shift
    }
}

/// The nodes of a tree: full tiles from disk, the rest from its frontier.
pub struct View<'a> {
    tiles: &'a TileReader,
    frontier: &'a Frontier,
    partial: Vec<TileTree>,
}

impl<'a> View<'a> {
    pub fn new(tiles: &'a TileReader, frontier: &'a Frontier) -> View<'a> {
        let partial = frontier
            .rows
            .iter()
            .map(|r| TileTree::new(r.clone()))
            .collect();
        View {
            tiles,
            frontier,
            partial,
        }
    }
}

impl Nodes for View<'_> {
    fn node(&self, height: u32, index: u64) -> Result<Hash, String> {
        let (level, k) = (height / HEIGHT, height % HEIGHT);
        let first = index << k;
        let (tile, j) = (first / WIDTH as u64, (first % WIDTH as u64) >> k);
        let full = self.frontier.full_tiles(level);
        let found = if tile < full {
            self.tiles.tile(level, tile)?.get(k, j)
        } else if tile == full {
            self.partial.get(level as usize).and_then(|t| t.get(k, j))
        } else {
            None
        };
        found.ok_or_else(|| {
            format!(
                "node {height}/{index} is outside the tree of {}",
                self.frontier.size
            )
        })
    }
}

/// Cached tiles by (level, index), and the order they came in.
type Cache = (HashMap<(u32, u64), Arc<TileTree>>, VecDeque<(u32, u64)>);

/// Reads full tiles (kept in a small cache: full tiles never change) and
/// writes them.
pub struct TileReader {
    dir: PathBuf,
    cache: Mutex<Cache>,
}

impl TileReader {
    pub fn new(dir: &Path) -> TileReader {
        TileReader {
            dir: dir.to_path_buf(),
            cache: Mutex::new((HashMap::new(), VecDeque::new())),
        }
    }

    pub fn path(&self, relative: &str) -> PathBuf {
        self.dir.join(relative)
    }

    /// The full tile `n` of `level`, read and checked for length.
    pub fn tile(&self, level: u32, n: u64) -> Result<Arc<TileTree>, String> {
        if let Some(tree) = self.cache.lock().expect("tile cache").0.get(&(level, n)) {
            return Ok(tree.clone());
        }
        let relative = tile_path(level, n, WIDTH);
        let bytes =
            std::fs::read(self.path(&relative)).map_err(|e| format!("read {relative}: {e}"))?;
        if bytes.len() != WIDTH * 32 {
            return Err(format!(
                "{relative} holds {} bytes, a full tile {}",
                bytes.len(),
                WIDTH * 32
            ));
        }
        let bottom = bytes
            .chunks_exact(32)
            .map(|c| c.try_into().expect("32 bytes"))
            .collect();
        let tree = Arc::new(TileTree::new(bottom));
        let mut cache = self.cache.lock().expect("tile cache");
        if cache.0.insert((level, n), tree.clone()).is_none() {
            cache.1.push_back((level, n));
        }
        while cache.1.len() > CACHED_TILES {
            if let Some(old) = cache.1.pop_front() {
                cache.0.remove(&old);
            }
        }
        Ok(tree)
    }

    /// Whether the full entry bundle of tile `n` is there.
    pub fn has_bundle(&self, n: u64) -> bool {
        self.path(&entries_path(n, WIDTH)).is_file()
    }

    /// The 256 entries of full tile `n`.
    pub fn bundle(&self, n: u64) -> Result<Vec<Vec<u8>>, String> {
        let relative = entries_path(n, WIDTH);
        let bytes =
            std::fs::read(self.path(&relative)).map_err(|e| format!("read {relative}: {e}"))?;
        let entries =
            parse_bundle(&bytes).ok_or_else(|| format!("{relative} is not an entry bundle"))?;
        if entries.len() != WIDTH {
            return Err(format!(
                "{relative} holds {} entries, a full bundle {WIDTH}",
                entries.len()
            ));
        }
        Ok(entries)
    }

    /// Writes a full tile and its entry bundle (level 0), or a full tile of a
    /// higher level; each file whole (written aside, synced, renamed).
    pub fn write_full(
        &self,
        level: u32,
        n: u64,
        hashes: &[Hash],
        entries: Option<&[Vec<u8>]>,
    ) -> std::io::Result<()> {
        if let Some(entries) = entries {
            write_whole(
                &self.path(&entries_path(n, WIDTH)),
                &bundle_bytes(entries),
                true,
            )?;
        }
        write_whole(
            &self.path(&tile_path(level, n, WIDTH)),
            &hashes.concat(),
            true,
        )?;
        // The partial tiles of `n` are superseded.
        let partials = self.path(&format!("{}.p", tile_path(level, n, WIDTH)));
        let _ = std::fs::remove_dir_all(partials);
        if entries.is_some() {
            let _ = std::fs::remove_dir_all(self.path(&format!("{}.p", entries_path(n, WIDTH))));
        }
        Ok(())
    }

    /// Writes the partial tiles of a tree (the right edge at a checkpoint),
    /// and the partial entry bundle from `tail` (the entries after the last
    /// full tile).
    pub fn write_partials(&self, frontier: &Frontier, tail: &[Vec<u8>]) -> std::io::Result<()> {
        for (level, row) in frontier.rows.iter().enumerate() {
            if row.is_empty() {
                continue;
            }
            let n = frontier.full_tiles(level as u32);
            write_whole(
                &self.path(&tile_path(level as u32, n, row.len())),
                &row.concat(),
                false,
            )?;
            if level == 0 {
                write_whole(
                    &self.path(&entries_path(n, row.len())),
                    &bundle_bytes(tail),
                    false,
                )?;
            }
        }
        Ok(())
    }
}

/// `[u16 big-endian length][bytes] …`.
pub fn bundle_bytes(entries: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.iter().map(|e| e.len() + 2).sum());
    for entry in entries {
        out.extend_from_slice(&(entry.len() as u16).to_be_bytes());
        out.extend_from_slice(entry);
    }
    out
}

pub fn parse_bundle(mut bytes: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let (len, rest) = bytes.split_first_chunk::<2>()?;
        let len = u16::from_be_bytes(*len) as usize;
        if rest.len() < len {
            return None;
        }
        out.push(rest[..len].to_vec());
        bytes = &rest[len..];
    }
    Some(out)
}

/// Writes `bytes` to `path` whole: aside, (synced,) renamed, (directory synced).
pub fn write_whole(path: &Path, bytes: &[u8], durable: bool) -> std::io::Result<()> {
    let dir = path.parent().expect("tile paths have a parent");
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().expect("a file name").to_string_lossy()
    ));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    if durable {
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if durable {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tile_paths_follow_c2sp() {
        assert_eq!(index_path(0), "000");
        assert_eq!(index_path(999), "999");
        assert_eq!(index_path(1000), "x001/000");
        assert_eq!(index_path(1234067), "x001/x234/067");
        assert_eq!(tile_path(0, 1234067, WIDTH), "tile/0/x001/x234/067");
        assert_eq!(tile_path(1, 3, 8), "tile/1/003.p/8");
        assert_eq!(entries_path(1234067, 17), "tile/entries/x001/x234/067.p/17");
    }

    #[test]
    fn bundles_round_trip_and_bad_ones_are_refused() {
        let entries = vec![b"".to_vec(), b"{\"seq\":1}".to_vec(), vec![7u8; 300]];
        let bytes = bundle_bytes(&entries);
        assert_eq!(&bytes[..2], &[0, 0]);
        assert_eq!(parse_bundle(&bytes).unwrap(), entries);
        assert!(parse_bundle(&bytes[..bytes.len() - 1]).is_none());
    }

    /// Every node the tiles and the frontier give equals the in-memory
    /// tree's, across tile boundaries at levels 0 and 1 (65,536 leaves).
    #[test]
    fn a_tiled_tree_gives_the_same_nodes_roots_and_proofs_as_one_in_memory() {
        let dir = std::env::temp_dir().join(format!("coffer-tiles-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let tiles = TileReader::new(&dir);
        let mut frontier = Frontier::default();
        let mut tree = merkle::Tree::new();
        let total = 2 * 65_536 + 3 * 256 + 5;
        let mut checked = 0;
        for i in 0..total as u32 {
            let leaf = merkle::leaf_hash(&i.to_be_bytes());
            tree.push(leaf);
            for (level, n, hashes) in frontier.push(leaf) {
                tiles.write_full(level, n, &hashes, None).unwrap();
            }
            let size = i as u64 + 1;
            // Sizes at and around tile edges, and a few others.
            let edge = size % 256 <= 1 || size % 65_536 <= 1 || size % 9_973 == 0;
            if edge || size == total {
                let view = View::new(&tiles, &frontier);
                assert_eq!(
                    merkle::root(&view, size).unwrap(),
                    tree.root(size),
                    "{size}"
                );
                for m in [0, size / 3, size - 1] {
                    assert_eq!(
                        merkle::inclusion_proof(&view, m, size).unwrap(),
                        tree.inclusion_proof(m, size),
                        "leaf {m} of {size}"
                    );
                }
                for m in [1, size / 2, size.saturating_sub(257)] {
                    if m >= 1 {
                        assert_eq!(
                            merkle::consistency_proof(&view, m, size).unwrap(),
                            tree.consistency_proof(m, size),
                            "{m} to {size}"
                        );
                    }
                }
                checked += 1;
            }
        }
        assert!(checked > 500);
        // A frontier rebuilt from the tiles and the tail equals the live one.
        let tail: Vec<Hash> = (total - total % 256..total)
            .map(|i| merkle::leaf_hash(&(i as u32).to_be_bytes()))
            .collect();
        let rebuilt = Frontier::rebuild(&tiles, total, tail).unwrap();
        assert_eq!(rebuilt, frontier);
        // An older size is served from the same tiles and today's frontier.
        let view = View::new(&tiles, &frontier);
        assert_eq!(merkle::root(&view, 70_000).unwrap(), tree.root(70_000));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
