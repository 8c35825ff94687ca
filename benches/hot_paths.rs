//! Micro-benchmarks of the pieces on tagpin's hot paths: classifying a request, hashing
//! a manifest, looking up a pin and writing one durably. `cargo bench --bench hot_paths`.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use http::{Method, Uri};
use tagpin::oci::{Digest, Repository, Tag};
use tagpin::route::classify;
use tagpin::store::{Pin, PinSource, PinStore, SledStore};

fn classification(c: &mut Criterion) {
    let put: Uri = "/v2/team/service/api/manifests/1.4.2".parse().unwrap();
    let get: Uri = "/v2/team/service/api/blobs/sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        .parse()
        .unwrap();
    c.bench_function("classify manifest PUT", |b| {
        b.iter(|| classify(&Method::PUT, std::hint::black_box(&put)))
    });
    c.bench_function("classify blob GET", |b| {
        b.iter(|| classify(&Method::GET, std::hint::black_box(&get)))
    });
}

fn hashing(c: &mut Criterion) {
    let manifest = vec![b'{'; 4 * 1024 * 1024];
    let mut g = c.benchmark_group("sha256");
    g.throughput(Throughput::Bytes(manifest.len() as u64));
    g.bench_function("4 MiB manifest", |b| {
        b.iter(|| Digest::sha256_of(std::hint::black_box(&manifest)))
    });
    g.finish();
}

fn store(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let repo = Repository::parse("team/api").unwrap();
    let digest = Digest::sha256_of(b"x");
    for i in 0..10_000 {
        let tag = Tag::parse(&format!("v{i}")).unwrap();
        store
            .pin_if_absent(&repo, &[(tag, Pin::now(digest.clone(), PinSource::Push))])
            .unwrap();
    }
    let hit = Tag::parse("v5000").unwrap();
    c.bench_function("pin lookup (10k pins)", |b| {
        b.iter(|| store.state(&repo, std::hint::black_box(&hit)).unwrap())
    });
    let mut n = 0u64;
    c.bench_function("durable pin write", |b| {
        b.iter_batched(
            || {
                n += 1;
                vec![(
                    Tag::parse(&format!("new{n}")).unwrap(),
                    Pin::now(digest.clone(), PinSource::Push),
                )]
            },
            |pins| store.pin_if_absent(&repo, &pins).unwrap(),
            BatchSize::SmallInput,
        )
    });
    // A new tag's push costs a durable record before forwarding and its settlement after,
    // each a transition of the pinning state machine applied by the store.
    c.bench_function("durable claim + confirm", |b| {
        b.iter_batched(
            || {
                n += 1;
                vec![Tag::parse(&format!("claimed{n}")).unwrap()]
            },
            |tags| {
                let clock = |now| tagpin::pinning::Clock { now, horizon: 900 };
                let input = [tagpin::pinning::PushTag {
                    tag: tags[0].clone(),
                    decided: tagpin::policy::Decided {
                        mode: tagpin::policy::Mode::Immutable,
                        by: tagpin::policy::DecidedBy::Default,
                    },
                    append: None,
                }];
                store
                    .update(&repo, &tags, &mut |now, records| {
                        tagpin::pinning::begin_push(records, &input, &digest, "bench", clock(now));
                    })
                    .unwrap();
                store
                    .update(&repo, &tags, &mut |now, records| {
                        let applied = tagpin::pinning::Outcome::Applied;
                        tagpin::pinning::settle_push(&mut records[0], &digest, "bench", applied, clock(now));
                    })
                    .unwrap()
            },
            BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, classification, hashing, store);
criterion_main!(benches);
