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
# The history log's cost (bench/log.py): manifest PUT of a new tag with the log beside the
# same source built with `--features bench-unlogged` (its stores append nothing to the log),
# on sled and on PostgreSQL; checkpoint and proof latency from a log of 1,000,000 entries
# (100,000 on PostgreSQL), filled by examples/fill_log.rs; `tagpin log verify` offline on
# them, its time and peak memory.
#   bench/run.sh --only log [--smoke]
#                           the history log alone (about 6 minutes once built, 15 s with --smoke); its
#                           section, "History log", takes the place of the old one in
#                           results.md (bench/ or bench/out-smoke/), or is added at its end
# Manifest PUT latency alone (bench/push.py): a new tag and an identical re-push, the
# registry directly, tagpin on sled and tagpin on PostgreSQL in rotation, with the durable
# writes each push waited for (tagpin's /metrics).
#   bench/run.sh --only push [--smoke]
#                           about a minute (15 s with --smoke); its section, "Manifest PUT",
#                           takes the place of the old one in results.md, or is added at its end
# The store's size (bench/scale.py): import, start-up, PUT and read latency beside an empty
# store, memory, export and log verify with N pins, on sled and on PostgreSQL.
#   bench/run.sh --scale [N[,N...]] [--scale-stores sled|PostgreSQL] [--smoke]
#                           N defaults to 1,000,000 (5,000 with --smoke, which also takes
#                           few measurements); writes scale.md (and scale.json, and with
#                           several sizes scale.png) in bench/ or bench/out-smoke/
set -euo pipefail
cd "$(dirname "$0")/.."

declare -A pkg_for=([docker-registry]=docker-registry [nginx]=nginx-light [ab]=apache2-utils [curl]=curl [haproxy]=haproxy [openssl]=openssl)
missing=()
for bin in "${!pkg_for[@]}"; do
  command -v "$bin" >/dev/null 2>&1 || [ -x "/usr/sbin/$bin" ] || missing+=("${pkg_for[$bin]}")
done
# Debian keeps initdb and postgres out of PATH, in /usr/lib/postgresql/VERSION/bin.
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null && command -v psql >/dev/null 2>&1 || missing+=(postgresql)
# GNU time, for `tagpin log verify`'s peak memory (`time` alone is the shell's keyword).
[ -x /usr/bin/time ] || missing+=(time)
if [ "${#missing[@]}" -gt 0 ]; then
  sudo_cmd=()
  [ "$(id -u)" = 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
python3 -c 'import matplotlib' 2>/dev/null || python3 -m pip install -q matplotlib >/dev/null

# Ask cargo where it built things: CARGO_TARGET_DIR (or build.target-dir in a cargo config)
# moves them away from target/release. Prints "NAME PATH" per executable built.
build() {
  cargo build --locked "$@" --message-format=json-render-diagnostics |
    python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        print(m["target"]["name"], m["executable"])'
}
built() { # NAME OUTPUT: the path of NAME in build's output
  local path
  path=$(printf '%s\n' "$2" | awk -v n="$1" '$1 == n { print $2 }')
  [ -x "$path" ] || { echo "cargo did not report where it built $1" >&2; exit 1; }
  printf '%s\n' "$path"
}
only=
smoke=
scale=
prev=
for arg in "$@"; do
  case "$prev,$arg" in
    --only,*) only=$arg ;;
    *,--only=*) only=${arg#--only=} ;;
    *,--smoke) smoke=1 ;;
    *,--scale | *,--scale=*) scale=1 ;;
  esac
  prev=$arg
done
# The history log's binaries (the unlogged reference, fill_log) only for the measurements
# that use them: the full run and `--only log`.
log_parts=
[ -z "$scale" ] && { [ -z "$only" ] || [ "$only" = log ]; } && log_parts=1
extra=()
if [ -n "$log_parts" ]; then
  # The log's reference: the same source with its appends compiled out. Built first and
  # copied aside, since the usual build below puts its own tagpin at the same path. The
  # smoke run's figures mean nothing, so it builds the reference in the dev profile and
  # spares CI a second release build.
  profile=(--release)
  [ -n "$smoke" ] && profile=()
  out=$(build "${profile[@]}" --bin tagpin --features bench-unlogged)
  unlogged=$(built tagpin "$out")
  cp "$unlogged" "$unlogged-unlogged"
  extra+=(--tagpin-unlogged "$unlogged-unlogged")
fi
out=$(build --release --bin tagpin)
tagpin_bin=$(built tagpin "$out")
if [ -n "$log_parts" ]; then
  # Built on its own: an example brings the dev-dependencies' features into every crate
  # of the build it is part of, and the tagpins measured must be built as they ship.
  # The smoke run fills 10,000 entries, for which the dev profile (whose dependencies
  # the test suite has built) is fast enough; the full run fills 1,000,000.
  if [ -n "$smoke" ]; then
    out=$(build --example fill_log)
  else
    out=$(build --release --example fill_log)
  fi
  fill_bin=$(built fill_log "$out")
  extra+=(--fill-log "$fill_bin")
fi
# 10,000 concurrent keep-alive connections (client and proxy ends) need more descriptors
# than the usual default.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
exec python3 bench/bench.py --tagpin "$tagpin_bin" "${extra[@]}" "$@"
