//! Data dirs written by the previous version (pins without history, no claims, no lock
//! file) keep working: they are migrated on open and every pin in them is enforced.

mod common;

use common::*;
use tagpin::oci::{Repository, Tag};
use tagpin::store::{HistoryEvent, PinSource, PinStore, SledStore, TagState};

/// Write a store exactly as the previous version laid it out: `pins` and `by_digest`
/// trees, `{"digest","source","pinned_at"}` records.
fn write_previous_version(dir: &std::path::Path, pins: &[(&str, &str, &str, &str)]) {
    let db = sled::Config::new().path(dir.join("pins.sled")).open().unwrap();
    let (p, idx) = (db.open_tree("pins").unwrap(), db.open_tree("by_digest").unwrap());
    for (repo, tag, digest, source) in pins {
        let record = format!(r#"{{"digest":"{digest}","source":"{source}","pinned_at":1700000000}}"#);
        p.insert(format!("{repo}\0{tag}"), record.as_bytes()).unwrap();
        idx.insert(format!("{repo}\0{digest}\0{tag}"), &[][..]).unwrap();
    }
    db.flush().unwrap();
}

#[test]
fn a_data_dir_of_the_previous_version_is_migrated_and_enforced() {
    let registry = Registry::start();
    let a = Image::random(950, 200);
    a.push_blobs(registry.addr, "old", "");
    assert_eq!(a.put_manifest(registry.addr, "old", "v1", "").status, 201);
    let gone = Image::random(951, 200);
    let data = tempfile::tempdir().unwrap();
    write_previous_version(
        data.path(),
        &[
            ("old", "v1", &a.digest(), "push"),
            // A tombstone: the tag is no longer at the upstream, the pin still holds it.
            ("old", "v0", &gone.digest(), "adopted"),
        ],
    );

    let mut tagpin = Tagpin::start(&registry.url(), data.path(), &[]);
    assert!(
        tagpin.logs().iter().any(|l| l.contains("pin store migrated")),
        "{:?}",
        tagpin.logs()
    );
    let b = a.variant("b");
    b.push_blobs(tagpin.addr, "old", "");
    for (tag, pinned) in [("v1", a.digest()), ("v0", gone.digest())] {
        let r = b.put_manifest(tagpin.addr, "old", tag, "");
        assert_eq!(r.status, 409, "{tag}: {}", r.text());
        assert_eq!(r.json()["errors"][0]["detail"]["pinned_digest"], pinned);
    }
    assert_eq!(upstream_digest(&registry, "old", "v1"), Some(a.digest()));
    assert_eq!(
        a.put_manifest(tagpin.addr, "old", "v1", "").status,
        201,
        "identical re-push"
    );
    // Deleting the pinned digest stays refused after the migration.
    let del = request(
        tagpin.addr,
        "DELETE",
        &format!("/v2/old/manifests/{}", a.digest()),
        &[],
        b"",
    );
    assert_eq!(del.status, 409, "{}", del.text());
    assert_eq!(
        upstream_digest(&registry, "old", "v1"),
        Some(a.digest()),
        "the refused delete reached the upstream"
    );
    tagpin.terminate();

    // The records now carry the history their source implies.
    let store = SledStore::open(data.path()).unwrap();
    let repo = Repository::parse("old").unwrap();
    for (tag, event, source) in [
        ("v1", HistoryEvent::Push, PinSource::Push),
        ("v0", HistoryEvent::Adopted, PinSource::Adopted),
    ] {
        match store.state(&repo, &Tag::parse(tag).unwrap()).unwrap() {
            Some(TagState::Pinned(pin)) => {
                assert_eq!(pin.source, source);
                assert_eq!(pin.history.len(), 1, "{tag}: {:?}", pin.history);
                assert_eq!((pin.history[0].event, pin.history[0].at), (event, 1_700_000_000));
            }
            other => panic!("{tag}: {other:?}"),
        }
    }
}
