#!/usr/bin/env python3
"""Instructions per proxied manifest request, tagpin beside nginx, counted by valgrind's
callgrind: a figure that does not depend on how busy the (shared) machine is.

tagpin runs three times: on sled with `--reads pinned` (the pinned manifest, fetched by
digest; the warm-up's first pull pins the tag) and with `--reads forward` (by tag), so
that the cost of a pinned read shows beside a forwarded one, and with `--reads pinned` on
a PostgreSQL server of its own (bench.start_postgres), whose reads after the warm-up are
answered from its pin cache; that instance's counts include its cache listener's pings to
itself (every 100 ms). Every proxy runs one worker under callgrind in
front of the same registry. Each gets a warm-up, then its counters are zeroed
(callgrind_control -z), N requests are sent with `ab -k` on one keep-alive connection, and
the counters are dumped: the instructions of exactly those N requests, user space only
(callgrind counts no kernel work).

    python3 bench/instructions.py --tagpin target/release/tagpin [--requests 2000]

(with CARGO_TARGET_DIR set, the binary is $CARGO_TARGET_DIR/release/tagpin)
"""
import argparse
import glob
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
import bench  # noqa: E402  (shares the registry, push and nginx helpers)


def callgrind(argv, out_dir, name):
    out = os.path.join(out_dir, f"{name}.%p.out")
    return subprocess.Popen(["valgrind", "--tool=callgrind", "--quiet", f"--callgrind-out-file={out}"] + argv,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def total_ir(path):
    """The `totals:` (or summary) line of a callgrind dump."""
    with open(path) as f:
        for line in f:
            if line.startswith(("totals:", "summary:")):
                return int(line.split()[1])
    raise RuntimeError(f"no totals in {path}")


def measure(pid, out_dir, name, addr, path, head, n):
    args = ["ab", "-q", "-k", "-c", "1", "-n", str(n), "-H", f"Accept: {bench.MANIFEST_TYPE}"]
    if head:
        args.append("-i")
    run = lambda: subprocess.run(args + [f"http://{addr}{path}"], capture_output=True, text=True, check=True)
    run()  # warm-up: pools, buffers, lazy statics
    subprocess.run(["callgrind_control", "-z", str(pid)], capture_output=True, check=True)
    out = run().stdout
    if re.search(r"Non-2xx responses:\s+\d+", out) or re.search(r"Failed requests:\s+[1-9]", out):
        raise RuntimeError(out)
    before = set(glob.glob(os.path.join(out_dir, f"{name}.{pid}.out*")))
    subprocess.run(["callgrind_control", "-d", str(pid)], capture_output=True, check=True)
    for _ in range(100):
        new = set(glob.glob(os.path.join(out_dir, f"{name}.{pid}.out*"))) - before
        if new:
            time.sleep(0.3)
            return total_ir(sorted(new)[-1]) / n
        time.sleep(0.1)
    raise RuntimeError("callgrind wrote no dump")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tagpin", required=True)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--keep", help="copy the callgrind dumps into this directory (for callgrind_annotate)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        reg, up = bench.start_registry(tmp)
        cfg = b'{"architecture":"amd64","os":"linux"}'
        layer = os.urandom(1024)
        cd, ld = bench.push_blob(up, "bench", cfg), bench.push_blob(up, "bench", layer)
        m = bench.manifest(cd, len(cfg), ld, len(layer), "instructions")
        status, _, _ = bench.request(up, "PUT", "/v2/bench/manifests/v1", m, {"Content-Type": bench.MANIFEST_TYPE})
        assert status == 201, status
        pg, pg_url = bench.start_postgres(tmp)
        tagpins = {}
        for name, store in (("pinned", ["--data-dir", os.path.join(tmp, "data-pinned"), "--reads", "pinned"]),
                            ("forward", ["--data-dir", os.path.join(tmp, "data-forward"), "--reads", "forward"]),
                            ("pg-pinned", ["--database-url", pg_url, "--reads", "pinned"])):
            port = bench.free_port()
            proc = callgrind([args.tagpin, "serve", "--listen", f"127.0.0.1:{port}", "--upstream", f"http://{up}",
                              *store, "--workers", "1", "--log-format", "json"], tmp, f"tagpin-{name}")
            tagpins[name] = (proc, port)
        ng_root = os.path.join(tmp, "nginx")
        os.makedirs(ng_root)
        ng_port = bench.free_port()
        user = "user root root;\n" if os.geteuid() == 0 else ""
        with open(os.path.join(ng_root, "nginx.conf"), "w") as f:
            f.write(f"""{user}master_process off; daemon off; worker_processes 1;
error_log {ng_root}/error.log warn; pid {ng_root}/nginx.pid;
events {{ worker_connections 1024; }}
http {{ access_log off; client_body_temp_path {ng_root}/body; proxy_temp_path {ng_root}/proxy;
  fastcgi_temp_path {ng_root}/f; uwsgi_temp_path {ng_root}/u; scgi_temp_path {ng_root}/s;
  upstream registry {{ server {up}; keepalive 64; }}
  server {{ listen 127.0.0.1:{ng_port};
    location / {{ proxy_pass http://registry; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_set_header Host $http_host; proxy_buffering off; proxy_request_buffering off; }} }} }}
""")
        ng = callgrind([bench.tool("nginx"), "-p", ng_root, "-c", os.path.join(ng_root, "nginx.conf")], tmp, "nginx")
        targets = {f"tagpin-{reads}": (proc, port) for reads, (proc, port) in tagpins.items()}
        targets["nginx"] = (ng, ng_port)
        for _, p in targets.values():
            for _ in range(600):
                try:
                    bench.request(f"127.0.0.1:{p}", "GET", "/v2/")
                    break
                except OSError:
                    time.sleep(0.1)
        rows = []
        for method in ("HEAD", "GET"):
            ir = {name: measure(proc.pid, tmp, name, f"127.0.0.1:{p}", "/v2/bench/manifests/v1", method == "HEAD",
                                args.requests) for name, (proc, p) in targets.items()}
            rows.append((method, ir["tagpin-pinned"], ir["tagpin-forward"], ir["tagpin-pg-pinned"], ir["nginx"]))
        procs = [proc for proc, _ in targets.values()] + [reg]
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
        pg.send_signal(signal.SIGINT)  # PostgreSQL's fast shutdown
        pg.wait(timeout=60)
        if args.keep:
            for f in glob.glob(os.path.join(tmp, "*.out*")):
                subprocess.run(["cp", f, args.keep])
        print("| request | tagpin pinned | tagpin forward | tagpin-pg pinned | nginx | pinned / forward "
              "| pg pinned / forward | pinned / nginx | forward / nginx |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for method, p, f, g, n in rows:
            print(f"| {method}, 1 conn | {p:,.0f} | {f:,.0f} | {g:,.0f} | {n:,.0f} | {p / f:.2f} | {g / f:.2f} "
                  f"| {p / n:.2f} | {f / n:.2f} |")


if __name__ == "__main__":
    main()
