//! Moving an instance from sled to PostgreSQL as README describes it: `tagpin export
//! --data-dir`, `tagpin import --database-url`, then replicas on the database enforce
//! every pin of the sled store (claims in flight included), judged at the upstream.

mod common;

use std::process::Command;

use common::postgres;
use common::*;

fn tagpin_cli(args: &[&str], stdin: Option<&[u8]>) -> (i32, String, String) {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_tagpin"))
        .args(args)
        .env_remove("TAGPIN_DATABASE_URL")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run tagpin");
    if let Some(bytes) = stdin {
        child.stdin.take().unwrap().write_all(bytes).unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_sled_store_exported_and_imported_into_postgres_is_enforced_by_replicas() {
    let registry = Registry::start();
    let data = tempfile::tempdir().unwrap();
    let (a, b) = (Image::random(1100, 200), Image::random(1101, 200));
    {
        let sled = Tagpin::start_on_data_dir(&registry.url(), data.path(), &[]);
        for (img, tag) in [(&a, "1.0"), (&b, "2.0")] {
            img.push_blobs(sled.addr, "moving/app", "");
            assert_eq!(img.put_manifest(sled.addr, "moving/app", tag, "").status, 201);
        }
    }
    let dir = data.path().to_str().unwrap();
    let (code, export, err) = tagpin_cli(&["export", "--data-dir", dir], None);
    assert_eq!(code, 0, "{err}");
    assert_eq!(export.lines().count(), 2, "{export}");

    let db = postgres::fresh_database("moved");
    let url = postgres::shared().url(&db);
    let (code, out, err) = tagpin_cli(&["import", "--database-url", &url, "--json"], Some(export.as_bytes()));
    assert_eq!(code, 0, "{out} {err}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["imported"],
        2,
        "{out}"
    );
    // Importing again changes nothing; the export taken from the database matches.
    let (code, out, _) = tagpin_cli(&["import", "--database-url", &url, "--json"], Some(export.as_bytes()));
    assert_eq!(
        (
            code,
            serde_json::from_str::<serde_json::Value>(&out).unwrap()["unchanged"].as_u64()
        ),
        (0, Some(2))
    );
    let (code, again, err) = tagpin_cli(&["export", "--database-url", &url], None);
    assert_eq!(code, 0, "{err}");
    assert_eq!(again, export, "the database holds exactly what the sled store held");

    let replicas: Vec<Tagpin> = (0..2)
        .map(|_| Tagpin::start_on_database(&registry.url(), &url, &[]))
        .collect();
    let c = a.variant("c");
    c.push_blobs(replicas[0].addr, "moving/app", "");
    for (i, r) in replicas.iter().enumerate() {
        for (tag, pinned) in [("1.0", a.digest()), ("2.0", b.digest())] {
            let resp = c.put_manifest(r.addr, "moving/app", tag, "");
            assert_eq!(resp.status, 409, "replica {i}, {tag}: {}", resp.text());
            assert_eq!(resp.json()["errors"][0]["detail"]["pinned_digest"], pinned);
            assert_eq!(upstream_digest(&registry, "moving/app", tag), Some(pinned));
        }
        assert_eq!(
            a.put_manifest(r.addr, "moving/app", "1.0", "").status,
            201,
            "identical re-push"
        );
    }
    // A digest the sled store pinned stays undeletable through the replicas.
    let del = request(
        replicas[1].addr,
        "DELETE",
        &format!("/v2/moving/app/manifests/{}", b.digest()),
        &[],
        b"",
    );
    assert_eq!(del.status, 409, "{}", del.text());
}
