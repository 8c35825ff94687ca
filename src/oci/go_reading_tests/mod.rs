//! tagpin's reading of a manifest's references against a model of the upstream's: Go's
//! `encoding/json` decoding into distribution's structs. The model is written apart from
//! tagpin's code: its own tokenizer (which keeps every key, duplicates included), Go's
//! key folding (`unicode.ToUpper(unicode.ToLower(r))`), exact-name-first field matching,
//! and Go's decoding of a repeated key: a struct is decoded into again (fields merge), a
//! slice is reset to length zero and appended to, reusing the elements of its backing
//! array, so an element merges with the one it lands on.
//!
//! On generated manifests (keys in varying case, Go's non-ASCII folds, escapes,
//! duplicates, nesting, unknown fields), for every one: tagpin refuses it as ambiguous or
//! reads exactly the references Go does; tagpin's reading without the check (used for
//! manifests fetched from the upstream) never finds fewer; and one the model finds
//! unambiguous is never refused.

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;

mod generate;

use generate::manifest;

use super::strict_json::{check, Refused};
use super::{references, Digest, References};

// ---- A JSON tokenizer that keeps every key --------------------------------------------

#[derive(Debug, Clone)]
enum J {
    Obj(Vec<(String, J)>),
    Arr(Vec<J>),
    Str(String),
    Other,
    Null,
}

struct Tokens<'a> {
    b: &'a [u8],
    i: usize,
}

impl Tokens<'_> {
    fn ws(&mut self) {
        while self.i < self.b.len() && b" \t\r\n".contains(&self.b[self.i]) {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> bool {
        self.ws();
        let hit = self.b.get(self.i) == Some(&c);
        self.i += hit as usize;
        hit
    }

    fn value(&mut self) -> Option<J> {
        self.ws();
        match *self.b.get(self.i)? {
            b'{' => {
                self.i += 1;
                let mut entries = Vec::new();
                if self.eat(b'}') {
                    return Some(J::Obj(entries));
                }
                loop {
                    self.ws();
                    let key = self.string()?;
                    self.eat(b':').then_some(())?;
                    entries.push((key, self.value()?));
                    if self.eat(b'}') {
                        return Some(J::Obj(entries));
                    }
                    self.eat(b',').then_some(())?;
                }
            }
            b'[' => {
                self.i += 1;
                let mut items = Vec::new();
                if self.eat(b']') {
                    return Some(J::Arr(items));
                }
                loop {
                    items.push(self.value()?);
                    if self.eat(b']') {
                        return Some(J::Arr(items));
                    }
                    self.eat(b',').then_some(())?;
                }
            }
            b'"' => self.string().map(J::Str),
            b'n' => {
                self.i += 4;
                Some(J::Null)
            }
            _ => {
                while self.i < self.b.len() && !b",]} \t\r\n".contains(&self.b[self.i]) {
                    self.i += 1;
                }
                Some(J::Other)
            }
        }
    }

    fn hex4(&mut self) -> Option<u32> {
        let h = std::str::from_utf8(self.b.get(self.i..self.i + 4)?).ok()?;
        self.i += 4;
        u32::from_str_radix(h, 16).ok()
    }

    fn string(&mut self) -> Option<String> {
        (self.b.get(self.i) == Some(&b'"')).then_some(())?;
        self.i += 1;
        let mut out: Vec<u8> = Vec::new();
        loop {
            let c = *self.b.get(self.i)?;
            self.i += 1;
            match c {
                b'"' => return String::from_utf8(out).ok(),
                b'\\' => {
                    let e = *self.b.get(self.i)?;
                    self.i += 1;
                    let ch = match e {
                        b'u' => {
                            let hi = self.hex4()?;
                            let code = if (0xD800..0xDC00).contains(&hi) {
                                self.i += 2; // the "\u" of the low half
                                0x10000 + ((hi - 0xD800) << 10) + (self.hex4()? - 0xDC00)
                            } else {
                                hi
                            };
                            char::from_u32(code)?
                        }
                        b'n' => '\n',
                        b't' => '\t',
                        other => other as char,
                    };
                    out.extend_from_slice(ch.encode_utf8(&mut [0; 4]).as_bytes());
                }
                _ => out.push(c),
            }
        }
    }
}

fn parse(b: &[u8]) -> Option<J> {
    let mut t = Tokens { b, i: 0 };
    let v = t.value()?;
    t.ws();
    (t.i == b.len()).then_some(v)
}

// ---- Go's decoding into distribution's structs ----------------------------------------

/// Go's simple case mappings, for the characters a generated key can hold.
fn go_fold(key: &str) -> String {
    let single = |s: String| {
        let mut it = s.chars();
        match (it.next(), it.next()) {
            (Some(c), None) => Some(c),
            _ => None,
        }
    };
    key.chars()
        .map(|c| {
            let lower = match c {
                '\u{130}' => 'i',
                c => single(c.to_lowercase().collect()).unwrap_or(c),
            };
            single(lower.to_uppercase().collect()).unwrap_or(lower)
        })
        .collect()
}

/// The field `key` fills: one named exactly, else one equal under folding.
fn go_field(fields: &[&'static str], key: &str) -> Option<&'static str> {
    let exact = fields.iter().find(|f| **f == key);
    exact
        .or_else(|| fields.iter().find(|f| go_fold(f) == go_fold(key)))
        .copied()
}

const MANIFEST: &[&str] = &[
    "schemaVersion",
    "mediaType",
    "config",
    "layers",
    "manifests",
    "fsLayers",
    "subject",
    "annotations",
];
const DESCRIPTOR: &[&str] = &["mediaType", "size", "digest", "urls", "annotations", "platform"];
const FS_LAYER: &[&str] = &["blobSum"];

/// A type error: Go's `Unmarshal` fails and the registry refuses the manifest.
type Go<T> = Result<T, ()>;

/// A struct with one string field that matters (`digest`, or `blobSum`).
fn go_struct(into: &mut String, v: &J, fields: &[&'static str], wanted: &str) -> Go<()> {
    match v {
        J::Null => Ok(()),
        J::Obj(entries) => {
            for (k, v) in entries {
                if go_field(fields, k) == Some(wanted) {
                    match v {
                        J::Str(s) => *into = s.clone(),
                        J::Null => {}
                        _ => return Err(()),
                    }
                }
            }
            Ok(())
        }
        _ => Err(()),
    }
}

/// A slice of such structs: `None` is nil; the vector is the backing array, the number
/// its length.
type GoSlice = Option<(Vec<String>, usize)>;

fn go_slice(slot: &mut GoSlice, v: &J, fields: &[&'static str], wanted: &str) -> Go<()> {
    match v {
        J::Null => *slot = None,
        J::Arr(items) => {
            let mut backing = slot.take().map(|(b, _)| b).unwrap_or_default();
            if items.is_empty() {
                backing.clear();
            }
            for (i, item) in items.iter().enumerate() {
                if i == backing.len() {
                    backing.push(String::new());
                }
                go_struct(&mut backing[i], item, fields, wanted)?;
            }
            *slot = Some((backing, items.len()));
        }
        _ => return Err(()),
    }
    Ok(())
}

fn go_references(doc: &J) -> Go<References> {
    let J::Obj(entries) = doc else { return Err(()) };
    let (mut config, mut layers, mut manifests, mut fs): (String, GoSlice, GoSlice, GoSlice) = Default::default();
    for (k, v) in entries {
        match go_field(MANIFEST, k) {
            Some("config") => go_struct(&mut config, v, DESCRIPTOR, "digest")?,
            Some("layers") => go_slice(&mut layers, v, DESCRIPTOR, "digest")?,
            Some("manifests") => go_slice(&mut manifests, v, DESCRIPTOR, "digest")?,
            Some("fsLayers") => go_slice(&mut fs, v, FS_LAYER, "blobSum")?,
            _ => {}
        }
    }
    let live = |s: GoSlice| {
        s.map(|(mut b, n)| {
            b.truncate(n);
            b
        })
    };
    let digests = |v: Vec<String>| {
        let mut d: Vec<Digest> = v.iter().filter_map(|s| Digest::parse(s).ok()).collect();
        d.sort();
        d.dedup();
        d
    };
    let mut blobs = vec![config];
    blobs.extend(live(layers).unwrap_or_default());
    blobs.extend(live(fs).unwrap_or_default());
    Ok(References {
        blobs: digests(blobs),
        manifests: digests(live(manifests).unwrap_or_default()),
    })
}

/// The model's own idea of unambiguous: no key twice in an object, and outside
/// annotations no two keys, and no key and a field name, equal under Go's folding.
fn unambiguous(v: &J, annotations: bool) -> bool {
    const NAMES: &[&str] = &["os", "architecture", "blobSum", "digest", "size", "platform"];
    match v {
        J::Arr(items) => items.iter().all(|i| unambiguous(i, false)),
        J::Obj(entries) => entries.iter().enumerate().all(|(i, (k, v))| {
            let before = &entries[..i];
            let clash = match annotations {
                true => before.iter().any(|(e, _)| e == k),
                false => {
                    before.iter().any(|(e, _)| go_fold(e) == go_fold(k))
                        || MANIFEST.iter().chain(NAMES).any(|f| f != k && go_fold(f) == go_fold(k))
                }
            };
            !clash && unambiguous(v, !annotations && k == "annotations")
        }),
        _ => true,
    }
}

fn contains(all: &References, some: &References) -> bool {
    some.blobs.iter().all(|d| all.blobs.contains(d)) && some.manifests.iter().all(|d| all.manifests.contains(d))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn tagpin_refuses_or_reads_references_as_go_does(m in manifest()) {
        let doc = parse(m.as_bytes()).expect("the model reads every generated manifest");
        let go = go_references(&doc);
        let read = references(m.as_bytes());
        let accepted = match check(m.as_bytes()) {
            Err(Refused::NotJson(e)) => return Err(TestCaseError::fail(format!("generated JSON refused: {e}"))),
            Err(Refused::Ambiguous(_)) => false,
            Ok(()) => true,
        };
        prop_assert_eq!(accepted, unambiguous(&doc, false), "refused exactly the ambiguous manifests");
        // A type error in the model: the registry refuses the manifest, nothing to compare.
        if let Ok(go) = go {
            prop_assert!(contains(&read, &go), "the unchecked reading misses some of Go's: {:?} {:?}", read, go);
            if accepted {
                prop_assert_eq!(&read, &go);
                // On accepted bytes a plain exact-match reading agrees too.
                prop_assert_eq!(exact_reading(&m), go);
            }
        }
    }
}

#[test]
fn the_generator_makes_both_kinds_and_real_references() {
    let mut runner = TestRunner::deterministic();
    let strategy = manifest();
    let (mut accepted, mut refused, mut differ) = (0, 0, 0);
    for _ in 0..1000 {
        let m = strategy.new_tree(&mut runner).unwrap().current();
        let go = go_references(&parse(m.as_bytes()).unwrap());
        match check(m.as_bytes()) {
            Ok(()) if go.as_ref().is_ok_and(|g| !g.blobs.is_empty()) => accepted += 1,
            Ok(()) => {}
            Err(_) => {
                refused += 1;
                // Without the check, an exact serde reading would have recorded other
                // references than Go does: the case this check exists for.
                differ += go.is_ok_and(|g| g != exact_reading(&m)) as usize;
            }
        }
    }
    assert!(
        accepted > 100 && refused > 100 && differ > 20,
        "{accepted} {refused} {differ}"
    );
}

/// The reading before the check existed: exact keys, serde derive, a duplicate fails.
fn exact_reading(m: &str) -> References {
    #[derive(serde::Deserialize)]
    struct D {
        digest: Option<String>,
        #[serde(rename = "blobSum")]
        blob_sum: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct Raw {
        config: Option<D>,
        layers: Option<Vec<D>>,
        manifests: Option<Vec<D>>,
        #[serde(rename = "fsLayers")]
        fs_layers: Option<Vec<D>>,
    }
    let Ok(raw) = serde_json::from_str::<Raw>(m) else {
        return References::default();
    };
    let digests = |ds: Vec<Option<String>>| {
        let mut v: Vec<Digest> = ds
            .into_iter()
            .flatten()
            .filter_map(|d| Digest::parse(&d).ok())
            .collect();
        v.sort();
        v.dedup();
        v
    };
    let layers = raw.config.into_iter().chain(raw.layers.unwrap_or_default());
    let mut blobs: Vec<Option<String>> = layers.map(|d| d.digest).collect();
    blobs.extend(raw.fs_layers.unwrap_or_default().into_iter().map(|d| d.blob_sum));
    References {
        blobs: digests(blobs),
        manifests: digests(
            raw.manifests
                .unwrap_or_default()
                .into_iter()
                .map(|d| d.digest)
                .collect(),
        ),
    }
}

#[test]
fn the_model_decodes_like_go() {
    let a = format!("sha256:{}", "a".repeat(64));
    let b = format!("sha256:{}", "b".repeat(64));
    let go = |m: &str| go_references(&parse(m.as_bytes()).unwrap()).unwrap().blobs;
    let digest = |s: &str| Digest::parse(s).unwrap();
    // Case-insensitive, last one wins, a repeated struct merges, Kelvin folds onto k.
    assert_eq!(go(&format!(r#"{{"Layers":[{{"DIGEST":"{a}"}}]}}"#)), vec![digest(&a)]);
    assert_eq!(go(&format!(r#"{{"layers":[{{"digest":"{a}"}}],"layers":[]}}"#)), vec![]);
    assert_eq!(
        go(&format!(r#"{{"config":{{"digest":"{a}"}},"config":{{"size":1}}}}"#)),
        vec![digest(&a)]
    );
    assert_eq!(
        go(&format!("{{\"fsLayers\":[{{\"blob\u{17F}um\":\"{b}\"}}]}}")),
        vec![digest(&b)]
    );
    // A shorter repeat keeps the old element beyond its length in the backing array,
    // and a longer one after it lands on it again.
    let m =
        format!(r#"{{"layers":[{{"digest":"{a}"}},{{"digest":"{b}"}}],"layers":[{{}}],"layers":[{{}},{{"size":1}}]}}"#);
    assert_eq!(go(&m), vec![digest(&a), digest(&b)]);
}
