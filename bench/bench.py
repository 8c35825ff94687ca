#!/usr/bin/env python3
"""Side-by-side benchmark of one upstream registry served four ways: directly, through
tagpin (sled store), through tagpin on PostgreSQL (tagpin-pg, manifest requests only) and
through nginx (a plain streaming reverse proxy). The targets are measured in rotating order
within each round, so machine noise hits all of them alike. haproxy, with splicing and in
TCP mode, is the reference for how fast a blob download can be relayed at all. Reads by a
pinned tag with `reads = "pinned"` are measured beside `reads = "forward"` in bench/reads.py;
the history log's cost to a push, its proofs and `tagpin log verify` in bench/log.py; the
manifest PUT rounds, with the durable writes each push waited for, in bench/push.py; and,
apart (`--scale`), the store's size in bench/scale.py.

Run through bench/run.sh, which installs the tools and builds tagpin first."""

import argparse
import glob
import http.client
import json
import os
import platform
import re
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import shutil
import signal
import threading
import time
import urllib.error
import urllib.request
from hashlib import sha256

import connections  # the script's directory is on sys.path; connections uses this module's helpers
import reads  # likewise
import log as history_log  # likewise; `log` here is the progress line printer below
import push  # likewise
import scale  # likewise

TARGETS = ["direct", "tagpin", "tagpin-pg", "nginx"]
# Blob transfers and memory are measured without tagpin-pg: the store is not on that path.
BLOB_TARGETS = ["direct", "tagpin", "nginx"]
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"


def tool(name):
    """A program's path; nginx and haproxy live in /usr/sbin, which not every PATH has."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if not found:
        raise RuntimeError(f"{name} is not installed (bench/run.sh installs it)")
    return found


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def drain(stream, sink=None):
    def run():
        for line in iter(stream.readline, b""):
            if sink is not None:
                sink.append(line.decode(errors="replace"))
    threading.Thread(target=run, daemon=True).start()


def wait_for_line(proc, pattern, timeout=30):
    """Read the process's output until `pattern` matches; returns the match."""
    deadline = time.time() + timeout
    stream = proc.stdout
    while time.time() < deadline:
        line = stream.readline()
        if not line:
            raise RuntimeError(f"process exited before printing {pattern!r}")
        m = re.search(pattern, line.decode(errors="replace"))
        if m:
            drain(stream)
            return m
    raise RuntimeError(f"timed out waiting for {pattern!r}")


def start_registry(tmp):
    cfg = os.path.join(tmp, "registry.yml")
    with open(cfg, "w") as f:
        f.write(f"""version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {tmp}/registry
  delete:
    enabled: true
http:
  addr: 127.0.0.1:0
  secret: bench-secret
""")
    # distribution logs its address at info level; error level hides it, so ask for it.
    proc = subprocess.Popen(["docker-registry", "serve", cfg], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "REGISTRY_LOG_LEVEL": "info"})
    m = wait_for_line(proc, r"listening on (127\.0\.0\.1:\d+)")
    return proc, m.group(1)


def rotate(items, r):
    k = r % len(items)
    return items[k:] + items[:k]


def start_tagpin(binary, upstream, store_args):
    """`store_args` is ["--data-dir", DIR] (sled) or ["--database-url", URL] (PostgreSQL)."""
    proc = subprocess.Popen(
        [binary, "serve", "--listen", "127.0.0.1:0", "--upstream", f"http://{upstream}", *store_args,
         "--log-format", "json", "--max-connections", "20000"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "RUST_LOG": "info"})
    m = wait_for_line(proc, r'"addr":"(127\.0\.0\.1:\d+)".*"message":"listening"|"message":"listening".*"addr":"(127\.0\.0\.1:\d+)"')
    addr = m.group(1) or m.group(2)
    wait_ready(addr)
    return proc, addr


def wait_ready(addr, timeout=120, cafile=None):
    """Until /readyz answers 200: the pin store opens beside the listener. Over TLS when
    `cafile` (the listener's certificate) is given."""
    deadline = time.monotonic() + timeout
    url = f"https://{addr}/readyz" if cafile else f"http://{addr}/readyz"
    ctx = ssl.create_default_context(cafile=cafile) if cafile else None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5, context=ctx) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.05)
    raise RuntimeError(f"tagpin at {addr} did not become ready within {timeout}s")


def pg_bin(name):
    """A PostgreSQL server program (Debian keeps them in /usr/lib/postgresql/VERSION/bin)."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                   key=lambda p: [int(x) for x in re.findall(r"\d+", p.split("/")[4])])
    if found:
        return found[-1]
    return tool(name)


def start_postgres(tmp):
    """A private PostgreSQL server in tmp/pg holding an empty database `bench`; returns the
    postmaster's process and the database URL for tagpin. As root, the server runs as the
    `postgres` system user (PostgreSQL refuses to run as root)."""
    as_root = os.geteuid() == 0
    data = os.path.join(tmp, "pg")
    os.makedirs(data)
    if as_root:
        import pwd
        pw = pwd.getpwnam("postgres")
        os.chmod(tmp, 0o711)  # mkdtemp's 0700 would keep the postgres user out
        os.chown(data, pw.pw_uid, pw.pw_gid)
    os.chmod(data, 0o700)
    runas = ["runuser", "-u", "postgres", "--"] if as_root else []
    init = subprocess.run(runas + [pg_bin("initdb"), "-D", data, "-A", "trust", "-U", "tagpin"],
                          cwd=tmp, capture_output=True, text=True)
    if init.returncode != 0:
        raise RuntimeError(f"initdb failed:\n{init.stdout}{init.stderr}")
    port = free_port()
    logf = open(os.path.join(tmp, "postgres.log"), "wb")
    # Popen(user=...) rather than runuser so that the pid is the postmaster's own.
    # pg_stat_statements counts the statements tagpin issues per read (bench/reads.py).
    if not os.path.exists(os.path.join(os.path.dirname(os.path.dirname(pg_bin("postgres"))), "lib",
                                       "pg_stat_statements.so")):
        raise RuntimeError("PostgreSQL's pg_stat_statements module is missing (Debian ships it in postgresql)")
    proc = subprocess.Popen([pg_bin("postgres"), "-D", data, "-p", str(port), "-k", data,
                             "-c", "listen_addresses=127.0.0.1", "-c", "shared_preload_libraries=pg_stat_statements"],
                            stdout=logf, stderr=subprocess.STDOUT, cwd=tmp, user="postgres" if as_root else None)
    logf.close()
    psql = [tool("psql"), "-h", "127.0.0.1", "-p", str(port), "-U", "tagpin", "-X", "-q", "-v", "ON_ERROR_STOP=1"]
    deadline = time.time() + 30
    while True:
        ready = subprocess.run(psql + ["postgres", "-c", "SELECT 1"], capture_output=True, text=True)
        if ready.returncode == 0:
            break
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            with open(os.path.join(tmp, "postgres.log")) as f:
                raise RuntimeError(f"PostgreSQL did not start:\n{f.read()}{ready.stderr}")
        time.sleep(0.1)
    subprocess.run(psql + ["postgres", "-c", "CREATE DATABASE bench"], check=True, capture_output=True)
    return proc, f"postgres://tagpin@127.0.0.1:{port}/bench"


def start_nginx(upstream, tmp):
    port = free_port()
    root = os.path.join(tmp, "nginx")
    os.makedirs(root, exist_ok=True)
    user = "user root root;\n" if os.geteuid() == 0 else ""
    conf = os.path.join(root, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""{user}worker_processes auto;
error_log {root}/error.log warn;
pid {root}/nginx.pid;
events {{ worker_connections 20000; }}
http {{
  access_log off;
  client_body_temp_path {root}/body;
  proxy_temp_path {root}/proxy;
  fastcgi_temp_path {root}/fastcgi;
  uwsgi_temp_path {root}/uwsgi;
  scgi_temp_path {root}/scgi;
  upstream registry {{ server {upstream}; keepalive 256; }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    client_max_body_size 0;
    location / {{
      proxy_pass http://registry;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $http_host;
      proxy_buffering off;
      proxy_request_buffering off;
    }}
  }}
}}
""")
    return spawn_listening([tool("nginx"), "-p", root, "-c", conf, "-g", "daemon off;"], port)


def spawn_listening(argv, port):
    """Start a server that prints nothing useful and wait until it accepts on `port`."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, f"127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"{argv[0]} did not start listening on port {port}")


def start_haproxy_tcp(upstream, tmp):
    """haproxy in TCP mode with 1 MiB buffers and no splicing: bytes copied through user
    space with no HTTP parsing at all, the limit for a proxy that copies."""
    port = free_port()
    cfg = os.path.join(tmp, "haproxy-tcp.cfg")
    with open(cfg, "w") as f:
        f.write(f"""global
  maxconn 2000
  nosplice
  tune.bufsize 1048576
defaults
  mode tcp
  timeout connect 5s
  timeout client 120s
  timeout server 120s
  no option splice-auto
  no option splice-request
  no option splice-response
frontend f
  bind 127.0.0.1:{port}
  default_backend b
backend b
  server registry {upstream}
""")
    return spawn_listening([tool("haproxy"), "-f", cfg], port)


def start_haproxy(upstream, tmp):
    """haproxy relaying with splice(2), the zero-copy reference for blob downloads."""
    port = free_port()
    cfg = os.path.join(tmp, "haproxy.cfg")
    with open(cfg, "w") as f:
        f.write(f"""global
  maxconn 2000
defaults
  mode http
  timeout connect 5s
  timeout client 120s
  timeout server 120s
  option http-keep-alive
  option splice-response
  option splice-request
frontend f
  bind 127.0.0.1:{port}
  default_backend b
backend b
  server registry {upstream}
""")
    return spawn_listening([tool("haproxy"), "-f", cfg], port)


def request(addr, method, path, body=b"", headers=None):
    host, port = addr.split(":")
    c = http.client.HTTPConnection(host, int(port), timeout=120)
    c.request(method, path, body=body, headers=headers or {})
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, r.msg, data


def location_path(loc):
    i = loc.find("/v2/")
    return loc[i:] if i >= 0 else loc


def push_blob(addr, repo, blob):
    status, h, _ = request(addr, "POST", f"/v2/{repo}/blobs/uploads/")
    assert status == 202, status
    loc = location_path(h["Location"])
    sep = "&" if "?" in loc else "?"
    digest = "sha256:" + sha256(blob).hexdigest()
    status, _, body = request(addr, "PUT", f"{loc}{sep}digest={digest}", blob,
                              {"Content-Type": "application/octet-stream"})
    assert status == 201, (status, body)
    return digest


def manifest(config_digest, config_len, layer_digest, layer_len, note):
    return json.dumps({
        "schemaVersion": 2, "mediaType": MANIFEST_TYPE,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_len},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer_len}],
        "annotations": {"bench": note},
    }, separators=(",", ":")).encode()


def curl_download(addr, path):
    out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{speed_download} %{http_code}",
                          f"http://{addr}{path}"], capture_output=True, text=True, check=True).stdout.split()
    assert out[1] == "200", out
    return float(out[0])


def curl_upload(addr, repo, path_to_file, digest):
    status, h, _ = request(addr, "POST", f"/v2/{repo}/blobs/uploads/")
    assert status == 202, status
    loc = location_path(h["Location"])
    sep = "&" if "?" in loc else "?"
    out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-X", "PUT", "-T", path_to_file, "-H", "Expect:",
                          "-H", "Content-Type: application/octet-stream", "-w", "%{speed_upload} %{http_code}",
                          f"http://{addr}{loc}{sep}digest={digest}"],
                         capture_output=True, text=True, check=True).stdout.split()
    assert out[1] == "201", out
    return float(out[0])


def cpu_seconds(pids):
    """User plus system CPU time consumed so far by `pids` and their child processes'
    live threads (nginx's workers are children of its master)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    wanted = set(pids)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid, ppid = int(entry), int(fields[1])
        if pid in wanted or ppid in wanted:
            total += int(fields[11]) + int(fields[12])
    return total / tick


def ab(addr, path, concurrency, seconds, head):
    args = ["ab", "-q", "-k", "-c", str(concurrency), "-t", str(seconds), "-n", "100000000",
            "-H", f"Accept: {MANIFEST_TYPE}"]
    if head:
        args.append("-i")
    out = subprocess.run(args + [f"http://{addr}{path}"], capture_output=True, text=True).stdout
    rps = re.search(r"Requests per second:\s+([\d.]+)", out)
    complete = re.search(r"Complete requests:\s+(\d+)", out)
    failed = re.search(r"Failed requests:\s+(\d+)", out)
    non2xx = re.search(r"Non-2xx responses:\s+(\d+)", out)
    if not rps or (failed and int(failed.group(1))) or non2xx:
        raise RuntimeError(f"ab against {addr}{path} went wrong:\n{out}")
    return float(rps.group(1)), int(complete.group(1))


def percentile(values, p):
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(round(p / 100 * (len(s) - 1)))))
    return s[k]


def proc_status(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def reset_peak_rss(pid):
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def machine():
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = proc_meminfo_gib()
    return f"{os.cpu_count()} cores ({cpu}), {mem} GiB RAM, Linux {platform.release()}"


def proc_meminfo_gib():
    with open("/proc/meminfo") as f:
        kib = int(f.readline().split()[1])
    return round(kib / 1024 / 1024)


def versions(tagpin_bin):
    def first_line(cmd):
        try:
            p = subprocess.run(cmd, capture_output=True, text=True)
            return (p.stdout or p.stderr).strip().splitlines()[0]
        except (OSError, IndexError):
            return "?"
    return {
        "tagpin": first_line([tagpin_bin, "--version"]),
        "registry": first_line(["docker-registry", "--version"]),
        "nginx": first_line([tool("nginx"), "-v"]),
        "postgres": first_line([pg_bin("postgres"), "--version"]),
        "haproxy": first_line([tool("haproxy"), "-v"]),
        "ab": first_line(["ab", "-V"]),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tagpin", required=True)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes and durations, for CI")
    ap.add_argument("--tagpin-unlogged", help="tagpin built with --features bench-unlogged (bench/log.py)")
    ap.add_argument("--fill-log", help="the fill_log example's binary (bench/log.py)")
    ap.add_argument("--only", choices=["reads", "log", "push"],
                    help="run one measurement by itself: reads = manifest reads by a pinned tag (bench/reads.py), "
                         "log = the history log (bench/log.py), push = manifest PUT latency (bench/push.py)")
    ap.add_argument("--scale", nargs="?", const="", metavar="N[,N...]",
                    help="the store's size instead (bench/scale.py): import, start-up, latency and memory with N "
                         f"pins (default {scale.DEFAULT_SIZE:,}; {scale.SMOKE_SIZE:,} with --smoke)")
    ap.add_argument("--scale-stores", metavar="STORE[,STORE]",
                    help=f"with --scale: which stores ({', '.join(scale.STORES)}, the default both)")
    args = ap.parse_args()
    if args.scale is not None:
        return scale.main(args.tagpin, args.scale, args.smoke, args.scale_stores)
    if args.only in (None, "log") and not (args.tagpin_unlogged and args.fill_log):
        ap.error("--tagpin-unlogged and --fill-log are needed for the history log's measurement")
    log_bins = {"log": args.tagpin, "unlogged": args.tagpin_unlogged, "fill": args.fill_log}

    smoke = args.smoke
    blob_mib = 16 if smoke else 512
    rounds = 1 if smoke else 3
    ab_seconds = 1 if smoke else 5
    puts = 20 if smoke else 300
    conn_count = 200 if smoke else 10000
    out_dir = os.path.join("bench", "out-smoke") if smoke else "bench"
    os.makedirs(out_dir, exist_ok=True)
    if args.only == "reads":
        return only_reads(args.tagpin, smoke, rounds, ab_seconds, out_dir)
    if args.only == "log":
        return only_log(log_bins, smoke, out_dir)
    if args.only == "push":
        return push.only(args.tagpin, smoke, out_dir)

    tmp = tempfile.mkdtemp(prefix="tagpin-bench-")
    procs = []
    pg = None
    try:
        reg, up = start_registry(tmp)
        procs.append(reg)
        tp, tp_addr = start_tagpin(args.tagpin, up, ["--data-dir", os.path.join(tmp, "tagpin-data")])
        procs.append(tp)
        pg, pg_url = start_postgres(tmp)
        tpg, tpg_addr = start_tagpin(args.tagpin, up, ["--database-url", pg_url])
        procs.append(tpg)
        ng, ng_addr = start_nginx(up, tmp)
        procs.append(ng)
        hp, hp_addr = start_haproxy(up, tmp)
        procs.append(hp)
        ht, ht_addr = start_haproxy_tcp(up, tmp)
        procs.append(ht)
        addrs = {"direct": up, "tagpin": tp_addr, "tagpin-pg": tpg_addr, "nginx": ng_addr}
        log(f"registry {up}, tagpin {tp_addr}, tagpin-pg {tpg_addr} ({pg_url}), nginx {ng_addr}; "
            f"blob {blob_mib} MiB, {rounds} round(s)")

        # Test data: one large blob, plus small blobs for manifests in every repository.
        blob_path = os.path.join(tmp, "blob.bin")
        with open(blob_path, "wb") as f:
            chunk = os.urandom(1 << 20)
            for i in range(blob_mib):
                f.write(chunk[i % 7:] + chunk[:i % 7])
        h = sha256()
        with open(blob_path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        big = "sha256:" + h.hexdigest()
        log("uploading the large blob")
        curl_upload(up, "bench/big", blob_path, big)

        small = push.small_blobs(up, TARGETS, ("put", "repush", "read"))
        read_manifest = manifest(*small["bench/read-direct"], "read")
        for t in TARGETS:
            status, _, _ = request(up, "PUT", f"/v2/bench/read-{t}/manifests/v1", read_manifest,
                                   {"Content-Type": MANIFEST_TYPE})
            assert status == 201

        results = {}

        def record(metric, target, value):
            results.setdefault(metric, {}).setdefault(target, []).append(value)

        peak_reset = reset_peak_rss(tp.pid)
        for r in range(rounds):
            order = rotate(BLOB_TARGETS, r)
            log(f"round {r + 1}: large blob download and upload ({', '.join(order)})")
            for t in order:
                record("blob download (MiB/s)", t, curl_download(addrs[t], f"/v2/bench/big/blobs/{big}") / 2**20)
            for key, addr in rotate([("_splice", hp_addr), ("_tcp", ht_addr)], r):
                results.setdefault(key, []).append(curl_download(addr, f"/v2/bench/big/blobs/{big}") / 2**20)
            for t in order:
                record("blob upload (MiB/s)", t, curl_upload(addrs[t], f"bench/up-{t}", blob_path, big) / 2**20)
        peak_transfer_kib = proc_status(tp.pid, "VmHWM")

        for r in range(rounds if not smoke else 1):
            order = rotate(TARGETS, r)
            for conc in (1, 32, 256):
                log(f"round {r + 1}: manifest HEAD/GET at {conc} connections")
                for method in ("HEAD", "GET"):
                    for t in order:
                        pid = {"tagpin": tp.pid, "tagpin-pg": tpg.pid, "nginx": ng.pid}.get(t)
                        cpu0 = cpu_seconds([pid]) if pid else 0
                        # PostgreSQL's backends are the postmaster's children.
                        db0 = cpu_seconds([pg.pid]) if t == "tagpin-pg" else 0
                        rps, n = ab(addrs[t], f"/v2/bench/read-{t}/manifests/v1", conc, ab_seconds, method == "HEAD")
                        record(f"manifest {method} req/s, {conc} conn", t, rps)
                        cpu_row = results.setdefault("_cpu", {}).setdefault((method, conc), {})
                        if pid:
                            cpu = (cpu_seconds([pid]) - cpu0) * 1e6 / max(1, n)
                            cpu_row.setdefault(t, []).append(cpu)
                        if t == "tagpin-pg":
                            db = (cpu_seconds([pg.pid]) - db0) * 1e6 / max(1, n)
                            cpu_row.setdefault("postgres", []).append(db)

        pinned_reads = reads.measure(args.tagpin, up, pg_url, tmp, rounds, ab_seconds, (1,) if smoke else (1, 32))

        push.rounds(addrs, small, TARGETS, rounds, puts, results)

        conns = connections.measure(args.tagpin, up, ng_addr, ng.pid, tmp, conn_count)
        history = history_log.measure(log_bins, up, pg_url, tmp, smoke)
        write_report(out_dir, results, {
            "peak_transfer_kib": peak_transfer_kib, "peak_reset": peak_reset,
            "connections": conns, "conn_count": conn_count, "reads": pinned_reads, "history": history,
        }, smoke, blob_mib, rounds, ab_seconds, puts, args.tagpin)
    finally:
        stop_all(procs, pg, tmp)


def only_reads(tagpin_bin, smoke, rounds, ab_seconds, out_dir):
    """`--only reads`: the registry, the PostgreSQL server and bench/reads.py alone. The
    section takes the place of the old one in out_dir/results.md, or, without one, is
    written to out_dir/reads.md."""
    tmp = tempfile.mkdtemp(prefix="tagpin-bench-")
    procs, pg = [], None
    try:
        reg, up = start_registry(tmp)
        procs.append(reg)
        pg, pg_url = start_postgres(tmp)
        log(f"registry {up}, PostgreSQL {pg_url}; reads by a pinned tag only, {rounds} round(s)")
        measured = reads.measure(tagpin_bin, up, pg_url, tmp, rounds, ab_seconds, (1,) if smoke else (1, 32))
    finally:
        stop_all(procs, pg, tmp)
    lines = reads.report(measured, "bench/run.sh --only reads" + (" --smoke" if smoke else ""))
    print("\n".join(lines))
    results_md = os.path.join(out_dir, "results.md")
    if os.path.exists(results_md) and reads.splice(results_md, lines):
        log(f"replaced the section on reads by a pinned tag in {results_md}")
    else:
        with open(os.path.join(out_dir, "reads.md"), "w") as f:
            f.write("\n".join(lines) + "\n")
        log(f"wrote {os.path.join(out_dir, 'reads.md')}")


def only_log(bins, smoke, out_dir):
    """`--only log`: the registry, the PostgreSQL server and bench/log.py alone. The
    section takes the place of the old one in out_dir/results.md, or is added at its end."""
    tmp = tempfile.mkdtemp(prefix="tagpin-bench-")
    procs, pg = [], None
    try:
        reg, up = start_registry(tmp)
        procs.append(reg)
        pg, pg_url = start_postgres(tmp)
        log(f"registry {up}, PostgreSQL {pg_url}; the history log only")
        measured = history_log.measure(bins, up, pg_url, tmp, smoke)
    finally:
        stop_all(procs, pg, tmp)
    lines = history_log.report(measured, "bench/run.sh --only log" + (" --smoke" if smoke else ""))
    print("\n".join(lines))
    results_md = os.path.join(out_dir, "results.md")
    history_log.splice(results_md, lines)
    log(f"wrote the history log's section in {results_md}")


def stop_all(procs, pg, tmp):
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
    if pg is not None:
        # SIGINT is PostgreSQL's fast shutdown (SIGTERM would wait for sessions to end).
        pg.send_signal(signal.SIGINT)
        try:
            pg.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pg.kill()
            pg.wait()
    subprocess.run(["rm", "-rf", tmp])


def write_report(out_dir, results, mem, smoke, blob_mib, rounds, ab_seconds, puts, tagpin_bin):
    rows = []
    for metric, per in results.items():
        if metric.startswith("_"):
            continue
        med = {t: statistics.median(per[t]) if per.get(t) else None for t in TARGETS}
        rows.append((metric, med, "higher"))
    for key, name in (("_put", "PUT new tag"), ("_repush", "PUT identical re-push")):
        for p in (50, 99):
            med = {t: percentile(results[key][t], p) for t in TARGETS}
            rows.append((f"{name} p{p} (ms)", med, "lower"))

    def ratio(a, b):
        if a is None or b is None:
            return "–"
        return f"{a / b:.2f}" if b else "n/a"

    lines = []
    cmd = "bench/run.sh --smoke" if smoke else "bench/run.sh"
    v = versions(tagpin_bin)
    pv = re.search(r"PostgreSQL\)? (\d+(?:\.\d+)?)", v["postgres"])
    pg_version = f"PostgreSQL {pv.group(1)}" if pv else "PostgreSQL"
    lines.append(f"Produced by `{cmd}` on {time.strftime('%Y-%m-%d')}, {machine()}.")
    lines.append(f"Upstream {v['registry']}; {v['nginx']} with `proxy_buffering off`, `proxy_request_buffering off` "
                 f"and keep-alive to the upstream; {v['tagpin']} (release build, every tag protected, "
                 f"`reads = \"pinned\"`) with its sled store (tagpin) and on a local {pg_version} started by the "
                 f"benchmark (tagpin-pg, default settings with `pg_stat_statements` loaded, manifest requests only; "
                 f"– where not measured). "
                 f"Blob {blob_mib} MiB with curl, {rounds} round(s) in rotating order (medians); manifest reads with "
                 f"`ab -k` for {ab_seconds} s per point; {puts} sequential PUTs per target and round on one "
                 f"keep-alive connection, each pinned durably by tagpin.")
    lines.append("")
    lines.append("| measurement | direct | tagpin | tagpin-pg | nginx | tagpin / direct | tagpin-pg / direct "
                 "| nginx / direct | tagpin / nginx | tagpin-pg / tagpin |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for metric, med, _ in rows:
        d, t, g, n = med["direct"], med["tagpin"], med["tagpin-pg"], med["nginx"]

        def fmt(x):
            if x is None:
                return "–"
            return f"{x:.2f}" if "(ms)" in metric else f"{x:.0f}"
        lines.append(f"| {metric} | {fmt(d)} | {fmt(t)} | {fmt(g)} | {fmt(n)} | {ratio(t, d)} | {ratio(g, d)} | "
                     f"{ratio(n, d)} | {ratio(t, n)} | {ratio(g, t)} |")
    lines.append("")
    per = {(key, t): push.per_push(results, key, t) for key, _, _ in push.KINDS for t in ("tagpin", "tagpin-pg")}
    lines.append(f"Durable writes each timed PUT waited for (`tagpin_store_durable_writes_total`, read before and "
                 f"after each batch): a new tag {per[('_put', 'tagpin')]:.2f} on sled and {per[('_put', 'tagpin-pg')]:.2f} "
                 f"on PostgreSQL, an identical re-push {per[('_repush', 'tagpin')]:.2f} and "
                 f"{per[('_repush', 'tagpin-pg')]:.2f}.")
    lines.append("")
    peak = mem["peak_transfer_kib"] / 1024
    note = "" if mem["peak_reset"] else " (since start: peak RSS could not be reset)"
    splice = statistics.median(results["_splice"])
    tcp = statistics.median(results["_tcp"])
    direct_dl = statistics.median(results["blob download (MiB/s)"]["direct"])
    tagpin_dl = statistics.median(results["blob download (MiB/s)"]["tagpin"])
    lines.append("Proxy CPU time per manifest request (user + system, from /proc, medians): a measure of the "
                 "proxy's own cost that does not depend on how busy the shared machine was. For tagpin-pg the "
                 "PostgreSQL server's CPU per request is given apart (its backends, not counted in the proxy's).")
    lines.append("")
    lines.append("| request | tagpin µs/req | tagpin-pg µs/req | PostgreSQL µs/req | nginx µs/req | tagpin / nginx "
                 "| tagpin-pg / nginx |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|")
    for (method, conc), per in results["_cpu"].items():
        t, n = statistics.median(per["tagpin"]), statistics.median(per["nginx"])
        g, db = statistics.median(per["tagpin-pg"]), statistics.median(per["postgres"])
        lines.append(f"| {method}, {conc} conn | {t:.0f} | {g:.0f} | {db:.0f} | {n:.0f} | {ratio(t, n)} | "
                     f"{ratio(g, n)} |")
    lines.append("")
    hv = re.search(r"version (\d+\.\d+)", v["haproxy"])
    haproxy = f"haproxy {hv.group(1)}" if hv else "haproxy"
    lines.append(f"Reference for the blob download: {haproxy} relaying with kernel splicing (zero-copy) reaches "
                 f"{splice:.0f} MiB/s ({splice / direct_dl:.2f} of direct) in the same rounds.")
    lines.append("")
    lines.append(f"Limit for a copying proxy: {haproxy} in TCP mode (`mode tcp`, `tune.bufsize 1048576`, no "
                 f"splicing) reaches {tcp:.0f} MiB/s ({tcp / direct_dl:.2f} of direct); tagpin reaches "
                 f"{tagpin_dl / tcp:.2f} of it.")
    lines.append("")
    lines.append(f"tagpin peak RSS during the large transfers: **{peak:.1f} MiB**{note}.")
    lines.append("")
    lines.extend(connections.report(mem["connections"], mem["conn_count"]))
    lines.append("")
    lines.extend(reads.report(mem["reads"]))
    lines.append("")
    lines.extend(history_log.report(mem["history"], cmd))
    table = "\n".join(lines) + "\n"
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write(table)
    print(table)
    chart(out_dir, rows)


def chart(out_dir, rows):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 0.45 * len(rows) + 1.5))
    labels = [m for m, _, _ in rows]
    y = range(len(rows))
    series = (("tagpin", "#2b7bb9"), ("tagpin-pg", "#7fb8e0"), ("nginx", "#999999"))
    height = 0.8 / len(series)
    for i, (name, color) in enumerate(series):
        vals = []
        for _, med, better in rows:
            r = med[name] / med["direct"] if med[name] is not None and med["direct"] else 0
            vals.append(r if better == "higher" else (1 / r if r else 0))
        offset = (i - (len(series) - 1) / 2) * height
        ax.barh([p + offset for p in y], vals, height=height, label=name, color=color)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks(list(y))
    ax.set_yticklabels(labels)
    ax.invert_yaxis()
    ax.set_xlabel("relative to the registry alone (1.0 = as fast; higher is better, latency inverted)")
    ax.legend(loc="lower right")
    ax.set_title("tagpin (sled and PostgreSQL stores) and nginx in front of distribution 2.8")
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "chart.png"), dpi=110)


if __name__ == "__main__":
    sys.exit(main())
