//! What the log commands' tests share: a sled data dir with pins written through the
//! store's interface, and changes made under it, as someone with the files could.

use std::path::Path;

use super::source::SourceArgs;
use crate::cli::client::AdminArgs;
use crate::cli::transfer::DatabaseArgs;
use crate::oci::{Digest, Repository, Tag};
use crate::store::{Pin, PinSource, PinStore, SledStore};

pub fn digest(n: u8) -> Digest {
    Digest::parse(&format!("sha256:{}", format!("{n:02x}").repeat(32))).unwrap()
}

/// A data dir holding pins of `team/app` for tags `v0` to `v{n-1}` (those missing are
/// added), one log entry each.
pub fn store_with(dir: &Path, n: u8) {
    let store = SledStore::open(dir).unwrap();
    let repo = Repository::parse("team/app").unwrap();
    for i in 0..n {
        let tag = Tag::parse(&format!("v{i}")).unwrap();
        store
            .pin_if_absent(&repo, &[(tag, Pin::now(digest(i), PinSource::Push))])
            .unwrap();
    }
}

/// The command line's source: the data dir `dir`.
pub fn source_args(dir: &Path) -> SourceArgs {
    SourceArgs {
        data_dir: Some(dir.to_owned()),
        database: DatabaseArgs {
            database_url: None,
            database_password_file: None,
            tls: Default::default(),
        },
        admin: AdminArgs {
            admin_url: "http://127.0.0.1:9".into(),
            admin_token_file: None,
        },
    }
}

/// Change the stored bytes of one tree's value in place.
pub fn tamper(dir: &Path, tree: &str, key: &[u8], change: impl FnOnce(Vec<u8>) -> Option<Vec<u8>>) {
    // sled's lock outlives a dropped store for a moment (its flusher thread lets go
    // last): wait for it, a bounded number of times, as the store's own open does.
    let mut attempts = 0;
    let db = loop {
        match sled::open(dir.join("pins.sled")) {
            Ok(db) => break db,
            Err(e) if e.to_string().contains("could not acquire lock") && attempts < 100 => {
                attempts += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => panic!("open the data dir to change it: {e}"),
        }
    };
    let tree = db.open_tree(tree).unwrap();
    let old = tree.get(key).unwrap().expect("the key is stored").to_vec();
    match change(old) {
        Some(new) => tree.insert(key, new).unwrap(),
        None => tree.remove(key).unwrap(),
    };
    db.flush().unwrap();
}

pub fn replace(bytes: Vec<u8>, from: &str, to: &str) -> Vec<u8> {
    let text = String::from_utf8(bytes).unwrap();
    assert!(text.contains(from), "{text}");
    text.replacen(from, to, 1).into_bytes()
}
