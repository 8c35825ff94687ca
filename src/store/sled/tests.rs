//! Unit tests of the sled backend.

use std::sync::atomic::Ordering;

use super::*;

thread_local! {
    pub(super) static FAIL_FLUSH: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn d(c: char) -> Digest {
    Digest::parse(&format!("sha256:{}", c.to_string().repeat(64))).unwrap()
}

fn ab() -> (Repository, Tag) {
    (Repository::parse("a/b").unwrap(), Tag::parse("v1").unwrap())
}

#[test]
fn first_pin_wins_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (repo, tag) = ab();
    {
        let s = SledStore::open(dir.path()).unwrap();
        assert_eq!(s.state(&repo, &tag).unwrap(), None);
        let first = Pin::now(d('a'), PinSource::Push);
        let got = s.pin_if_absent(&repo, &[(tag.clone(), first.clone())]).unwrap();
        assert_eq!(got, vec![TagState::Pinned(first.clone())]);
        let second = Pin::now(d('b'), PinSource::Push);
        let got = s.pin_if_absent(&repo, &[(tag.clone(), second)]).unwrap();
        assert_eq!(got[0].digest(), &d('a'));
    }
    let s = SledStore::open(dir.path()).unwrap();
    assert_eq!(s.state(&repo, &tag).unwrap().unwrap().digest(), &d('a'));
    assert_eq!(s.tags_pinned_to(&repo, &d('a')).unwrap(), vec![tag]);
    assert!(s.tags_pinned_to(&repo, &d('b')).unwrap().is_empty());
    s.check().unwrap();
}

#[test]
fn a_claim_holds_the_tag_like_a_pin_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (repo, tag) = ab();
    {
        let s = SledStore::open(dir.path()).unwrap();
        let c = Claim::now(d('a'), "req-1");
        let got = s.claim(&repo, std::slice::from_ref(&tag), &c).unwrap();
        assert_eq!(got, vec![TagState::Claimed(c.clone())]);
        // A second claim and an adoption both find the first claim.
        let got = s
            .claim(&repo, std::slice::from_ref(&tag), &Claim::now(d('b'), "req-2"))
            .unwrap();
        assert_eq!(got, vec![TagState::Claimed(c.clone())]);
        let got = s
            .pin_if_absent(&repo, &[(tag.clone(), Pin::now(d('b'), PinSource::Adopted))])
            .unwrap();
        assert_eq!(got, vec![TagState::Claimed(c)]);
    }
    // A crash (here: close and reopen) keeps the claim: its outcome is still unknown.
    let s = SledStore::open(dir.path()).unwrap();
    assert!(matches!(s.state(&repo, &tag).unwrap(), Some(TagState::Claimed(c)) if c.digest == d('a')));
    assert_eq!(s.tags_pinned_to(&repo, &d('a')).unwrap(), vec![tag]);
}

#[test]
fn confirm_turns_the_claim_into_a_pin() {
    let dir = tempfile::tempdir().unwrap();
    let s = SledStore::open(dir.path()).unwrap();
    let (repo, tag) = ab();
    s.claim(&repo, std::slice::from_ref(&tag), &Claim::now(d('a'), "r"))
        .unwrap();
    let got = s.confirm(&repo, std::slice::from_ref(&tag), &d('a')).unwrap();
    assert!(matches!(&got[0], TagState::Pinned(p) if p.digest == d('a') && p.source == PinSource::Push));
    assert!(matches!(s.state(&repo, &tag).unwrap(), Some(TagState::Pinned(_))));
    assert_eq!(s.claim_count(), 0);
    // Confirming another digest never moves the pin.
    let got = s.confirm(&repo, std::slice::from_ref(&tag), &d('b')).unwrap();
    assert_eq!(got[0].digest(), &d('a'));
    assert_eq!(s.tags_pinned_to(&repo, &d('a')).unwrap(), vec![tag]);
}

#[test]
fn only_the_creating_request_withdraws_a_claim() {
    let dir = tempfile::tempdir().unwrap();
    let s = SledStore::open(dir.path()).unwrap();
    let (repo, tag) = ab();
    s.claim(&repo, std::slice::from_ref(&tag), &Claim::now(d('a'), "creator"))
        .unwrap();
    s.withdraw(&repo, std::slice::from_ref(&tag), "a-retry").unwrap();
    assert!(s.state(&repo, &tag).unwrap().is_some());
    s.withdraw(&repo, std::slice::from_ref(&tag), "creator").unwrap();
    assert_eq!(s.state(&repo, &tag).unwrap(), None);
    assert!(s.tags_pinned_to(&repo, &d('a')).unwrap().is_empty());
}

#[test]
fn deletes_in_flight_are_recorded_until_settled() {
    let dir = tempfile::tempdir().unwrap();
    let (repo, _) = ab();
    {
        let s = SledStore::open(dir.path()).unwrap();
        s.begin_delete(&repo, &d('a'), "r").unwrap();
        assert!(s.delete_in_flight(&repo, &d('a')).unwrap());
        assert!(!s.delete_in_flight(&repo, &d('b')).unwrap());
    }
    let s = SledStore::open(dir.path()).unwrap();
    assert!(s.delete_in_flight(&repo, &d('a')).unwrap());
    s.end_delete(&repo, &d('a'), Some("other")).unwrap();
    assert!(
        s.delete_in_flight(&repo, &d('a')).unwrap(),
        "another request's refusal settles nothing"
    );
    s.end_delete(&repo, &d('a'), Some("r")).unwrap();
    assert!(!s.delete_in_flight(&repo, &d('a')).unwrap());
}

#[test]
fn after_a_failed_flush_nothing_is_answered_from_memory_until_a_flush_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let s = SledStore::open(dir.path()).unwrap();
    let (repo, tag) = ab();
    FAIL_FLUSH.with(|f| f.set(true));
    let pin = Pin::now(d('a'), PinSource::Push);
    assert!(s.pin_if_absent(&repo, &[(tag.clone(), pin)]).is_err());
    FAIL_FLUSH.with(|f| f.set(false));
    // The real disk is fine here, so the next call's flush succeeds and the pin, now
    // durable, may be answered.
    assert_eq!(s.state(&repo, &tag).unwrap().unwrap().digest(), &d('a'));
    FAIL_FLUSH.with(|f| f.set(true));
    assert!(s.check().is_err());
    assert!(s.dirty.load(Ordering::Acquire));
    FAIL_FLUSH.with(|f| f.set(false));
}

#[test]
fn a_claim_whose_flush_fails_is_taken_back() {
    let dir = tempfile::tempdir().unwrap();
    let s = SledStore::open(dir.path()).unwrap();
    let (repo, tag) = ab();
    FAIL_FLUSH.with(|f| f.set(true));
    assert!(s
        .claim(&repo, std::slice::from_ref(&tag), &Claim::now(d('a'), "r"))
        .is_err());
    FAIL_FLUSH.with(|f| f.set(false));
    assert_eq!(s.state(&repo, &tag).unwrap(), None);
}

#[test]
fn references_are_recorded_per_repository_and_holder() {
    let dir = tempfile::tempdir().unwrap();
    let s = SledStore::open(dir.path()).unwrap();
    let (repo, tag) = ab();
    let other = Repository::parse("a").unwrap();
    assert!(!s.has_refs(&repo, &d('1')).unwrap());
    s.protect(
        &repo,
        &d('1'),
        &[d('a'), d('b')],
        Protect {
            durable: true,
            complete: true,
        },
    )
    .unwrap();
    s.protect(
        &repo,
        &d('2'),
        &[d('b')],
        Protect {
            durable: false,
            complete: true,
        },
    )
    .unwrap();
    s.protect(
        &repo,
        &d('9'),
        &[d('e')],
        Protect {
            durable: true,
            complete: false,
        },
    )
    .unwrap();
    assert!(
        !s.has_refs(&repo, &d('9')).unwrap(),
        "incomplete references are asked about again"
    );
    assert_eq!(
        s.referenced_by(&repo, &d('e')).unwrap(),
        vec![d('9')],
        "but what was learned protects already"
    );
    assert!(s.has_refs(&repo, &d('1')).unwrap());
    assert_eq!(s.referenced_by(&repo, &d('a')).unwrap(), vec![d('1')]);
    assert_eq!(s.referenced_by(&repo, &d('b')).unwrap(), vec![d('1'), d('2')]);
    assert!(s.referenced_by(&other, &d('a')).unwrap().is_empty());
    assert!(s.referenced_by(&repo, &d('c')).unwrap().is_empty());
    s.pin_if_absent(&repo, &[(tag, Pin::now(d('1'), PinSource::Push))])
        .unwrap();
    s.claim(&repo, &[Tag::parse("v2").unwrap()], &Claim::now(d('3'), "r"))
        .unwrap();
    s.pin_if_absent(&other, &[(Tag::parse("x").unwrap(), Pin::now(d('4'), PinSource::Push))])
        .unwrap();
    assert_eq!(s.holders(&repo).unwrap(), vec![d('1'), d('3')]);
}

#[test]
fn digest_index_is_per_repository() {
    let dir = tempfile::tempdir().unwrap();
    let s = SledStore::open(dir.path()).unwrap();
    let a = Repository::parse("a").unwrap();
    let ab = Repository::parse("a/b").unwrap();
    let t = Tag::parse("v1").unwrap();
    s.pin_if_absent(&ab, &[(t, Pin::now(d('c'), PinSource::Adopted))])
        .unwrap();
    assert!(s.tags_pinned_to(&a, &d('c')).unwrap().is_empty());
    assert_eq!(s.tags_pinned_to(&ab, &d('c')).unwrap().len(), 1);
}

#[test]
fn a_second_open_of_the_same_dir_is_locked_out() {
    let dir = tempfile::tempdir().unwrap();
    let _first = SledStore::open(dir.path()).unwrap();
    assert!(matches!(SledStore::open(dir.path()), Err(StoreError::Locked(_))));
}

#[test]
fn list_pages_through_pins_and_claims_in_key_order() {
    let dir = tempfile::tempdir().unwrap();
    let s = SledStore::open(dir.path()).unwrap();
    let a = Repository::parse("a").unwrap();
    let ab = Repository::parse("a/b").unwrap();
    for i in 0..5 {
        let tag = Tag::parse(&format!("t{i}")).unwrap();
        if i % 2 == 0 {
            s.pin_if_absent(&a, &[(tag, Pin::now(d('1'), PinSource::Push))])
                .unwrap();
        } else {
            s.claim(&a, &[tag], &Claim::now(d('2'), "r")).unwrap();
        }
    }
    s.pin_if_absent(&ab, &[(Tag::parse("x").unwrap(), Pin::now(d('3'), PinSource::Adopted))])
        .unwrap();
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = s.list(None, after.as_ref(), 2).unwrap();
        if page.is_empty() {
            break;
        }
        after = page.last().map(|(r, t, _)| (r.clone(), t.clone()));
        seen.extend(
            page.into_iter()
                .map(|(r, t, st)| format!("{r}:{t}:{}", matches!(st, TagState::Claimed(_)))),
        );
    }
    assert_eq!(
        seen,
        [
            "a:t0:false",
            "a:t1:true",
            "a:t2:false",
            "a:t3:true",
            "a:t4:false",
            "a/b:x:false"
        ]
    );
    // Filtered by repository: `a` does not include `a/b`.
    assert_eq!(s.list(Some(&a), None, 100).unwrap().len(), 5);
    assert_eq!(s.list(Some(&ab), None, 100).unwrap().len(), 1);
}

#[test]
fn a_release_is_used_once_by_the_advance_it_allows() {
    let dir = tempfile::tempdir().unwrap();
    let s = SledStore::open(dir.path()).unwrap();
    let (repo, tag) = ab();
    s.pin_if_absent(&repo, &[(tag.clone(), Pin::now(d('a'), PinSource::Push))])
        .unwrap();
    let release = Release {
        by: "alice".into(),
        reason: "broken build".into(),
        created_at: 1,
        expires_at: u64::MAX,
    };
    s.set_release(&repo, &tag, &release).unwrap();
    assert_eq!(s.release(&repo, &tag).unwrap(), Some(release));
    let claim = Claim::of_kind(d('b'), "r", ClaimKind::Release);
    s.claim_advance(&repo, &tag, &d('a'), &claim).unwrap();
    let got = s.confirm(&repo, std::slice::from_ref(&tag), &d('b')).unwrap();
    let TagState::Pinned(pin) = &got[0] else {
        panic!("{got:?}")
    };
    assert_eq!(pin.digest, d('b'));
    let last = pin.history.last().unwrap();
    assert_eq!(
        (last.event, last.by.as_deref(), last.reason.as_deref()),
        (HistoryEvent::Released, Some("alice"), Some("broken build"))
    );
    assert_eq!(last.from, Some(d('a')));
    assert_eq!(s.release(&repo, &tag).unwrap(), None, "used up");
    assert_eq!(s.tags_pinned_to(&repo, &d('a')).unwrap(), Vec::<Tag>::new());
    assert_eq!(s.tags_pinned_to(&repo, &d('b')).unwrap(), vec![tag]);
}

#[test]
fn an_ended_release_is_recorded_in_the_history() {
    let dir = tempfile::tempdir().unwrap();
    let s = SledStore::open(dir.path()).unwrap();
    let (repo, tag) = ab();
    s.pin_if_absent(&repo, &[(tag.clone(), Pin::now(d('a'), PinSource::Push))])
        .unwrap();
    let release = Release {
        by: "bob".into(),
        reason: "r".into(),
        created_at: 1,
        expires_at: 2,
    };
    s.set_release(&repo, &tag, &release).unwrap();
    assert_eq!(
        s.end_release(&repo, &tag, HistoryEvent::ReleaseExpired, None).unwrap(),
        Some(release)
    );
    assert_eq!(
        s.end_release(&repo, &tag, HistoryEvent::ReleaseExpired, None).unwrap(),
        None
    );
    let Some(TagState::Pinned(pin)) = s.state(&repo, &tag).unwrap() else {
        panic!()
    };
    assert_eq!(pin.history.last().unwrap().event, HistoryEvent::ReleaseExpired);
    assert_eq!(pin.digest, d('a'));
}

#[test]
fn an_import_that_conflicts_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = SledStore::open(dir.path()).unwrap();
    let (repo, tag) = ab();
    s.pin_if_absent(&repo, &[(tag.clone(), Pin::now(d('a'), PinSource::Push))])
        .unwrap();
    let rec = |t: &str, digest: char| {
        Exported::of(
            repo.clone(),
            Tag::parse(t).unwrap(),
            &Pin::now(d(digest), PinSource::Push),
        )
    };
    let out = s.import(&[rec("v1", 'a'), rec("v2", 'b')]).unwrap();
    assert_eq!((out.imported, out.unchanged, out.conflicts.len()), (1, 1, 0));
    let out = s.import(&[rec("v3", 'c'), rec("v1", 'f')]).unwrap();
    assert_eq!(out.conflicts.len(), 1, "{out:?}");
    assert_eq!(out.imported, 0);
    assert_eq!(
        s.state(&repo, &Tag::parse("v3").unwrap()).unwrap(),
        None,
        "nothing written"
    );
    assert_eq!(s.tags_pinned_to(&repo, &d('b')).unwrap().len(), 1);
}

#[test]
fn claims_travel_through_export_and_import() {
    let from = tempfile::tempdir().unwrap();
    let s = SledStore::open(from.path()).unwrap();
    let (repo, tag) = ab();
    let free = Tag::parse("free").unwrap();
    s.pin_if_absent(&repo, &[(tag.clone(), Pin::now(d('a'), PinSource::Push))])
        .unwrap();
    s.claim_advance(&repo, &tag, &d('a'), &Claim::of_kind(d('b'), "r1", ClaimKind::Append))
        .unwrap();
    s.claim(&repo, std::slice::from_ref(&free), &Claim::now(d('c'), "r2"))
        .unwrap();
    let records: Vec<Exported> = s
        .list(None, None, 10)
        .unwrap()
        .into_iter()
        .map(|(r, t, st)| Exported::from_state(r, t, &st))
        .collect();
    // Through JSON, as `tagpin export | tagpin import` carries them.
    let text: Vec<String> = records.iter().map(|r| serde_json::to_string(r).unwrap()).collect();
    let back: Vec<Exported> = text.iter().map(|l| serde_json::from_str(l).unwrap()).collect();
    let to = tempfile::tempdir().unwrap();
    let t = SledStore::open(to.path()).unwrap();
    assert_eq!(t.import(&back).unwrap().imported, 2);
    assert_eq!(
        t.state(&repo, &tag).unwrap(),
        s.state(&repo, &tag).unwrap(),
        "an advance in flight stays in flight"
    );
    assert!(matches!(t.state(&repo, &free).unwrap(), Some(TagState::Claimed(c)) if c.digest == d('c')));
    assert_eq!(t.tags_pinned_to(&repo, &d('c')).unwrap(), vec![free]);
    // Importing the same records again changes nothing.
    assert_eq!(t.import(&back).unwrap().unchanged, 2);
}
