//! Append-only content built by the tests: cosign-shaped signature manifests (an OCI image
//! manifest whose layers are simple-signing payloads, each signature in its layer
//! descriptor's annotations) and referrers-tag indexes (distribution-spec `spec.md`,
//! "Referrers Tag Schema": an OCI image index under `sha256-<hex>` listing the referrers
//! of that digest). Manifests are built as JSON values so a test can alter one field.

use std::net::SocketAddr;

use base64::Engine as _;
use serde_json::{json, Value};

use super::http::{request, Resp};
use super::image::{push_blob, random_bytes, sha256, Image, ACCEPT_ALL, OCI_INDEX, OCI_MANIFEST};
use super::Registry;

pub const SIMPLESIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
/// The empty descriptor's content (image-spec `manifest.md`, "Guidance for an Empty
/// Descriptor").
pub const EMPTY: &[u8] = b"{}";

/// `sha256-<hex>.sig`: the tag cosign stores the signatures of `digest` under.
pub fn signature_tag(digest: &str) -> String {
    format!("{}.sig", referrers_tag(digest))
}

/// `sha256-<hex>`: the referrers tag of `digest` (the fallback of the referrers API).
pub fn referrers_tag(digest: &str) -> String {
    digest.replacen(':', "-", 1)
}

/// A descriptor of `bytes` with `media_type`.
pub fn descriptor(media_type: &str, bytes: &[u8]) -> Value {
    json!({"mediaType": media_type, "digest": sha256(bytes), "size": bytes.len()})
}

/// The descriptor of an image's manifest, for `subject`.
pub fn image_descriptor(img: &Image) -> Value {
    descriptor(OCI_MANIFEST, &img.manifest)
}

pub fn to_bytes(manifest: &Value) -> Vec<u8> {
    serde_json::to_vec(manifest).unwrap()
}

/// One cosign signature of an image: its simple-signing payload (a blob) and the base64
/// signature over it.
#[derive(Clone)]
pub struct Signature {
    pub payload: Vec<u8>,
    pub signature: String,
}

impl Signature {
    /// Signature `n` of `image_digest`; `n` goes into the payload's optional section, so
    /// every signature has a layer digest of its own.
    pub fn new(image_digest: &str, n: u64) -> Self {
        let payload = to_bytes(&json!({
            "critical": {
                "identity": {"docker-reference": "127.0.0.1/signed/app"},
                "image": {"docker-manifest-digest": image_digest},
                "type": "cosign container image signature"
            },
            "optional": {"signer": format!("key-{n}")}
        }));
        let signature = base64::engine::general_purpose::STANDARD.encode(random_bytes(9_000 + n, 71));
        Self { payload, signature }
    }

    pub fn digest(&self) -> String {
        sha256(&self.payload)
    }

    /// The layer descriptor cosign writes for this signature.
    pub fn layer(&self) -> Value {
        let mut d = descriptor(SIMPLESIGNING, &self.payload);
        d["annotations"] = json!({ SIGNATURE_ANNOTATION: self.signature });
        d
    }

    /// The same layer (same payload digest) carrying another signature.
    pub fn forged_layer(&self) -> Value {
        let mut d = self.layer();
        d["annotations"][SIGNATURE_ANNOTATION] = json!(base64::engine::general_purpose::STANDARD.encode(b"forged"));
        d
    }
}

/// A signature manifest over `layers`, and its config blob. As cosign does, the config
/// lists the layers' digests, so it changes with every signature added.
pub fn signature_manifest(layers: &[Value]) -> (Vec<u8>, Value) {
    let diff_ids: Vec<&Value> = layers.iter().map(|l| &l["digest"]).collect();
    let config = to_bytes(&json!({
        "architecture": "",
        "os": "",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids}
    }));
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor("application/vnd.oci.image.config.v1+json", &config),
        "layers": layers,
    });
    (config, manifest)
}

/// Push a signature manifest's config and signature payloads (blob uploads are
/// forwarded, so `addr` may be tagpin or the upstream).
pub fn push_signature_blobs(addr: SocketAddr, repo: &str, config: &[u8], signatures: &[&Signature]) {
    push_blob(addr, repo, config, "");
    for s in signatures {
        push_blob(addr, repo, &s.payload, "");
    }
}

/// A referrer of `subject`: an artifact manifest (empty config, one payload layer) and
/// the descriptor a referrers index lists for it, with its `artifactType` and annotations.
#[derive(Clone)]
pub struct Referrer {
    pub manifest: Vec<u8>,
    pub entry: Value,
}

impl Referrer {
    /// Referrer `n`; its payload blob is `payload` (pushed by [`push_referrer_blobs`]).
    pub fn new(subject: &Value, payload: &[u8], n: u64) -> Self {
        let artifact_type = "application/vnd.example.sbom.v1+json";
        let annotations = json!({"org.example.referrer": format!("r{n}")});
        let manifest = to_bytes(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": artifact_type,
            "config": descriptor(EMPTY_MEDIA_TYPE, EMPTY),
            "layers": [descriptor("application/spdx+json", payload)],
            "subject": subject,
            "annotations": annotations,
        }));
        let mut entry = descriptor(OCI_MANIFEST, &manifest);
        entry["artifactType"] = json!(artifact_type);
        entry["annotations"] = annotations;
        Self { manifest, entry }
    }

    pub fn digest(&self) -> String {
        sha256(&self.manifest)
    }
}

/// Push the blobs every referrer shares: the empty config and the payload.
pub fn push_referrer_blobs(addr: SocketAddr, repo: &str, payload: &[u8]) {
    push_blob(addr, repo, EMPTY, "");
    push_blob(addr, repo, payload, "");
}

/// A referrers-tag index listing `entries`.
pub fn referrers_index(entries: &[Value]) -> Vec<u8> {
    to_bytes(&json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}))
}

/// The `manifests` of an index.
pub fn index_entries(index: &[u8]) -> Vec<Value> {
    let v: Value = serde_json::from_slice(index).expect("an index is JSON");
    v["manifests"].as_array().cloned().unwrap_or_default()
}

/// PUT manifest bytes, with their own `mediaType` as the Content-Type.
pub fn put(addr: SocketAddr, repo: &str, reference: &str, manifest: &[u8]) -> Resp {
    let v: Value = serde_json::from_slice(manifest).expect("a manifest is JSON");
    let media_type = v["mediaType"].as_str().unwrap_or(OCI_MANIFEST).to_owned();
    request(
        addr,
        "PUT",
        &format!("/v2/{repo}/manifests/{reference}"),
        &[("Content-Type", &media_type)],
        manifest,
    )
}

/// The bytes the upstream itself holds under `repo:reference`, asked directly.
pub fn upstream_manifest(registry: &Registry, repo: &str, reference: &str) -> Option<Vec<u8>> {
    let r = request(
        registry.addr,
        "GET",
        &format!("/v2/{repo}/manifests/{reference}"),
        &[("Accept", ACCEPT_ALL)],
        b"",
    );
    match r.status {
        200 => Some(r.body),
        404 => None,
        s => panic!(
            "unexpected {s} fetching {repo}:{reference} from the upstream: {}",
            r.text()
        ),
    }
}
