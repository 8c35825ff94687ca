//! Table tests for the classifier: every row is a method, a raw request target and the
//! expected outcome.

use super::*;

const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

fn run(method: &str, target: &str) -> Result<Route, RouteError> {
    let method = Method::from_bytes(method.as_bytes()).unwrap();
    let uri: Uri = target.parse().unwrap_or_else(|e| panic!("{target}: {e}"));
    classify(&method, &uri)
}

fn repo(s: &str) -> Repository {
    Repository::parse(s).unwrap()
}

fn tag(s: &str) -> Tag {
    Tag::parse(s).unwrap()
}

#[test]
fn reads_pass_through_whatever_their_shape() {
    for target in [
        "/v2/",
        "/v2",
        "/v2/_catalog?n=10",
        "/v2/a/blobs/sha256:x",
        "/v2/a/tags/list?n=1&last=b",
        "/v2/anything/at/all",
    ] {
        assert_eq!(run("GET", target), Ok(Route::Read), "GET {target}");
        assert_eq!(run("HEAD", target), Ok(Route::Read), "HEAD {target}");
        assert_eq!(run("OPTIONS", target), Ok(Route::Read), "OPTIONS {target}");
    }
    assert_eq!(run("GET", "/healthz"), Ok(Route::Health));
    assert_eq!(run("GET", "/readyz"), Ok(Route::Ready));
    assert_eq!(run("GET", "/metrics"), Ok(Route::Metrics));
    assert_eq!(run("POST", "/metrics"), Err(RouteError::MethodNotAllowed(Method::POST)));
}

#[test]
fn manifest_reads_and_history_are_recognised() {
    let read = |name: &str, r: Reference| Route::ManifestRead {
        repo: repo(name),
        reference: r,
    };
    for method in ["GET", "HEAD"] {
        assert_eq!(
            run(method, "/v2/a/b/manifests/latest"),
            Ok(read("a/b", Reference::Tag(tag("latest"))))
        );
        assert_eq!(
            run(method, &format!("/v2/a/manifests/{D}")),
            Ok(read("a", Reference::Digest(Digest::parse(D).unwrap())))
        );
        for encoded in [
            "/v2/a%2Fb/manifests/v1",
            "/v2/a/manifests/v%31",
            "/v2/%61/manifests/v1",
            // The upstream routes the decoded path: these name `a:v1` there.
            "/v2/a/m%61nifests/v1",
            "/v2/a/%6Danifests/v1",
            "/v2/a/manifests%2Fv1",
            "/v2/a%2Fmanifests%2Fv1",
            "/v2/a%2fmanifests/v1",
        ] {
            assert_eq!(run(method, encoded), Ok(Route::EncodedManifestRead), "{encoded}");
        }
        // Not a manifest read tagpin can name: the upstream answers it.
        for other in [
            "/v2/A/manifests/v1",
            "/v2/a/manifests/-bad",
            "/v2/manifests/v1",
            // Decoded once (as the upstream does), these have no `manifests` segment.
            "/v2/a/m%2561nifests/v1",
            "/v2/a/m%41nifests/v1",
            "/v2/a/blobs/sha256%3Aab",
            "/v2/a/_t%61gpin/history/v1",
        ] {
            assert_eq!(run(method, other), Ok(Route::Read), "{other}");
        }
        assert_eq!(
            run(method, "/v2/a/b/_tagpin/history/v1"),
            Ok(Route::TagHistory {
                repo: repo("a/b"),
                tag: tag("v1")
            })
        );
        // tagpin's own path: a malformed one is refused by tagpin, never forwarded.
        for (bad, kind) in [
            ("/v2/a/_tagpin/history/", "tag"),
            ("/v2/a/_tagpin/history/a:1.0", "tag"),
            ("/v2/a/_tagpin/history/-v1", "tag"),
            ("/v2/A/_tagpin/history/v1", "repository"),
            ("/v2/a%2Fb/_tagpin/history/v1", "repository"),
            ("/v2/a%2Fmanifests%2Fv1/_tagpin/history/v1", "repository"),
        ] {
            let refused = match run(method, bad) {
                Err(RouteError::Name(NameError::Tag(_))) => "tag",
                Err(RouteError::Name(NameError::Repository(_))) => "repository",
                other => panic!("{method} {bad}: {other:?}"),
            };
            assert_eq!(refused, kind, "{method} {bad}");
        }
    }
    for method in ["POST", "PUT", "PATCH", "DELETE"] {
        assert_eq!(
            run(method, "/v2/a/b/_tagpin/history/v1"),
            Err(RouteError::MethodNotAllowed(
                Method::from_bytes(method.as_bytes()).unwrap()
            )),
            "{method}"
        );
    }
    assert_eq!(run("OPTIONS", "/v2/a/b/manifests/latest"), Ok(Route::Read));
}

#[test]
fn options_is_forwarded_only_under_v2() {
    for target in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(
            run("OPTIONS", target),
            Err(RouteError::MethodNotAllowed(Method::OPTIONS)),
            "{target}"
        );
    }
    for target in ["/", "/v2x/", "//v2/", "/v1/_ping"] {
        assert_eq!(run("OPTIONS", target), Err(RouteError::NotFound), "{target}");
    }
}

#[test]
fn reads_outside_v2_are_not_forwarded() {
    for target in [
        "/",
        "/v2x/",
        "/V2/",
        "//v2/",
        "/v1/_ping",
        "/api/v2.0/projects",
        "/v20/",
    ] {
        assert_eq!(run("GET", target), Err(RouteError::NotFound), "{target}");
    }
}

#[test]
fn valid_writes_are_classified() {
    let rows: Vec<(&str, String, Route)> = vec![
        (
            "PUT",
            "/v2/a/b/manifests/v1".into(),
            Route::ManifestPut {
                repo: repo("a/b"),
                reference: Reference::Tag(tag("v1")),
                tags: vec![tag("v1")],
            },
        ),
        (
            "PUT",
            format!("/v2/a/manifests/{D}?tag=x&tag=y&tag=x"),
            Route::ManifestPut {
                repo: repo("a"),
                reference: Reference::Digest(Digest::parse(D).unwrap()),
                tags: vec![tag("x"), tag("y")],
            },
        ),
        (
            "PUT",
            format!("/v2/a/manifests/{D}"),
            Route::ManifestPut {
                repo: repo("a"),
                reference: Reference::Digest(Digest::parse(D).unwrap()),
                tags: vec![],
            },
        ),
        (
            "PUT",
            "/v2/a/manifests/v1?tag=v2".into(),
            Route::ManifestPut {
                repo: repo("a"),
                reference: Reference::Tag(tag("v1")),
                tags: vec![tag("v1"), tag("v2")],
            },
        ),
        (
            "DELETE",
            "/v2/a/manifests/v1".into(),
            Route::ManifestDelete {
                repo: repo("a"),
                reference: Reference::Tag(tag("v1")),
            },
        ),
        (
            "DELETE",
            format!("/v2/a/manifests/{D}"),
            Route::ManifestDelete {
                repo: repo("a"),
                reference: Reference::Digest(Digest::parse(D).unwrap()),
            },
        ),
        (
            "DELETE",
            format!("/v2/a/blobs/{D}"),
            Route::BlobDelete {
                repo: repo("a"),
                digest: Digest::parse(D).unwrap(),
            },
        ),
        (
            "POST",
            "/v2/a/blobs/uploads/".into(),
            Route::UploadStart { repo: repo("a") },
        ),
        (
            "POST",
            format!("/v2/a/blobs/uploads/?mount={D}&from=b"),
            Route::UploadStart { repo: repo("a") },
        ),
        (
            "PATCH",
            "/v2/a/blobs/uploads/5f0c-aa_b.c=".into(),
            Route::UploadSession { repo: repo("a") },
        ),
        (
            "PUT",
            format!("/v2/a/blobs/uploads/abc?digest={D}&_state=x%3D"),
            Route::UploadSession { repo: repo("a") },
        ),
        (
            "DELETE",
            "/v2/a/blobs/uploads/abc".into(),
            Route::UploadSession { repo: repo("a") },
        ),
        // Keywords are legal repository components; the endpoint is read from the end.
        (
            "PUT",
            "/v2/manifests/blobs/tags/manifests/v1".into(),
            Route::ManifestPut {
                repo: repo("manifests/blobs/tags"),
                reference: Reference::Tag(tag("v1")),
                tags: vec![tag("v1")],
            },
        ),
        (
            "POST",
            "/v2/blobs/uploads/blobs/uploads/".into(),
            Route::UploadStart {
                repo: repo("blobs/uploads"),
            },
        ),
    ];
    for (method, target, want) in rows {
        assert_eq!(run(method, &target), Ok(want), "{method} {target}");
    }
}

#[test]
fn hostile_writes_are_refused() {
    use RouteError as E;
    let name = |s: &str| E::Name(NameError::Repository(s.into()));
    let tagerr = |s: &str| E::Name(NameError::Tag(s.into()));
    let long_name = "a".repeat(256);
    let long_tag = "t".repeat(129);
    let rows: Vec<(&str, String, RouteError)> = vec![
        // Percent-encoding anywhere: distribution would decode it, tagpin does not.
        ("PUT", "/v2/a%2Fb/manifests/v1".into(), name("a%2Fb")),
        ("PUT", "/v2/%61/manifests/v1".into(), name("%61")),
        ("PUT", "/v2/a/manifests/v%31".into(), tagerr("v%31")),
        ("PUT", "/v2/a/m%61nifests/v1".into(), E::UnknownEndpoint),
        ("PUT", "/v2/a/manifests%2Fv1".into(), E::UnknownEndpoint),
        // Empty segments, dot segments, trailing slashes.
        ("PUT", "/v2//a/manifests/v1".into(), name("/a")),
        ("PUT", "/v2/a//manifests/v1".into(), name("a/")),
        ("PUT", "/v2/a/./manifests/v1".into(), name("a/.")),
        ("PUT", "/v2/a/b/../manifests/v1".into(), name("a/b/..")),
        ("PUT", "/v2/a/manifests/v1/".into(), E::UnknownEndpoint),
        ("PUT", "/v2/a/manifests/.".into(), tagerr(".")),
        ("PUT", "/v2/a/manifests/..".into(), tagerr("..")),
        ("DELETE", "/v2/a/manifests/".into(), tagerr("")),
        // Backslashes, parameters, upper case, length limits.
        ("PUT", "/v2/a\\b/manifests/v1".into(), name("a\\b")),
        ("PUT", "/v2/a;x=y/manifests/v1".into(), name("a;x=y")),
        ("PUT", "/v2/a/manifests/v1;x=y".into(), tagerr("v1;x=y")),
        ("PUT", "/v2/A/manifests/v1".into(), name("A")),
        ("PUT", format!("/v2/{long_name}/manifests/v1"), name(&long_name)),
        ("PUT", format!("/v2/a/manifests/{long_tag}"), tagerr(&long_tag)),
        // Digest references must be exact.
        (
            "PUT",
            "/v2/a/manifests/sha256:abc".into(),
            E::Name(NameError::Digest("sha256:abc".into())),
        ),
        (
            "PUT",
            format!("/v2/a/manifests/{}", D.to_uppercase()),
            E::Name(NameError::Digest(D.to_uppercase())),
        ),
        (
            "DELETE",
            "/v2/a/blobs/latest".into(),
            E::Name(NameError::Digest("latest".into())),
        ),
        // Prefix variants of /v2 and paths outside the API.
        ("PUT", "/v2x/a/manifests/v1".into(), E::NotFound),
        ("PUT", "/V2/a/manifests/v1".into(), E::NotFound),
        ("PUT", "//v2/a/manifests/v1".into(), E::NotFound),
        ("PUT", "/a/manifests/v1".into(), E::NotFound),
        ("PUT", "/v2/manifests/v1".into(), E::UnknownEndpoint),
        ("PUT", "/v2/a/b".into(), E::UnknownEndpoint),
        // Methods the API does not define on a path.
        ("POST", "/v2/a/manifests/v1".into(), E::MethodNotAllowed(Method::POST)),
        ("PATCH", "/v2/a/manifests/v1".into(), E::MethodNotAllowed(Method::PATCH)),
        ("PUT", format!("/v2/a/blobs/{D}"), E::MethodNotAllowed(Method::PUT)),
        ("PUT", "/v2/a/blobs/uploads/".into(), E::MethodNotAllowed(Method::PUT)),
        (
            "POST",
            "/v2/a/blobs/uploads/abc".into(),
            E::MethodNotAllowed(Method::POST),
        ),
        ("DELETE", "/v2/a/tags/list".into(), E::MethodNotAllowed(Method::DELETE)),
        ("PUT", "/v2/_catalog".into(), E::MethodNotAllowed(Method::PUT)),
        ("DELETE", "/v2/".into(), E::MethodNotAllowed(Method::DELETE)),
        ("PUT", "/v2".into(), E::MethodNotAllowed(Method::PUT)),
        // Query parameters on manifest writes: only plain `tag=` pairs.
        (
            "PUT",
            "/v2/a/manifests/v1?foo=bar".into(),
            E::QueryParameter("foo".into()),
        ),
        (
            "PUT",
            "/v2/a/manifests/v1?t%61g=v2".into(),
            E::QueryParameter("t%61g".into()),
        ),
        (
            "PUT",
            "/v2/a/manifests/v1?Tag=v2".into(),
            E::QueryParameter("Tag".into()),
        ),
        ("PUT", "/v2/a/manifests/v1?tag".into(), E::QueryParameter("tag".into())),
        ("PUT", "/v2/a/manifests/v1?tag=a&".into(), E::QueryParameter("".into())),
        ("PUT", "/v2/a/manifests/v1?tag=a;tag=b".into(), tagerr("a;tag=b")),
        ("PUT", "/v2/a/manifests/v1?tag=v%32".into(), tagerr("v%32")),
        ("PUT", "/v2/a/manifests/v1?tag=a+b".into(), tagerr("a+b")),
        ("PUT", "/v2/a/manifests/v1?tag=".into(), tagerr("")),
        ("DELETE", "/v2/a/manifests/v1?x=1".into(), E::QueryParameter("x".into())),
        // Upload ids.
        ("PATCH", "/v2/a/blobs/uploads/a%2Fb".into(), E::UploadId("a%2Fb".into())),
        // Absolute-form targets.
        ("PUT", "http://up.example/v2/a/manifests/v1".into(), E::AbsoluteForm),
    ];
    for (method, target, want) in rows {
        assert_eq!(run(method, &target), Err(want), "{method} {target}");
    }
}

#[test]
fn method_override_headers_are_refused() {
    let mut h = HeaderMap::new();
    assert_eq!(check_method_override(&h), Ok(()));
    h.insert("X-HTTP-Method-Override", "DELETE".parse().unwrap());
    assert_eq!(
        check_method_override(&h),
        Err(RouteError::MethodOverride("x-http-method-override"))
    );
}
