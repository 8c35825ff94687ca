//! What a manifest references, so content a pin depends on can be kept from deletion.
//!
//! image-spec `manifest.md`: an image manifest names its `config` and `layers` blobs;
//! `image-index.md`: an index names child manifests in `manifests`. Docker's manifest
//! list and schema 2 manifest use the same fields; schema 1 lists `fsLayers[].blobSum`.
//! A `subject` is not a dependency (a signature does not keep its image alive) and is
//! left out. Digests outside the grammar are skipped: no request can name them either.

use serde::Deserialize;

use super::Digest;

/// The digests one manifest depends on.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct References {
    /// Blobs: the config and the layers.
    pub blobs: Vec<Digest>,
    /// Child manifests of an index or manifest list.
    pub manifests: Vec<Digest>,
}

#[derive(Deserialize)]
struct Descriptor {
    digest: Option<String>,
}

#[derive(Deserialize)]
struct FsLayer {
    #[serde(rename = "blobSum")]
    blob_sum: Option<String>,
}

#[derive(Deserialize)]
struct Raw {
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
    manifests: Option<Vec<Descriptor>>,
    #[serde(rename = "fsLayers")]
    fs_layers: Option<Vec<FsLayer>>,
}

/// The references of a manifest's bytes; bytes that are not a JSON object reference
/// nothing (tagpin refuses non-JSON manifest pushes before this is asked).
pub fn references(bytes: &[u8]) -> References {
    let Ok(raw) = serde_json::from_slice::<Raw>(bytes) else {
        return References::default();
    };
    let parse = |d: Option<String>| d.and_then(|d| Digest::parse(&d).ok());
    let mut refs = References::default();
    refs.blobs.extend(raw.config.and_then(|c| parse(c.digest)));
    for l in raw.layers.unwrap_or_default() {
        refs.blobs.extend(parse(l.digest));
    }
    for l in raw.fs_layers.unwrap_or_default() {
        refs.blobs.extend(parse(l.blob_sum));
    }
    for m in raw.manifests.unwrap_or_default() {
        refs.manifests.extend(parse(m.digest));
    }
    refs.blobs.sort();
    refs.blobs.dedup();
    refs.manifests.sort();
    refs.manifests.dedup();
    refs
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
    }
}
