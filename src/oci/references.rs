//! What a manifest references, so content a pin depends on can be kept from deletion.
//!
//! image-spec `manifest.md`: an image manifest names its `config` and `layers` blobs;
//! `image-index.md`: an index names child manifests in `manifests`. Docker's manifest
//! list and schema 2 manifest use the same fields; schema 1 lists `fsLayers[].blobSum`.
//! A `subject` is not a dependency (a signature does not keep its image alive) and is
//! left out. Digests outside the grammar are skipped: no request can name them either.
//!
//! Keys are matched to these fields the way the upstream registry matches them (Go's
//! `encoding/json`: without regard to case, see [`strict_json::fold`]), and every one of
//! duplicate keys counts where Go keeps only the last: a manifest tagpin did not check
//! (an adopted tag's, an index's child pushed by digest) never references less here than
//! it does to the registry. A pushed manifest passed [`strict_json::check`] first, so
//! for it this is exactly the registry's reading.

use std::fmt;

use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::{strict_json, Digest};

/// The digests one manifest depends on.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct References {
    /// Blobs: the config and the layers.
    pub blobs: Vec<Digest>,
    /// Child manifests of an index or manifest list.
    pub manifests: Vec<Digest>,
}

/// The references of a manifest's bytes. Bytes that are not a JSON object reference
/// nothing; a value of an unexpected type is passed over (the registry refuses such a
/// manifest); JSON that breaks off keeps what was read before it.
pub fn references(bytes: &[u8]) -> References {
    let mut refs = References::default();
    let mut de = serde_json::Deserializer::from_slice(bytes);
    // An error only ends the reading early: what was found stays found.
    let _ = Read {
        out: &mut refs,
        role: Role::Manifest,
    }
    .deserialize(&mut de);
    refs.blobs.sort();
    refs.blobs.dedup();
    refs.manifests.sort();
    refs.manifests.dedup();
    refs
}

/// Where a digest found goes.
#[derive(Clone, Copy)]
enum Kind {
    Blob,
    Manifest,
}

/// What the value being read is to the manifest.
#[derive(Clone, Copy)]
enum Role {
    Manifest,
    Descriptor(Kind),
    Descriptors(Kind),
    FsLayer,
    FsLayers,
    Digest(Kind),
}

impl Role {
    /// The role of the value under `key` in an object of this role, if it is read.
    fn field(self, key: &str) -> Option<Role> {
        let key = strict_json::fold(key);
        match (self, key.as_str()) {
            (Role::Manifest, "config") => Some(Role::Descriptor(Kind::Blob)),
            (Role::Manifest, "layers") => Some(Role::Descriptors(Kind::Blob)),
            (Role::Manifest, "manifests") => Some(Role::Descriptors(Kind::Manifest)),
            (Role::Manifest, "fslayers") => Some(Role::FsLayers),
            (Role::Descriptor(kind), "digest") => Some(Role::Digest(kind)),
            (Role::FsLayer, "blobsum") => Some(Role::Digest(Kind::Blob)),
            _ => None,
        }
    }

    /// The role of an array's elements, if they are read.
    fn element(self) -> Option<Role> {
        match self {
            Role::Descriptors(kind) => Some(Role::Descriptor(kind)),
            Role::FsLayers => Some(Role::FsLayer),
            _ => None,
        }
    }
}

/// An object key as Go reads it: bytes that are not UTF-8 (raw, or a lone surrogate
/// escape) become U+FFFD rather than an error, so a key no field is named like cannot end
/// the reading before the fields after it.
struct LossyKey;

impl<'de> DeserializeSeed<'de> for LossyKey {
    type Value = String;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
        d.deserialize_bytes(self)
    }
}

impl<'de> Visitor<'de> for LossyKey {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_owned())
    }

    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<String, E> {
        Ok(String::from_utf8_lossy(v).into_owned())
    }
}

/// Reads one value in its role, adding the digests it names to `out`.
struct Read<'a> {
    out: &'a mut References,
    role: Role,
}

impl<'de> DeserializeSeed<'de> for Read<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Read<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a manifest")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key_seed(LossyKey)? {
            match self.role.field(&key) {
                Some(role) => map.next_value_seed(Read {
                    out: &mut *self.out,
                    role,
                })?,
                None => map.next_value::<IgnoredAny>().map(|_| ())?,
            }
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        match self.role.element() {
            Some(role) => {
                while let Some(()) = seq.next_element_seed(Read {
                    out: &mut *self.out,
                    role,
                })? {}
            }
            None => while seq.next_element::<IgnoredAny>()?.is_some() {},
        }
        Ok(())
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<(), E> {
        if let (Role::Digest(kind), Ok(d)) = (self.role, Digest::parse(v)) {
            match kind {
                Kind::Blob => self.out.blobs.push(d),
                Kind::Manifest => self.out.manifests.push(d),
            }
        }
        Ok(())
    }

    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    #[test]
    fn an_image_manifest_references_its_config_and_layers_but_not_its_subject() {
        let m = format!(
            r#"{{"schemaVersion":2,"config":{{"digest":"{}"}},"layers":[{{"digest":"{}"}},{{"digest":"{}"}},{{"digest":"{}"}}],"subject":{{"digest":"{}"}}}}"#,
            d('a'),
            d('b'),
            d('c'),
            d('b'),
            d('e')
        );
        let r = references(m.as_bytes());
        let digests = |v: &[Digest]| v.iter().map(|x| x.as_str().to_owned()).collect::<Vec<_>>();
        assert_eq!(digests(&r.blobs), vec![d('a'), d('b'), d('c')]);
        assert!(r.manifests.is_empty());
    }

    #[test]
    fn an_index_references_its_children() {
        let m = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"digest":"{}"}},{{"digest":"{}"}}]}}"#,
            d('1'),
            d('2')
        );
        let r = references(m.as_bytes());
        assert_eq!(r.manifests.len(), 2);
        assert!(r.blobs.is_empty());
    }

    #[test]
    fn schema1_layers_bad_digests_and_non_objects() {
        let m = format!(r#"{{"fsLayers":[{{"blobSum":"{}"}},{{"blobSum":"md5:x"}}]}}"#, d('f'));
        assert_eq!(references(m.as_bytes()).blobs.len(), 1);
        assert_eq!(references(b"[1,2]"), References::default());
        assert_eq!(references(br#"{"layers":[{"digest":"nope"}]}"#), References::default());
        assert_eq!(
            references(br#"{"layers":{"digest":1},"config":[2]}"#),
            References::default()
        );
    }

    #[test]
    fn keys_in_any_case_and_every_duplicate_count() {
        let m = format!(
            r#"{{"Config":{{"DIGEST":"{}"}},"layers":[{{"digest":"{}"}}],"LAYERS":[{{"Digest":"{}"}}],"manifeſts":[{{"digest":"{}"}}],"fslayers":[{{"BLOBSUM":"{}"}}]}}"#,
            d('a'),
            d('b'),
            d('c'),
            d('d'),
            d('e')
        );
        let r = references(m.as_bytes());
        assert_eq!(r.blobs.len(), 4);
        assert_eq!(r.manifests.len(), 1);
        // Broken off after the first layer: what was read stays.
        let cut = format!(r#"{{"layers":[{{"digest":"{}"}},{{"dig"#, d('a'));
        assert_eq!(references(cut.as_bytes()).blobs.len(), 1);
    }

    #[test]
    fn a_key_that_is_not_utf8_does_not_hide_the_fields_after_it() {
        let layer = d('b');
        let raw = [
            br#"{"schemaVersion":2,"x"#.as_slice(),
            &[0xff, 0xfe],
            br#"":1,"layers":[{"digest":""#,
            layer.as_bytes(),
            br#""}]}"#,
        ]
        .concat();
        assert_eq!(references(&raw).blobs.len(), 1, "raw bytes");
        let escaped = format!(r#"{{"schemaVersion":2,"\ud800":1,"layers":[{{"digest":"{layer}"}}]}}"#);
        assert_eq!(references(escaped.as_bytes()).blobs.len(), 1, "lone surrogate");
    }
}
