//! Manifest pushes that name a protected tag (distribution-spec `spec.md`, "Pushing
//! Manifests", end-7a and end-7b with `?tag=`).
//!
//! The body is read (bounded) and hashed while the client is connected. Everything after
//! that runs as a task of its own ([`App::detached`]), so a client that goes away cannot
//! cut the sequence short. Its steps, each around one transition of [`crate::pinning`]:
//! 1. **gather**: for each tag, the pin (adopting the upstream's digest for a tag that
//!    predates tagpin) and, for an append-only tag pushed with another digest, whether
//!    the new manifest extends the pinned one; the manifest's references are recorded;
//! 2. **decide** ([`pinning::begin_push`]): refuse the whole push if any tag would move;
//!    otherwise every tag gets a durable record of this write before anything is
//!    forwarded;
//! 3. **check deletes**: nothing the manifest needs may have a delete in flight; a push
//!    that moves a pin then waits the store's move grace, so no replica's read cache still
//!    holds the old pin when the new one is committed;
//! 4. **forward**, and **settle** every tag by the upstream's answer
//!    ([`pinning::settle_push`]): accepted, the pin follows before the client sees its
//!    201 (a new pin or an identical push without waiting for the disk: its durable
//!    claim holds the tag until the pin is on disk, see [`super::recover`]); refused (or
//!    a `?tag=` the answer shows was not applied), the record is withdrawn; unknown, the
//!    record stays until the in-doubt horizon.
//!
//! So a push of a new tag waits for one durable write (claim and references together)
//! and none after the upstream answers.

use http::request::Parts;
use http::{header, HeaderMap, Response};

use super::refused::{Evidence, Refused};
use super::settle::{self, tag_words};
use super::{client_origin, to_client, upstream_request};
use crate::app::{App, StoreWrite};
use crate::body::{self, Body};
use crate::error::ProxyError;
use crate::manifest;
use crate::oci::{Digest, Reference, Repository, Tag};
use crate::pinning::{self, flow, Outcome, PushTag, Settled, Verdict};
use crate::policy::{self, Decided, Mode, Refusal};
use crate::telemetry::{AuditAction, Requester};
use crate::upstream::{Fetched, UpstreamError};

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
    let policy = app.policy();
    let named = tags.clone();
    let protected: Vec<Tag> = tags.into_iter().filter(|t| policy.is_protected(&repo, t)).collect();
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

    let bytes = manifest::read_limited(&parts.headers, body, &app.manifest_limits, who.client.ip()).await?;
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
        tags: protected,
        attempted,
        who: who.clone(),
    };
    let (repo, request_id) = (job.repo.clone(), job.who.request_id.clone());
    let resp = app.detached(move |app| async move { job.run(&app).await }).await?;
    Ok(super::challenge::uniform(
        resp,
        &repo,
        &request_id,
        super::challenge::PUSH,
    ))
}

/// A push whose body is in hand: decided, forwarded and settled as one detached task.
struct PushJob {
    parts: Parts,
    bytes: bytes::Bytes,
    repo: Repository,
    /// The tag in the path, for a push by tag; `None` for a push by digest.
    path_tag: Option<Tag>,
    /// The protected tags it names.
    tags: Vec<Tag>,
    attempted: Digest,
    who: Requester,
}

/// An early answer: the upstream wanted credentials for one of tagpin's checks.
type Early = Response<Body>;

impl PushJob {
    async fn run(self, app: &App) -> Result<Response<Body>, ProxyError> {
        let guard = app.locks.push(&self.repo, &self.tags).await;
        let appends = match self.gather(app).await? {
            Ok(a) => a,
            Err(early) => return Ok(early),
        };
        let refs = match super::refs::protect(
            app,
            &self.repo,
            &self.attempted,
            Some(&self.bytes),
            &self.parts.headers,
            true,
        )
        .await?
        {
            Ok(p) => p,
            Err(challenge) => return Ok(super::challenge::for_push(challenge, &self.repo, &self.who.request_id)),
        };
        // Measured from before the records are written, so a slow commit counts too.
        let decided_at = std::time::Instant::now();
        let (inputs, verdicts) = match self.decide(app, appends, refs.pending.clone()).await? {
            Ok(decided) => decided,
            Err(refused) => {
                // Nothing of this push is recorded: the checks of its client, which any
                // client can make slow, run without holding up the tags' other writes.
                drop(guard);
                return super::refused::answer(app, refused, &self.parts.headers, &self.who).await;
            }
        };
        let recorded: Vec<Tag> = inputs.iter().map(|i| i.tag.clone()).collect();
        let checks = match refs.new {
            true => flow::delete_checks(&self.attempted, &refs.refs, &[]),
            false => flow::delete_checks(&self.attempted, &[], &refs.refs),
        };
        match self.check_deletes(app, checks).await {
            Ok(None) => {}
            Ok(Some(refusal)) => {
                self.withdraw(app, &recorded).await;
                drop(guard);
                return super::refused::answer(app, refusal.into(), &self.parts.headers, &self.who).await;
            }
            Err(e) => {
                self.withdraw(app, &recorded).await;
                return Err(e);
            }
        }
        let grace = app.store.move_grace();
        if !grace.is_zero() && verdicts.iter().any(Verdict::moves_pin) {
            // Every replica's read cache drops the old pin before the new one can be
            // committed. Counted in the freshness below: a store's grace is far below a
            // quarter of the horizon (`PgStore::for_in_doubt_horizon`).
            tokio::time::sleep(grace).await;
        }
        if !flow::fresh(decided_at.elapsed(), app.config.in_doubt_horizon) {
            self.withdraw(app, &recorded).await;
            return Err(ProxyError::CannotDecide(
                "the store took too long to confirm the decision; nothing was forwarded, retry".into(),
            ));
        }
        self.forward_and_settle(app, &inputs, &verdicts).await
    }

    /// Step 1: for each tag, adopt what the upstream holds when tagpin has nothing, and
    /// for an append-only tag compare the pushed manifest with the pinned one.
    async fn gather(&self, app: &App) -> Result<Result<Vec<Appended>, Early>, ProxyError> {
        let policy = app.policy();
        let mut out = Vec::with_capacity(self.tags.len());
        let headers = &self.parts.headers;
        for tag in &self.tags {
            let held = super::pins::held(app, &self.repo, tag, headers, &self.who, Some(&self.attempted)).await?;
            let pinned = match held {
                Ok(p) => p,
                Err(challenge) => {
                    return Ok(Err(super::challenge::for_push(
                        challenge,
                        &self.repo,
                        &self.who.request_id,
                    )))
                }
            };
            let append = match pinned {
                Some(p) if p != self.attempted && policy.decide(&self.repo, tag).mode == Mode::AppendOnly => {
                    match pinned_manifest(app, &self.repo, &p, headers).await? {
                        Ok(old) => {
                            // Parsing two manifests of up to the size limit is CPU work: off
                            // the async worker, which serves other connections meanwhile.
                            let new = self.bytes.clone();
                            let verdict = tokio::task::spawn_blocking(move || policy::check_append(&old, &new))
                                .await
                                .map_err(|e| ProxyError::Internal(format!("append check failed: {e}")))?;
                            Some((p, verdict))
                        }
                        Err(challenge) => {
                            return Ok(Err(super::challenge::for_push(
                                challenge,
                                &self.repo,
                                &self.who.request_id,
                            )))
                        }
                    }
                }
                _ => None,
            };
            out.push((tag.clone(), append));
        }
        Ok(Ok(out))
    }

    /// Step 2: decide against the records and the policy in force now, and record the
    /// write on every tag, in one transition. A refusal carries the evidence it leaves
    /// once its client is confirmed (`refused`).
    async fn decide(
        &self,
        app: &App,
        appends: Vec<Appended>,
        refs: Option<crate::store::Protection>,
    ) -> Result<Result<Decision, Refused>, ProxyError> {
        let policy = app.policy();
        let inputs: Vec<PushTag> = appends
            .into_iter()
            .map(|(tag, append)| PushTag {
                decided: policy.decide(&self.repo, &tag),
                tag,
                append,
            })
            // A reload that made a tag mutable while this push waited: nothing to decide.
            .filter(|i| i.decided.mode.is_protected())
            .collect();
        let tags: Vec<Tag> = inputs.iter().map(|i| i.tag.clone()).collect();
        let (given, d, id) = (inputs.clone(), self.attempted.clone(), self.who.request_id.clone());
        // The references go into the claim's own write: one durable write before forwarding.
        let how = match refs {
            Some(refs) => StoreWrite::Protecting(refs),
            None => StoreWrite::Durable,
        };
        let begun = app
            .transition_as(how, &self.repo, &tags, move |clock, records| {
                pinning::begin_push(records, &given, &d, &id, clock)
            })
            .await?;
        let expired = super::release::by_tag(&tags, begun.expired);
        super::release::report_expired(app, &self.repo, &expired, &self.who);
        Ok(match begun.decision {
            Ok(verdicts) => Ok((inputs, verdicts)),
            Err(conflicts) => Err(Refused {
                evidence: conflicts
                    .iter()
                    .map(|c| Evidence {
                        action: AuditAction::PushRefused,
                        tag: Some(c.tag.clone()),
                        pinned: Some(c.pinned.clone()),
                        attempted: Some(self.attempted.clone()),
                        decided: c.decided,
                        keep: true,
                    })
                    .collect(),
                refusal: Refusal::Move {
                    repo: self.repo.clone(),
                    attempted: self.attempted.clone(),
                    conflicts,
                },
            }),
        })
    }

    /// Step 3: across replicas no lock orders this push against a digest delete, so both
    /// write their record first and then look for the other's: a delete recorded before
    /// this push's records is seen here; one recorded after them sees the records
    /// (delete.rs). One of the two refuses.
    async fn check_deletes(&self, app: &App, checks: Vec<Digest>) -> Result<Option<Refusal>, ProxyError> {
        let (r, horizon) = (self.repo.clone(), app.config.in_doubt_horizon.as_secs());
        let busy = app
            .store_call(move |s| s.deletes_in_flight(&r, &checks, horizon))
            .await?;
        Ok(busy.into_iter().next().map(|digest| Refusal::DeleteInFlight {
            repo: self.repo.clone(),
            digest,
        }))
    }

    /// Step 4: forward the exact bytes hashed and settle every tag by the answer.
    async fn forward_and_settle(
        &self,
        app: &App,
        inputs: &[PushTag],
        verdicts: &[Verdict],
    ) -> Result<Response<Body>, ProxyError> {
        let tags: Vec<Tag> = inputs.iter().map(|i| i.tag.clone()).collect();
        let origin = client_origin(app, &self.parts.headers);
        let authorization = self.parts.headers.get(header::AUTHORIZATION).cloned();
        let mut parts = self.parts.clone();
        parts.headers.insert(header::CONTENT_LENGTH, self.bytes.len().into());
        let req = upstream_request(app, parts, body::full(self.bytes.clone()), &self.who);
        let resp = match settle::bounded(app, app.upstream.send(req)).await {
            Ok(resp) => resp,
            Err(e @ UpstreamError::Connect(_)) => {
                // No connection, so nothing was sent: the push definitively did not happen.
                self.withdraw(app, &tags).await;
                return Err(e.into());
            }
            Err(e) => {
                tracing::warn!(request_id = %self.who.request_id, repository = %self.repo, digest = %self.attempted, error = %e, "push forwarded with an unknown outcome; its records keep the tags reserved for its digest");
                return Err(ProxyError::OutcomeUnknown(e));
            }
        };
        let status = resp.status();
        if !status.is_success() {
            if settle::outcome_unknown(status) {
                tracing::warn!(request_id = %self.who.request_id, repository = %self.repo, digest = %self.attempted, status = status.as_u16(), "the upstream answered a push with a gateway error; its records keep the tags reserved for its digest");
            } else {
                self.withdraw(app, &tags).await;
            }
            return Ok(to_client(app, resp, origin.as_deref()));
        }
        if let Some(reported) = settle::reported_digest(resp.headers()) {
            if reported != self.attempted.as_str() {
                return Err(UpstreamError::DigestMismatch {
                    computed: self.attempted.clone(),
                    reported,
                }
                .into());
            }
        }
        let words = tag_words(
            app,
            &self.repo,
            &tags,
            self.path_tag.as_ref(),
            resp.headers(),
            authorization.as_ref(),
        )
        .await;
        let outcomes: Vec<Outcome> = tags
            .iter()
            .zip(&words)
            .map(|(t, w)| flow::tag_outcome(&self.attempted, self.path_tag.as_ref() == Some(t), w))
            .collect();
        // A new pin or an identical push that applied settles without waiting for the
        // disk: its claim already holds the tag for this digest, and `recover` completes
        // it after a crash. Anything else (a move, a withdrawal) is durable at once.
        let how = match flow::settles_lazily(&outcomes, verdicts) {
            true => StoreWrite::Settling,
            false => StoreWrite::Durable,
        };
        let used = self.release_events(app, inputs, verdicts, &outcomes);
        let settled = self
            .settle(app, &tags, outcomes.clone(), how, used)
            .await
            .map_err(ProxyError::pin_not_recorded)?;
        let mut warnings = Vec::new();
        for ((input, verdict), (outcome, result)) in inputs.iter().zip(verdicts).zip(outcomes.iter().zip(&settled)) {
            match (outcome, result) {
                (Outcome::Applied, Settled::LandedAgainstPin { pinned }) => {
                    tracing::error!(request_id = %self.who.request_id, repository = %self.repo, tag = %input.tag, %pinned, attempted = %self.attempted, "the upstream applied a push whose record was cleared; the pin stays and the upstream differs from it");
                }
                (Outcome::Applied, _) => self.audit_applied(app, input, verdict, &mut warnings),
                (Outcome::NotApplied, _) => warnings.push(policy::warning_header(&format!(
                    "tagpin: the upstream did not apply tag {} of {}; it is not pinned",
                    input.tag, self.repo
                ))),
                (Outcome::Unknown, _) if self.path_tag.as_ref() == Some(&input.tag) => {
                    tracing::warn!(request_id = %self.who.request_id, repository = %self.repo, tag = %input.tag, "the upstream accepted a push by tag without naming its digest, and its HEAD does not show it; the tag stays reserved for the pushed digest");
                    return Err(ProxyError::OutcomeUnknown(UpstreamError::CheckNoDigest {
                        tag: input.tag.clone(),
                    }));
                }
                (Outcome::Unknown, _) => warnings.push(policy::warning_header(&format!(
                    "tagpin: the upstream did not confirm tag {} of {}; it is not pinned and stays reserved for {} until that is known",
                    input.tag, self.repo, self.attempted
                ))),
            }
        }
        let mut out = to_client(app, resp, origin.as_deref());
        for w in warnings {
            out.headers_mut().append(header::WARNING, w);
        }
        Ok(out)
    }

    /// The `release_used` webhook event of each tag a release moves if its push applied
    /// (by index; `None` for the others, or when no target wants it).
    fn release_events(
        &self,
        app: &App,
        inputs: &[PushTag],
        verdicts: &[Verdict],
        outcomes: &[Outcome],
    ) -> Vec<Option<crate::store::OutboxEvent>> {
        let prepare = |(input, verdict): (&PushTag, &Verdict), outcome: &Outcome| {
            let Verdict::Released { from } = verdict else {
                return None;
            };
            if *outcome != Outcome::Applied {
                return None;
            }
            let event = crate::telemetry::AuditEvent {
                action: AuditAction::PushReleased,
                who: &self.who,
                repository: &self.repo,
                tag: Some(&input.tag),
                pinned: Some(from),
                attempted: Some(&self.attempted),
                decided: Some(input.decided),
            };
            let (id, kind) = (crate::notify::new_id(), crate::notify::EventKind::ReleaseUsed);
            let data = crate::notify::data_of(&event);
            app.notify
                .prepare(id, kind, Some(self.repo.as_str()), Some(input.tag.as_str()), data)
        };
        inputs
            .iter()
            .zip(verdicts)
            .zip(outcomes)
            .map(|(iv, o)| prepare(iv, o))
            .collect()
    }

    /// Settle every tag's record by its outcome, in one transition, with the webhook
    /// events of the releases it used (`used`, by tag) in the same write.
    async fn settle(
        &self,
        app: &App,
        tags: &[Tag],
        outcomes: Vec<Outcome>,
        how: StoreWrite,
        used: Vec<Option<crate::store::OutboxEvent>>,
    ) -> Result<Vec<Settled>, ProxyError> {
        let (d, id) = (self.attempted.clone(), self.who.request_id.clone());
        let events_of = move |(settled, _): &(Vec<Settled>, Vec<(usize, pinning::Expired)>)| {
            let events = used
                .iter()
                .zip(settled)
                .filter(|(_, s)| !matches!(s, Settled::LandedAgainstPin { .. }))
                .filter_map(|(e, _)| e.clone())
                .collect();
            (events, Vec::new())
        };
        let (settled, expired) = app
            .transition_notifying(
                how,
                &self.repo,
                tags,
                move |clock, records| {
                    let mut expired = Vec::new();
                    let settled = records
                        .iter_mut()
                        .zip(&outcomes)
                        .enumerate()
                        .map(|(i, (r, o))| {
                            let (s, e) = pinning::settle_push(r, &d, &id, *o, clock);
                            expired.extend(e.into_iter().map(|e| (i, e)));
                            s
                        })
                        .collect::<Vec<_>>();
                    (settled, expired)
                },
                events_of,
            )
            .await?;
        let expired = super::release::by_tag(tags, expired);
        super::release::report_expired(app, &self.repo, &expired, &self.who);
        Ok(settled)
    }

    /// Withdraw this request's records: the write definitively did not happen. A failure
    /// leaves them in force, which only keeps the tags reserved (fail closed) until the
    /// in-doubt horizon, so it is logged rather than returned.
    async fn withdraw(&self, app: &App, tags: &[Tag]) {
        if tags.is_empty() {
            return;
        }
        let outcomes = vec![Outcome::NotApplied; tags.len()];
        if let Err(e) = self.settle(app, tags, outcomes, StoreWrite::Durable, Vec::new()).await {
            tracing::error!(request_id = %self.who.request_id, repository = %self.repo, error = %e, "cannot withdraw the records of a push that did not happen; the tags stay reserved for its digest until the in-doubt horizon");
        }
    }

    /// The audit event (and, for an audited move, the warning) of a tag the push applied.
    fn audit_applied(&self, app: &App, input: &PushTag, verdict: &Verdict, warnings: &mut Vec<http::HeaderValue>) {
        let (action, pinned) = match verdict {
            Verdict::NewPin => (AuditAction::PinCreated, &self.attempted),
            Verdict::Identical => (AuditAction::IdenticalRepush, &self.attempted),
            Verdict::Append { from } => (AuditAction::PinAdvanced, from),
            Verdict::Released { from } => (AuditAction::PushReleased, from),
            Verdict::AuditMove { from } => {
                // What a refusal would have said (distribution-spec `spec.md`, "Warnings":
                // sent only because the upstream accepted the push).
                let would_refuse = Refusal::Move {
                    repo: self.repo.clone(),
                    attempted: self.attempted.clone(),
                    conflicts: vec![policy::Conflict {
                        tag: input.tag.clone(),
                        pinned: from.clone(),
                        claimed: false,
                        reason: policy::ConflictReason::Immutable,
                        decided: Some(input.decided),
                    }],
                };
                warnings.push(policy::warning_header(&format!("audit mode: {would_refuse}")));
                (AuditAction::PushAudited, from)
            }
        };
        self.audit(app, action, &input.tag, Some(pinned), Some(input.decided));
    }

    fn audit(&self, app: &App, action: AuditAction, tag: &Tag, pinned: Option<&Digest>, decided: Option<Decided>) {
        crate::telemetry::AuditEvent {
            action,
            who: &self.who,
            repository: &self.repo,
            tag: Some(tag),
            pinned,
            attempted: Some(&self.attempted),
            decided,
        }
        .emit(app);
    }
}

/// What the decision gave each tag that goes on.
type Decision = (Vec<PushTag>, Vec<Verdict>);

/// A tag of the push with its append-only comparison, if one was needed.
type Appended = (Tag, Option<(Digest, Result<(), policy::NotAppend>)>);

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
    match super::refs::fetch(app, repo, pinned, auth, app.config.max_manifest_bytes).await {
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
