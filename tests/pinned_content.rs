//! Pinned means pullable: what a pinned tag's manifest depends on (an index's child
//! manifests, and the config and layers of every manifest under it) cannot be deleted
//! through tagpin, while content no pin depends on can. Judged by asking the upstream.

mod common;

use common::*;

fn exists(registry: &Registry, repo: &str, kind: &str, digest: &str) -> bool {
    let r = request(
        registry.addr,
        "HEAD",
        &format!("/v2/{repo}/{kind}/{digest}"),
        &[("Accept", image::ACCEPT_ALL)],
        b"",
    );
    match r.status {
        200 => true,
        404 => false,
        s => panic!("HEAD {kind}/{digest}: {s}"),
    }
}

fn delete(addr: std::net::SocketAddr, repo: &str, kind: &str, digest: &str) -> Resp {
    request(addr, "DELETE", &format!("/v2/{repo}/{kind}/{digest}"), &[], b"")
}

#[test]
fn the_children_and_blobs_of_a_pinned_index_cannot_be_deleted() {
    let Stack {
        registry,
        tagpin,
        data: _data,
    } = Stack::start(&[]);
    let index = Index::new(800, 512);
    for img in &index.images {
        img.push_blobs(tagpin.addr, "multi", "");
        assert_eq!(img.put_manifest(tagpin.addr, "multi", &img.digest(), "").status, 201);
    }
    let r = request(
        tagpin.addr,
        "PUT",
        "/v2/multi/manifests/1.0",
        &[("Content-Type", image::OCI_INDEX)],
        &index.index,
    );
    assert_eq!(r.status, 201, "{}", r.text());

    let child = &index.images[1];
    let r = delete(tagpin.addr, "multi", "manifests", &child.digest());
    assert_eq!((r.status, r.oci_code().as_str()), (409, "DENIED"), "{}", r.text());
    let detail = &r.json()["errors"][0]["detail"];
    assert_eq!(detail["reason"], "referenced_by_pin");
    assert_eq!(detail["pinned_manifests"][0], index.digest());
    assert!(exists(&registry, "multi", "manifests", &child.digest()));
    for blob in [&child.layer, &child.config] {
        let digest = image::sha256(blob);
        let r = delete(tagpin.addr, "multi", "blobs", &digest);
        assert_eq!(r.status, 409, "{}", r.text());
        assert_eq!(r.json()["errors"][0]["detail"]["kind"], "blob");
        assert!(exists(&registry, "multi", "blobs", &digest));
    }
    // The release still pulls in full through tagpin.
    let pulled = request(
        tagpin.addr,
        "GET",
        &format!("/v2/multi/blobs/{}", image::sha256(&child.layer)),
        &[],
        b"",
    );
    assert_eq!((pulled.status, pulled.body.len()), (200, child.layer.len()));

    // Content no pin depends on is deleted as usual.
    let loose = Image::random(801, 300);
    loose.push_blobs(tagpin.addr, "multi", "");
    let digest = image::sha256(&loose.layer);
    assert_eq!(delete(tagpin.addr, "multi", "blobs", &digest).status, 202);
    assert!(!exists(&registry, "multi", "blobs", &digest));
}

#[test]
fn the_blobs_of_a_tag_that_predates_tagpin_cannot_be_deleted() {
    let Stack {
        registry,
        tagpin,
        data: _data,
    } = Stack::start(&[]);
    // Pushed straight to the upstream: tagpin has never seen this tag.
    let img = Image::random(802, 400);
    img.push_blobs(registry.addr, "old", "");
    assert_eq!(img.put_manifest(registry.addr, "old", "v1", "").status, 201);

    let digest = image::sha256(&img.layer);
    let r = delete(tagpin.addr, "old", "blobs", &digest);
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(r.json()["errors"][0]["detail"]["pinned_manifests"][0], img.digest());
    assert!(exists(&registry, "old", "blobs", &digest));
    tagpin.wait_for_audit(|e| e["action"] == "pin_adopted" && e["tag"] == "v1");
    tagpin.wait_for_audit(|e| e["action"] == "delete_refused" && e["attempted_digest"] == digest);
}

#[test]
fn a_manifest_pushed_through_tagpin_keeps_its_layers() {
    let Stack {
        registry,
        tagpin,
        data: _data,
    } = Stack::start(&[]);
    let img = Image::random(803, 400);
    img.push_blobs(tagpin.addr, "keep", "");
    assert_eq!(img.put_manifest(tagpin.addr, "keep", "v1", "").status, 201);
    for blob in [&img.layer, &img.config] {
        let digest = image::sha256(blob);
        assert_eq!(delete(tagpin.addr, "keep", "blobs", &digest).status, 409);
        assert!(exists(&registry, "keep", "blobs", &digest));
    }
    // Excluded (mutable) tags pin nothing, so their content stays deletable.
    let Stack {
        registry: r2,
        tagpin: t2,
        data: _d2,
    } = Stack::start(&["--exclude", "*"]);
    img.push_blobs(t2.addr, "keep", "");
    assert_eq!(img.put_manifest(t2.addr, "keep", "v1", "").status, 201);
    let digest = image::sha256(&img.layer);
    assert_eq!(delete(t2.addr, "keep", "blobs", &digest).status, 202);
    assert!(!exists(&r2, "keep", "blobs", &digest));
}
