//! A second, deliberately naive implementation of RFC 6962 hashing and proofs (section
//! 2.1, by its recursive definitions) and of C2SP signed-note verification with Ed25519,
//! to check what tagpin serves without trusting its code.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ed25519_dalek::{Signature, Verifier as _, VerifyingKey};
use sha2::{Digest as _, Sha256};

pub type Hash = [u8; 32];

pub fn leaf_hash(leaf: &[u8]) -> Hash {
    Sha256::new().chain_update([0u8]).chain_update(leaf).finalize().into()
}

fn node(l: &Hash, r: &Hash) -> Hash {
    Sha256::new()
        .chain_update([1u8])
        .chain_update(l)
        .chain_update(r)
        .finalize()
        .into()
}

/// The largest power of two smaller than `n` (n > 1).
fn split(n: usize) -> usize {
    let mut k = 1;
    while k * 2 < n {
        k *= 2;
    }
    k
}

/// MTH(D[n]) over leaf hashes.
pub fn root(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => Sha256::digest([]).into(),
        1 => leaves[0],
        n => {
            let k = split(n);
            node(&root(&leaves[..k]), &root(&leaves[k..]))
        }
    }
}

/// PATH(m, D[n]).
pub fn inclusion_path(leaves: &[Hash], m: usize) -> Vec<Hash> {
    let n = leaves.len();
    if n <= 1 {
        return Vec::new();
    }
    let k = split(n);
    let (mut path, sibling) = if m < k {
        (inclusion_path(&leaves[..k], m), root(&leaves[k..]))
    } else {
        (inclusion_path(&leaves[k..], m - k), root(&leaves[..k]))
    };
    path.push(sibling);
    path
}

/// PROOF(m, D[n]).
pub fn consistency_proof(leaves: &[Hash], m: usize) -> Vec<Hash> {
    subproof(leaves, m, true)
}

fn subproof(leaves: &[Hash], m: usize, whole: bool) -> Vec<Hash> {
    let n = leaves.len();
    if m == n {
        return if whole { Vec::new() } else { vec![root(leaves)] };
    }
    let k = split(n);
    let (mut proof, other) = if m <= k {
        (subproof(&leaves[..k], m, whole), root(&leaves[k..]))
    } else {
        (subproof(&leaves[k..], m - k, false), root(&leaves[..k]))
    };
    proof.push(other);
    proof
}

/// The body of a signed note whose signature by `vkey` (`name+hash+base64`, an
/// Ed25519 key) verifies.
pub fn verify_note(note: &str, vkey: &str) -> Result<String, String> {
    let mut parts = vkey.splitn(3, '+');
    let (name, hash, key) = match (parts.next(), parts.next(), parts.next()) {
        (Some(n), Some(h), Some(k)) => (n, h, k),
        _ => return Err(format!("not a verifier key: {vkey}")),
    };
    let key = B64.decode(key).map_err(|e| format!("verifier key: {e}"))?;
    if key.len() != 33 || key[0] != 1 {
        return Err("not an Ed25519 verifier key".into());
    }
    let id: [u8; 4] = Sha256::new()
        .chain_update(name)
        .chain_update(b"\n")
        .chain_update(&key)
        .finalize()[..4]
        .try_into()
        .unwrap();
    if format!("{:08x}", u32::from_be_bytes(id)) != hash {
        return Err(format!("the verifier key's hash {hash} is not its key's"));
    }
    let vk = VerifyingKey::from_bytes(key[1..].try_into().unwrap()).map_err(|e| e.to_string())?;
    let split = note.rfind("\n\n").ok_or("an unsigned note")?;
    let (body, sigs) = (&note[..split + 1], &note[split + 2..]);
    for line in sigs.lines() {
        let Some((signer, sig)) = line.strip_prefix("\u{2014} ").and_then(|l| l.split_once(' ')) else {
            return Err(format!("a malformed signature line: {line:?}"));
        };
        let sig = B64.decode(sig).map_err(|e| format!("signature: {e}"))?;
        if signer != name || sig.len() != 68 || sig[..4] != id {
            continue;
        }
        let sig = Signature::from_slice(&sig[4..]).map_err(|e| e.to_string())?;
        return vk
            .verify(body.as_bytes(), &sig)
            .map(|()| body.to_owned())
            .map_err(|e| e.to_string());
    }
    Err(format!("no signature by {name}+{hash}"))
}

/// The verifier itself checked against published vectors: RFC 6962's eight-leaf tree as
/// the Certificate Transparency implementations test it, and Go's `sumdb/note` example.
#[test]
fn the_independent_verifier_agrees_with_published_vectors() {
    let hex = |s: &str| -> Hash {
        (0..32)
            .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
            .collect::<Vec<u8>>()
            .try_into()
            .unwrap()
    };
    let inputs: [&[u8]; 8] = [
        b"",
        b"\x00",
        b"\x10",
        b"\x20\x21",
        b"\x30\x31",
        b"\x40\x41\x42\x43",
        b"\x50\x51\x52\x53\x54\x55\x56\x57",
        b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
    ];
    let leaves: Vec<Hash> = inputs.iter().map(|l| leaf_hash(l)).collect();
    let roots = [
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];
    for (n, r) in roots.iter().enumerate() {
        assert_eq!(root(&leaves[..n]), hex(r), "root of {n}");
    }
    let (h5f, h6b) = (
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    );
    let (hca, hd3, h0e) = (
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
    );
    let h96 = "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7";
    let hbc = "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b";
    let h42 = "4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658";
    let h46 = "46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1";
    let hb0 = "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f";
    let inclusion = [
        (0, vec![h96, h5f, h6b]),
        (4, vec![h42, hca, hd3]),
        (5, vec![hbc, hca, hd3]),
        (6, vec![h46, h0e, hd3]),
        (7, vec![hb0, h0e, hd3]),
    ];
    for (m, want) in inclusion {
        let want: Vec<Hash> = want.iter().map(|h| hex(h)).collect();
        assert_eq!(inclusion_path(&leaves, m), want, "inclusion of {m} in 8");
    }
    let consistency = [
        (1, 1, vec![]),
        (1, 8, vec![h96, h5f, h6b]),
        (6, 8, vec![h0e, hca, hd3]),
        (2, 5, vec![h5f, hbc]),
    ];
    for (m, n, want) in consistency {
        let want: Vec<Hash> = want.iter().map(|h| hex(h)).collect();
        assert_eq!(consistency_proof(&leaves[..n], m), want, "consistency {m} -> {n}");
    }

    let vkey = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
    let text = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n";
    let note = format!(
        "{text}\n\u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
    );
    assert_eq!(verify_note(&note, vkey).as_deref(), Ok(text));
    assert!(
        verify_note(&note.replace("problem,", "problem;"), vkey).is_err(),
        "a changed text"
    );
    assert!(verify_note(text, vkey).is_err(), "no signature");
    let other = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop";
    assert!(verify_note(&note, other).is_err(), "another key");
}
