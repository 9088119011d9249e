#!/usr/bin/env bash
# Runs every Portcullis test on a fresh Debian machine with Rust and Node:
#
#   1. prerequisites  node/npm (must exist); `npm ci` in demo/provider and tests/browser
#                     when node_modules is missing or older than package-lock.json;
#                     Debian `chromium` and `redis-server` via apt-get when missing (as root,
#                     otherwise it prints the command to run)
#   2. lint           cargo fmt --check; cargo clippy --locked --all-targets -- -D warnings
#   3. build          cargo build --locked --all-targets (debug: the e2e and browser tests
#                     run target/debug/portcullis)
#   4. rust tests     cargo nextest run (+ doctests) if cargo-nextest is installed, else
#                     cargo test; unit tests in src/, e2e tests in tests/e2e against the
#                     real provider (node demo/provider/provider.mjs)
#   5. browser test   node --test tests/browser/ (Debian chromium via playwright-core)
#   6. feature otel   cargo clippy --features otel; the OpenTelemetry unit tests and the
#                     e2e test `otel::…` with the binary built with the feature (last, so
#                     the browser test runs the default binary)
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
# (Redis store tests, Redis Cluster via redis-cli).
install_debian_packages() {
  local missing=()
  [[ -x /usr/bin/chromium ]] || missing+=(chromium)
  command -v redis-server >/dev/null || [[ -x /usr/bin/redis-server ]] || missing+=(redis-server)
  # redis-cli (package redis-tools, a dependency of redis-server): creates the test Redis Cluster.
  command -v redis-cli >/dev/null || [[ -x /usr/bin/redis-cli ]] || missing+=(redis-tools)
  # nginx: the real upstream of tests/e2e/path_confinement.rs (run as the test's own process).
  [[ -x /usr/sbin/nginx ]] || missing+=(nginx)
  if [[ ${#missing[@]} -eq 0 ]]; then
    note "/usr/bin/chromium: $(/usr/bin/chromium --version 2>/dev/null || echo present)"
    note "redis-server: $(redis-server --version 2>/dev/null | head -n 1)"
    note "nginx: $(/usr/sbin/nginx -v 2>&1 | head -n 1)"
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
}

prerequisites() {
  local ok=0
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

run_step "prerequisites (toolchain, node, npm ci, chromium, redis-server)" prerequisites
run_step "lint: cargo fmt --check" show cargo fmt --all --check
run_step "lint: cargo clippy" show cargo clippy --locked --all-targets -- -D warnings
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
  run_step "feature otel: clippy, unit and e2e tests" otel_tests
else
  not_run "rust tests" "the build failed"
  not_run "browser test" "the build failed"
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
