//! Operating tagpin: start-up errors, health and readiness, graceful shutdown.

mod common;

use std::process::Command;

use common::*;

fn tagpin_cmd(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tagpin")).args(args).output().unwrap()
}

#[test]
fn invalid_config_exits_64_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let bad_file = dir.path().join("bad.toml");
    std::fs::write(&bad_file, "upstream = \"http://127.0.0.1:1\"\nlisten_addr = \"x\"\n").unwrap();
    let bad_file = bad_file.to_str().unwrap().to_owned();
    let cases: Vec<Vec<&str>> = vec![
        vec!["serve"],
        vec!["serve", "--upstream", "ftp://x"],
        vec!["serve", "--upstream", "http://127.0.0.1:1", "--refuse-status", "500"],
        vec!["serve", "--upstream", "http://127.0.0.1:1", "--exclude", "a[b"],
        vec!["serve", "--config", &bad_file],
        vec!["serve", "--config", "/nonexistent/tagpin.toml"],
        vec!["serve", "--no-such-flag"],
        // Beyond tokio's semaphore limit: a panic before the fix, not a config error.
        vec![
            "serve",
            "--upstream",
            "http://127.0.0.1:1",
            "--max-connections",
            "18446744073709551615",
        ],
    ];
    for args in cases {
        let out = tagpin_cmd(&args);
        assert_eq!(
            out.status.code(),
            Some(64),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?} printed: {stderr}");
        assert!(stderr.starts_with("tagpin: "), "{stderr}");
    }
}

#[test]
fn settings_come_from_file_env_and_flags_in_that_order() {
    let upstream = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("t.toml");
    std::fs::write(
        &file,
        "upstream = \"http://127.0.0.1:1\"\nexclude = [\"from-file\"]\nrefuse_status = 403\n",
    )
    .unwrap();
    // The env var overrides the file's upstream; the flag overrides the env's status.
    let env = [
        ("TAGPIN_UPSTREAM", upstream.url()),
        ("TAGPIN_REFUSE_STATUS", "403".into()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let tagpin = Tagpin::start_env(
        "",
        dir.path(),
        &["--config", file.to_str().unwrap(), "--refuse-status", "409"],
        &env,
    );
    let _ = &tagpin;
    let img = Image::random(30, 100);
    img.push_blobs(tagpin.addr, "cfg", "");
    assert_eq!(img.put_manifest(tagpin.addr, "cfg", "from-file", "").status, 201);
    assert_eq!(
        img.variant("x")
            .put_manifest(tagpin.addr, "cfg", "from-file", "")
            .status,
        201,
        "excluded by file"
    );
    assert_eq!(img.put_manifest(tagpin.addr, "cfg", "v1", "").status, 201);
    assert_eq!(
        img.variant("x").put_manifest(tagpin.addr, "cfg", "v1", "").status,
        409,
        "flag wins over env"
    );
    // The env's upstream is the one written to, and it holds what the verdicts say.
    assert_eq!(
        upstream_digest(&upstream, "cfg", "from-file"),
        Some(img.variant("x").digest())
    );
    assert_eq!(upstream_digest(&upstream, "cfg", "v1"), Some(img.digest()));
}

#[test]
fn health_and_readiness() {
    let upstream = Registry::start();
    let data = tempfile::tempdir().unwrap();
    let tagpin = Tagpin::start(&upstream.url(), data.path(), &[]);
    let h = request(tagpin.addr, "GET", "/healthz", &[], b"");
    assert_eq!((h.status, h.text().as_str()), (200, "ok\n"));
    let r = request(tagpin.addr, "GET", "/readyz", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["store"], "ok");
    drop(upstream);
    // Readiness is cached for a second; the next answer is a new probe.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let r = request(tagpin.addr, "GET", "/readyz", &[], b"");
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["upstream"], "unavailable");
    assert_eq!(r.json()["store"], "ok");
}

/// `/readyz` needs no credentials and costs an upstream round trip and an fsync: a flood
/// of it within a second costs one probe, on whichever worker, and a second later the
/// answer is fresh again.
#[test]
fn readiness_probes_the_upstream_at_most_once_a_second() {
    use std::time::{Duration, Instant};
    let fake = common::fake::FakeUpstream::start(|_, _| common::fake::Action::status(200));
    let data = tempfile::tempdir().unwrap();
    let tagpin = Tagpin::start(&fake.url(), data.path(), &["--workers", "2"]);
    let probes = || fake.requests().iter().filter(|r| r.target == "/v2/").count();
    // A flood of 50 probes: whatever the machine's speed, they cost at most one upstream
    // probe per started second they spanned (no duration is asserted, only that count).
    let start = Instant::now();
    for _ in 0..50 {
        let r = request(tagpin.addr, "GET", "/readyz", &[], b"");
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let spanned = start.elapsed().as_secs() as usize + 1;
    assert!(
        (1..=spanned).contains(&probes()),
        "50 calls within {spanned} started second(s) cost {} probes",
        probes()
    );
    // Once the cached answer is older than a second, the next call probes again.
    let before = probes();
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(request(tagpin.addr, "GET", "/readyz", &[], b"").status, 200);
    assert_eq!(probes(), before + 1);
}

#[test]
fn sigterm_drains_and_exits_cleanly() {
    let upstream = Registry::start();
    let data = tempfile::tempdir().unwrap();
    let mut tagpin = Tagpin::start(&upstream.url(), data.path(), &[]);
    assert_eq!(request(tagpin.addr, "GET", "/v2/", &[], b"").status, 200);
    let status = tagpin.terminate();
    assert!(status.success(), "{status:?}");
    // The log reader thread reads the exited process's last lines on its own time.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !tagpin.logs().iter().any(|l| l.contains("shutting down")) {
        assert!(
            std::time::Instant::now() < deadline,
            "no shutdown line: {:?}",
            tagpin.logs()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// curl's standard output for `url`, trusting `ca`.
fn curl_with_ca(ca: &std::path::Path, args: &[&str], url: &str) -> String {
    let bin = common::procs::require_binary("curl", "curl");
    let out = Command::new(bin)
        .arg("-s")
        .arg("--cacert")
        .arg(ca)
        .args(args)
        .arg(url)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A throwaway CA and a server certificate for 127.0.0.1, made with openssl.
fn make_certs(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let openssl = common::procs::require_binary("openssl", "openssl");
    let run = |args: &[&str]| {
        let out = Command::new(&openssl).current_dir(dir).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    std::fs::write(
        dir.join("leaf.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    let mut ca = vec!["req", "-x509"];
    ca.extend_from_slice(&ec);
    ca.extend_from_slice(&[
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=tagpin test CA",
    ]);
    ca.extend_from_slice(&[
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign",
    ]);
    run(&ca);
    let mut csr = vec!["req"];
    csr.extend_from_slice(&ec);
    csr.extend_from_slice(&["-keyout", "leaf.key", "-out", "leaf.csr", "-subj", "/CN=127.0.0.1"]);
    run(&csr);
    run(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "leaf.pem",
        "-days",
        "2",
        "-extfile",
        "leaf.ext",
    ]);
    (dir.join("ca.pem"), dir.join("leaf.pem"), dir.join("leaf.key"))
}

#[test]
fn an_https_upstream_is_verified_against_the_configured_ca() {
    let certs = tempfile::tempdir().unwrap();
    let (ca, cert, key) = make_certs(certs.path());
    let registry = Registry::start_with(RegistryOptions {
        tls: Some((cert, key)),
        ..Default::default()
    });
    assert!(registry.url().starts_with("https://"));

    // Without the CA, the upstream's certificate is not trusted: fail closed.
    let data = tempfile::tempdir().unwrap();
    let untrusting = Tagpin::start(&registry.url(), data.path(), &[]);
    let r = request(untrusting.addr, "GET", "/v2/", &[], b"");
    assert_eq!((r.status, r.oci_code().as_str()), (502, "UNAVAILABLE"));
    drop(untrusting);

    let data = tempfile::tempdir().unwrap();
    let tagpin = Tagpin::start(&registry.url(), data.path(), &["--upstream-ca", ca.to_str().unwrap()]);
    let img = Image::random(40, 1000);
    img.push_blobs(tagpin.addr, "tls", "");
    assert_eq!(img.put_manifest(tagpin.addr, "tls", "v1", "").status, 201);
    assert_eq!(img.variant("x").put_manifest(tagpin.addr, "tls", "v1", "").status, 409);
    // Ask the upstream itself, over TLS, what the tag holds.
    let head = curl_with_ca(
        &ca,
        &["-I", "-H", &format!("Accept: {}", image::OCI_MANIFEST)],
        &format!("{}/v2/tls/manifests/v1", registry.url()),
    )
    .to_lowercase();
    assert!(
        head.contains(&format!("docker-content-digest: {}", img.digest())),
        "{head}"
    );
}

#[test]
fn tagpin_serves_https_to_clients_that_verify_it() {
    let certs = tempfile::tempdir().unwrap();
    let (ca, cert, key) = make_certs(certs.path());
    // containers/image reads CA roots as `*.crt` files from --dest-cert-dir.
    let cert_dir = certs.path().join("client");
    std::fs::create_dir(&cert_dir).unwrap();
    std::fs::copy(&ca, cert_dir.join("ca.crt")).unwrap();

    let registry = Registry::start();
    let data = tempfile::tempdir().unwrap();
    let tagpin = Tagpin::start(
        &registry.url(),
        data.path(),
        &["--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()],
    );
    let push = |img: &Image| {
        let layout = tempfile::tempdir().unwrap();
        img.write_layout(layout.path(), "t");
        common::skopeo(&[
            "copy",
            "--preserve-digests",
            "--dest-cert-dir",
            cert_dir.to_str().unwrap(),
            &format!("oci:{}:t", layout.path().display()),
            &format!("docker://{}/secure:1.0", tagpin.host()),
        ])
    };
    let a = Image::random(41, 1000);
    let out = push(&a);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(upstream_digest(&registry, "secure", "1.0"), Some(a.digest()));
    let out = push(&Image::random(42, 1000));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is immutable"));
    assert_eq!(upstream_digest(&registry, "secure", "1.0"), Some(a.digest()));

    // Upload locations point back at tagpin's https origin.
    let head = curl_with_ca(
        &ca,
        &["-D", "-", "-o", "/dev/null", "-X", "POST"],
        &format!("https://{}/v2/secure/blobs/uploads/", tagpin.host()),
    )
    .to_lowercase();
    assert!(
        head.contains(&format!("location: https://{}/v2/secure/blobs/uploads/", tagpin.host())),
        "{head}"
    );

    // Plain HTTP on the TLS port is a failed handshake, and tagpin keeps serving.
    let plain = try_request(tagpin.addr, "GET", "/v2/", &[], b"");
    assert!(
        plain.map_or(true, |r| r.status == 400),
        "plain HTTP must not be served on the TLS port"
    );
    let status = curl_with_ca(
        &ca,
        &["-o", "/dev/null", "-w", "%{http_code}"],
        &format!("https://{}/healthz", tagpin.host()),
    );
    assert_eq!(status, "200");
}

#[test]
fn a_second_tagpin_on_the_same_data_dir_refuses_to_start_and_the_first_keeps_serving() {
    use std::time::{Duration, Instant};
    let upstream = Registry::start();
    let data = tempfile::tempdir().unwrap();
    let first = Tagpin::start(&upstream.url(), data.path(), &[]);
    let mut second = Command::new(env!("CARGO_BIN_EXE_tagpin"))
        .args(["serve", "--listen", "127.0.0.1:0", "--upstream", &upstream.url()])
        .arg("--data-dir")
        .arg(data.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Bounded: a second tagpin that starts would otherwise serve forever.
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = second.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = second.kill();
            let _ = second.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().unwrap(), &mut stderr).unwrap();
    let status = status.unwrap_or_else(|| panic!("the second tagpin started on a data dir in use: {stderr}"));
    assert!(!status.success(), "{status:?}: {stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("tagpin: "), "{stderr}");
    assert!(
        stderr.contains(&data.path().display().to_string()) && stderr.contains("in use"),
        "{stderr}"
    );

    assert_eq!(request(first.addr, "GET", "/readyz", &[], b"").status, 200);
    let img = Image::random(31, 100);
    img.push_blobs(first.addr, "two", "");
    assert_eq!(img.put_manifest(first.addr, "two", "v1", "").status, 201);
    assert_eq!(img.variant("x").put_manifest(first.addr, "two", "v1", "").status, 409);
    assert_eq!(upstream_digest(&upstream, "two", "v1"), Some(img.digest()));
}
