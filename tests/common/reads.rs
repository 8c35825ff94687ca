//! Manifest reads as clients make them, for the pinned-read tests: raw `GET`/`HEAD` by
//! tag with every manifest type accepted, skopeo pulls into an OCI layout, moves made
//! straight at the upstream behind tagpin's back, and what tagpin reports (audit events,
//! `tagpin_reads_total`).

use std::net::SocketAddr;
use std::path::Path;

use super::image::{sha256, ACCEPT_ALL};
use super::{request, skopeo, skopeo_copy, Image, Registry, Resp, Tagpin};

/// `METHOD /v2/<repo>/manifests/<reference>` with every manifest type accepted and
/// `auth` as `Authorization` ("" for none).
pub fn read(addr: SocketAddr, method: &str, repo: &str, reference: &str, auth: &str) -> Resp {
    request(
        addr,
        method,
        &format!("/v2/{repo}/manifests/{reference}"),
        &[("Accept", ACCEPT_ALL), ("Authorization", auth)],
        b"",
    )
}

/// What a 200 manifest answer says it is: its `Docker-Content-Digest`.
pub fn served(r: &Resp, what: &str) -> String {
    assert_eq!(r.status, 200, "{what}: {}", r.text());
    r.header("docker-content-digest")
        .unwrap_or_else(|| panic!("{what}: 200 without Docker-Content-Digest"))
        .to_owned()
}

/// `HEAD` and `GET` of `repo:tag` at `addr` agree on `expected`: both answer 200 with
/// that `Docker-Content-Digest`, the GET's body hashes to it, and the HEAD's
/// `Content-Length` is the body's length.
pub fn assert_serves(addr: SocketAddr, repo: &str, tag: &str, expected: &str, what: &str) {
    let head = read(addr, "HEAD", repo, tag, "");
    let get = read(addr, "GET", repo, tag, "");
    assert_eq!(served(&head, what), expected, "{what}: HEAD");
    assert_eq!(served(&get, what), expected, "{what}: GET");
    assert_eq!(sha256(&get.body), expected, "{what}: the GET's bytes");
    assert_eq!(
        head.header("content-length"),
        Some(get.body.len().to_string().as_str()),
        "{what}: HEAD and GET lengths"
    );
}

/// Put `img` (whose blobs the upstream holds) straight at the upstream under `tag`.
pub fn put_straight(registry: &Registry, repo: &str, tag: &str, img: &Image) {
    let r = img.put_manifest(registry.addr, repo, tag, &registry.auth_header());
    assert_eq!(r.status, 201, "straight to the upstream {repo}:{tag}: {}", r.text());
}

/// Remove the tag `repo:tag` from the upstream's storage, leaving its manifest:
/// distribution 2.8 has no API for it (a `DELETE` by tag is `DIGEST_INVALID`), and
/// without a cache it reads tags from the filesystem on every request.
pub fn untag_straight(registry: &Registry, repo: &str, tag: &str) {
    let dir = registry
        .dir
        .path()
        .join("storage/docker/registry/v2/repositories")
        .join(repo)
        .join("_manifests/tags")
        .join(tag);
    std::fs::remove_dir_all(&dir).unwrap_or_else(|e| panic!("remove {}: {e}", dir.display()));
}

/// Delete the manifest `digest` straight at the upstream.
pub fn delete_manifest_straight(registry: &Registry, repo: &str, digest: &str) {
    let r = request(
        registry.addr,
        "DELETE",
        &format!("/v2/{repo}/manifests/{digest}"),
        &[("Authorization", &registry.auth_header())],
        b"",
    );
    assert_eq!(r.status, 202, "delete {repo}@{digest} at the upstream: {}", r.text());
}

/// The `docker://` reference of `repo_tag` at `addr`.
pub fn docker(addr: SocketAddr, repo_tag: &str) -> String {
    format!("docker://{addr}/{repo_tag}")
}

pub fn ok(out: &std::process::Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: skopeo failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `skopeo inspect` of a `docker://` reference: the digest it reports, and the digest of
/// the raw manifest bytes (`--raw`) it got.
pub fn inspect(reference: &str) -> (String, String) {
    let out = skopeo(&["inspect", "--tls-verify=false", "--no-tags", reference]);
    ok(&out, reference);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let digest = v["Digest"].as_str().expect("skopeo inspect: no Digest").to_owned();
    let raw = skopeo(&["inspect", "--tls-verify=false", "--raw", reference]);
    ok(&raw, reference);
    (digest, sha256(&raw.stdout))
}

/// An OCI layout pulled with skopeo (`--all` for every image of an index).
pub struct Pulled {
    pub dir: tempfile::TempDir,
}

impl Pulled {
    pub fn copy(reference: &str, all: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let dst = format!("oci:{}:pulled", dir.path().display());
        let extra: &[&str] = if all { &["--all"] } else { &[] };
        ok(&skopeo_copy(reference, &dst, extra), reference);
        Self { dir }
    }

    /// The digest of the manifest (or index) the layout's tag names.
    pub fn top(&self) -> String {
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(self.dir.path().join("index.json")).unwrap()).unwrap();
        index["manifests"][0]["digest"].as_str().unwrap().to_owned()
    }

    /// A blob of the layout, if it was pulled.
    pub fn blob(&self, digest: &str) -> Option<Vec<u8>> {
        let path = self
            .dir
            .path()
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"));
        std::fs::read(path).ok()
    }
}

/// Copy the OCI layout `layout` writes to `reference` with skopeo (`--all` for an index).
pub fn push_layout(reference: &str, all: bool, layout: impl FnOnce(&Path)) {
    let dir = tempfile::tempdir().unwrap();
    layout(dir.path());
    let src = format!("oci:{}:t", dir.path().display());
    let extra: &[&str] = if all { &["--all"] } else { &[] };
    ok(&skopeo_copy(&src, reference, extra), reference);
}

/// `tagpin_reads_total{answer="<answer>"}` in tagpin's `/metrics`.
pub fn reads_total(tagpin: &Tagpin, answer: &str) -> u64 {
    let text = request(tagpin.addr, "GET", "/metrics", &[], b"").text();
    let name = format!("tagpin_reads_total{{answer=\"{answer}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&name)?.parse().ok())
        .unwrap_or_else(|| panic!("no {name}in:\n{text}"))
}

/// Audit events `action` about `repo:tag`.
pub fn events(tagpin: &Tagpin, action: &str, repo: &str, tag: &str) -> Vec<serde_json::Value> {
    tagpin
        .audit_events()
        .into_iter()
        .filter(|e| e["action"] == action && e["repository"] == repo && e["tag"] == tag)
        .collect()
}

/// The audit events `action` about `repo:tag`, once every event logged before `marker`
/// (a later event the test caused, matched by `is_marker`) has arrived: the log is read
/// from a pipe, in order, so counting after the marker counts everything before it.
pub fn events_before(
    tagpin: &Tagpin,
    action: &str,
    repo: &str,
    tag: &str,
    is_marker: impl Fn(&serde_json::Value) -> bool,
) -> Vec<serde_json::Value> {
    tagpin.wait_for_audit(is_marker);
    events(tagpin, action, repo, tag)
}

pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// A Docker manifest list over one Docker schema 2 image (linux/amd64) made of `img`'s
/// blobs: the kind of tag distribution answers with its platform manifest when a client
/// accepts schema 2 but not lists.
pub struct DockerList {
    pub image: Vec<u8>,
    pub list: Vec<u8>,
}

impl DockerList {
    pub fn new(img: &Image) -> Self {
        let image = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": {
                "mediaType": "application/vnd.docker.container.image.v1+json",
                "digest": sha256(&img.config),
                "size": img.config.len(),
            },
            "layers": [{
                "mediaType": "application/vnd.docker.image.rootfs.diff.tar",
                "digest": sha256(&img.layer),
                "size": img.layer.len(),
            }],
        }))
        .unwrap();
        let list = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": DOCKER_LIST,
            "manifests": [{
                "mediaType": DOCKER_MANIFEST,
                "digest": sha256(&image),
                "size": image.len(),
                "platform": {"architecture": "amd64", "os": "linux"},
            }],
        }))
        .unwrap();
        Self { image, list }
    }

    /// Push the image by digest and the list under `tag` to `addr` (the blobs must be
    /// there).
    pub fn push(&self, addr: SocketAddr, repo: &str, tag: &str, auth: &str) {
        for (reference, media_type, bytes) in [
            (sha256(&self.image), DOCKER_MANIFEST, &self.image),
            (tag.to_owned(), DOCKER_LIST, &self.list),
        ] {
            let r = request(
                addr,
                "PUT",
                &format!("/v2/{repo}/manifests/{reference}"),
                &[("Content-Type", media_type), ("Authorization", auth)],
                bytes,
            );
            assert_eq!(r.status, 201, "PUT {repo}:{reference}: {}", r.text());
        }
    }
}
