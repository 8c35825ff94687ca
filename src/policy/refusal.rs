//! A refusal: the error a client sees when it tries to move or delete a protected tag.
//! The message must read as an immutability refusal, never as an authentication
//! failure, and say what to do instead; `detail` carries the same facts for machines.

use serde_json::json;

use super::{Conflict, ConflictReason};
use crate::oci::{Digest, Repository, Tag};

#[derive(Debug, Clone, thiserror::Error)]
pub enum Refusal {
    /// A push would move one or more pinned tags.
    #[error("{}", move_message(.repo, .attempted, .conflicts))]
    Move {
        repo: Repository,
        attempted: Digest,
        conflicts: Vec<Conflict>,
    },
    /// `DELETE /v2/<name>/manifests/<tag>` of a protected tag.
    #[error("tag {repo}:{tag} is {} (protected by tagpin{}); it cannot be deleted", .mode.as_str(), pinned_suffix(.pinned))]
    DeleteTag {
        repo: Repository,
        tag: Tag,
        pinned: Option<Digest>,
        mode: super::Mode,
    },
    /// A push of a manifest whose delete was forwarded with an unknown outcome: pinning a
    /// tag to it could leave the tag on a manifest the upstream deletes a moment later.
    #[error("{repo}@{digest} has a delete in flight whose outcome is not known; tagpin refuses to pin content that needs it until that delete's own answer settles it or the in-doubt horizon passes. Push again later, or, if you know that delete failed, find its request with `tagpin claims list` and clear it with `tagpin claims clear {repo}@{digest} --request ID --reason ...`")]
    DeleteInFlight { repo: Repository, digest: Digest },
    /// A delete of a manifest or blob that pinned content depends on: an index's child,
    /// or the config or a layer of a pinned manifest. The pinned tag would stay on its
    /// digest but could no longer be pulled.
    #[error("{kind} {repo}@{digest} is part of pinned content (manifest {} of {repo}, protected by tagpin); it cannot be deleted while a protected tag depends on it", .holders[0])]
    DeleteReferenced {
        repo: Repository,
        digest: Digest,
        kind: &'static str,
        holders: Vec<Digest>,
    },
    /// `DELETE /v2/<name>/manifests/<digest>` of a digest protected tags are pinned to.
    #[error("manifest {repo}@{digest} is what immutable tag(s) {} of {repo} are pinned to (by tagpin); it cannot be deleted", tag_list(.tags))]
    DeleteDigest {
        repo: Repository,
        digest: Digest,
        tags: Vec<Tag>,
    },
}

fn move_message(repo: &Repository, attempted: &Digest, conflicts: &[Conflict]) -> String {
    let first = &conflicts[0];
    let more = match conflicts.len() {
        1 => String::new(),
        n => format!(" ({} more tag(s) of this push are held too: see detail)", n - 1),
    };
    match &first.reason {
        ConflictReason::InFlight if first.claimed => format!(
            "tag {repo}:{} is reserved for {} by an earlier push whose outcome is not known yet, \
             and tagpin refuses to move it to {attempted}{more}. Re-push {} to complete that push, \
             or push this content under a new tag",
            first.tag, first.pinned, first.pinned
        ),
        ConflictReason::InFlight => format!(
            "tag {repo}:{} is pinned to {} and another write to it is in flight (or moved it while this \
             push was decided), so tagpin refuses to move it to {attempted} now{more}. Push again once \
             that write is settled",
            first.tag, first.pinned
        ),
        ConflictReason::NotAppendOnly(why) => format!(
            "tag {repo}:{} is append-only: it is pinned to {} and tagpin refuses {attempted} because {why}{more}. \
             Push a manifest that keeps every entry of the pinned one and only adds to it",
            first.tag, first.pinned
        ),
        ConflictReason::Immutable => format!(
            "tag {repo}:{} is immutable: it is pinned to {} and tagpin refuses to move it to {attempted}{more}. \
             Push this content under a new tag instead",
            first.tag, first.pinned
        ),
    }
}

/// The `detail.reason` of a conflict.
fn reason(c: &Conflict) -> &'static str {
    match c.reason {
        ConflictReason::InFlight => "tag_in_flight",
        ConflictReason::NotAppendOnly(_) => "not_append_only",
        ConflictReason::Immutable => "tag_immutable",
    }
}

/// `Warning: 299 - "<text>"` (distribution-spec `spec.md`, "Warnings"; RFC 7234 5.5),
/// with `"` and `\` escaped as an RFC 7230 quoted-string requires and anything that is not
/// visible ASCII replaced, so any message makes a valid header.
pub fn warning_header(text: &str) -> http::HeaderValue {
    let mut quoted = String::with_capacity(text.len() + 10);
    quoted.push_str("299 - \"");
    for c in text.chars() {
        match c {
            '"' | '\\' => {
                quoted.push('\\');
                quoted.push(c);
            }
            ' '..='~' => quoted.push(c),
            _ => quoted.push('?'),
        }
    }
    quoted.push('"');
    http::HeaderValue::from_str(&quoted).expect("visible ASCII is a valid header value")
}

fn state(c: &Conflict) -> &'static str {
    if c.claimed {
        "claimed"
    } else {
        "pinned"
    }
}

fn pinned_suffix(pinned: &Option<Digest>) -> String {
    pinned.as_ref().map(|d| format!(", pinned to {d}")).unwrap_or_default()
}

fn tag_list(tags: &[Tag]) -> String {
    tags.iter().map(Tag::as_str).collect::<Vec<_>>().join(", ")
}

impl Refusal {
    pub fn detail(&self) -> serde_json::Value {
        match self {
            Self::Move {
                repo,
                attempted,
                conflicts,
            } => json!({
                "reason": reason(&conflicts[0]),
                "repository": repo.as_str(),
                "tag": conflicts[0].tag.as_str(),
                "pinned_digest": conflicts[0].pinned.as_str(),
                "state": state(&conflicts[0]),
                "attempted_digest": attempted.as_str(),
                "mode": conflicts[0].decided.map(|d| d.mode.as_str()),
                "rule": conflicts[0].decided.map(|d| d.by.to_string()),
                "conflicts": conflicts.iter().map(|c| json!({"tag": c.tag.as_str(), "pinned_digest": c.pinned.as_str(), "state": state(c), "reason": reason(c)})).collect::<Vec<_>>(),
            }),
            Self::DeleteReferenced {
                repo,
                digest,
                kind,
                holders,
            } => json!({
                "reason": "referenced_by_pin",
                "repository": repo.as_str(),
                "digest": digest.as_str(),
                "kind": kind,
                "pinned_manifests": holders.iter().map(Digest::as_str).collect::<Vec<_>>(),
            }),
            Self::DeleteInFlight { repo, digest } => json!({
                "reason": "delete_in_flight",
                "repository": repo.as_str(),
                "digest": digest.as_str(),
            }),
            Self::DeleteTag {
                repo,
                tag,
                pinned,
                mode,
            } => json!({
                "reason": if *mode == super::Mode::AppendOnly { "tag_append_only" } else { "tag_immutable" },
                "repository": repo.as_str(),
                "tag": tag.as_str(),
                "pinned_digest": pinned.as_ref().map(Digest::as_str),
            }),
            Self::DeleteDigest { repo, digest, tags } => json!({
                "reason": "digest_pinned",
                "repository": repo.as_str(),
                "digest": digest.as_str(),
                "tags": tags.iter().map(Tag::as_str).collect::<Vec<_>>(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_move_refusal_names_tag_both_digests_and_the_way_out() {
        let pinned = Digest::parse(&format!("sha256:{}", "a".repeat(64))).unwrap();
        let attempted = Digest::parse(&format!("sha256:{}", "b".repeat(64))).unwrap();
        let r = Refusal::Move {
            repo: Repository::parse("my-api").unwrap(),
            attempted: attempted.clone(),
            conflicts: vec![Conflict {
                tag: Tag::parse("1.4.2").unwrap(),
                pinned: pinned.clone(),
                claimed: false,
                reason: ConflictReason::Immutable,
                decided: None,
            }],
        };
        let m = r.to_string();
        assert!(m.contains("my-api:1.4.2 is immutable"), "{m}");
        assert!(m.contains(pinned.as_str()) && m.contains(attempted.as_str()), "{m}");
        assert!(m.contains("new tag"), "{m}");
        assert!(!m.to_lowercase().contains("auth"), "{m}");
        let d = r.detail();
        assert_eq!(d["pinned_digest"], pinned.as_str());
        assert_eq!(d["attempted_digest"], attempted.as_str());
        assert_eq!(d["tag"], "1.4.2");
        assert_eq!(d["state"], "pinned");
    }

    #[test]
    fn a_reserved_tag_says_which_digest_completes_it() {
        let claimed = Digest::parse(&format!("sha256:{}", "c".repeat(64))).unwrap();
        let attempted = Digest::parse(&format!("sha256:{}", "d".repeat(64))).unwrap();
        let r = Refusal::Move {
            repo: Repository::parse("my-api").unwrap(),
            attempted,
            conflicts: vec![Conflict {
                tag: Tag::parse("1.4.2").unwrap(),
                pinned: claimed.clone(),
                claimed: true,
                reason: ConflictReason::InFlight,
                decided: None,
            }],
        };
        let m = r.to_string();
        assert!(
            m.contains("reserved for") && m.contains(&format!("Re-push {claimed}")),
            "{m}"
        );
        assert_eq!(r.detail()["reason"], "tag_in_flight");
        assert_eq!(r.detail()["state"], "claimed");
    }

    #[test]
    fn warning_headers_are_quoted_strings() {
        assert_eq!(warning_header("plain"), "299 - \"plain\"");
        assert_eq!(warning_header(r#"a "b" \ c"#), r#"299 - "a \"b\" \\ c""#);
        assert_eq!(warning_header("tab\there é"), "299 - \"tab?here ?\"");
    }
}
