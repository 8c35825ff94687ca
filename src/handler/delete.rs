//! Manifest and blob deletes (distribution-spec `spec.md`, "Deleting Manifests", end-9,
//! and "Deleting Blobs", end-10).
//!
//! Deleting a protected tag is refused (immutable and append-only alike): a pin is a
//! tombstone, so even a tag that is gone at the upstream may not be deleted (or later
//! re-pointed) through tagpin. An `audit` tag's delete, and one an operator's release
//! allows, is forwarded with a record of its own ([`pinning::begin_tag_delete`]).
//!
//! Deleting by digest is refused while a protected tag of the repository is pinned or
//! claimed to that digest (unless every such tag has a release in force), or while pinned
//! content depends on it (an index's child, a config or layer blob). Tags the upstream
//! holds but tagpin has not seen are adopted first, outside any lock; then, under the
//! repository's exclusive lock, the delete is decided, recorded durably (one record per
//! request, [`crate::store::PinStore::begin_delete`]), checked once more against what
//! holds the digest now, and forwarded as a detached task. Only this request's own answer
//! settles its record; a lost answer keeps it until the in-doubt horizon, and while it
//! stands no push may pin content that needs the digest.
//!
//! The adoption is a detached task of its own ([`super::adopt`]), bounded in memory and
//! in upstream requests in flight: it goes on when the client leaves or stops waiting,
//! and nothing is deleted for a request that did not wait for it to finish.

use std::sync::Arc;

use http::request::Parts;
use http::{header, Response};

use crate::app::{App, StoreWrite};
use crate::body::Body;
use crate::error::ProxyError;
use crate::oci::{Digest, Reference, Repository, Tag};
use crate::pinning::{self, flow, Dependents, DigestDelete, Holder, Outcome, TagDelete};
use crate::policy::{warning_header, Decided, Mode, Policy, Refusal};
use crate::telemetry::{AuditAction, AuditEvent, Requester};
use crate::upstream::UpstreamError;

use super::refused::{Evidence, Refused};

pub async fn manifest_delete(
    app: &Arc<App>,
    parts: Parts,
    body: Body,
    repo: Repository,
    reference: Reference,
    who: &Requester,
) -> Result<Response<Body>, ProxyError> {
    let r = repo.clone();
    let resp = match reference {
        Reference::Tag(tag) => delete_tag(app, parts, body, repo, tag, who).await,
        Reference::Digest(digest) => delete_content(app, parts, body, repo, digest, Content::Manifest, who).await,
    }?;
    Ok(uniform(resp, &r, who))
}

/// A delete's 401 or 403 in one form, whoever gave it (`challenge::uniform`).
fn uniform(resp: Response<Body>, repo: &Repository, who: &Requester) -> Response<Body> {
    super::challenge::uniform(resp, repo, &who.request_id, super::challenge::DELETE)
}

/// `DELETE /v2/<name>/blobs/<digest>` (end-10): refused while pinned content depends on
/// the blob (a pinned manifest's config or layer), forwarded otherwise.
pub async fn blob_delete(
    app: &Arc<App>,
    parts: Parts,
    body: Body,
    repo: Repository,
    digest: Digest,
    who: &Requester,
) -> Result<Response<Body>, ProxyError> {
    let r = repo.clone();
    let resp = delete_content(app, parts, body, repo, digest, Content::Blob, who).await?;
    Ok(uniform(resp, &r, who))
}

/// The `release_used` webhook event of a delete a release let through, when a target
/// wants it.
fn release_used(
    app: &App,
    who: &Requester,
    repo: &Repository,
    tag: &Tag,
    pinned: Option<&Digest>,
    decided: Decided,
) -> Option<crate::store::OutboxEvent> {
    let event = AuditEvent {
        action: AuditAction::DeleteReleased,
        who,
        repository: repo,
        tag: Some(tag),
        pinned,
        attempted: None,
        decided: Some(decided),
    };
    let (id, kind) = (crate::notify::new_id(), crate::notify::EventKind::ReleaseUsed);
    app.notify.prepare(
        id,
        kind,
        Some(repo.as_str()),
        Some(tag.as_str()),
        crate::notify::data_of(&event),
    )
}

fn event(
    app: &App,
    action: AuditAction,
    who: &Requester,
    repo: &Repository,
    tag: Option<&Tag>,
    pinned: Option<&Digest>,
    decided: Option<Decided>,
) {
    AuditEvent {
        action,
        who,
        repository: repo,
        tag,
        pinned,
        attempted: None,
        decided,
    }
    .emit(app);
}

/// What an answer to a forwarded delete settled.
fn outcome_of(sent: &Result<hyper::Response<hyper::body::Incoming>, UpstreamError>) -> Outcome {
    match sent {
        Ok(resp) if resp.status().is_success() => Outcome::Applied,
        Ok(resp) if super::settle::outcome_unknown(resp.status()) => Outcome::Unknown,
        Ok(_) | Err(UpstreamError::Connect(_)) => Outcome::NotApplied,
        Err(_) => Outcome::Unknown,
    }
}

/// A forwarded request that got no answer: whether it was applied is unknown.
fn forwarded_error(e: UpstreamError) -> ProxyError {
    match e {
        UpstreamError::Connect(_) => e.into(),
        other => ProxyError::OutcomeUnknown(other),
    }
}

async fn delete_tag(
    app: &Arc<App>,
    parts: Parts,
    body: Body,
    repo: Repository,
    tag: Tag,
    who: &Requester,
) -> Result<Response<Body>, ProxyError> {
    let who = who.clone();
    app.detached(move |app| async move {
        // Under the tag's lock, as a push is, and decided by the policy in force then.
        let guard = app.locks.push(&repo, std::slice::from_ref(&tag)).await;
        let decided = app.policy().decide(&repo, &tag);
        if !decided.mode.is_protected() {
            return super::forward(&app, parts, body, &who).await;
        }
        let id = who.request_id.clone();
        let (decision, expired) = app
            .transition(&repo, std::slice::from_ref(&tag), move |clock, records| {
                pinning::begin_tag_delete(&mut records[0], decided.mode, &id, clock)
            })
            .await?;
        let expired: Vec<_> = expired.into_iter().map(|e| (tag.clone(), e)).collect();
        super::release::report_expired(&app, &repo, &expired, &who);
        let released = match decision {
            TagDelete::Forward { released } => released,
            TagDelete::Refuse { pinned, .. } => {
                let mode = if decided.mode == Mode::Audit { Mode::Immutable } else { decided.mode };
                let refused = Refused {
                    evidence: vec![Evidence {
                        action: AuditAction::DeleteRefused,
                        tag: Some(tag.clone()),
                        pinned: pinned.clone(),
                        attempted: None,
                        decided: Some(decided),
                        keep: true,
                    }],
                    refusal: Refusal::DeleteTag { repo, tag, pinned, mode },
                };
                drop(guard);
                return super::refused::answer(&app, refused, &parts.headers, &who).await;
            }
        };
        let pinned = app.store_call({
            let (r, t) = (repo.clone(), tag.clone());
            move |s| s.record(&r, &t)
        })
        .await?
        .pin
        .map(|p| p.digest);
        let origin = super::client_origin(&app, &parts.headers);
        let sent = super::settle::bounded(&app, app.upstream.send(super::upstream_request(&app, parts, body, &who))).await;
        let outcome = outcome_of(&sent);
        let id = who.request_id.clone();
        // A release used: its webhook event goes in the settling write.
        let used = match released && outcome == Outcome::Applied {
            true => release_used(&app, &who, &repo, &tag, pinned.as_ref(), decided),
            false => None,
        };
        let settle = move |clock, records: &mut [crate::store::TagRecord]| {
            pinning::settle_tag_delete(&mut records[0], &id, outcome, clock)
        };
        let in_write = used.clone();
        let events_of = move |_: &_| (in_write.iter().cloned().collect(), Vec::new());
        let settled = app
            .transition_notifying(StoreWrite::Durable, &repo, std::slice::from_ref(&tag), settle, events_of)
            .await;
        if let Err(e) = settled {
            tracing::error!(request_id = %who.request_id, error = %e, "cannot settle the record of a tag delete; the tag stays reserved until the in-doubt horizon");
            // The upstream applied the delete all the same: its event is not lost with the write.
            app.notify.enqueue_prepared(used);
        }
        // An audited delete of a tag with no pin holds no record: its timeout promises none.
        let resp = match pinned {
            Some(_) => sent.map_err(forwarded_error)?,
            None => sent?,
        };
        if outcome != Outcome::Applied {
            return Ok(super::to_client(&app, resp, origin.as_deref()));
        }
        let mut out = super::to_client(&app, resp, origin.as_deref());
        if released {
            event(&app, AuditAction::DeleteReleased, &who, &repo, Some(&tag), pinned.as_ref(), Some(decided));
        } else {
            event(&app, AuditAction::DeleteAudited, &who, &repo, Some(&tag), pinned.as_ref(), Some(decided));
            let refusal = Refusal::DeleteTag {
                repo: repo.clone(),
                tag: tag.clone(),
                pinned,
                mode: Mode::Immutable,
            };
            out.headers_mut().append(header::WARNING, warning_header(&format!("audit mode: {refusal}")));
        }
        Ok(out)
    })
    .await
}

/// What a delete by digest removes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Content {
    Manifest,
    Blob,
}

async fn delete_content(
    app: &Arc<App>,
    parts: Parts,
    body: Body,
    repo: Repository,
    digest: Digest,
    kind: Content,
    who: &Requester,
) -> Result<Response<Body>, ProxyError> {
    // Tags that predate tagpin are adopted first, and every pinned manifest's references
    // recorded: deleting their content would take the tag away as surely as moving it.
    // This is the slow part for a large repository, so it runs before any lock.
    // It runs as a task of its own that a client going away does not stop, and the
    // request waits for it for a bounded time (`adopt`).
    let origin = super::client_origin(app, &parts.headers);
    if let Err(challenge) = super::adopt::before_digest_delete(app, &repo, &parts.headers, who).await? {
        return Ok(super::to_client(app, challenge, origin.as_deref()));
    }
    let who = who.clone();
    app.detached(move |app| async move {
        let job = DigestJob {
            repo,
            digest,
            kind,
            who,
        };
        job.run(&app, parts, body).await
    })
    .await
}

/// A delete by digest, decided, recorded, re-checked, forwarded and settled.
struct DigestJob {
    repo: Repository,
    digest: Digest,
    kind: Content,
    who: Requester,
}

impl DigestJob {
    async fn run(&self, app: &App, parts: Parts, body: Body) -> Result<Response<Body>, ProxyError> {
        let headers = parts.headers.clone();
        let guard = app.locks.digest_delete(&self.repo).await;
        let decided = self.locked(app, parts, body).await;
        // A refusal recorded nothing: the checks of its client, which any client can make
        // slow, run without holding up the repository's other deletes.
        drop(guard);
        match decided? {
            Ok(resp) => Ok(resp),
            Err(refused) => super::refused::answer(app, refused, &headers, &self.who).await,
        }
    }

    /// Decide, record, re-check and forward, under the repository's delete lock.
    async fn locked(&self, app: &App, parts: Parts, body: Body) -> Result<Result<Response<Body>, Refused>, ProxyError> {
        // Pins made since the unlocked pass were made by pushes, which record references
        // first; this pass only catches what an adoption added meanwhile.
        if let Err(challenge) = super::refs::protect_repository(app, &self.repo, &parts.headers).await? {
            let origin = super::client_origin(app, &parts.headers);
            return Ok(Ok(super::to_client(app, challenge, origin.as_deref())));
        }
        let policy = app.policy();
        let (direct, dependents, before) = self.held_by(app, &policy).await?;
        let clock = pinning::Clock {
            now: crate::store::now_secs(),
            horizon: app.config.in_doubt_horizon.as_secs(),
        };
        let (released, audited) = match pinning::decide_digest_delete(&direct, &dependents, clock) {
            DigestDelete::Forward { released, audited } => (released, audited),
            DigestDelete::RefuseHeld(tags) => return Ok(Err(self.refuse_held(&direct, tags))),
            DigestDelete::RefuseReferenced(holders) => {
                let held = dependents.iter().find(|(h, _)| h == &holders[0]).map(|(_, t)| t);
                let refused = Refused {
                    evidence: vec![Evidence {
                        action: AuditAction::DeleteRefused,
                        tag: None,
                        pinned: Some(holders[0].clone()),
                        attempted: Some(self.digest.clone()),
                        decided: held.and_then(|t| t.first()).map(|h| h.decided),
                        keep: false,
                    }],
                    refusal: Refusal::DeleteReferenced {
                        repo: self.repo.clone(),
                        digest: self.digest.clone(),
                        kind: if self.kind == Content::Manifest {
                            "manifest"
                        } else {
                            "blob"
                        },
                        holders,
                    },
                };
                return Ok(Err(refused));
            }
        };
        if !released.is_empty() {
            let (d, id) = (self.digest.clone(), self.who.request_id.clone());
            let took = app
                .transition(&self.repo, &released, move |clock, records| {
                    pinning::take_releases(records, &d, &id, clock)
                })
                .await?;
            if !took {
                return Ok(Err(self.refuse_held(&direct, released)));
            }
        }
        let recorded_at = std::time::Instant::now();
        let (r, d, id) = (self.repo.clone(), self.digest.clone(), self.who.request_id.clone());
        if let Err(e) = app.store_call(move |s| s.begin_delete(&r, &d, &id)).await {
            self.settle_releases(app, &released, Outcome::NotApplied, Vec::new())
                .await;
            return Err(e);
        }
        // The other half of the cross-replica handshake with pushes (push.rs): this
        // delete is recorded; a push that claimed the digest (or content needing it)
        // before the record is seen now.
        let after = self.held_by(app, &policy).await.map(|(_, _, h)| h);
        let fresh = flow::fresh(recorded_at.elapsed(), app.config.in_doubt_horizon);
        if !fresh || after.map_or(true, |after| flow::newly_held(&before, &after)) {
            self.settle(app, &released, Outcome::NotApplied, Vec::new()).await;
            let refusal = Refusal::DeleteInFlight {
                repo: self.repo.clone(),
                digest: self.digest.clone(),
            };
            return Ok(Err(refusal.into()));
        }
        let origin = super::client_origin(app, &parts.headers);
        let send = app.upstream.send(super::upstream_request(app, parts, body, &self.who));
        let sent = super::settle::bounded(app, send).await;
        let outcome = outcome_of(&sent);
        let used = match outcome {
            Outcome::Applied => direct
                .iter()
                .filter(|h| released.contains(&h.tag))
                .filter_map(|h| release_used(app, &self.who, &self.repo, &h.tag, Some(&self.digest), h.decided))
                .collect(),
            _ => Vec::new(),
        };
        self.settle(app, &released, outcome, used).await;
        let resp = sent.map_err(forwarded_error)?;
        if outcome == Outcome::Unknown {
            tracing::warn!(request_id = %self.who.request_id, repository = %self.repo, digest = %self.digest, "a delete was answered with a gateway error; the digest stays unpinnable until its answer is known or the in-doubt horizon passes");
        }
        let mut out = super::to_client(app, resp, origin.as_deref());
        if outcome == Outcome::Applied {
            self.report_applied(app, &direct, &released, &audited, &mut out).await;
        }
        Ok(Ok(out))
    }

    /// The protected tags holding the digest and the pinned manifests depending on it.
    async fn held_by(&self, app: &App, policy: &Policy) -> Result<(Vec<Holder>, Dependents, flow::HeldBy), ProxyError> {
        let direct = match self.kind {
            Content::Manifest => holders(app, policy, &self.repo, &self.digest).await?,
            Content::Blob => Vec::new(),
        };
        let (r, d) = (self.repo.clone(), self.digest.clone());
        let mut dependents = Vec::new();
        for holder in app.store_call(move |s| s.referenced_by(&r, &d)).await? {
            let tags = holders(app, policy, &self.repo, &holder).await?;
            if !tags.is_empty() {
                dependents.push((holder, tags));
            }
        }
        let held = flow::HeldBy {
            tags: direct.iter().map(|h| h.tag.clone()).collect(),
            dependents: dependents
                .iter()
                .flat_map(|(d, tags)| tags.iter().map(move |h| (d.clone(), h.tag.clone())))
                .collect(),
        };
        Ok((direct, dependents, held))
    }

    fn refuse_held(&self, direct: &[Holder], tags: Vec<Tag>) -> Refused {
        Refused {
            evidence: direct
                .iter()
                .filter(|h| tags.contains(&h.tag))
                .map(|h| Evidence {
                    action: AuditAction::DeleteRefused,
                    tag: Some(h.tag.clone()),
                    pinned: Some(self.digest.clone()),
                    // The digest the delete named: kept in the tag's refused attempts.
                    attempted: Some(self.digest.clone()),
                    decided: Some(h.decided),
                    keep: true,
                })
                .collect(),
            refusal: Refusal::DeleteDigest {
                repo: self.repo.clone(),
                digest: self.digest.clone(),
                tags,
            },
        }
    }

    /// Settle this request's delete record (never another's) and the releases it took.
    async fn settle(&self, app: &App, released: &[Tag], outcome: Outcome, used: Vec<crate::store::OutboxEvent>) {
        if outcome != Outcome::Unknown {
            let (r, d, id) = (self.repo.clone(), self.digest.clone(), self.who.request_id.clone());
            if let Err(e) = app.store_call(move |s| s.end_delete(&r, &d, &id)).await {
                // The record only keeps the digest from being pinned until the horizon.
                tracing::warn!(request_id = %self.who.request_id, error = %e, "cannot settle a delete record");
            }
        }
        self.settle_releases(app, released, outcome, used).await;
    }

    /// Settle the releases this delete took, with the webhook events of those it used
    /// (`used`) in the same write.
    async fn settle_releases(
        &self,
        app: &App,
        released: &[Tag],
        outcome: Outcome,
        used: Vec<crate::store::OutboxEvent>,
    ) {
        if released.is_empty() {
            return;
        }
        let id = self.who.request_id.clone();
        let settle = move |clock, records: &mut [crate::store::TagRecord]| {
            for r in records.iter_mut() {
                pinning::settle_tag_delete(r, &id, outcome, clock);
            }
        };
        let in_write = used.clone();
        let events_of = move |_: &()| (in_write.clone(), Vec::new());
        let settled = app
            .transition_notifying(StoreWrite::Durable, &self.repo, released, settle, events_of)
            .await;
        if let Err(e) = settled {
            tracing::error!(request_id = %self.who.request_id, error = %e, "cannot settle the releases a delete used; they stay in use until the in-doubt horizon");
            // The upstream applied the delete all the same: its events are not lost with the write.
            app.notify.enqueue_prepared(used);
        }
    }

    /// Audit what an accepted delete did, note audited deletes in the pins' history, and
    /// warn the client about audited holders.
    async fn report_applied(
        &self,
        app: &App,
        direct: &[Holder],
        released: &[Tag],
        audited: &[(Tag, Decided)],
        out: &mut Response<Body>,
    ) {
        for h in direct.iter().filter(|h| released.contains(&h.tag)) {
            event(
                app,
                AuditAction::DeleteReleased,
                &self.who,
                &self.repo,
                Some(&h.tag),
                Some(&self.digest),
                Some(h.decided),
            );
        }
        if audited.is_empty() {
            return;
        }
        let tags: Vec<Tag> = audited.iter().map(|(t, _)| t.clone()).collect();
        let refusal = Refusal::DeleteDigest {
            repo: self.repo.clone(),
            digest: self.digest.clone(),
            tags: tags.clone(),
        };
        out.headers_mut()
            .append(header::WARNING, warning_header(&format!("audit mode: {refusal}")));
        for (tag, decided) in audited {
            event(
                app,
                AuditAction::DeleteAudited,
                &self.who,
                &self.repo,
                Some(tag),
                Some(&self.digest),
                Some(*decided),
            );
        }
        if self.kind == Content::Manifest {
            let direct_audited: Vec<Tag> = direct
                .iter()
                .filter(|h| tags.contains(&h.tag))
                .map(|h| h.tag.clone())
                .collect();
            let id = self.who.request_id.clone();
            let noted = app
                .transition(&self.repo, &direct_audited, move |clock, records| {
                    for r in records.iter_mut() {
                        pinning::note_audited_delete(r, &id, clock);
                    }
                })
                .await;
            if let Err(e) = noted {
                tracing::warn!(request_id = %self.who.request_id, error = %e, "cannot record an audited delete in the pins' history");
            }
        }
    }
}

/// The protected tags of `repo` pinned or claimed to `digest`, with their records.
async fn holders(app: &App, policy: &Policy, repo: &Repository, digest: &Digest) -> Result<Vec<Holder>, ProxyError> {
    let (r, d) = (repo.clone(), digest.clone());
    let records = app
        .store_call(move |s| {
            s.tags_pinned_to(&r, &d)?
                .into_iter()
                .map(|t| s.record(&r, &t).map(|rec| (t, rec)))
                .collect::<Result<Vec<_>, _>>()
        })
        .await?;
    Ok(records
        .into_iter()
        .map(|(tag, record)| Holder {
            decided: policy.decide(repo, &tag),
            tag,
            record,
        })
        .filter(|h| h.decided.mode.is_protected())
        .collect())
}
