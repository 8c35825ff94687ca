//! RFC 6962 Merkle tree hashing over the log's leaves (section 2.1, as RFC 9162 section
//! 2.1 restates it): leaf and interior hashes, the right frontier that appends in
//! O(log n), the perfect subtrees a proof is assembled from, and proof verification.
//!
//! A perfect subtree is named by a [`NodeId`]: at `level` k, `index` i covers leaves
//! `[i·2^k, (i+1)·2^k)`. Every perfect subtree is complete once its last leaf is
//! appended and never changes after, so the backends store each one once, and any
//! subtree a proof needs (perfect, or the ragged right edge of a tree whose size is not
//! a power of two) is the fold of O(log n) of them.

use sha2::{Digest as _, Sha256};

/// A SHA-256 hash.
pub type Hash = [u8; 32];

/// The hash of a leaf: `SHA-256(0x00 || leaf)`.
pub fn leaf_hash(leaf: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(leaf);
    h.finalize().into()
}

/// The hash of an interior node: `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The root of the empty tree: `SHA-256()`.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// A perfect subtree: at `level` k, `index` i covers leaves `[i·2^k, (i+1)·2^k)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId {
    pub level: u8,
    pub index: u64,
}

/// The perfect subtrees that make up the leaves `[start, end)`, left to right: at each
/// position, the largest aligned subtree that fits. For the ranges RFC 6962's proofs
/// name these are at most two per level.
pub fn range_nodes(start: u64, end: u64) -> Vec<NodeId> {
    let mut out = Vec::new();
    let mut at = start;
    while at < end {
        let mut level = if at == 0 { 63 } else { at.trailing_zeros().min(63) };
        while level > 0 && (end - at) < (1u64 << level) {
            level -= 1;
        }
        out.push(NodeId {
            level: level as u8,
            index: at >> level,
        });
        at += 1u64 << level;
    }
    out
}

/// The hash of a subtree from the hashes of its perfect parts, left to right: RFC 6962
/// splits a tree at the largest power of two below its size, so the parts fold from the
/// right.
pub fn fold(parts: &[Hash]) -> Hash {
    let mut parts = parts.iter().rev();
    let Some(last) = parts.next() else {
        return empty_root();
    };
    parts.fold(*last, |right, left| node_hash(left, &right))
}

/// The largest power of two smaller than `n` (n ≥ 2).
fn split(n: u64) -> u64 {
    1u64 << (63 - (n - 1).leading_zeros())
}

/// The subtrees whose hashes make the inclusion proof of leaf `index` in the tree of
/// `size` leaves, in RFC 6962's order (PATH, section 2.1.1): nearest the leaf first.
pub fn inclusion_ranges(index: u64, size: u64) -> Vec<(u64, u64)> {
    fn path(m: u64, a: u64, b: u64, out: &mut Vec<(u64, u64)>) {
        if b - a <= 1 {
            return;
        }
        let k = split(b - a);
        if m < a + k {
            path(m, a, a + k, out);
            out.push((a + k, b));
        } else {
            path(m, a + k, b, out);
            out.push((a, a + k));
        }
    }
    let mut out = Vec::new();
    if index < size {
        path(index, 0, size, &mut out);
    }
    out
}

/// The subtrees whose hashes make the consistency proof from the tree of `from` leaves
/// to the tree of `to` leaves, in RFC 6962's order (PROOF and SUBPROOF, section 2.1.2).
/// Empty when `from` is 0 or equals `to`.
pub fn consistency_ranges(from: u64, to: u64) -> Vec<(u64, u64)> {
    fn subproof(m: u64, a: u64, b: u64, whole: bool, out: &mut Vec<(u64, u64)>) {
        let n = b - a;
        if m == n {
            if !whole {
                out.push((a, b));
            }
            return;
        }
        let k = split(n);
        if m <= k {
            subproof(m, a, a + k, whole, out);
            out.push((a + k, b));
        } else {
            subproof(m - k, a + k, b, false, out);
            out.push((a, a + k));
        }
    }
    let mut out = Vec::new();
    if from > 0 && from < to {
        subproof(from, 0, to, true, &mut out);
    }
    out
}

/// Every perfect subtree the `ranges` are made of, in order, without repeats.
pub fn nodes_for(ranges: &[(u64, u64)]) -> Vec<NodeId> {
    let mut out: Vec<NodeId> = ranges.iter().flat_map(|&(a, b)| range_nodes(a, b)).collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// The hash of each range, given the hashes of the perfect subtrees `nodes_for` named.
pub fn assemble(ranges: &[(u64, u64)], hash_of: impl Fn(NodeId) -> Option<Hash>) -> Option<Vec<Hash>> {
    ranges
        .iter()
        .map(|&(a, b)| {
            let parts: Option<Vec<Hash>> = range_nodes(a, b).into_iter().map(&hash_of).collect();
            parts.map(|p| fold(&p))
        })
        .collect()
}

/// The right frontier of a tree: the hashes of the perfect subtrees its size decomposes
/// into, largest (leftmost) first. Enough to append a leaf and to compute the root.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    nodes: Vec<Hash>,
}

impl Frontier {
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Append a leaf by its hash. Returns every perfect subtree it completed (the leaf
    /// itself first), for the store to keep.
    pub fn append(&mut self, leaf: Hash) -> Vec<(NodeId, Hash)> {
        let at = self.size;
        let mut done = vec![(NodeId { level: 0, index: at }, leaf)];
        let mut carry = leaf;
        let mut level = 0u8;
        while (at >> level) & 1 == 1 {
            let left = self.nodes.pop().expect("a set bit of the size has its subtree");
            carry = node_hash(&left, &carry);
            level += 1;
            done.push((
                NodeId {
                    level,
                    index: at >> level,
                },
                carry,
            ));
        }
        self.nodes.push(carry);
        self.size += 1;
        done
    }

    /// The tree's root hash.
    pub fn root(&self) -> Hash {
        fold(&self.nodes)
    }

    /// `size` (8 bytes, big-endian) then each frontier hash.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + 32 * self.nodes.len());
        out.extend_from_slice(&self.size.to_be_bytes());
        for n in &self.nodes {
            out.extend_from_slice(n);
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let (size, rest) = bytes.split_first_chunk::<8>()?;
        let size = u64::from_be_bytes(*size);
        if rest.len() != 32 * size.count_ones() as usize {
            return None;
        }
        let nodes = rest
            .chunks_exact(32)
            .map(|c| c.try_into().expect("32-byte chunks"))
            .collect();
        Some(Self { size, nodes })
    }

    /// The perfect subtrees the frontier of a tree of `size` leaves holds, left to right.
    pub fn ids(size: u64) -> Vec<NodeId> {
        range_nodes(0, size)
    }

    /// The frontier of a tree of `size` leaves from the hashes of [`Frontier::ids`].
    pub fn from_parts(size: u64, nodes: Vec<Hash>) -> Option<Self> {
        (nodes.len() == size.count_ones() as usize).then_some(Self { size, nodes })
    }
}

/// Whether `proof` shows leaf `hash` at `index` in the tree of `size` leaves with `root`
/// (RFC 9162 section 2.1.3.2).
pub fn verify_inclusion(index: u64, size: u64, hash: &Hash, proof: &[Hash], root: &Hash) -> bool {
    if index >= size {
        return false;
    }
    let (mut f, mut s, mut r) = (index, size - 1, *hash);
    for p in proof {
        if s == 0 {
            return false;
        }
        if f & 1 == 1 || f == s {
            r = node_hash(p, &r);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    s == 0 && r == *root
}

/// Whether `proof` shows the tree of `from` leaves with `old` is a prefix of the tree of
/// `to` leaves with `new` (RFC 9162 section 2.1.4.2).
pub fn verify_consistency(from: u64, to: u64, old: &Hash, new: &Hash, proof: &[Hash]) -> bool {
    if from == 0 || from > to {
        return false;
    }
    if from == to {
        return proof.is_empty() && old == new;
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if from.is_power_of_two() {
        path.push(*old);
    }
    path.extend_from_slice(proof);
    let Some((first, rest)) = path.split_first() else {
        return false;
    };
    let (mut f, mut s) = (from - 1, to - 1);
    while f & 1 == 1 {
        f >>= 1;
        s >>= 1;
    }
    let (mut fr, mut sr) = (*first, *first);
    for c in rest {
        if s == 0 {
            return false;
        }
        if f & 1 == 1 || f == s {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f >>= 1;
        s >>= 1;
    }
    fr == *old && sr == *new && s == 0
}

#[cfg(test)]
mod tests;
