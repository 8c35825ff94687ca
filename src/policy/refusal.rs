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
    format!(
        "tag {repo}:{} is immutable: it is pinned to {} and tagpin refuses to move it to {attempted}{more}. \
         Push this content under a new tag instead",
        first.tag, first.pinned
    )
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
                "reason": "tag_immutable",
                "repository": repo.as_str(),
                "tag": conflicts[0].tag.as_str(),
                "pinned_digest": conflicts[0].pinned.as_str(),
                "attempted_digest": attempted.as_str(),
                "conflicts": conflicts.iter().map(|c| json!({"tag": c.tag.as_str(), "pinned_digest": c.pinned.as_str()})).collect::<Vec<_>>(),
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
    }
}
