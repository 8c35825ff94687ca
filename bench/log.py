"""The history log's cost and speed: what appending to the log adds to a push, how fast
proofs and checkpoints answer from a large log, and what an offline `tagpin log verify`
of a large log takes.

1. Manifest PUT of a new tag, four tagpin processes in one rotation: sled and PostgreSQL
   (each on a database of its own on the benchmark's private server), each built as
   usual (the log) and with `--features bench-unlogged` (the same source whose stores
   append nothing to the log: the reference). Each pushes small manifests under new tags
   to a repository of its own (its blobs pushed to the upstream once, before) on one
   keep-alive connection, a bounded number per round; within a round the four take turns,
   one PUT each per turn, in an order that rotates from turn to turn, so the machine's
   load falls on all four alike. Afterwards every instance's checkpoint is read: the
   logged ones must have one entry per push and the unlogged ones none, so the
   comparison is of what it claims.
2. Proofs and checkpoints: a sled store (and a PostgreSQL database) filled with pins by
   `examples/fill_log.rs` through the store's own interface, 1,000 tags per write, so the
   store appends one entry per pin; tagpin started on it with a signing key made by
   `tagpin log keygen`; then `GET /admin/v1/log/checkpoint`,
   `.../proof/inclusion?index=I&size=N` and `.../proof/consistency?from=M&to=N` (I and M
   random, N the log's size) in turn on one
   keep-alive connection. A few proofs are checked against the checkpoint's root first
   (RFC 9162 section 2.1.3.2 and 2.1.4.2, written here apart from tagpin's code).
3. `tagpin log verify --data-dir DIR` (and `--database-url`) on the filled stores, tagpin
   stopped, against the checkpoint saved from the served one and its verifier key: wall
   time and peak resident memory from `/usr/bin/time -v`.

`bench/run.sh --only log` runs this measurement by itself; its section, "History log",
takes the place of the old one in results.md (or is added at its end).
"""
import base64
import hashlib
import http.client
import json
import os
import random
import re
import subprocess
import tempfile
import time
import urllib.parse

import bench
import reads

STORES = ("sled", "PostgreSQL")
BUILDS = ("log", "unlogged")
# The targets for what the log may add to a new tag's PUT at p50, in ms.
TARGET_MS = {"sled": 0.3, "PostgreSQL": 1.0}
TOKEN = "bench-admin-token-7f3a91c2e5"
# PUTs per instance before the timed ones.
WARM_UP = 10
HEADING = "## History log"


class Instance:
    """One tagpin process, its admin API and the repository it is pushed to."""

    def __init__(self, store, build, proc, addr, admin, repo, db):
        self.store, self.build, self.proc, self.addr, self.admin, self.repo = store, build, proc, addr, admin, repo
        self.db = db
        self.name = f"{store} {build}"


def admin_files(tmp):
    """The server's `name:token` file; made once per run."""
    path = os.path.join(tmp, "admin-tokens")
    if not os.path.exists(path):
        with open(path, "w") as f:
            f.write(f"bench:{TOKEN}\n")
    return path


def signing_key(tagpin_bin, path):
    """A checkpoint signing key made by `tagpin log keygen` at `path`; its verifier key."""
    out = subprocess.run([tagpin_bin, "log", "keygen", "bench.tagpin.example/log", "--out", path],
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"tagpin log keygen failed: {out.stderr.strip()}")
    return out.stdout.strip()


def start_tagpin(binary, upstream, store_args, tmp, extra=()):
    """tagpin with its admin API on; returns the process, the proxy's and the admin API's
    addresses."""
    proc = subprocess.Popen(
        [binary, "serve", "--listen", "127.0.0.1:0", "--upstream", f"http://{upstream}", *store_args,
         "--admin-listen", "127.0.0.1:0", "--admin-token-file", admin_files(tmp), *extra, "--log-format", "json"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "RUST_LOG": "info"})
    addrs, seen = {}, []
    deadline = time.time() + 120
    try:
        while len(addrs) < 2:
            line = proc.stdout.readline()
            if not line or time.time() > deadline:
                raise RuntimeError("tagpin did not start:\n" + "".join(seen[-20:]))
            text = line.decode(errors="replace")
            seen.append(text)
            try:
                event = json.loads(text)
            except ValueError:
                continue
            message = event.get("message") or event.get("fields", {}).get("message")
            addr = event.get("addr") or event.get("fields", {}).get("addr")
            if message in ("listening", "admin API listening") and addr:
                addrs[message] = addr
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    bench.drain(proc.stdout)
    bench.wait_ready(addrs["listening"])
    return proc, addrs["listening"], addrs["admin API listening"]


def stop(procs):
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def database(pg_url, name):
    """A new database `name` on the benchmark's server; its URL."""
    reads.psql(pg_url, "postgres", f"CREATE DATABASE {name}")
    return urllib.parse.urlsplit(pg_url)._replace(path=f"/{name}").geturl()


class Admin:
    """A keep-alive connection to an admin API."""

    def __init__(self, addr):
        host, port = addr.split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=60)
        self.addr = addr

    def get(self, path):
        self.conn.request("GET", path, headers={"Authorization": f"Bearer {TOKEN}"})
        r = self.conn.getresponse()
        body = r.read()
        if r.status != 200:
            raise RuntimeError(f"GET {self.addr}{path}: {r.status} {body[:300]!r}")
        return body

    def checkpoint(self):
        """(size, root, note) of the current checkpoint."""
        note = self.get("/admin/v1/log/checkpoint").decode()
        lines = note.split("\n")
        return int(lines[1]), base64.b64decode(lines[2]), note

    def close(self):
        self.conn.close()


# The PUT rotation.

def start_put_instances(bins, upstream, pg_url, tmp):
    """The four instances, in rotation order: sled with and without the log, then
    PostgreSQL with and without."""
    reads.psql(pg_url, "postgres", "CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    instances = []
    try:
        for store in STORES:
            for build in BUILDS:
                db = None
                if store == "sled":
                    store_args = ["--data-dir", os.path.join(tmp, f"log-put-{build}")]
                else:
                    db = f"log_put_{build}"
                    store_args = ["--database-url", database(pg_url, db)]
                proc, addr, admin = start_tagpin(bins[build], upstream, store_args, tmp)
                repo = f"bench/log-put-{store.lower()}-{build}"
                instances.append(Instance(store, build, proc, addr, admin, repo, db))
    except BaseException:
        stop([i.proc for i in instances])
        raise
    return instances


class Pusher:
    """Pushes of small manifests under new tags through one instance, on one keep-alive
    connection."""

    def __init__(self, instance, blobs):
        host, port = instance.addr.split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=60)
        self.instance, self.blobs, self.count = instance, blobs, 0

    def put(self):
        """One PUT of a new tag; milliseconds."""
        n = self.count
        self.count += 1
        body = bench.manifest(*self.blobs, f"log-{n}")
        t0 = time.perf_counter()
        self.conn.request("PUT", f"/v2/{self.instance.repo}/manifests/n{n}", body=body,
                          headers={"Content-Type": bench.MANIFEST_TYPE})
        r = self.conn.getresponse()
        text = r.read()
        elapsed = (time.perf_counter() - t0) * 1000
        if r.status != 201:
            raise RuntimeError(f"{self.instance.name}: PUT of tag n{n}: {r.status} {text[:300]!r}")
        return elapsed


def put_rotation(instances, upstream, pg_url, rounds, per_round):
    """`rounds` rounds of `per_round` turns; in each turn every instance pushes one new
    tag, in an order that rotates from turn to turn, so the four see the machine's load
    alike down to a few milliseconds. Returns {name: [ms, ...]} (the k-th values of two
    instances from the same turn), {name: CPU µs per PUT}, {name: statements per PUT}
    and the load averages seen."""
    config = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
    layer = os.urandom(1024)
    pushers = []
    for i in instances:
        blobs = (bench.push_blob(upstream, i.repo, config), len(config),
                 bench.push_blob(upstream, i.repo, layer), len(layer))
        pushers.append(Pusher(i, blobs))
    for pusher in pushers:
        # A few pushes first: connection pools, the store's caches and files warm.
        for _ in range(WARM_UP):
            pusher.put()
    times = {i.name: [] for i in instances}
    cpu0 = {i.name: bench.cpu_seconds([i.proc.pid]) for i in instances}
    statements0 = {i.name: reads.statements(pg_url, i.db)[0] for i in instances if i.db}
    loads = []
    for r in range(rounds):
        if r % max(1, rounds // 10) == 0:
            bench.log(f"history log: PUT round {r + 1} of {rounds}, {per_round} new tags per instance")
        loads.append(os.getloadavg()[0])
        for k in range(per_round):
            for pusher in bench.rotate(pushers, r * per_round + k):
                times[pusher.instance.name].append(pusher.put())
    loads.append(os.getloadavg()[0])
    puts = rounds * per_round
    cpu_us = {i.name: (bench.cpu_seconds([i.proc.pid]) - cpu0[i.name]) * 1e6 / puts for i in instances}
    per_put = {i.name: (reads.statements(pg_url, i.db)[0] - statements0[i.name]) / puts for i in instances if i.db}
    for pusher in pushers:
        pusher.conn.close()
    return times, cpu_us, per_put, loads


def check_log_sizes(instances, pushes):
    """Each logged instance's log holds one entry per push it took, each unlogged one's
    none: otherwise the comparison would not be of the log's cost."""
    for i in instances:
        admin = Admin(i.admin)
        size, _, _ = admin.checkpoint()
        admin.close()
        want = pushes if i.build == "log" else 0
        if size != want:
            raise RuntimeError(f"{i.name}: the log holds {size} entries after {pushes} pushes, not {want}: the "
                               "measurement would not compare a build with the log against one without")


# Proofs, checked apart from tagpin's code (RFC 9162 section 2.1).

def leaf_hash(leaf):
    return hashlib.sha256(b"\x00" + leaf).digest()


def node_hash(left, right):
    return hashlib.sha256(b"\x01" + left + right).digest()


def root_from_inclusion(index, size, leaf, proof):
    """RFC 9162 2.1.3.2: the root an inclusion proof of `leaf` at `index` leads to."""
    if index >= size:
        raise ValueError("index beyond the tree")
    fn, sn, r = index, size - 1, leaf_hash(leaf)
    for p in proof:
        if sn == 0:
            raise ValueError("inclusion proof too long")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ValueError("inclusion proof too short")
    return r


def new_root_from_consistency(first, second, proof):
    """RFC 9162 2.1.4.2 for a `first` that is not a power of two (so the proof alone
    holds the old tree's subtrees): the new tree's root the proof leads to."""
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    if not proof:
        raise ValueError("empty consistency proof")
    fr = sr = proof[0]
    for c in proof[1:]:
        if sn == 0:
            raise ValueError("consistency proof too long")
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ValueError("consistency proof too short")
    return sr


def hashes(body):
    return [base64.b64decode(h) for h in json.loads(body)["hashes"]]


def check_proofs(admin, size, root, rng, samples=5):
    """A few inclusion and consistency proofs lead to the checkpoint's root."""
    for _ in range(samples):
        index = rng.randrange(size)
        line = json.loads(admin.get(f"/admin/v1/log/entries?start={index}&end={index + 1}").split(b"\n")[0])
        proof = hashes(admin.get(f"/admin/v1/log/proof/inclusion?index={index}&size={size}"))
        if root_from_inclusion(index, size, base64.b64decode(line["leaf"]), proof) != root:
            raise RuntimeError(f"the inclusion proof of entry {index} does not lead to the checkpoint's root")
        first = rng.randrange(1, size)
        if first & (first - 1) == 0:
            first += 1  # a power of two needs the old root, which is not at hand
        if first < size:
            proof = hashes(admin.get(f"/admin/v1/log/proof/consistency?from={first}&to={size}"))
            if new_root_from_consistency(first, size, proof) != root:
                raise RuntimeError(f"the consistency proof from {first} does not lead to the checkpoint's root")


def timed(admin, path):
    t0 = time.perf_counter()
    admin.get(path)
    return (time.perf_counter() - t0) * 1000


def proof_latencies(admin, size, requests, rng):
    """`requests` of each kind, in turn; {kind: [ms, ...]}."""
    out = {"checkpoint": [], "inclusion": [], "consistency": []}
    kinds = list(out)
    for n in range(requests):
        for kind in bench.rotate(kinds, n):
            if kind == "checkpoint":
                path = "/admin/v1/log/checkpoint"
            elif kind == "inclusion":
                path = f"/admin/v1/log/proof/inclusion?index={rng.randrange(size)}&size={size}"
            else:
                path = f"/admin/v1/log/proof/consistency?from={rng.randrange(1, size + 1)}&to={size}"
            out[kind].append(timed(admin, path))
    return out


def fill(fill_bin, store_args, count):
    """`examples/fill_log.rs`: the store filled with `count` pins; (log size, seconds)."""
    out = subprocess.run([fill_bin, *store_args, "--count", str(count)], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"fill_log {' '.join(store_args)} failed: {out.stderr.strip()}")
    done = json.loads(out.stdout.strip().splitlines()[-1])
    if done["log_size"] != count:
        raise RuntimeError(f"fill_log left a log of {done['log_size']} entries, not {count}")
    return done["log_size"], done["seconds"]


def large_log(bins, upstream, store, store_args, count, requests, tmp):
    """Fill, then proofs and checkpoints through a tagpin with a signing key."""
    bench.log(f"history log: filling a {store} store with {count:,} pins")
    size, fill_s = fill(bins["fill"], store_args, count)
    bench.log(f"history log: {size:,} entries in {fill_s:.1f} s; proofs and checkpoints, {requests} of each")
    key = os.path.join(tmp, f"log-key-{store}")
    verifier = signing_key(bins["log"], key)
    proc, _, admin_addr = start_tagpin(bins["log"], upstream, store_args, tmp, ["--log-signing-key", key])
    loads = [os.getloadavg()[0]]
    try:
        admin = Admin(admin_addr)
        got, root, note = admin.checkpoint()
        if got != size:
            raise RuntimeError(f"{store}: the checkpoint is at size {got}, not the {size} entries filled")
        if f"\n\n\u2014 {verifier.split('+')[0]} " not in note:
            raise RuntimeError(f"{store}: the checkpoint is not signed by the key given:\n{note}")
        saved = os.path.join(tmp, f"log-checkpoint-{store}")
        with open(saved, "w") as f:
            f.write(note)
        rng = random.Random(19)
        check_proofs(admin, size, root, rng)
        lat = proof_latencies(admin, size, requests, rng)
        admin.close()
    finally:
        stop([proc])
    loads.append(os.getloadavg()[0])
    return {"size": size, "fill_s": fill_s, "latency": lat, "loads": loads, "checkpoint": saved,
            "verifier": verifier}


def log_verify(tagpin_bin, store_args, big):
    """`tagpin log verify` offline under /usr/bin/time -v, against the checkpoint saved
    from the served one: (seconds, peak RSS KiB)."""
    size = big["size"]
    code, out, err, seconds, kib = time_v([tagpin_bin, "log", "verify", *store_args, "--checkpoint",
                                           big["checkpoint"], "--verifier-key", big["verifier"], "--json"])
    if code != 0:
        raise RuntimeError(f"tagpin log verify {' '.join(store_args)} exited {code}:\n{out[-2000:]}{err[-2000:]}")
    verdict = json.loads(out)
    if not (verdict.get("ok") and verdict.get("size") == verdict.get("entries") == verdict.get("pins") == size
            and verdict.get("checkpoint") == "consistent"):
        raise RuntimeError(f"tagpin log verify did not check {size} entries and pins against the saved "
                           f"checkpoint: {out[:500]}")
    return seconds, kib


def time_v(argv, stdout=None, limit_s=3600, limit_kib=None):
    """Run `argv` under `/usr/bin/time -v`: (exit status, its standard output unless
    `stdout` (a file) takes it, its standard error, wall seconds, peak RSS in KiB). The
    program is killed, and this raises, past `limit_s` seconds or, when given, a resident
    set above `limit_kib` (looked at twice a second)."""
    with tempfile.TemporaryFile() as err, tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(["/usr/bin/time", "-v", *argv], stdout=stdout or out, stderr=err)
        started = time.monotonic()
        over = None
        while proc.poll() is None:
            try:
                proc.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                pass
            rss = sum(bench.proc_status(int(c), "VmRSS") for c in children(proc.pid))
            if time.monotonic() - started > limit_s:
                over, kind = f"ran longer than {limit_s:.0f} s", "time"
            elif limit_kib and rss > limit_kib:
                over, kind = f"held {rss / 1024:.0f} MiB, more than the {limit_kib / 1024:.0f} MiB allowed", "memory"
            if over:
                for c in children(proc.pid):  # the program, then /usr/bin/time
                    os.kill(int(c), 9)
                proc.kill()
                proc.wait()
                raise Stopped(f"{over}; stopped", kind)
        err.seek(0)
        out.seek(0)
        stderr, stdout_text = err.read().decode(errors="replace"), out.read().decode(errors="replace")
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", stderr)
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (?:(\d+):)?(\d+):([\d.]+)", stderr)
    if not rss or not wall:
        raise RuntimeError(f"/usr/bin/time -v printed no peak memory or wall time:\n{stderr[-1000:]}")
    seconds = int(wall.group(1) or 0) * 3600 + int(wall.group(2)) * 60 + float(wall.group(3))
    # time's own report is the last lines of standard error; the program's come before.
    return proc.returncode, stdout_text, stderr.split("\tCommand being timed:")[0], seconds, int(rss.group(1))


class Stopped(RuntimeError):
    """A program `time_v` stopped at its limit; `kind` is "time" or "memory"."""

    def __init__(self, message, kind):
        super().__init__(message)
        self.kind = kind


def children(pid):
    """The pids of `pid`'s child processes (none once it has exited)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return f.read().split()
    except OSError:
        return []


def measure(bins, upstream, pg_url, tmp, smoke):
    """Everything, in order: the PUT rotation (the four instances stopped after it), then
    the large logs, sled and PostgreSQL, each verified offline after its proofs.
    `bins`: {"log": tagpin, "unlogged": tagpin built with bench-unlogged, "fill": fill_log}."""
    rounds, per_round = (2, 10) if smoke else (40, 50)
    sled_n, pg_n = (10_000, 2_000) if smoke else (1_000_000, 100_000)
    requests = 50 if smoke else 300
    started = time.monotonic()
    instances = start_put_instances(bins, upstream, pg_url, tmp)
    try:
        bench.log(f"history log: PUT of a new tag with and without the log, {rounds} rounds")
        times, cpu_us, per_put, loads = put_rotation(instances, upstream, pg_url, rounds, per_round)
        check_log_sizes(instances, WARM_UP + rounds * per_round)
    finally:
        stop([i.proc for i in instances])
    large = {}
    sled_dir = os.path.join(tmp, "log-fill")
    large["sled"] = large_log(bins, upstream, "sled", ["--data-dir", sled_dir], sled_n, requests, tmp)
    pg_args = ["--database-url", database(pg_url, "log_fill")]
    large["PostgreSQL"] = large_log(bins, upstream, "PostgreSQL", pg_args, pg_n, requests, tmp)
    verify = {}
    for store, args in (("sled", ["--data-dir", sled_dir]), ("PostgreSQL", pg_args)):
        bench.log(f"history log: tagpin log verify on {store}, {large[store]['size']:,} entries")
        verify[store] = log_verify(bins["log"], args, large[store])
    return {"times": times, "cpu_us": cpu_us, "statements": per_put, "loads": loads, "rounds": rounds,
            "per_round": per_round, "large": large, "requests": requests, "verify": verify,
            "date": time.strftime("%Y-%m-%d"), "minutes": (time.monotonic() - started) / 60}


def p(values, q):
    return bench.percentile(values, q)


def interval(with_log, without, resamples=1000):
    """The 95 % bootstrap interval of p50(with_log) - p50(without), the k-th values of
    both (one turn's) drawn together."""
    rng = random.Random(19)
    n = len(with_log)
    diffs = []
    for _ in range(resamples):
        picks = [rng.randrange(n) for _ in range(n)]
        diffs.append(p([with_log[k] for k in picks], 50) - p([without[k] for k in picks], 50))
    return p(diffs, 2.5), p(diffs, 97.5)


def fewer(large):
    """Why the PostgreSQL log is the smaller one, when it is."""
    sled, pg = large["sled"], large["PostgreSQL"]
    if pg["size"] >= sled["size"]:
        return ""
    rate = pg["size"] / pg["fill_s"]
    return (f" On PostgreSQL the log holds {pg['size']:,} entries, not {sled['size']:,}: the fill through the "
            f"store's interface ran at {rate:,.0f} pins per second there, so {sled['size']:,} would take about "
            f"{sled['size'] / rate / 60:.0f} minutes.")


def report(m, command):
    """The section's lines: heading, paragraphs and tables."""
    loads = m["loads"] + [x for big in m["large"].values() for x in big["loads"]]
    lines = [HEADING, "",
             f"Measured by `{command}` on {m['date']}, {bench.machine()}, in {m['minutes']:.1f} minutes; the "
             f"1-minute load average was {min(loads):.1f} to {max(loads):.1f} during the measurements.", "",
             "Manifest PUT of a new tag, tagpin with the log beside the same source built with `--features "
             "bench-unlogged` (its stores append nothing to the log), four processes of their own (sled data dirs; "
             f"a database each on the benchmark's PostgreSQL server): {m['rounds']} rounds of {m['per_round']} "
             "turns; in each turn every instance takes one PUT of a small manifest under a new tag (blobs pushed "
             "once before; each instance on one keep-alive connection), in an order that rotates from turn to "
             "turn, so load on the machine falls on all four alike. The interval is the 95 % bootstrap interval "
             "of the p50 difference (the two instances' PUTs of one turn resampled together); the target counts "
             "as met when the whole interval is at or below it. CPU is the tagpin "
             "process's own (user + system from /proc) over the timed PUTs; statements are those "
             "pg_stat_statements counted in the instance's database, per PUT. After the rotation each logged "
             "instance's checkpoint was checked to hold one entry per push and each unlogged one's to be empty.",
             "",
             "| store | PUTs each | p50 with log / without (ms) | p50 difference (ms) | 95 % interval (ms) "
             "| p50 ratio | p90 with log / without (ms) | CPU per PUT with log / without (µs) "
             "| statements per PUT with log / without | target (p50 difference) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for store in STORES:
        w, wo = m["times"][f"{store} log"], m["times"][f"{store} unlogged"]
        d = p(w, 50) - p(wo, 50)
        low, high = interval(w, wo)
        cpu = f"{m['cpu_us'][f'{store} log']:.0f} / {m['cpu_us'][f'{store} unlogged']:.0f}"
        st = m["statements"]
        sts = f"{st[f'{store} log']:.2f} / {st[f'{store} unlogged']:.2f}" if f"{store} log" in st else "–"
        target = TARGET_MS[store]
        verdict = ("met" if high <= target else "not met" if low > target
                   else "not decided: the interval spans the target")
        lines.append(f"| {store} | {len(w)} | {p(w, 50):.2f} / {p(wo, 50):.2f} | {d:+.2f} | {low:+.2f} to "
                     f"{high:+.2f} | {p(w, 50) / p(wo, 50):.2f} | {p(w, 90):.2f} / {p(wo, 90):.2f} | {cpu} | {sts} "
                     f"| ≤ {target} ms: {verdict} |")
    lines += ["",
              "Checkpoints and proofs from a large log: the store filled by `examples/fill_log.rs` (1,000 pins per "
              "store write, each appending its entry), tagpin started on it with a signing key, then "
              f"{m['requests']} requests of each kind in turn on one keep-alive connection to the admin API "
              "(inclusion of a random entry and consistency from a random size, both to the log's size). A few "
              "proofs of each kind were first checked against the checkpoint's root by an implementation of "
              "RFC 9162's verification written apart from tagpin's code." + fewer(m["large"]), "",
              "| store | entries | fill (s) | checkpoint p50 / p90 (ms) | inclusion proof p50 / p90 (ms) "
              "| consistency proof p50 / p90 (ms) |",
              "|---|---:|---:|---:|---:|---:|"]
    for store in STORES:
        big = m["large"][store]
        lat = big["latency"]
        cells = " | ".join(f"{p(lat[k], 50):.2f} / {p(lat[k], 90):.2f}" for k in ("checkpoint", "inclusion",
                                                                                  "consistency"))
        lines.append(f"| {store} | {big['size']:,} | {big['fill_s']:.0f} | {cells} |")
    lines += ["", "`tagpin log verify` offline (`--data-dir`, `--database-url`; tagpin stopped) on the same stores, "
              "with the checkpoint saved from the served one and its verifier key, under `/usr/bin/time -v`: it "
              "checks the saved checkpoint's signature, recomputes the root from every entry, checks the stored "
              "subtree hashes, and replays the entries against every pin (its answer checked to be ok, with every "
              "entry and pin counted).", "",
              "| store | entries | wall time (s) | peak RSS (MiB) |", "|---|---:|---:|---:|"]
    for store in STORES:
        seconds, kib = m["verify"][store]
        lines.append(f"| {store} | {m['large'][store]['size']:,} | {seconds:.1f} | {kib / 1024:.1f} |")
    return lines


def splice(path, lines, heading=HEADING):
    """Put the section headed `heading` in place of the old one in the report at `path`
    (from its heading to the next heading of its level), or at its end; creates the
    report if needed."""
    old = []
    if os.path.exists(path):
        with open(path) as f:
            old = f.read().rstrip("\n").split("\n")
    if heading in old:
        start = old.index(heading)
        end = next((k for k in range(start + 1, len(old)) if old[k].startswith("## ")), len(old))
        new = old[:start] + lines + ([""] + old[end:] if end < len(old) else [])
    else:
        new = old + ([""] if old else []) + lines
    with open(path, "w") as f:
        f.write("\n".join(new) + "\n")
