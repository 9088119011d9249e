#!/usr/bin/env bash
# Runs every cargo-fuzz target (fuzz/fuzz_targets) for a bounded time.
#
#   ./scripts/fuzz.sh                     # all targets, 60 s each
#   FUZZ_SECONDS=300 ./scripts/fuzz.sh    # longer
#   ./scripts/fuzz.sh return_url          # some targets only
#
# Targets: cookie_header, return_url, logout_token, header_rewrite, config_toml,
# upstream_path (see the comment at the top of each for its input format and properties).
#
# 1. installs cargo-fuzz (cargo install --locked) when it is missing;
# 2. builds the targets: cargo-fuzz needs nightly compiler flags (-Zsanitizer=address,
#    sanitizer coverage); on a stable toolchain RUSTC_BOOTSTRAP=1 unlocks them;
# 3. runs each for FUZZ_SECONDS (libFuzzer -max_total_time) from the seed corpus in
#    fuzz/corpus/<target>/ (committed); what the fuzzer adds goes to
#    fuzz/target/corpus/<target>/ (not committed, reused by the next run).
#
# Crashes (panics, failed property assertions, ASan reports, timeouts, OOMs) are kept in
# fuzz/artifacts/<target>/; every target runs even when an earlier one crashed, and the
# exit status is non-zero when any crashed. Reproduce one with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run <target> fuzz/artifacts/<target>/<file>
# Environment: FUZZ_SECONDS (default 60), FUZZ_JOBS (cargo build jobs, default: cargo's),
# FUZZ_RSS_LIMIT_MB (default 2048), FUZZ_TIMEOUT (seconds per input, default 10).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

FUZZ_SECONDS="${FUZZ_SECONDS:-60}"
FUZZ_RSS_LIMIT_MB="${FUZZ_RSS_LIMIT_MB:-2048}"
FUZZ_TIMEOUT="${FUZZ_TIMEOUT:-10}"
ALL_TARGETS=(cookie_header return_url logout_token header_rewrite config_toml upstream_path)
if [[ $# -gt 0 ]]; then
  TARGETS=("$@")
else
  TARGETS=("${ALL_TARGETS[@]}")
fi
if ! [[ "$FUZZ_SECONDS" =~ ^[0-9]+$ ]] || [[ "$FUZZ_SECONDS" -lt 1 ]]; then
  echo "FUZZ_SECONDS must be a positive number of seconds (got '$FUZZ_SECONDS')" >&2
  exit 2
fi

# cargo-fuzz passes -Z flags to rustc; stable rustc accepts them with RUSTC_BOOTSTRAP=1.
export RUSTC_BOOTSTRAP=1

header() {
  echo
  echo "================================================================================"
  echo "==> $*"
  echo "================================================================================"
}

if ! cargo fuzz --version >/dev/null 2>&1; then
  header "cargo-fuzz is NOT installed: installing it (cargo install cargo-fuzz --locked)"
  cargo install cargo-fuzz --locked
fi
echo "$(cargo fuzz --version), $(rustc --version), RUSTC_BOOTSTRAP=1"

BUILD_ARGS=()
if [[ -n "${FUZZ_JOBS:-}" ]]; then
  BUILD_ARGS+=(--jobs "$FUZZ_JOBS")
fi

header "building the fuzz targets: ${TARGETS[*]}"
build_start=$SECONDS
if [[ $# -gt 0 ]]; then
  for target in "${TARGETS[@]}"; do
    cargo fuzz build "${BUILD_ARGS[@]}" "$target"
  done
else
  cargo fuzz build "${BUILD_ARGS[@]}"
fi
echo "built in $((SECONDS - build_start)) s"

LOG_DIR=fuzz/target/fuzz-logs
mkdir -p "$LOG_DIR"
SUMMARY=()
CRASHED=()
for target in "${TARGETS[@]}"; do
  header "fuzzing $target for ${FUZZ_SECONDS} s"
  seeds="fuzz/corpus/$target"
  work="fuzz/target/corpus/$target"
  artifacts="fuzz/artifacts/$target"
  log="$LOG_DIR/$target.log"
  mkdir -p "$seeds" "$work" "$artifacts"
  marker="$(mktemp)"
  start=$SECONDS
  status=0
  # New inputs go to the first corpus directory ($work); the seeds are only read.
  cargo fuzz run "${BUILD_ARGS[@]}" "$target" "$work" "$seeds" -- \
    -max_total_time="$FUZZ_SECONDS" \
    -rss_limit_mb="$FUZZ_RSS_LIMIT_MB" \
    -timeout="$FUZZ_TIMEOUT" \
    -print_final_stats=1 2>&1 | tee "$log" || status=$?
  elapsed=$((SECONDS - start))
  # libFuzzer's final stats, and the last status line's coverage (no such line when
  # it crashed on the first inputs).
  execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)"
  cov="$( (grep -oE '^#[0-9]+[[:space:]]+[A-Z]+[[:space:]]+cov: [0-9]+ ft: [0-9]+' "$log" || true) |
    tail -n 1 | sed -E 's/.*cov: ([0-9]+) ft: ([0-9]+)/cov \1, ft \2/')"
  new_artifacts="$(find "$artifacts" -type f -newer "$marker" | sort)"
  rm -f "$marker"
  if [[ $status -ne 0 || -n "$new_artifacts" ]]; then
    CRASHED+=("$target")
    SUMMARY+=("$(printf '%-16s CRASHED  %4ss  execs %-10s %s' "$target" "$elapsed" "${execs:-?}" "${cov:-}")")
    echo
    echo "!!! $target crashed (exit status $status); log: $log"
    if [[ -n "$new_artifacts" ]]; then
      while IFS= read -r f; do
        echo "!!! crash input: $f"
        echo "!!!   reproduce: RUSTC_BOOTSTRAP=1 cargo fuzz run $target $f"
      done <<<"$new_artifacts"
    fi
  else
    SUMMARY+=("$(printf '%-16s ok       %4ss  execs %-10s %s' "$target" "$elapsed" "${execs:-?}" "${cov:-}")")
  fi
done

header "summary (FUZZ_SECONDS=$FUZZ_SECONDS, total ${SECONDS} s)"
printf '%s\n' "${SUMMARY[@]}"
if [[ ${#CRASHED[@]} -gt 0 ]]; then
  echo
  echo "FAILED: crashes in ${CRASHED[*]} (inputs under fuzz/artifacts/, logs under $LOG_DIR/)"
  exit 1
fi
echo
echo "no crashes"
