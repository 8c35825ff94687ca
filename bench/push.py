"""Manifest PUT latency: a new tag and an identical re-push, sequential on one keep-alive
connection, the targets (the registry directly, tagpin on sled, tagpin on PostgreSQL, and
nginx in the full run) in an order that rotates from round to round. For every tagpin the
store's durable writes (`tagpin_store_durable_writes_total` in its `/metrics`) are read
just before the timed PUTs of each batch and just after, so the report says how many
durable writes each push waited for.

The full benchmark (bench/bench.py) runs these rounds among its other measurements;
`bench/run.sh --only push` runs them alone, with the registry, tagpin on sled and tagpin
on PostgreSQL, and puts its section, "Manifest PUT", in place of the old one in
results.md (or at its end).
"""
import http.client
import os
import tempfile
import time

import bench
import log as history_log

HEADING = "## Manifest PUT"
# (results key, repository kind, re-push): what each target is timed on in a round.
KINDS = (("_put", "put", False), ("_repush", "repush", True))


def put_latencies(addr, repo, blobs, count, round_no, repush, mark=None):
    """Sequential manifest PUTs on one keep-alive connection; returns milliseconds. A
    re-push first pushes its manifest once (untimed) and then `count` times again.
    `mark`, when given, is called just before the first timed PUT and just after the last."""
    host, port = addr.split(":")
    c = http.client.HTTPConnection(host, int(port), timeout=60)
    times = []
    same = bench.manifest(*blobs, f"repush-{round_no}")
    for i in range(count + (1 if repush else 0)):
        body = same if repush else bench.manifest(*blobs, f"r{round_no}-{i}")
        tag = f"same-{round_no}" if repush else f"r{round_no}-t{i}"
        if mark and i == (1 if repush else 0):
            mark()
        t0 = time.perf_counter()
        c.request("PUT", f"/v2/{repo}/manifests/{tag}", body=body, headers={"Content-Type": bench.MANIFEST_TYPE})
        r = c.getresponse()
        r.read()
        elapsed = (time.perf_counter() - t0) * 1000
        assert r.status == 201, (addr, r.status)
        if not (repush and i == 0):
            times.append(elapsed)
    if mark:
        mark()
    c.close()
    return times


def durable_writes(addr):
    """tagpin's `tagpin_store_durable_writes_total`, from its `/metrics`."""
    status, _, body = bench.request(addr, "GET", "/metrics")
    if status != 200:
        raise RuntimeError(f"GET {addr}/metrics: {status}")
    for line in body.decode().splitlines():
        if line.startswith("tagpin_store_durable_writes_total "):
            return int(float(line.split()[1]))
    raise RuntimeError(f"{addr}/metrics has no tagpin_store_durable_writes_total")


def small_blobs(upstream, targets, kinds):
    """A small config and layer blob pushed to the upstream in each repository
    bench/KIND-TARGET; {repository: (config digest, size, layer digest, size)}."""
    config = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
    layer = os.urandom(1024)
    small = {}
    for t in targets:
        for kind in kinds:
            repo = f"bench/{kind}-{t}"
            small[repo] = (bench.push_blob(upstream, repo, config), len(config),
                           bench.push_blob(upstream, repo, layer), len(layer))
    return small


def rounds(addrs, small, targets, count, puts, results):
    """`count` rounds; in each, every target in turn (the order rotating from round to
    round) takes `puts` PUTs of new tags and `puts` identical re-pushes. Latencies go to
    results["_put"] and results["_repush"] ({target: [ms, ...]}), a tagpin's durable
    writes during its timed PUTs to results["_durable"] ({(key, target): [writes, PUTs]})."""
    for r in range(count):
        order = bench.rotate(targets, r)
        bench.log(f"round {r + 1} of {count}: manifest PUT latency ({', '.join(order)})")
        for t in order:
            for key, kind, repush in KINDS:
                marks = []
                mark = (lambda a=addrs[t]: marks.append(durable_writes(a))) if t.startswith("tagpin") else None
                lat = put_latencies(addrs[t], f"bench/{kind}-{t}", small[f"bench/{kind}-{t}"], puts, r, repush, mark)
                results.setdefault(key, {}).setdefault(t, []).extend(lat)
                if marks:
                    seen = results.setdefault("_durable", {}).setdefault((key, t), [0, 0])
                    seen[0] += marks[1] - marks[0]
                    seen[1] += len(lat)


def per_push(results, key, target):
    """Durable writes per timed PUT, or None where not counted."""
    seen = results.get("_durable", {}).get((key, target))
    return seen[0] / seen[1] if seen and seen[1] else None


TARGETS = ("direct", "tagpin", "tagpin-pg")


def measure(tagpin_bin, smoke):
    """The registry, PostgreSQL and a tagpin on each store; the rounds; everything stopped."""
    count, puts = (2, 5) if smoke else (10, 15)
    tmp = tempfile.mkdtemp(prefix="tagpin-bench-")
    procs, pg = [], None
    started = time.monotonic()
    loads = [os.getloadavg()[0]]
    try:
        reg, up = bench.start_registry(tmp)
        procs.append(reg)
        tp, tp_addr = bench.start_tagpin(tagpin_bin, up, ["--data-dir", os.path.join(tmp, "tagpin-data")])
        procs.append(tp)
        pg, pg_url = bench.start_postgres(tmp)
        tpg, tpg_addr = bench.start_tagpin(tagpin_bin, up, ["--database-url", pg_url])
        procs.append(tpg)
        addrs = {"direct": up, "tagpin": tp_addr, "tagpin-pg": tpg_addr}
        bench.log(f"registry {up}, tagpin {tp_addr}, tagpin-pg {tpg_addr}; manifest PUT only, {count} rounds "
                  f"of {puts}")
        small = small_blobs(up, TARGETS, ("put", "repush"))
        results = {}
        rounds(addrs, small, list(TARGETS), count, puts, results)
        loads.append(os.getloadavg()[0])
    finally:
        bench.stop_all(procs, pg, tmp)
    return {"results": results, "rounds": count, "puts": puts, "loads": loads, "date": time.strftime("%Y-%m-%d"),
            "minutes": (time.monotonic() - started) / 60, "tagpin": bench.versions(tagpin_bin)["tagpin"]}


def report(m, command):
    """The section's lines: heading, a paragraph and a table."""
    res = m["results"]

    def ratio(a, b):
        return f"{a / b:.2f}" if a is not None and b else "–"

    lines = [HEADING, "",
             f"Measured by `{command}` on {m['date']}, {bench.machine()}, in {m['minutes']:.1f} minutes; the "
             f"1-minute load average was {min(m['loads']):.1f} to {max(m['loads']):.1f}. {m['tagpin']} (release "
             "build, every tag protected) on its sled store (tagpin) and on the benchmark's own PostgreSQL server "
             f"(tagpin-pg, default settings), beside the registry alone (direct): {m['rounds']} rounds; in each, "
             f"every target in turn takes {m['puts']} sequential PUTs of a small manifest under new tags and "
             f"{m['puts']} identical re-pushes of one manifest (pushed once, untimed, before them), each batch on "
             "one keep-alive connection, in an order that rotates from round to round. Durable writes are "
             "`tagpin_store_durable_writes_total` from the tagpin's `/metrics`, read just before and just after "
             "each timed batch (fsyncs on sled, synchronous commits on PostgreSQL).", "",
             "| measurement | direct | tagpin | tagpin-pg | tagpin / direct | tagpin-pg / direct |",
             "|---|---:|---:|---:|---:|---:|"]
    for key, name in (("_put", "PUT new tag"), ("_repush", "PUT identical re-push")):
        for q in (50, 99):
            d, t, g = (bench.percentile(res[key][x], q) for x in TARGETS)
            lines.append(f"| {name} p{q} (ms) | {d:.2f} | {t:.2f} | {g:.2f} | {ratio(t, d)} | {ratio(g, d)} |")
    for key, name in (("_put", "new tag"), ("_repush", "identical re-push")):
        t, g = per_push(res, key, "tagpin"), per_push(res, key, "tagpin-pg")
        n = len(res[key]["tagpin"])
        lines.append(f"| durable writes per {name} ({n} PUTs) | – | {t:.2f} | {g:.2f} | – | – |")
    return lines


def only(tagpin_bin, smoke, out_dir):
    """`--only push`: measure, then put the section in out_dir/results.md."""
    m = measure(tagpin_bin, smoke)
    lines = report(m, "bench/run.sh --only push" + (" --smoke" if smoke else ""))
    print("\n".join(lines))
    results_md = os.path.join(out_dir, "results.md")
    history_log.splice(results_md, lines, HEADING)
    bench.log(f"wrote the manifest PUT section in {results_md}")
