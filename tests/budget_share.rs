//! One client address may hold only its share of the manifest memory budget: stalled
//! anonymous bodies from one address must not keep another client's real push out.

mod common;

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};

use common::http::request_from;
use common::*;

const KIB: usize = 1024;

/// 256 KiB manifests at most; a 2 MiB budget: 256 KiB kept for bodies up to 64 KiB,
/// 1.75 MiB for all. The per-client share is left at its default (a quarter, 512 KiB).
/// The stalled bodies are cut only after two minutes, well past the test.
const FLAGS: &[&str] = &[
    "--max-manifest-bytes",
    "262144",
    "--manifest-memory-budget-bytes",
    "2097152",
    "--manifest-body-timeout-ms",
    "120000",
    "--body-idle-timeout-ms",
    "120000",
];

/// A manifest PUT from 127.0.0.1 that declares `declared` bytes, sends a few and stalls.
fn stall(addr: SocketAddr, tag: &str, declared: usize) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    let head = format!(
        "PUT /v2/share/manifests/{tag} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {}\r\nContent-Length: {declared}\r\n\r\n{{\"schemaVersion\"",
        image::OCI_MANIFEST
    );
    s.write_all(head.as_bytes()).unwrap();
    s
}

#[test]
fn stalled_anonymous_bodies_from_one_address_leave_room_for_another_clients_push() {
    let (user, pass) = ("alice", "s3cret");
    let registry = Registry::start_with(RegistryOptions {
        basic_auth: Some((user.into(), pass.into())),
        ..RegistryOptions::default()
    });
    let data = tempfile::tempdir().unwrap();
    let tagpin = Tagpin::start(&registry.url(), data.path(), FLAGS);
    let auth = basic(user, pass);
    let img = Image::random(1601, 3000);
    img.push_blobs(tagpin.addr, "share", &auth);

    // Eight bodies declaring 256 KiB: enough for the whole shared part of the budget.
    let mut stalled: Vec<TcpStream> = (0..8)
        .map(|i| stall(tagpin.addr, &format!("big-{i}"), 256 * KIB))
        .collect();
    // Then 64 KiB ones, two at a time, until the memory is seen held: a complete small
    // push from the same address gets a 503. (Small bodies take the small reserve and
    // whatever the large ones left.)
    let probe = Image::random(1602, 100);
    let mut refused = None;
    for round in 0..20 {
        for j in 0..2 {
            stalled.push(stall(tagpin.addr, &format!("small-{round}-{j}"), 64 * KIB));
        }
        let r = request(
            tagpin.addr,
            "PUT",
            &format!("/v2/share/manifests/probe-{round}"),
            &[("Content-Type", image::OCI_MANIFEST)],
            &probe.manifest,
        );
        if r.status == 503 {
            refused = Some(r);
            break;
        }
    }
    let refused = refused.expect("the stalled bodies never held the memory of their address");

    // An authenticated push from another address lands beside them.
    let other = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    let r = request_from(
        other,
        tagpin.addr,
        "PUT",
        "/v2/share/manifests/v1",
        &[("Content-Type", image::OCI_MANIFEST), ("Authorization", &auth)],
        &img.manifest,
    );
    assert_eq!(
        r.status,
        201,
        "push from 127.0.0.2 beside the stalled bodies: {}",
        r.text()
    );
    assert_eq!(upstream_digest(&registry, "share", "v1"), Some(img.digest()));

    // The stalled address was refused for its share, and says so.
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert_eq!(refused.oci_code(), "UNAVAILABLE");
    let message = refused.json()["errors"][0]["message"].as_str().unwrap_or("").to_owned();
    assert!(message.contains("this client address"), "{message}");
    let metrics = request_from(other, tagpin.addr, "GET", "/metrics", &[], b"").text();
    let share_refusals = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tagpin_manifest_memory_refusals_total{reason=\"client_share\"} "))
        .and_then(|n| n.parse::<u64>().ok());
    assert!(share_refusals.is_some_and(|n| n >= 1), "{metrics}");
    drop(stalled);
}
