//! Generated manifests: clean ones (every key once, in its own case, some written with
//! escapes), then now and then messed up: a key respelled in another case or with a
//! letter Go folds onto ASCII, or repeated with another value. Values nest descriptors,
//! annotations, platforms and unknown fields holding manifest-like keys.

use proptest::prelude::*;

/// How a key is written.
#[derive(Debug, Clone)]
enum Spelling {
    Exact,
    Upper,
    /// The case of one letter flipped.
    Flip(usize),
    /// A letter replaced by the one outside ASCII that Go folds onto it.
    GoFold,
    /// Exact, with its first character as a `\u` escape.
    Escaped,
}

/// How a key of a manifest meant to be clean is written.
fn clean_spelling() -> impl Strategy<Value = Spelling> {
    prop_oneof![4 => Just(Spelling::Exact), 1 => Just(Spelling::Escaped)]
}

/// How a key is written when it is not.
fn messy_spelling() -> impl Strategy<Value = Spelling> {
    prop_oneof![
        Just(Spelling::Upper),
        any::<usize>().prop_map(Spelling::Flip),
        Just(Spelling::GoFold),
    ]
}

/// A generated value; object keys carry their spelling.
#[derive(Debug, Clone)]
enum G {
    Obj(Vec<(String, Spelling, G)>),
    Arr(Vec<G>),
    Str(String),
    Num(u32),
    Null,
}

fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

fn write_key(name: &str, how: &Spelling) -> String {
    let chars: Vec<char> = name.chars().collect();
    let key: String = match how {
        Spelling::Exact | Spelling::Escaped => name.to_owned(),
        Spelling::Upper => name.to_uppercase(),
        Spelling::Flip(n) => {
            let i = n % chars.len();
            let flip = |c: char| match c.is_ascii_uppercase() {
                true => c.to_ascii_lowercase(),
                false => c.to_ascii_uppercase(),
            };
            chars
                .iter()
                .enumerate()
                .map(|(j, c)| if i == j { flip(*c) } else { *c })
                .collect()
        }
        Spelling::GoFold => {
            let mut done = false;
            let mut swap = |c: char| {
                let to = match c {
                    'k' | 'K' => '\u{212A}',
                    's' | 'S' => '\u{17F}',
                    'i' => '\u{130}',
                    'I' => '\u{131}',
                    _ => return c,
                };
                if done {
                    return c;
                }
                done = true;
                to
            };
            chars.iter().map(|c| swap(*c)).collect()
        }
    };
    match how {
        Spelling::Escaped => format!("\"\\u{:04x}{}", chars[0] as u32, &quote(name)[2..]),
        _ => quote(&key),
    }
}

fn write(g: &G) -> String {
    match g {
        G::Obj(entries) => {
            let e: Vec<String> = entries
                .iter()
                .map(|(k, how, v)| format!("{}:{}", write_key(k, how), write(v)))
                .collect();
            format!("{{{}}}", e.join(","))
        }
        G::Arr(items) => format!("[{}]", items.iter().map(write).collect::<Vec<_>>().join(",")),
        G::Str(s) => quote(s),
        G::Num(n) => n.to_string(),
        G::Null => "null".into(),
    }
}

fn digest_value() -> impl Strategy<Value = G> {
    prop_oneof![
        8 => (0..5u8).prop_map(|i| G::Str(format!("sha256:{}", ((b'a' + i) as char).to_string().repeat(64)))),
        1 => Just(G::Str("nope".into())),
        1 => Just(G::Null),
        1 => Just(G::Num(7)),
    ]
}

/// An entry under `name`, with a value `value` makes.
fn entry(name: &'static str, value: fn(&str) -> BoxedStrategy<G>) -> impl Strategy<Value = (String, Spelling, G)> {
    (clean_spelling(), value(name)).prop_map(move |(how, v)| (name.to_owned(), how, v))
}

/// An object with some of the keys in `names`, each once, in any order.
fn object(names: &'static [&'static str], value: fn(&str) -> BoxedStrategy<G>) -> BoxedStrategy<G> {
    let entries: Vec<_> = names
        .iter()
        .map(|n| proptest::option::weighted(0.7, entry(n, value)))
        .collect();
    entries
        .prop_flat_map(|e| Just(e.into_iter().flatten().collect::<Vec<_>>()).prop_shuffle())
        .prop_map(G::Obj)
        .boxed()
}

/// What turns a clean manifest into a possibly ambiguous one, applied to one key of one
/// object.
#[derive(Debug, Clone)]
enum Mess {
    Respell(Spelling),
    /// The key again, with a different value, somewhere in the object.
    Repeat(Option<Spelling>, usize),
}

fn messes() -> impl Strategy<Value = Vec<(usize, usize, Mess)>> {
    let mess = prop_oneof![
        messy_spelling().prop_map(Mess::Respell),
        (proptest::option::of(messy_spelling()), any::<usize>()).prop_map(|(s, at)| Mess::Repeat(s, at)),
    ];
    prop_oneof![
        1 => Just(Vec::new()),
        2 => proptest::collection::vec((any::<usize>(), any::<usize>(), mess), 1..3),
    ]
}

/// Another value of the same type.
fn vary(g: &G) -> G {
    match g {
        G::Obj(e) => G::Obj(e.iter().skip(1).cloned().collect()),
        G::Arr(a) => G::Arr(a.iter().rev().skip(1).cloned().collect()),
        G::Str(s) if s.starts_with("sha256:") => G::Str(format!("sha256:{}", "f".repeat(64))),
        other => other.clone(),
    }
}

fn count_objects(g: &G) -> usize {
    match g {
        G::Obj(e) => 1 + e.iter().map(|(_, _, v)| count_objects(v)).sum::<usize>(),
        G::Arr(a) => a.iter().map(count_objects).sum(),
        _ => 0,
    }
}

/// Apply `mess` to entry `entry` of the `n`th object (in document order).
fn apply(g: &mut G, n: &mut usize, entry: usize, mess: &Mess) -> bool {
    match g {
        G::Obj(entries) if *n == 0 => {
            if !entries.is_empty() {
                let i = entry % entries.len();
                match mess {
                    Mess::Respell(how) => entries[i].1 = how.clone(),
                    Mess::Repeat(how, at) => {
                        let (k, old_how, v) = entries[i].clone();
                        let copy = (k, how.clone().unwrap_or(old_how), vary(&v));
                        entries.insert(at % (entries.len() + 1), copy);
                    }
                }
            }
            true
        }
        G::Obj(entries) => {
            *n -= 1;
            entries.iter_mut().any(|(_, _, v)| apply(v, n, entry, mess))
        }
        G::Arr(items) => items.iter_mut().any(|v| apply(v, n, entry, mess)),
        _ => false,
    }
}

fn annotations() -> BoxedStrategy<G> {
    let key = prop::sample::select(vec!["a", "A", "digest", "Digest", "layers"]);
    proptest::collection::vec((key, Just(G::Str("v".into()))), 0..3)
        .prop_map(|e| G::Obj(e.into_iter().map(|(k, v)| (k.to_owned(), Spelling::Exact, v)).collect()))
        .boxed()
}

fn descriptor_value(name: &str) -> BoxedStrategy<G> {
    match name {
        "digest" => digest_value().boxed(),
        "size" => Just(G::Num(1)).boxed(),
        "annotations" => annotations(),
        "platform" => object(&["os", "architecture"], |_| Just(G::Str("x".into())).boxed()),
        _ => Just(G::Str("text".into())).boxed(),
    }
}

fn descriptor() -> BoxedStrategy<G> {
    object(
        &["digest", "mediaType", "size", "annotations", "platform", "extra"],
        descriptor_value,
    )
}

fn descriptors(fs: bool) -> BoxedStrategy<G> {
    let item = match fs {
        true => object(&["blobSum", "extra"], |n| match n {
            "blobSum" => digest_value().boxed(),
            _ => Just(G::Num(3)).boxed(),
        }),
        false => descriptor(),
    };
    prop_oneof![8 => proptest::collection::vec(item, 0..4).prop_map(G::Arr), 1 => Just(G::Null)].boxed()
}

fn manifest_value(name: &str) -> BoxedStrategy<G> {
    match name {
        "schemaVersion" => Just(G::Num(2)).boxed(),
        "config" | "subject" => descriptor(),
        "layers" | "manifests" => descriptors(false),
        "fsLayers" => descriptors(true),
        "annotations" => annotations(),
        // Unknown, nesting what looks like manifest fields.
        _ => object(&["layers", "digest"], |n| match n {
            "layers" => descriptors(false),
            _ => digest_value().boxed(),
        }),
    }
}

pub(super) fn manifest() -> impl Strategy<Value = String> {
    const NAMES: &[&str] = &[
        "schemaVersion",
        "mediaType",
        "config",
        "layers",
        "manifests",
        "fsLayers",
        "subject",
        "annotations",
        "extra",
    ];
    (object(NAMES, manifest_value), messes()).prop_map(|(mut g, messes)| {
        for (object, entry, mess) in messes {
            let mut n = object % count_objects(&g);
            apply(&mut g, &mut n, entry, &mess);
        }
        write(&g)
    })
}
