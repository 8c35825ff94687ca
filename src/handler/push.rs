//! Manifest pushes that name a protected tag (distribution-spec `spec.md`, "Pushing
//! Manifests", end-7a and end-7b with `?tag=`).
//!
//! The body is read (bounded) and hashed while the client is connected. Everything after
//! that runs as a task of its own ([`App::detached`]), with the locks of every named tag
//! held throughout, so a client that goes away cannot cut the sequence short:
//! 1. for each tag, what it is held to: the store's pin or claim, or the upstream's
//!    current digest, adopted as the pin when the tag predates tagpin;
//! 2. decide; refuse the whole push if any tag would move;
//! 3. claim every free tag for the attempted digest, durably, *before* forwarding (the
//!    in-flight rule, see [`crate::store`]);
//! 4. forward, and settle the claims by the upstream's answer: a 2xx whose digest is
//!    confirmed turns them into pins before the client sees its 201; a definitive refusal
//!    withdraws them; anything else (timeout, reset, a kill) leaves them in force, so the
//!    tag stays reserved for this digest and a re-push of it completes the push.
//!
//! No interleaving lets another digest take a tag whose push was forwarded: from step 3
//! on the tag is held by a record on disk that only the upstream's answer to this digest
//! can release.

use http::request::Parts;
use http::{header, HeaderMap, Response, StatusCode};

use super::{client_origin, to_client, upstream_request};
use crate::app::App;
use crate::body::{self, Body};
use crate::error::ProxyError;
use crate::manifest;
use crate::oci::{Digest, Reference, Repository, Tag};
use crate::policy::{self, Decided, Held, Mode, Refusal, TagInput, Verdict};
use crate::store::{Claim, ClaimKind, Refused, TagState};
use crate::telemetry::{AuditAction, AuditEvent, Requester};
use crate::upstream::{Fetched, TagAtUpstream, UpstreamError};

/// What the route said about the push.
pub struct Push {
    pub repo: Repository,
    pub reference: Reference,
    pub tags: Vec<Tag>,
}

pub async fn manifest_put(
    app: &std::sync::Arc<App>,
    parts: Parts,
    body: Body,
    push: Push,
    who: &Requester,
) -> Result<Response<Body>, ProxyError> {
    let Push { repo, reference, tags } = push;
    if tags.len() > app.config.max_tags_per_push {
        return Err(ProxyError::TooManyTags {
            count: tags.len(),
            max: app.config.max_tags_per_push,
        });
    }
    // One snapshot of the policy decides the whole request, even across a reload.
    let policy = app.policy();
    let named = tags.clone();
    let protected: Vec<(Tag, Decided)> = tags
        .into_iter()
        .map(|t| {
            let d = policy.decide(&repo, &t);
            (t, d)
        })
        .filter(|(_, d)| d.mode.is_protected())
        .collect();
    if protected.is_empty() {
        // Nothing to decide: an untagged push by digest, or only mutable tags. A tagged
        // one still holds its tags' locks until the upstream answers, so a policy reload
        // that makes them protected cannot let a decided push race this write.
        if named.is_empty() {
            return super::forward(app, parts, body, who).await;
        }
        let who = who.clone();
        return app
            .detached(move |app| async move {
                let _guard = app.locks.push(&repo, &named).await;
                super::forward(&app, parts, body, &who).await
            })
            .await;
    }

    let bytes = manifest::read_limited(&parts.headers, body, &app.manifest_limits).await?;
    manifest::check_json(&bytes)?;
    let attempted = match &reference {
        Reference::Digest(claimed) => {
            let actual = Digest::compute(claimed.algorithm(), &bytes);
            if &actual != claimed {
                return Err(ProxyError::DigestMismatch {
                    claimed: claimed.clone(),
                    actual,
                });
            }
            actual
        }
        Reference::Tag(_) => Digest::sha256_of(&bytes),
    };
    let job = PushJob {
        parts,
        bytes,
        repo,
        path_tag: match reference {
            Reference::Tag(t) => Some(t),
            Reference::Digest(_) => None,
        },
        protected,
        attempted,
        who: who.clone(),
    };
    app.detached(move |app| async move { job.run(&app).await }).await
}

/// A push whose body is in hand: decided, forwarded and settled as one detached task.
struct PushJob {
    parts: Parts,
    bytes: bytes::Bytes,
    repo: Repository,
    /// The tag in the path, for a push by tag; `None` for a push by digest.
    path_tag: Option<Tag>,
    /// Each protected tag with its mode and the rule that decided it.
    protected: Vec<(Tag, Decided)>,
    attempted: Digest,
    who: Requester,
}

impl PushJob {
    async fn run(self, app: &App) -> Result<Response<Body>, ProxyError> {
        let Self {
            mut parts,
            bytes,
            repo,
            path_tag,
            protected,
            attempted,
            who,
        } = self;
        let origin = client_origin(app, &parts.headers);
        let tags: Vec<Tag> = protected.iter().map(|(t, _)| t.clone()).collect();
        let _guard = app.locks.push(&repo, &tags).await;

        let mut inputs = Vec::with_capacity(protected.len());
        for (tag, decided) in &protected {
            let held = match super::pins::held(app, &repo, tag, &parts.headers, &who, Some(&attempted)).await? {
                Ok(h) => h,
                Err(challenge) => {
                    return Ok(super::challenge::for_push(challenge, &repo, &who.request_id));
                }
            };
            let append = match (&held, decided.mode) {
                (Held::Pinned(p), Mode::AppendOnly) if p != &attempted => {
                    match pinned_manifest(app, &repo, p, &parts.headers).await? {
                        Ok(pinned) => {
                            // Parsing two manifests of up to the size limit is CPU work: off the
                            // async worker, which serves other connections meanwhile.
                            let new = bytes.clone();
                            Some(
                                tokio::task::spawn_blocking(move || policy::check_append(&pinned, &new))
                                    .await
                                    .map_err(|e| ProxyError::Internal(format!("append check failed: {e}")))?,
                            )
                        }
                        Err(challenge) => {
                            return Ok(super::challenge::for_push(challenge, &repo, &who.request_id));
                        }
                    }
                }
                _ => None,
            };
            let released = match &held {
                Held::Pinned(p) if p != &attempted => super::release::in_force(app, &repo, tag, &who).await?,
                _ => false,
            };
            inputs.push(TagInput {
                tag: tag.clone(),
                held,
                decided: *decided,
                append,
                released,
            });
        }
        let decision = policy::decide_push(&attempted, &inputs);
        if !decision.allowed() {
            for c in &decision.conflicts {
                audit(
                    app,
                    AuditAction::PushRefused,
                    &who,
                    &repo,
                    &c.tag,
                    Some(&c.pinned),
                    &attempted,
                    c.decided,
                );
                record_refusal(app, &repo, &c.tag, &who, Some(&attempted)).await;
            }
            return Err(Refusal::Move {
                repo,
                attempted,
                conflicts: decision.conflicts,
            }
            .into());
        }
        let decided_of = |tag: &Tag| protected.iter().find(|(t, _)| t == tag).map(|(_, d)| *d);

        // Pinned means pullable: what this manifest depends on is recorded before it
        // becomes pinned content (see `refs`).
        let claim_follows = decision.verdicts.iter().any(|(_, v)| {
            matches!(
                v,
                Verdict::NewPin | Verdict::Append { .. } | Verdict::AuditMove { .. } | Verdict::Released { .. }
            )
        });
        let deps =
            match super::refs::protect(app, &repo, &attempted, Some(&bytes), &parts.headers, claim_follows).await? {
                Ok(deps) => deps,
                Err(challenge) => return Ok(super::challenge::for_push(challenge, &repo, &who.request_id)),
            };
        for digest in std::iter::once(&attempted).chain(&deps) {
            let (r, d) = (repo.clone(), digest.clone());
            if app.store_call(move |s| s.delete_in_flight(&r, &d)).await? {
                for (tag, decided) in &protected {
                    audit(
                        app,
                        AuditAction::PushRefused,
                        &who,
                        &repo,
                        tag,
                        None,
                        &attempted,
                        Some(*decided),
                    );
                }
                return Err(Refusal::DeleteInFlight {
                    repo,
                    digest: digest.clone(),
                }
                .into());
            }
        }

        // The in-flight rule: claim every free tag, and every advance (append, audited
        // move), on disk before anything is forwarded.
        let new: Vec<Tag> = decision.tags(Verdict::NewPin).cloned().collect();
        let mut mine = new.clone();
        let mut lost: Vec<policy::Conflict> = Vec::new();
        if !new.is_empty() {
            let claim = Claim::now(attempted.clone(), &who.request_id);
            let (r, tags) = (repo.clone(), new.clone());
            let in_force = app.store_call(move |s| s.claim(&r, &tags, &claim)).await?;
            for (tag, state) in new.iter().zip(&in_force) {
                if !is_mine(state, &who.request_id) && state.digest() != &attempted {
                    lost.push(lost_to(tag, state, decided_of(tag)));
                }
            }
        }
        for (tag, verdict) in &decision.verdicts {
            let (from, kind) = match verdict {
                Verdict::Append { from } => (from, ClaimKind::Append),
                Verdict::AuditMove { from } => (from, ClaimKind::AuditMove),
                Verdict::Released { from } => (from, ClaimKind::Release),
                _ => continue,
            };
            let claim = Claim::of_kind(attempted.clone(), &who.request_id, kind);
            let (r, t, f) = (repo.clone(), tag.clone(), from.clone());
            let state = match app.store_call(move |s| s.claim_advance(&r, &t, &f, &claim)).await {
                Ok(state) => state,
                Err(e) => {
                    // Nothing was forwarded: take back what this push already claimed.
                    self::withdraw(app, &repo, &mine, &who).await;
                    return Err(e);
                }
            };
            mine.push(tag.clone());
            if !is_mine(&state, &who.request_id) {
                lost.push(lost_to(tag, &state, decided_of(tag)));
            }
        }
        if !lost.is_empty() {
            // Impossible while this process holds the tag locks and the data dir lock;
            // refused rather than forwarded should both ever be bypassed.
            tracing::error!(request_id = %who.request_id, repository = %repo, "tag claimed by another writer under a held lock");
            self::withdraw(app, &repo, &mine, &who).await;
            return Err(Refusal::Move {
                repo,
                attempted,
                conflicts: lost,
            }
            .into());
        }

        // Across replicas no process lock orders this push against a digest delete on
        // another replica, so both write their intent first and then look for the other's:
        // this push's claims are on disk now; a delete recorded before them is seen here,
        // and one recorded after them sees the claims (delete.rs). One of the two refuses.
        if !mine.is_empty() {
            for digest in std::iter::once(&attempted).chain(&deps) {
                let (r, d) = (repo.clone(), digest.clone());
                let in_flight = match app.store_call(move |s| s.delete_in_flight(&r, &d)).await {
                    Ok(b) => b,
                    Err(e) => {
                        self::withdraw(app, &repo, &mine, &who).await;
                        return Err(e);
                    }
                };
                if in_flight {
                    self::withdraw(app, &repo, &mine, &who).await;
                    return Err(Refusal::DeleteInFlight {
                        repo,
                        digest: digest.clone(),
                    }
                    .into());
                }
            }
        }

        // The body is forwarded as the exact bytes hashed, with a length instead of chunks.
        let authorization = parts.headers.get(header::AUTHORIZATION).cloned();
        parts.headers.insert(header::CONTENT_LENGTH, bytes.len().into());
        let req = upstream_request(app, parts, body::full(bytes), &who);
        let resp = match app.upstream.send(req).await {
            Ok(resp) => resp,
            Err(e @ UpstreamError::Connect(_)) => {
                // No connection, so nothing was sent: the push definitively did not happen.
                self::withdraw(app, &repo, &mine, &who).await;
                return Err(e.into());
            }
            Err(e) => {
                tracing::warn!(request_id = %who.request_id, repository = %repo, digest = %attempted, error = %e, "push forwarded with an unknown outcome; its tags stay reserved for its digest");
                return Err(ProxyError::OutcomeUnknown(e));
            }
        };
        let status = resp.status();
        if !status.is_success() {
            if outcome_unknown(status) {
                tracing::warn!(request_id = %who.request_id, repository = %repo, digest = %attempted, status = status.as_u16(), "the upstream answered a push with a gateway error; its tags stay reserved for its digest");
            } else {
                self::withdraw(app, &repo, &mine, &who).await;
            }
            return Ok(to_client(app, resp, origin.as_deref()));
        }

        // Accepted. Which tags now point at the attempted digest?
        let reported = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if let Some(reported) = &reported {
            if reported != attempted.as_str() {
                return Err(UpstreamError::DigestMismatch {
                    computed: attempted,
                    reported: reported.clone(),
                }
                .into());
            }
        }
        let to_settle: Vec<Tag> = decision
            .verdicts
            .iter()
            .filter(|(_, v)| {
                matches!(
                    v,
                    Verdict::NewPin
                        | Verdict::CompleteClaim
                        | Verdict::Append { .. }
                        | Verdict::AuditMove { .. }
                        | Verdict::Released { .. }
                )
            })
            .map(|(t, _)| t.clone())
            .collect();
        let oci_tags = oci_tag_headers(resp.headers());
        let mut applied = Vec::with_capacity(to_settle.len());
        let mut not_applied = Vec::new();
        let mut unconfirmed = Vec::new();
        for tag in to_settle {
            let known = match (&path_tag, &reported, &oci_tags) {
                // A 2xx to a push by tag with the digest confirmed applied that tag.
                (Some(p), Some(_), _) if p == &tag => Some(true),
                // `OCI-Tag` lists the tags a push by digest applied (spec.md, "Pushing
                // Manifests": registries that support `?tag=` answer with it): the
                // upstream's own word, for the tags it lists and those it leaves out.
                (None, Some(_), Some(listed)) => Some(listed.iter().any(|t| t == tag.as_str())),
                _ => None,
            };
            let by_path = path_tag.as_ref() == Some(&tag);
            match known {
                Some(true) => applied.push(tag),
                Some(false) => not_applied.push(tag),
                // No word from the upstream: ask it (distribution 2.8 ignores `?tag=`).
                None => match app.upstream.tag_digest(&repo, &tag, authorization.as_ref()).await {
                    Ok(TagAtUpstream::Present(d)) if d == attempted => applied.push(tag),
                    // A 2xx to a push *by tag* applied that tag: the HEAD only confirms
                    // the digest. One that disagrees (a stale cache, a replica behind)
                    // settles nothing, so the claim stays and the outcome is unknown.
                    Ok(_) | Err(_) if by_path => {
                        tracing::warn!(request_id = %who.request_id, repository = %repo, %tag, "the upstream accepted a push by tag without naming its digest, and its HEAD does not show it; the tag stays reserved for the pushed digest");
                        return Err(ProxyError::OutcomeUnknown(UpstreamError::CheckNoDigest { tag }));
                    }
                    // A `?tag=` the HEAD does not show: the upstream may have ignored it
                    // (distribution 2.8 does) or the HEAD may lag behind the push. Either
                    // way nothing is pinned (and no pin is audited), but nothing is freed
                    // either: the claim keeps the tag reserved for this digest, which a
                    // later push of it by tag completes.
                    Ok(_) | Err(_) => unconfirmed.push(tag),
                },
            }
        }
        if !not_applied.is_empty() {
            tracing::warn!(request_id = %who.request_id, repository = %repo, tags = ?not_applied.iter().map(Tag::as_str).collect::<Vec<_>>(), "the upstream's OCI-Tag answer leaves out these tags; their claims are withdrawn");
            let withdrawn: Vec<Tag> = not_applied.iter().filter(|t| mine.contains(t)).cloned().collect();
            self::withdraw(app, &repo, &withdrawn, &who).await;
        }
        if !unconfirmed.is_empty() {
            tracing::warn!(request_id = %who.request_id, repository = %repo, tags = ?unconfirmed.iter().map(Tag::as_str).collect::<Vec<_>>(), "the upstream accepted the push but does not show these tags on it; they stay reserved for the pushed digest");
        }
        if !applied.is_empty() {
            let (r, tags, d) = (repo.clone(), applied.clone(), attempted.clone());
            let in_force = app
                .store_call(move |s| s.confirm(&r, &tags, &d))
                .await
                .map_err(ProxyError::pin_not_recorded)?;
            for (tag, state) in applied.iter().zip(&in_force) {
                if state.digest() != &attempted {
                    tracing::error!(repository = %repo, %tag, held = %state.digest(), attempted = %attempted, "tag held to another digest under a held tag lock");
                }
            }
        }
        let mut warnings = Vec::new();
        for (tag, verdict) in &decision.verdicts {
            let held = inputs.iter().find(|i| &i.tag == tag).map(|i| &i.held);
            let action = match verdict {
                Verdict::NewPin if applied.contains(tag) => AuditAction::PinCreated,
                Verdict::CompleteClaim if applied.contains(tag) => match held {
                    Some(Held::Advancing { .. }) => AuditAction::PinAdvanced,
                    _ => AuditAction::PinCreated,
                },
                Verdict::Append { .. } if applied.contains(tag) => AuditAction::PinAdvanced,
                Verdict::Released { .. } if applied.contains(tag) => AuditAction::PushReleased,
                Verdict::AuditMove { from } if applied.contains(tag) => {
                    // What a refusal would have said (distribution-spec `spec.md`,
                    // "Warnings": sent only because the upstream accepted the push).
                    let would_refuse = Refusal::Move {
                        repo: repo.clone(),
                        attempted: attempted.clone(),
                        conflicts: vec![policy::Conflict {
                            tag: tag.clone(),
                            pinned: from.clone(),
                            claimed: false,
                            reason: policy::ConflictReason::Immutable,
                            decided: decided_of(tag),
                        }],
                    };
                    warnings.push(policy::warning_header(&format!("audit mode: {would_refuse}")));
                    audit(
                        app,
                        AuditAction::PushAudited,
                        &who,
                        &repo,
                        tag,
                        Some(from),
                        &attempted,
                        decided_of(tag),
                    );
                    continue;
                }
                Verdict::Identical => AuditAction::IdenticalRepush,
                _ => continue,
            };
            let pinned = match verdict {
                Verdict::Append { from } | Verdict::Released { from } => from.clone(),
                _ => attempted.clone(),
            };
            audit(
                app,
                action,
                &who,
                &repo,
                tag,
                Some(&pinned),
                &attempted,
                decided_of(tag),
            );
        }
        if !unconfirmed.is_empty() {
            let names: Vec<&str> = unconfirmed.iter().map(Tag::as_str).collect();
            warnings.push(policy::warning_header(&format!(
                "tagpin: the upstream did not confirm tag(s) {} of {repo}; they are not pinned and stay reserved for {attempted}",
                names.join(", ")
            )));
        }
        let mut out = to_client(app, resp, origin.as_deref());
        for w in warnings {
            out.headers_mut().append(header::WARNING, w);
        }
        Ok(out)
    }
}

/// The pinned manifest's bytes, fetched by digest and verified against it. Anything but
/// the bytes themselves (gone, unreadable, not matching) means tagpin cannot decide an
/// append, so the push is refused with 503.
async fn pinned_manifest(
    app: &App,
    repo: &Repository,
    pinned: &Digest,
    headers: &HeaderMap,
) -> Result<Result<bytes::Bytes, hyper::Response<hyper::body::Incoming>>, ProxyError> {
    let auth = headers.get(header::AUTHORIZATION);
    match app
        .upstream
        .manifest_by_digest(repo, pinned, auth, app.config.max_manifest_bytes)
        .await
    {
        Ok(Fetched::Found(b)) => Ok(Ok(b)),
        Ok(Fetched::Challenge(resp)) => Ok(Err(resp)),
        Ok(Fetched::Absent) => Err(ProxyError::CannotDecide(format!(
            "the pinned manifest {repo}@{pinned} is gone from the upstream"
        ))),
        Err(e) => Err(ProxyError::CannotDecide(format!(
            "cannot read the pinned manifest {repo}@{pinned}: {e}"
        ))),
    }
}

/// A conflict for a tag another writer holds.
fn lost_to(tag: &Tag, state: &TagState, decided: Option<Decided>) -> policy::Conflict {
    policy::Conflict {
        tag: tag.clone(),
        pinned: state.claim().map_or(state.digest(), |c| &c.digest).clone(),
        claimed: state.claim().is_some(),
        reason: policy::ConflictReason::InFlight,
        decided,
    }
}

/// Keep a refused attempt for the security team. Best effort: the refusal stands
/// whether or not it could be recorded (the audit event has it too).
async fn record_refusal(app: &App, repo: &Repository, tag: &Tag, who: &Requester, attempted: Option<&Digest>) {
    let refused = Refused {
        at: crate::store::now_secs(),
        attempted: attempted.cloned(),
        client: who.client.to_string(),
        user: who.user.clone(),
        user_agent: who.user_agent(),
        request_id: who.request_id.clone(),
    };
    let (r, t) = (repo.clone(), tag.clone());
    if let Err(e) = app.store_call(move |s| s.record_refusal(&r, &t, &refused)).await {
        tracing::warn!(request_id = %who.request_id, error = %e, "cannot record a refused attempt");
    }
}

/// Whether a claim in force is the one `request_id` just made.
fn is_mine(state: &TagState, request_id: &str) -> bool {
    state.claim().is_some_and(|c| c.request_id == request_id)
}

/// A gateway error (502, 503, 504) may come from a proxy in front of the upstream that
/// gave up waiting while the upstream itself goes on: it says nothing about the outcome.
pub(super) fn outcome_unknown(status: StatusCode) -> bool {
    // 503 too: proxies such as Envoy answer it when the upstream reset the connection
    // after receiving the request.
    matches!(
        status,
        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
    )
}

/// The tags an `OCI-Tag` response header lists, or `None` when the upstream sent none.
fn oci_tag_headers(headers: &HeaderMap) -> Option<Vec<String>> {
    let listed: Vec<String> = headers
        .get_all("oci-tag")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
        .collect();
    (!listed.is_empty()).then_some(listed)
}

/// Withdraw the claims this request made. A failure leaves them in force, which only
/// keeps the tags reserved (fail closed), so it is logged rather than returned.
async fn withdraw(app: &App, repo: &Repository, tags: &[Tag], who: &Requester) {
    if tags.is_empty() {
        return;
    }
    let (r, t, id) = (repo.clone(), tags.to_vec(), who.request_id.clone());
    if let Err(e) = app.store_call(move |s| s.withdraw(&r, &t, &id)).await {
        tracing::error!(request_id = %who.request_id, repository = %repo, error = %e, "cannot withdraw claims of a refused push; the tags stay reserved for its digest");
    }
}

#[allow(clippy::too_many_arguments, reason = "one audit event's fields, named at each call")]
fn audit(
    app: &App,
    action: AuditAction,
    who: &Requester,
    repo: &Repository,
    tag: &Tag,
    pinned: Option<&Digest>,
    attempted: &Digest,
    decided: Option<Decided>,
) {
    AuditEvent {
        action,
        who,
        repository: repo,
        tag: Some(tag),
        pinned,
        attempted: Some(attempted),
        decided,
    }
    .emit(&app.metrics);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oci_tag_headers_list_every_applied_tag() {
        let mut h = HeaderMap::new();
        assert_eq!(oci_tag_headers(&h), None);
        h.append("oci-tag", "v1".parse().unwrap());
        h.append("oci-tag", "v2, v3".parse().unwrap());
        assert_eq!(oci_tag_headers(&h), Some(vec!["v1".into(), "v2".into(), "v3".into()]));
    }

    #[test]
    fn only_gateway_errors_leave_the_outcome_unknown() {
        assert!(outcome_unknown(StatusCode::BAD_GATEWAY));
        assert!(outcome_unknown(StatusCode::SERVICE_UNAVAILABLE));
        assert!(outcome_unknown(StatusCode::GATEWAY_TIMEOUT));
        for s in [400, 401, 403, 404, 409, 500, 501] {
            assert!(!outcome_unknown(StatusCode::from_u16(s).unwrap()), "{s}");
        }
    }
}
