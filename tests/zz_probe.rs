mod common;
use common::fake::LaggyRelay;
use common::*;
use std::time::{Duration, Instant};
#[test]
fn probe() {
    let registry = Registry::start();
    let relay = LaggyRelay::start(registry.addr, Duration::from_millis(15));
    let data = tempfile::tempdir().unwrap();
    let base = Image::random(1, 256);
    base.push_blobs(registry.addr, "p", "");
    let t = Tagpin::start(&relay.url(), data.path(), &[]);
    for i in 0..3 {
        let l = base.variant(&format!("l{i}"));
        let s = Instant::now();
        let r = l.put_manifest(t.addr, "p", &format!("l{i}"), "");
        eprintln!("light {} {:?}", r.status, s.elapsed());
        let h = base.heavy(25_000, &format!("h{i}"));
        let s = Instant::now();
        let r = h.put_manifest(t.addr, "p", &format!("h{i}"), "");
        eprintln!("heavy {} {:?}", r.status, s.elapsed());
        let s = Instant::now();
        let r = h.put_manifest(registry.addr, "p", &format!("d{i}"), "");
        eprintln!("heavy direct {} {:?}", r.status, s.elapsed());
    }
}
