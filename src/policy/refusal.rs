//! A refusal: the error a client sees when it tries to move or delete a protected tag.
//! The message must read as an immutability refusal, never as an authentication
//! failure, and say what to do instead; `detail` carries the same facts for machines.

use serde_json::json;

use super::Conflict;
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
    #[error("tag {repo}:{tag} is immutable (protected by tagpin{}); it cannot be deleted", pinned_suffix(.pinned))]
    DeleteTag {
        repo: Repository,
        tag: Tag,
        pinned: Option<Digest>,
    },
    /// A push of a manifest whose delete was forwarded with an unknown outcome: pinning a
    /// tag to it could leave the tag on a manifest the upstream deletes a moment later.
    #[error("manifest {repo}@{digest} has a delete in flight whose outcome is not known; tagpin refuses to pin tags to it until that is settled. Repeat the DELETE of this digest (it is safe to repeat), then push again")]
    DeleteInFlight { repo: Repository, digest: Digest },
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
        n => format!(" ({} more tag(s) of this push are pinned too: see detail)", n - 1),
    };
    if first.claimed {
        format!(
            "tag {repo}:{} is reserved for {} by an earlier push whose outcome is not known yet, \
             and tagpin refuses to move it to {attempted}{more}. Re-push {} to complete that push, \
             or push this content under a new tag",
            first.tag, first.pinned, first.pinned
        )
    } else {
        format!(
            "tag {repo}:{} is immutable: it is pinned to {} and tagpin refuses to move it to {attempted}{more}. \
             Push this content under a new tag instead",
            first.tag, first.pinned
        )
    }
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
                "reason": if conflicts[0].claimed { "tag_in_flight" } else { "tag_immutable" },
                "repository": repo.as_str(),
                "tag": conflicts[0].tag.as_str(),
                "pinned_digest": conflicts[0].pinned.as_str(),
                "state": state(&conflicts[0]),
                "attempted_digest": attempted.as_str(),
                "conflicts": conflicts.iter().map(|c| json!({"tag": c.tag.as_str(), "pinned_digest": c.pinned.as_str(), "state": state(c)})).collect::<Vec<_>>(),
            }),
            Self::DeleteInFlight { repo, digest } => json!({
                "reason": "delete_in_flight",
                "repository": repo.as_str(),
                "digest": digest.as_str(),
            }),
            Self::DeleteTag { repo, tag, pinned } => json!({
                "reason": "tag_immutable",
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
}
