//! A store that is written to while `log verify` reads it: the entries are replayed up
//! to the checkpoint, and the pins are listed after, so a tag bound after the checkpoint
//! (a first push, a release used, an append) shows as a mismatch that is none. Before one
//! is reported, the tag is looked at again: it stands unless its pin now is bound by a
//! later entry, one that is in the log (its inclusion proof checks against the log now)
//! and the log now extends the checked tree (the consistency proof checks). A forged pin
//! has no such entry, so this excuses only what the log itself records.

use super::parse_checkpoint;
use super::replay::Mismatch;
use super::source::Source;
use super::verify::Tree;
use crate::cli::client::CliError;
use crate::log::{merkle, LogEntry, VerifierKey};
use crate::oci::{Repository, Tag};

/// The first of `candidates` (in the order they are named) that stands.
pub async fn first_standing(
    source: &Source,
    tree: Tree,
    key: Option<&VerifierKey>,
    candidates: &[Mismatch],
) -> Result<Option<Mismatch>, CliError> {
    // The log now, looked up once, when a candidate first needs it.
    let mut now: Option<Option<Tree>> = None;
    for m in candidates {
        // An entry is never taken back, and a pin never removed: a tag the log binds has
        // a pin, however late it is listed.
        if matches!(m, Mismatch::Unpinned { .. }) || !bound_later(source, tree, key, m, &mut now).await? {
            return Ok(Some(m.clone()));
        }
    }
    Ok(None)
}

/// Whether the tag of `m` is pinned now by an entry after `tree` that the log holds.
async fn bound_later(
    source: &Source,
    tree: Tree,
    key: Option<&VerifierKey>,
    m: &Mismatch,
    now: &mut Option<Option<Tree>>,
) -> Result<bool, CliError> {
    let Some((r, t)) = m.key().split_once(':') else {
        return Ok(false);
    };
    let (Ok(repo), Ok(tag)) = (Repository::parse(r), Tag::parse(t)) else {
        return Ok(false);
    };
    let Some(latest) = source.latest(&repo, &tag).await? else {
        return Ok(false);
    };
    let Some(index) = latest.log.filter(|i| *i >= tree.size) else {
        return Ok(false);
    };
    let grown = match *now {
        Some(grown) => grown,
        None => *now.insert(grown(source, tree, key).await?),
    };
    let Some(grown) = grown.filter(|g| index < g.size) else {
        return Ok(false);
    };
    let Some(leaf) = source.leaves(index, index + 1).await?.pop() else {
        return Ok(false);
    };
    let binds = LogEntry::parse(&leaf).is_some_and(|e| {
        e.index == index && e.repository == repo && e.tag == tag && e.digest.as_str() == latest.digest
    });
    if !binds {
        return Ok(false);
    }
    let proof = source.inclusion(index, grown.size).await?;
    Ok(merkle::verify_inclusion(
        index,
        grown.size,
        &merkle::leaf_hash(&leaf),
        &proof,
        &grown.root,
    ))
}

/// The log now, when it extends `tree`: signed by `key` when one is given, and the
/// consistency proof from `tree` checked.
async fn grown(source: &Source, tree: Tree, key: Option<&VerifierKey>) -> Result<Option<Tree>, CliError> {
    let now = if source.offline() {
        let head = source.head().await?;
        Tree {
            size: head.size(),
            root: head.root(),
        }
    } else {
        let text = source.served_checkpoint().await?;
        let Ok((note, cp)) = parse_checkpoint(&text) else {
            return Ok(None);
        };
        if key.is_some_and(|k| !k.verifies(&note)) {
            return Ok(None);
        }
        Tree {
            size: cp.size,
            root: cp.root,
        }
    };
    if now.size < tree.size {
        return Ok(None);
    }
    if tree.size > 0 {
        let proof = source.consistency(tree.size, now.size).await?;
        if !merkle::verify_consistency(tree.size, now.size, &tree.root, &now.root, &proof) {
            return Ok(None);
        }
    }
    Ok(Some(now))
}

#[cfg(test)]
mod tests {
    use super::super::testing::digest;
    use super::*;
    use crate::cli::transfer::{offline_store, DatabaseArgs};
    use crate::store::{Pin, PinSource};

    #[tokio::test]
    async fn a_tag_bound_after_the_checked_tree_is_excused_and_a_forged_pin_is_not() {
        let dir = tempfile::tempdir().unwrap();
        drop(crate::store::SledStore::open(dir.path()).unwrap());
        let db = DatabaseArgs {
            database_url: None,
            database_password_file: None,
            tls: Default::default(),
        };
        let store = offline_store(Some(dir.path()), &db, false).unwrap().unwrap();
        let shared = store.shared();
        let repo = Repository::parse("team/app").unwrap();
        let pin = |i: u8| {
            let tag = Tag::parse(&format!("v{i}")).unwrap();
            shared
                .pin_if_absent(&repo, &[(tag, Pin::now(digest(i), PinSource::Push))])
                .unwrap();
        };
        (0..3).for_each(pin);
        let head = shared.log_head().unwrap();
        let tree = Tree {
            size: head.size(),
            root: head.root(),
        };
        // Written after the tree was checked and before the pins were listed.
        (3..5).for_each(pin);
        let source = Source::Store(store);
        let late = Mismatch::Unlogged {
            key: "team/app:v4".into(),
            pinned: digest(4).to_string(),
        };
        let forged = Mismatch::Differs {
            key: "team/app:v1".into(),
            pinned: digest(9).to_string(),
            logged: digest(1).to_string(),
            index: 1,
        };
        let never = Mismatch::Unlogged {
            key: "team/app:v8".into(),
            pinned: digest(8).to_string(),
        };
        let source = &source;
        let first = |c: Vec<Mismatch>| async move { first_standing(source, tree, None, &c).await.unwrap() };
        assert_eq!(first(vec![late.clone()]).await, None);
        assert_eq!(first(vec![late.clone(), forged.clone()]).await, Some(forged));
        assert_eq!(first(vec![late, never.clone()]).await, Some(never));
        // A tree the log now does not extend excuses nothing.
        let other = Tree { root: [0; 32], ..tree };
        let late = Mismatch::Unlogged {
            key: "team/app:v3".into(),
            pinned: digest(3).to_string(),
        };
        assert_eq!(
            first_standing(source, other, None, std::slice::from_ref(&late))
                .await
                .unwrap(),
            Some(late)
        );
    }
}
