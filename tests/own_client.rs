//! tagpin's own client to the upstream: its connection pool against an upstream that
//! answers requests nobody sent, its own credentials against token realms it must not
//! use, and the bounds on what it reads for itself (seed, drift).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::fake::{Action, FakeUpstream};
use common::{request, Registry, RegistryOptions, Tagpin};

/// The header only the unsolicited responses carry.
const LATE: &str = "x-late-response";

/// An upstream that answers every request in full and then, 30 ms later, writes a second,
/// unsolicited response on the same connection (`LATE: yes`, body `late`).
fn late_responder() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            std::thread::spawn(move || answer_twice(conn));
        }
    });
    addr
}

fn answer_twice(conn: TcpStream) {
    let out = Arc::new(Mutex::new(conn.try_clone().unwrap()));
    let mut reader = BufReader::new(conn);
    loop {
        let mut line = String::new();
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line == "\r\n" {
                break;
            }
        }
        let ok = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";
        if out.lock().unwrap().write_all(ok).is_err() {
            return;
        }
        let out = Arc::clone(&out);
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            let late = format!("HTTP/1.1 200 OK\r\n{LATE}: yes\r\nContent-Length: 4\r\n\r\nlate");
            let _ = out.lock().unwrap().write_all(late.as_bytes());
        });
    }
}

#[test]
fn a_late_unsolicited_upstream_response_never_reaches_a_client() {
    let upstream = late_responder();
    let data = tempfile::tempdir().unwrap();
    let tagpin = Tagpin::start(&format!("http://{upstream}"), data.path(), &[]);
    let (late, answered) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let one = || {
        let r = request(tagpin.addr, "GET", "/v2/", &[], b"");
        if r.header(LATE).is_some() || r.body == b"late" {
            late.fetch_add(1, Ordering::Relaxed);
        } else if r.status == 200 && r.body == b"{}" {
            answered.fetch_add(1, Ordering::Relaxed);
        }
    };
    // One exchange, then let its unsolicited follow-up reach the idle connection. (One
    // that arrives while the connection carries the next request is that request's
    // answer to any HTTP/1.1 client: SECURITY.md.)
    one();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && !tagpin.logs().iter().any(|l| l.contains("no request was waiting for")) {
        std::thread::sleep(Duration::from_millis(20));
    }
    // Then 300 requests one after another and 300 from four clients at once, each
    // bounded by the harness's own timeouts.
    for _ in 0..300 {
        one();
    }
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| (0..75).for_each(|_| one()));
        }
    });
    let (late, answered) = (late.into_inner(), answered.into_inner());
    assert_eq!(late, 0, "clients received the upstream's unsolicited response");
    assert_eq!(answered, 601, "every request got its own answer");
}

const ADMIN_TOKEN: &str = "own-client-admin-token-0123456789";
const CREDENTIALS: &str = "seeder:seeder-pass-REALMCHECK";

/// A token realm on 127.0.0.2 that answers every request with a token and records the
/// `Authorization` each one carried.
struct Realm {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Realm {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.2:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&seen);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut authorization = String::new();
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" {
                    if let Some((k, v)) = line.split_once(':') {
                        if k.eq_ignore_ascii_case("authorization") {
                            authorization = v.trim().to_owned();
                        }
                    }
                    line.clear();
                }
                sink.lock().unwrap().push(authorization);
                let body = r#"{"token":"realm-token","expires_in":60}"#;
                let _ = conn.write_all(
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                    .as_bytes(),
                );
            }
        });
        Self { addr, seen }
    }

    fn url(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    fn requests(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

/// A tagpin with the admin API and tagpin's own upstream credentials.
fn seeder(
    upstream: &str,
    files: &std::path::Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> (Tagpin, tempfile::TempDir) {
    let tokens = files.join("admin-tokens");
    std::fs::write(&tokens, format!("ops:{ADMIN_TOKEN}\n")).unwrap();
    let creds = files.join("upstream-credentials");
    std::fs::write(&creds, format!("{CREDENTIALS}\n")).unwrap();
    let mut args = vec![
        "--admin-listen",
        "127.0.0.1:0",
        "--admin-token-file",
        tokens.to_str().unwrap(),
        "--upstream-credentials-file",
        creds.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let data = tempfile::tempdir().unwrap();
    (Tagpin::start_env(upstream, data.path(), &args, env), data)
}

/// `POST /admin/v1/seed`: its whole answer, status and text.
fn seed(tagpin: &Tagpin) -> (u16, String) {
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    let r = request(
        tagpin.admin_addr(),
        "POST",
        "/admin/v1/seed",
        &[("Authorization", &bearer)],
        b"",
    );
    (r.status, r.text())
}

/// A throwaway CA and a certificate for 127.0.0.1 signed by it, made with openssl.
fn certificates(dir: &std::path::Path) -> (String, String, String) {
    let openssl = common::procs::require_binary("openssl", "openssl");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(&openssl)
            .current_dir(dir)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    std::fs::write(
        dir.join("leaf.ext"),
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        "2",
    ];
    run(&[
        &["req", "-x509"][..],
        &ec,
        &["-keyout", "ca.key", "-out", "ca.pem", "-subj", "/CN=own-client CA"],
    ]
    .concat());
    run(&[
        &["req"][..],
        &ec[..5],
        &["-keyout", "leaf.key", "-out", "leaf.csr", "-subj", "/CN=127.0.0.1"],
    ]
    .concat());
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
    let path = |f: &str| dir.join(f).display().to_string();
    (path("ca.pem"), path("leaf.pem"), path("leaf.key"))
}

#[test]
fn tagpins_credentials_never_go_to_an_http_realm_behind_an_https_upstream() {
    let realm = Realm::start();
    let files = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certificates(files.path());
    let registry = Registry::start_with(RegistryOptions {
        tls: Some((cert.into(), key.into())),
        token_auth: Some(common::procs::TokenAuth {
            realm: realm.url(),
            service: "own-client".into(),
            issuer: "own-client".into(),
            root_cert_bundle: ca.clone().into(),
        }),
        ..Default::default()
    });
    assert!(registry.url().starts_with("https://"));
    let (tagpin, _data) = seeder(&registry.url(), files.path(), &["--upstream-ca", &ca], &[]);

    let (status, text) = seed(&tagpin);
    assert_eq!(realm.requests(), Vec::<String>::new(), "the realm was sent requests");
    assert_ne!(status, 200, "{text}");
    assert!(
        text.contains(&format!("tagpin will not fetch a token from {}", realm.url())),
        "{text}"
    );
    assert!(text.contains("plain http behind an https upstream"), "{text}");
}

#[test]
fn a_token_realm_outside_the_allowlist_gets_no_request_and_one_on_it_does() {
    let realm = Realm::start();
    let challenge = format!(r#"Bearer realm="{}",service="own-client""#, realm.url());
    let upstream = FakeUpstream::start(move |_, _| Action::with_header(401, "WWW-Authenticate", &challenge));
    let files = tempfile::tempdir().unwrap();

    // Set through the environment, which an older tagpin ignores rather than refuses.
    let elsewhere = [(
        "TAGPIN_TOKEN_REALMS",
        "http://127.0.0.1:1/token,https://auth.example.com/",
    )];
    let (tagpin, _data) = seeder(&upstream.url(), files.path(), &[], &elsewhere);
    let (status, text) = seed(&tagpin);
    assert_eq!(realm.requests(), Vec::<String>::new(), "the realm was sent requests");
    assert_ne!(status, 200, "{text}");
    assert!(
        text.contains(&format!("tagpin will not fetch a token from {}", realm.url())),
        "{text}"
    );
    assert!(text.contains("it is not under any of token_realms"), "{text}");
    drop(tagpin);

    let listed = format!("http://{}/", realm.addr);
    let (tagpin, _data) = seeder(&upstream.url(), files.path(), &["--token-realm", &listed], &[]);
    seed(&tagpin);
    let seen = realm.requests();
    assert!(!seen.is_empty(), "the listed realm was asked for a token");
    assert!(
        seen.iter()
            .all(|a| *a == common::basic("seeder", "seeder-pass-REALMCHECK")),
        "{seen:?}"
    );
}

/// Modes of [`hostile`], switched while tagpin runs.
const NORMAL: usize = 0;
const TOKEN_STALLS: usize = 1;
const CATALOG_TRICKLES: usize = 2;
const CATALOG_HUGE: usize = 3;
const CATALOG_LOOPS: usize = 4;
/// Every request challenged for a token; the first token request stalls after its
/// headers, later ones answer a token with `expires_in` of `u64::MAX`.
const TOKEN_STALLS_THEN_NEVER_EXPIRES: usize = 5;

const DIGEST: &str = "sha256:abababababababababababababababababababababababababababababababab";

/// An upstream holding `app:1.0` in mode [`NORMAL`], misbehaving as its mode says.
fn hostile(mode: Arc<AtomicUsize>) -> FakeUpstream {
    let own: Arc<std::sync::OnceLock<String>> = Arc::new(std::sync::OnceLock::new());
    let origin = Arc::clone(&own);
    let tokens = AtomicUsize::new(0);
    let fake = FakeUpstream::start(move |method, target| {
        let mode = mode.load(Ordering::SeqCst);
        let challenge = || {
            let realm = format!("{}/token", origin.get().unwrap());
            Action::with_header(
                401,
                "WWW-Authenticate",
                &format!(r#"Bearer realm="{realm}",service="s""#),
            )
        };
        let json = |body: &str| Action::Respond {
            status: 200,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: body.as_bytes().to_vec(),
        };
        if target.starts_with("/token") {
            let first = tokens.fetch_add(1, Ordering::SeqCst) == 0;
            return if mode == TOKEN_STALLS || first {
                Action::StallBody { len: 100, sent: 0 }
            } else {
                json(&format!(r#"{{"token":"t","expires_in":{}}}"#, u64::MAX))
            };
        }
        let catalog = target.starts_with("/v2/_catalog");
        match mode {
            TOKEN_STALLS | TOKEN_STALLS_THEN_NEVER_EXPIRES => challenge(),
            CATALOG_TRICKLES if catalog => Action::Trickle {
                body: br#"{"repositories":[]}                          "#.to_vec(),
                every: Duration::from_secs(1),
            },
            CATALOG_HUGE if catalog => Action::Big { len: 256 << 20 },
            CATALOG_LOOPS if catalog => Action::Respond {
                status: 200,
                headers: vec![("Link".into(), r#"</v2/_catalog?n=100>; rel="next""#.into())],
                body: br#"{"repositories":[]}"#.to_vec(),
            },
            _ if catalog => json(r#"{"repositories":["app"]}"#),
            _ if target.starts_with("/v2/app/tags/list") => json(r#"{"name":"app","tags":["1.0"]}"#),
            _ if method == "HEAD" && target == "/v2/app/manifests/1.0" => {
                Action::with_header(200, "Docker-Content-Digest", DIGEST)
            }
            _ => Action::status(404),
        }
    });
    own.set(fake.url()).unwrap();
    fake
}

/// Whether tagpin logged `text`, waiting for it at most 10 s (a line may be written just
/// after the answer it explains).
fn logged(tagpin: &Tagpin, text: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if tagpin.logs().iter().any(|l| l.contains(text)) {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn seeds_against_a_stalled_token_and_a_trickling_huge_or_looping_catalog_end_with_errors() {
    let mode = Arc::new(AtomicUsize::new(TOKEN_STALLS));
    let upstream = hostile(Arc::clone(&mode));
    let files = tempfile::tempdir().unwrap();
    let (tagpin, _data) = seeder(
        &upstream.url(),
        files.path(),
        &["--upstream-check-timeout-ms", "2000"],
        &[],
    );

    // Each seed answers within 30 s, far beyond the 2 s check timeout that bounds each of
    // these, and far short of the 60 s the fake stalls for or a trickle takes.
    let seed = |tagpin: &Tagpin| {
        let (tx, rx) = std::sync::mpsc::channel();
        let admin = tagpin.admin_addr();
        std::thread::spawn(move || {
            let bearer = format!("Bearer {ADMIN_TOKEN}");
            let r = request(admin, "POST", "/admin/v1/seed", &[("Authorization", &bearer)], b"");
            let _ = tx.send((r.status, r.text()));
        });
        rx.recv_timeout(Duration::from_secs(30))
            .expect("the seed ends within 30 s")
    };
    // (The token's own deadline and the catalog page's, which covers it, are the same
    // length here: either may fire first.)
    let (status, text) = seed(&tagpin);
    assert!(
        matches!(status, 502 | 504),
        "a token that never arrives: {status} {text}"
    );

    mode.store(CATALOG_TRICKLES, Ordering::SeqCst);
    let (status, text) = seed(&tagpin);
    assert_eq!(status, 502, "a catalog at one byte a second: {text}");
    assert!(logged(&tagpin, "was not read in full within"));

    mode.store(CATALOG_HUGE, Ordering::SeqCst);
    let before = tagpin.rss_kib();
    let (status, text) = seed(&tagpin);
    let grown = tagpin.rss_kib().saturating_sub(before);
    assert_eq!(status, 502, "a 256 MiB catalog page: {text}");
    assert!(logged(&tagpin, "larger than the page bound of 16777216 bytes"));
    assert!(grown < 96 * 1024, "RSS grew by {grown} KiB reading one catalog page");

    mode.store(CATALOG_LOOPS, Ordering::SeqCst);
    let asked = |fake: &FakeUpstream| {
        fake.requests()
            .iter()
            .filter(|r| r.target.starts_with("/v2/_catalog"))
            .count()
    };
    let before = asked(&upstream);
    let (status, text) = seed(&tagpin);
    assert_eq!(status, 502, "a catalog whose next page is itself: {text}");
    assert!(logged(&tagpin, "does not advance"));
    assert!(
        asked(&upstream) - before <= 2,
        "{} catalog pages fetched",
        asked(&upstream) - before
    );
}

#[test]
fn drift_checks_go_on_after_a_stalled_token_and_a_token_that_never_expires() {
    let mode = Arc::new(AtomicUsize::new(NORMAL));
    let upstream = hostile(Arc::clone(&mode));
    let files = tempfile::tempdir().unwrap();
    let extra = ["--upstream-check-timeout-ms", "2000", "--drift-interval", "2s"];
    let (tagpin, _data) = seeder(&upstream.url(), files.path(), &extra, &[]);
    let (status, text) = seed(&tagpin);
    assert_eq!(status, 200, "{text}");
    assert!(text.contains(r#""adopted":1"#), "{text}");

    // From now on each round's tag check is challenged: the first round's token never
    // arrives, the second's expires in u64::MAX seconds, and rounds must keep coming.
    mode.store(TOKEN_STALLS_THEN_NEVER_EXPIRES, Ordering::SeqCst);
    let tokens = || {
        upstream
            .requests()
            .iter()
            .filter(|r| r.target.starts_with("/token"))
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while tokens() < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(tokens() >= 3, "drift stopped after {} token requests", tokens());
}
