//! `tagpin demo-image DIR [--tag T] [--seed N]`: write a one-layer image as an OCI image
//! layout (`oci-layout`, `index.json`, `blobs/sha256/…`) that `skopeo copy oci:DIR:T …`
//! can push, so the Quickstart needs no image build tool. The layer is a gzip tar
//! holding one small text file; everything is derived from the seed, so the same seed
//! gives the same digest on every machine and another seed gives another digest.
//!
//! The gzip stream uses deflate's stored (uncompressed) blocks: valid gzip every client
//! accepts, and no compression library for a few hundred bytes. Because the layer is
//! already compressed, skopeo pushes the manifest as written, and the digest this command
//! prints is the digest the registry (and tagpin) will see.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Args;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

use super::client::{CliError, EXIT_OK};
use crate::oci::Tag;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const REF_NAME: &str = "org.opencontainers.image.ref.name";

#[derive(Debug, Args)]
#[command(after_help = "Prints `oci:DIR:TAG sha256:<manifest digest>`. Exit status: 0 written; 2 on any error.")]
pub struct DemoImageArgs {
    /// Directory of the OCI image layout: created when missing; an existing layout keeps
    /// its other tags and gains (or replaces) this one.
    pub dir: PathBuf,
    /// Tag of the image inside the layout, as in `oci:DIR:TAG`.
    #[arg(long, default_value = "1.0")]
    pub tag: String,
    /// Content seed: the same seed always gives the same digest, another seed another one.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// The blobs of one image, with the manifest's exact bytes.
pub struct DemoImage {
    pub layer: Vec<u8>,
    pub config: Vec<u8>,
    pub manifest: Vec<u8>,
}

impl DemoImage {
    pub fn new(seed: u64) -> Self {
        let text = format!("tagpin demo image, seed {seed}\n");
        let tar = tar_one_file("tagpin-demo.txt", text.as_bytes());
        let layer = gzip_stored(&tar);
        let config = serde_json::to_vec(&json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [sha256(&tar)]},
            "history": [{"created_by": format!("tagpin demo-image --seed {seed}")}],
        }))
        .unwrap_or_default();
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": sha256(&config), "size": config.len()},
            "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": sha256(&layer), "size": layer.len()}],
        }))
        .unwrap_or_default();
        Self {
            layer,
            config,
            manifest,
        }
    }

    pub fn digest(&self) -> String {
        sha256(&self.manifest)
    }
}

pub fn run(args: &DemoImageArgs, out: &mut dyn Write) -> Result<u8, CliError> {
    let tag = Tag::parse(&args.tag).map_err(|e| CliError::Usage(format!("--tag: {e}")))?;
    let image = DemoImage::new(args.seed);
    write_layout(&args.dir, &tag, &image)?;
    writeln!(out, "oci:{}:{} {}", args.dir.display(), tag.as_str(), image.digest())
        .map_err(|e| CliError::Io(format!("cannot write to stdout: {e}")))?;
    Ok(EXIT_OK)
}

/// Write the image's blobs into `dir` and point `tag` at its manifest in `index.json`.
/// A directory that holds files but no `oci-layout` is left alone.
pub fn write_layout(dir: &Path, tag: &Tag, image: &DemoImage) -> Result<(), CliError> {
    let io = |what: &str, e: std::io::Error| CliError::Io(format!("cannot {what} in {}: {e}", dir.display()));
    let index_path = dir.join("index.json");
    let existing = if dir.join("oci-layout").is_file() {
        let text = std::fs::read(&index_path).map_err(|e| io("read index.json", e))?;
        Some(
            serde_json::from_slice::<Value>(&text)
                .map_err(|e| CliError::Usage(format!("{} is not an OCI image index: {e}", index_path.display())))?,
        )
    } else {
        let non_empty = std::fs::read_dir(dir).map(|mut d| d.next().is_some()).unwrap_or(false);
        if non_empty {
            return Err(CliError::Usage(format!(
                "{} is neither empty nor an OCI image layout (no oci-layout file); choose another directory",
                dir.display()
            )));
        }
        None
    };
    let blobs = dir.join("blobs").join("sha256");
    std::fs::create_dir_all(&blobs).map_err(|e| io("create blobs/sha256", e))?;
    for blob in [&image.layer, &image.config, &image.manifest] {
        let name = sha256(blob);
        let hex = name.trim_start_matches("sha256:");
        std::fs::write(blobs.join(hex), blob).map_err(|e| io("write a blob", e))?;
    }
    let index = index_with(existing, tag, image)
        .map_err(|why| CliError::Usage(format!("{} is not an OCI image index: {why}", index_path.display())))?;
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)
        .map_err(|e| io("write oci-layout", e))?;
    let mut bytes = serde_json::to_vec_pretty(&index).unwrap_or_default();
    bytes.push(b'\n');
    std::fs::write(&index_path, bytes).map_err(|e| io("write index.json", e))
}

/// The layout's index with `tag` pointing at `image`: the entries of other tags stay,
/// an earlier entry of the same tag is replaced.
fn index_with(existing: Option<Value>, tag: &Tag, image: &DemoImage) -> Result<Value, &'static str> {
    let mut index = existing.unwrap_or_else(|| json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}));
    let manifests = index
        .get_mut("manifests")
        .and_then(Value::as_array_mut)
        .ok_or("it has no manifests list")?;
    manifests.retain(|m| m.pointer("/annotations/org.opencontainers.image.ref.name") != Some(&json!(tag.as_str())));
    manifests.push(json!({
        "mediaType": OCI_MANIFEST,
        "digest": image.digest(),
        "size": image.manifest.len(),
        "annotations": {REF_NAME: tag.as_str()},
    }));
    Ok(index)
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

/// A ustar archive of one regular file (mode 0644, owner 0, time 0): the header, the
/// content padded to 512 bytes, and the two zero blocks that end an archive.
fn tar_one_file(name: &str, content: &[u8]) -> Vec<u8> {
    let mut header = [0u8; 512];
    let mut put = |at: usize, field: &[u8]| header[at..at + field.len()].copy_from_slice(field);
    put(0, name.as_bytes());
    put(100, b"0000644\0");
    put(108, b"0000000\0");
    put(116, b"0000000\0");
    put(124, format!("{:011o}\0", content.len()).as_bytes());
    put(136, b"00000000000\0");
    put(148, b"        ");
    put(156, b"0");
    put(257, b"ustar\0");
    put(263, b"00");
    let sum: u32 = header.iter().map(|&b| u32::from(b)).sum();
    header[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    let mut tar = header.to_vec();
    tar.extend_from_slice(content);
    tar.resize(tar.len().div_ceil(512) * 512 + 1024, 0);
    tar
}

/// `data` as a gzip member of stored deflate blocks (RFC 1951 §3.2.4, RFC 1952).
fn gzip_stored(data: &[u8]) -> Vec<u8> {
    // Magic, deflate, no flags, no time, no extra flags, OS unknown.
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];
    let mut chunks = data.chunks(usize::from(u16::MAX)).peekable();
    if chunks.peek().is_none() {
        out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
    }
    while let Some(chunk) = chunks.next() {
        let last = chunks.peek().is_none();
        let len = u16::try_from(chunk.len()).unwrap_or(u16::MAX);
        out.push(u8::from(last));
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(chunk);
    }
    out.extend_from_slice(&crc32(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

/// CRC-32 (IEEE, reflected), as gzip's trailer needs it.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn tar_and_gzip_frame_the_content() {
        let tar = tar_one_file("a.txt", b"hello\n");
        assert_eq!(tar.len(), 512 * 4);
        assert_eq!(&tar[512..518], b"hello\n");
        let gz = gzip_stored(&tar);
        assert_eq!(&gz[..2], &[0x1f, 0x8b]);
        assert_eq!(gz.len(), 10 + 5 + tar.len() + 8);
        assert_eq!(&gz[15..15 + tar.len()], &tar[..]);
    }

    #[test]
    fn the_seed_decides_the_digest_and_a_layout_keeps_its_other_tags() {
        assert_eq!(DemoImage::new(1).digest(), DemoImage::new(1).digest());
        assert_ne!(DemoImage::new(1).digest(), DemoImage::new(2).digest());
        let dir = tempfile::tempdir().unwrap();
        let (one, two) = (Tag::parse("1.0").unwrap(), Tag::parse("1.1").unwrap());
        write_layout(dir.path(), &one, &DemoImage::new(1)).unwrap();
        write_layout(dir.path(), &two, &DemoImage::new(2)).unwrap();
        write_layout(dir.path(), &one, &DemoImage::new(3)).unwrap();
        let index: Value = serde_json::from_slice(&std::fs::read(dir.path().join("index.json")).unwrap()).unwrap();
        let tags: Vec<(String, String)> = index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                let name = m["annotations"][REF_NAME].as_str().unwrap().to_owned();
                (name, m["digest"].as_str().unwrap().to_owned())
            })
            .collect();
        assert_eq!(
            tags,
            [
                ("1.1".to_owned(), DemoImage::new(2).digest()),
                ("1.0".to_owned(), DemoImage::new(3).digest())
            ]
        );
    }

    #[test]
    fn a_directory_that_is_not_a_layout_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("notes.txt"), "mine").unwrap();
        let e = write_layout(dir.path(), &Tag::parse("1.0").unwrap(), &DemoImage::new(1)).unwrap_err();
        assert!(e.to_string().contains("neither empty nor an OCI image layout"), "{e}");
        assert!(!dir.path().join("blobs").exists());
    }
}
