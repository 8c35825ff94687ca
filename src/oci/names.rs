//! Validated newtypes for the three values a Distribution API path carries.
//!
//! The grammar is the one in distribution-spec `spec.md`, section "Pulling manifests":
//! - name: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`
//! - tag: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`
//! - digest: `algorithm ":" encoded`, with the registered algorithms of image-spec
//!   `descriptor.md` (sha256: 64 lower-case hex characters, sha512: 128).
//!
//! A value can only be built through its constructor, so holding a `Repository` means
//! the string was checked. Nothing is decoded: a `%` anywhere is simply not in the grammar.

use std::fmt;

/// Repository names longer than this are refused. distribution 2.8 uses the same limit
/// (`reference.NameTotalLengthMax`), and most clients cap host plus name at 255.
pub const MAX_NAME_LEN: usize = 255;
/// The tag grammar allows at most 128 characters.
pub const MAX_TAG_LEN: usize = 128;

/// Why a path value was rejected; each maps to one OCI error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("invalid repository name {0:?}: components are lower-case letters and digits joined by '.', '_', '__' or '-', separated by '/', at most 255 characters")]
    Repository(String),
    #[error("invalid tag {0:?}: a tag is 1 to 128 characters of [A-Za-z0-9_.-] and cannot start with '.' or '-'")]
    Tag(String),
    #[error("invalid digest {0:?}: expected sha256:<64 hex> or sha512:<128 hex>, lower case")]
    Digest(String),
}

/// A repository name such as `library/ubuntu`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Repository(String);

impl Repository {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        if s.is_empty() || s.len() > MAX_NAME_LEN || !s.split('/').all(valid_component) {
            return Err(NameError::Repository(truncate(s)));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// One path component: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: one '.', one or two '_', or any number of '-'.
        let start = i;
        let sep = b[i];
        while i < b.len() && b[i] == sep {
            i += 1;
        }
        let run = i - start;
        let ok = match sep {
            b'.' => run == 1,
            b'_' => run <= 2,
            b'-' => true,
            _ => false,
        };
        // Exactly one separator between alphanumeric runs: "a_-b" is not a name.
        if !ok || !alnum(b[i]) {
            return false;
        }
    }
    true
}

/// A tag such as `1.4.2`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(String);

impl Tag {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        let b = s.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= MAX_TAG_LEN
            && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
            && b[1..]
                .iter()
                .all(|&x| x.is_ascii_alphanumeric() || matches!(x, b'_' | b'.' | b'-'));
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(NameError::Tag(truncate(s)))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The tag that sorts after every other (byte order): `z`, the greatest byte the
    /// grammar allows, as many times as a tag may be long. A cursor past a whole
    /// repository's tags.
    pub fn greatest() -> Self {
        Self("z".repeat(MAX_TAG_LEN))
    }
}

/// The digest algorithms tagpin accepts in a write path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DigestAlgorithm {
    Sha256,
    Sha512,
}

/// A content digest such as `sha256:e3b0…`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

impl Digest {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        let err = || NameError::Digest(truncate(s));
        let (alg, hex) = s.split_once(':').ok_or_else(err)?;
        let want = match alg {
            "sha256" => 64,
            "sha512" => 128,
            _ => return Err(err()),
        };
        let lower_hex = |x: &u8| x.is_ascii_digit() || (b'a'..=b'f').contains(x);
        if hex.len() != want || !hex.as_bytes().iter().all(lower_hex) {
            return Err(err());
        }
        Ok(Self(s.to_owned()))
    }

    /// The digest of `bytes` under sha256, the algorithm every pin is recorded with.
    pub fn sha256_of(bytes: &[u8]) -> Self {
        use sha2::Digest as _;
        Self(format!("sha256:{:x}", sha2::Sha256::digest(bytes)))
    }

    /// The digest of `bytes` under `alg`, for checking a push by digest.
    pub fn compute(alg: DigestAlgorithm, bytes: &[u8]) -> Self {
        use sha2::Digest as _;
        match alg {
            DigestAlgorithm::Sha256 => Self::sha256_of(bytes),
            DigestAlgorithm::Sha512 => Self(format!("sha512:{:x}", sha2::Sha512::digest(bytes))),
        }
    }

    pub fn algorithm(&self) -> DigestAlgorithm {
        if self.0.starts_with("sha512:") {
            DigestAlgorithm::Sha512
        } else {
            DigestAlgorithm::Sha256
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The `<reference>` of a manifest path: a tag or a digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reference {
    Tag(Tag),
    Digest(Digest),
}

impl Reference {
    /// A reference containing ':' can only be a digest (':' is not in the tag grammar).
    pub fn parse(s: &str) -> Result<Self, NameError> {
        if s.contains(':') {
            Digest::parse(s).map(Self::Digest)
        } else {
            Tag::parse(s).map(Self::Tag)
        }
    }
}

/// Error messages quote at most this much of a hostile value.
fn truncate(s: &str) -> String {
    s.chars().take(300).collect()
}

macro_rules! display_as_str {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    )*};
}
display_as_str!(Repository, Tag, Digest);

/// Stored and exported as their text; reading one back checks the grammar again, so a
/// damaged record cannot smuggle an invalid value in.
macro_rules! serde_as_str {
    ($($t:ty),*) => {$(
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }
        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                <$t>::parse(&text).map_err(serde::de::Error::custom)
            }
        }
    )*};
}
serde_as_str!(Repository, Tag, Digest);

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tag(t) => t.fmt(f),
            Self::Digest(d) => d.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D256: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn repository_grammar() {
        let good = [
            "a",
            "library/ubuntu",
            "a.b/c_d/e__f/g-h/i---j",
            "0/1/2",
            "my-api",
            &"a".repeat(255),
        ];
        for g in good {
            assert!(Repository::parse(g).is_ok(), "{g} should be valid");
        }
        let long = "a".repeat(256);
        let bad = [
            "", "A", "a/", "/a", "a//b", "a/./b", "a/../b", ".", "..", "a..b", "a___b", "a_", "-a", "a-", "a.",
            "a%2Fb", "a%61", "a\\b", "a;b", "ä", "a b", "a\0", "a/B", "a:b", &long,
        ];
        for b in bad {
            assert!(Repository::parse(b).is_err(), "{b:?} should be invalid");
        }
    }

    #[test]
    fn tag_grammar() {
        for g in ["latest", "1.4.2", "_x", "A-b.C_d", "0", &"t".repeat(128)] {
            assert!(Tag::parse(g).is_ok(), "{g} should be valid");
        }
        let long = "t".repeat(129);
        for b in ["", ".x", "-x", "a/b", "a:b", "a%41", "a;b", "é", "a b", "a+b", &long] {
            assert!(Tag::parse(b).is_err(), "{b:?} should be invalid");
        }
    }

    #[test]
    fn the_greatest_tag_is_a_tag_and_sorts_after_every_other() {
        let greatest = Tag::greatest();
        assert_eq!(Tag::parse(greatest.as_str()).as_ref(), Ok(&greatest));
        for t in ["z", "zz", "Z", "_", "latest", &"z".repeat(127), &"y".repeat(128)] {
            assert!(Tag::parse(t).unwrap() < greatest, "{t}");
        }
    }

    #[test]
    fn digest_grammar() {
        assert!(Digest::parse(D256).is_ok());
        assert!(Digest::parse(&format!("sha512:{}", "a".repeat(128))).is_ok());
        let upper = D256.to_uppercase().replace("SHA256", "sha256");
        for b in [
            "sha256:",
            "sha256:abc",
            "md5:e3b0c44298fc1c149afbf4c8996fb924",
            &upper,
            &format!("{D256}0"),
            &D256.replace(':', "%3A"),
            "sha256",
        ] {
            assert!(Digest::parse(b).is_err(), "{b:?} should be invalid");
        }
    }

    #[test]
    fn sha256_of_empty_input_is_the_well_known_digest() {
        assert_eq!(Digest::sha256_of(b"").as_str(), D256);
        assert_eq!(Digest::compute(DigestAlgorithm::Sha256, b"").as_str(), D256);
        assert_eq!(
            Digest::compute(DigestAlgorithm::Sha512, b"").algorithm(),
            DigestAlgorithm::Sha512
        );
    }

    #[test]
    fn reference_is_a_digest_exactly_when_it_has_a_colon() {
        assert!(matches!(Reference::parse(D256), Ok(Reference::Digest(_))));
        assert!(matches!(Reference::parse("v1"), Ok(Reference::Tag(_))));
        assert!(Reference::parse("v1:x").is_err());
    }
}
