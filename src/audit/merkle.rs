//! The Merkle tree of RFC 9162 (Certificate Transparency v2), section 2.1:
//! SHA-256, leaves hashed with a 0x00 prefix, interior nodes with 0x01.
//! Tree heads, inclusion proofs and consistency proofs, and their
//! verification (the RFC's algorithms, written apart from the generators so
//! that each checks the other). No I/O.

use ring::digest::{Context, SHA256};

pub type Hash = [u8; 32];

pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut ctx = Context::new(&SHA256);
    ctx.update(&[0x00]);
    ctx.update(data);
    ctx.finish()
        .as_ref()
        .try_into()
        .expect("SHA-256 is 32 bytes")
}

pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut ctx = Context::new(&SHA256);
    ctx.update(&[0x01]);
    ctx.update(left);
    ctx.update(right);
    ctx.finish()
        .as_ref()
        .try_into()
        .expect("SHA-256 is 32 bytes")
}

/// The hash of the empty tree.
pub fn empty_root() -> Hash {
    ring::digest::digest(&SHA256, b"")
        .as_ref()
        .try_into()
        .expect("SHA-256 is 32 bytes")
}

/// The largest power of two smaller than `n` (n ≥ 2).
pub fn split(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1 << (63 - (n - 1).leading_zeros())
}

/// Levels cached by [`Tree`]: every complete, aligned subtree whose height is
/// a multiple of this is kept, so any node costs at most 2^CACHE_STEP hashes.
const CACHE_STEP: u32 = 4;

/// An append-only tree over leaf hashes, with cached subtree hashes so that
/// tree heads and proofs cost O(log n · 2^CACHE_STEP) hashes.
#[derive(Debug, Default, Clone)]
pub struct Tree {
    leaves: Vec<Hash>,
    /// `cached[i]` holds the complete subtrees of height (i + 1) · CACHE_STEP.
    cached: Vec<Vec<Hash>>,
}

impl Tree {
    pub fn new() -> Tree {
        Tree::default()
    }

    pub fn len(&self) -> u64 {
        self.leaves.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.leaves.is_empty()
    }

    pub fn leaf(&self, index: u64) -> Option<&Hash> {
        self.leaves.get(index as usize)
    }

    pub fn push(&mut self, leaf: Hash) {
        self.leaves.push(leaf);
        let n = self.leaves.len() as u64;
        let mut level = CACHE_STEP;
        while level < 64 && n % (1u64 << level) == 0 {
            let index = n / (1 << level) - 1;
            let slot = (level / CACHE_STEP - 1) as usize;
            if self.cached.len() <= slot {
                self.cached.push(Vec::new());
            }
            let hash = self.compute_node(level, index);
            self.cached[slot].push(hash);
            level += CACHE_STEP;
        }
    }

    /// The hash of the complete subtree of height `level` at `index`.
    fn subtree(&self, level: u32, index: u64) -> Hash {
        if level == 0 {
            return self.leaves[index as usize];
        }
        if level % CACHE_STEP == 0 {
            if let Some(hash) = self
                .cached
                .get((level / CACHE_STEP - 1) as usize)
                .and_then(|c| c.get(index as usize))
            {
                return *hash;
            }
        }
        self.compute_node(level, index)
    }

    fn compute_node(&self, level: u32, index: u64) -> Hash {
        node_hash(
            &self.subtree(level - 1, 2 * index),
            &self.subtree(level - 1, 2 * index + 1),
        )
    }

    /// The root of the tree of the first `size` leaves.
    pub fn root(&self, size: u64) -> Hash {
        assert!(
            size <= self.len(),
            "tree of {size} leaves asked of {}",
            self.len()
        );
        root(self, size).expect("in memory")
    }

    /// PATH(m, D[0:size]): the inclusion proof of leaf `m` in the tree of `size`.
    pub fn inclusion_proof(&self, m: u64, size: u64) -> Vec<Hash> {
        assert!(m < size && size <= self.len());
        inclusion_proof(self, m, size).expect("in memory")
    }

    /// PROOF(m, D[0:n]): that the tree of `m` leaves is a prefix of the tree of `n`.
    pub fn consistency_proof(&self, m: u64, n: u64) -> Vec<Hash> {
        assert!(m <= n && n <= self.len());
        consistency_proof(self, m, n).expect("in memory")
    }
}

impl Nodes for Tree {
    fn node(&self, level: u32, index: u64) -> Result<Hash, String> {
        Ok(self.subtree(level, index))
    }
}

/// Where a tree's complete, aligned subtrees come from: memory ([`Tree`]) or
/// tiles on disk (`audit::tiles`). The RFC's algorithms below ask for nothing
/// else.
pub trait Nodes {
    /// The hash of the complete subtree of height `level` at `index` (its
    /// leaves are `index · 2^level ..`); asked only of subtrees inside the tree.
    fn node(&self, level: u32, index: u64) -> Result<Hash, String>;
}

/// MTH(D[start:end]).
fn range(nodes: &impl Nodes, start: u64, end: u64) -> Result<Hash, String> {
    let n = end - start;
    if n == 0 {
        return Ok(empty_root());
    }
    if n.is_power_of_two() && start % n == 0 {
        return nodes.node(n.trailing_zeros(), start / n);
    }
    let k = split(n);
    Ok(node_hash(
        &range(nodes, start, start + k)?,
        &range(nodes, start + k, end)?,
    ))
}

/// The root of the tree of the first `size` leaves.
pub fn root(nodes: &impl Nodes, size: u64) -> Result<Hash, String> {
    range(nodes, 0, size)
}

/// PATH(m, D[0:size]) (`m < size`).
pub fn inclusion_proof(nodes: &impl Nodes, m: u64, size: u64) -> Result<Vec<Hash>, String> {
    if m >= size {
        return Err(format!("entry {m} is not in a tree of {size}"));
    }
    let mut proof = Vec::new();
    path(nodes, m, 0, size, &mut proof)?;
    Ok(proof)
}

fn path(
    nodes: &impl Nodes,
    m: u64,
    start: u64,
    end: u64,
    proof: &mut Vec<Hash>,
) -> Result<(), String> {
    let n = end - start;
    if n <= 1 {
        return Ok(());
    }
    let k = split(n);
    if m < k {
        path(nodes, m, start, start + k, proof)?;
        proof.push(range(nodes, start + k, end)?);
    } else {
        path(nodes, m - k, start + k, end, proof)?;
        proof.push(range(nodes, start, start + k)?);
    }
    Ok(())
}

/// PROOF(m, D[0:n]) (`m ≤ n`).
pub fn consistency_proof(nodes: &impl Nodes, m: u64, n: u64) -> Result<Vec<Hash>, String> {
    if m > n {
        return Err(format!("a tree of {m} is not a prefix of one of {n}"));
    }
    let mut proof = Vec::new();
    if m > 0 && m < n {
        subproof(nodes, m, 0, n, true, &mut proof)?;
    }
    Ok(proof)
}

fn subproof(
    nodes: &impl Nodes,
    m: u64,
    start: u64,
    end: u64,
    whole: bool,
    proof: &mut Vec<Hash>,
) -> Result<(), String> {
    let n = end - start;
    if m == n {
        if !whole {
            proof.push(range(nodes, start, end)?);
        }
        return Ok(());
    }
    let k = split(n);
    if m <= k {
        subproof(nodes, m, start, start + k, whole, proof)?;
        proof.push(range(nodes, start + k, end)?);
    } else {
        subproof(nodes, m - k, start + k, end, false, proof)?;
        proof.push(range(nodes, start, start + k)?);
    }
    Ok(())
}

/// RFC 9162 §2.1.3.2: does `proof` show `leaf` at `index` in a tree of `size`
/// with root `root`?
pub fn verify_inclusion(leaf: &Hash, index: u64, size: u64, proof: &[Hash], root: &Hash) -> bool {
    if index >= size {
        return false;
    }
    let (mut fn_, mut sn) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if sn == 0 {
            return false;
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = node_hash(p, &r);
            if fn_ & 1 == 0 {
                while fn_ & 1 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    sn == 0 && r == *root
}

/// RFC 9162 §2.1.4.2: does `proof` show the tree of `m` leaves with root
/// `old` to be a prefix of the tree of `n` leaves with root `new`?
pub fn verify_consistency(m: u64, n: u64, proof: &[Hash], old: &Hash, new: &Hash) -> bool {
    if m > n {
        return false;
    }
    if m == n {
        return proof.is_empty() && old == new;
    }
    if m == 0 {
        return proof.is_empty();
    }
    if proof.is_empty() {
        return false;
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if m.is_power_of_two() {
        path.push(*old);
    }
    path.extend_from_slice(proof);
    let Some((first, rest)) = path.split_first() else {
        return false;
    };
    let (mut fn_, mut sn) = (m - 1, n - 1);
    while fn_ & 1 == 1 {
        fn_ >>= 1;
        sn >>= 1;
    }
    let (mut fr, mut sr) = (*first, *first);
    for c in rest {
        if sn == 0 {
            return false;
        }
        if fn_ & 1 == 1 || fn_ == sn {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fn_ & 1 == 0 {
                while fn_ & 1 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    fr == *old && sr == *new && sn == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// MTH straight from the RFC's definition, over raw leaf data: the
    /// independent implementation the cached tree is checked against.
    fn naive_root(data: &[Vec<u8>]) -> Hash {
        match data.len() {
            0 => empty_root(),
            1 => leaf_hash(&data[0]),
            n => {
                let k = split(n as u64) as usize;
                node_hash(&naive_root(&data[..k]), &naive_root(&data[k..]))
            }
        }
    }

    fn tree_of(data: &[Vec<u8>]) -> Tree {
        let mut tree = Tree::new();
        for d in data {
            tree.push(leaf_hash(d));
        }
        tree
    }

    #[test]
    fn roots_match_the_definition_and_known_values() {
        let data: Vec<Vec<u8>> = (0..300u32).map(|i| i.to_be_bytes().to_vec()).collect();
        let tree = tree_of(&data);
        for n in 0..=300 {
            assert_eq!(tree.root(n as u64), naive_root(&data[..n]), "n = {n}");
        }
        // The empty tree and a one-leaf tree, by value.
        assert_eq!(
            crate::crypto::encode_hex(&empty_root()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            crate::crypto::encode_hex(&leaf_hash(b"")),
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
        );
    }

    #[test]
    fn every_inclusion_proof_verifies_and_no_wrong_one_does() {
        let data: Vec<Vec<u8>> = (0..70u32)
            .map(|i| format!("entry {i}").into_bytes())
            .collect();
        let tree = tree_of(&data);
        for n in 1..=70u64 {
            let root = tree.root(n);
            for m in 0..n {
                let proof = tree.inclusion_proof(m, n);
                let leaf = leaf_hash(&data[m as usize]);
                assert!(verify_inclusion(&leaf, m, n, &proof, &root), "m={m} n={n}");
                assert!(!verify_inclusion(
                    &leaf_hash(b"forged"),
                    m,
                    n,
                    &proof,
                    &root
                ));
                if n > 1 {
                    assert!(!verify_inclusion(&leaf, (m + 1) % n, n, &proof, &root));
                }
            }
        }
    }

    #[test]
    fn every_consistency_proof_verifies_and_no_wrong_one_does() {
        let data: Vec<Vec<u8>> = (0..40u32).map(|i| format!("e{i}").into_bytes()).collect();
        let tree = tree_of(&data);
        for n in 1..=40u64 {
            for m in 1..=n {
                let proof = tree.consistency_proof(m, n);
                let (old, new) = (tree.root(m), tree.root(n));
                assert!(verify_consistency(m, n, &proof, &old, &new), "m={m} n={n}");
                if m < n {
                    assert!(!verify_consistency(m, n, &proof, &new, &new));
                    let mut other = data[..n as usize].to_vec();
                    other[0] = b"rewritten".to_vec();
                    assert!(!verify_consistency(m, n, &proof, &old, &naive_root(&other)));
                }
            }
        }
    }

    fn unhex(text: &str) -> Vec<u8> {
        crate::crypto::decode_hex(text).expect("hex")
    }

    fn hashes(texts: &[&str]) -> Vec<Hash> {
        texts
            .iter()
            .map(|t| unhex(t).try_into().expect("32 bytes"))
            .collect()
    }

    /// The Certificate Transparency test vectors (RFC 6962's reference
    /// implementation, kept in transparency-dev/merkle): eight leaves, the
    /// root of every size from 1 to 8, inclusion and consistency proofs.
    #[test]
    fn certificate_transparency_vectors() {
        let leaves: Vec<Vec<u8>> = [
            "",
            "00",
            "10",
            "2021",
            "3031",
            "40414243",
            "5051525354555657",
            "606162636465666768696a6b6c6d6e6f",
        ]
        .iter()
        .map(|h| unhex(h))
        .collect();
        let roots = hashes(&[
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
            "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
            "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
            "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
            "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
        ]);
        let tree = tree_of(&leaves);
        for size in 1..=8u64 {
            assert_eq!(tree.root(size), roots[size as usize - 1], "size {size}");
        }
        let inclusion = [
            (
                0,
                8,
                vec![
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ],
            ),
            (
                5,
                8,
                vec![
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
            (
                2,
                3,
                vec!["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"],
            ),
        ];
        for (m, size, proof) in inclusion {
            let proof = hashes(&proof);
            assert_eq!(tree.inclusion_proof(m, size), proof, "leaf {m} of {size}");
            let leaf = leaf_hash(&leaves[m as usize]);
            assert!(verify_inclusion(
                &leaf,
                m,
                size,
                &proof,
                &roots[size as usize - 1]
            ));
        }
        let consistency = [
            (
                1,
                8,
                vec![
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ],
            ),
            (
                6,
                8,
                vec![
                    "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
            (
                2,
                5,
                vec![
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                ],
            ),
        ];
        for (m, n, proof) in consistency {
            let proof = hashes(&proof);
            assert_eq!(tree.consistency_proof(m, n), proof, "{m} to {n}");
            let (old, new) = (&roots[m as usize - 1], &roots[n as usize - 1]);
            assert!(verify_consistency(m, n, &proof, old, new));
        }
    }
}
