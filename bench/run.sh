#!/usr/bin/env bash
# The Portcullis benchmark, in one command, on one machine, in one run:
#
#   ./bench/run.sh
#
# 1. builds Portcullis (`cargo build --release`) and the session-memory bench; installs
#    wrk and nginx (apt-get) and oha (cargo install --locked) when they are missing;
# 2. starts, all on 127.0.0.1 and free ports:
#    - the upstream: nginx, one worker, answering every request with a fixed 68-byte
#      JSON body from its config (bench/nginx/upstream.conf);
#    - the yardstick: nginx as a plain keep-alive reverse proxy to that upstream
#      (bench/nginx/proxy.conf: worker_processes auto, upstream keepalive 1024);
#    - the test OpenID provider (demo/provider/provider.mjs), issuing 1-hour JWT access
#      tokens (so no refresh happens during the run);
#    - Portcullis (the release binary) twice: store = "memory" and store = "sqlite", one
#      route `/api` (token = "user") to the upstream; and store = "redis" with a
#      redis-server of its own, if this build accepts it (else a note says so);
# 3. logs a user in to each Portcullis over HTTP (bench/login.py) and checks that the
#    authenticated path works (200 with the cookie and X-CSRF, 403 without X-CSRF);
# 4. loads every target in turn — direct upstream, nginx, each Portcullis — with the
#    same request (GET /api/items/42 with the session cookie and `X-CSRF: 1`):
#    - closed loop at 32 and 256 connections (wrk -t2): throughput and latency;
#    - open loop at 1,000 and 10,000 req/s (oha -q, latency corrected): latency;
#    interleaving the targets within each mode (the order rotates), so every ratio
#    compares measurements taken minutes apart at most;
# 5. measures the memory store's RSS per 100,000 sessions and SQLite's bytes per
#    session (cargo bench --bench session_rss);
# 6. prints the table and writes bench/results/latest.{json,md,svg}.
#
# Environment (defaults in brackets):
#   BENCH_DURATION [8]        seconds per cell        BENCH_WARMUP [2]  seconds of warm-up per target
#   BENCH_ROUNDS [1]          rounds of every cell (the table shows the median)
#   BENCH_CONNECTIONS ["32 256"]   BENCH_RATES ["1000 10000"]   BENCH_RATE_CONNECTIONS [64]
#   BENCH_TARGETS ["direct nginx portcullis-memory portcullis-sqlite portcullis-redis"]
#   BENCH_SESSIONS [100000]   sessions for the memory-store RSS measurement
#   BENCH_SQLITE_SESSIONS [20000]  sessions for SQLite's bytes per session
#   BENCH_OUT [bench/results] BENCH_KEEP [0]  1 = keep the run directory (logs, configs)
#   BENCH_NICE [-10 as root, else 0]  CPU priority of the servers and load generators
#   BENCH_PERF [0]            1 = afterwards, profile each Portcullis under load with perf
#                             (bench/results/perf-<target>.txt)
#   BENCH_WAIT_QUIET [0]      wait up to this many seconds for other processes to leave
#                             the CPUs idle before loading
#   BENCH_CELL_WAIT [20]      before each cell, wait up to this many seconds for a quiet
#                             second (under 10 % of the CPUs busy)
#   BENCH_RETRIES [2]         measure a cell again when other processes took more than
#   BENCH_NOISY_PCT [5]       this share of the CPUs during it; keep the quietest attempt
#                             (each cell records the share: "other CPU %")
#
# With the defaults the whole run takes about 3 minutes after the build. Every process
# it starts is stopped on exit (trap), and every load goes to 127.0.0.1 for a bounded
# time. The machine's cores are shared by the load generator, the proxy and the
# upstream: only ratios within one run mean anything (see docs/performance.md).
set -euo pipefail

# ./bench/run.sh --scale: also fill a SQLite database and a Redis with
# BENCH_SCALE_SESSIONS [1000000] sessions first (cargo bench --bench store_scale: creation
# rate and lookup latency at that size), and load two more targets in the same run,
# portcullis-sqlite-1m and portcullis-redis-1m, whose stores hold them: the proxy path
# with a large store next to the same store empty.
SCALE=0
for arg in "$@"; do
  case $arg in
    --scale) SCALE=1 ;;
    *) echo "usage: $0 [--scale]" >&2; exit 2 ;;
  esac
done
SCALE_SESSIONS=${BENCH_SCALE_SESSIONS:-1000000}

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$(pwd)"

DURATION=${BENCH_DURATION:-8}
WARMUP=${BENCH_WARMUP:-2}
ROUNDS=${BENCH_ROUNDS:-1}
CONNECTIONS=${BENCH_CONNECTIONS:-"32 256"}
RATES=${BENCH_RATES:-"1000 10000"}
RATE_CONNECTIONS=${BENCH_RATE_CONNECTIONS:-64}
TARGETS_WANTED=${BENCH_TARGETS:-"direct nginx portcullis-memory portcullis-sqlite portcullis-redis"}
SESSIONS=${BENCH_SESSIONS:-100000}
SQLITE_SESSIONS=${BENCH_SQLITE_SESSIONS:-20000}
OUT=${BENCH_OUT:-$ROOT/bench/results}
KEEP=${BENCH_KEEP:-0}
CELL_WAIT=${BENCH_CELL_WAIT:-20}
RETRIES=${BENCH_RETRIES:-2}
NOISY_PCT=${BENCH_NOISY_PCT:-5}
export BENCH_NOISY_PCT=$NOISY_PCT
WRK_THREADS=2
REQUEST_PATH="/api/items/42"
COOKIE_NAME="__Host-portcullis"

STARTED_AT=$(date +%s)
say() { printf '\n==> %s\n' "$*"; }
note() { printf -- '--> %s\n' "$*"; }
loud() { printf '\n!!! %s\n\n' "$*" >&2; }
die() {
  loud "$*"
  exit 1
}

wanted() { [[ " $TARGETS_WANTED " == *" $1 "* ]]; }

# ---------------------------------------------------------------- prerequisites

say "prerequisites"
for tool in node npm python3 curl cargo; do
  command -v "$tool" >/dev/null || die "$tool is required"
done
PATH="$PATH:/usr/sbin:/sbin:${CARGO_HOME:-$HOME/.cargo}/bin"
missing_apt=()
command -v wrk >/dev/null || missing_apt+=(wrk)
command -v nginx >/dev/null || missing_apt+=(nginx)
if ((${#missing_apt[@]})); then
  [[ $(id -u) -eq 0 ]] || die "missing ${missing_apt[*]}: run: sudo apt-get install -y ${missing_apt[*]}"
  loud "INSTALLING ${missing_apt[*]} WITH apt-get (missing on this machine)"
  apt-get update
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing_apt[@]}"
fi
if ! command -v oha >/dev/null; then
  loud "INSTALLING oha WITH cargo install --locked oha (missing on this machine; takes a few minutes)"
  cargo install --locked oha
fi
NGINX=$(command -v nginx)
if [[ ! -d demo/provider/node_modules/oidc-provider ]]; then
  note "npm ci (demo/provider)"
  (cd demo/provider && npm ci --no-audit --no-fund)
fi

say "cargo build --release"
cargo build --release
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN="$TARGET_DIR/release/portcullis"
[[ -x "$BIN" ]] || die "no binary at $BIN"
note "building the session-memory bench (cargo bench --bench session_rss --no-run)"
cargo bench --bench session_rss --no-run 2>&1 | tee "${TMPDIR:-/tmp}/portcullis-bench-build.$$"
# Run exactly this build later (a source change meanwhile must not trigger a rebuild).
SESSION_RSS_BIN=$(sed -n 's/.*Executable .*(\(.*\))$/\1/p' "${TMPDIR:-/tmp}/portcullis-bench-build.$$" | tail -n 1)
rm -f "${TMPDIR:-/tmp}/portcullis-bench-build.$$"
[[ -x $SESSION_RSS_BIN ]] || die "could not find the session_rss bench executable"
if ((SCALE)); then
  note "building the store-scale bench (cargo bench --bench store_scale --no-run)"
  cargo bench --bench store_scale --no-run 2>&1 | tee "${TMPDIR:-/tmp}/portcullis-bench-build.$$"
  STORE_SCALE_BIN=$(sed -n 's/.*Executable .*(\(.*\))$/\1/p' "${TMPDIR:-/tmp}/portcullis-bench-build.$$" | tail -n 1)
  rm -f "${TMPDIR:-/tmp}/portcullis-bench-build.$$"
  [[ -x $STORE_SCALE_BIN ]] || die "could not find the store_scale bench executable"
  command -v redis-server >/dev/null || die "--scale needs redis-server: apt-get install -y redis-server"
fi

# Everything from here on (servers, load generator) runs at a higher CPU priority, so
# that background jobs on a shared machine disturb the measurements less (they still
# take what is left: see "other CPU %"). All targets get the same priority.
NICE=${BENCH_NICE:-$([[ $(id -u) -eq 0 ]] && echo -10 || echo 0)}
if [[ $NICE != 0 ]]; then
  renice -n "$NICE" -p $$ >/dev/null || loud "renice to $NICE failed: running at normal priority"
fi

# ---------------------------------------------------------------- run directory and cleanup

RUN=$(mktemp -d "${TMPDIR:-/tmp}/portcullis-bench.XXXXXX")
mkdir -p "$RUN/cells"
: >"$RUN/cells.jsonl"
: >"$RUN/notes.txt"
PIDS=()
NAMES=()
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  local i pid
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    kill -TERM "${PIDS[$i]}" 2>/dev/null || true
  done
  for ((i = 0; i < 50; i++)); do
    local alive=0
    for pid in "${PIDS[@]}"; do
      if kill -0 "$pid" 2>/dev/null; then alive=1; fi
    done
    ((alive)) || break
    sleep 0.1
  done
  for pid in "${PIDS[@]}"; do
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if [[ $rc -ne 0 || $KEEP == 1 ]]; then
    echo "(run directory kept: $RUN)" >&2
  else
    rm -rf "$RUN"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start NAME LOGFILE CMD...: starts a process in the background, remembered for cleanup.
start() {
  local name=$1 log=$2
  shift 2
  : >"$log"
  "$@" >"$log" 2>&1 &
  PIDS+=($!)
  NAMES+=("$name")
  LAST_PID=$!
}

# wait_http NAME PID URL [STATUS]: polls until URL answers STATUS (default 200).
wait_http() {
  local name=$1 pid=$2 url=$3 want=${4:-200} i code
  for ((i = 0; i < 200; i++)); do
    kill -0 "$pid" 2>/dev/null || {
      tail -n 30 "$RUN/$name.log" >&2 || true
      die "$name exited before it was ready"
    }
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$url" || true)
    [[ $code == "$want" ]] && return 0
    sleep 0.1
  done
  tail -n 30 "$RUN/$name.log" >&2 || true
  die "$name not ready after 20 s ($url answered $code)"
}

# Free ports, all distinct (bound together, then released).
read -r UP_PORT NGX_PORT MEM_PORT SQL_PORT RDS_PORT REDIS_PORT SQL1M_PORT RDS1M_PORT REDIS1M_PORT < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(9)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
')

# ---------------------------------------------------------------- machine

python3 - "$RUN/machine.json" "$DURATION" "$ROUNDS" "$NGINX" <<'EOF'
import json, os, platform, subprocess, sys, time
def out(*cmd):
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        return (r.stdout + r.stderr).strip().splitlines()[0]
    except Exception:
        return None
cpu = None
with open("/proc/cpuinfo") as f:
    for line in f:
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
mem_kb = None
with open("/proc/meminfo") as f:
    for line in f:
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
commit = out("git", "rev-parse", "--short", "HEAD")
dirty = subprocess.run(["git", "status", "--porcelain", "--", "src", "Cargo.toml", "Cargo.lock"],
                       capture_output=True, text=True).stdout.strip() != ""
json.dump({
    "date": time.strftime("%Y-%m-%d %H:%M %Z"),
    "nproc": os.cpu_count(),
    "cpu": cpu,
    "mem_gib": round(mem_kb / 1048576, 1) if mem_kb else None,
    "kernel": platform.release(),
    "os": out("sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"),
    "commit": f"{commit}{' (with uncommitted changes)' if dirty else ''}",
    "rustc": out("rustc", "--version"),
    "nginx": out(sys.argv[4], "-v"),
    "wrk": out("sh", "-c", "wrk -v 2>&1 | head -1"),
    "oha": out("oha", "--version"),
    "node": out("node", "--version"),
    "duration_s": int(sys.argv[2]),
    "rounds": int(sys.argv[3]),
}, open(sys.argv[1], "w"), indent=2)
EOF

# ---------------------------------------------------------------- upstream, nginx, provider

render() { # TEMPLATE OUT
  sed -e "s#@RUN@#$RUN#g" -e "s#@UPSTREAM_PORT@#$UP_PORT#g" -e "s#@PROXY_PORT@#$NGX_PORT#g" "$1" >"$2"
}

say "starting the upstream (nginx, fixed answer) on 127.0.0.1:$UP_PORT"
render bench/nginx/upstream.conf "$RUN/upstream.conf"
start upstream "$RUN/upstream.log" "$NGINX" -p "$RUN" -c "$RUN/upstream.conf" -e stderr -g 'daemon off;'
UP_PID=$LAST_PID
wait_http upstream "$UP_PID" "http://127.0.0.1:$UP_PORT/api/items/42"

if wanted nginx; then
  say "starting nginx as a plain reverse proxy on 127.0.0.1:$NGX_PORT"
  render bench/nginx/proxy.conf "$RUN/proxy.conf"
  start nginx "$RUN/nginx.log" "$NGINX" -p "$RUN" -c "$RUN/proxy.conf" -e stderr -g 'daemon off;'
  NGX_PID=$LAST_PID
  wait_http nginx "$NGX_PID" "http://127.0.0.1:$NGX_PORT/api/items/42"
fi

say "starting the test OpenID provider"
PROVIDER_CONFIG=$(python3 - "$UP_PORT" "$MEM_PORT" "$SQL_PORT" "$RDS_PORT" "$SQL1M_PORT" "$RDS1M_PORT" <<'EOF'
import json, sys
up, *ports = sys.argv[1:]
origins = [f"http://127.0.0.1:{p}" for p in ports]
print(json.dumps({
    "port": 0,
    "host": "127.0.0.1",
    "accessTokenTTL": 3600,
    "refreshTokenTTL": 86400,
    # JWT access tokens (RS256, audience = the upstream), as an API gateway usually
    # forwards, rather than 43-byte opaque ones.
    "resourceIndicators": {"defaultResource": f"http://127.0.0.1:{up}/", "useGrantedResource": True,
                           "accessTokenTTL": 3600},
    "clients": [{
        "client_id": "portcullis-bench",
        "client_secret": "portcullis-bench-secret-0123456789",
        "token_endpoint_auth_method": "client_secret_basic",
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "redirect_uris": [f"{o}/bff/callback" for o in origins],
        "post_logout_redirect_uris": [f"{o}/" for o in origins],
    }],
}))
EOF
)
export PROVIDER_CONFIG
start provider "$RUN/provider.log" node demo/provider/provider.mjs
PROVIDER_PID=$LAST_PID
ISSUER=""
for ((i = 0; i < 200; i++)); do
  ISSUER=$(sed -n 's/^READY //p' "$RUN/provider.log" | head -n 1)
  [[ -n $ISSUER ]] && break
  kill -0 "$PROVIDER_PID" 2>/dev/null || {
    tail -n 30 "$RUN/provider.log" >&2
    die "the provider exited"
  }
  sleep 0.1
done
[[ -n $ISSUER ]] || die "the provider did not print READY within 20 s"
note "issuer $ISSUER"

# ---------------------------------------------------------------- Portcullis

KEY=$("$BIN" keygen)
portcullis_config() { # STORE PORT [SQLITE_PATH] [REDIS_PORT]
  local store=$1 port=$2 sqlite_path=${3:-$RUN/sessions-$1.db} redis_port=${4:-$REDIS_PORT}
  cat <<EOF
# Generated by bench/run.sh
[server]
listen = "127.0.0.1:$port"
public_origin = "http://127.0.0.1:$port"
drain_timeout = "1s"

[oidc]
issuer = "$ISSUER"
client_id = "portcullis-bench"
client_secret = "portcullis-bench-secret-0123456789"
auth_method = "client_secret_basic"
scopes = ["openid", "profile", "email", "offline_access"]
# The provider's JWT access tokens are for the API (audience = upstream), not userinfo.
userinfo = false

[session]
store = "$store"
sqlite_path = "$sqlite_path"
redis_url = "redis://127.0.0.1:$redis_port/0"
keys = ["$KEY"]

[[routes]]
prefix = "/api"
upstream = "http://127.0.0.1:$UP_PORT"
token = "user"
EOF
}

declare -A URL PID_OF COOKIE
URL[direct]="http://127.0.0.1:$UP_PORT$REQUEST_PATH"
PID_OF[direct]=""
if wanted nginx; then
  URL[nginx]="http://127.0.0.1:$NGX_PORT$REQUEST_PATH"
  PID_OF[nginx]=$NGX_PID
fi

start_portcullis() { # STORE PORT [NAME] [SQLITE_PATH] [REDIS_PORT]
  local store=$1 port=$2 name=${3:-portcullis-$1}
  portcullis_config "$store" "$port" "${4:-}" "${5:-}" >"$RUN/$name.toml"
  say "starting Portcullis (store = $store) on 127.0.0.1:$port"
  start "$name" "$RUN/$name.log" "$BIN" serve --config "$RUN/$name.toml"
  PID_OF[$name]=$LAST_PID
  URL[$name]="http://127.0.0.1:$port$REQUEST_PATH"
  wait_http "$name" "$LAST_PID" "http://127.0.0.1:$port/healthz"
}

wanted portcullis-memory && start_portcullis memory "$MEM_PORT"
wanted portcullis-sqlite && start_portcullis sqlite "$SQL_PORT"

if wanted portcullis-redis; then
  portcullis_config redis "$RDS_PORT" >"$RUN/portcullis-redis-check.toml"
  if check_out=$("$BIN" check --config "$RUN/portcullis-redis-check.toml" 2>&1); then
    if ! command -v redis-server >/dev/null; then
      [[ $(id -u) -eq 0 ]] || die "store = redis needs redis-server: sudo apt-get install -y redis-server"
      loud "INSTALLING redis-server WITH apt-get (missing on this machine)"
      apt-get update
      DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server
    fi
    say "starting redis-server on 127.0.0.1:$REDIS_PORT"
    start redis "$RUN/redis.log" redis-server --bind 127.0.0.1 --port "$REDIS_PORT" \
      --save "" --appendonly no --dir "$RUN"
    REDIS_PID=$LAST_PID
    for ((i = 0; i < 100; i++)); do
      [[ $(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null || true) == PONG ]] && break
      kill -0 "$REDIS_PID" 2>/dev/null || die "redis-server exited (see $RUN/redis.log)"
      sleep 0.1
    done
    start_portcullis redis "$RDS_PORT"
    # The store is part of this setup's cost: its CPU counts as the proxy's.
    PID_OF[portcullis-redis]="${PID_OF[portcullis-redis]} $REDIS_PID"
  else
    msg="redis store not available in this build (portcullis check: $(tail -n 1 <<<"$check_out"))"
    loud "$msg"
    echo "$msg" >>"$RUN/notes.txt"
  fi
fi

if ((SCALE)); then
  say "store scale: $SCALE_SESSIONS sessions in SQLite and in Redis (cargo bench --bench store_scale)"
  start redis-1m "$RUN/redis-1m.log" redis-server --bind 127.0.0.1 --port "$REDIS1M_PORT" \
    --save "" --appendonly no --dir "$RUN"
  REDIS1M_PID=$LAST_PID
  for ((i = 0; i < 100; i++)); do
    [[ $(redis-cli -h 127.0.0.1 -p "$REDIS1M_PORT" ping 2>/dev/null || true) == PONG ]] && break
    sleep 0.1
  done
  STORE_SCALE_STORES=sqlite,redis STORE_SCALE_SESSIONS=$SCALE_SESSIONS \
    STORE_SCALE_SQLITE_PATH="$RUN/sessions-sqlite-1m.db" \
    STORE_SCALE_REDIS_URL="redis://127.0.0.1:$REDIS1M_PORT/0" \
    "$STORE_SCALE_BIN" 2>"$RUN/store_scale.err" | tee "$RUN/store_scale.out" ||
    die "the store_scale bench failed (see $RUN/store_scale.err)"
  sed -n 's/^RESULT //p' "$RUN/store_scale.out" >"$RUN/scale.jsonl"
  redis-cli -h 127.0.0.1 -p "$REDIS1M_PORT" info memory | tr -d '\r' |
    sed -n 's/^used_memory:\([0-9]*\)$/{"store": "redis", "used_memory": \1}/p' >>"$RUN/scale.jsonl"
  start_portcullis sqlite "$SQL1M_PORT" portcullis-sqlite-1m "$RUN/sessions-sqlite-1m.db"
  start_portcullis redis "$RDS1M_PORT" portcullis-redis-1m "" "$REDIS1M_PORT"
  PID_OF[portcullis-redis-1m]="${PID_OF[portcullis-redis-1m]} $REDIS1M_PID"
fi

TARGETS=()
for t in direct nginx portcullis-memory portcullis-sqlite portcullis-sqlite-1m portcullis-redis portcullis-redis-1m; do
  { wanted "$t" || [[ $t == *-1m ]]; } && [[ -n ${URL[$t]:-} ]] && TARGETS+=("$t")
done

# ---------------------------------------------------------------- log in, check

for t in "${TARGETS[@]}"; do
  [[ $t == portcullis-* ]] || continue
  origin=${URL[$t]%"$REQUEST_PATH"}
  note "logging alice in to $t"
  COOKIE[$t]=$(python3 bench/login.py "$origin" alice alice)
  # The authenticated path really is exercised: 200 with cookie + X-CSRF, 403 without
  # X-CSRF, 401 without the cookie.
  ok=$(curl -s -o "$RUN/check-$t.body" -w '%{http_code}' -H "Cookie: $COOKIE_NAME=${COOKIE[$t]}" \
    -H 'X-CSRF: 1' "${URL[$t]}")
  csrf=$(curl -s -o /dev/null -w '%{http_code}' -H "Cookie: $COOKIE_NAME=${COOKIE[$t]}" "${URL[$t]}")
  anon=$(curl -s -o /dev/null -w '%{http_code}' -H 'X-CSRF: 1' "${URL[$t]}")
  [[ $ok == 200 && $csrf == 403 && $anon == 401 ]] ||
    die "$t: expected 200/403/401 (session/no X-CSRF/no cookie), got $ok/$csrf/$anon: $(head -c 300 "$RUN/check-$t.body")"
  grep -q '"widget"' "$RUN/check-$t.body" || die "$t: the upstream's answer did not come back"
  # What the upstream receives as Authorization (the bench upstream echoes it on this
  # one path): a Bearer JWT. Only its length is kept.
  auth=$(curl -s -H "Cookie: $COOKIE_NAME=${COOKIE[$t]}" -H 'X-CSRF: 1' "${URL[$t]%"$REQUEST_PATH"}/api/__bench/authorization")
  [[ $auth == "Bearer ey"* ]] || die "$t: the upstream did not receive a Bearer JWT"
  TOKEN_LEN=$((${#auth} - 7))
  note "$t injects a ${TOKEN_LEN}-byte access token"
  unset auth
done
echo "{\"access_token_bytes\": ${TOKEN_LEN:-0}}" >"$RUN/token.json"
# direct and nginx get the same request bytes (the memory instance's cookie).
for t in direct nginx; do
  [[ -n ${URL[$t]:-} ]] || continue
  COOKIE[$t]=${COOKIE[portcullis-memory]:-${COOKIE[portcullis-sqlite]:-0000000000000000000000000000000000000000000}}
  code=$(curl -s -o /dev/null -w '%{http_code}' "${URL[$t]}")
  [[ $code == 200 ]] || die "$t answered $code"
done

# ---------------------------------------------------------------- load

CLK_TCK=$(getconf CLK_TCK)
# cpu_ticks PID...: user+system clock ticks of the PIDs and their child processes
# (nginx workers).
cpu_ticks() {
  local total=0 p f pid all=()
  for pid in "$@"; do
    all+=("$pid")
    for p in $(pgrep -P "$pid" || true); do all+=("$p"); done
  done
  for p in "${all[@]}"; do
    [[ -r /proc/$p/stat ]] || continue
    read -r -a f <<<"$(sed 's/^.*) //' "/proc/$p/stat")"
    total=$((total + f[11] + f[12]))
  done
  echo "$total"
}

# machine_ticks: "busy steal total irq" clock ticks of all CPUs so far (/proc/stat).
# busy is user + nice + system time of processes; irq is hard and soft interrupt time,
# which the kernel does not charge to any process (on loopback it is mostly our own
# packets), so it is kept apart.
machine_ticks() {
  local _cpu u n s i w irq sirq st _rest
  read -r _cpu u n s i w irq sirq st _rest </proc/stat
  echo "$((u + n + s)) $st $((u + n + s + i + w + irq + sirq + st)) $((irq + sirq))"
}
# children_ticks: CPU ticks of this shell's finished children (the load generator).
children_ticks() {
  local f
  read -r -a f <<<"$(sed 's/^.*) //' "/proc/$$/stat")"
  echo $((f[13] + f[14]))
}

headers_for() {
  HDR=(-H "Cookie: $COOKIE_NAME=${COOKIE[$1]}" -H "X-CSRF: 1")
}

# cell TARGET MODE ROUND ATTEMPT: one measurement, left in CELL_LINE (JSON).
cell() {
  local t=$1 mode=$2 round=$3 attempt=$4 raw="$RUN/cells/$1-$2-r$3-a$4.txt" metrics
  headers_for "$t"
  local p0 u0 p1 u1 m0 m1 g0 g1
  # shellcheck disable=SC2086 # PID_OF holds one or two pids (Portcullis, its redis-server)
  p0=$(cpu_ticks ${PID_OF[$t]})
  u0=$(cpu_ticks "$UP_PID")
  m0=$(machine_ticks)
  g0=$(children_ticks)
  if [[ $mode == c* ]]; then
    timeout $((DURATION + 30)) wrk -t"$WRK_THREADS" -c"${mode#c}" -d"${DURATION}s" --timeout 5s \
      -s bench/wrk_report.lua "${HDR[@]}" "${URL[$t]}" >"$raw" 2>&1 || true
    metrics=$(sed -n 's/^WRK_JSON //p' "$raw")
  else
    timeout $((DURATION + 30)) oha --no-tui --output-format json -z "${DURATION}s" -q "${mode#r}" \
      -c "$RATE_CONNECTIONS" --latency-correction -w -t 5s "${HDR[@]}" "${URL[$t]}" >"$raw" 2>&1 || true
  fi
  g1=$(children_ticks)
  m1=$(machine_ticks)
  # shellcheck disable=SC2086
  p1=$(cpu_ticks ${PID_OF[$t]})
  u1=$(cpu_ticks "$UP_PID")
  [[ $mode == c* ]] || metrics=$(python3 bench/report.py --oha "$raw" || true)
  if [[ -z $metrics ]]; then
    loud "$t $mode: no result (raw output in $raw):"
    tail -n 5 "$raw" >&2 || true
    metrics='{"requests":0,"errors":1,"failed":true}'
  fi
  local proxy_cpu=null
  [[ -n ${PID_OF[$t]} ]] && proxy_cpu=$(awk -v a="$p0" -v b="$p1" -v h="$CLK_TCK" 'BEGIN { printf "%.2f", (b - a) / h }')
  local up_cpu
  up_cpu=$(awk -v a="$u0" -v b="$u1" -v h="$CLK_TCK" 'BEGIN { printf "%.2f", (b - a) / h }')
  # How much of the machine went elsewhere: CPU used by processes other than the proxy,
  # the upstream and the load generator (other sessions, builds...), and hypervisor steal.
  local load
  load=$(awk -v m0="$m0" -v m1="$m1" -v p="$((p1 - p0))" -v u="$((u1 - u0))" -v g="$((g1 - g0))" -v h="$CLK_TCK" '
    BEGIN {
      split(m0, a, " "); split(m1, b, " ")
      busy = b[1] - a[1]; steal = b[2] - a[2]; total = b[3] - a[3]; irq = b[4] - a[4]
      if (total <= 0) total = 1
      other = busy - p - u - g; if (other < 0) other = 0
      printf "\"loadgen_cpu_s\":%.2f,\"machine_busy_pct\":%.1f,\"other_cpu_pct\":%.1f,\"irq_pct\":%.1f,\"steal_pct\":%.1f",
        g / h, 100 * (busy + irq) / total, 100 * other / total, 100 * irq / total, 100 * steal / total
    }')
  CELL_LINE=$(printf '{"target":"%s","mode":"%s","round":%d,"attempt":%d,"proxy_cpu_s":%s,"upstream_cpu_s":%s,%s,"metrics":%s}' \
    "$t" "$mode" "$round" "$attempt" "$proxy_cpu" "$up_cpu" "$load" "$metrics")
  python3 bench/report.py --line "$CELL_LINE"
}

# measure TARGET MODE ROUND: a cell, taken when the machine is quiet if possible, and
# taken again (up to RETRIES times) when other processes and hypervisor steal took more
# than NOISY_PCT of the CPUs meanwhile; the quietest attempt is kept, the others go to
# discarded.jsonl.
measure() {
  local t=$1 mode=$2 round=$3 attempt best="" best_other=1000 other deadline busy
  for ((attempt = 1; attempt <= RETRIES + 1; attempt++)); do
    deadline=$(($(date +%s) + CELL_WAIT))
    while busy=$(busy_pct 1) && ((busy > 10)) && (($(date +%s) < deadline)); do :; done
    cell "$t" "$mode" "$round" "$attempt"
    # Noise: CPU taken by other processes, plus CPU the hypervisor took (steal).
    other=$(sed -n 's/.*"other_cpu_pct":\([0-9.]*\),.*"steal_pct":\([0-9.]*\).*/\1 \2/p' <<<"$CELL_LINE" |
      awk '{ printf "%.1f", $1 + $2 }')
    if [[ -n $best ]]; then
      if awk -v a="${other:-1000}" -v b="$best_other" 'BEGIN { exit !(a < b) }'; then
        echo "$best" >>"$RUN/discarded.jsonl"
        best=$CELL_LINE best_other=${other:-1000}
      else
        echo "$CELL_LINE" >>"$RUN/discarded.jsonl"
      fi
    else
      best=$CELL_LINE best_other=${other:-1000}
    fi
    awk -v a="$best_other" -v n="$NOISY_PCT" 'BEGIN { exit !(a <= n) }' && break
    ((attempt <= RETRIES)) && note "others (or the hypervisor) took ${other}% of the CPUs during that cell: measuring it again"
  done
  echo "$best" >>"$RUN/cells.jsonl"
}

MODES=()
for c in $CONNECTIONS; do MODES+=("c$c"); done
for r in $RATES; do MODES+=("r$r"); done
n_cells=$((${#MODES[@]} * ${#TARGETS[@]} * ROUNDS))
say "load: ${#TARGETS[@]} targets (${TARGETS[*]}) x modes (${MODES[*]}) x $ROUNDS round(s) = $n_cells cells of ${DURATION} s"

# The cores are shared with anything else running on the machine: look before loading.
busy_pct() { # SECONDS -> % of all CPUs busy over that time
  local a b
  a=$(machine_ticks)
  sleep "$1"
  b=$(machine_ticks)
  awk -v a="$a" -v b="$b" 'BEGIN { split(a, x, " "); split(b, y, " "); t = y[3] - x[3]; if (t <= 0) t = 1; printf "%.0f", 100 * (y[1] - x[1] + y[2] - x[2]) / t }'
}
WAIT_QUIET=${BENCH_WAIT_QUIET:-0}
deadline=$(($(date +%s) + WAIT_QUIET))
while :; do
  busy=$(busy_pct 2)
  ((busy <= 10)) && break
  if (($(date +%s) >= deadline)); then
    msg="the machine was busy before the load started (${busy}% of all CPUs used by other processes): expect noise; see other_cpu_pct per cell"
    loud "$msg"
    ps -eo pcpu,comm --sort=-pcpu | head -n 6 >&2
    echo "$msg" >>"$RUN/notes.txt"
    break
  fi
  note "machine busy (${busy}% CPU used by others); waiting for it to calm down (BENCH_WAIT_QUIET=$WAIT_QUIET)"
  sleep 8
done

for t in "${TARGETS[@]}"; do
  note "warm-up $t (${WARMUP} s, 32 connections)"
  headers_for "$t"
  timeout $((WARMUP + 30)) wrk -t"$WRK_THREADS" -c32 -d"${WARMUP}s" "${HDR[@]}" "${URL[$t]}" >/dev/null 2>&1 || true
done

k=0
for ((round = 1; round <= ROUNDS; round++)); do
  for mode in "${MODES[@]}"; do
    # Rotate the order so no target is always measured first (or right after another).
    n=${#TARGETS[@]}
    for ((j = 0; j < n; j++)); do
      t=${TARGETS[$(((j + k) % n))]}
      measure "$t" "$mode" "$round"
      sleep 0.5
    done
    k=$((k + 1))
  done
done

# Anything that went wrong in the servers during the load (besides routine info lines).
for t in "${TARGETS[@]}"; do
  [[ $t == portcullis-* ]] || continue
  # (the csrf_rejected event of the 403 check above is expected)
  n_warn=$(grep -E 'WARN|ERROR' "$RUN/$t.log" | grep -c -v -e csrf_rejected || true)
  if [[ $n_warn -gt 0 ]]; then
    echo "$t logged $n_warn warning/error lines during the run (see its log)" >>"$RUN/notes.txt"
    grep -E 'WARN|ERROR' "$RUN/$t.log" | grep -v -e csrf_rejected | head -n 3 >&2 || true
  fi
done

# ---------------------------------------------------------------- optional profile

# BENCH_PERF=1: after the measured cells, profile each Portcullis under the c32 load with
# perf (not during the measurements: perf costs a few percent).
if [[ ${BENCH_PERF:-0} == 1 ]]; then
  if command -v perf >/dev/null; then
    for t in "${TARGETS[@]}"; do
      [[ $t == portcullis-* ]] || continue
      say "profiling $t with perf (c32, ${DURATION} s)"
      headers_for "$t"
      pid=${PID_OF[$t]%% *}
      perf record -q -F 499 --call-graph dwarf,16384 -p "$pid" -o "$RUN/perf-$t.data" -- sleep "$DURATION" >"$RUN/perf-$t.log" 2>&1 &
      perf_pid=$!
      timeout $((DURATION + 30)) wrk -t"$WRK_THREADS" -c32 -d"${DURATION}s" "${HDR[@]}" "${URL[$t]}" >/dev/null 2>&1 || true
      wait "$perf_pid" || true
      mkdir -p "$OUT"
      perf report -i "$RUN/perf-$t.data" --no-children --sort dso --stdio -g none >"$RUN/perf-$t.dso" 2>/dev/null || true
      perf report -i "$RUN/perf-$t.data" --no-children --sort symbol --stdio -g none --percent-limit 0.5 \
        >"$RUN/perf-$t.sym" 2>/dev/null || true
      {
        echo "# perf profile of $t under wrk -c32, ${DURATION} s ($(date -u +%FT%TZ)); self time"
        echo "## by DSO (kernel vs user space)"
        grep -v -e '^#' -e '^$' "$RUN/perf-$t.dso" | sed -E 's/[[:space:]]+$//' | sed -n '1,15p'
        echo "## by symbol (>= 0.5 %)"
        grep -v -e '^#' -e '^$' "$RUN/perf-$t.sym" | sed -E 's/([[:space:]]+-){2}[[:space:]]*$//' | sed -n '1,80p'
      } >"$OUT/perf-$t.txt"
      note "wrote $OUT/perf-$t.txt"
    done
  else
    loud "BENCH_PERF=1 but perf is not installed (apt-get install linux-perf)"
  fi
fi

# ---------------------------------------------------------------- stop servers, session memory

say "stopping the servers"
for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
  kill -TERM "${PIDS[$i]}" 2>/dev/null || true
done
for pid in "${PIDS[@]}"; do
  wait "$pid" 2>/dev/null || true
done
PIDS=()

say "session memory: RSS per $SESSIONS sessions (memory store), bytes per session (SQLite)"
if BENCH_SESSIONS=$SESSIONS BENCH_SQLITE_SESSIONS=$SQLITE_SESSIONS \
  "$SESSION_RSS_BIN" 2>"$RUN/session_rss.err" | tee "$RUN/session_rss.out"; then
  sed -n 's/^RESULT //p' "$RUN/session_rss.out" >"$RUN/sessions.json"
  [[ -s "$RUN/sessions.json" ]] || rm -f "$RUN/sessions.json"
else
  loud "the session_rss bench failed (see $RUN/session_rss.err)"
  echo "the session_rss bench failed; no session memory figures" >>"$RUN/notes.txt"
  KEEP=1
fi

# ---------------------------------------------------------------- report

say "results"
# docs/performance.md is bench/performance.md.in filled with this run's results (only
# when the results go to bench/results, the ones the page links to).
DOCS=""
[[ $OUT == "$ROOT/bench/results" ]] && DOCS="$ROOT/bench/performance.md.in:$ROOT/docs/performance.md"
BENCH_DOCS=$DOCS python3 bench/report.py "$RUN" "$OUT"
elapsed=$(($(date +%s) - STARTED_AT))
note "wrote $OUT/latest.json, $OUT/latest.md, $OUT/latest.svg (run took ${elapsed} s)"
