//! Races found in review, kept as regressions: a release used by a push and a delete at
//! once, and an advance withdrawn on a lagging upstream's word. Each failed before its fix.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::fake::{Action, FakeUpstream};
use common::*;
use tagpin::oci::{Digest, Repository, Tag};
use tagpin::store::{Pin, PinSource, PinStore, Release, SledStore, TagState};

fn now() -> u64 {
    tagpin::store::now_secs()
}

/// One release, a push (the tag moves to Y) and a delete that arrives while the push is
/// in flight: the release lets exactly one of them through.
#[test]
fn one_release_lets_either_a_push_or_a_delete_through_never_both() {
    let x = Image::random(1, 64);
    let y = x.variant("y");
    let (xd, yd) = (x.digest(), y.digest());
    let data = tempfile::tempdir().unwrap();
    {
        let s = SledStore::open(data.path()).unwrap();
        let (r, t) = (Repository::parse("r").unwrap(), Tag::parse("t").unwrap());
        let pin = Pin::now(Digest::parse(&xd).unwrap(), PinSource::Push);
        s.pin_if_absent(&r, &[(t.clone(), pin)]).unwrap();
        let release = Release {
            id: "release-1".into(),
            cancelled: false,
            by: "ops".into(),
            reason: "fix".into(),
            created_at: now(),
            expires_at: now() + 3600,
        };
        s.update(&r, std::slice::from_ref(&t), &mut |_, records| {
            records[0].release = Some(release.clone())
        })
        .unwrap();
    }
    let deletes = Arc::new(Mutex::new(0usize));
    let d2 = Arc::clone(&deletes);
    let yd2 = yd.clone();
    let fake = FakeUpstream::start(move |method, target| match (method, target) {
        ("PUT", "/v2/r/manifests/t") => {
            std::thread::sleep(Duration::from_millis(1500));
            Action::with_header(201, "Docker-Content-Digest", &yd2)
        }
        ("DELETE", "/v2/r/manifests/t") => {
            *d2.lock().unwrap() += 1;
            Action::status(202)
        }
        _ => Action::status(404),
    });
    let tagpin = Tagpin::start(&fake.url(), data.path(), &[]);
    let addr = tagpin.addr;
    let push = std::thread::spawn(move || y.put_manifest(addr, "r", "t", ""));
    std::thread::sleep(Duration::from_millis(400));
    let del = request(addr, "DELETE", "/v2/r/manifests/t", &[], b"");
    let push = push.join().unwrap();
    assert_eq!(push.status, 201, "{}", push.text());
    drop(tagpin);
    let s = SledStore::open(data.path()).unwrap();
    let state = s
        .state(&Repository::parse("r").unwrap(), &Tag::parse("t").unwrap())
        .unwrap();
    assert!(matches!(&state, Some(TagState::Pinned(p)) if p.digest.as_str() == yd));
    assert_eq!(
        *deletes.lock().unwrap(),
        0,
        "the release was used by the push, yet the delete (status {}) was forwarded too: the tag pinned to {yd} is gone upstream",
        del.status
    );
}

fn sha(b: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{:x}", sha2::Sha256::digest(b))
}

/// A `?tag=` push of an append-only tag, answered 201 with `OCI-Tag` by an upstream whose
/// HEAD is served by a replica that lags: the upstream's own word that it applied the tag
/// wins over the stale HEAD, so the pin advances and re-pushing the old X cannot drop the
/// appended entry. (Without `OCI-Tag`, a HEAD at another digest settles that the tag was
/// not applied, as with distribution 2.8, which ignores `?tag=`: see `in_flight.rs`.)
#[test]
fn a_tag_query_push_the_upstream_confirms_advances_despite_a_stale_head() {
    let desc = |n: u32| {
        format!(
            r#"{{"mediaType":"application/vnd.dev.cosign.simplesigning.v1+json","digest":"sha256:{:064x}","size":{n},"annotations":{{"dev.cosignproject.cosign/signature":"s{n}"}}}}"#,
            n
        )
    };
    let m = |layers: &str| {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:{:064x}","size":2}},"layers":[{layers}]}}"#,
            99
        )
        .into_bytes()
    };
    let x = m(&desc(1));
    let y = m(&format!("{},{}", desc(1), desc(2)));
    let (xd, yd) = (sha(&x), sha(&y));
    let tag = format!("sha256-{}.sig", "ab".repeat(32));
    let data = tempfile::tempdir().unwrap();
    let (r, t) = (Repository::parse("r").unwrap(), Tag::parse(&tag).unwrap());
    {
        let s = SledStore::open(data.path()).unwrap();
        let pin = Pin::now(Digest::parse(&xd).unwrap(), PinSource::Push);
        s.pin_if_absent(&r, &[(t.clone(), pin)]).unwrap();
    }
    let (x2, xd2, yd2, tag2) = (x.clone(), xd.clone(), yd.clone(), tag.clone());
    let puts = Arc::new(Mutex::new(Vec::<String>::new()));
    let puts2 = Arc::clone(&puts);
    let fake = FakeUpstream::start(move |method, target| {
        if method == "GET" && target == format!("/v2/r/manifests/{xd2}") {
            return Action::Respond {
                status: 200,
                headers: vec![(
                    "Content-Type".into(),
                    "application/vnd.oci.image.manifest.v1+json".into(),
                )],
                body: x2.clone(),
            };
        }
        if method == "PUT" {
            puts2.lock().unwrap().push(target.to_owned());
            let d = if target.contains(&yd2) { &yd2 } else { &xd2 };
            let mut headers = vec![("Docker-Content-Digest".to_owned(), d.clone())];
            if target.contains("?tag=") {
                headers.push(("OCI-Tag".to_owned(), tag2.clone()));
            }
            return Action::Respond {
                status: 201,
                headers,
                body: Vec::new(),
            };
        }
        if method == "HEAD" && target == format!("/v2/r/manifests/{tag2}") {
            // A replica that has not seen the push yet.
            return Action::with_header(200, "Docker-Content-Digest", &xd2);
        }
        Action::status(404)
    });
    let tagpin = Tagpin::start(&fake.url(), data.path(), &[]);
    let ct = [("Content-Type", "application/vnd.oci.image.manifest.v1+json")];
    let resp = request(tagpin.addr, "PUT", &format!("/v2/r/manifests/{yd}?tag={tag}"), &ct, &y);
    assert_eq!(resp.status, 201, "{}", resp.text());
    // The upstream applied Y under the tag. What does tagpin hold?
    let again = request(tagpin.addr, "PUT", &format!("/v2/r/manifests/{tag}"), &ct, &x);
    drop(tagpin);
    let s = SledStore::open(data.path()).unwrap();
    let state = s.state(&r, &t).unwrap();
    // Asked of the upstream's side: no PUT of the old X under the tag after the append.
    let puts_after = puts.lock().unwrap().clone();
    assert_eq!(
        puts_after,
        [format!("/v2/r/manifests/{yd}?tag={tag}")],
        "only the append reached the upstream (re-push answered {})",
        again.status
    );
    assert!(
        again.status >= 400,
        "re-pushing the old X after the append of Y was accepted ({}) and forwarded (upstream PUTs: {:?}); the appended signature is gone; store holds {:?}",
        again.status,
        puts.lock().unwrap(),
        state.map(|s| s.digest().clone())
    );
}
