#!/usr/bin/env bash
# Runs the Portcullis demo on loopback:
#   test OpenID provider  http://localhost:9090   (demo/provider, npm oidc-provider)
#   sample API            http://127.0.0.1:9100   (demo/api, checks tokens by introspection)
#   Portcullis            http://127.0.0.1:8080   (demo/demo.toml, serves demo/spa)
# Open http://127.0.0.1:8080/ and log in as alice/alice or bob/bob. Ctrl-C stops everything.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$(pwd)"

LOG_DIR="$ROOT/target/demo"
mkdir -p "$LOG_DIR"

if [[ ! -d demo/provider/node_modules ]]; then
  echo "==> npm ci (demo/provider)"
  (cd demo/provider && npm ci --no-audit --no-fund)
fi

echo "==> cargo build --release"
cargo build --release

PIDS=()
cleanup() {
  trap - EXIT INT TERM
  local pid
  for pid in "${PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Poll until a process is ready; fail (with its log) if it dies first.
wait_ready_line() { # name pid logfile
  local name=$1 pid=$2 log=$3 i
  for ((i = 0; i < 100; i++)); do
    if grep -q '^READY ' "$log" 2>/dev/null; then
      return 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "!! $name exited; its log ($log):" >&2
      cat "$log" "${log%.out}.err" >&2 2>/dev/null || true
      exit 1
    fi
    sleep 0.1
  done
  echo "!! $name not ready after 10 s" >&2
  exit 1
}

wait_http() { # name pid url
  local name=$1 pid=$2 url=$3 i
  for ((i = 0; i < 300; i++)); do
    if curl -fsS -o /dev/null --max-time 1 "$url" 2>/dev/null; then
      return 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "!! $name exited; see $LOG_DIR/portcullis.log" >&2
      tail -n 50 "$LOG_DIR/portcullis.log" >&2 || true
      exit 1
    fi
    sleep 0.1
  done
  echo "!! $name not ready after 30 s ($url)" >&2
  exit 1
}

echo "==> starting the test provider (http://localhost:9090)"
node demo/provider/provider.mjs demo/provider/demo-config.json \
  >"$LOG_DIR/provider.out" 2>"$LOG_DIR/provider.err" &
PIDS+=($!)
wait_ready_line provider "$!" "$LOG_DIR/provider.out"

echo "==> starting the sample API (http://127.0.0.1:9100)"
PORT=9100 \
INTROSPECTION_URL=http://localhost:9090/token/introspection \
API_CLIENT_ID=demo-api \
API_CLIENT_SECRET=demo-api-secret \
  node demo/api/server.mjs >"$LOG_DIR/api.out" 2>"$LOG_DIR/api.err" &
PIDS+=($!)
wait_ready_line api "$!" "$LOG_DIR/api.out"

echo "==> starting Portcullis (http://127.0.0.1:8080)"
target/release/portcullis serve --config demo/demo.toml >"$LOG_DIR/portcullis.log" 2>&1 &
PIDS+=($!)
wait_http portcullis "$!" http://127.0.0.1:8080/healthz

cat <<EOF

  Portcullis demo is running:  http://127.0.0.1:8080/

  Test logins:  alice / alice   (Alice Liddell)
                bob   / bob     (Bob Builder)

  Logs: $LOG_DIR/{provider.err,api.err,portcullis.log}
  Press Ctrl-C to stop.

EOF

# Wait until any of the three exits (or Ctrl-C); the EXIT trap stops the others.
set +e
wait -n "${PIDS[@]}"
status=$?
set -e
echo "!! a demo process exited (status $status); stopping the others" >&2
exit "$status"
