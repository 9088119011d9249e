#!/usr/bin/env bash
# Runs every Portcullis test on a fresh Debian machine with Rust and Node:
#
#   1. prerequisites  node/npm (must exist); `npm ci` in demo/provider and tests/browser
#                     when node_modules is missing or older than package-lock.json;
#                     Debian `chromium`, `redis-server`, `nginx`, `glewlwyd` via apt-get when missing (as root,
#                     otherwise it prints the command to run); the venv target/venv-dot
#                     (pip, tests/providers/dot/requirements.txt) for the
#                     django-oauth-toolkit provider
#   2. lint           cargo fmt --check; cargo clippy --locked --all-targets -- -D warnings
#                     (its incompatible_msrv lint checks std API use against rust-version);
#                     rust-version in Cargo.toml is at least every locked dependency's;
#                     the benchmark's pure parts (bench/test_bench.py, python3 -m unittest:
#                     /proc and load-generator parsing, CPU accounting, verdicts; offline)
#   3. build          cargo build --locked --all-targets (debug: the e2e and browser tests
#                     run target/debug/portcullis)
#   4. rust tests     cargo nextest run (+ doctests) if cargo-nextest is installed, else
#                     cargo test; unit tests in src/, e2e tests in tests/e2e against the
#                     real provider (node demo/provider/provider.mjs)
#   5. browser test   node --test tests/browser/ (Debian chromium via playwright-core)
#   6. deploy         scripts/deploy-check.sh: deploy/portcullis.service through
#                     systemd-analyze verify/security, deploy/kubernetes/ against the
#                     Kubernetes API schema (PyPI kubernetes-validate, in a venv), the deploy
#                     configs loaded; then deploy/Dockerfile built with podman FROM a
#                     debootstrap bookworm base (made once, cached in
#                     /var/cache/portcullis-deploy) with target/debug/portcullis, run, and
#                     its /readyz, HEALTHCHECK, non-root user and data volume checked; the
#                     systemd unit started by a real systemd in a podman container
#   7. feature otel   cargo clippy --features otel; the OpenTelemetry unit tests and the
#                     e2e test `otel::…` with the binary built with the feature (last, so
#                     the browser test and the image run the default binary)
#
# Every step runs even when an earlier one failed (a suite that can't run is reported as
# FAILED, never skipped); the summary lists each step with its time, and the exit status is
# non-zero if any step failed. Usage: ./scripts/test.sh   (CI: bash .ci/run)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

STEP_NAMES=()
STEP_RESULTS=()
STEP_TIMES=()
FAILED=0

now() {
  if [[ -n "${EPOCHREALTIME:-}" ]]; then
    echo "${EPOCHREALTIME/,/.}"
  else
    date +%s
  fi
}

header() {
  echo
  echo "================================================================================"
  echo "==> $*"
  echo "================================================================================"
}

note() { echo "--> $*"; }
warn() { echo "!!! $*" >&2; }

# run_step NAME COMMAND [ARGS...]: runs the command (a function or a program) with errexit
# in a subshell, records PASS/FAIL and the time, and never stops the script.
run_step() {
  local name=$1 start end rc
  shift
  header "$name"
  start=$(now)
  set +e
  (
    set -euo pipefail
    "$@"
  )
  rc=$?
  set -e
  end=$(now)
  record "$name" "$rc" "$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1fs", b - a }')"
}

# record NAME RC TIME
record() {
  local name=$1 rc=$2 time=$3
  STEP_NAMES+=("$name")
  STEP_TIMES+=("$time")
  if [[ $rc -eq 0 ]]; then
    STEP_RESULTS+=("PASS")
    note "$name: passed ($time)"
  else
    STEP_RESULTS+=("FAIL")
    FAILED=1
    warn "$name: FAILED (exit $rc, $time)"
  fi
}

# not_run NAME WHY: a suite that could not run is a failure, and says why.
not_run() {
  header "$1"
  warn "$1: NOT RUN: $2"
  STEP_NAMES+=("$1 (not run: $2)")
  STEP_TIMES+=("-")
  STEP_RESULTS+=("FAIL")
  FAILED=1
}

show() {
  echo "+ $*"
  "$@"
}

# ---- 1. prerequisites -------------------------------------------------------------------

check_toolchain() {
  local ok=0
  if ! command -v cargo >/dev/null; then
    warn "cargo not found: install Rust (https://rustup.rs) and put cargo on PATH"
    return 1
  fi
  note "$(cargo --version)"
  for component in rustfmt clippy; do
    local sub=${component/rustfmt/fmt}
    if ! cargo "$sub" --version >/dev/null 2>&1; then
      if command -v rustup >/dev/null; then
        warn "cargo $sub is missing: installing the $component component"
        show rustup component add "$component" || ok=1
      else
        warn "cargo $sub is missing and rustup is not available: install $component"
        ok=1
      fi
    fi
  done
  if command -v cargo-nextest >/dev/null; then
    note "$(cargo-nextest --version 2>/dev/null | head -n 1) (Rust tests run with nextest)"
  else
    note "cargo-nextest not found: Rust tests run with cargo test"
  fi
  return "$ok"
}

check_node() {
  if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    warn "node and npm are required (Node.js >= 20): the test provider, the demo API and"
    warn "the browser test are Node programs. On Debian: apt-get install -y nodejs npm"
    warn "(or a Node 20+ from https://nodejs.org)."
    return 1
  fi
  local major
  major=$(node -p 'process.versions.node.split(".")[0]')
  note "node $(node --version), npm $(npm --version)"
  if ((major < 20)); then
    warn "Node.js >= 20 is required, found $(node --version)"
    return 1
  fi
}

# npm ci in DIR when its node_modules is missing or older than its package-lock.json.
npm_install() {
  local dir=$1 marker
  marker="$dir/node_modules/.package-lock.json" # written by npm at every install
  [[ -e $marker ]] || marker="$dir/node_modules"
  if [[ ! -d $dir/node_modules ]]; then
    note "$dir/node_modules is missing: installing"
  elif [[ $dir/package-lock.json -nt $marker ]]; then
    note "$dir/node_modules is older than package-lock.json: reinstalling"
  else
    note "$dir/node_modules is up to date"
    return 0
  fi
  (cd "$dir" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 show npm ci --no-audit --no-fund)
}

# Debian packages the tests use: chromium (browser test), redis-server and redis-tools
# (Redis store tests, Redis Cluster via redis-cli), nginx and glewlwyd (e2e).
install_debian_packages() {
  local missing=()
  # The deploy step: systemd-analyze (systemd), podman with runc (this machine's hybrid
  # cgroups are refused by crun), debootstrap (the image's base), python3-venv.
  command -v systemd-analyze >/dev/null || missing+=(systemd)
  command -v podman >/dev/null || missing+=(podman)
  command -v runc >/dev/null || missing+=(runc)
  command -v debootstrap >/dev/null || [[ -x /usr/sbin/debootstrap ]] || missing+=(debootstrap)
  [[ -x /usr/bin/chromium ]] || missing+=(chromium)
  command -v redis-server >/dev/null || [[ -x /usr/bin/redis-server ]] || missing+=(redis-server)
  # redis-cli (package redis-tools, a dependency of redis-server): creates the test Redis Cluster.
  command -v redis-cli >/dev/null || [[ -x /usr/bin/redis-cli ]] || missing+=(redis-tools)
  # nginx: the real upstream of tests/e2e/path_confinement.rs (run as the test's own process).
  [[ -x /usr/sbin/nginx ]] || missing+=(nginx)
  # glewlwyd: a real OpenID provider of tests/e2e/real_providers.rs, set up by
  # tests/providers/glewlwyd/start.sh with the sqlite3 and openssl command-line tools.
  [[ -x /usr/bin/glewlwyd ]] || missing+=(glewlwyd)
  command -v sqlite3 >/dev/null || missing+=(sqlite3)
  command -v openssl >/dev/null || missing+=(openssl)
  if [[ ${#missing[@]} -eq 0 ]]; then
    note "/usr/bin/chromium: $(/usr/bin/chromium --version 2>/dev/null || echo present)"
    note "redis-server: $(redis-server --version 2>/dev/null | head -n 1)"
    note "nginx: $(/usr/sbin/nginx -v 2>&1 | head -n 1)"
    note "glewlwyd: $(dpkg-query -W -f '${Version}' glewlwyd 2>/dev/null || echo present)"
    note "podman: $(podman --version 2>/dev/null), debootstrap, runc, systemd-analyze: present"
    return 0
  fi
  warn "missing Debian packages: ${missing[*]}"
  if [[ $(id -u) -ne 0 ]]; then
    warn "not root: install them with"
    warn "    sudo apt-get update && sudo apt-get install -y ${missing[*]}"
    return 1
  fi
  if ! command -v apt-get >/dev/null; then
    warn "apt-get not found: install ${missing[*]} with your package manager"
    return 1
  fi
  note "installing ${missing[*]} with apt-get (this takes a while)"
  export DEBIAN_FRONTEND=noninteractive
  show apt-get update || return 1
  show apt-get install -y "${missing[@]}" || return 1
  [[ -x /usr/bin/chromium ]] || {
    warn "/usr/bin/chromium still missing after apt-get install"
    return 1
  }
  [[ -x /usr/sbin/nginx ]] || {
    warn "/usr/sbin/nginx still missing after apt-get install"
    return 1
  }
  [[ -x /usr/bin/glewlwyd ]] || {
    warn "/usr/bin/glewlwyd still missing after apt-get install"
    return 1
  }
  local tool
  for tool in systemd-analyze podman runc; do
    command -v "$tool" >/dev/null || {
      warn "$tool still missing after apt-get install"
      return 1
    }
  done
}

# The django-oauth-toolkit test provider (tests/e2e/real_providers.rs) runs in the venv
# target/venv-dot, made from tests/providers/dot/requirements.txt (exact versions) when
# missing or older than that file.
DOT_VENV=target/venv-dot
DOT_REQUIREMENTS=tests/providers/dot/requirements.txt

python_venv() {
  local marker=$DOT_VENV/.installed
  if [[ -e $marker && ! $DOT_REQUIREMENTS -nt $marker ]]; then
    note "$DOT_VENV is up to date: $("$DOT_VENV/bin/python" -m pip show django-oauth-toolkit 2>/dev/null | grep -i '^version' || echo '?')"
    return 0
  fi
  if ! command -v python3 >/dev/null || ! python3 -m venv --help >/dev/null 2>&1; then
    warn "python3 with the venv module is required for the django-oauth-toolkit provider:"
    warn "    apt-get install -y python3 python3-venv"
    return 1
  fi
  note "$DOT_VENV is missing or older than $DOT_REQUIREMENTS: installing"
  rm -rf "$DOT_VENV"
  show python3 -m venv "$DOT_VENV" || return 1
  show "$DOT_VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    --require-virtualenv -r "$DOT_REQUIREMENTS" || return 1
  "$DOT_VENV/bin/python" -c 'import oauth2_provider, django' || {
    warn "$DOT_VENV: django-oauth-toolkit does not import after pip install"
    return 1
  }
  touch "$marker"
}

prerequisites() {
  local ok=0
  python_venv || ok=1
  check_toolchain || ok=1
  if check_node; then
    npm_install demo/provider || ok=1
    npm_install tests/browser || ok=1
  else
    ok=1
  fi
  install_debian_packages || ok=1
  return "$ok"
}

# ---- 2.–5. lint, build, tests ------------------------------------------------------------

# Cargo.toml's rust-version must be at least the highest rust-version among the locked
# dependencies (only one toolchain is installed here, so the minimum is measured, not built).
rust_version_check() {
  cargo metadata --locked --all-features --format-version 1 | python3 -c '
import json, sys
meta = json.load(sys.stdin)
used = {n["id"] for n in meta["resolve"]["nodes"]}
def v(s):
    return tuple(int(x) for x in s.split(".")) + (0,) * (3 - len(s.split(".")))
ours = next(p for p in meta["packages"] if p["id"] == meta["resolve"]["root"])
need = max((v(p["rust_version"]), p["name"] + " " + p["version"])
           for p in meta["packages"] if p["id"] in used and p.get("rust_version")
           and p["id"] != ours["id"])
have = v(ours["rust_version"])
print("rust-version %s; the highest a dependency needs: %s (%s)"
      % (ours["rust_version"], ".".join(map(str, need[0])), need[1]))
sys.exit(0 if have >= need[0] else "Cargo.toml rust-version is below what a dependency needs")
'
}

rust_tests() {
  if command -v cargo-nextest >/dev/null; then
    show cargo nextest run --locked --no-fail-fast
  else
    show cargo test --locked --no-fail-fast
  fi
}

# The `otel` cargo feature: lint it, and run the tests that exist only with it (its unit
# tests in src/telemetry/otel.rs and the e2e test tests/e2e/otel.rs, which exports to an
# OTLP receiver of its own). The rest of the suite already ran on the default build.
otel_tests() {
  show cargo clippy --locked --all-targets --features otel -- -D warnings
  if command -v cargo-nextest >/dev/null; then
    show cargo nextest run --locked --no-fail-fast --features otel --lib --test e2e -E 'test(/otel|trace_context/)'
  else
    show cargo test --locked --no-fail-fast --features otel --lib --test e2e -- otel trace_context
  fi
}

browser_tests() {
  [[ -x target/debug/portcullis ]] || {
    warn "target/debug/portcullis is missing"
    return 1
  }
  # The harness runs target/debug/portcullis by default. PORTCULLIS_BIN is deliberately not
  # set: the child inherits the environment, and the config loader reads every
  # PORTCULLIS_* variable as a config key.
  show node --test --test-concurrency=1 tests/browser/
}

run_step "prerequisites (toolchain, node, npm ci, chromium, redis-server, python venv)" prerequisites
run_step "lint: cargo fmt --check" show cargo fmt --all --check
run_step "lint: cargo clippy" show cargo clippy --locked --all-targets -- -D warnings
run_step "lint: rust-version covers the locked dependencies" rust_version_check
run_step "bench: the driver's and the report's unit tests (python3 -m unittest, bench/)" \
  show python3 -m unittest discover -s bench
run_step "build: cargo build --locked --all-targets" show cargo build --locked --all-targets
build_ok=${STEP_RESULTS[${#STEP_RESULTS[@]} - 1]}

if [[ $build_ok == PASS ]]; then
  if command -v cargo-nextest >/dev/null; then
    run_step "rust tests: cargo nextest run" rust_tests
    # nextest does not run doctests.
    run_step "rust doctests: cargo test --doc" show cargo test --locked --doc
  else
    run_step "rust tests: cargo test" rust_tests
  fi
  run_step "browser test: node --test tests/browser/" browser_tests
  run_step "deploy: systemd unit, Kubernetes manifests, configs" show scripts/deploy-check.sh fast
  run_step "deploy: container image and systemd unit run (podman)" show scripts/deploy-check.sh image
  run_step "feature otel: clippy, unit and e2e tests" otel_tests
else
  not_run "rust tests" "the build failed"
  not_run "browser test" "the build failed"
  not_run "deploy" "the build failed"
  not_run "feature otel" "the build failed"
fi

# ---- summary ----------------------------------------------------------------------------

header "summary"
for i in "${!STEP_NAMES[@]}"; do
  printf '  %-4s  %8s  %s\n' "${STEP_RESULTS[$i]}" "${STEP_TIMES[$i]}" "${STEP_NAMES[$i]}"
done
echo
if [[ $FAILED -ne 0 ]]; then
  echo "FAILED: at least one step failed (see above)."
  exit 1
fi
echo "ALL PASSED"
