//! Generated OCI images: random layers, a config, a manifest whose exact bytes are known,
//! written as an OCI layout for skopeo or pushed with raw HTTP.

use std::net::SocketAddr;
use std::path::Path;

use sha2::{Digest as _, Sha256};

use super::http::request;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const ACCEPT_ALL: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json";

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

/// Deterministic pseudo-random bytes (xorshift64*), fast enough for hundreds of MiB.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// One single-platform image.
#[derive(Clone)]
pub struct Image {
    pub layer: Vec<u8>,
    pub config: Vec<u8>,
    pub manifest: Vec<u8>,
}

impl Image {
    /// An image with one random layer of `layer_size` bytes; `seed` makes it unique.
    pub fn random(seed: u64, layer_size: usize) -> Self {
        Self::with_arch(seed, layer_size, "amd64")
    }

    pub fn with_arch(seed: u64, layer_size: usize, arch: &str) -> Self {
        let layer = random_bytes(seed, layer_size);
        let config = format!(
            r#"{{"architecture":"{arch}","os":"linux","config":{{}},"rootfs":{{"type":"layers","diff_ids":["{}"]}}}}"#,
            sha256(&layer)
        )
        .into_bytes();
        let manifest = manifest_json(&config, &layer, &format!("seed-{seed}"));
        Self {
            layer,
            config,
            manifest,
        }
    }

    /// The same blobs under a manifest that differs only in an annotation: a different
    /// digest with nothing new to upload.
    pub fn variant(&self, note: &str) -> Self {
        Self {
            manifest: manifest_json(&self.config, &self.layer, note),
            ..self.clone()
        }
    }

    pub fn digest(&self) -> String {
        sha256(&self.manifest)
    }

    /// The same blobs under a manifest that lists the layer `copies` times: valid, a few
    /// MB, and slow for distribution to verify (it checks every layer reference), which
    /// holds the upstream's answer back long enough to act inside the push's window.
    pub fn heavy(&self, copies: usize, note: &str) -> Self {
        let layer = format!(
            r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{}","size":{}}}"#,
            sha256(&self.layer),
            self.layer.len()
        );
        let layers = vec![layer; copies].join(",");
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},"layers":[{layers}],"annotations":{{"test.note":"{note}"}}}}"#,
            sha256(&self.config),
            self.config.len()
        )
        .into_bytes();
        Self {
            manifest,
            ..self.clone()
        }
    }

    /// Push the blobs to `addr` with raw HTTP (POST then PUT with `?digest=`).
    pub fn push_blobs(&self, addr: SocketAddr, repo: &str, auth: &str) {
        for blob in [&self.config, &self.layer] {
            push_blob(addr, repo, blob, auth);
        }
    }

    /// PUT the manifest by tag with raw HTTP; returns the status and response.
    pub fn put_manifest(&self, addr: SocketAddr, repo: &str, reference: &str, auth: &str) -> super::Resp {
        request(
            addr,
            "PUT",
            &format!("/v2/{repo}/manifests/{reference}"),
            &[("Content-Type", OCI_MANIFEST), ("Authorization", auth)],
            &self.manifest,
        )
    }

    /// Write an OCI layout at `dir` holding this image as `tag`.
    pub fn write_layout(&self, dir: &Path, tag: &str) {
        write_blobs(dir, &[&self.layer, &self.config, &self.manifest]);
        write_index(dir, OCI_MANIFEST, &self.manifest, tag);
    }
}

/// A multi-platform image index over several images.
pub struct Index {
    pub images: Vec<Image>,
    pub index: Vec<u8>,
}

impl Index {
    pub fn new(seed: u64, layer_size: usize) -> Self {
        let images: Vec<Image> = ["amd64", "arm64"]
            .iter()
            .enumerate()
            .map(|(i, a)| Image::with_arch(seed * 10 + i as u64, layer_size, a))
            .collect();
        let entries: Vec<String> = images
            .iter()
            .zip(["amd64", "arm64"])
            .map(|(img, arch)| {
                format!(
                    r#"{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":{},"platform":{{"architecture":"{arch}","os":"linux"}}}}"#,
                    img.digest(),
                    img.manifest.len()
                )
            })
            .collect();
        let index = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{}]}}"#,
            entries.join(",")
        )
        .into_bytes();
        Self { images, index }
    }

    pub fn digest(&self) -> String {
        sha256(&self.index)
    }

    pub fn write_layout(&self, dir: &Path, tag: &str) {
        for img in &self.images {
            write_blobs(dir, &[&img.layer, &img.config, &img.manifest]);
        }
        write_blobs(dir, &[&self.index]);
        write_index(dir, OCI_INDEX, &self.index, tag);
    }
}

fn manifest_json(config: &[u8], layer: &[u8], note: &str) -> Vec<u8> {
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{}","size":{}}}],"annotations":{{"test.note":"{note}"}}}}"#,
        sha256(config),
        config.len(),
        sha256(layer),
        layer.len()
    )
    .into_bytes()
}

pub fn push_blob(addr: SocketAddr, repo: &str, blob: &[u8], auth: &str) {
    let start = request(
        addr,
        "POST",
        &format!("/v2/{repo}/blobs/uploads/"),
        &[("Authorization", auth)],
        b"",
    );
    assert_eq!(start.status, 202, "upload start: {}", start.text());
    let location = start.header("location").expect("upload without Location").to_owned();
    // The Location may be absolute; the raw client wants the path and query.
    let target = match location.find("/v2/") {
        Some(i) => location[i..].to_owned(),
        None => location.clone(),
    };
    let sep = if target.contains('?') { '&' } else { '?' };
    let put = request(
        addr,
        "PUT",
        &format!("{target}{sep}digest={}", sha256(blob)),
        &[("Content-Type", "application/octet-stream"), ("Authorization", auth)],
        blob,
    );
    assert_eq!(put.status, 201, "upload finish: {}", put.text());
}

fn write_blobs(dir: &Path, blobs: &[&[u8]]) {
    let blob_dir = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blob_dir).unwrap();
    for b in blobs {
        let hex = sha256(b).trim_start_matches("sha256:").to_owned();
        std::fs::write(blob_dir.join(hex), b).unwrap();
    }
}

fn write_index(dir: &Path, media_type: &str, top: &[u8], tag: &str) {
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let index = format!(
        r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{media_type}","digest":"{}","size":{},"annotations":{{"org.opencontainers.image.ref.name":"{tag}"}}}}]}}"#,
        sha256(top),
        top.len()
    );
    std::fs::write(dir.join("index.json"), index).unwrap();
}
