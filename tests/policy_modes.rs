//! End-to-end: per-repository policy rules and the append-only and audit modes, through
//! tagpin to a real distribution 2.8, with rules from a `--config` file, SIGHUP reloads,
//! cosign-shaped signature manifests and referrers-tag indexes built by the tests. Every
//! "did the tag move" is decided by asking the upstream directly.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Barrier;
use std::time::Duration;

use serde_json::{json, Value};

use common::fake::{Action, FakeUpstream};
use common::signing::*;
use common::watch::WatchRelay;
use common::*;

/// A `--config` file in a temp dir of its own, rewritten in place for reloads.
struct ConfigFile {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl ConfigFile {
    fn new(text: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tagpin.toml");
        std::fs::write(&path, text).unwrap();
        Self { _dir: dir, path }
    }

    fn rewrite(&self, text: &str) {
        std::fs::write(&self.path, text).unwrap();
    }

    fn arg(&self) -> &str {
        self.path.to_str().unwrap()
    }
}

/// An upstream, a tagpin in front of it (directly or through `upstream_url`) reading its
/// rules from a config file, and tagpin's data dir.
struct Env {
    registry: Registry,
    tagpin: Tagpin,
    config: ConfigFile,
    _data: tempfile::TempDir,
}

impl Env {
    fn start(config: &str) -> Self {
        let registry = Registry::start();
        let url = registry.url();
        Self::start_via(registry, &url, config)
    }

    fn start_via(registry: Registry, upstream_url: &str, config: &str) -> Self {
        let config = ConfigFile::new(config);
        let data = tempfile::tempdir().unwrap();
        let tagpin = Tagpin::start(upstream_url, data.path(), &["--config", config.arg()]);
        Self {
            registry,
            tagpin,
            config,
            _data: data,
        }
    }

    /// Rewrite the config file, send SIGHUP and wait for the reload's audit event
    /// (`expect`), one logged after the signal.
    fn reload(&self, text: &str, expect: &str) -> Value {
        let seen = self.tagpin.audit_events().len();
        self.config.rewrite(text);
        sighup(&self.tagpin);
        for _ in 0..500 {
            if let Some(e) = self
                .tagpin
                .audit_events()
                .into_iter()
                .skip(seen)
                .find(|e| e["action"] == expect)
            {
                return e;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("no {expect} after SIGHUP:\n{}", self.tagpin.logs().join("\n"));
    }
}

fn sighup(tagpin: &Tagpin) {
    let status = Command::new("kill")
        .args(["-HUP", &tagpin.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -HUP failed");
}

/// The error of a 409 `DENIED` refusal whose `detail.reason` is `reason`.
fn refused(r: &Resp, reason: &str) -> Value {
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(r.oci_code(), "DENIED", "{}", r.text());
    let error = r.json()["errors"][0].clone();
    assert_eq!(error["detail"]["reason"], reason, "{}", r.text());
    error
}

fn created(r: &Resp, what: &str) {
    assert_eq!(r.status, 201, "{what}: {}", r.text());
}

/// A new image, its blobs pushed through tagpin.
fn image(tagpin: &Tagpin, repo: &str, seed: u64) -> Image {
    let img = Image::random(seed, 1_000);
    img.push_blobs(tagpin.addr, repo, "");
    img
}

const RULES: &str = r#"
[[rules]]
tags = ["latest"]
mode = "mutable"

[[rules]]
repositories = ["sandbox/**"]
mode = "mutable"

[[rules]]
repositories = ["prod/**"]
mode = "immutable"
"#;

#[test]
fn rules_from_the_config_file_decide_each_repository_and_tag_first_match_wins() {
    let env = Env::start(RULES);
    // (repository, tag, moves, rule that decides a refusal)
    let cases = [
        ("sandbox/app", "1.0", true, ""),
        ("sandbox/team/app", "1.0", true, ""),
        ("prod/app", "1.0", false, "rule 2"),
        // `latest` comes first, so it is mutable in prod too.
        ("prod/app", "latest", true, ""),
        // `sandbox/**` is below sandbox/, not sandbox itself: no rule matches.
        ("sandbox", "1.0", false, "default"),
    ];
    for (seed, (repo, tag, moves, rule)) in (10..).zip(cases) {
        let first = image(&env.tagpin, repo, seed);
        created(&first.put_manifest(env.tagpin.addr, repo, tag, ""), repo);
        let moved = first.variant("moved");
        let r = moved.put_manifest(env.tagpin.addr, repo, tag, "");
        let held = upstream_digest(&env.registry, repo, tag);
        if moves {
            created(&r, &format!("{repo}:{tag} is mutable"));
            assert_eq!(held, Some(moved.digest()), "{repo}:{tag}");
        } else {
            let e = refused(&r, "tag_immutable");
            assert_eq!(e["detail"]["mode"], "immutable", "{repo}:{tag}");
            assert_eq!(e["detail"]["rule"], rule, "{repo}:{tag}");
            assert_eq!(held, Some(first.digest()), "{repo}:{tag} moved at the upstream");
        }
    }
}

/// The signed image, its signature tag, and signatures 1, 2 and 3 with their blobs pushed.
struct Signed {
    repo: &'static str,
    tag: String,
    image: Image,
    sigs: Vec<Signature>,
}

fn signed(stack: &Stack) -> Signed {
    let repo = "signed/app";
    let image = image(&stack.tagpin, repo, 20);
    created(
        &image.put_manifest(stack.tagpin.addr, repo, "v1", ""),
        "the signed image",
    );
    let sigs: Vec<Signature> = (1..=3).map(|n| Signature::new(&image.digest(), n)).collect();
    Signed {
        repo,
        tag: signature_tag(&image.digest()),
        image,
        sigs,
    }
}

/// Push the config of a signature manifest over `layers` and return the manifest's bytes.
fn signature_bytes(stack: &Stack, s: &Signed, layers: &[Value], edit: impl FnOnce(&mut Value)) -> Vec<u8> {
    let (config, mut manifest) = signature_manifest(layers);
    push_signature_blobs(stack.tagpin.addr, s.repo, &config, &s.sigs.iter().collect::<Vec<_>>());
    edit(&mut manifest);
    to_bytes(&manifest)
}

/// A change made to a manifest after it is built.
type Edit = Box<dyn FnOnce(&mut Value)>;

#[test]
fn a_signature_tag_takes_added_signatures_and_refuses_dropped_rewritten_or_retyped_ones() {
    // No config: the built-in rule makes `sha256-*` tags append-only.
    let stack = Stack::start(&[]);
    let s = signed(&stack);
    let [one, two, three] = [0, 1, 2].map(|i| s.sigs[i].layer());
    let mut pinned = None::<String>;
    for layers in [
        vec![one.clone()],
        vec![one.clone(), two.clone()],
        vec![one.clone(), two.clone(), three.clone()],
    ] {
        let bytes = signature_bytes(&stack, &s, &layers, |_| {});
        let digest = image::sha256(&bytes);
        created(
            &put(stack.tagpin.addr, s.repo, &s.tag, &bytes),
            &format!("{} signature(s)", layers.len()),
        );
        assert_eq!(upstream_digest(&stack.registry, s.repo, &s.tag), Some(digest.clone()));
        if let Some(from) = &pinned {
            let e = stack
                .tagpin
                .wait_for_audit(|e| e["action"] == "pin_advanced" && e["attempted_digest"] == digest);
            assert_eq!(
                e["pinned_digest"],
                from.as_str(),
                "the advance names the digest it left"
            );
            assert_eq!(
                (e["tag"].as_str(), e["mode"].as_str()),
                (Some(s.tag.as_str()), Some("append-only"))
            );
        }
        pinned = Some(digest);
    }
    let pinned = pinned.unwrap();

    let subject = image_descriptor(&s.image);
    // (what the push does, its layers, an edit of the manifest, what the message must say)
    let cases: Vec<(&str, Vec<Value>, Edit, String)> = vec![
        (
            "drops signature 2",
            vec![one.clone(), three.clone()],
            Box::new(|_| {}),
            format!("remove or alter 1 pinned layers entry (first: {})", s.sigs[1].digest()),
        ),
        (
            "rewrites signature 1's annotation",
            vec![s.sigs[0].forged_layer(), two.clone(), three.clone()],
            Box::new(|_| {}),
            format!("remove or alter 1 pinned layers entry (first: {})", s.sigs[0].digest()),
        ),
        (
            "changes the mediaType",
            vec![one.clone(), two.clone(), three.clone()],
            Box::new(|m| m["mediaType"] = json!(DOCKER_MANIFEST)),
            "mediaType".into(),
        ),
        (
            "adds a subject",
            vec![one.clone(), two.clone(), three.clone()],
            Box::new(move |m| m["subject"] = subject),
            "subject".into(),
        ),
    ];
    for (what, layers, edit, says) in cases {
        let bytes = signature_bytes(&stack, &s, &layers, edit);
        let attempted = image::sha256(&bytes);
        let e = refused(&put(stack.tagpin.addr, s.repo, &s.tag, &bytes), "not_append_only");
        let message = e["message"].as_str().unwrap();
        assert!(
            message.contains("append-only") && message.contains(&says),
            "{what}: {message}"
        );
        assert_eq!(e["detail"]["pinned_digest"], pinned, "{what}");
        assert_eq!(e["detail"]["attempted_digest"], attempted, "{what}");
        assert_eq!(e["detail"]["mode"], "append-only", "{what}");
        assert_eq!(
            upstream_digest(&stack.registry, s.repo, &s.tag),
            Some(pinned.clone()),
            "{what}: the upstream moved"
        );
        // The upstream itself takes the manifest: it is tagpin that keeps the tag.
        created(&put(stack.registry.addr, s.repo, &attempted, &bytes), what);
    }
}

/// A repository with a pushed subject image and the referrers tag of its digest.
struct Referrers {
    repo: &'static str,
    tag: String,
    subject: Value,
    payload: Vec<u8>,
}

impl Referrers {
    fn new(stack: &Stack) -> Self {
        let repo = "ref/app";
        let img = image(&stack.tagpin, repo, 30);
        created(&img.put_manifest(stack.tagpin.addr, repo, "v1", ""), "the subject");
        let payload = image::random_bytes(31, 300);
        push_referrer_blobs(stack.tagpin.addr, repo, &payload);
        Self {
            repo,
            tag: referrers_tag(&img.digest()),
            subject: image_descriptor(&img),
            payload,
        }
    }

    /// Referrer `n`, its manifest pushed by digest (the upstream verifies that every
    /// manifest an index lists exists).
    fn attach(&self, stack: &Stack, n: u64) -> Referrer {
        let r = Referrer::new(&self.subject, &self.payload, n);
        created(
            &put(stack.tagpin.addr, self.repo, &r.digest(), &r.manifest),
            "a referrer",
        );
        r
    }

    fn upstream_index(&self, stack: &Stack) -> Vec<u8> {
        upstream_manifest(&stack.registry, self.repo, &self.tag).expect("the upstream holds the referrers tag")
    }
}

#[test]
fn a_referrers_index_keeps_both_referrers_attached_one_after_the_other() {
    let stack = Stack::start(&[]);
    let refs = Referrers::new(&stack);
    let (a, b) = (refs.attach(&stack, 1), refs.attach(&stack, 2));
    let first = referrers_index(std::slice::from_ref(&a.entry));
    created(
        &put(stack.tagpin.addr, refs.repo, &refs.tag, &first),
        "the first referrer",
    );
    let both = referrers_index(&[a.entry.clone(), b.entry.clone()]);
    created(
        &put(stack.tagpin.addr, refs.repo, &refs.tag, &both),
        "the second referrer",
    );

    let held = refs.upstream_index(&stack);
    assert_eq!(image::sha256(&held), image::sha256(&both));
    let entries = index_entries(&held);
    for r in [&a, &b] {
        assert!(entries.contains(&r.entry), "{} is gone: {entries:?}", r.digest());
    }
    // Detaching the first is not an append.
    let e = refused(
        &put(
            stack.tagpin.addr,
            refs.repo,
            &refs.tag,
            &referrers_index(std::slice::from_ref(&b.entry)),
        ),
        "not_append_only",
    );
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains(&format!("manifests entry (first: {})", a.digest())),
        "{e}"
    );
    assert_eq!(image::sha256(&refs.upstream_index(&stack)), image::sha256(&both));
}

const RACERS: u64 = 16;
const ROUNDS: u64 = 10;

#[test]
fn racing_appends_to_a_referrers_index_admit_one_per_round_and_lose_no_accepted_entry() {
    let stack = Stack::start(&[]);
    let refs = Referrers::new(&stack);
    let seed = refs.attach(&stack, 0);
    created(
        &put(
            stack.tagpin.addr,
            refs.repo,
            &refs.tag,
            &referrers_index(std::slice::from_ref(&seed.entry)),
        ),
        "the first referrer",
    );
    let mut accepted = vec![seed.entry];
    for round in 0..ROUNDS {
        // Every racer extends what the upstream holds now: the previous round's winner.
        let base = index_entries(&refs.upstream_index(&stack));
        let variants: Vec<(Referrer, Vec<u8>)> = (0..RACERS)
            .map(|i| {
                let r = refs.attach(&stack, 100 + round * RACERS + i);
                let mut entries = base.clone();
                // New entries may go anywhere.
                entries.insert((i as usize) % (entries.len() + 1), r.entry.clone());
                let index = referrers_index(&entries);
                (r, index)
            })
            .collect();
        let barrier = Barrier::new(variants.len());
        let answers: Vec<Resp> = std::thread::scope(|scope| {
            let pushes: Vec<_> = variants
                .iter()
                .map(|(_, index)| {
                    let barrier = &barrier;
                    let (refs, addr) = (&refs, stack.tagpin.addr);
                    scope.spawn(move || {
                        barrier.wait();
                        put(addr, refs.repo, &refs.tag, index)
                    })
                })
                .collect();
            pushes.into_iter().map(|p| p.join().unwrap()).collect()
        });
        let winners: Vec<usize> = (0..answers.len()).filter(|&i| answers[i].status == 201).collect();
        assert_eq!(
            winners.len(),
            1,
            "round {round}: {:?}",
            answers.iter().map(|a| a.status).collect::<Vec<_>>()
        );
        for (i, a) in answers.iter().enumerate().filter(|(i, _)| *i != winners[0]) {
            assert_eq!(a.status, 409, "round {round} racer {i}: {}", a.text());
            let reason = a.json()["errors"][0]["detail"]["reason"].clone();
            assert!(
                reason == "not_append_only" || reason == "tag_in_flight",
                "round {round} racer {i}: {}",
                a.text()
            );
        }
        let (winner, index) = &variants[winners[0]];
        accepted.push(winner.entry.clone());
        let held = refs.upstream_index(&stack);
        assert_eq!(image::sha256(&held), image::sha256(index), "round {round}");
        let entries = index_entries(&held);
        for entry in &accepted {
            assert!(entries.contains(entry), "round {round}: accepted {entry} is gone");
        }
        assert_eq!(entries.len(), accepted.len(), "round {round}: a refused entry landed");
    }
}

const AUDIT: &str = "[[rules]]\nrepositories = [\"legacy/**\"]\nmode = \"audit\"\n";
const LEGACY_IMMUTABLE: &str = "[[rules]]\nrepositories = [\"legacy/**\"]\nmode = \"immutable\"\n";

#[test]
fn audit_mode_forwards_warns_and_follows_the_tag_until_a_reload_makes_it_immutable() {
    let env = Env::start(AUDIT);
    let (repo, addr) = ("legacy/app", env.tagpin.addr);
    let a = image(&env.tagpin, repo, 40);
    created(&a.put_manifest(addr, repo, "v1", ""), "the first push");
    let mut pinned = a.digest();
    for note in ["b", "c"] {
        let next = a.variant(note);
        let r = next.put_manifest(addr, repo, "v1", "");
        created(&r, &format!("audited move to {note}"));
        assert_eq!(upstream_digest(&env.registry, repo, "v1"), Some(next.digest()));
        let warning = r.header("warning").expect("an audited move carries a Warning");
        assert!(warning.starts_with("299 - \""), "{warning}");
        assert!(warning.contains("legacy/app:v1"), "{warning}");
        assert!(
            warning.contains(&format!("pinned to {pinned}")),
            "the Warning names the pin the tag followed: {warning}"
        );
        let e = env
            .tagpin
            .wait_for_audit(|e| e["action"] == "push_audited" && e["attempted_digest"] == next.digest());
        assert_eq!(
            (e["pinned_digest"].as_str(), e["mode"].as_str()),
            (Some(pinned.as_str()), Some("audit"))
        );
        pinned = next.digest();
    }

    env.reload(LEGACY_IMMUTABLE, "policy_reloaded");
    let d = a.variant("d");
    let e = refused(&d.put_manifest(addr, repo, "v1", ""), "tag_immutable");
    assert_eq!(
        e["detail"]["pinned_digest"], pinned,
        "the pin is the last audited digest"
    );
    assert_eq!(upstream_digest(&env.registry, repo, "v1"), Some(pinned));
}

const LATEST_MUTABLE: &str = "[[rules]]\ntags = [\"latest\"]\nmode = \"mutable\"\n";

#[test]
fn an_invalid_reload_keeps_the_old_policy_and_counts_the_failure() {
    let env = Env::start(LATEST_MUTABLE);
    let (repo, addr) = ("cfg/app", env.tagpin.addr);
    let a = image(&env.tagpin, repo, 50);
    let b = a.variant("b");
    created(&a.put_manifest(addr, repo, "v1", ""), "v1");
    refused(&b.put_manifest(addr, repo, "v1", ""), "tag_immutable");

    // Valid but for one rule: applied in part, it would make every tag mutable.
    let invalid = "[[rules]]\ntags = [\"*\"]\nmode = \"mutable\"\n\n[[rules]]\ntags = [\"x\"]\nmode = \"immutible\"\n";
    let e = env.reload(invalid, "policy_reload_failed");
    assert!(e["error"].as_str().unwrap_or("").contains("rules[1].mode"), "{e}");

    refused(&b.put_manifest(addr, repo, "v1", ""), "tag_immutable");
    assert_eq!(upstream_digest(&env.registry, repo, "v1"), Some(a.digest()));
    created(&a.put_manifest(addr, repo, "latest", ""), "latest");
    created(&b.put_manifest(addr, repo, "latest", ""), "latest is still mutable");
    let metrics = request(addr, "GET", "/metrics", &[], b"").text();
    assert!(
        metrics.lines().any(|l| l == "tagpin_policy_reload_failures_total 1"),
        "{metrics}"
    );
}

#[test]
fn a_push_in_flight_during_a_reload_completes_and_its_pin_is_enforced() {
    let registry = Registry::start();
    let relay = WatchRelay::start(registry.addr);
    let env = Env::start_via(registry, &relay.url(), LATEST_MUTABLE);
    let (repo, addr) = ("busy/app", env.tagpin.addr);
    let base = Image::random(60, 256);
    base.push_blobs(env.registry.addr, repo, "");
    // About 3.3 MB of layer references: distribution takes a while to verify it.
    let slow = base.heavy(25_000, "slow");
    let before = relay.forwarded();
    let pusher = std::thread::spawn({
        let slow = slow.clone();
        move || slow.put_manifest(addr, repo, "v1", "")
    });
    relay.wait_forwarded(before, slow.manifest.len(), Duration::from_secs(30));
    let reloaded = format!("[[rules]]\nrepositories = [\"sandbox/**\"]\nmode = \"mutable\"\n\n{LATEST_MUTABLE}");
    env.reload(&reloaded, "policy_reloaded");
    assert_eq!(
        upstream_digest(&env.registry, repo, "v1"),
        None,
        "the upstream finished before the reload; the window was not open"
    );

    created(&pusher.join().unwrap(), "the push in flight");
    assert_eq!(upstream_digest(&env.registry, repo, "v1"), Some(slow.digest()));
    let e = refused(
        &base.variant("other").put_manifest(addr, repo, "v1", ""),
        "tag_immutable",
    );
    assert_eq!(e["detail"]["pinned_digest"], slow.digest());
    // The new policy is in force.
    let s = image(&env.tagpin, "sandbox/app", 61);
    created(&s.put_manifest(addr, "sandbox/app", "v1", ""), "sandbox");
    created(
        &s.variant("moved").put_manifest(addr, "sandbox/app", "v1", ""),
        "sandbox is mutable now",
    );
}

#[test]
fn deleting_an_append_only_tag_is_refused_and_never_forwarded() {
    let registry = Registry::start();
    let relay = WatchRelay::start(registry.addr);
    let data = tempfile::tempdir().unwrap();
    let tagpin = Tagpin::start(&relay.url(), data.path(), &[]);
    let stack_like = Stack { registry, tagpin, data };
    let s = signed(&stack_like);
    let bytes = signature_bytes(&stack_like, &s, &[s.sigs[0].layer()], |_| {});
    created(&put(stack_like.tagpin.addr, s.repo, &s.tag, &bytes), "the signature");

    let target = format!("/v2/{}/manifests/{}", s.repo, s.tag);
    let e = refused(
        &request(stack_like.tagpin.addr, "DELETE", &target, &[], b""),
        "tag_append_only",
    );
    assert!(e["message"].as_str().unwrap().contains("append-only"), "{e}");
    assert_eq!(e["detail"]["pinned_digest"], image::sha256(&bytes));
    assert!(
        !relay.requests().iter().any(|l| l.starts_with("DELETE ")),
        "a DELETE reached the upstream: {:?}",
        relay.requests()
    );
    assert_eq!(
        upstream_digest(&stack_like.registry, s.repo, &s.tag),
        Some(image::sha256(&bytes))
    );
    stack_like
        .tagpin
        .wait_for_audit(|e| e["action"] == "delete_refused" && e["tag"] == s.tag.as_str());
}

#[test]
fn an_audited_tag_delete_is_forwarded_to_the_real_upstream() {
    let registry = Registry::start();
    let relay = WatchRelay::start(registry.addr);
    let env = Env::start_via(registry, &relay.url(), AUDIT);
    let (repo, addr) = ("legacy/app", env.tagpin.addr);
    let a = image(&env.tagpin, repo, 70);
    created(&a.put_manifest(addr, repo, "v1", ""), "v1");
    let r = request(addr, "DELETE", "/v2/legacy/app/manifests/v1", &[], b"");
    relay.wait_request("DELETE /v2/legacy/app/manifests/v1", Duration::from_secs(10));
    // Distribution 2.8 deletes manifests by digest only: its own refusal comes back, not
    // tagpin's 409.
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.oci_code(), "DIGEST_INVALID", "{}", r.text());
    assert_eq!(r.header("warning"), None, "nothing was deleted, so nothing to warn of");
}

#[test]
fn an_audited_digest_delete_is_forwarded_with_a_warning_and_the_pin_stays() {
    let env = Env::start(AUDIT);
    let (repo, addr) = ("legacy/app", env.tagpin.addr);
    let a = image(&env.tagpin, repo, 75);
    created(&a.put_manifest(addr, repo, "v1", ""), "v1");
    let r = request(
        addr,
        "DELETE",
        &format!("/v2/{repo}/manifests/{}", a.digest()),
        &[],
        b"",
    );
    assert_eq!(r.status, 202, "{}", r.text());
    let warning = r.header("warning").expect("an audited delete carries a Warning");
    assert!(
        warning.starts_with("299 - \"") && warning.contains(&a.digest()),
        "{warning}"
    );
    env.tagpin
        .wait_for_audit(|e| e["action"] == "delete_audited" && e["tag"] == "v1" && e["pinned_digest"] == a.digest());
    assert_eq!(
        upstream_digest(&env.registry, repo, "v1"),
        None,
        "the delete was forwarded"
    );
    // The pin stays: another digest under the tag is an audited move from it.
    let r = a.variant("b").put_manifest(addr, repo, "v1", "");
    created(&r, "after the audited delete");
    let warning = r.header("warning").expect("still audited");
    assert!(warning.contains(&format!("pinned to {}", a.digest())), "{warning}");
}

#[test]
fn a_signature_tag_that_predates_tagpin_is_adopted_and_still_takes_appends() {
    let stack = Stack::start(&[]);
    let s = signed(&stack);
    let first = signature_bytes(&stack, &s, &[s.sigs[0].layer()], |_| {});
    // Signed before tagpin was deployed: pushed to the upstream directly.
    created(&put(stack.registry.addr, s.repo, &s.tag, &first), "the old signature");
    let both = signature_bytes(&stack, &s, &[s.sigs[0].layer(), s.sigs[1].layer()], |_| {});
    created(&put(stack.tagpin.addr, s.repo, &s.tag, &both), "a second signature");
    assert_eq!(
        upstream_digest(&stack.registry, s.repo, &s.tag),
        Some(image::sha256(&both))
    );
    stack
        .tagpin
        .wait_for_audit(|e| e["action"] == "pin_adopted" && e["pinned_digest"] == image::sha256(&first));
    let e = refused(&put(stack.tagpin.addr, s.repo, &s.tag, &first), "not_append_only");
    assert_eq!(e["detail"]["pinned_digest"], image::sha256(&both));
    assert_eq!(
        upstream_digest(&stack.registry, s.repo, &s.tag),
        Some(image::sha256(&both))
    );
}

#[test]
fn an_audited_tag_delete_the_upstream_accepts_carries_a_warning_and_an_event() {
    // An upstream that deletes tags (distribution-spec end-9 by tag), as distribution
    // 2.8 does not: 404 until pushed, then it takes the push and the delete.
    let a = Image::random(80, 100);
    let b = a.variant("b");
    let puts = std::sync::Arc::new(AtomicUsize::new(0));
    let digests = [a.digest(), b.digest()];
    let fake = FakeUpstream::start({
        let puts = std::sync::Arc::clone(&puts);
        move |method, target| match method {
            "PUT" if target.contains("/manifests/") => {
                let n = puts.fetch_add(1, Ordering::SeqCst).min(1);
                Action::with_header(201, "Docker-Content-Digest", &digests[n])
            }
            "DELETE" => Action::status(202),
            _ => Action::status(404),
        }
    });
    let data = tempfile::tempdir().unwrap();
    let config = ConfigFile::new(AUDIT);
    let tagpin = Tagpin::start(&fake.url(), data.path(), &["--config", config.arg()]);
    let addr = tagpin.addr;
    created(&a.put_manifest(addr, "legacy/app", "v1", ""), "v1");

    let r = request(addr, "DELETE", "/v2/legacy/app/manifests/v1", &[], b"");
    assert_eq!(r.status, 202, "{}", r.text());
    let warning = r.header("warning").expect("an audited delete carries a Warning");
    assert!(
        warning.starts_with("299 - \"") && warning.contains("legacy/app:v1"),
        "{warning}"
    );
    let e = tagpin.wait_for_audit(|e| e["action"] == "delete_audited" && e["tag"] == "v1");
    assert_eq!(
        (e["pinned_digest"].as_str(), e["mode"].as_str()),
        (Some(a.digest().as_str()), Some("audit"))
    );
    assert!(fake.requests().iter().any(|s| s.method == "DELETE"));

    // The pin stays: the next push under the tag is an audited move from it.
    let r = b.put_manifest(addr, "legacy/app", "v1", "");
    created(&r, "after the audited delete");
    let warning = r.header("warning").expect("still audited");
    assert!(warning.contains(&format!("pinned to {}", a.digest())), "{warning}");
}

#[test]
fn a_sighup_sent_as_soon_as_tagpin_reports_listening_reloads_instead_of_killing_it() {
    let registry = Registry::start();
    let config = ConfigFile::new(LATEST_MUTABLE);
    for round in 0..40 {
        let data = tempfile::tempdir().unwrap();
        let tagpin = Tagpin::start(&registry.url(), data.path(), &["--config", config.arg()]);
        sighup(&tagpin);
        let mut reloaded = false;
        for _ in 0..500 {
            if tagpin.audit_events().iter().any(|e| e["action"] == "policy_reloaded") {
                reloaded = true;
                break;
            }
            if try_request(tagpin.addr, "GET", "/healthz", &[], b"").is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            reloaded,
            "round {round}: the SIGHUP killed tagpin:\n{}",
            tagpin.logs().join("\n")
        );
    }
}
