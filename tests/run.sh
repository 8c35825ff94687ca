#!/usr/bin/env bash
# The whole test suite, as CI runs it:  ./tests/run.sh
# 1. installs the Debian packages the tests drive (docker-registry = CNCF distribution 2.8,
#    skopeo, htpasswd; nginx and ab for the benchmark smoke run) when they are missing;
# 2. checks formatting and lints;
# 3. runs every unit and integration test;
# 4. checks the deploy files offline (tests/deploy_check.sh);
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
)
missing=()
for bin in "${!pkg_for[@]}"; do
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
fi
# Debian starts packaged services on install where it can; the tests start their own.
for bin in docker-registry skopeo htpasswd openssl curl; do
  command -v "$bin" >/dev/null || { echo "FATAL: $bin still missing after install" >&2; exit 1; }
done

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --all-targets --locked -- -D warnings
echo "== cargo test"
# Many integration tests mostly wait on timeouts and child processes: run more of them
# at once than there are cores. Benches run once each in test mode, with their own args.
cargo test --locked --lib --bins --tests -- --test-threads="${TEST_THREADS:-4}"
cargo test --locked --benches
echo "== deploy files (kubernetes-validate --strict, hadolint)"
tests/deploy_check.sh
echo "== benchmark smoke run (bench/run.sh --smoke)"
bench/run.sh --smoke
