//! A second, deliberately naive implementation of what tagpin's log serves, written from
//! the specifications and not from tagpin's code, so the tests can check tagpin's roots,
//! proofs and checkpoints hash for hash:
//! - RFC 6962 section 2.1: leaf and node hashes and the Merkle Tree Hash (MTH) by its
//!   recursive definition; section 2.1.1 audit paths (PATH) and 2.1.2 consistency proofs
//!   (PROOF/SUBPROOF), each computed from all the leaves, plus the RFC 9162 2.1.3.2 fold
//!   of an inclusion proof into a root;
//! - C2SP signed-note (c2sp.org/signed-note) parsing and Ed25519 verification of a
//!   tlog-checkpoint (c2sp.org/tlog-checkpoint) with a verifier key
//!   `<name>+<hex key hash>+<base64(0x01 || public key)>`, through `ed25519-dalek`
//!   (tagpin signs with `ring`).
//!
//! Everything here is quadratic or worse in the number of leaves on purpose: it is a
//! reference for logs of a few dozen entries, not a log.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ed25519_dalek::{Signature, Verifier as _, VerifyingKey};
use sha2::{Digest as _, Sha256};

pub type Hash = [u8; 32];

/// The signature algorithm byte of an Ed25519 key in a signed note.
const ED25519: u8 = 0x01;

/// `SHA-256(0x00 || leaf)`.
pub fn leaf_hash(leaf: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0x00]);
    h.update(leaf);
    h.finalize().into()
}

/// `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([0x01]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The largest power of two smaller than `n` (`n` > 1): where RFC 6962 splits a tree.
fn split(n: usize) -> usize {
    assert!(n > 1, "only a tree of two or more leaves is split");
    let mut k = 1;
    while k * 2 < n {
        k *= 2;
    }
    k
}

/// MTH over leaf hashes (RFC 6962 2.1): the empty tree is SHA-256 of nothing.
pub fn mth(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => Sha256::digest([]).into(),
        1 => leaves[0],
        n => {
            let k = split(n);
            node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
        }
    }
}

/// PATH(m, D[n]) (RFC 6962 2.1.1): the audit path of leaf `m`, bottom up.
pub fn path(m: usize, leaves: &[Hash]) -> Vec<Hash> {
    let n = leaves.len();
    assert!(m < n, "leaf {m} is not in a tree of {n}");
    if n == 1 {
        return Vec::new();
    }
    let k = split(n);
    let (mut p, other) = if m < k {
        (path(m, &leaves[..k]), mth(&leaves[k..]))
    } else {
        (path(m - k, &leaves[k..]), mth(&leaves[..k]))
    };
    p.push(other);
    p
}

/// PROOF(m, D[n]) (RFC 6962 2.1.2): the consistency proof from the first `m` leaves to
/// all of them, 0 < m <= n.
pub fn proof(m: usize, leaves: &[Hash]) -> Vec<Hash> {
    assert!(0 < m && m <= leaves.len(), "no proof from {m} to {}", leaves.len());
    subproof(m, leaves, true)
}

fn subproof(m: usize, leaves: &[Hash], whole: bool) -> Vec<Hash> {
    let n = leaves.len();
    if m == n {
        return if whole { Vec::new() } else { vec![mth(leaves)] };
    }
    let k = split(n);
    let (mut p, other) = if m <= k {
        (subproof(m, &leaves[..k], whole), mth(&leaves[k..]))
    } else {
        (subproof(m - k, &leaves[k..], false), mth(&leaves[..k]))
    };
    p.push(other);
    p
}

/// The root an inclusion proof of `leaf` at `index` in a tree of `size` leads to (RFC
/// 9162 2.1.3.2), or `None` when the proof has the wrong length for that position.
pub fn root_from_inclusion(index: u64, size: u64, leaf: &Hash, proof: &[Hash]) -> Option<Hash> {
    if index >= size {
        return None;
    }
    let (mut f_n, mut s_n) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if s_n == 0 {
            return None;
        }
        if f_n & 1 == 1 || f_n == s_n {
            r = node_hash(p, &r);
            if f_n & 1 == 0 {
                while f_n & 1 == 0 && f_n != 0 {
                    f_n >>= 1;
                    s_n >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    (s_n == 0).then_some(r)
}

pub fn b64_hash(text: &str) -> Hash {
    let bytes = B64
        .decode(text)
        .unwrap_or_else(|e| panic!("not base64 ({e}): {text:?}"));
    bytes
        .try_into()
        .unwrap_or_else(|b: Vec<u8>| panic!("a hash of {} bytes: {text:?}", b.len()))
}

pub fn hex(h: &Hash) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}

/// A parsed C2SP tlog-checkpoint: its body and its signature lines.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
    /// The signed text: origin, size and root lines (and any extension lines), each ending
    /// in a newline.
    pub text: String,
    pub signatures: Vec<NoteSignature>,
}

/// One `— <name> <base64(key hash || signature)>` line.
#[derive(Debug, Clone)]
pub struct NoteSignature {
    pub name: String,
    pub key_hash: [u8; 4],
    pub signature: Vec<u8>,
}

/// Split a signed note into its text and signature lines (c2sp.org/signed-note: the text
/// ends at the last blank line; an unsigned checkpoint, as tagpin serves without a key, is
/// the text alone).
pub fn parse_checkpoint(note: &str) -> Result<Checkpoint, String> {
    let (text, sigs) = match note.rfind("\n\n") {
        Some(i) => (&note[..=i], &note[i + 2..]),
        None => (note, ""),
    };
    if !text.ends_with('\n') {
        return Err(format!("the note's text does not end in a newline: {note:?}"));
    }
    let mut lines = text.lines();
    let origin = lines
        .next()
        .filter(|o| !o.is_empty())
        .ok_or("no origin line")?
        .to_owned();
    let size = lines
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no tree size line in {note:?}"))?;
    let root_b64 = lines.next().ok_or_else(|| format!("no root line in {note:?}"))?;
    let root: Hash = B64
        .decode(root_b64)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| format!("the root line is not a base64 SHA-256 hash: {root_b64:?}"))?;
    let mut signatures = Vec::new();
    for line in sigs.lines() {
        signatures.push(parse_signature_line(line)?);
    }
    if !sigs.is_empty() && !sigs.ends_with('\n') {
        return Err(format!("the signature block does not end in a newline: {sigs:?}"));
    }
    Ok(Checkpoint {
        origin,
        size,
        root,
        text: text.to_owned(),
        signatures,
    })
}

fn parse_signature_line(line: &str) -> Result<NoteSignature, String> {
    let rest = line
        .strip_prefix("\u{2014} ")
        .ok_or_else(|| format!("a signature line must start with an em dash and a space: {line:?}"))?;
    let (name, sig) = rest
        .split_once(' ')
        .ok_or_else(|| format!("a signature line is `— <name> <base64>`: {line:?}"))?;
    let bytes = B64
        .decode(sig)
        .map_err(|e| format!("signature not base64 ({e}): {line:?}"))?;
    if bytes.len() < 5 {
        return Err(format!("signature too short: {line:?}"));
    }
    Ok(NoteSignature {
        name: name.to_owned(),
        key_hash: bytes[..4].try_into().unwrap(),
        signature: bytes[4..].to_vec(),
    })
}

/// A verifier key `<name>+<hex key hash>+<base64(0x01 || Ed25519 public key)>`.
#[derive(Debug, Clone)]
pub struct NoteVerifier {
    pub name: String,
    pub key_hash: [u8; 4],
    key: VerifyingKey,
}

/// `SHA-256(name || 0x0A || 0x01 || public key)[:4]` (c2sp.org/signed-note).
pub fn key_hash(name: &str, public: &[u8; 32]) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([b'\n', ED25519]);
    h.update(public);
    h.finalize()[..4].try_into().unwrap()
}

impl NoteVerifier {
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let mut parts = text.splitn(3, '+');
        let (name, hash, key) = match (parts.next(), parts.next(), parts.next()) {
            (Some(n), Some(h), Some(k)) if !n.is_empty() => (n, h, k),
            _ => return Err(format!("a verifier key is name+hash+key: {text:?}")),
        };
        let hash = u32::from_str_radix(hash, 16)
            .ok()
            .filter(|_| hash.len() == 8)
            .ok_or_else(|| format!("the key hash is 8 hex digits: {text:?}"))?
            .to_be_bytes();
        let key = B64.decode(key).map_err(|e| format!("key not base64 ({e}): {text:?}"))?;
        let public: [u8; 32] = match key.split_first() {
            Some((&ED25519, public)) => public
                .try_into()
                .map_err(|_| format!("an Ed25519 key is 32 bytes: {text:?}"))?,
            _ => return Err(format!("not an Ed25519 (0x01) key: {text:?}")),
        };
        if key_hash(name, &public) != hash {
            return Err(format!("the key hash does not match the name and key: {text:?}"));
        }
        let key = VerifyingKey::from_bytes(&public).map_err(|e| format!("bad Ed25519 key ({e}): {text:?}"))?;
        Ok(Self {
            name: name.to_owned(),
            key_hash: hash,
            key,
        })
    }

    /// Whether one of `signatures` is this key's (same name and key hash) and verifies
    /// over `text`.
    pub fn verifies(&self, text: &str, signatures: &[NoteSignature]) -> bool {
        signatures
            .iter()
            .filter(|s| s.name == self.name && s.key_hash == self.key_hash)
            .any(|s| {
                Signature::from_slice(&s.signature)
                    .map(|sig| self.key.verify(text.as_bytes(), &sig).is_ok())
                    .unwrap_or(false)
            })
    }
}

/// The text of a signed note whose signature by the verifier key `vkey` verifies; an
/// unsigned note, another key's, or a bad signature is an error saying which.
pub fn verify_note(note: &str, vkey: &str) -> Result<String, String> {
    let key = NoteVerifier::parse(vkey)?;
    let checkpoint = parse_checkpoint(note)?;
    if checkpoint.signatures.is_empty() {
        return Err("an unsigned note".into());
    }
    if key.verifies(&checkpoint.text, &checkpoint.signatures) {
        Ok(checkpoint.text)
    } else {
        Err(format!("no valid signature by {}+{}", key.name, hex4(&key.key_hash)))
    }
}

fn hex4(h: &[u8; 4]) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}

/// The verifier checked against published vectors. These are plain functions, not
/// `#[test]`s: this module is compiled into every test binary, and the log's test binary
/// (`tests/log_sled.rs`) runs them once.
pub mod vectors {
    use super::*;

    /// RFC 6962's test inputs (the CT reference implementation's and Trillian's vectors).
    const LEAVES: [&str; 8] = [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ];

    /// MTH of the first 1..=8 of them.
    const ROOTS: [&str; 8] = [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    const H96: &str = "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7";
    const H5F: &str = "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e";
    const H6B: &str = "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4";
    const HBC: &str = "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b";
    const HCA: &str = "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0";
    const H0E: &str = "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a";

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn leaves() -> Vec<Hash> {
        LEAVES.iter().map(|l| leaf_hash(&unhex(l))).collect()
    }

    fn hexes(hashes: &[Hash]) -> Vec<String> {
        hashes.iter().map(hex).collect()
    }

    pub fn the_tree_hash_of_the_rfc_6962_vectors_matches_every_published_root() {
        let leaves = leaves();
        assert_eq!(
            hex(&mth(&[])),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        for (n, root) in ROOTS.iter().enumerate() {
            assert_eq!(hex(&mth(&leaves[..=n])), *root, "size {}", n + 1);
        }
    }

    pub fn audit_paths_match_the_published_ones_and_fold_into_the_root() {
        let leaves = leaves();
        for (m, n, want) in [
            (0, 1, vec![]),
            (0, 2, vec![H96]),
            (1, 2, vec![ROOTS[0]]),
            (2, 3, vec![ROOTS[1]]),
            (1, 5, vec![ROOTS[0], H5F, HBC]),
            (0, 8, vec![H96, H5F, H6B]),
            (5, 8, vec![HBC, HCA, ROOTS[3]]),
        ] {
            assert_eq!(hexes(&path(m, &leaves[..n])), want, "PATH({m}, D[{n}])");
        }
        // Every path of every tree up to 8 leaves folds into that tree's root, and only
        // at its own position.
        for n in 1..=8 {
            for m in 0..n {
                let p = path(m, &leaves[..n]);
                let root = root_from_inclusion(m as u64, n as u64, &leaves[m], &p);
                assert_eq!(root.map(|r| hex(&r)), Some(ROOTS[n - 1].to_owned()), "{m} in {n}");
                if n > 1 {
                    let other = (m + 1) % n;
                    let moved = root_from_inclusion(other as u64, n as u64, &leaves[m], &p);
                    assert_ne!(moved.map(|r| hex(&r)), Some(ROOTS[n - 1].to_owned()), "{m} as {other}");
                }
            }
        }
    }

    pub fn consistency_proofs_match_the_published_ones() {
        let leaves = leaves();
        for (m, n, want) in [
            (1, 1, vec![]),
            (1, 8, vec![H96, H5F, H6B]),
            (6, 8, vec![H0E, HCA, ROOTS[3]]),
            (2, 5, vec![H5F, HBC]),
            (4, 8, vec![H5F]),
        ] {
            // PROOF(4, D[8]) is the right half alone: MTH(d4..d7) is not among the
            // published vectors, so it is checked through the root.
            if (m, n) == (4, 8) {
                let p = proof(m, &leaves[..n]);
                assert_eq!(p.len(), 1);
                assert_eq!(hex(&node_hash(&mth(&leaves[..4]), &p[0])), ROOTS[7]);
                continue;
            }
            assert_eq!(hexes(&proof(m, &leaves[..n])), want, "PROOF({m}, D[{n}])");
        }
    }

    /// Go's `golang.org/x/mod/sumdb/note` example key and signed text.
    const PETER: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
    const QUOTE: &str =
        "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n";
    const PETER_SIG: &str =
        "\u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";

    pub fn the_go_note_vector_verifies_and_a_changed_text_does_not() {
        let v = NoteVerifier::parse(PETER).unwrap();
        assert_eq!(v.name, "PeterNeumann");
        assert_eq!(v.key_hash, [0xc7, 0x4f, 0x20, 0xa3]);
        let sig = parse_signature_line(PETER_SIG.trim_end()).unwrap();
        assert_eq!(sig.key_hash, v.key_hash);
        assert!(v.verifies(QUOTE, std::slice::from_ref(&sig)));
        let changed = QUOTE.replace("answer", "question");
        assert!(!v.verifies(&changed, std::slice::from_ref(&sig)));
        // Another name with the same key bytes has another key hash.
        assert!(NoteVerifier::parse("PeterNeumann2+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW").is_err());
    }

    pub fn checkpoints_signed_and_unsigned_are_parsed_into_text_and_signatures() {
        let root = mth(&leaves());
        let body = format!("example.com/log\n8\n{}\n", B64.encode(root));
        let signed = parse_checkpoint(&format!("{body}\n{PETER_SIG}")).unwrap();
        assert_eq!(
            (signed.origin.as_str(), signed.size, signed.root),
            ("example.com/log", 8, root)
        );
        assert_eq!(signed.text, body);
        assert_eq!(signed.signatures.len(), 1);
        // A real signature over another text does not verify this one.
        let v = NoteVerifier::parse(PETER).unwrap();
        assert!(!v.verifies(&signed.text, &signed.signatures));
        let unsigned = parse_checkpoint(&body).unwrap();
        assert!(unsigned.signatures.is_empty());
        assert!(parse_checkpoint("example.com/log\n8\nnot-base64\n").is_err());
    }
}
