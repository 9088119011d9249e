#!/usr/bin/env bash
# Profile-and-fix helper: the cost of Portcullis's authenticated proxy path, measured
# in ways that survive a noisy shared machine.
#
#   ./bench/profile.sh cpu        # CPU seconds per 100k requests, and req/s vs nginx
#   ./bench/profile.sh callgrind  # instructions per request (valgrind, 1 worker)
#
# Both start, on 127.0.0.1: the fixed-answer upstream (bench/nginx/upstream.conf), the
# test provider, and the release binary (store = PROFILE_STORE, default memory), log a
# user in (bench/login.py) and send GET /api/items/42 with the session cookie and
# `X-CSRF: 1` (a `user` route: session lookup, CSRF, token injection, header rewrite).
#
# cpu: wrk -t2 -cPROFILE_CONNECTIONS for PROFILE_DURATION s against nginx (a plain
#      reverse proxy) and Portcullis, alternating (the order rotating per round), PROFILE_ROUNDS times; prints req/s,
#      the ratio to nginx, and each proxy's CPU seconds (user+system, from /proc) per
#      100,000 requests.
# callgrind: Portcullis runs under `valgrind --tool=callgrind` with one worker; after
#      a warm-up the counters are zeroed, wrk -c4 runs PROFILE_DURATION s, and the
#      instructions executed are divided by the requests served. The annotated profile
#      is left in bench/results/callgrind-<store>.txt (top functions, inclusive).
#
# PROFILE_BIN=path: measure that binary instead of the fresh build (PROFILE_LABEL names it).
# PROFILE_MINIMAL=1: also measure examples/minimal_proxy.rs (the least a hyper proxy does
# on this path: cookie, SHA-256, session map, X-CSRF, header strip, Bearer, forward), the
# yardstick of what hyper and tokio cost by themselves; in callgrind mode, measure it
# instead of Portcullis.
# PROFILE_BASE_BIN=path: also measure that binary (e.g. a copy of the build before a
# change) in the same rounds, for a before/after within one run.
# Environment: PROFILE_STORE [memory], PROFILE_DURATION [cpu 6, callgrind 20],
# PROFILE_CONNECTIONS [32], PROFILE_ROUNDS [3], CARGO_TARGET_DIR, PROFILE_NO_BUILD [0].
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
MODE=${1:-cpu}
STORE=${PROFILE_STORE:-memory}
CONNS=${PROFILE_CONNECTIONS:-32}
ROUNDS=${PROFILE_ROUNDS:-3}
if [[ $MODE == callgrind ]]; then DURATION=${PROFILE_DURATION:-20}; else DURATION=${PROFILE_DURATION:-6}; fi
PATH="$PATH:/usr/sbin:/sbin"
for tool in wrk nginx node python3 curl; do
  command -v "$tool" >/dev/null || { echo "$tool is required (see bench/run.sh)" >&2; exit 1; }
done
[[ $MODE == callgrind ]] && ! command -v valgrind >/dev/null && { echo "valgrind is required" >&2; exit 1; }
[[ ${PROFILE_NO_BUILD:-0} == 1 ]] || cargo build --release --bin portcullis
MINIMAL=${PROFILE_MINIMAL:-0}
if [[ $MINIMAL == 1 ]]; then
  [[ ${PROFILE_NO_BUILD:-0} == 1 ]] || cargo build --release --example minimal_proxy
  MIN_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/minimal_proxy"
fi
BIN=${PROFILE_BIN:-"${CARGO_TARGET_DIR:-$ROOT/target}/release/portcullis"}

RUN=$(mktemp -d "${TMPDIR:-/tmp}/portcullis-profile.XXXXXX")
PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  sleep 0.5
  for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
  if [[ ${PROFILE_KEEP:-0} == 1 ]]; then echo "(kept $RUN)" >&2; else rm -rf "$RUN"; fi
}
trap cleanup EXIT
start() { local log=$1; shift; "$@" >"$log" 2>&1 & PIDS+=($!); LAST_PID=$!; }
wait_http() {
  local url=$1 i
  for ((i = 0; i < 600; i++)); do
    [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$url" || true) == 200 ]] && return 0
    sleep 0.1
  done
  echo "not ready: $url" >&2
  tail -n 20 "$RUN"/*.log >&2
  exit 1
}
read -r UP_PORT NGX_PORT GW_PORT BASE_PORT MIN_PORT < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(5)]
for s in socks: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))')
render() { sed -e "s#@RUN@#$RUN#g" -e "s#@UPSTREAM_PORT@#$UP_PORT#g" -e "s#@PROXY_PORT@#$NGX_PORT#g" "$1" >"$2"; }

render bench/nginx/upstream.conf "$RUN/upstream.conf"
start "$RUN/upstream.log" nginx -p "$RUN" -c "$RUN/upstream.conf" -e stderr -g 'daemon off;'
UP_PID=$LAST_PID
wait_http "http://127.0.0.1:$UP_PORT/"
render bench/nginx/proxy.conf "$RUN/proxy.conf"
start "$RUN/nginx.log" nginx -p "$RUN" -c "$RUN/proxy.conf" -e stderr -g 'daemon off;'
NGX_PID=$LAST_PID
wait_http "http://127.0.0.1:$NGX_PORT/"

PROVIDER_CONFIG=$(python3 bench/bench.py provider-config "$UP_PORT" "$GW_PORT" "$BASE_PORT")
export PROVIDER_CONFIG
start "$RUN/provider.log" node demo/provider/provider.mjs
ISSUER=""
for ((i = 0; i < 200; i++)); do
  ISSUER=$(sed -n 's/^READY //p' "$RUN/provider.log" | head -n 1)
  [[ -n $ISSUER ]] && break
  sleep 0.1
done
[[ -n $ISSUER ]] || { echo "provider not ready" >&2; exit 1; }

WORKERS=""
[[ $MODE == callgrind ]] && WORKERS=1
KEY=$("$BIN" keygen)
gateway_config() { # PORT [SQLITE_PATH]: bench/bench.py writes it, as for bench/run.sh
  python3 bench/bench.py config "$STORE" "$1" "$ISSUER" "$KEY" "$UP_PORT" "${2:-$RUN/sessions.db}" "$WORKERS"
}
gateway_config "$GW_PORT" >"$RUN/portcullis.toml"
MIN_COOKIE=$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')
if [[ $MINIMAL == 1 ]]; then
  if [[ $MODE == callgrind ]]; then
    start "$RUN/minimal.log" valgrind --tool=callgrind --callgrind-out-file="$RUN/callgrind.out" \
      "$MIN_BIN" "127.0.0.1:$MIN_PORT" "127.0.0.1:$UP_PORT" "$MIN_COOKIE"
  else
    start "$RUN/minimal.log" "$MIN_BIN" "127.0.0.1:$MIN_PORT" "127.0.0.1:$UP_PORT" "$MIN_COOKIE"
  fi
  MIN_PID=$LAST_PID
  for ((i = 0; i < 300; i++)); do
    [[ $(curl -s -o /dev/null -w '%{http_code}' -H "Cookie: __Host-portcullis=$MIN_COOKIE" -H "X-CSRF: 1" \
      "http://127.0.0.1:$MIN_PORT/api/items/42" || true) == 200 ]] && break
    sleep 0.1
  done
fi
if [[ $MODE == callgrind && $MINIMAL == 0 ]]; then
  start "$RUN/portcullis.log" valgrind --tool=callgrind --callgrind-out-file="$RUN/callgrind.out" \
    "$BIN" serve --config "$RUN/portcullis.toml"
else
  start "$RUN/portcullis.log" "$BIN" serve --config "$RUN/portcullis.toml"
fi
GW_PID=$LAST_PID
wait_http "http://127.0.0.1:$GW_PORT/healthz"
# PROFILE_BASE_BIN: another build (e.g. before a change), measured in the same rounds.
TARGETS=(nginx portcullis)
[[ $MINIMAL == 1 ]] && TARGETS+=(minimal)
if [[ -n ${PROFILE_BASE_BIN:-} && $MODE == cpu ]]; then
  gateway_config "$BASE_PORT" "$RUN/sessions-base.db" >"$RUN/base.toml"
  start "$RUN/base.log" "$PROFILE_BASE_BIN" serve --config "$RUN/base.toml"
  BASE_PID=$LAST_PID
  wait_http "http://127.0.0.1:$BASE_PORT/healthz"
  BASE_COOKIE=$(python3 bench/login.py "http://127.0.0.1:$BASE_PORT" alice alice)
  TARGETS+=(base)
fi
COOKIE=$(python3 bench/login.py "http://127.0.0.1:$GW_PORT" alice alice)
HDR=(-H "Cookie: __Host-portcullis=$COOKIE" -H "X-CSRF: 1")
code=$(curl -s -o /dev/null -w '%{http_code}' "${HDR[@]}" "http://127.0.0.1:$GW_PORT/api/items/42")
[[ $code == 200 ]] || { echo "authenticated request answered $code" >&2; exit 1; }

ticks() { # PID... -> user+system ticks, children (nginx workers) included
  local t=0 p f
  for p in "$@" $(for q in "$@"; do pgrep -P "$q" || true; done); do
    read -r -a f <<<"$(sed 's/^.*) //' "/proc/$p/stat")"
    t=$((t + f[11] + f[12]))
  done
  echo "$t"
}
requests_of() { sed -n 's/^ *\([0-9]*\) requests in.*/\1/p' "$1"; }
HZ=$(getconf CLK_TCK)
# Every result is appended to bench/results/profile.jsonl with the commit measured
# (PROFILE_LABEL names the build; bench/report.py turns the file into the
# profile-and-fix table of docs/performance.md).
DIRTY=""
[[ -z $(git status --porcelain -- src Cargo.toml Cargo.lock) ]] || DIRTY="+"
LABEL=${PROFILE_LABEL:-$(git rev-parse --short HEAD)$DIRTY}
record() {
  mkdir -p bench/results
  python3 -c 'import json, sys, time; d = json.loads(sys.argv[1]); d.update(build=sys.argv[2], date=time.strftime("%Y-%m-%d %H:%M")); print(json.dumps(d))' \
    "$1" "$2" >>bench/results/profile.jsonl
}

if [[ $MODE == callgrind ]]; then
  CG_PID=$GW_PID CG_URL="http://127.0.0.1:$GW_PORT/api/items/42" CG_HDR=("${HDR[@]}")
  if [[ $MINIMAL == 1 ]]; then
    CG_PID=$MIN_PID CG_URL="http://127.0.0.1:$MIN_PORT/api/items/42" STORE=minimal
    CG_HDR=(-H "Cookie: __Host-portcullis=$MIN_COOKIE" -H "X-CSRF: 1")
  fi
  wrk -t1 -c4 -d5s "${CG_HDR[@]}" "$CG_URL" >/dev/null
  callgrind_control -z "$CG_PID" >/dev/null 2>&1
  wrk -t1 -c4 -d"${DURATION}s" --timeout 10s "${CG_HDR[@]}" "$CG_URL" >"$RUN/wrk.txt"
  sleep 1
  callgrind_control -d "$CG_PID" >/dev/null 2>&1
  sleep 1
  n=$(requests_of "$RUN/wrk.txt")
  dump=$(ls -t "$RUN"/callgrind.out* | head -n 1)
  total=$(sed -n 's/^summary: //p' "$dump")
  mkdir -p bench/results
  callgrind_annotate --inclusive=yes --auto=no --threshold=100 "$dump" >"$RUN/annotated.txt" 2>/dev/null || true
  head -n 150 "$RUN/annotated.txt" >"bench/results/callgrind-$STORE.txt"
  echo "callgrind $STORE: $n requests, $total instructions, $((total / n)) instructions/request"
  record "{\"mode\":\"callgrind\",\"store\":\"$STORE\",\"requests\":$n,\"instructions\":$total,\"instructions_per_request\":$((total / n))}" "$LABEL"
  exit 0
fi

# PROFILE_HOLD=seconds: print where everything runs, then wait (for strace, perf, oha by hand).
if [[ -n ${PROFILE_HOLD:-} ]]; then
  echo "HOLD gw=$GW_PORT pid=$GW_PID cookie=$COOKIE nginx=$NGX_PORT nginx_pid=$NGX_PID"
  [[ -n ${BASE_PID:-} ]] && echo "HOLD base=$BASE_PORT base_pid=$BASE_PID base_cookie=$BASE_COOKIE"
  sleep "$PROFILE_HOLD"
fi
for ((r = 1; r <= ROUNDS; r++)); do
  # The order rotates from round to round: whatever runs just after another load (a
  # warm or a tired machine) is a different target each time, not always the same one.
  shift_by=$(((r - 1) % ${#TARGETS[@]}))
  ORDER=("${TARGETS[@]:shift_by}" "${TARGETS[@]:0:shift_by}")
  for t in "${ORDER[@]}"; do
    hdr=("${HDR[@]}")
    case $t in
      nginx) url="http://127.0.0.1:$NGX_PORT/api/items/42" pid=$NGX_PID ;;
      portcullis) url="http://127.0.0.1:$GW_PORT/api/items/42" pid=$GW_PID ;;
      base) url="http://127.0.0.1:$BASE_PORT/api/items/42" pid=$BASE_PID
        hdr=(-H "Cookie: __Host-portcullis=$BASE_COOKIE" -H "X-CSRF: 1") ;;
      minimal) url="http://127.0.0.1:$MIN_PORT/api/items/42" pid=$MIN_PID
        hdr=(-H "Cookie: __Host-portcullis=$MIN_COOKIE" -H "X-CSRF: 1") ;;
    esac
    a=$(ticks "$pid")
    wrk -t2 -c"$CONNS" -d"${DURATION}s" "${hdr[@]}" "$url" >"$RUN/$t.txt"
    b=$(ticks "$pid")
    n=$(requests_of "$RUN/$t.txt")
    rps=$((n / DURATION))
    eval "rps_$t=$rps"
    cpu=$(awk -v t=$((b - a)) -v h="$HZ" -v n="$n" 'BEGIN { printf "%.2f", t / h * 100000 / n }')
    printf '%-10s round %d: %6d req/s  %5.2f CPU s / 100k req\n' "$t" "$r" "$rps" "$cpu"
    eval "cpu_$t=$cpu"
  done
  awk -v a="$rps_portcullis" -v b="$rps_nginx" 'BEGIN { printf "           round ratio portcullis/nginx: %.2fx\n", a / b }'
  build=$LABEL
  for t in portcullis base; do
    [[ $t == base ]] && { [[ -n ${rps_base:-} ]] || continue; build=${PROFILE_BASE_LABEL:-base}; }
    rv="rps_$t" cv="cpu_$t"
    record "{\"mode\":\"cpu\",\"store\":\"$STORE\",\"connections\":$CONNS,\"round\":$r,\"rps\":${!rv},\"cpu_s_per_100k\":${!cv},\"nginx_rps\":$rps_nginx,\"nginx_cpu_s_per_100k\":$cpu_nginx}" "$build"
  done
  if [[ -n ${rps_base:-} ]]; then
    awk -v a="$rps_base" -v b="$rps_nginx" 'BEGIN { printf "           round ratio base/nginx: %.2fx\n", a / b }'
  fi
  if [[ -n ${rps_minimal:-} ]]; then
    awk -v a="$rps_minimal" -v b="$rps_nginx" 'BEGIN { printf "           round ratio minimal/nginx: %.2fx\n", a / b }'
    record "{\"mode\":\"cpu\",\"store\":\"minimal\",\"connections\":$CONNS,\"round\":$r,\"rps\":$rps_minimal,\"cpu_s_per_100k\":$cpu_minimal,\"nginx_rps\":$rps_nginx,\"nginx_cpu_s_per_100k\":$cpu_nginx}" "minimal_proxy@$LABEL"
  fi
done
