#!/usr/bin/env bash
# The Portcullis benchmark, in one command, on one machine, in one run:
#
#   ./bench/run.sh            # memory/sqlite/redis Portcullis vs nginx vs the upstream direct
#   ./bench/run.sh --scale    # + a million sessions in SQLite and in Redis
#   ./bench/run.sh --help     # what it does, step by step, and every BENCH_* knob
#
# The driver is bench/bench.py (Python 3 standard library; its pure parts are tested by
# bench/test_bench.py), the report bench/report.py. Results go to bench/results/latest.*
# and docs/performance.md (from bench/performance.md.in); BENCH_OUT=DIR writes them to
# DIR instead and leaves docs/performance.md alone, e.g. for a short trial run:
#
#   BENCH_OUT=/tmp/bench BENCH_DURATION=1 BENCH_TARGETS="nginx portcullis-memory" \
#     BENCH_MODES=c32 ./bench/run.sh
set -euo pipefail
command -v python3 >/dev/null || {
  echo "python3 is required" >&2
  exit 1
}
exec python3 "$(dirname "${BASH_SOURCE[0]}")/bench.py" "$@"
