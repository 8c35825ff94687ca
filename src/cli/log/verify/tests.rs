//! `log verify` offline on a sled data dir: a store written through its interface checks;
//! a store changed under it (a pin's digest, a pin removed, a leaf's bytes) and saved
//! checkpoints the log does not extend, or signed by another key, are named.

use std::path::Path;

use serde_json::Value;

use super::super::testing::{digest, replace, source_args, store_with, tamper};
use super::*;
use crate::log::{Signer, SigningKey};
use crate::store::{PinStore, SledStore};

/// The unsigned checkpoint of the data dir's head now, or signed by `key`.
fn checkpoint_of(dir: &Path, key: Option<SigningKey>) -> String {
    let store = SledStore::open(dir).unwrap();
    Signer::new(key, None).checkpoint(&store.log_head().unwrap())
}

/// `log verify --json --data-dir DIR [--checkpoint FILE] [--verifier-key KEY]`.
async fn verify(dir: &Path, saved: Option<&str>, key: Option<&str>) -> (u8, Value) {
    let checkpoint = saved.map(|text| {
        let path = dir.join(format!("saved-{}.checkpoint", text.len()));
        std::fs::write(&path, text).unwrap();
        path
    });
    let args = VerifyArgs {
        checkpoint,
        verifier_key: key.map(str::to_owned),
        json: true,
        source: source_args(dir),
    };
    let mut out = Vec::new();
    let code = run(&args, &|_| None, &mut out).await.unwrap();
    (code, serde_json::from_slice(&out).unwrap())
}

fn problem(v: &Value) -> &str {
    v["problem"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn a_store_written_through_its_interface_verifies() {
    let dir = tempfile::tempdir().unwrap();
    store_with(dir.path(), 5);
    let saved = checkpoint_of(dir.path(), None);
    store_with(dir.path(), 7);
    let (code, v) = verify(dir.path(), Some(&saved), None).await;
    assert_eq!(code, EXIT_OK, "{v}");
    assert_eq!(
        (&v["ok"], &v["size"], &v["entries"], &v["pins"]),
        (&Value::Bool(true), &Value::from(7), &Value::from(7), &Value::from(7)),
        "{v}"
    );
    assert_eq!(
        (&v["checkpoint"], &v["signature"]),
        (&"consistent".into(), &"unchecked".into())
    );
    assert_eq!(v["problem"], Value::Null);
}

#[tokio::test]
async fn an_empty_store_verifies() {
    let dir = tempfile::tempdir().unwrap();
    store_with(dir.path(), 0);
    let saved = checkpoint_of(dir.path(), None);
    let (code, v) = verify(dir.path(), Some(&saved), None).await;
    assert_eq!(
        (code, &v["size"], &v["pins"]),
        (EXIT_OK, &Value::from(0), &Value::from(0)),
        "{v}"
    );
}

#[tokio::test]
async fn a_pin_changed_under_the_log_is_named_with_the_entry_that_disagrees() {
    let dir = tempfile::tempdir().unwrap();
    store_with(dir.path(), 4);
    let (forged, logged) = (digest(9), digest(2));
    tamper(dir.path(), "pins", b"team/app\0v2", |v| {
        Some(replace(v, logged.as_str(), forged.as_str()))
    });
    let (code, v) = verify(dir.path(), None, None).await;
    assert_eq!(code, EXIT_FOUND, "{v}");
    assert_eq!(
        problem(&v),
        format!("team/app:v2 is pinned to {forged} in the store; the log says {logged} (entry 2)")
    );
}

#[tokio::test]
async fn a_pin_removed_under_the_log_is_named() {
    let dir = tempfile::tempdir().unwrap();
    store_with(dir.path(), 3);
    tamper(dir.path(), "pins", b"team/app\0v1", |_| None);
    let (code, v) = verify(dir.path(), None, None).await;
    assert_eq!(code, EXIT_FOUND, "{v}");
    assert_eq!(
        problem(&v),
        format!(
            "the log binds team/app:v1 to {} (entry 1); the store has no pin for it",
            digest(1)
        )
    );
}

#[tokio::test]
async fn a_leaf_changed_in_place_no_longer_hashes_to_the_stored_tree() {
    let dir = tempfile::tempdir().unwrap();
    store_with(dir.path(), 3);
    tamper(dir.path(), "log_leaves", &1u64.to_be_bytes(), |v| {
        Some(replace(v, "\"time\":\"2", "\"time\":\"1"))
    });
    let (code, v) = verify(dir.path(), None, None).await;
    assert_eq!(code, EXIT_FOUND, "{v}");
    assert!(
        problem(&v).starts_with("the stored tree does not match its entries: 3 entries give root"),
        "{v}"
    );
}

#[tokio::test]
async fn a_leaf_numbered_elsewhere_is_named() {
    let dir = tempfile::tempdir().unwrap();
    store_with(dir.path(), 3);
    tamper(dir.path(), "log_leaves", &2u64.to_be_bytes(), |v| {
        Some(replace(v, "\"index\":2", "\"index\":7"))
    });
    let (code, v) = verify(dir.path(), None, None).await;
    assert_eq!(
        (code, problem(&v)),
        (EXIT_FOUND, "entry 2's leaf says it is entry 7"),
        "{v}"
    );
}

#[tokio::test]
async fn a_saved_checkpoint_larger_than_the_log_or_of_another_tree_is_named() {
    let dir = tempfile::tempdir().unwrap();
    store_with(dir.path(), 3);
    let ahead = Checkpoint {
        origin: "tagpin".into(),
        size: 9,
        root: [1; 32],
    };
    let (code, v) = verify(dir.path(), Some(&ahead.text()), None).await;
    assert_eq!(code, EXIT_FOUND, "{v}");
    assert_eq!(problem(&v), "the log has 3 entries, fewer than the checkpoint's 9");
    assert_eq!(v["checkpoint"], "shrunk");

    let forked = Checkpoint { size: 2, ..ahead };
    let (code, v) = verify(dir.path(), Some(&forked.text()), None).await;
    assert_eq!(code, EXIT_FOUND, "{v}");
    assert!(
        problem(&v).starts_with("the checkpoint at size 2 is not a prefix of the log now"),
        "{v}"
    );
    assert_eq!(v["checkpoint"], "inconsistent");
}

#[tokio::test]
async fn a_saved_checkpoint_must_carry_the_verifier_keys_signature() {
    let dir = tempfile::tempdir().unwrap();
    store_with(dir.path(), 2);
    let (secret, verifier) = SigningKey::generate("tagpin.test/log").unwrap();
    let (_, stranger) = SigningKey::generate("tagpin.test/log").unwrap();
    let signed = checkpoint_of(dir.path(), Some(SigningKey::parse(&secret).unwrap()));
    let (code, v) = verify(dir.path(), Some(&signed), Some(&verifier)).await;
    assert_eq!((code, &v["checkpoint"]), (EXIT_OK, &"consistent".into()), "{v}");

    let (code, v) = verify(dir.path(), Some(&signed), Some(&stranger)).await;
    assert_eq!((code, &v["checkpoint"]), (EXIT_FOUND, &"bad".into()), "{v}");
    let id = VerifierKey::parse(&stranger).unwrap().id();
    assert_eq!(problem(&v), format!("the saved checkpoint is not signed by {id}"));

    let unsigned = checkpoint_of(dir.path(), None);
    let (code, v) = verify(dir.path(), Some(&unsigned), Some(&verifier)).await;
    assert_eq!(
        (code, problem(&v)),
        (EXIT_FOUND, "the saved checkpoint is not signed"),
        "{v}"
    );
}
