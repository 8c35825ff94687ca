//! The write classifier checked against a second, independent encoding of the
//! distribution-spec grammar: the spec's own regular expressions (`spec.md`, "Pulling
//! manifests"), anchored over whole request paths. For random paths assembled from valid
//! components, keywords and hostile fragments, the classifier must accept exactly the
//! paths the regexes accept, and read the same repository and reference from them.

use http::{Method, Uri};
use proptest::prelude::*;
use regex::Regex;
use tagpin::oci::Reference;
use tagpin::route::{classify, Route};

const NAME: &str = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*";
const TAG: &str = r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}";
const DIGEST: &str = r"sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128}";

/// What the grammar says a write is, as plain strings.
#[derive(Debug, PartialEq)]
enum Expected {
    ManifestPut { name: String, reference: String },
    ManifestDelete { name: String, reference: String },
    BlobDelete { name: String, digest: String },
    UploadStart { name: String },
    UploadSession { name: String },
}

impl Expected {
    fn kind(&self) -> &'static str {
        match self {
            Self::ManifestPut { .. } => "manifest put",
            Self::ManifestDelete { .. } => "manifest delete",
            Self::BlobDelete { .. } => "blob delete",
            Self::UploadStart { .. } => "upload start",
            Self::UploadSession { .. } => "upload session",
        }
    }
}

static GRAMMAR: std::sync::LazyLock<Grammar> = std::sync::LazyLock::new(Grammar::new);

struct Grammar {
    manifest: Regex,
    blob: Regex,
    upload_start: Regex,
    upload_session: Regex,
}

impl Grammar {
    fn new() -> Self {
        let re = |tail: &str| Regex::new(&format!(r"^/v2/(?P<name>{NAME})/{tail}$")).unwrap();
        Self {
            manifest: re(&format!(r"manifests/(?P<reference>{TAG}|{DIGEST})")),
            blob: re(&format!(r"blobs/(?P<digest>{DIGEST})")),
            upload_start: re(r"blobs/uploads/"),
            // Upload ids are opaque; tagpin accepts the URL-safe tokens registries issue.
            upload_session: re(r"blobs/uploads/[A-Za-z0-9._=-]{1,256}"),
        }
    }

    /// The grammar's reading of `method path`. The spec also caps names at 255 characters.
    fn expect(&self, method: &Method, path: &str) -> Option<Expected> {
        let name_of = |c: &regex::Captures| (c["name"].len() <= 255).then(|| c["name"].to_owned());
        if let Some(c) = self.manifest.captures(path) {
            let (name, reference) = (name_of(&c)?, c["reference"].to_owned());
            return match *method {
                Method::PUT => Some(Expected::ManifestPut { name, reference }),
                Method::DELETE => Some(Expected::ManifestDelete { name, reference }),
                _ => None,
            };
        }
        if let Some(c) = self.blob.captures(path) {
            return (*method == Method::DELETE).then(|| {
                Some(Expected::BlobDelete {
                    name: name_of(&c)?,
                    digest: c["digest"].to_owned(),
                })
            })?;
        }
        if let Some(c) = self.upload_start.captures(path) {
            return (*method == Method::POST).then(|| Some(Expected::UploadStart { name: name_of(&c)? }))?;
        }
        if let Some(c) = self.upload_session.captures(path) {
            let ok = matches!(*method, Method::PATCH | Method::PUT | Method::DELETE);
            return ok.then(|| Some(Expected::UploadSession { name: name_of(&c)? }))?;
        }
        None
    }
}

fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-z0-9]{1,6}",
        2 => "[a-z0-9]{1,3}[._-][a-z0-9]{1,3}",
        1 => "[a-z0-9]{1,3}(__|--|\\.\\.|___)[a-z0-9]{1,3}",
        2 => prop_oneof![Just("manifests"), Just("blobs"), Just("uploads"), Just("tags"), Just("v2")].prop_map(String::from),
        1 => prop_oneof![
            Just(""), Just("."), Just(".."), Just("%2F"), Just("%61"), Just("A"), Just("a;b"),
            Just("a%2e"), Just("-a"), Just("a-"), Just("_"), Just("a:b"), Just("a=b"),
        ]
        .prop_map(String::from),
        1 => "[A-Za-z0-9._-]{1,8}",
        1 => Just(format!("sha256:{}", "ab".repeat(32))),
        1 => Just(format!("sha256:{}", "AB".repeat(32))),
    ]
}

/// The last part of a write's path: an endpoint and a reference, id or digest that may
/// or may not be valid.
fn endpoint() -> impl Strategy<Value = String> {
    let digest = prop_oneof![
        Just(format!("sha256:{}", "ab".repeat(32))),
        Just(format!("sha512:{}", "cd".repeat(64))),
        Just(format!("sha256:{}", "ab".repeat(31))),
        Just(format!("sha256:{}", "AB".repeat(32))),
    ];
    prop_oneof![
        2 => prop_oneof![segment(), "[A-Za-z0-9_][A-Za-z0-9._-]{0,20}", digest.clone()].prop_map(|r| format!("manifests/{r}")),
        1 => prop_oneof![digest, segment()].prop_map(|d| format!("blobs/{d}")),
        1 => prop_oneof!["[A-Za-z0-9._=-]{1,40}", segment()].prop_map(|id| format!("blobs/uploads/{id}")),
    ]
}

fn path() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::collection::vec(segment(), 1..7).prop_map(|segs| format!("/v2/{}", segs.join("/"))),
        1 => prop::collection::vec(segment(), 1..4).prop_map(|segs| format!("/v2/{}/blobs/uploads/", segs.join("/"))),
        3 => (prop::collection::vec(segment(), 1..4), endpoint())
            .prop_map(|(segs, tail)| format!("/v2/{}/{tail}", segs.join("/"))),
    ]
}

/// The classifier's reading, in the same terms.
fn classified(method: &Method, path: &str) -> Option<Expected> {
    // Targets the HTTP layer itself rejects never reach the classifier.
    let uri: Uri = path.parse().ok()?;
    let reference = |r: Reference| match r {
        Reference::Tag(t) => t.as_str().to_owned(),
        Reference::Digest(d) => d.as_str().to_owned(),
    };
    Some(match classify(method, &uri).ok()? {
        Route::ManifestPut { repo, reference: r, .. } => Expected::ManifestPut {
            name: repo.as_str().into(),
            reference: reference(r),
        },
        Route::ManifestDelete { repo, reference: r } => Expected::ManifestDelete {
            name: repo.as_str().into(),
            reference: reference(r),
        },
        Route::BlobDelete { repo, digest } => Expected::BlobDelete {
            name: repo.as_str().into(),
            digest: digest.as_str().into(),
        },
        Route::UploadStart { repo } => Expected::UploadStart {
            name: repo.as_str().into(),
        },
        Route::UploadSession { repo } => Expected::UploadSession {
            name: repo.as_str().into(),
        },
        other => panic!("a write classified as {other:?}"),
    })
}

/// Generated cases per run.
const CASES: u32 = 5000;

#[test]
fn writes_are_read_exactly_as_the_spec_grammar_reads_them() {
    use proptest::test_runner::{Config, TestRunner};
    use std::cell::RefCell;
    // What the run compared: cases both sides read as a write, by kind. Without a floor
    // the property could hold by `None == None` on every case.
    let agreed: RefCell<std::collections::BTreeMap<&'static str, usize>> = RefCell::default();
    let mut runner = TestRunner::new(Config {
        cases: CASES,
        source_file: Some(file!()),
        ..Config::default()
    });
    let result = runner.run(&path(), |p| {
        let g = &*GRAMMAR;
        for method in [Method::PUT, Method::DELETE, Method::POST, Method::PATCH] {
            let (ours, spec) = (classified(&method, &p), g.expect(&method, &p));
            prop_assert_eq!(&ours, &spec, "{} {}", method, p);
            if let Some(e) = &spec {
                *agreed.borrow_mut().entry(e.kind()).or_default() += 1;
            }
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let agreed = agreed.into_inner();
    eprintln!("writes both read alike, by kind: {agreed:?}");
    let total: usize = agreed.values().sum();
    assert!(
        total >= CASES as usize / 10,
        "only {total} of {CASES} cases were writes on both sides: {agreed:?}"
    );
    for kind in [
        "manifest put",
        "manifest delete",
        "blob delete",
        "upload start",
        "upload session",
    ] {
        assert!(
            agreed.get(kind).copied().unwrap_or(0) >= 20,
            "too few {kind} cases: {agreed:?}"
        );
    }
}
