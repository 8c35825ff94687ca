"""Many concurrent keep-alive connections: how much memory each costs, plain and TLS.

Each measurement starts its own proxy process, so the figure is not blurred by what earlier
measurements left in the allocator. The connections are opened one after another, each
makes a request and reads its answer, and all of them stay open; once every one is open,
each makes a second request on the same connection, so "served" means served while all
the others were held. RSS is read from /proc before the first connection and with all of
them open.
"""
import os
import re
import socket
import ssl
import subprocess
import time

import bench


def make_certificate(tmp):
    """A self-signed P-256 certificate for 127.0.0.1 (openssl), returned as (cert, key)."""
    cert, key = os.path.join(tmp, "conn-cert.pem"), os.path.join(tmp, "conn-key.pem")
    subprocess.run([bench.tool("openssl"), "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    return cert, key


def rss_kib(pids):
    """Resident memory of `pids` and their children (nginx's workers), in KiB."""
    total, wanted = 0, set(pids)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
        if int(entry) in wanted or ppid in wanted:
            total += bench.proc_status(int(entry), "VmRSS")
    return total


def _exchange(sock, addr):
    """One `GET /v2/` on an open connection; True when the answer is a 200 that keeps the
    connection open."""
    sock.sendall(f"GET /v2/ HTTP/1.1\r\nHost: {addr}\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            return False
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    need = int(m.group(1)) if m else 0
    while len(rest) < need:
        chunk = sock.recv(4096)
        if not chunk:
            return False
        rest += chunk
    return head.startswith(b"HTTP/1.1 200") and not re.search(rb"(?im)^connection:\s*close", head)


def hold(addr, count, pids, cafile=None, deadline_s=300):
    """Open `count` connections to `addr` (TLS when `cafile` is given), keep them all, and
    ask again on each. Returns a dict with the counts and RSS figures."""
    host, port = addr.split(":")
    ctx = ssl.create_default_context(cafile=cafile) if cafile else None
    before = rss_kib(pids)
    socks, first_ok = [], 0
    started = time.monotonic()
    try:
        for _ in range(count):
            if time.monotonic() - started > deadline_s:
                break
            s = socket.create_connection((host, int(port)), timeout=30)
            if ctx is not None:
                s = ctx.wrap_socket(s, server_hostname=host)
            socks.append(s)
            first_ok += _exchange(s, addr)
        time.sleep(0.5)
        held = rss_kib(pids)
        again_ok = sum(_exchange(s, addr) for s in socks)
        after_second = rss_kib(pids)
    finally:
        for s in socks:
            s.close()
    opened = len(socks)
    return {"opened": opened, "first_ok": first_ok, "again_ok": again_ok, "rss_before_kib": before,
            "rss_held_kib": max(held, after_second), "per_conn_kib": (max(held, after_second) - before) / max(1, opened)}


def measure(tagpin_bin, upstream, nginx_addr, nginx_pid, tmp, count):
    """The rows of the connections table: tagpin plain, tagpin TLS, nginx plain."""
    cert, key = make_certificate(tmp)
    rows = {}
    for name, extra, cafile in (("tagpin", [], None), ("tagpin TLS", ["--tls-cert", cert, "--tls-key", key], cert)):
        data = os.path.join(tmp, f"conn-data-{len(rows)}")
        proc = subprocess.Popen(
            [tagpin_bin, "serve", "--listen", "127.0.0.1:0", "--upstream", f"http://{upstream}", "--data-dir", data,
             "--log-format", "json", "--max-connections", str(count), *extra],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "RUST_LOG": "warn,tagpin=info"})
        try:
            m = bench.wait_for_line(proc, r'"addr":"(127\.0\.0\.1:\d+)".*"message":"listening"|'
                                          r'"message":"listening".*"addr":"(127\.0\.0\.1:\d+)"')
            addr = m.group(1) or m.group(2)
            bench.wait_ready(addr, cafile=cafile)
            bench.log(f"{count} keep-alive connections to {name}")
            rows[name] = hold(addr, count, [proc.pid], cafile)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
    bench.log(f"{count} keep-alive connections to nginx")
    rows["nginx"] = hold(nginx_addr, count, [nginx_pid])
    return rows


def report(rows, count):
    lines = [f"{count} concurrent keep-alive connections, each served once on opening and once more with all "
             "of them open (`--max-connections` " + str(count) + "):", "",
             "| proxy | opened | served (first, again) | RSS before | RSS with all open | per connection |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['opened']} | {r['first_ok']}, {r['again_ok']} | {r['rss_before_kib'] / 1024:.1f} MiB "
                     f"| {r['rss_held_kib'] / 1024:.1f} MiB | {r['per_conn_kib']:.1f} KiB |")
    return lines
