"""The store's size: what a large pin store costs to import, to open and to serve from,
beside an empty one, on sled and on PostgreSQL.

For each size N (`bench/run.sh --scale N[,N...]`):

1. An export file of N pins over N/100 repositories (`scale/r0000000` ...; tags `t000`
   to `t099`), one `push` history entry each, in `tagpin export`'s JSON-lines format,
   written line by line. A few of the tags, spread over the key space, are pinned to
   manifests the benchmark puts in the upstream registry under the same repository and
   tag, so that reads by those tags can be served; the other digests name nothing.
2. For each store, `tagpin import` offline (`--data-dir DIR`, `--database-url URL` on a
   database of its own on the benchmark's PostgreSQL server) under `/usr/bin/time -v`:
   wall time, pins per second, peak RSS. It is stopped past `IMPORT_LIMIT_S` or
   `IMPORT_LIMIT_MIB`. When the whole file is refused with an error or stopped at the
   memory limit, the store is filled by importing it `PART` lines at a time instead (within
   the time limit in all), and the row gives that time and why; past the time limit the
   row says the size was not measured.
3. `tagpin serve` on the store, on a port chosen beforehand: the time from its start to
   its first HTTP answer on `/v2/` (any status) and to `/readyz` 200 (sled opens its
   store beside the listener; the log line "pin store opened" gives `opened_ms`), and
   its RSS once ready.
4. A tagpin on an empty store (same build, a data dir or database of its own) started
   beside it. Warm-up: every instance reads each upstream-backed tag once (the empty one
   pins it by that first pull) and pushes a few new tags. Then turns, bounded in count and
   time: in each, the two instances, in an order that rotates from turn to turn, take
   one PUT of a small manifest under a new tag (in the same repository name, one in the
   middle of the imported ones) and two GETs by tag of the upstream-backed tags (pinned
   reads: each answer's digest is checked against the pin). The big instance's peak RSS
   is reset before the turns (`/proc/PID/clear_refs`) and read after (VmHWM).
5. `tagpin export` through the big instance's admin API under `/usr/bin/time -v`: time
   and the CLI's peak RSS; its line count must be the store's tag count.
6. The big instance stopped, `tagpin log verify` offline on its store: time and peak
   RSS; its verdict must be ok over at least N entries and pins.

Each run's figures are kept in scale.json beside the report (a size measured again
replaces its rows), and scale.md is written from all of them, with the date and load
of each row; scale.png, latency and memory against the store's size, when the report
holds more than one size.
"""
import hashlib
import http.client
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.parse

import bench
import log as history_log
import reads

DEFAULT_SIZE = 1_000_000
SMOKE_SIZE = 5_000
PER_REPO = 100
STORES = ("sled", "PostgreSQL")
# Beyond these an import is stopped and its size reported as not measured.
IMPORT_LIMIT_S = 10 * 60
IMPORT_LIMIT_MIB = 4 * 1024
# Lines per `tagpin import` when the whole file is refused with an error or stopped at
# the memory limit: the store is then filled in parts, so that serving it can still be
# measured. PostgreSQL's parts are small: its import takes a lock per tag in one
# transaction, and the server's lock table holds some thousands.
PART = {"sled": 50_000, "PostgreSQL": 5_000}
# The whole rotation's time bound, whatever its count.
ROTATION_LIMIT_S = 600
HEADING = "# Store size"
CONFIG = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
LAYER = bytes(range(256)) * 4


def counts(smoke):
    """Turns of the rotation, PUTs before it, upstream-backed tags read."""
    if smoke:
        return {"turns": 20, "warm": 3, "read_tags": 10}
    return {"turns": 400, "warm": 20, "read_tags": 50}


def sizes(arg, smoke):
    if not arg:
        return [SMOKE_SIZE if smoke else DEFAULT_SIZE]
    out = sorted({int(x.replace("_", "")) for x in arg.split(",") if x.strip()})
    if not out or out[0] < 2 * PER_REPO:
        raise SystemExit(f"--scale: sizes of at least {2 * PER_REPO} pins, comma-separated")
    return out


def name(i):
    """The repository and tag of pin number i."""
    return f"scale/r{i // PER_REPO:07d}", f"t{i % PER_REPO:03d}"


def backed(n, k):
    """Indexes of the `k` upstream-backed pins, spread over the key space."""
    return sorted({min(n - 1, (j * n) // k + 37) for j in range(k)})


def fake_digest(i):
    return "sha256:" + hashlib.sha256(b"scale-%d" % i).hexdigest()


def put_upstream(up, wanted):
    """Each (repository, tag) a manifest of its own in the upstream; {(repo, tag): digest}."""
    out = {}
    for repo, tag in wanted:
        blobs = (bench.push_blob(up, repo, CONFIG), len(CONFIG), bench.push_blob(up, repo, LAYER), len(LAYER))
        body = bench.manifest(*blobs, f"{repo}:{tag}")
        reads.put(up, f"/v2/{repo}/manifests/{tag}", body)
        out[(repo, tag)] = "sha256:" + hashlib.sha256(body).hexdigest()
    return out


def export_line(repo, tag, digest, at, request_id):
    """One pin as `tagpin export` writes it (src/store/model.rs `Exported`: a pin made by
    a push, its one history entry; serde's field order, no spaces)."""
    return (f'{{"repository":"{repo}","tag":"{tag}","digest":"{digest}","source":"push","pinned_at":{at},'
            f'"history":[{{"at":{at},"event":"push","digest":"{digest}","request_id":"{request_id}"}}]}}\n')


def generate(path, n, real):
    """The export file, written line by line; seconds taken."""
    t0 = time.monotonic()
    at = int(time.time()) - 86400
    with open(path, "w", buffering=1 << 20) as f:
        for i in range(n):
            repo, tag = name(i)
            f.write(export_line(repo, tag, real.get((repo, tag)) or fake_digest(i), at + i % 86400, f"scale-{i:x}"))
    return time.monotonic() - t0


class Server:
    """A `tagpin serve` with its admin API, on ports chosen before it starts."""

    def __init__(self, binary, up, store_args, tmp):
        self.addr = f"127.0.0.1:{bench.free_port()}"
        self.admin = f"127.0.0.1:{bench.free_port()}"
        self.lines = []
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(
            [binary, "serve", "--listen", self.addr, "--upstream", f"http://{up}", *store_args, "--reads", "pinned",
             "--admin-listen", self.admin, "--admin-token-file", history_log.admin_files(tmp), "--log-format",
             "json", "--max-connections", "20000"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "RUST_LOG": "info"})
        bench.drain(self.proc.stdout, self.lines)

    def first_answer_ms(self, limit_s=120):
        """Milliseconds from the start to the first HTTP answer on /v2/, whatever its status."""
        while time.monotonic() - self.t0 < limit_s:
            if self.proc.poll() is not None:
                raise RuntimeError("tagpin serve exited:\n" + "".join(self.lines[-20:]))
            try:
                bench.request(self.addr, "GET", "/v2/")
                return (time.monotonic() - self.t0) * 1000
            except OSError:
                time.sleep(0.002)
        raise RuntimeError(f"tagpin at {self.addr} did not answer within {limit_s} s")

    def ready_ms(self, limit_s=600):
        """Milliseconds from the start to /readyz 200."""
        while time.monotonic() - self.t0 < limit_s:
            try:
                if bench.request(self.addr, "GET", "/readyz")[0] == 200:
                    return (time.monotonic() - self.t0) * 1000
            except OSError:
                pass
            time.sleep(0.01)
        raise RuntimeError(f"tagpin at {self.addr} was not ready within {limit_s} s")

    def opened_ms(self):
        """`opened_ms` of the log line "pin store opened" (sled only), or None."""
        for line in self.lines:
            if "pin store opened" in line:
                event = json.loads(line)
                return event.get("opened_ms", event.get("fields", {}).get("opened_ms"))
        return None

    def stop(self):
        history_log.stop([self.proc])


class Client:
    """One instance's keep-alive connections: one for PUTs, one for GETs."""

    def __init__(self, label, server, repo, blobs, real):
        self.label, self.server, self.repo, self.blobs, self.real = label, server, repo, blobs, real
        self.tags = sorted(real)
        host, port = server.addr.split(":")
        self.put_conn = http.client.HTTPConnection(host, int(port), timeout=60)
        self.get_conn = http.client.HTTPConnection(host, int(port), timeout=60)
        self.pushed = self.read = 0
        self.put_ms, self.get_ms = [], []

    def put(self, timed=True):
        n = self.pushed
        self.pushed += 1
        body = bench.manifest(*self.blobs, f"{self.label}-{n}")
        t0 = time.perf_counter()
        self.put_conn.request("PUT", f"/v2/{self.repo}/manifests/{self.label}-{n}", body=body,
                              headers={"Content-Type": bench.MANIFEST_TYPE})
        r = self.put_conn.getresponse()
        text = r.read()
        elapsed = (time.perf_counter() - t0) * 1000
        if r.status != 201:
            raise RuntimeError(f"{self.label}: PUT {self.repo}:{self.label}-{n}: {r.status} {text[:300]!r}")
        if timed:
            self.put_ms.append(elapsed)

    def get(self, timed=True):
        repo, tag = self.tags[self.read % len(self.tags)]
        self.read += 1
        t0 = time.perf_counter()
        self.get_conn.request("GET", f"/v2/{repo}/manifests/{tag}", headers={"Accept": bench.MANIFEST_TYPE})
        r = self.get_conn.getresponse()
        r.read()
        elapsed = (time.perf_counter() - t0) * 1000
        digest = r.getheader("Docker-Content-Digest")
        if r.status != 200 or digest != self.real[(repo, tag)]:
            raise RuntimeError(f"{self.label}: GET {repo}:{tag}: {r.status}, {digest}, not {self.real[(repo, tag)]}")
        if timed:
            self.get_ms.append(elapsed)

    def close(self):
        self.put_conn.close()
        self.get_conn.close()


def rotation(big, empty, c):
    """Warm-up, then the turns; returns the number of turns taken."""
    for client in (big, empty):
        for _ in client.tags:
            client.get(timed=False)
        for _ in range(c["warm"]):
            client.put(timed=False)
    started = time.monotonic()
    turns = 0
    while turns < c["turns"] and time.monotonic() - started < ROTATION_LIMIT_S:
        for client in bench.rotate([big, empty], turns):
            client.put()
            client.get()
            client.get()
        turns += 1
    return turns


def store_args(store, tag, tmp, pg_url):
    """A fresh store: a data dir under tmp, or a new database on the benchmark's server."""
    if store == "sled":
        return ["--data-dir", os.path.join(tmp, f"scale-{tag}")]
    return ["--database-url", history_log.database(pg_url, f"scale_{tag}")]


def drop(store, args, pg_url):
    """Give the store's disk back."""
    if store == "sled":
        shutil.rmtree(args[1], ignore_errors=True)
    else:
        db = urllib.parse.urlsplit(args[1]).path.lstrip("/")
        reads.psql(pg_url, "postgres", f"DROP DATABASE IF EXISTS {db}")


class Limit(RuntimeError):
    """An import stopped at IMPORT_LIMIT_S."""


def import_file(tagpin_bin, args, path, n, limit_s=IMPORT_LIMIT_S):
    """`tagpin import` offline: seconds and peak RSS in KiB."""
    try:
        code, out, err, seconds, kib = history_log.time_v([tagpin_bin, "import", *args, path, "--json"],
                                                          limit_s=limit_s, limit_kib=IMPORT_LIMIT_MIB * 1024)
    except history_log.Stopped as e:
        if e.kind == "time":
            raise Limit(f"tagpin import {e}") from None
        raise RuntimeError(f"tagpin import {e}") from None
    if code != 0:
        said = [line for line in err.splitlines() if line.startswith("tagpin:")] or [err.strip()[-300:]]
        raise RuntimeError(f"tagpin import exited {code}: {said[0]}")
    answer = json.loads(out)
    if answer.get("imported") != n:
        raise RuntimeError(f"tagpin import imported {answer.get('imported')} pins, not {n}: {out[:300]}")
    return seconds, kib


def import_parts(tagpin_bin, args, path, n, tmp, part_lines):
    """The file imported `part_lines` lines at a time, within IMPORT_LIMIT_S in all: the summed
    seconds and the largest peak RSS."""
    part = os.path.join(tmp, "scale-part.jsonl")
    total_s, peak, done = 0.0, 0, 0
    with open(path) as f:
        while done < n:
            with open(part, "w") as out:
                lines = 0
                for line in f:
                    out.write(line)
                    lines += 1
                    if lines == part_lines:
                        break
            seconds, kib = import_file(tagpin_bin, args, part, lines, IMPORT_LIMIT_S - total_s)
            total_s, peak, done = total_s + seconds, max(peak, kib), done + lines
    os.remove(part)
    return total_s, peak


def export_admin(tagpin_bin, server, tmp, tags):
    """`tagpin export` through the admin API to a file: seconds and the CLI's peak RSS."""
    token = os.path.join(tmp, "admin-token-cli")
    with open(token, "w") as f:
        f.write(history_log.TOKEN + "\n")
    path = os.path.join(tmp, "scale-exported.jsonl")
    with open(path, "wb") as out:
        code, _, err, seconds, kib = history_log.time_v(
            [tagpin_bin, "export", "--admin-url", f"http://{server.admin}", "--admin-token-file", token], stdout=out)
    if code != 0:
        raise RuntimeError(f"tagpin export exited {code}: {err[-1500:]}")
    with open(path, "rb") as f:
        lines = sum(block.count(b"\n") for block in iter(lambda: f.read(1 << 22), b""))
    os.remove(path)
    if lines != tags:
        raise RuntimeError(f"tagpin export wrote {lines} records; the store holds {tags} tags")
    return seconds, kib


def verify(tagpin_bin, args, n):
    """`tagpin log verify` offline: seconds and peak RSS in KiB."""
    code, out, err, seconds, kib = history_log.time_v([tagpin_bin, "log", "verify", *args, "--json"])
    if code != 0:
        raise RuntimeError(f"tagpin log verify {' '.join(args)} exited {code}: {out[-800:]}{err[-800:]}")
    verdict = json.loads(out)
    if not (verdict.get("ok") and verdict.get("entries", 0) >= n and verdict.get("pins", 0) >= n):
        raise RuntimeError(f"tagpin log verify did not check {n} entries and pins: {out[:500]}")
    return seconds, kib, verdict["entries"], verdict["pins"]


def one_store(tagpin_bin, up, pg_url, tmp, store, n, path, real, c):
    """Steps 2 to 6 for one store and size; the row's figures."""
    row = {"store": store, "size": n, "date": time.strftime("%Y-%m-%d"), "loads": [os.getloadavg()[0]]}
    short = "sled" if store == "sled" else "pg"
    big_args = store_args(store, f"{short}_{n}", tmp, pg_url)
    empty_args = store_args(store, f"{short}_empty_{n}", tmp, pg_url)
    big = empty = None
    try:
        bench.log(f"scale {n:,} on {store}: tagpin import")
        try:
            try:
                row["import_s"], row["import_kib"] = import_file(tagpin_bin, big_args, path, n)
            except Limit:
                raise
            except RuntimeError as e:
                row["import_error"] = " ".join(str(e).split())[:300]
                row["part"] = PART[store]
                bench.log(f"scale {n:,} on {store}: {e}; importing it in parts of {PART[store]:,} lines instead")
                drop(store, big_args, pg_url)
                big_args = store_args(store, f"{short}_{n}", tmp, pg_url)
                row["import_s"], row["import_kib"] = import_parts(tagpin_bin, big_args, path, n, tmp, PART[store])
        except Limit as e:
            row["stopped"] = str(e)
            bench.log(f"scale {n:,} on {store}: {e}")
            return row
        bench.log(f"scale {n:,} on {store}: imported in {row['import_s']:.1f} s; tagpin serve on it")
        big = Server(tagpin_bin, up, big_args, tmp)
        row["first_ms"] = big.first_answer_ms()
        row["ready_ms"] = big.ready_ms()
        row["opened_ms"] = big.opened_ms()
        row["rest_kib"] = bench.proc_status(big.proc.pid, "VmRSS")
        empty = Server(tagpin_bin, up, empty_args, tmp)
        empty.first_answer_ms()
        empty.ready_ms()
        repo = name(n // 2)[0]
        blobs = (bench.push_blob(up, repo, CONFIG), len(CONFIG), bench.push_blob(up, repo, LAYER), len(LAYER))
        clients = [Client(f"{short}{n}-{label}", s, repo, blobs, real) for label, s in (("big", big),
                                                                                       ("empty", empty))]
        row["peak_reset"] = bench.reset_peak_rss(big.proc.pid)
        bench.log(f"scale {n:,} on {store}: PUT and GET, big store beside an empty one, {c['turns']} turns")
        row["turns"] = rotation(*clients, c)
        row["load_kib"] = bench.proc_status(big.proc.pid, "VmHWM")
        row["after_kib"] = bench.proc_status(big.proc.pid, "VmRSS")
        for label, client in zip(("big", "empty"), clients):
            row[f"put_{label}"], row[f"get_{label}"] = client.put_ms, client.get_ms
            client.close()
        empty.stop()
        empty = None
        bench.log(f"scale {n:,} on {store}: tagpin export through the admin API")
        row["export_s"], row["export_kib"] = export_admin(tagpin_bin, big, tmp, n + clients[0].pushed)
        big.stop()
        big = None
        bench.log(f"scale {n:,} on {store}: tagpin log verify offline")
        row["verify_s"], row["verify_kib"], row["entries"], row["pins"] = verify(tagpin_bin, big_args, n)
    finally:
        for s in (big, empty):
            if s:
                s.stop()
        for args in (big_args, empty_args):
            drop(store, args, pg_url)
        row["loads"].append(os.getloadavg()[0])
    return row


def measure(tagpin_bin, ns, smoke, stores=STORES):
    c = counts(smoke)
    tmp = tempfile.mkdtemp(prefix="tagpin-bench-")
    procs, pg = [], None
    rows = []
    try:
        reg, up = bench.start_registry(tmp)
        procs.append(reg)
        pg, pg_url = bench.start_postgres(tmp)
        bench.log(f"registry {up}, PostgreSQL {pg_url}; store sizes {', '.join(f'{n:,}' for n in ns)}")
        for n in ns:
            started = time.monotonic()
            real = put_upstream(up, [name(i) for i in backed(n, c["read_tags"])])
            path = os.path.join(tmp, f"scale-{n}.jsonl")
            gen_s = generate(path, n, real)
            bench.log(f"scale {n:,}: export file of {os.path.getsize(path) / 2**20:.0f} MiB written in {gen_s:.1f} s")
            for store in stores:
                row = one_store(tagpin_bin, up, pg_url, tmp, store, n, path, real, c)
                row["minutes"] = (time.monotonic() - started) / 60
                rows.append(row)
            os.remove(path)
    finally:
        bench.stop_all(procs, pg, tmp)
    return rows


def summarize(row, command):
    """The row as kept in scale.json: percentiles instead of every latency."""
    row["command"], row["machine"] = command, bench.machine()
    for key in ("put_big", "put_empty", "get_big", "get_empty"):
        values = row.pop(key, None)
        if values:
            row[key] = {"n": len(values), "p50": bench.percentile(values, 50), "p99": bench.percentile(values, 99)}
    return row


def merge(path, rows):
    """The rows kept in `path` with these in place of any of the same store and size."""
    kept = []
    if os.path.exists(path):
        with open(path) as f:
            kept = json.load(f)
    new = {(r["store"], r["size"]) for r in rows}
    merged = [r for r in kept if (r["store"], r["size"]) not in new] + rows
    merged.sort(key=lambda r: (STORES.index(r["store"]), r["size"]))
    with open(path, "w") as f:
        json.dump(merged, f, indent=1)
        f.write("\n")
    return merged


def mib(kib):
    return f"{kib / 1024:,.0f}" if kib >= 10 * 1024 else f"{kib / 1024:.1f}"


def pair(row, what, q):
    """A latency percentile as big store / empty store (ratio)."""
    b, e = row[f"{what}_big"][q], row[f"{what}_empty"][q]
    return f"{b:.2f} / {e:.2f} ({b / e:.2f})"


def report(rows):
    """scale.md's lines."""
    lines = [HEADING, "",
             "Written by `bench/scale.py` (`bench/run.sh --scale N[,N...]`; each row says which command measured it, "
             "when, and the 1-minute load average around it: the machine is shared with builds and tests). For "
             "each size: an export file of N pins over N/100 repositories, one history entry each, imported "
             "offline by `tagpin import` (`--data-dir`, `--database-url`) under `/usr/bin/time -v`; `tagpin serve` "
             "started on the store, timed to its first HTTP answer on `/v2/` and to `/readyz` 200, its RSS read "
             "once ready; beside it a tagpin of the same build on an empty store, and turns in rotating order in "
             "which each takes one PUT of a new tag (small manifest, one keep-alive connection) and two GETs by "
             "tag, pinned reads of tags whose manifests the upstream holds, each answer's digest checked against "
             "the pin; the big instance's peak RSS during the turns (VmHWM after a reset); `tagpin export` through "
             "its admin API (the CLI's time and peak RSS, its line count checked against the store's tags); "
             "then, tagpin stopped, `tagpin log verify` offline (its verdict checked ok over every entry and "
             "pin). On PostgreSQL the RSS is tagpin's alone: the server's memory is its own. Latencies are "
             "big store / empty store (ratio), in ms. `/readyz` answers are reused for a second "
             "(src/readiness.rs), so a probe made before the sled store had opened holds the 503 for up to a "
             "second: the store's own opening time is the log line's `opened_ms`, given beside it.", ""]
    machines = sorted({r["machine"] for r in rows})
    lines += [f"Machine: {', '.join(machines)}.", ""]
    for store in STORES:
        mine = [r for r in rows if r["store"] == store]
        if not mine:
            continue
        lines += [f"## {store}", "",
                  "| pins | import (s) | pins/s | import peak RSS (MiB) | first answer (ms) | ready (ms) "
                  "| serve RSS at rest / peak under load (MiB) | PUT new p50 | PUT new p99 | read p50 | read p99 "
                  "| turns | export (s) / CLI RSS (MiB) | log verify (s) / peak RSS (MiB) | measured |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for r in mine:
            when = f"{r['date']}, load {min(r['loads']):.1f}–{max(r['loads']):.1f}, `{r['command']}`"
            if "stopped" in r:
                lines.append(f"| {r['size']:,} | not measured: {r['stopped']} |" + " |" * 12 + f" {when} |")
                continue
            opened = f" (store opened in {r['opened_ms']} ms)" if r.get("opened_ms") is not None else ""
            imported = f"{r['import_s']:.1f}"
            if "import_error" in r:
                imported += f" in parts of {r['part']:,} lines (the whole file: {r['import_error']})"
            peak = mib(r["load_kib"]) + ("" if r["peak_reset"] else " (since start)")
            lines.append(
                f"| {r['size']:,} | {imported} | {r['size'] / r['import_s']:,.0f} | {mib(r['import_kib'])} "
                f"| {r['first_ms']:.0f} | {r['ready_ms']:.0f}{opened} | {mib(r['rest_kib'])} / {peak} "
                f"| {pair(r, 'put', 'p50')} | {pair(r, 'put', 'p99')} | {pair(r, 'get', 'p50')} "
                f"| {pair(r, 'get', 'p99')} | {r['turns']} | {r['export_s']:.1f} / {mib(r['export_kib'])} "
                f"| {r['verify_s']:.1f} / {mib(r['verify_kib'])} | {when} |")
        lines.append("")
    return lines


def chart(path, rows):
    """p50 latency, its big / empty ratio, and memory against the store's size, per store."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (lat, rel, mem) = plt.subplots(1, 3, figsize=(15, 4.8))
    colors = {"sled": "#2b7bb9", "PostgreSQL": "#d9822b"}
    for store in STORES:
        mine = [r for r in rows if r["store"] == store and "stopped" not in r]
        if len(mine) < 2:
            continue
        xs = [r["size"] for r in mine]
        col = colors[store]
        for what, marker, label in (("put", "o", "PUT new tag"), ("get", "s", "read by tag")):
            lat.plot(xs, [r[f"{what}_big"]["p50"] for r in mine], marker + "-", color=col,
                     label=f"{store}: {label}, big store")
            lat.plot(xs, [r[f"{what}_empty"]["p50"] for r in mine], marker + "--", color=col, alpha=0.5,
                     label=f"{store}: {label}, empty store")
            rel.plot(xs, [r[f"{what}_big"]["p50"] / r[f"{what}_empty"]["p50"] for r in mine], marker + "-",
                     color=col, label=f"{store}: {label}")
        whole = [r for r in mine if "part" not in r]
        mem.plot([r["size"] for r in whole], [r["import_kib"] / 1024 for r in whole], "^-", color=col,
                 label=f"{store}: import of the whole file, peak")
        mem.plot(xs, [r["rest_kib"] / 1024 for r in mine], "o-", color=col, label=f"{store}: serve, at rest")
        mem.plot(xs, [r["load_kib"] / 1024 for r in mine], "s--", color=col, label=f"{store}: serve, peak under load")
    rel.axhline(1.0, color="black", linewidth=0.8)
    for ax, title, unit in ((lat, "p50 latency", "ms"), (rel, "p50, big store / empty store", "ratio"),
                            (mem, "resident memory", "MiB (log scale)")):
        ax.set_xscale("log")
        ax.set_xlabel("pins in the store")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    lat.set_ylim(bottom=0)
    rel.set_ylim(0, 2)
    mem.set_yscale("log")
    fig.suptitle("tagpin against the size of its pin store (bench/scale.md)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(tagpin_bin, arg, smoke, stores=None):
    """`bench/run.sh --scale N[,N...] [--scale-stores sled|PostgreSQL] [--smoke]`."""
    ns = sizes(arg, smoke)
    chosen = tuple(x.strip() for x in stores.split(",")) if stores else STORES
    if not chosen or any(x not in STORES for x in chosen):
        raise SystemExit(f"--scale-stores: one or more of {', '.join(STORES)}")
    out_dir = os.path.join("bench", "out-smoke") if smoke else "bench"
    os.makedirs(out_dir, exist_ok=True)
    command = ("bench/run.sh --scale " + ",".join(str(n) for n in ns) + (" --smoke" if smoke else "")
               + (f" --scale-stores {','.join(chosen)}" if stores else ""))
    rows = [summarize(r, command) for r in measure(tagpin_bin, ns, smoke, chosen)]
    merged = merge(os.path.join(out_dir, "scale.json"), rows)
    lines = report(merged)
    with open(os.path.join(out_dir, "scale.md"), "w") as f:
        f.write("\n".join(lines).rstrip("\n") + "\n")
    print("\n".join(lines))
    if len({r["size"] for r in merged if "stopped" not in r}) > 1:
        chart(os.path.join(out_dir, "scale.png"), merged)
        bench.log(f"wrote {os.path.join(out_dir, 'scale.png')}")
    bench.log(f"wrote {os.path.join(out_dir, 'scale.md')}")
