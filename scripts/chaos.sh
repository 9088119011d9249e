#!/usr/bin/env bash
# Runs the fault-injection tests again and again for a bounded time (loopback only):
# Redis Cluster and Sentinel failover under load, kill -9 mid-refresh, SQLite faults
# (a full tmpfs, a lock held by another process, kill -9 and restart), and the
# overload flood. Each round runs them one at a time, so a timing that only fails
# sometimes shows up; the measured numbers of every round are collected in
# target/chaos/ (FAILOVER / CRASH MID-REFRESH / LOCKED / DISK FULL / OVERLOAD lines).
#
#   ./scripts/chaos.sh                  # rounds until 240 s are used up
#   CHAOS_SECONDS=120 ./scripts/chaos.sh
#
# Needs root (the disk-full test mounts a tmpfs), redis-server, redis-cli, sqlite3,
# node with demo/provider's packages. Not part of CI: one round takes about two
# minutes on two cores. The exit status is non-zero when any round failed.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

CHAOS_SECONDS="${CHAOS_SECONDS:-240}"
if [ "$CHAOS_SECONDS" -gt 290 ]; then
  echo "chaos.sh: CHAOS_SECONDS is capped at 290 (bounded run)" >&2
  CHAOS_SECONDS=290
fi
FILTER='test(/^failover::|^crash_refresh::|^store_faults::|^overload::/)'
OUT=target/chaos
mkdir -p "$OUT"

cargo build --tests --quiet
deadline=$(( $(date +%s) + CHAOS_SECONDS ))
round=0
failed=0
while [ "$(date +%s)" -lt "$deadline" ]; do
  round=$((round + 1))
  left=$(( deadline - $(date +%s) ))
  log="$OUT/round-$round.log"
  echo "chaos.sh: round $round (${left}s left)"
  if timeout --signal=INT "$left" \
      cargo nextest run --test e2e -j 1 --no-fail-fast --no-capture -E "$FILTER" >"$log" 2>&1; then
    :
  else
    status=$?
    if [ "$status" -eq 124 ] || [ "$status" -eq 130 ]; then
      echo "chaos.sh: round $round stopped at the time limit"
      break
    fi
    failed=$((failed + 1))
    echo "chaos.sh: round $round FAILED (see $log)"
  fi
  grep -E '^(FAILOVER|CRASH MID-REFRESH|PUBSUB|LOCKED|DISK FULL|OVERLOAD)' "$log" || true
done
echo "chaos.sh: $round round(s), $failed failed"
[ "$failed" -eq 0 ]
