//! A tagpin with its verifiable log on the sled store, restarted at will: the upstream,
//! the data dir, the admin secrets and a signing key made by `tagpin log keygen`; plus
//! what the log's tests do to data dirs (copy one, write one of the previous format).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::admin::{AdminSecrets, CliOut};
use super::log_api::{keygen, LogApi};
use super::{Image, Registry, Resp, Tagpin};

/// The signing key's name, and so the checkpoints' origin.
pub const KEY_NAME: &str = "log.test/tagpin";

/// An upstream, a data dir, admin secrets and a signing key, and tagpin (re)started on
/// them.
pub struct LogStack {
    pub registry: Registry,
    pub data: tempfile::TempDir,
    pub files: tempfile::TempDir,
    pub secrets: AdminSecrets,
    pub key: PathBuf,
    pub verifier: String,
    pub tagpin: Option<Tagpin>,
}

impl LogStack {
    pub fn new() -> Self {
        let files = tempfile::tempdir().unwrap();
        let (key, verifier) = keygen(files.path(), KEY_NAME);
        Self {
            registry: Registry::start(),
            data: tempfile::tempdir().unwrap(),
            files,
            secrets: AdminSecrets::new(),
            key,
            verifier,
            tagpin: None,
        }
    }

    pub fn dir(&self) -> PathBuf {
        self.data.path().join("store")
    }

    /// Start tagpin on the sled store in [`LogStack::dir`], signing with `key` (or unsigned).
    pub fn start(&mut self, key: Option<&Path>, extra: &[&str]) {
        let mut flags = self.secrets.flags();
        if let Some(k) = key {
            flags.extend(["--log-signing-key".into(), k.display().to_string()]);
        }
        flags.extend(extra.iter().map(|s| s.to_string()));
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let dir = self.dir();
        self.tagpin = Some(Tagpin::start_on_data_dir(&self.registry.url(), &dir, &flags));
    }

    pub fn start_signed(&mut self) {
        let key = self.key.clone();
        self.start(Some(&key), &[]);
    }

    pub fn stop(&mut self) {
        let mut t = self.tagpin.take().expect("tagpin running");
        assert!(t.terminate().success(), "tagpin exited badly:\n{}", t.logs().join("\n"));
    }

    pub fn tagpin(&self) -> &Tagpin {
        self.tagpin.as_ref().expect("tagpin running")
    }

    pub fn admin(&self) -> SocketAddr {
        self.tagpin().admin_addr()
    }

    pub fn api(&self) -> LogApi {
        LogApi::new(self.admin())
    }

    /// The CLI against the running tagpin's admin API.
    pub fn cli(&self, args: &[&str]) -> CliOut {
        self.secrets.cli(self.admin(), args)
    }

    /// Push `img` (blobs and manifest) through tagpin as `repo:tag`; the answer.
    pub fn push(&self, repo: &str, tag: &str, img: &Image) -> Resp {
        let addr = self.tagpin().addr;
        img.push_blobs(addr, repo, "");
        img.put_manifest(addr, repo, tag, "")
    }

    pub fn pushed(&self, repo: &str, tag: &str, img: &Image) {
        let r = self.push(repo, tag, img);
        assert_eq!(r.status, 201, "push {repo}:{tag}: {}", r.text());
    }

    /// Write `text` to a file of its own; its path.
    pub fn file(&self, name: &str, text: &str) -> String {
        let path = self.files.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }

    /// The request id of the one audit event `action` about `repo:tag`.
    pub fn request_id(&self, action: &str, repo: &str, tag: &str) -> String {
        let e = self
            .tagpin()
            .wait_for_audit(|e| e["action"] == action && e["repository"] == repo && e["tag"] == tag);
        let id = e["request_id"].as_str().unwrap_or("").to_owned();
        assert!(!id.is_empty(), "no request id in {e}");
        id
    }

    /// Another store's export: two pins (`1.0` and `2.0` of `repo`) pushed through a
    /// second tagpin on a data dir of its own, in front of the same upstream, and
    /// exported by the CLI.
    pub fn export_of_another_store(&self, repo: &str) -> Export {
        let data = tempfile::tempdir().unwrap();
        let flags = self.secrets.flags();
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let mut other = Tagpin::start_on_data_dir(&self.registry.url(), data.path(), &flags);
        let mut pins = Vec::new();
        for (tag, seed) in [("1.0", 7_907), ("2.0", 7_908)] {
            let img = Image::random(seed, 300);
            img.push_blobs(other.addr, repo, "");
            let r = img.put_manifest(other.addr, repo, tag, "");
            assert_eq!(r.status, 201, "{}", r.text());
            pins.push((tag.to_owned(), img.digest()));
        }
        let out = self.secrets.cli(other.admin_addr(), &["export"]).ok();
        other.terminate();
        let exported: Vec<(String, String)> = out
            .stdout
            .lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                let field = |k: &str| v[k].as_str().unwrap_or("").to_owned();
                (field("tag"), field("digest"))
            })
            .collect();
        assert_eq!(exported, pins, "the export: {}", out.stdout);
        Export { text: out.stdout, pins }
    }
}

/// An export of another store, and the tag and digest of each pin in it, in its order.
pub struct Export {
    pub text: String,
    pub pins: Vec<(String, String)>,
}

/// Copy a stopped tagpin's data dir, file by file.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Both output streams, for messages whose stream depends on the outcome.
pub fn said(out: &CliOut) -> String {
    format!("{}{}", out.stdout, out.stderr)
}

/// Write a store as record format 3 laid it out (the last format before the log): `pins`
/// records with their history, the `by_digest` index, and `meta` `format` = 3.
pub fn write_format_3(dir: &Path, pins: &[(&str, &str, &str, &[Value])]) {
    std::fs::create_dir_all(dir).unwrap();
    let db = sled::Config::new().path(dir.join("pins.sled")).open().unwrap();
    let (p, idx, meta) = (
        db.open_tree("pins").unwrap(),
        db.open_tree("by_digest").unwrap(),
        db.open_tree("meta").unwrap(),
    );
    for (key, digest, source, history) in pins {
        let (repo, tag) = key.split_once(':').unwrap();
        let record = serde_json::json!({
            "digest": digest,
            "source": source,
            "pinned_at": 1_700_000_000u64,
            "history": history,
        });
        p.insert(format!("{repo}\0{tag}"), serde_json::to_vec(&record).unwrap())
            .unwrap();
        idx.insert(format!("{repo}\0{digest}\0{tag}"), &[][..]).unwrap();
    }
    meta.insert("format", &[3u8][..]).unwrap();
    db.flush().unwrap();
}

impl Default for LogStack {
    fn default() -> Self {
        Self::new()
    }
}
