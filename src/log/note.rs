//! Checkpoints as C2SP signed notes (c2sp.org/signed-note, c2sp.org/tlog-checkpoint),
//! with Ed25519 keys in the note key formats: a signing key
//! `PRIVATE+KEY+<name>+<key hash>+<base64(0x01 || seed)>` and a verifier key
//! `<name>+<key hash>+<base64(0x01 || public key)>`, where the key hash is the first four
//! bytes of `SHA-256(name || 0x0A || 0x01 || public key)`, in hex.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ring::signature::{Ed25519KeyPair, KeyPair as _, UnparsedPublicKey, ED25519};
use sha2::{Digest as _, Sha256};

use super::merkle::Hash;

/// The signature type byte of Ed25519 in note keys.
const ED25519_TYPE: u8 = 0x01;

/// The prefix of a signature line: an em dash and a space.
const SIG_PREFIX: &str = "\u{2014} ";

/// A key name: non-empty, no space and no `+` (the note formats' separators).
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.contains('+') || name.chars().any(char::is_whitespace) {
        return Err(format!(
            "{name:?} is not a key name: it must be non-empty, without spaces or '+'"
        ));
    }
    Ok(())
}

fn key_hash(name: &str, public: &[u8]) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([b'\n', ED25519_TYPE]);
    h.update(public);
    let d = h.finalize();
    [d[0], d[1], d[2], d[3]]
}

fn hex4(h: &[u8; 4]) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}

/// `<name>+<hash>+<base64(0x01 || key)>`, split; the base64 may itself contain `+`.
fn split_key(text: &str) -> Result<(&str, &str, Vec<u8>), String> {
    let mut parts = text.trim().splitn(3, '+');
    let (Some(name), Some(hash), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
        return Err("not <name>+<hash>+<key>".into());
    };
    check_name(name)?;
    let key = B64.decode(key).map_err(|e| format!("its key is not base64: {e}"))?;
    match key.split_first() {
        Some((&ED25519_TYPE, rest)) if rest.len() == 32 => Ok((name, hash, rest.to_vec())),
        _ => Err("its key is not an Ed25519 key (type 0x01 and 32 bytes)".into()),
    }
}

/// The key that signs checkpoints.
pub struct SigningKey {
    name: String,
    hash: [u8; 4],
    pair: Ed25519KeyPair,
}

impl SigningKey {
    /// A key from its text (a key file's content).
    pub fn parse(text: &str) -> Result<Self, String> {
        let rest = text
            .trim()
            .strip_prefix("PRIVATE+KEY+")
            .ok_or("not a signing key: it does not start with PRIVATE+KEY+")?;
        let (name, hash, seed) = split_key(rest).map_err(|e| format!("not a signing key: {e}"))?;
        let pair = Ed25519KeyPair::from_seed_unchecked(&seed).map_err(|_| "not a signing key: a bad seed")?;
        let computed = key_hash(name, pair.public_key().as_ref());
        if hex4(&computed) != hash {
            return Err(format!("not a signing key: its key hash {hash} does not match the key"));
        }
        Ok(Self {
            name: name.to_owned(),
            hash: computed,
            pair,
        })
    }

    /// A new key named `name`: its text, and the verifier key that checks it.
    pub fn generate(name: &str) -> Result<(String, String), String> {
        check_name(name)?;
        let mut seed = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed)
            .map_err(|_| "the system gave no randomness")?;
        let pair = Ed25519KeyPair::from_seed_unchecked(&seed).map_err(|_| "a bad seed")?;
        let hash = hex4(&key_hash(name, pair.public_key().as_ref()));
        let mut typed = vec![ED25519_TYPE];
        typed.extend_from_slice(&seed);
        let key = Self::parse(&format!("PRIVATE+KEY+{name}+{hash}+{}", B64.encode(&typed)))?;
        Ok((
            format!("PRIVATE+KEY+{name}+{hash}+{}\n", B64.encode(&typed)),
            key.verifier(),
        ))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The verifier key text.
    pub fn verifier(&self) -> String {
        let mut typed = vec![ED25519_TYPE];
        typed.extend_from_slice(self.pair.public_key().as_ref());
        format!("{}+{}+{}", self.name, hex4(&self.hash), B64.encode(typed))
    }

    /// `text` (which ends in a newline) as a signed note with this key's signature.
    pub fn sign(&self, text: &str) -> String {
        let sig = self.pair.sign(text.as_bytes());
        let mut blob = self.hash.to_vec();
        blob.extend_from_slice(sig.as_ref());
        format!("{text}\n{SIG_PREFIX}{} {}\n", self.name, B64.encode(blob))
    }
}

/// A verifier key.
#[derive(Debug, Clone)]
pub struct VerifierKey {
    name: String,
    hash: [u8; 4],
    public: Vec<u8>,
}

impl VerifierKey {
    pub fn parse(text: &str) -> Result<Self, String> {
        let (name, hash, public) = split_key(text).map_err(|e| format!("not a verifier key: {e}"))?;
        let computed = key_hash(name, &public);
        if hex4(&computed) != hash {
            return Err(format!(
                "not a verifier key: its key hash {hash} does not match the key"
            ));
        }
        Ok(Self {
            name: name.to_owned(),
            hash: computed,
            public,
        })
    }

    /// `name+hash`, how messages name the key.
    pub fn id(&self) -> String {
        format!("{}+{}", self.name, hex4(&self.hash))
    }

    /// Whether `note` carries a valid signature by this key.
    pub fn verifies(&self, note: &Note) -> bool {
        let key = UnparsedPublicKey::new(&ED25519, &self.public);
        note.signatures.iter().any(|s| {
            s.name == self.name
                && s.blob.len() == 68
                && s.blob[..4] == self.hash
                && key.verify(note.text.as_bytes(), &s.blob[4..]).is_ok()
        })
    }
}

/// One signature line of a note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    pub name: String,
    pub blob: Vec<u8>,
}

/// A note: its text (ending in a newline) and signature lines, none when unsigned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub text: String,
    pub signatures: Vec<Signature>,
}

impl Note {
    /// A signed note, or an unsigned text (no blank line).
    pub fn parse(s: &str) -> Result<Self, String> {
        let Some(split) = s.rfind("\n\n") else {
            if !s.ends_with('\n') {
                return Err("a note ends with a newline".into());
            }
            return Ok(Self {
                text: s.to_owned(),
                signatures: Vec::new(),
            });
        };
        let (text, sigs) = (&s[..=split], &s[split + 2..]);
        let mut signatures = Vec::new();
        for line in sigs.lines() {
            let rest = line
                .strip_prefix(SIG_PREFIX)
                .ok_or_else(|| format!("{line:?} is not a signature line"))?;
            let (name, blob) = rest
                .split_once(' ')
                .ok_or_else(|| format!("{line:?} is not a signature line"))?;
            let blob = B64
                .decode(blob)
                .map_err(|_| format!("{line:?} is not a signature line"))?;
            signatures.push(Signature {
                name: name.to_owned(),
                blob,
            });
        }
        Ok(Self {
            text: text.to_owned(),
            signatures,
        })
    }
}

/// A checkpoint's body (tlog-checkpoint): origin, tree size and root, one per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
}

impl Checkpoint {
    pub fn text(&self) -> String {
        format!("{}\n{}\n{}\n", self.origin, self.size, B64.encode(self.root))
    }

    /// The checkpoint a note's text holds (extension lines after the root are allowed).
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut lines = text.lines();
        let (Some(origin), Some(size), Some(root)) = (lines.next(), lines.next(), lines.next()) else {
            return Err("a checkpoint has an origin, a size and a root hash".into());
        };
        let size = size.parse().map_err(|_| format!("{size:?} is not a tree size"))?;
        let root = B64
            .decode(root)
            .ok()
            .and_then(|r| <Hash>::try_from(r).ok())
            .ok_or_else(|| format!("{root:?} is not a base64 SHA-256 root hash"))?;
        if origin.is_empty() {
            return Err("a checkpoint's origin is empty".into());
        }
        Ok(Self {
            origin: origin.to_owned(),
            size,
            root,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// golang.org/x/mod/sumdb/note's published example key and signature.
    const GO_SIGNER: &str = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
    const GO_VERIFIER: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
    const GO_TEXT: &str =
        "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n";
    const GO_SIG: &str = "\u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";

    #[test]
    fn signs_and_verifies_as_the_published_go_example_does() {
        let key = SigningKey::parse(GO_SIGNER).unwrap();
        assert_eq!(key.verifier(), GO_VERIFIER);
        let signed = key.sign(GO_TEXT);
        assert_eq!(signed, format!("{GO_TEXT}\n{GO_SIG}"));
        let v = VerifierKey::parse(GO_VERIFIER).unwrap();
        assert!(v.verifies(&Note::parse(&signed).unwrap()));
        let changed = signed.replace("cryptography", "cryptographY");
        assert!(!v.verifies(&Note::parse(&changed).unwrap()));
    }

    #[test]
    fn a_generated_key_signs_what_its_verifier_checks_and_no_other_does() {
        let (secret, verifier) = SigningKey::generate("tagpin.example/log").unwrap();
        let key = SigningKey::parse(&secret).unwrap();
        let cp = Checkpoint {
            origin: key.name().into(),
            size: 3,
            root: [7; 32],
        };
        let note = Note::parse(&key.sign(&cp.text())).unwrap();
        assert!(VerifierKey::parse(&verifier).unwrap().verifies(&note));
        assert_eq!(Checkpoint::parse(&note.text).unwrap(), cp);
        let (_, other) = SigningKey::generate("tagpin.example/log").unwrap();
        assert!(!VerifierKey::parse(&other).unwrap().verifies(&note));
        assert!(Note::parse(&cp.text()).unwrap().signatures.is_empty());
        assert!(SigningKey::generate("two words").is_err());
        assert!(VerifierKey::parse(&verifier.replacen('+', "+0", 1)).is_err());
    }
}
