//! A failing pin store: tagpin must refuse every write it cannot decide safely (503) and
//! every read by a protected tag (it cannot tell which digest the tag is pinned to, and
//! the upstream's tag may have moved), and keep serving reads by digest and blobs.
//! Runtime failures use an in-process tagpin with a store that fails on demand; start-up
//! failures use the binary on a broken data dir.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::*;
use tagpin::config::RawConfig;
use tagpin::oci::{Digest, Repository, Tag};
use tagpin::store::{
    DeleteRecord, ImportError, ImportOutcome, ImportSource, PinStore, Protect, Refused, SledStore, StoreError,
    TagRecord, TagState,
};

/// A real store with switches that make reads, writes, or only the recording of a pin
/// (an update that sets or moves one: the confirmation of an accepted push) fail.
struct FlakyStore {
    inner: SledStore,
    fail_reads: AtomicBool,
    fail_writes: AtomicBool,
    fail_confirms: AtomicBool,
}

impl FlakyStore {
    fn check(&self, flag: &AtomicBool) -> Result<(), StoreError> {
        if flag.load(Ordering::SeqCst) {
            Err(injected())
        } else {
            Ok(())
        }
    }
}

fn injected() -> StoreError {
    StoreError::Io("injected failure: /secret/internal/path".into())
}

impl PinStore for FlakyStore {
    fn record(&self, r: &Repository, t: &Tag) -> Result<TagRecord, StoreError> {
        self.check(&self.fail_reads)?;
        self.inner.record(r, t)
    }
    fn update(
        &self,
        r: &Repository,
        t: &[Tag],
        change: &mut dyn FnMut(u64, &mut [TagRecord]),
    ) -> Result<Vec<TagRecord>, StoreError> {
        self.check(&self.fail_writes)?;
        let fail_pins = self.fail_confirms.load(Ordering::SeqCst);
        let mut refused = false;
        let written = self.inner.update(r, t, &mut |now, records| {
            let before = records.to_vec();
            change(now, records);
            // A change that sets or moves a pin is undone before it is written, and fails.
            let digest = |r: &TagRecord| r.pin.as_ref().map(|p| p.digest.clone());
            refused = fail_pins && before.iter().zip(records.iter()).any(|(b, a)| digest(b) != digest(a));
            if refused {
                records.clone_from_slice(&before);
            }
        })?;
        if refused {
            return Err(injected());
        }
        Ok(written)
    }
    fn tags_pinned_to(&self, r: &Repository, d: &Digest) -> Result<Vec<Tag>, StoreError> {
        self.check(&self.fail_reads)?;
        self.inner.tags_pinned_to(r, d)
    }
    fn begin_delete(&self, r: &Repository, d: &Digest, id: &str) -> Result<(), StoreError> {
        self.check(&self.fail_writes)?;
        self.inner.begin_delete(r, d, id)
    }
    fn end_delete(&self, r: &Repository, d: &Digest, id: &str) -> Result<(), StoreError> {
        self.check(&self.fail_writes)?;
        self.inner.end_delete(r, d, id)
    }
    fn deletes_in_flight(&self, r: &Repository, d: &[Digest], horizon: u64) -> Result<Vec<Digest>, StoreError> {
        self.check(&self.fail_reads)?;
        self.inner.deletes_in_flight(r, d, horizon)
    }
    fn list_deletes(&self, r: Option<&Repository>) -> Result<Vec<DeleteRecord>, StoreError> {
        self.check(&self.fail_reads)?;
        self.inner.list_deletes(r)
    }
    fn record_refusal(&self, r: &Repository, t: &Tag, x: &Refused) -> Result<(), StoreError> {
        self.check(&self.fail_writes)?;
        self.inner.record_refusal(r, t, x)
    }
    fn refusals(&self, r: &Repository, t: &Tag) -> Result<Vec<Refused>, StoreError> {
        self.check(&self.fail_reads)?;
        self.inner.refusals(r, t)
    }
    fn protect(&self, r: &Repository, h: &Digest, refs: &[Digest], how: Protect) -> Result<(), StoreError> {
        self.check(&self.fail_writes)?;
        self.inner.protect(r, h, refs, how)
    }
    fn has_refs(&self, r: &Repository, h: &Digest) -> Result<bool, StoreError> {
        self.check(&self.fail_reads)?;
        self.inner.has_refs(r, h)
    }
    fn refs_of(&self, r: &Repository, h: &Digest) -> Result<Vec<Digest>, StoreError> {
        self.check(&self.fail_reads)?;
        self.inner.refs_of(r, h)
    }
    fn holders(&self, r: &Repository) -> Result<Vec<Digest>, StoreError> {
        self.check(&self.fail_reads)?;
        self.inner.holders(r)
    }
    fn referenced_by(&self, r: &Repository, d: &Digest) -> Result<Vec<Digest>, StoreError> {
        self.check(&self.fail_reads)?;
        self.inner.referenced_by(r, d)
    }
    fn list(
        &self,
        r: Option<&Repository>,
        after: Option<&(Repository, Tag)>,
        limit: usize,
    ) -> Result<Vec<(Repository, Tag, TagState)>, StoreError> {
        self.check(&self.fail_reads)?;
        self.inner.list(r, after, limit)
    }
    fn import_from(&self, source: &mut dyn ImportSource, by: &str) -> Result<ImportOutcome, ImportError> {
        self.check(&self.fail_writes)?;
        self.inner.import_from(source, by)
    }
    fn log_head(&self) -> Result<tagpin::log::Frontier, StoreError> {
        self.inner.log_head()
    }
    fn log_leaves(&self, start: u64, end: u64) -> Result<Vec<Vec<u8>>, StoreError> {
        self.inner.log_leaves(start, end)
    }
    fn log_nodes(&self, ids: &[tagpin::log::NodeId]) -> Result<Vec<tagpin::log::Hash>, StoreError> {
        self.inner.log_nodes(ids)
    }
    fn lead(&self) -> Result<bool, StoreError> {
        self.inner.lead()
    }
    fn check(&self) -> Result<(), StoreError> {
        self.check(&self.fail_reads)?;
        self.check(&self.fail_writes)?;
        PinStore::check(&self.inner)
    }
}

/// tagpin in this process, in front of `upstream`, on its own runtime thread.
fn in_process(upstream: &str, store: Arc<FlakyStore>) -> SocketAddr {
    let raw = RawConfig {
        upstream: Some(upstream.to_owned()),
        ..RawConfig::default()
    };
    let config = raw.validate().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move {
            let app = Arc::new(tagpin::App::with_store(config, store).unwrap());
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            tagpin::server::serve(app, listener, std::future::pending()).await;
        });
    });
    rx.recv().unwrap()
}

fn flaky(dir: &std::path::Path) -> Arc<FlakyStore> {
    Arc::new(FlakyStore {
        inner: SledStore::open(dir).unwrap(),
        fail_reads: AtomicBool::new(false),
        fail_writes: AtomicBool::new(false),
        fail_confirms: AtomicBool::new(false),
    })
}

#[test]
fn when_the_store_cannot_be_read_writes_are_refused_and_reads_flow() {
    let registry = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let store = flaky(dir.path());
    let addr = in_process(&registry.url(), Arc::clone(&store));
    let a = Image::random(300, 1000);
    a.push_blobs(addr, "s", "");
    assert_eq!(a.put_manifest(addr, "s", "v1", "").status, 201);

    store.fail_reads.store(true, Ordering::SeqCst);
    let b = a.variant("b");
    for (target, tag) in [("v1", "v1"), ("v2", "v2")] {
        let r = b.put_manifest(addr, "s", target, "");
        assert_eq!((r.status, r.oci_code().as_str()), (503, "UNAVAILABLE"), "{}", r.text());
        assert!(!r.text().contains("/secret/internal/path"), "5xx body leaks internals");
        let want = (tag == "v1").then(|| a.digest());
        assert_eq!(upstream_digest(&registry, "s", tag), want);
    }
    let del = request(addr, "DELETE", &format!("/v2/s/manifests/{}", a.digest()), &[], b"");
    assert_eq!(del.status, 503);
    // Deleting a protected tag needs no store to be refused.
    assert_eq!(request(addr, "DELETE", "/v2/s/manifests/v1", &[], b"").status, 409);
    // Reads by digest keep flowing; a read by the tag is refused rather than answered
    // from a tag the upstream may have moved.
    assert_read_fails_closed(addr, "s", "v1", &a);
    assert_eq!(
        request(
            addr,
            "GET",
            &format!("/v2/s/blobs/{}", image::sha256(&a.layer)),
            &[],
            b""
        )
        .status,
        200
    );
    let ready = request(addr, "GET", "/readyz", &[], b"");
    assert_eq!(
        (ready.status, ready.json()["store"].as_str()),
        (503, Some("unavailable"))
    );

    store.fail_reads.store(false, Ordering::SeqCst);
    // /readyz answers are cached for a second.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(request(addr, "GET", "/readyz", &[], b"").status, 200);
    assert_eq!(b.put_manifest(addr, "s", "v1", "").status, 409);
    assert_eq!(upstream_digest(&registry, "s", "v1"), Some(a.digest()));
}

#[test]
fn a_pin_write_that_fails_after_the_upstream_accepted_leaves_the_tag_reserved() {
    let registry = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let store = flaky(dir.path());
    let addr = in_process(&registry.url(), Arc::clone(&store));
    let a = Image::random(301, 1000);
    a.push_blobs(addr, "w", "");

    store.fail_confirms.store(true, Ordering::SeqCst);
    let r = a.put_manifest(addr, "w", "v1", "");
    assert_eq!((r.status, r.oci_code().as_str()), (503, "UNAVAILABLE"));
    assert!(r.text().contains("reserved"), "{}", r.text());
    assert_eq!(
        upstream_digest(&registry, "w", "v1"),
        Some(a.digest()),
        "the upstream took it"
    );
    // The claim written before forwarding holds the tag: another digest is refused even
    // while pins cannot be recorded.
    let r = a.variant("b").put_manifest(addr, "w", "v1", "");
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(r.json()["errors"][0]["detail"]["pinned_digest"], a.digest());
    assert_eq!(r.json()["errors"][0]["detail"]["state"], "claimed");

    store.fail_confirms.store(false, Ordering::SeqCst);
    // The client's retry completes the push and pins it. The first push's record stays
    // (its answer was never recorded, and only that settles it, or the in-doubt
    // horizon): it holds the same digest, so it keeps nothing but other digests out.
    assert_eq!(a.put_manifest(addr, "w", "v1", "").status, 201);
    let (repo, tag) = (Repository::parse("w").unwrap(), Tag::parse("v1").unwrap());
    let record = store.record(&repo, &tag).unwrap();
    assert_eq!(record.pin.map(|p| p.digest.to_string()), Some(a.digest()));
    assert_eq!(record.writes.len(), 1, "{:?}", record.writes);
    assert_eq!(record.writes[0].digest.to_string(), a.digest());
    let r = a.variant("b").put_manifest(addr, "w", "v1", "");
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(r.json()["errors"][0]["detail"]["pinned_digest"], a.digest());
    assert_eq!(upstream_digest(&registry, "w", "v1"), Some(a.digest()));
}

#[test]
fn a_claim_that_cannot_be_written_forwards_nothing() {
    let registry = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let store = flaky(dir.path());
    let addr = in_process(&registry.url(), Arc::clone(&store));
    let a = Image::random(303, 1000);
    a.push_blobs(addr, "c", "");
    store.fail_writes.store(true, Ordering::SeqCst);
    let r = a.put_manifest(addr, "c", "v1", "");
    assert_eq!((r.status, r.oci_code().as_str()), (503, "UNAVAILABLE"));
    assert_eq!(upstream_digest(&registry, "c", "v1"), None, "nothing was forwarded");
    store.fail_writes.store(false, Ordering::SeqCst);
    // Nothing was reserved either: another digest may take the free tag.
    assert_eq!(a.variant("b").put_manifest(addr, "c", "v1", "").status, 201);
    assert_eq!(upstream_digest(&registry, "c", "v1"), Some(a.variant("b").digest()));
}

#[test]
fn an_unusable_data_dir_at_start_fails_closed() {
    let registry = Registry::start();
    let a = Image::random(302, 100);
    a.push_blobs(registry.addr, "u", "");
    assert_eq!(a.put_manifest(registry.addr, "u", "v1", "").status, 201);

    // A data dir that is a regular file, and a store whose config file is garbage.
    let not_a_dir = tempfile::NamedTempFile::new().unwrap();
    let corrupt = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(corrupt.path().join("pins.sled")).unwrap();
    std::fs::write(corrupt.path().join("pins.sled/conf"), b"\x93\x11garbage\x00\xff").unwrap();
    std::fs::write(corrupt.path().join("pins.sled/db"), vec![0xA5u8; 4096]).unwrap();

    for dir in [not_a_dir.path(), corrupt.path()] {
        let t = Tagpin::start(&registry.url(), dir, &[]);
        assert!(
            t.logs().iter().any(|l| l.contains("pin store unavailable")),
            "{:?}",
            t.logs()
        );
        let ready = request(t.addr, "GET", "/readyz", &[], b"");
        assert_eq!(
            (ready.status, ready.json()["store"].as_str()),
            (503, Some("unavailable"))
        );
        let r = a.variant("x").put_manifest(t.addr, "u", "v2", "");
        assert_eq!((r.status, r.oci_code().as_str()), (503, "UNAVAILABLE"));
        assert_eq!(upstream_digest(&registry, "u", "v2"), None);
        assert_read_fails_closed(t.addr, "u", "v1", &a);
    }
}

/// With the store unreadable, a read of the protected tag `repo:tag` is a 503 that says
/// why, and a read of `img` (its manifest) by digest is served.
fn assert_read_fails_closed(addr: SocketAddr, repo: &str, tag: &str, img: &Image) {
    let read = |reference: &str| {
        request(
            addr,
            "GET",
            &format!("/v2/{repo}/manifests/{reference}"),
            &[("Accept", image::ACCEPT_ALL)],
            b"",
        )
    };
    let by_tag = read(tag);
    assert_eq!(
        (by_tag.status, by_tag.oci_code().as_str()),
        (503, "UNAVAILABLE"),
        "{}",
        by_tag.text()
    );
    assert!(
        by_tag.text().contains("reads by digest still work"),
        "{}",
        by_tag.text()
    );
    let by_digest = read(&img.digest());
    assert_eq!(by_digest.status, 200, "{}", by_digest.text());
    assert!(by_digest.body == img.manifest, "the manifest read by digest");
}
