#!/usr/bin/env bash
# The whole test suite, as CI runs it:  ./tests/run.sh
# 1. installs the Debian packages the tests drive (docker-registry = CNCF distribution 2.8,
#    skopeo, htpasswd, PostgreSQL; nginx and ab for the benchmark smoke run) when they are
#    missing;
# 2. checks formatting and lints;
# 3. runs every unit and integration test, then the end-to-end suites again with the
#    PostgreSQL pin store (TAGPIN_TEST_STORE=postgres);
# 4. checks the deploy files (tests/deploy_check.sh: Kubernetes and compose schemas,
#    hadolint, the compose healthchecks run against a local tagpin, promtool check and
#    test of the alert rules);
# 5. runs the side-by-side benchmark in its short smoke mode, so it cannot rot
#    (figures from a smoke run mean nothing; bench/run.sh without --smoke measures).
set -euo pipefail
cd "$(dirname "$0")/.."

declare -A pkg_for=(
  [docker-registry]=docker-registry
  [skopeo]=skopeo
  [htpasswd]=apache2-utils
  [ab]=apache2-utils
  [nginx]=nginx-light
  [openssl]=openssl
  [curl]=curl
  [initdb]=postgresql
  [faketime]=faketime
  [dash]=dash
  [jsonschema]=python3-jsonschema
  [promtool]=prometheus
)
missing=()
for bin in "${!pkg_for[@]}"; do
  # Debian keeps PostgreSQL's server binaries off the PATH, in a versioned directory.
  if [ "$bin" = initdb ] && compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
    continue
  fi
  # tests/deploy_check.sh validates the compose files with Debian's python3 and its
  # jsonschema module: another jsonschema on the PATH (pip, pyenv) does not count.
  if [ "$bin" = jsonschema ]; then
    [ -x /usr/bin/jsonschema ] || missing+=("${pkg_for[$bin]}")
    continue
  fi
  if ! command -v "$bin" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$bin" ]; then
    missing+=("${pkg_for[$bin]}")
  fi
done
if [ "${#missing[@]}" -gt 0 ]; then
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  echo "== installing: ${missing[*]}"
  sudo_cmd=()
  [ "$(id -u)" = 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # The package starts a cluster of its own; the tests start theirs (ephemeral port, temp
  # dir, as the `postgres` user when run as root), so stop it and keep it from booting.
  if printf '%s\n' "${missing[@]}" | grep -qx postgresql; then
    "${sudo_cmd[@]}" service postgresql stop >/dev/null 2>&1 || true
    "${sudo_cmd[@]}" update-rc.d postgresql disable >/dev/null 2>&1 || true
    "${sudo_cmd[@]}" systemctl disable postgresql >/dev/null 2>&1 || true
  fi
  # Only promtool is wanted from it: the server the package starts is stopped the same way.
  if printf '%s\n' "${missing[@]}" | grep -qx prometheus; then
    "${sudo_cmd[@]}" service prometheus stop >/dev/null 2>&1 || true
    "${sudo_cmd[@]}" update-rc.d prometheus disable >/dev/null 2>&1 || true
    "${sudo_cmd[@]}" systemctl disable --now prometheus >/dev/null 2>&1 || true
  fi
fi
# Debian starts packaged services on install where it can; the tests start their own.
for bin in docker-registry skopeo htpasswd openssl curl promtool; do
  command -v "$bin" >/dev/null || { echo "FATAL: $bin still missing after install" >&2; exit 1; }
done
command -v initdb >/dev/null || compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null ||
  { echo "FATAL: initdb (postgresql) still missing after install" >&2; exit 1; }

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --all-targets --locked -- -D warnings
echo "== cargo test"
# Many integration tests mostly wait on timeouts and child processes: run more of them
# at once than there are cores. Benches run once each in test mode, with their own args.
cargo test --locked --lib --bins --tests -- --test-threads="${TEST_THREADS:-4}"
# `--bench NAME`, not `--benches`: the library target counts as a bench target too, and
# `--benches` would run every unit test (the simulation among them) a second time.
cargo test --locked --bench hot_paths
echo "== cargo test, PostgreSQL pin store (TAGPIN_TEST_STORE=postgres)"
# The end-to-end suites once more, every tagpin on a database of a throwaway PostgreSQL
# server instead of a sled data dir. Left out: the suites that look inside the sled dir or
# depend on its file lock and disk (store_failure, full_disk, migration, operations,
# admin_cli, ...); the PostgreSQL store has its own contract and replica tests above.
# Also left out, by name: tests that never touch the pin store's behaviour (the 256 MiB
# layer only streams a blob; a bad `reads` value stops tagpin before it opens a store),
# which the pass above has run.
TAGPIN_TEST_STORE=postgres cargo test --locked \
  --test push_and_pin --test in_flight --test pinned_content --test policy_modes \
  --test races_and_crashes --test faulty_upstream --test claims \
  --test in_flight_records --test deletes_settled --test releases_once \
  --test pinned_reads --test read_modes --test first_pull_race --test durable_writes --test large_imports --test import_online --test notify -- --test-threads="${TEST_THREADS:-4}" \
  --skip a_256_mib_layer_is_pushed_and_pulled_intact --skip a_bad_reads_value_is_a_usage_error_that_names_it \
  --skip three_replicas_on_postgres_deliver_each_event_once
echo "== deploy files (kubernetes-validate --strict, hadolint, compose schema and healthchecks, promtool)"
tests/deploy_check.sh
echo "== benchmark smoke run (bench/run.sh --smoke)"
bench/run.sh --smoke
