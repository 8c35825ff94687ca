//! The one reading of a manifest that tagpin and the upstream must share.
//!
//! distribution decodes manifests with Go's `encoding/json`, which matches an object's
//! keys to struct fields without regard to case (`"Config"` fills `config`, and so does
//! `"confiK"` with the Kelvin sign) and keeps the last of duplicate keys. Other readers,
//! tagpin's own serde structs among them, match exactly and keep the first or fail. A
//! manifest that leans on either difference means one thing to the registry and another
//! to everything else, so a push of one is refused: [`check`] walks every object of the
//! document once, without building it, and names the first such key.

use std::collections::HashMap;
use std::fmt;

use serde::de::{DeserializeSeed, MapAccess, SeqAccess, Visitor};

/// Every key the registry, or a client pulling the manifest, reads as a field: image-spec
/// `manifest.md`, `image-index.md`, `descriptor.md`; Docker's schema 2, manifest list and
/// schema 1 (with its JWS signatures).
pub const FIELDS: &[&str] = &[
    "schemaVersion",
    "mediaType",
    "artifactType",
    "config",
    "layers",
    "manifests",
    "subject",
    "annotations",
    "digest",
    "size",
    "urls",
    "data",
    "platform",
    "architecture",
    "os",
    "os.version",
    "os.features",
    "variant",
    "features",
    "fsLayers",
    "blobSum",
    "history",
    "v1Compatibility",
    "name",
    "tag",
    "signatures",
    "header",
    "signature",
    "protected",
    "jwk",
    "alg",
    "x5c",
];

/// What makes a manifest ambiguous, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ambiguity {
    pub kind: AmbiguityKind,
    /// The object holding the key, outermost step first.
    pub at: Vec<Step>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AmbiguityKind {
    /// The same key twice in one object.
    Duplicate { key: String },
    /// A key that is a field name in another case.
    CaseOfField { key: String, field: &'static str },
    /// Two keys of one object that differ only in case.
    CaseOfKey { key: String, earlier: String },
}

/// One step of the path to an object: a key or an array index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Key(String),
    Index(usize),
}

/// A key cut short for a message, with the mark of the cut if there is one.
fn cut(key: &str) -> (&str, &str) {
    const MOST: usize = 100;
    match key.char_indices().nth(MOST) {
        Some((end, _)) => (&key[..end], "…"),
        None => (key, ""),
    }
}

/// A key as a message shows it: quoted, and cut short if long.
fn shown(key: &str) -> String {
    let (key, more) = cut(key);
    format!("{key:?}{more}")
}

impl fmt::Display for Ambiguity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut at = String::new();
        for step in &self.at {
            match step {
                Step::Key(k) => {
                    let (k, more) = cut(k);
                    let dot = if at.is_empty() { "" } else { "." };
                    at.push_str(&format!("{dot}{k}{more}"));
                }
                Step::Index(i) => at.push_str(&format!("[{i}]")),
            }
        }
        let at = match at.is_empty() {
            true => "at the top level".to_owned(),
            false => format!("in {at}"),
        };
        match &self.kind {
            AmbiguityKind::Duplicate { key } => write!(
                f,
                "the key {} appears twice {at}; the upstream registry keeps the last one and other readers may keep the first, so the manifest is ambiguous: write each key once",
                shown(key)
            ),
            AmbiguityKind::CaseOfField { key, field } => write!(
                f,
                "the key {} {at} differs only in case from the field {field:?}; the upstream registry reads it as {field:?} and other readers do not, so the manifest is ambiguous: write {field:?}",
                shown(key)
            ),
            AmbiguityKind::CaseOfKey { key, earlier } => write!(
                f,
                "the keys {} and {} {at} differ only in case; the upstream registry may read them as one field, so the manifest is ambiguous: write one of them",
                shown(earlier),
                shown(key)
            ),
        }
    }
}

/// Why a manifest's bytes were refused.
#[derive(Debug)]
pub enum Refused {
    NotJson(serde_json::Error),
    Ambiguous(Ambiguity),
}

/// Check that `bytes` are one JSON value with no duplicate key in any object and, outside
/// `annotations` (a map of free-form keys), no key that differs only in case from a
/// field name or from another key of its object.
pub fn check(bytes: &[u8]) -> Result<(), Refused> {
    let mut found = None;
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let walked = Walk {
        found: &mut found,
        free_keys: false,
    }
    .deserialize(&mut de)
    .and_then(|()| de.end());
    match (found, walked) {
        (Some(mut a), _) => {
            a.at.reverse();
            Err(Refused::Ambiguous(a))
        }
        (None, Err(e)) => Err(Refused::NotJson(e)),
        (None, Ok(())) => Ok(()),
    }
}

/// A key as Go's `encoding/json` compares it to a field name (`bytes.EqualFold`): ASCII
/// letters in one case, and the four letters outside ASCII that Go folds onto ASCII ones
/// (the Kelvin sign, long s, dotted capital I and dotless i). Any other character is kept
/// as lower case, which only ever compares keys with one another.
pub fn fold(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for c in key.chars() {
        match c {
            '\u{212A}' => out.push('k'),
            '\u{17F}' => out.push('s'),
            '\u{130}' | '\u{131}' => out.push('i'),
            c if c.is_ascii() => out.push(c.to_ascii_lowercase()),
            c => out.extend(c.to_lowercase()),
        }
    }
    out
}

/// The field a key names in another case, if any.
fn field_in_other_case(key: &str, folded: &str) -> Option<&'static str> {
    FIELDS
        .iter()
        .find(|f| f.eq_ignore_ascii_case(folded))
        .filter(|f| **f != key)
        .copied()
}

/// Walks one JSON value. The first ambiguity is stored in `found` and stops the walk with
/// an error; each object or array the error passes through on its way out adds its step.
struct Walk<'a> {
    found: &'a mut Option<Ambiguity>,
    /// The value is the object of an `annotations` field: its keys are data, not fields.
    free_keys: bool,
}

impl Walk<'_> {
    fn refuse<E: serde::de::Error>(&mut self, kind: AmbiguityKind) -> E {
        *self.found = Some(Ambiguity { kind, at: Vec::new() });
        E::custom("ambiguous manifest")
    }

    fn add_step(&mut self, step: Step) {
        if let Some(a) = self.found.as_mut() {
            a.at.push(step);
        }
    }

    /// The ambiguity of `key` among the `seen` keys of its object (folded to original).
    fn judge(&self, key: &str, folded: &str, seen: &HashMap<String, String>) -> Option<AmbiguityKind> {
        if let Some(earlier) = seen.get(folded) {
            // In a free map keys are stored as written: only an exact repeat gets here.
            return Some(match earlier == key {
                true => AmbiguityKind::Duplicate { key: key.to_owned() },
                false => AmbiguityKind::CaseOfKey {
                    key: key.to_owned(),
                    earlier: earlier.clone(),
                },
            });
        }
        if self.free_keys {
            return None;
        }
        field_in_other_case(key, folded).map(|field| AmbiguityKind::CaseOfField {
            key: key.to_owned(),
            field,
        })
    }
}

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walk<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        // Folded key to the key as written. In an annotations map, keys in different
        // cases are different keys (Go reads it as a map); only exact repeats collide,
        // so there the key is stored as written.
        let mut seen: HashMap<String, String> = HashMap::new();
        while let Some(key) = map.next_key::<String>()? {
            let folded = match self.free_keys {
                true => key.clone(),
                false => fold(&key),
            };
            if let Some(kind) = self.judge(&key, &folded, &seen) {
                return Err(self.refuse(kind));
            }
            let child = Walk {
                found: &mut *self.found,
                free_keys: !self.free_keys && key == "annotations",
            };
            if let Err(e) = map.next_value_seed(child) {
                self.add_step(Step::Key(key));
                return Err(e);
            }
            seen.insert(folded, key);
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0;
        loop {
            let child = Walk {
                found: &mut *self.found,
                free_keys: false,
            };
            match seq.next_element_seed(child) {
                Ok(Some(())) => i += 1,
                Ok(None) => return Ok(()),
                Err(e) => {
                    self.add_step(Step::Index(i));
                    return Err(e);
                }
            }
        }
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

    fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(json: &str) -> String {
        match check(json.as_bytes()) {
            Err(Refused::Ambiguous(a)) => a.to_string(),
            other => panic!("{json}: {other:?}"),
        }
    }

    #[test]
    fn ordinary_manifests_pass() {
        let m = r#"{"schemaVersion":2,"mediaType":"x","config":{"digest":"d","size":1},
            "layers":[{"digest":"a","annotations":{"A":"1","a":"2","Digest":"3"}},{"digest":"b"}],
            "annotations":{"org.x":"1"},"extra":{"Foo":[1,{"bar":null}]}}"#;
        assert!(check(m.as_bytes()).is_ok());
        assert!(check(b"[1,2]").is_ok());
    }

    #[test]
    fn case_variants_of_fields_are_named() {
        assert_eq!(
            refused(r#"{"Config":{}}"#),
            r#"the key "Config" at the top level differs only in case from the field "config"; the upstream registry reads it as "config" and other readers do not, so the manifest is ambiguous: write "config""#
        );
        assert!(refused(r#"{"layers":[{"digest":"a"},{"DIGEST":"b"}]}"#).contains(r#""DIGEST" in layers[1] differs"#));
        assert!(refused(r#"{"manifests":[{"platform":{"OS":"linux"}}]}"#).contains("in manifests[0].platform"));
        // Go's folding outside ASCII: the Kelvin sign and long s.
        assert!(refused("{\"s\u{17F}\":1,\"fsLayers\":[{\"blob\u{17F}um\":\"x\"}]}").contains("\"blobSum\""));
        for (key, field) in [
            ("d\u{131}gest", "digest"),
            ("D\u{130}GEST", "digest"),
            ("\u{17F}ize", "size"),
            ("jw\u{212A}", "jwk"),
        ] {
            let m = format!("{{\"con\u{212A}\":1,\"\u{212A}\":2,\"{key}\":1}}");
            assert!(refused(&m).contains(&format!("from the field {field:?}")), "{key}");
        }
        // Escapes are read before comparing.
        assert!(refused(r#"{"\u004cayers":[]}"#).contains(r#""Layers""#));
        // An annotations key in another place is a field like any other.
        assert!(refused(r#"{"Annotations":{}}"#).contains(r#"field "annotations""#));
    }

    #[test]
    fn duplicates_anywhere_and_case_twins_are_named() {
        assert!(
            refused(r#"{"layers":[],"layers":[]}"#).starts_with(r#"the key "layers" appears twice at the top level"#)
        );
        assert!(refused(r#"{"config":{"digest":"a","digest":"b"}}"#).contains("twice in config"));
        assert!(refused(r#"{"annotations":{"k":"1","k":"2"}}"#).contains("twice in annotations"));
        assert!(refused(r#"{"x":[[{"a":1,"a":2}]]}"#).contains("in x[0][0]"));
        assert_eq!(
            refused(r#"{"foo":1,"FOO":2}"#),
            r#"the keys "foo" and "FOO" at the top level differ only in case; the upstream registry may read them as one field, so the manifest is ambiguous: write one of them"#
        );
    }

    #[test]
    fn long_keys_are_cut_short_in_the_message() {
        let long = "\u{e9}".repeat(5000);
        let m = format!(r#"{{"{long}":{{"{long}":1,"{long}":2}}}}"#);
        let said = refused(&m);
        assert!(said.len() < 1000, "{said}");
        let cut = &long[..200];
        assert!(said.contains(&format!("\"{cut}\"… appears twice in {cut}…;")), "{said}");
    }

    #[test]
    fn not_json_is_told_apart() {
        for bad in [
            &b"{not json"[..],
            b"{\"a\":1} trailing",
            b"{\"a\":\"\\ud800\"}",
            b"\xff",
        ] {
            assert!(matches!(check(bad), Err(Refused::NotJson(_))), "{bad:?}");
        }
    }

    #[test]
    fn every_character_go_folds_onto_ascii_is_folded() {
        // A character whose single-character lower or upper case is an ASCII letter is one
        // Go folds onto that letter: each must fold like it here.
        for c in (0x80..=0x10FFFFu32).filter_map(char::from_u32) {
            let single = |s: String| {
                let mut it = s.chars();
                match (it.next(), it.next()) {
                    (Some(x), None) if x.is_ascii_alphabetic() => Some(x.to_ascii_lowercase()),
                    _ => None,
                }
            };
            let ascii = single(c.to_lowercase().collect()).or(single(c.to_uppercase().collect()));
            if let Some(a) = ascii {
                assert_eq!(fold(&c.to_string()), a.to_string(), "U+{:04X}", c as u32);
            }
        }
        assert_eq!(fold("\u{130}"), "i");
    }
}
