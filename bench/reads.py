"""Manifest reads by a pinned tag: the same build with `reads = "pinned"` beside
`reads = "forward"`, on sled and on PostgreSQL, measured in one rotation.

Four tagpin processes: sled pinned, sled forward, PostgreSQL pinned and PostgreSQL
forward, the last two each on a database of its own on the benchmark's private
PostgreSQL server, so that the statements each one issues can be told apart. Each reads
the tag `v1` of a repository of its own.

Warm-up: one GET and one HEAD through every instance (the pinned ones pin the tag on this
first pull, and a store that caches pins caches it there), then the tag is moved in the
upstream behind tagpin's back. A GET and a HEAD through each instance must then show the
pinned instances answering with the pinned digest and the forward ones with the
upstream's new digest, so the load measures what it claims to. A short load at the
highest concurrency then fills the connection pools.

Each point is `ab -k` for a bounded time: requests per second, the tagpin process's CPU
time per request (utime + stime from /proc/<pid>/stat) and, on PostgreSQL, the statements
executed in the instance's database during the load (pg_stat_statements, top level,
utility statements included) per request, apart from the pin cache listener's pings to
itself, which run every 100 ms whatever the load and are given per second. The 1-minute
load average at each point is kept, to say how busy the machine was.

`bench/run.sh --only reads` runs this measurement by itself.
"""
import os
import statistics
import subprocess
import time
import urllib.parse
from hashlib import sha256

import bench

STORES = ("sled", "PostgreSQL")
MODES = ("pinned", "forward")
METHODS = ("HEAD", "GET")


class Instance:
    """One tagpin process and the repository it is read through."""

    def __init__(self, store, reads, proc, addr, db, repo):
        self.store, self.reads, self.proc, self.addr, self.db, self.repo = store, reads, proc, addr, db, repo
        self.name = f"{store} {reads}"
        self.path = f"/v2/{repo}/manifests/v1"


def psql(url, db, sql):
    """Run `sql` in database `db` of the server `url` points at; returns psql's unaligned output."""
    u = urllib.parse.urlsplit(url)
    out = subprocess.run([bench.tool("psql"), "-h", u.hostname, "-p", str(u.port), "-U", u.username, "-X", "-q",
                          "-At", "-v", "ON_ERROR_STOP=1", db, "-c", sql], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"psql {db} -c {sql!r} failed: {out.stderr.strip()}")
    return out.stdout.strip()


# The pin cache's listener pings itself through the database every 100 ms whatever the
# load (src/store/postgres/cache.rs); counted apart from the statements reads issue.
PING = "SELECT pg_notify($1, $2)"


def statements(url, db):
    """Statements executed so far in database `db` (every tracked statement, all users):
    (all but the listener's pings, the listener's pings)."""
    out = psql(url, "postgres", "SELECT COALESCE(sum(s.calls) FILTER (WHERE s.query <> '" + PING + "'), 0), "
                                "COALESCE(sum(s.calls) FILTER (WHERE s.query = '" + PING + "'), 0) "
                                "FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid "
                                f"WHERE d.datname = '{db}'")
    other, pings = out.split("|")
    return int(other), int(pings)


def start(tagpin_bin, upstream, pg_url, tmp):
    """The four instances, in rotation order."""
    psql(pg_url, "postgres", "CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    instances = []
    try:
        for store in STORES:
            for reads in MODES:
                db = None
                if store == "sled":
                    store_args = ["--data-dir", os.path.join(tmp, f"reads-{reads}")]
                else:
                    db = f"reads_{reads}"
                    psql(pg_url, "postgres", f"CREATE DATABASE {db}")
                    store_args = ["--database-url", urllib.parse.urlsplit(pg_url)._replace(path=f"/{db}").geturl()]
                proc, addr = bench.start_tagpin(tagpin_bin, upstream, [*store_args, "--reads", reads])
                repo = f"bench/pinned-read-{store.lower()}-{reads}"
                instances.append(Instance(store, reads, proc, addr, db, repo))
    except BaseException:
        stop(instances)
        raise
    return instances


def stop(instances):
    for i in instances:
        i.proc.terminate()
    for i in instances:
        try:
            i.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            i.proc.kill()


def served(addr, path, method):
    """The digest a manifest read through `addr` was answered with."""
    status, headers, body = bench.request(addr, method, path, headers={"Accept": bench.MANIFEST_TYPE})
    digest = headers.get("Docker-Content-Digest")
    if status != 200 or not digest or (method == "GET" and digest != "sha256:" + sha256(body).hexdigest()):
        raise RuntimeError(f"{method} {addr}{path}: {status}, Docker-Content-Digest {digest}")
    return digest


def warm_up(instances, upstream, seconds, concurrency):
    """Pin each tag by a first pull, move it in the upstream, and check who serves what."""
    config = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
    layer = os.urandom(1024)
    moved = {}
    for i in instances:
        blobs = (bench.push_blob(upstream, i.repo, config), len(config), bench.push_blob(upstream, i.repo, layer),
                 len(layer))
        # Two manifests of the same size: the tag's first content and what it is moved to.
        first, later = (bench.manifest(*blobs, note) for note in ("pinned-a", "pinned-b"))
        put(upstream, i.path, first)
        for method in METHODS:
            served(i.addr, i.path, method)
        put(upstream, i.path, later)
        moved[i.name] = ("sha256:" + sha256(first).hexdigest(), "sha256:" + sha256(later).hexdigest())
    for i in instances:
        want = moved[i.name][0 if i.reads == "pinned" else 1]
        for method in METHODS:
            got = served(i.addr, i.path, method)
            if got != want:
                raise RuntimeError(f"{i.name}: {method} {i.path} was answered with {got}, not {want}: "
                                   f"the measurement would not be of reads = \"{i.reads}\"")
    for i in instances:
        bench.ab(i.addr, i.path, concurrency, seconds, False)


def put(upstream, path, body):
    status, _, text = bench.request(upstream, "PUT", path, body, {"Content-Type": bench.MANIFEST_TYPE})
    if status != 201:
        raise RuntimeError(f"PUT {upstream}{path}: {status} {text[:200]!r}")


def load(instances, pg_url, rounds, seconds, concurrencies):
    """The rotation; returns {(name, method, conc): {"rps": [...], "cpu_us": [...], "statements": [...],
    "pings_per_s": [...]}} and the 1-minute load averages seen at each point."""
    results, loads = {}, []
    for r in range(rounds):
        for conc in concurrencies:
            bench.log(f"round {r + 1}: reads by a pinned tag, pinned and forward, at {conc} connection(s)")
            for method in METHODS:
                for i in bench.rotate(instances, r):
                    loads.append(os.getloadavg()[0])
                    s0 = statements(pg_url, i.db) if i.db else None
                    cpu0 = bench.cpu_seconds([i.proc.pid])
                    t0 = time.monotonic()
                    rps, n = bench.ab(i.addr, i.path, conc, seconds, method == "HEAD")
                    elapsed = time.monotonic() - t0
                    cpu = bench.cpu_seconds([i.proc.pid]) - cpu0
                    s1 = statements(pg_url, i.db) if i.db else None
                    if n == 0:
                        raise RuntimeError(f"ab completed no request against {i.name}")
                    point = results.setdefault((i.name, method, conc),
                                               {"rps": [], "cpu_us": [], "statements": [], "pings_per_s": []})
                    point["rps"].append(rps)
                    point["cpu_us"].append(cpu * 1e6 / n)
                    if i.db:
                        point["statements"].append((s1[0] - s0[0]) / n)
                        point["pings_per_s"].append((s1[1] - s0[1]) / elapsed)
    loads.append(os.getloadavg()[0])
    return results, loads


def measure(tagpin_bin, upstream, pg_url, tmp, rounds, seconds, concurrencies):
    """Start the four instances, warm them up, run the rotation, stop them."""
    instances = start(tagpin_bin, upstream, pg_url, tmp)
    try:
        bench.log("reads by a pinned tag: warm-up (first pull pins, the tag moves upstream)")
        warm_up(instances, upstream, 1, max(concurrencies))
        results, loads = load(instances, pg_url, rounds, seconds, concurrencies)
    finally:
        stop(instances)
    return {"results": results, "rounds": rounds, "seconds": seconds, "concurrencies": concurrencies,
            "loads": loads, "date": time.strftime("%Y-%m-%d")}


def report(measured, alone=None):
    """The section's lines: a paragraph and a table. `alone` is the command when this
    measurement ran by itself (`bench/run.sh --only reads`), which the paragraph names."""
    results = measured["results"]
    loads = measured["loads"]
    pings = [x for (name, _, _), p in results.items() if name.endswith("pinned") for x in p["pings_per_s"]]
    ran = f" (measured by `{alone}` on {measured['date']}, {bench.machine()})" if alone else ""
    lines = [f"Manifest reads by a pinned tag, the same build with `reads = \"pinned\"` (the pinned manifest, "
             f"fetched by digest) and `reads = \"forward\"` (by tag), four processes of their own{ran}: `ab -k` for "
             f"{measured['seconds']} s per point, {measured['rounds']} round(s) in rotating order (medians); the "
             f"1-minute load average was {min(loads):.1f} to {max(loads):.1f} during the points. After "
             "the warm-up the tag was moved in the upstream, and the pinned instances were checked to answer with "
             "the pinned digest and the forward ones with the new one. CPU is the tagpin process's (user + "
             "system, from /proc); statements are those executed in the instance's own database during the load "
             "(pg_stat_statements), per read, apart from the pin cache listener's pings to itself"
             + (f" ({statistics.median(pings):.1f} per second on the pinned instance, whatever the load)"
                if pings else "") + ".", "",
             "| store | request | pinned req/s | forward req/s | pinned / forward | pinned µs/req | forward µs/req "
             "| pinned / forward | statements per read, pinned | statements per read, forward |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for store in STORES:
        for conc in measured["concurrencies"]:
            for method in METHODS:
                p, f = results[(f"{store} pinned", method, conc)], results[(f"{store} forward", method, conc)]
                rp, rf = statistics.median(p["rps"]), statistics.median(f["rps"])
                cp, cf = statistics.median(p["cpu_us"]), statistics.median(f["cpu_us"])
                sp = f"{statistics.median(p['statements']):.3f}" if p["statements"] else "–"
                sf = f"{statistics.median(f['statements']):.3f}" if f["statements"] else "–"
                lines.append(f"| {store} | {method}, {conc} conn | {rp:.0f} | {rf:.0f} | {rp / rf:.2f} | {cp:.1f} "
                             f"| {cf:.1f} | {cp / cf:.2f} | {sp} | {sf} |")
    return lines


def splice(path, lines):
    """Put `lines` in place of this measurement's section (its paragraph and table) in the
    report at `path`; False when the report has no such section."""
    with open(path) as f:
        old = f.read().split("\n")
    starts = [k for k, line in enumerate(old) if line.startswith("Manifest reads by a pinned tag")]
    if not starts:
        return False
    end = starts[0] + 1
    while end < len(old) and not old[end].startswith("|"):
        end += 1
    while end < len(old) and old[end].startswith("|"):
        end += 1
    with open(path, "w") as f:
        f.write("\n".join(old[:starts[0]] + lines + old[end:]))
    return True
