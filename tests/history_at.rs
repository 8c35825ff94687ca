//! End-to-end: what a tag pointed to at any time. `tagpin resolve --at`, `tagpin pins list
//! --at` and the admin API's `at=` read the pins' histories, online and offline; the
//! registry port's `/v2/<name>/_tagpin/history/<tag>` shows a tag's history to clients the
//! upstream (Debian's `docker-registry` with htpasswd) lets read the repository, and to
//! no one else. History is stamped in whole seconds, so the tests wait for the clock to
//! pass an event's second before the next event (bounded), and ask about the times the
//! history itself recorded.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::admin::{AdminSecrets, CliOut};
use common::signing::{push_referrer_blobs, put, referrers_index, referrers_tag, Referrer};
use common::*;
use serde_json::Value;

const USER: &str = "alice";
const PASSWORD: &str = "wonderland-7";

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// Return once the clock is past second `t`, so the next event is stamped later.
fn after_second(t: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while now() <= t {
        assert!(Instant::now() < deadline, "the clock did not pass {t}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `2026-12-01T14:00:00Z`, written independently of tagpin's own formatting.
fn utc(secs: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

/// The same instant written with a `+02:00` offset.
fn plus_two_hours(secs: u64) -> String {
    utc(secs + 7200).replace('Z', "+02:00")
}

/// The `at` of the history entries of `pin` whose event is `event`.
fn times(pin: &Value, event: &str) -> Vec<u64> {
    common::admin::history(pin, event)
        .iter()
        .map(|e| e["at"].as_u64().unwrap())
        .collect()
}

/// A tagpin with the admin API in front of an open registry.
struct Env {
    stack: Stack,
    secrets: AdminSecrets,
    admin: SocketAddr,
}

impl Env {
    fn start() -> Self {
        let secrets = AdminSecrets::new();
        let flags = secrets.flags();
        let stack = Stack::start(&flags.iter().map(String::as_str).collect::<Vec<_>>());
        let admin = stack.tagpin.admin_addr();
        Self { stack, secrets, admin }
    }

    fn cli(&self, args: &[&str]) -> CliOut {
        self.secrets.cli(self.admin, args)
    }

    fn push(&self, repo: &str, tag: &str, image: &Image) {
        image.push_blobs(self.stack.tagpin.addr, repo, "");
        let r = image.put_manifest(self.stack.tagpin.addr, repo, tag, "");
        assert_eq!(r.status, 201, "{repo}:{tag}: {}", r.text());
        assert_eq!(upstream_digest(&self.stack.registry, repo, tag), Some(image.digest()));
    }

    fn pin(&self, reference: &str) -> Value {
        self.secrets.pin(self.admin, reference).expect("pinned")
    }

    /// `tagpin resolve REFERENCE [--at TIME]`: the line printed, or the exit status and
    /// stderr of a run that printed nothing.
    fn resolve(&self, reference: &str, at: Option<&str>) -> Result<String, (i32, String)> {
        let mut args = vec!["resolve", reference];
        if let Some(t) = at {
            args.extend(["--at", t]);
        }
        outcome(self.cli(&args))
    }

    /// `GET /admin/v1/<path>` with the admin token, as the README's curl examples send it.
    fn admin_get(&self, target: &str) -> Resp {
        let auth = format!("Bearer {}", common::admin::TOKEN);
        request(self.admin, "GET", target, &[("Authorization", &auth)], b"")
    }
}

fn outcome(out: CliOut) -> Result<String, (i32, String)> {
    match out.code {
        0 => Ok(out.stdout.trim_end().to_owned()),
        code => {
            assert!(out.stdout.is_empty(), "printed on failure: {out:?}");
            Err((code, out.stderr))
        }
    }
}

/// The pins list at `at` (`--json`), as (tag, digest, event) per line.
fn listed_at(env: &Env, at: &str) -> Vec<(String, String, String)> {
    let out = env.cli(&["pins", "list", "--at", at, "--json"]).ok();
    out.stdout
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            let s = |x: &Value| x.as_str().unwrap().to_owned();
            (s(&v["tag"]), s(&v["digest"]), s(&v["entry"]["event"]))
        })
        .collect()
}

#[test]
fn resolve_and_pins_list_answer_at_every_time_of_a_release_and_an_append() {
    let env = Env::start();
    let (a, b) = (Image::random(7001, 400), Image::random(7002, 400));
    env.push("team/app", "1.0", &a);
    let pushed = times(&env.pin("team/app:1.0"), "push")[0];

    // A release moves 1.0 to b, in a later second than the push.
    after_second(pushed);
    env.cli(&["release", "team/app:1.0", "--reason", "CVE rebuild"]).ok();
    env.push("team/app", "1.0", &b);
    let released = times(&env.pin("team/app:1.0"), "released")[0];
    assert!(released > pushed);

    // The referrers tag of a grows append-only, in a later second again.
    let payload = image::random_bytes(7003, 200);
    push_referrer_blobs(env.stack.tagpin.addr, "team/app", &payload);
    let subject = common::signing::image_descriptor(&a);
    let (r1, r2) = (
        Referrer::new(&subject, &payload, 1),
        Referrer::new(&subject, &payload, 2),
    );
    for r in [&r1, &r2] {
        assert_eq!(
            put(env.stack.tagpin.addr, "team/app", &r.digest(), &r.manifest).status,
            201
        );
    }
    let refs = referrers_tag(&a.digest());
    let one = referrers_index(std::slice::from_ref(&r1.entry));
    let two = referrers_index(&[r1.entry.clone(), r2.entry.clone()]);
    after_second(released);
    assert_eq!(put(env.stack.tagpin.addr, "team/app", &refs, &one).status, 201);
    let indexed = times(&env.pin(&format!("team/app:{refs}")), "push")[0];
    after_second(indexed);
    assert_eq!(put(env.stack.tagpin.addr, "team/app", &refs, &two).status, 201);
    let appended = times(&env.pin(&format!("team/app:{refs}")), "append")[0];
    assert!(appended > indexed && indexed > released);

    let at = |t: u64| Some(utc(t));
    let app = |digest: &str| format!("team/app@{digest}");
    // Before the first entry: exit 1, and the message says since when it is known.
    let (code, stderr) = env.resolve("team/app:1.0", at(pushed - 1).as_deref()).unwrap_err();
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains(&format!("unknown before {}", utc(pushed))), "{stderr}");
    // From the push's second on, and up to the release's, the first digest.
    assert_eq!(env.resolve("team/app:1.0", at(pushed).as_deref()), Ok(app(&a.digest())));
    assert_eq!(
        env.resolve("team/app:1.0", at(released - 1).as_deref()),
        Ok(app(&a.digest()))
    );
    // From the release on, and now, the released one; an offset names the same instant.
    assert_eq!(
        env.resolve("team/app:1.0", at(released).as_deref()),
        Ok(app(&b.digest()))
    );
    assert_eq!(
        env.resolve("team/app:1.0", Some(&plus_two_hours(released))),
        Ok(app(&b.digest()))
    );
    assert_eq!(env.resolve("team/app:1.0", None), Ok(app(&b.digest())));
    // The append-only tag: the first index until the append, the longer one after.
    let by_refs = |t: u64| env.resolve(&format!("team/app:{refs}"), at(t).as_deref());
    assert_eq!(by_refs(indexed), Ok(app(&image::sha256(&one))));
    assert_eq!(by_refs(appended - 1), Ok(app(&image::sha256(&one))));
    assert_eq!(by_refs(appended), Ok(app(&image::sha256(&two))));
    assert_eq!(by_refs(indexed - 1).unwrap_err().0, 1);

    // For a pipeline: a registry host in front, or JSON with the entry that set it.
    let host = env.stack.tagpin.host();
    let out = env
        .cli(&["resolve", "team/app:1.0", "--at", &utc(released), "--registry", &host])
        .ok();
    assert_eq!(out.stdout, format!("{host}/team/app@{}\n", b.digest()));
    let json = env
        .cli(&["resolve", "team/app:1.0", "--at", &utc(released), "--json"])
        .ok()
        .json();
    assert_eq!(json["reference"], app(&b.digest()));
    assert_eq!(json["entry"]["event"], "released");
    assert_eq!(json["entry"]["from"], a.digest());
    assert_eq!(json["first_seen"], pushed);
    // A malformed time, or a tag with no pin, at all.
    for bad in ["yesterday", "2026-12-01", "2026-12-01T14:00:00"] {
        let out = env.cli(&["resolve", "team/app:1.0", "--at", bad]);
        assert_eq!(out.code, 2, "{bad}: {out:?}");
    }
    let (code, stderr) = env.resolve("team/app:never", None).unwrap_err();
    assert_eq!((code, stderr.trim_end()), (1, "tagpin: team/app:never has no pin"));
    assert_eq!(env.resolve("team/app:never", at(released).as_deref()).unwrap_err().0, 1);

    // Every tag as it stood: the referrers tag is left out before it was first seen.
    assert_eq!(
        listed_at(&env, &utc(released - 1)),
        vec![("1.0".into(), a.digest(), "push".into())]
    );
    let mut later = listed_at(&env, &utc(appended));
    later.sort();
    assert_eq!(
        later,
        vec![
            ("1.0".into(), b.digest(), "released".into()),
            (refs.clone(), image::sha256(&two), "append".into()),
        ]
    );
    assert!(listed_at(&env, &utc(pushed - 1)).is_empty());
    let table = env.cli(&["pins", "list", "--at", &utc(released)]).ok().stdout;
    assert!(table.starts_with("REPOSITORY"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.contains("1.0") && l.contains("released") && l.contains(&utc(released))),
        "{table}"
    );

    // The admin API's equivalents, as curl sends them (the offset's `+` escaped).
    let r = env.admin_get(&format!(
        "/admin/v1/pin?repository=team/app&tag=1.0&at={}",
        plus_two_hours(released - 1).replace('+', "%2B")
    ));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["digest"], a.digest());
    assert_eq!(r.json()["entry"]["event"], "push");
    let r = env.admin_get(&format!(
        "/admin/v1/pin?repository=team/app&tag=1.0&at={}",
        utc(pushed - 1)
    ));
    assert_eq!(r.status, 404, "{}", r.text());
    assert!(r.text().contains("unknown before"), "{}", r.text());
    let r = env.admin_get(&format!("/admin/v1/pins?at={}", utc(appended)));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["pins"].as_array().unwrap().len(), 2, "{}", r.text());
    assert_eq!(env.admin_get("/admin/v1/pins?at=soon").status, 400);

    // Offline, on the store of the stopped tagpin: the same answers.
    let mut env = env;
    env.stack.tagpin.terminate();
    let offline = |t: u64| offline_resolve(env.stack.data.path(), "team/app:1.0", &utc(t));
    assert_eq!(offline(released - 1), Ok(app(&a.digest())));
    assert_eq!(offline(released), Ok(app(&b.digest())));
    assert_eq!(offline(pushed - 1).unwrap_err().0, 1);
}

/// `tagpin resolve REFERENCE --at TIME` on the store directly (the data dir, or the
/// database standing in for it under `TAGPIN_TEST_STORE=postgres`).
fn offline_resolve(data: &Path, reference: &str, at: &str) -> Result<String, (i32, String)> {
    let store: Vec<String> = match procs::store_url(data) {
        Some(url) => vec!["--database-url".into(), url],
        None => vec!["--data-dir".into(), data.display().to_string()],
    };
    let out = Command::new(env!("CARGO_BIN_EXE_tagpin"))
        .args(["resolve", reference, "--at", at])
        .args(&store)
        .env_remove("TAGPIN_ADMIN_TOKEN")
        .env_remove("TAGPIN_DATABASE_URL")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    outcome(CliOut {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// An htpasswd upstream, and tagpin in front of it with `reads = "forward"`: the history
/// endpoint is tagpin's whatever `reads` says.
struct Guarded {
    registry: Registry,
    tagpin: Tagpin,
    _data: tempfile::TempDir,
}

impl Guarded {
    fn start() -> Self {
        let registry = Registry::start_with(RegistryOptions {
            basic_auth: Some((USER.into(), PASSWORD.into())),
            ..Default::default()
        });
        let data = tempfile::tempdir().unwrap();
        let tagpin = Tagpin::start(&registry.url(), data.path(), &["--reads", "forward"]);
        Self {
            registry,
            tagpin,
            _data: data,
        }
    }

    fn push(&self, repo: &str, tag: &str, image: &Image) {
        image.push_blobs(self.tagpin.addr, repo, &alice());
        let r = image.put_manifest(self.tagpin.addr, repo, tag, &alice());
        assert_eq!(r.status, 201, "{}", r.text());
    }

    /// `GET` (or `HEAD`) the history of `repo:tag`, with `auth` or none.
    fn history(&self, method: &str, repo: &str, tag_and_query: &str, auth: Option<&str>) -> Resp {
        let headers: Vec<(&str, &str)> = auth.map(|a| vec![("Authorization", a)]).unwrap_or_default();
        request(
            self.tagpin.addr,
            method,
            &format!("/v2/{repo}/_tagpin/history/{tag_and_query}"),
            &headers,
            b"",
        )
    }
}

fn alice() -> String {
    basic(USER, PASSWORD)
}

/// What a refused client sees, less the request id: status, challenge, code and detail.
fn refusal(r: &Resp) -> (u16, Option<String>, String, Value) {
    let mut detail = r.json()["errors"][0]["detail"].clone();
    detail.as_object_mut().map(|d| d.remove("request_id"));
    (
        r.status,
        r.header("www-authenticate").map(str::to_owned),
        r.oci_code(),
        detail,
    )
}

#[test]
fn the_history_endpoint_answers_only_clients_the_upstream_lets_read_and_tells_no_one_else_which_tags_exist() {
    let g = Guarded::start();
    let (a, other) = (Image::random(7101, 300), Image::random(7102, 300));
    g.push("app", "v1", &a);

    // The upstream's own answer to an anonymous pull, for the challenge tagpin must pass on.
    let upstream = request(
        g.registry.addr,
        "HEAD",
        &format!("/v2/app/manifests/{}", a.digest()),
        &[],
        b"",
    );
    assert_eq!(upstream.status, 401);
    let challenge = upstream.header("www-authenticate").expect("a challenge").to_owned();

    let forged = basic(USER, "guessed");
    for auth in [None, Some(forged.as_str())] {
        let pinned = g.history("GET", "app", "v1", auth);
        let unknown = g.history("GET", "app", "never-pushed", auth);
        let nothing = g.history("GET", "nope", "v1", auth);
        assert_eq!(pinned.status, 401, "{auth:?}: {}", pinned.text());
        assert_eq!(pinned.header("www-authenticate"), Some(challenge.as_str()));
        assert_eq!(pinned.oci_code(), "UNAUTHORIZED");
        assert_eq!(
            refusal(&pinned),
            refusal(&unknown),
            "a pinned tag told apart from an unknown one"
        );
        assert_eq!(refusal(&nothing).0, 401);
        assert!(!pinned.text().contains(&a.digest()), "{}", pinned.text());
    }

    // A client the upstream lets read gets the history, newest first.
    let r = g.history("GET", "app", "v1", Some(&alice()));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v = r.json();
    assert_eq!((v["repository"].as_str(), v["tag"].as_str()), (Some("app"), Some("v1")));
    assert_eq!(v["digest"], a.digest());
    let history = v["history"].as_array().unwrap();
    assert_eq!(history.len(), 1, "{v}");
    assert_eq!(history[0]["event"], "push");
    assert_eq!(history[0]["digest"], a.digest());
    assert!(history[0]["previous_digest"].is_null());
    let first = history[0]["time"].as_str().unwrap().to_owned();
    let first_secs = humantime::parse_rfc3339(&first)
        .unwrap()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let head = g.history("HEAD", "app", "v1", Some(&alice()));
    assert_eq!((head.status, head.body.len()), (200, 0));

    // `?at=`: the entry in force then; before the first entry and unknown tags, a 404 that
    // says why; a malformed time, a 400.
    let r = g.history(
        "GET",
        "app",
        &format!("v1?at={}", plus_two_hours(first_secs).replace('+', "%2B")),
        Some(&alice()),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["digest"], a.digest());
    assert_eq!(r.json()["entry"]["time"], first.as_str());
    let r = g.history("GET", "app", &format!("v1?at={}", utc(first_secs - 1)), Some(&alice()));
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(r.oci_code(), "MANIFEST_UNKNOWN");
    assert_eq!(r.json()["errors"][0]["detail"]["reason"], "before_first_seen");
    assert_eq!(r.json()["errors"][0]["detail"]["first_seen"], first.as_str());
    assert!(r.text().contains(&format!("unknown before {first}")), "{}", r.text());
    let r = g.history("GET", "app", "never-pushed", Some(&alice()));
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(r.json()["errors"][0]["detail"]["reason"], "unknown_tag");
    assert_eq!(g.history("GET", "app", "v1?at=yesterday", Some(&alice())).status, 400);

    // The pinned manifest deleted at the upstream, behind tagpin's back: the repository's
    // tag list (it still holds another tag) decides, and the answers stay as they were.
    g.push("app", "other", &other);
    let gone = request(
        g.registry.addr,
        "DELETE",
        &format!("/v2/app/manifests/{}", a.digest()),
        &[("Authorization", &alice())],
        b"",
    );
    assert_eq!(gone.status, 202, "{}", gone.text());
    let by_digest = request(
        g.registry.addr,
        "HEAD",
        &format!("/v2/app/manifests/{}", a.digest()),
        &[("Authorization", &alice()), ("Accept", image::ACCEPT_ALL)],
        b"",
    );
    assert_eq!(by_digest.status, 404, "the pinned manifest is still at the upstream");
    let r = g.history("GET", "app", "v1", Some(&alice()));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["digest"], a.digest());
    let (pinned, unknown) = (
        g.history("GET", "app", "v1", None),
        g.history("GET", "app", "never-pushed", None),
    );
    assert_eq!(pinned.status, 401);
    assert_eq!(refusal(&pinned), refusal(&unknown));
}

#[test]
fn a_credential_the_upstream_accepts_but_lets_read_nothing_learns_nothing_from_the_history() {
    use common::push_only::{PushOnlyRelay, BOB, BOB_PASSWORD};
    // bob may push but not pull: the relay answers his reads 404, as registries that hide
    // private repositories do, and his `GET /v2/` 200.
    let registry = Registry::start_with(RegistryOptions {
        basic_auth: Some((USER.into(), PASSWORD.into())),
        ..Default::default()
    });
    let relay = PushOnlyRelay::start(registry.addr, &alice());
    let data = tempfile::tempdir().unwrap();
    let tagpin = Tagpin::start(&format!("http://{}", relay.addr), data.path(), &[]);
    let g = Guarded {
        registry,
        tagpin,
        _data: data,
    };
    let a = Image::random(7201, 300);
    g.push("app", "v1", &a);
    assert_eq!(g.history("GET", "app", "v1", Some(&alice())).status, 200);

    let bob = basic(BOB, BOB_PASSWORD);
    let pinned = g.history("GET", "app", "v1", Some(&bob));
    let unknown = g.history("GET", "app", "never-pushed", Some(&bob));
    assert_eq!(pinned.status, 404, "{}", pinned.text());
    assert_eq!(pinned.oci_code(), "NAME_UNKNOWN");
    assert_eq!(
        refusal(&pinned),
        refusal(&unknown),
        "a pinned tag told apart from an unknown one"
    );
    assert!(!pinned.text().contains(&a.digest()), "{}", pinned.text());
    let at = g.history("GET", "app", &format!("v1?at={}", utc(now())), Some(&bob));
    assert_eq!(refusal(&at), refusal(&pinned));
}
