"""Seed and verify with one upstream request in flight beside several: how much the
walk's concurrency (`walk_concurrency`, `?concurrency=N`) buys against the local
registry (Debian's docker-registry).

The registry gets REPOS repositories of TAGS tags each (every tag its own small
manifest, pushed straight to the registry, as tags that predate tagpin are). For each
concurrency, a tagpin with a fresh store seeds them all (`POST /admin/v1/seed`: one tag
list per repository, one HEAD and one durable pin write per tag), then verifies them all
(`GET /admin/v1/verify?format=ndjson`: one HEAD per pin, one tag list per repository);
each run must report every tag, or the script fails. Times are wall-clock, best of
`--rounds`, with the CPU time tagpin and the registry spent: when together they use
every CPU of the machine, the walk is bound by CPU, not by waiting for answers, and more
requests in flight cannot make it faster.

`--delay-ms D` puts a relay between tagpin and the registry that holds each answer for
D ms, as a registry across a network would: then the walk waits for answers, which is
what requests in flight overlap.

    python3 bench/walk.py --tagpin target/release/tagpin [--repos 20] [--tags 150]
        [--concurrency 1,8] [--rounds 1] [--delay-ms 0]

Prints a table and the speed-up of each concurrency over the first one.
"""
import asyncio
import threading
import argparse
import concurrent.futures
import http.client
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402

TOKEN = "walk-bench-admin-token-0123456789"


def populate(registry, repos, tags):
    """REPOS repositories of TAGS tags, each tag a manifest of its own."""
    def one_repo(r):
        repo = f"walk/r{r:03d}"
        config, layer = b"{}", f"layer {r}".encode()
        cd, ld = bench.push_blob(registry, repo, config), bench.push_blob(registry, repo, layer)
        for t in range(tags):
            body = bench.manifest(cd, len(config), ld, len(layer), f"{r}-{t}")
            status, _, data = bench.request(registry, "PUT", f"/v2/{repo}/manifests/v{t}", body,
                                            {"Content-Type": bench.MANIFEST_TYPE})
            assert status == 201, (status, data)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(one_repo, range(repos)))


def delay_relay(target, delay):
    """A TCP relay to `target` that holds every chunk of an answer for `delay` seconds;
    returns its address."""
    loop = asyncio.new_event_loop()
    host, port = target.split(":")

    async def pipe(reader, writer, wait):
        try:
            while data := await reader.read(65536):
                if wait:
                    await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def serve(client_r, client_w):
        up_r, up_w = await asyncio.open_connection(host, int(port))
        await asyncio.gather(pipe(client_r, up_w, 0), pipe(up_r, client_w, delay))

    started = threading.Event()
    addr = []

    def run():
        asyncio.set_event_loop(loop)
        server = loop.run_until_complete(asyncio.start_server(serve, "127.0.0.1", 0))
        addr.append("127.0.0.1:%d" % server.sockets[0].getsockname()[1])
        started.set()
        loop.run_forever()

    threading.Thread(target=run, daemon=True).start()
    started.wait()
    return addr[0]


def start_tagpin(binary, registry, tmp, most):
    tokens = os.path.join(tmp, "admin-tokens")
    with open(tokens, "w") as f:
        f.write(f"bench:{TOKEN}\n")
    data = tempfile.mkdtemp(dir=tmp)
    proc = subprocess.Popen(
        [binary, "serve", "--listen", "127.0.0.1:0", "--upstream", f"http://{registry}", "--data-dir", data,
         "--admin-listen", "127.0.0.1:0", "--admin-token-file", tokens, "--log-format", "json",
         "--walk-concurrency", str(most)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "RUST_LOG": "info"})
    m = bench.wait_for_line(proc, r'"addr":"(127\.0\.0\.1:\d+)".*"message":"admin API listening"'
                                  r'|"message":"admin API listening".*"addr":"(127\.0\.0\.1:\d+)"')
    return proc, m.group(1) or m.group(2)


def last_line(admin, method, path):
    """Send an admin request and read its JSON lines to the end; returns the last one."""
    host, port = admin.split(":")
    c = http.client.HTTPConnection(host, int(port), timeout=3600)
    c.request(method, path, headers={"Authorization": f"Bearer {TOKEN}"})
    r = c.getresponse()
    assert r.status == 200, (r.status, r.read())
    last = None
    for line in r:
        if line.strip():
            last = json.loads(line)
    c.close()
    return last


def timed(admin, method, path):
    start = time.monotonic()
    last = last_line(admin, method, path)
    return time.monotonic() - start, last


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--tagpin", default="target/release/tagpin")
    p.add_argument("--repos", type=int, default=20)
    p.add_argument("--tags", type=int, default=150)
    p.add_argument("--concurrency", default="1,8")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--delay-ms", type=float, default=0)
    a = p.parse_args()
    levels = [int(n) for n in a.concurrency.split(",")]
    total = a.repos * a.tags
    with tempfile.TemporaryDirectory() as tmp:
        reg_proc, registry = bench.start_registry(tmp)
        try:
            bench.log(f"pushing {a.repos} repositories of {a.tags} tags ({total} tags) to the registry")
            populate(registry, a.repos, a.tags)
            upstream = delay_relay(registry, a.delay_ms / 1000) if a.delay_ms else registry
            results = {}
            for level in levels:
                best = None
                for _ in range(a.rounds):
                    proc, admin = start_tagpin(a.tagpin, upstream, tmp, max(levels))
                    pids = [proc.pid, reg_proc.pid]
                    try:
                        cpu = [bench.cpu_seconds([p]) for p in pids]
                        seed_s, done = timed(admin, "POST", f"/admin/v1/seed?concurrency={level}")
                        assert done.get("done", {}).get("adopted") == total, done
                        verify_s, done = timed(admin, "GET", f"/admin/v1/verify?format=ndjson&concurrency={level}")
                        assert done.get("done", {}).get("counts", {}).get("same") == total, done
                        cpu = [bench.cpu_seconds([p]) - c for p, c in zip(pids, cpu)]
                    finally:
                        proc.terminate()
                        proc.wait()
                    if best is None or seed_s + verify_s < best[0] + best[1]:
                        best = (seed_s, verify_s, cpu)
                results[level] = best
                bench.log(f"concurrency {level}: seed {best[0]:.2f} s, verify {best[1]:.2f} s, "
                          f"CPU tagpin {best[2][0]:.1f} s, registry {best[2][1]:.1f} s")
        finally:
            reg_proc.terminate()
            reg_proc.wait()
    base = results[levels[0]]
    where = f", answers held {a.delay_ms:g} ms" if a.delay_ms else ""
    print(f"\n{total} tags in {a.repos} repositories{where}; load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} CPUs")
    print("| concurrency | seed | tags/s | verify | tags/s | seed speed-up | verify speed-up | CPU s tagpin + registry |")
    print("|---|---|---|---|---|---|---|---|")
    for level in levels:
        s, v, cpu = results[level]
        print(f"| {level} | {s:.2f} s | {total / s:.0f} | {v:.2f} s | {total / v:.0f} | "
              f"{base[0] / s:.1f}x | {base[1] / v:.1f}x | {cpu[0]:.1f} + {cpu[1]:.1f} |")


if __name__ == "__main__":
    main()
