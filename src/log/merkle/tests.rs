use super::*;

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn h(s: &str) -> Hash {
    unhex(s).try_into().unwrap()
}

/// The leaves of RFC 6962's reference test vectors (as Certificate Transparency and
/// transparency-dev publish them).
const CT_LEAVES: [&str; 8] = [
    "",
    "00",
    "10",
    "2021",
    "3031",
    "40414243",
    "5051525354555657",
    "606162636465666768696a6b6c6d6e6f",
];

/// The published root of the tree of the first n+1 of them.
const CT_ROOTS: [&str; 8] = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
];

/// Every perfect subtree of a tree built by appending, for proofs in tests.
struct Tree {
    frontier: Frontier,
    nodes: std::collections::HashMap<NodeId, Hash>,
    leaves: Vec<Hash>,
}

impl Tree {
    fn of(leaves: &[Hash]) -> Self {
        let mut t = Tree {
            frontier: Frontier::default(),
            nodes: Default::default(),
            leaves: leaves.to_vec(),
        };
        for l in leaves {
            t.nodes.extend(t.frontier.append(*l));
        }
        t
    }

    fn proof(&self, ranges: &[(u64, u64)]) -> Vec<Hash> {
        assemble(ranges, |id| self.nodes.get(&id).copied()).unwrap()
    }
}

fn ct_tree() -> Tree {
    Tree::of(&CT_LEAVES.map(|l| leaf_hash(&unhex(l))))
}

/// MTH by RFC 6962's recursive definition.
fn naive_root(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            let k = split(n as u64) as usize;
            node_hash(&naive_root(&leaves[..k]), &naive_root(&leaves[k..]))
        }
    }
}

#[test]
fn roots_match_the_published_vectors_at_every_size() {
    assert_eq!(
        hex(&empty_root()),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    let mut f = Frontier::default();
    for (leaf, root) in CT_LEAVES.iter().zip(CT_ROOTS) {
        f.append(leaf_hash(&unhex(leaf)));
        assert_eq!(hex(&f.root()), root, "size {}", f.size());
    }
}

fn hex(h: &Hash) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn proofs_match_the_published_vectors() {
    let t = ct_tree();
    let incl = |i, n| t.proof(&inclusion_ranges(i, n)).iter().map(hex).collect::<Vec<_>>();
    assert_eq!(
        incl(0, 8),
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ]
    );
    assert_eq!(
        incl(5, 8),
        [
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ]
    );
    let cons = |m, n| t.proof(&consistency_ranges(m, n)).iter().map(hex).collect::<Vec<_>>();
    assert_eq!(
        cons(2, 5),
        [
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ]
    );
    let p = t.proof(&consistency_ranges(6, 8));
    assert!(verify_consistency(6, 8, &h(CT_ROOTS[5]), &h(CT_ROOTS[7]), &p));
    assert!(!verify_consistency(6, 8, &h(CT_ROOTS[4]), &h(CT_ROOTS[7]), &p));
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    /// Every proof the stored subtrees assemble verifies, against the naive root, and a
    /// proof for another leaf, size or root does not.
    #[test]
    fn every_proof_verifies_and_nothing_else_does(n in 1u64..80, seed in 0u8..255) {
        let leaves: Vec<Hash> = (0..n).map(|i| leaf_hash(&[seed, i as u8, (i >> 8) as u8])).collect();
        let t = Tree::of(&leaves);
        let root = naive_root(&leaves);
        proptest::prop_assert_eq!(t.frontier.root(), root);
        let back = Frontier::decode(&t.frontier.encode()).unwrap();
        proptest::prop_assert_eq!(&back, &t.frontier);
        let parts: Vec<Hash> = Frontier::ids(n).into_iter().map(|id| t.nodes[&id]).collect();
        proptest::prop_assert_eq!(Frontier::from_parts(n, parts).unwrap(), t.frontier.clone());
        for i in 0..n {
            let p = t.proof(&inclusion_ranges(i, n));
            proptest::prop_assert!(verify_inclusion(i, n, &t.leaves[i as usize], &p, &root));
            if n > 1 {
                let other = (i + 1) % n;
                proptest::prop_assert!(!verify_inclusion(other, n, &t.leaves[i as usize], &p, &root));
            }
        }
        for m in 1..=n {
            let old = naive_root(&leaves[..m as usize]);
            let p = t.proof(&consistency_ranges(m, n));
            proptest::prop_assert!(verify_consistency(m, n, &old, &root, &p));
            if m < n {
                let forged = naive_root(&leaves[1..=m as usize]);
                proptest::prop_assert!(!verify_consistency(m, n, &forged, &root, &p));
            }
        }
    }
}
