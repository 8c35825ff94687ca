//! The walks of the upstream with several requests in flight: seed and verify (paged
//! tag lists, the registry token flow, an interruption and its resume) and the adoption
//! of a large repository's tags before its first delete by digest (every tag adopted,
//! the delete decided, a client that leaves, a client that waits past the bound).
//! Decided by the admin API's counts and pins and by asking the upstream itself; the
//! interruptions are placed with a relay that holds one chosen request.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::admin::{AdminSecrets, TOKEN};
use common::gate::GateRelay;
use common::paging::{self, Links};
use common::token::TokenServer;
use common::{request, upstream_digest, Image, Registry, RegistryOptions, Tagpin};
use serde_json::Value;

/// A tagpin with the admin API in front of `upstream`, and its files.
struct Setup {
    tagpin: Tagpin,
    admin: SocketAddr,
    secrets: AdminSecrets,
    _data: tempfile::TempDir,
}

impl Setup {
    fn start(upstream: &str, extra: &[&str]) -> Self {
        let (secrets, data) = (AdminSecrets::new(), tempfile::tempdir().unwrap());
        let tagpin = Self::spawn(upstream, &secrets, &data, extra);
        let admin = tagpin.admin_addr();
        Self {
            tagpin,
            admin,
            secrets,
            _data: data,
        }
    }

    fn spawn(upstream: &str, secrets: &AdminSecrets, data: &tempfile::TempDir, extra: &[&str]) -> Tagpin {
        let mut args = secrets.flags();
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Tagpin::start(upstream, data.path(), &args)
    }

    /// Stop tagpin and start a new process on the same store: nothing cached.
    fn restart(&mut self, upstream: &str, extra: &[&str]) {
        self.tagpin.terminate();
        self.tagpin = Self::spawn(upstream, &self.secrets, &self._data, extra);
        self.admin = self.tagpin.admin_addr();
    }

    fn admin_request(&self, method: &str, target: &str) -> common::Resp {
        let bearer = format!("Bearer {TOKEN}");
        request(self.admin, method, target, &[("Authorization", &bearer)], b"")
    }

    /// A JSON-lines answer of the admin API, every line.
    fn lines(&self, method: &str, target: &str) -> Vec<Value> {
        let r = self.admin_request(method, target);
        assert_eq!(r.status, 200, "{}", r.text());
        r.text()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    /// The `done` object of a seed or verify, which must have ended with one.
    fn done(&self, method: &str, target: &str) -> (Value, Vec<Value>) {
        let lines = self.lines(method, target);
        let done = lines.last().and_then(|l| l.get("done")).cloned();
        (
            done.unwrap_or_else(|| panic!("{target} did not finish: {lines:?}")),
            lines,
        )
    }

    /// How many tags hold a pin or claim (of `repository`, when given).
    fn pins(&self, repository: Option<&str>) -> usize {
        let mut count = 0;
        let mut after = String::new();
        loop {
            let mut target = format!("/admin/v1/pins?limit=1000&after={after}");
            if let Some(r) = repository {
                target.push_str(&format!("&repository={r}"));
            }
            let page = self.admin_request("GET", &target).json();
            count += page["pins"].as_array().map_or(0, Vec::len);
            match page["next"].as_str() {
                Some(next) => after = next.to_owned(),
                None => return count,
            }
        }
    }

    /// Wait until `n` tags (of `repository`) are pinned.
    fn wait_pins(&self, repository: Option<&str>, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.pins(repository) < n {
            assert!(Instant::now() < deadline, "only {} of {n} pins", self.pins(repository));
            std::thread::sleep(Duration::from_millis(200));
        }
        assert_eq!(self.pins(repository), n);
    }

    /// Log lines of tagpin whose message is `message`.
    fn logged(&self, message: &str) -> Vec<Value> {
        self.tagpin
            .logs()
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["message"] == message)
            .collect()
    }
}

/// `repos` repositories `walk/rNN` of `tags` tags `vK` each, straight at the upstream.
fn populate(registry: SocketAddr, repos: usize, tags: usize, auth: &str) -> Image {
    let base = Image::random(4242, 128);
    for r in 0..repos {
        let repo = format!("walk/r{r:02}");
        base.push_blobs(registry, &repo, auth);
        for t in 0..tags {
            let resp = base
                .variant(&format!("{r}-{t}"))
                .put_manifest(registry, &repo, &format!("v{t}"), auth);
            assert_eq!(resp.status, 201, "{repo}:v{t}: {}", resp.text());
        }
    }
    base
}

fn count_lines(lines: &[Value], key: &str) -> usize {
    lines.iter().filter(|l| l.get(key).is_some()).count()
}

#[test]
fn seed_and_verify_with_requests_in_flight_count_every_tag_of_paged_lists() {
    let registry = Registry::start();
    let base = populate(registry.addr, 8, 4, "");
    base.variant("mutable")
        .put_manifest(registry.addr, "walk/r00", "latest", "");
    // Tag lists one tag per page, catalog pages of its own.
    let relay = paging::start(registry.addr, Links::Own);
    let s = Setup::start(&relay.url(), &["--exclude", "latest", "--walk-concurrency", "8"]);

    let (d, lines) = s.done("POST", "/admin/v1/seed?concurrency=8");
    assert_eq!(d["repositories"], 8, "{d}");
    assert_eq!(d["tags_seen"], 33, "{d}");
    assert_eq!(d["adopted"], 32, "{d}");
    assert_eq!(d["skipped_mutable"], 1, "{d}");
    assert_eq!(d["already_pinned"], 0, "{d}");
    assert!(count_lines(&lines, "progress") >= 8, "a line per repository: {lines:?}");
    let last = &lines[lines.len() - 2]["progress"];
    assert_eq!(
        last["after"], "walk/r07",
        "the last progress line covers every repository: {last}"
    );
    assert_eq!(s.pins(None), 32);
    let finished = s.logged("seed finished");
    assert_eq!(finished[0]["concurrency"], 8, "{:?}", finished[0]);
    // A second seed asks the upstream for no tag digest at all.
    let heads = |relay: &common::fake::FakeUpstream| relay.requests().iter().filter(|r| r.method == "HEAD").count();
    let before = heads(&relay);
    let (d, _) = s.done("POST", "/admin/v1/seed?concurrency=8");
    assert_eq!(
        (d["adopted"].as_u64(), d["already_pinned"].as_u64()),
        (Some(0), Some(32)),
        "{d}"
    );
    assert_eq!(heads(&relay), before, "tags pinned already cost no HEAD");

    // One tag moved behind tagpin's back.
    base.variant("moved").put_manifest(registry.addr, "walk/r05", "v2", "");
    let (d, lines) = s.done("GET", "/admin/v1/verify?format=ndjson&concurrency=8");
    assert_eq!(
        d["counts"],
        serde_json::json!({"same": 31, "moved": 1, "missing": 0, "unpinned": 0}),
        "{d}"
    );
    assert_eq!(d["repositories"], 8, "{d}");
    let mut checked: Vec<String> = lines
        .iter()
        .filter_map(|l| l.get("tag"))
        .map(|t| format!("{}:{}", t["repository"].as_str().unwrap(), t["tag"].as_str().unwrap()))
        .collect();
    checked.sort();
    checked.dedup();
    assert_eq!(checked.len(), 32, "every pin checked once");
    // The one-object answer of the same walk, and a concurrency past the server's cap.
    let whole = s.admin_request("GET", "/admin/v1/verify?concurrency=64").json();
    assert_eq!(whole["tags"].as_array().unwrap().len(), 32, "{whole}");
    assert_eq!(whole["counts"]["moved"], 1, "{whole}");
    // The CLI writes the same object as the tags come.
    let out = s.secrets.cli(s.admin, &["verify", "--json", "--concurrency", "3"]);
    assert_eq!(out.code, 1, "a moved tag exits 1: {out:?}");
    let v = out.json();
    assert_eq!(v["tags"].as_array().unwrap().len(), 32, "{v}");
    assert_eq!(v["counts"], whole["counts"]);
}

#[test]
fn token_auth_seed_and_verify_with_requests_in_flight_fetch_one_token_per_scope() {
    const USER: &str = "walker";
    const PASSWORD: &str = "walker-pass-FANOUT-7";
    let tokens = TokenServer::start(USER, PASSWORD);
    let registry = Registry::start_with(RegistryOptions {
        token_auth: Some(tokens.registry_auth()),
        ..Default::default()
    });
    let scopes: Vec<String> = (0..5).map(|r| format!("repository:walk/r{r:02}:pull,push")).collect();
    let setup_auth = tokens.bearer(&scopes.iter().map(String::as_str).collect::<Vec<_>>());
    populate(registry.addr, 5, 4, &setup_auth);
    let files = tempfile::tempdir().unwrap();
    let creds = files.path().join("credentials");
    std::fs::write(&creds, format!("{USER}:{PASSWORD}\n")).unwrap();
    let creds = creds.display().to_string();
    let flags = ["--upstream-credentials-file", &creds, "--walk-concurrency", "8"];
    let mut s = Setup::start(&registry.url(), &flags);

    let (d, _) = s.done("POST", "/admin/v1/seed");
    assert_eq!(
        (d["repositories"].as_u64(), d["adopted"].as_u64()),
        (Some(5), Some(20)),
        "{d}"
    );
    let fetched = |tokens: &TokenServer| tokens.served.lock().unwrap().scopes.len();
    assert_eq!(fetched(&tokens), 6, "the catalog's token and one per repository");

    // A fresh process, no token cached, checks each repository's pins (eight HEADs at
    // once) before listing its tags: they share one token per scope.
    s.restart(&registry.url(), &flags);
    let (d, _) = s.done("GET", "/admin/v1/verify?format=ndjson");
    assert_eq!(d["counts"]["same"], 20, "{d}");
    assert_eq!(d["counts"]["unpinned"], 0, "{d}");
    let served = tokens.served.lock().unwrap();
    assert_eq!(served.refused, 0);
    assert_eq!(
        served.scopes.len(),
        12,
        "six more tokens, one per scope: {:?}",
        served.scopes
    );
}

/// The tagpin CLI of this build, with the admin API of `s`.
fn cli(s: &Setup, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tagpin"));
    c.args(args)
        .arg("--admin-url")
        .arg(format!("http://{}", s.admin))
        .arg("--admin-token-file")
        .arg(s.secrets.token_file())
        .env_remove("TAGPIN_ADMIN_TOKEN")
        .env_remove("TAGPIN_ADMIN_URL")
        .stdin(Stdio::null());
    c
}

/// `--after R` out of a resume hint.
fn resume_point(stderr: &str) -> String {
    let rest = stderr
        .split("--after ")
        .nth(1)
        .unwrap_or_else(|| panic!("no --after to resume with in: {stderr}"));
    rest.split_whitespace().next().unwrap().to_owned()
}

/// `walk/rNN` → NN.
fn index(repo: &str) -> usize {
    repo.trim_start_matches("walk/r").parse().unwrap()
}

#[test]
fn an_interrupted_seed_resumes_from_the_repository_it_printed() {
    let registry = Registry::start();
    populate(registry.addr, 12, 3, "");
    let relay = GateRelay::start(registry.addr);
    let s = Setup::start(&relay.url(), &[]);
    // The first tag check of walk/r06 waits at the relay: every repository before it
    // can finish, the resume point cannot pass it.
    let gate = relay.hold("HEAD /v2/walk/r06/manifests/");
    let child = cli(&s, &["seed", "--concurrency", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    gate.wait_caught(Duration::from_secs(60));
    // Everything else is pinned once the walk has nothing left but the held check.
    s.wait_pins(None, 35);
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--concurrency 2"), "{stderr}");
    let after = resume_point(&stderr);
    assert!(
        index(&after) <= 5,
        "the resume point passed the unfinished walk/r06: {after}"
    );
    gate.open();

    let lists_before = relay.count("GET /v2/walk/r00/tags/list");
    let out = s.secrets.cli(s.admin, &["seed", "--after", &after, "--json"]).ok();
    let d = &out.json();
    let left = 11 - index(&after);
    assert_eq!(d["repositories"].as_u64(), Some(left as u64), "{d}");
    assert_eq!(d["tags_seen"].as_u64(), Some(3 * left as u64), "{d}");
    let counted = d["adopted"].as_u64().unwrap() + d["already_pinned"].as_u64().unwrap();
    assert_eq!(counted, 3 * left as u64, "{d}");
    assert_eq!(s.pins(None), 36, "every tag pinned once");
    assert_eq!(
        relay.count("GET /v2/walk/r00/tags/list"),
        lists_before,
        "a finished repository is not walked again"
    );
}

/// A streamed admin answer read a JSON line at a time (chunk sizes skipped).
struct Stream(BufReader<TcpStream>);

impl Stream {
    fn open(admin: SocketAddr, target: &str) -> Self {
        let mut conn = TcpStream::connect(admin).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        write!(
            conn,
            "GET {target} HTTP/1.1\r\nHost: {admin}\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
        )
        .unwrap();
        Self(BufReader::new(conn))
    }

    fn next(&mut self) -> Option<Value> {
        loop {
            let mut line = String::new();
            if self.0.read_line(&mut line).ok()? == 0 {
                return None;
            }
            if line.starts_with('{') {
                return Some(serde_json::from_str(&line).unwrap());
            }
        }
    }
}

#[test]
fn an_interrupted_verify_resumes_from_its_last_progress_line() {
    let registry = Registry::start();
    populate(registry.addr, 12, 3, "");
    let relay = GateRelay::start(registry.addr);
    let s = Setup::start(&relay.url(), &[]);
    assert_eq!(s.done("POST", "/admin/v1/seed").0["adopted"], 36);

    let gate = relay.hold("HEAD /v2/walk/r06/manifests/");
    let mut stream = Stream::open(s.admin, "/admin/v1/verify?format=ndjson&concurrency=2");
    let after = loop {
        let line = stream.next().expect("the verify stream ended early");
        assert!(line.get("done").is_none() && line.get("error").is_none(), "{line}");
        if line["progress"]["after"] == "walk/r05" {
            break "walk/r05";
        }
    };
    drop(stream);
    gate.open();

    let (d, lines) = s.done("GET", &format!("/admin/v1/verify?format=ndjson&after={after}"));
    assert_eq!(d["counts"]["same"], 18, "{d}");
    assert_eq!(d["repositories"], 6, "{d}");
    let tags: Vec<&Value> = lines.iter().filter_map(|l| l.get("tag")).collect();
    assert_eq!(tags.len(), 18);
    assert!(
        tags.iter().all(|t| index(t["repository"].as_str().unwrap()) > 5),
        "only repositories after {after}"
    );
}

/// A repository `app` of tags that predate tagpin, straight at the upstream.
struct Large {
    /// The manifest of every tag but the last.
    most: Image,
    /// The manifest of the last tag alone.
    last: Image,
    /// A manifest pushed by digest, under no tag.
    untagged: Image,
}

/// `app` with `n` tags `t000`…: all but the last on one manifest, the last on another.
fn large_repository(registry: SocketAddr, n: usize) -> Large {
    let base = Image::random(300, 128);
    base.push_blobs(registry, "app", "");
    let last = base.variant("last");
    // Four pushers at once: setting up is not what is measured.
    std::thread::scope(|s| {
        for first in 0..4 {
            let (base, last) = (&base, &last);
            s.spawn(move || {
                for t in (first..n).step_by(4) {
                    let img = if t + 1 == n { last } else { base };
                    let r = img.put_manifest(registry, "app", &format!("t{t:03}"), "");
                    assert_eq!(r.status, 201, "{}", r.text());
                }
            });
        }
    });
    let untagged = base.variant("untagged");
    let r = untagged.put_manifest(registry, "app", &untagged.digest(), "");
    assert_eq!(r.status, 201, "{}", r.text());
    Large {
        most: base,
        last,
        untagged,
    }
}

fn delete(tagpin: &Tagpin, repo: &str, digest: &str) -> common::Resp {
    request(
        tagpin.addr,
        "DELETE",
        &format!("/v2/{repo}/manifests/{digest}"),
        &[],
        b"",
    )
}

#[test]
fn a_first_digest_delete_adopts_every_tag_of_a_large_repository_and_decides() {
    let registry = Registry::start();
    let app = large_repository(registry.addr, 300);
    let s = Setup::start(&registry.url(), &["--walk-concurrency", "8"]);

    let r = delete(&s.tagpin, "app", &app.untagged.digest());
    assert_eq!(r.status, 202, "nothing holds it: {}", r.text());
    assert_eq!(s.pins(Some("app")), 300, "every tag adopted before the decision");
    let r = delete(&s.tagpin, "app", &app.last.digest());
    assert_eq!(r.status, 409, "t299 holds it: {}", r.text());
    assert_eq!(r.oci_code(), "DENIED");
    assert!(r.text().contains("t299"), "{}", r.text());
    assert_eq!(upstream_digest(&registry, "app", "t299"), Some(app.last.digest()));
    assert_eq!(upstream_digest(&registry, "app", "t000"), Some(app.most.digest()));
    let adopted = s.logged("adopted the tags of a repository before a delete by digest");
    assert_eq!(
        adopted.len(),
        1,
        "the second delete checks nothing upstream: {adopted:?}"
    );
    assert_eq!(adopted[0]["listed"], 300, "{:?}", adopted[0]);
    assert_eq!(adopted[0]["checked_upstream"], 300, "{:?}", adopted[0]);
    assert_eq!(adopted[0]["concurrency"], 8, "{:?}", adopted[0]);
}

#[test]
fn the_adoption_before_a_digest_delete_reads_the_tag_list_a_page_at_a_time() {
    let registry = Registry::start();
    let base = populate(registry.addr, 1, 12, "");
    let relay = paging::start(registry.addr, Links::Own);
    let s = Setup::start(&relay.url(), &[]);
    let r = delete(&s.tagpin, "walk/r00", &base.variant("0-3").digest());
    assert_eq!(r.status, 409, "walk/r00:v3 holds it: {}", r.text());
    assert_eq!(s.pins(Some("walk/r00")), 12);
    let pages = relay
        .requests()
        .iter()
        .filter(|r| r.target.starts_with("/v2/walk/r00/tags/list"))
        .count();
    assert_eq!(pages, 12, "one tag a page");
}

#[test]
fn a_client_that_leaves_mid_adoption_leaves_it_running_and_nothing_is_deleted() {
    let registry = Registry::start();
    let app = large_repository(registry.addr, 300);
    let relay = GateRelay::start(registry.addr);
    let s = Setup::start(&relay.url(), &[]);
    let gate = relay.hold("HEAD /v2/app/manifests/t150");

    let mut conn = TcpStream::connect(s.tagpin.addr).unwrap();
    let target = format!("/v2/app/manifests/{}", app.last.digest());
    write!(conn, "DELETE {target} HTTP/1.1\r\nHost: {}\r\n\r\n", s.tagpin.addr).unwrap();
    gate.wait_caught(Duration::from_secs(60));
    drop(conn);
    gate.open();
    // The adoption goes on without its client, to every tag.
    s.wait_pins(Some("app"), 300);
    assert_eq!(upstream_digest(&registry, "app", "t299"), Some(app.last.digest()));
    let r = delete(&s.tagpin, "app", &app.last.digest());
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(upstream_digest(&registry, "app", "t299"), Some(app.last.digest()));
}

#[test]
fn a_delete_that_outwaits_the_adoption_bound_gets_503_and_the_adoption_goes_on() {
    let registry = Registry::start();
    let app = large_repository(registry.addr, 40);
    let relay = GateRelay::start(registry.addr);
    let s = Setup::start(&relay.url(), &["--adoption-wait-timeout-ms", "300"]);
    let gate = relay.hold("HEAD /v2/app/manifests/t020");

    let r = delete(&s.tagpin, "app", &app.last.digest());
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.oci_code(), "UNAVAILABLE");
    assert_eq!(r.header("retry-after"), Some("1"));
    let detail = &r.json()["errors"][0]["detail"];
    assert_eq!(detail["reason"], "adoption_running", "{detail}");
    assert_eq!(detail["repository"], "app", "{detail}");
    // The adoption goes on after the answer: it reaches the held check, and past it.
    gate.wait_caught(Duration::from_secs(60));
    gate.open();
    s.wait_pins(Some("app"), 40);
    assert_eq!(upstream_digest(&registry, "app", "t039"), Some(app.last.digest()));
    // Retried as Retry-After says, it is decided once the adoption (and the recording of
    // what the pinned manifests reference) is done.
    let deadline = Instant::now() + Duration::from_secs(60);
    let r = loop {
        let r = delete(&s.tagpin, "app", &app.last.digest());
        if r.status != 503 || Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(r.status, 409, "decided once the adoption is done: {}", r.text());
    assert_eq!(upstream_digest(&registry, "app", "t039"), Some(app.last.digest()));
}
