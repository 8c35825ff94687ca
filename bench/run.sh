#!/usr/bin/env bash
# Side-by-side benchmark: the upstream registry directly, through tagpin, through tagpin on
# PostgreSQL (a private server the benchmark starts, for the manifest measurements), through nginx.
#   bench/run.sh            full run (512 MiB blob, 5 s per load point); writes
#                           bench/results.md and bench/chart.png
# Manifest reads by a pinned tag are also measured with reads = "pinned" beside the same
# build with reads = "forward", on sled and on PostgreSQL (bench/reads.py), with the
# statements each read costs the database.
# haproxy with kernel splicing (zero-copy relaying) and haproxy in TCP mode without splicing
# are measured on the blob download only, as references for how fast any proxy (and any
# proxy that copies) can relay a blob on this machine.
#   bench/run.sh --smoke    a few seconds per measurement, small sizes; writes to
#                           bench/out-smoke/ (what CI runs so the benchmark cannot rot)
#   bench/run.sh --only reads [--smoke]
#                           the reads by a pinned tag alone (about 5 minutes, 20 s with
#                           --smoke); its section takes the place of the old one in
#                           results.md (bench/ or bench/out-smoke/), or goes to reads.md
#                           there when results.md has none
set -euo pipefail
cd "$(dirname "$0")/.."

declare -A pkg_for=([docker-registry]=docker-registry [nginx]=nginx-light [ab]=apache2-utils [curl]=curl [haproxy]=haproxy [openssl]=openssl)
missing=()
for bin in "${!pkg_for[@]}"; do
  command -v "$bin" >/dev/null 2>&1 || [ -x "/usr/sbin/$bin" ] || missing+=("${pkg_for[$bin]}")
done
# Debian keeps initdb and postgres out of PATH, in /usr/lib/postgresql/VERSION/bin.
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null && command -v psql >/dev/null 2>&1 || missing+=(postgresql)
if [ "${#missing[@]}" -gt 0 ]; then
  sudo_cmd=()
  [ "$(id -u)" = 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
python3 -c 'import matplotlib' 2>/dev/null || python3 -m pip install -q matplotlib >/dev/null

# Ask cargo where the binary is: CARGO_TARGET_DIR (or build.target-dir in a cargo config)
# moves it away from target/release.
tagpin_bin=$(cargo build --release --locked --bin tagpin --message-format=json-render-diagnostics |
  python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "tagpin" and m.get("executable"):
        print(m["executable"])')
[ -x "$tagpin_bin" ] || { echo "cargo did not report where it built tagpin" >&2; exit 1; }
# 10,000 concurrent keep-alive connections (client and proxy ends) need more descriptors
# than the usual default.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
exec python3 bench/bench.py --tagpin "$tagpin_bin" "$@"
