//! The append-only comparison, as a pure function over two manifests' bytes.
//!
//! For signature, attestation and referrer-list tags (cosign's `sha256-<hex>.sig` and
//! `.att`; the referrers tag schema of distribution-spec `spec.md`, "Referrers Tag
//! Schema"), a push may only add. The new manifest keeps everything the pinned one holds:
//! - the entry list (`manifests` of an index or Docker manifest list, `layers` of an image
//!   manifest) contains every pinned descriptor as an equal JSON object, as many times as
//!   the pinned list holds it; order may change and new descriptors may go anywhere.
//!   Whole objects are compared, unknown fields included: cosign keeps the signature in a
//!   layer descriptor's annotations, so rewriting them replaces a signature;
//! - `mediaType` equal (absent counts as a value); `subject` equal, neither added nor
//!   removed; top-level `annotations` may gain keys but not lose or change one; `config`
//!   may change; every other top-level field is equal.

use serde_json::{Map, Value};

/// Why a push is not an append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotAppend {
    /// The new bytes are not a JSON object.
    NotAnObject,
    /// The pinned bytes are not a JSON object (nothing can be compared safely).
    PinnedNotAnObject,
    /// The pinned bytes hold keys the upstream reads differently from this comparison
    /// (a repeated key, or one differing only in case from a field name): a pin adopted
    /// from the upstream as it stood. Nothing can be compared safely.
    PinnedAmbiguous,
    MediaTypeChanged,
    SubjectChanged,
    /// Pinned entries missing from the new list: (list name, how many, first digest).
    EntriesRemoved {
        list: &'static str,
        missing: usize,
        first: String,
    },
    /// A pinned top-level annotation was removed or changed.
    AnnotationChanged(String),
    /// Another top-level field differs.
    FieldChanged(String),
}

impl std::fmt::Display for NotAppend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotAnObject => write!(f, "the pushed manifest is not a JSON object"),
            Self::PinnedNotAnObject => write!(f, "the pinned manifest is not a JSON object"),
            Self::PinnedAmbiguous => write!(
                f,
                "the pinned manifest repeats a key or spells one in another case, so the upstream may read \
                 its entries differently and nothing can be compared safely"
            ),
            Self::MediaTypeChanged => write!(f, "it changes the manifest's mediaType"),
            Self::SubjectChanged => write!(f, "it changes, adds or removes the subject"),
            Self::EntriesRemoved { list, missing, first } => write!(
                f,
                "it would remove or alter {missing} pinned {list} entr{} (first: {first})",
                if *missing == 1 { "y" } else { "ies" }
            ),
            Self::AnnotationChanged(k) => write!(f, "it removes or changes the annotation {k:?}"),
            Self::FieldChanged(k) => write!(f, "it changes the top-level field {k:?}"),
        }
    }
}

/// The list whose entries may only grow.
fn entry_list(m: &Map<String, Value>) -> &'static str {
    if m.contains_key("manifests") {
        "manifests"
    } else {
        "layers"
    }
}

/// Whether `new` keeps everything `pinned` holds.
pub fn check_append(pinned: &[u8], new: &[u8]) -> Result<(), NotAppend> {
    let Ok(Value::Object(old)) = serde_json::from_slice::<Value>(pinned) else {
        return Err(NotAppend::PinnedNotAnObject);
    };
    if crate::oci::strict_json::check(pinned).is_err() {
        return Err(NotAppend::PinnedAmbiguous);
    }
    let Ok(Value::Object(new)) = serde_json::from_slice::<Value>(new) else {
        return Err(NotAppend::NotAnObject);
    };
    if old.get("mediaType") != new.get("mediaType") {
        return Err(NotAppend::MediaTypeChanged);
    }
    if old.get("subject") != new.get("subject") {
        return Err(NotAppend::SubjectChanged);
    }
    let list = entry_list(&old);
    let empty = Vec::new();
    let as_list = |m: &Map<String, Value>| match m.get(list) {
        Some(Value::Array(a)) => a.clone(),
        _ => empty.clone(),
    };
    // A multiset of the new entries, keyed by their canonical text (serde_json's maps
    // are sorted, so equal objects print alike whatever their key order): linear in the
    // sizes of both lists, where comparing each pinned entry against every new one would
    // be quadratic.
    let mut remaining: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for e in as_list(&new) {
        *remaining.entry(e.to_string()).or_default() += 1;
    }
    let mut missing = Vec::new();
    for entry in as_list(&old) {
        match remaining.get_mut(&entry.to_string()) {
            Some(n) if *n > 0 => *n -= 1,
            _ => missing.push(entry),
        }
    }
    if let Some(first) = missing.first() {
        return Err(NotAppend::EntriesRemoved {
            list,
            missing: missing.len(),
            first: first
                .get("digest")
                .and_then(Value::as_str)
                .unwrap_or("(no digest)")
                .to_owned(),
        });
    }
    if let Some(Value::Object(old_ann)) = old.get("annotations") {
        let new_ann = match new.get("annotations") {
            Some(Value::Object(a)) => a.clone(),
            _ => Map::new(),
        };
        for (k, v) in old_ann {
            if new_ann.get(k) != Some(v) {
                return Err(NotAppend::AnnotationChanged(k.clone()));
            }
        }
    } else if old.get("annotations").is_some() && old.get("annotations") != new.get("annotations") {
        return Err(NotAppend::FieldChanged("annotations".into()));
    }
    let free = ["config", "annotations", list, "mediaType", "subject"];
    for key in old.keys().chain(new.keys()) {
        if free.contains(&key.as_str()) {
            continue;
        }
        if old.get(key) != new.get(key) {
            return Err(NotAppend::FieldChanged(key.clone()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn sig(n: u32, text: &str) -> Value {
        json!({
            "mediaType": "application/vnd.dev.cosign.simplesigning.v1+json",
            "digest": format!("sha256:{:064x}", n),
            "size": 200 + n,
            "annotations": {"dev.cosignproject.cosign/signature": text}
        })
    }

    fn manifest(layers: Vec<Value>) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": format!("sha256:{:064x}", layers.len()), "size": 2},
            "layers": layers
        }))
        .unwrap()
    }

    #[test]
    fn a_pinned_manifest_the_upstream_reads_differently_cannot_be_extended() {
        // Adopted as the upstream held it: "Manifests" is Go's `manifests`, whose entry
        // this comparison would not see, so dropping it must not pass for an append.
        let d = format!("sha256:{}", "a".repeat(64));
        let pinned = format!(r#"{{"schemaVersion":2,"Manifests":[{{"digest":"{d}"}}]}}"#);
        let new = r#"{"schemaVersion":2,"manifests":[]}"#;
        assert!(matches!(
            check_append(pinned.as_bytes(), new.as_bytes()),
            Err(NotAppend::PinnedAmbiguous)
        ));
    }

    #[test]
    fn adding_a_signature_is_an_append_in_any_position() {
        let one = manifest(vec![sig(1, "a")]);
        assert_eq!(check_append(&one, &manifest(vec![sig(1, "a"), sig(2, "b")])), Ok(()));
        assert_eq!(check_append(&one, &manifest(vec![sig(2, "b"), sig(1, "a")])), Ok(()));
        assert_eq!(check_append(&one, &one), Ok(()));
    }

    #[test]
    fn dropping_or_rewriting_a_signature_is_refused() {
        let two = manifest(vec![sig(1, "a"), sig(2, "b")]);
        assert!(matches!(
            check_append(&two, &manifest(vec![sig(1, "a")])),
            Err(NotAppend::EntriesRemoved { missing: 1, .. })
        ));
        // Same layer digest, different signature annotation: a replaced signature.
        assert!(matches!(
            check_append(&two, &manifest(vec![sig(1, "a"), sig(2, "forged")])),
            Err(NotAppend::EntriesRemoved { .. })
        ));
    }

    #[test]
    fn entries_compare_as_objects_whatever_their_key_order() {
        let a: Value =
            serde_json::from_str(r#"{"digest":"sha256:1","size":1,"annotations":{"x":"1","y":"2"}}"#).unwrap();
        let b: Value =
            serde_json::from_str(r#"{"annotations":{"y":"2","x":"1"},"size":1,"digest":"sha256:1"}"#).unwrap();
        assert_eq!(check_append(&manifest(vec![a]), &manifest(vec![b])), Ok(()));
    }

    #[test]
    fn large_lists_are_compared_entry_for_entry() {
        // 20,000 pinned entries against 20,001 kept in another order, and against the
        // same list less one entry from its middle. (The cost is by construction, a
        // multiset lookup per entry; no timing is asserted here.)
        let old: Vec<Value> = (0..20_000).map(|n| sig(n, "s")).collect();
        let mut new: Vec<Value> = old.iter().rev().cloned().collect();
        new.push(sig(99_999, "t"));
        assert_eq!(check_append(&manifest(old.clone()), &manifest(new)), Ok(()));
        let mut fewer = old.clone();
        let gone = fewer.remove(10_000);
        assert_eq!(
            check_append(&manifest(old), &manifest(fewer)),
            Err(NotAppend::EntriesRemoved {
                list: "layers",
                missing: 1,
                first: gone["digest"].as_str().unwrap().to_owned(),
            })
        );
    }

    #[test]
    fn a_duplicated_entry_must_stay_duplicated() {
        let dup = manifest(vec![sig(1, "a"), sig(1, "a")]);
        assert!(check_append(&dup, &manifest(vec![sig(1, "a")])).is_err());
        assert_eq!(
            check_append(&dup, &manifest(vec![sig(1, "a"), sig(3, "c"), sig(1, "a")])),
            Ok(())
        );
    }

    #[test]
    fn media_type_subject_annotations_and_other_fields() {
        let subject = json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": format!("sha256:{:064x}", 9), "size": 5});
        let index = |entries: Vec<Value>, subject: Option<Value>, ann: Value| {
            let mut m = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": entries, "annotations": ann});
            if let Some(s) = subject {
                m["subject"] = s;
            }
            serde_json::to_vec(&m).unwrap()
        };
        let base = index(vec![sig(1, "a")], Some(subject.clone()), json!({"k": "v"}));
        assert_eq!(
            check_append(
                &base,
                &index(
                    vec![sig(1, "a"), sig(2, "b")],
                    Some(subject.clone()),
                    json!({"k": "v", "n": "1"})
                )
            ),
            Ok(())
        );
        assert_eq!(
            check_append(&base, &index(vec![sig(1, "a")], None, json!({"k": "v"}))),
            Err(NotAppend::SubjectChanged)
        );
        assert_eq!(
            check_append(
                &base,
                &index(vec![sig(1, "a")], Some(subject.clone()), json!({"k": "w"}))
            ),
            Err(NotAppend::AnnotationChanged("k".into()))
        );
        let image = manifest(vec![sig(1, "a")]);
        assert_eq!(check_append(&image, &base), Err(NotAppend::MediaTypeChanged));
        let mut other: Value = serde_json::from_slice(&image).unwrap();
        other["schemaVersion"] = json!(3);
        assert_eq!(
            check_append(&image, &serde_json::to_vec(&other).unwrap()),
            Err(NotAppend::FieldChanged("schemaVersion".into()))
        );
        assert_eq!(check_append(&image, b"[]"), Err(NotAppend::NotAnObject));
        assert_eq!(check_append(b"x", &image), Err(NotAppend::PinnedNotAnObject));
    }

    proptest! {
        /// Appending any entries anywhere is accepted; removing any pinned entry is not.
        #[test]
        fn appends_pass_and_removals_fail(pinned in proptest::collection::vec(0u32..6, 0..6), added in proptest::collection::vec(6u32..12, 0..4), drop in 0usize..6, seed in 0usize..100) {
            let old: Vec<Value> = pinned.iter().map(|n| sig(*n, "s")).collect();
            let mut grown = old.clone();
            for (i, n) in added.iter().enumerate() {
                let at = (seed + i) % (grown.len() + 1);
                grown.insert(at, sig(*n, "s"));
            }
            prop_assert_eq!(check_append(&manifest(old.clone()), &manifest(grown.clone())), Ok(()));
            if !old.is_empty() {
                let victim = &old[drop % old.len()];
                let pos = grown.iter().position(|e| e == victim).unwrap();
                grown.remove(pos);
                prop_assert!(check_append(&manifest(old), &manifest(grown)).is_err());
            }
        }
    }
}
