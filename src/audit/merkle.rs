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
fn split(n: u64) -> u64 {
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
    fn node(&self, level: u32, index: u64) -> Hash {
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
            &self.node(level - 1, 2 * index),
            &self.node(level - 1, 2 * index + 1),
        )
    }

    /// MTH(D[start:end]).
    fn range(&self, start: u64, end: u64) -> Hash {
        let n = end - start;
        if n == 0 {
            return empty_root();
        }
        if n.is_power_of_two() && start % n == 0 {
            return self.node(n.trailing_zeros(), start / n);
        }
        let k = split(n);
        node_hash(&self.range(start, start + k), &self.range(start + k, end))
    }

    /// The root of the tree of the first `size` leaves.
    pub fn root(&self, size: u64) -> Hash {
        assert!(
            size <= self.len(),
            "tree of {size} leaves asked of {}",
            self.len()
        );
        self.range(0, size)
    }

    /// PATH(m, D[0:size]): the inclusion proof of leaf `m` in the tree of `size`.
    pub fn inclusion_proof(&self, m: u64, size: u64) -> Vec<Hash> {
        assert!(m < size && size <= self.len());
        let mut proof = Vec::new();
        self.path(m, 0, size, &mut proof);
        proof
    }

    fn path(&self, m: u64, start: u64, end: u64, proof: &mut Vec<Hash>) {
        let n = end - start;
        if n <= 1 {
            return;
        }
        let k = split(n);
        if m < k {
            self.path(m, start, start + k, proof);
            proof.push(self.range(start + k, end));
        } else {
            self.path(m - k, start + k, end, proof);
            proof.push(self.range(start, start + k));
        }
    }

    /// PROOF(m, D[0:n]): that the tree of `m` leaves is a prefix of the tree of `n`.
    pub fn consistency_proof(&self, m: u64, n: u64) -> Vec<Hash> {
        assert!(m <= n && n <= self.len());
        let mut proof = Vec::new();
        if m > 0 && m < n {
            self.subproof(m, 0, n, true, &mut proof);
        }
        proof
    }

    fn subproof(&self, m: u64, start: u64, end: u64, whole: bool, proof: &mut Vec<Hash>) {
        let n = end - start;
        if m == n {
            if !whole {
                proof.push(self.range(start, end));
            }
            return;
        }
        let k = split(n);
        if m <= k {
            self.subproof(m, start, start + k, whole, proof);
            proof.push(self.range(start + k, end));
        } else {
            self.subproof(m - k, start + k, end, false, proof);
            proof.push(self.range(start, start + k));
        }
    }
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
}
