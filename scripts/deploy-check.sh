#!/usr/bin/env bash
# Checks the deployment artefacts in deploy/ on this machine (no image registry needed):
#
#   systemd     systemd-analyze verify deploy/portcullis.service (any warning fails), and
#               systemd-analyze security --offline: the exposure score must stay <= 2.0
#   kubernetes  every manifest in deploy/kubernetes/ against the Kubernetes API schema
#               (PyPI kubernetes-validate, --strict: unknown fields fail), a broken copy
#               must fail, and the Deployment's Secret/ConfigMap references must exist
#   config      the configs in deploy/ load and validate (the unit test
#               config::tests::every_deploy_config_loads, which needs the debug build)
#   image       a bookworm base made with `debootstrap --variant=minbase` (cached) and
#               imported into podman; deploy/Dockerfile built FROM it with the host's
#               target/debug/portcullis (stripped; bookworm's glibc); then the image runs
#               with a read-only root, the shipped deploy/portcullis.toml mounted, a data
#               volume, and the test provider (demo/provider) on loopback: `check` passes,
#               /readyz answers 200, the HEALTHCHECK is healthy, the process is uid 10001,
#               the SQLite DB is written in /var/lib/portcullis, SIGTERM stops it cleanly;
#               then deploy/portcullis.service is started by a real systemd (PID 1 of a
#               podman container from the same base plus Debian's systemd): active,
#               /readyz 200, a dynamic non-root user without capabilities, seccomp on,
#               the DB in its StateDirectory, `systemctl reload` (SIGHUP) and stop clean
#
# Usage: scripts/deploy-check.sh [fast|image|all]   (default all; fast = systemd,
# kubernetes, config). Missing tools are installed with apt-get / pip (as root); if that
# fails the check fails. Every step is bounded in time. Cache (debootstrap root file
# system, the validator's venv): $PORTCULLIS_DEPLOY_CACHE, default /var/cache/portcullis-deploy.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
WHAT=${1:-all}
CACHE=${PORTCULLIS_DEPLOY_CACHE:-/var/cache/portcullis-deploy}
WORK="$ROOT/target/deploy-check"
BASE_IMAGE=localhost/portcullis-base:bookworm
IMAGE=localhost/portcullis:deploy-check
KUBERNETES_VALIDATE_VERSION=1.37.0
# This machine's cgroups are hybrid (v1 + an empty v2), which crun refuses: use runc.
PODMAN=(podman --runtime runc --cgroup-manager cgroupfs --events-backend file)

note() { echo "--> $*"; }
fail() {
  echo "!!! $*" >&2
  exit 1
}
elapsed() { echo "$((SECONDS - $1))s"; }

# need COMMAND PACKAGE: installs PACKAGE with apt-get when COMMAND is missing.
APT_UPDATED=0
need() {
  local cmd=$1 pkg=$2
  command -v "$cmd" >/dev/null && return 0
  [[ $(id -u) -eq 0 ]] || fail "$cmd is missing: apt-get install -y $pkg (as root)"
  command -v apt-get >/dev/null || fail "$cmd is missing and there is no apt-get: install $pkg"
  note "$cmd is missing: apt-get install -y $pkg"
  export DEBIAN_FRONTEND=noninteractive
  if [[ $APT_UPDATED -eq 0 ]]; then
    timeout 300 apt-get update -qq || fail "apt-get update failed"
    APT_UPDATED=1
  fi
  timeout 600 apt-get install -y -qq "$pkg" >/dev/null || fail "apt-get install $pkg failed"
  command -v "$cmd" >/dev/null || fail "$cmd still missing after installing $pkg"
}

# ---- systemd ---------------------------------------------------------------------------

check_systemd() {
  local start=$SECONDS dir out score
  need systemd-analyze systemd
  [[ -x target/debug/portcullis ]] || fail "target/debug/portcullis is missing (cargo build)"
  dir=$(mktemp -d)
  # The same unit, with ExecStart pointing at a binary that exists here (verify checks it).
  sed "s#/usr/local/bin/portcullis#$ROOT/target/debug/portcullis#g" \
    deploy/portcullis.service >"$dir/portcullis.service"
  # verify exits 0 on "ignoring" warnings (a misspelt value): any output fails.
  out=$(timeout 60 systemd-analyze verify "$dir/portcullis.service" 2>&1) ||
    fail "systemd-analyze verify failed: $out"
  [[ -z $out ]] || fail "systemd-analyze verify warned: $out"
  note "systemd-analyze verify deploy/portcullis.service: ok"
  out=$(timeout 60 systemd-analyze security --offline=yes --threshold=20 \
    "$dir/portcullis.service" 2>&1) || fail "systemd-analyze security: exposure above 2.0:
$(grep -E '✗|Overall' <<<"$out")"
  score=$(grep -o 'Overall exposure level for portcullis.service: .*' <<<"$out")
  [[ -n $score ]] || fail "systemd-analyze security printed no score: $out"
  note "systemd-analyze security: ${score#Overall exposure level for }"
  rm -rf "$dir"
  note "systemd: passed ($(elapsed "$start"))"
}

# ---- kubernetes ------------------------------------------------------------------------

# Installs the validator into a venv in the cache (once).
ensure_validator() {
  local venv="$CACHE/venv"
  if ! "$venv/bin/kubernetes-validate" --version 2>/dev/null |
    grep -qx "$KUBERNETES_VALIDATE_VERSION"; then
    mkdir -p "$CACHE"
    rm -rf "$venv"
    if ! python3 -m venv "$venv" 2>/dev/null; then
      need python3 python3
      rm -rf "$venv"
      dpkg -s python3-venv >/dev/null 2>&1 || {
        export DEBIAN_FRONTEND=noninteractive
        timeout 600 apt-get install -y -qq python3-venv >/dev/null ||
          fail "apt-get install python3-venv failed"
      }
      python3 -m venv "$venv" || fail "python3 -m venv failed"
    fi
    note "pip install kubernetes-validate==$KUBERNETES_VALIDATE_VERSION (into $venv)"
    timeout 300 "$venv/bin/pip" install -q "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" ||
      fail "pip install kubernetes-validate failed"
  fi
}

check_kubernetes() {
  local start=$SECONDS bad
  local files=(deploy/kubernetes/*.yaml)
  [[ ${#files[@]} -ge 5 ]] || fail "expected the five manifests in deploy/kubernetes/"
  ensure_validator
  local validate=(timeout 120 "$CACHE/venv/bin/kubernetes-validate" --strict)
  "${validate[@]}" "${files[@]}" ||
    fail "a manifest does not validate against the Kubernetes API schema"
  # The validator must catch a wrong type and an unknown (misspelt) field.
  bad=$(mktemp --suffix .yaml)
  sed 's/^  replicas: 2$/  replicas: two/' deploy/kubernetes/deployment.yaml >"$bad"
  if "${validate[@]}" --quiet "$bad" >/dev/null 2>&1; then
    fail "the validator accepted replicas: two"
  fi
  sed 's/readOnlyRootFilesystem:/readOnlyRootFileSystem:/' deploy/kubernetes/deployment.yaml >"$bad"
  if "${validate[@]}" --quiet "$bad" >/dev/null 2>&1; then
    fail "the validator accepted an unknown field"
  fi
  rm -f "$bad"
  note "a broken Deployment is refused by the validator: ok"
  # References between the manifests, and what the Deployment promises.
  "$CACHE/venv/bin/python" - <<'EOF' || fail "the manifests do not fit together"
import sys, yaml
docs = {}
for name in ["deployment", "service", "configmap", "secret", "poddisruptionbudget"]:
    with open(f"deploy/kubernetes/{name}.yaml") as f:
        docs[name] = yaml.safe_load(f)
dep, cm, sec, svc, pdb = (docs[n] for n in ["deployment", "configmap", "secret", "service", "poddisruptionbudget"])
spec = dep["spec"]["template"]["spec"]
c = spec["containers"][0]
errors = []
def check(ok, what):
    if not ok:
        errors.append(what)
labels = dep["spec"]["template"]["metadata"]["labels"]
for sel, what in [(dep["spec"]["selector"]["matchLabels"], "Deployment selector"),
                  (svc["spec"]["selector"], "Service selector"),
                  (pdb["spec"]["selector"]["matchLabels"], "PodDisruptionBudget selector")]:
    check(all(labels.get(k) == v for k, v in sel.items()), f"{what} does not match the pod labels")
env = {e["name"]: e for e in c["env"]}
for var in ["PORTCULLIS_OIDC__CLIENT_SECRET", "PORTCULLIS_SESSION__KEYS", "PORTCULLIS_SESSION__REDIS_URL"]:
    ref = env.get(var, {}).get("valueFrom", {}).get("secretKeyRef")
    check(ref is not None, f"{var} is not taken from a Secret")
    if ref:
        check(ref["name"] == sec["metadata"]["name"] and ref["key"] in sec["stringData"],
              f"{var}: the Secret has no key {ref['key']}")
vols = {v["name"]: v for v in spec["volumes"]}
mount = next(m for m in c["volumeMounts"] if m["mountPath"] == "/etc/portcullis")
check(vols[mount["name"]]["configMap"]["name"] == cm["metadata"]["name"], "config volume is not the ConfigMap")
check("portcullis.toml" in cm["data"], "the ConfigMap has no portcullis.toml")
ports = {p["name"]: p["containerPort"] for p in c["ports"]}
check(ports.get("admin") == 9091 and ports.get("http") == 8080, "container ports")
check(c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}, "liveness probe")
check(c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}, "readiness probe")
sc = c["securityContext"]
check(sc.get("readOnlyRootFilesystem") is True, "readOnlyRootFilesystem")
check(sc.get("allowPrivilegeEscalation") is False, "allowPrivilegeEscalation")
check(sc.get("capabilities", {}).get("drop") == ["ALL"], "capabilities drop ALL")
check(spec["securityContext"].get("runAsNonRoot") is True, "runAsNonRoot")
check("limits" in c["resources"] and "requests" in c["resources"], "resources")
check(spec["terminationGracePeriodSeconds"] > 30, "terminationGracePeriodSeconds > drain_timeout")
check(svc["spec"]["ports"][0]["targetPort"] == "http", "the Service targets the http port")
for e in errors:
    print("!!! " + e, file=sys.stderr)
sys.exit(1 if errors else 0)
EOF
  note "the manifests reference each other correctly: ok"
  note "kubernetes: passed ($(elapsed "$start"))"
}

# ---- config ----------------------------------------------------------------------------

check_config() {
  local start=$SECONDS
  if command -v cargo-nextest >/dev/null; then
    timeout 900 cargo nextest run --locked --lib -E 'test(=config::tests::every_deploy_config_loads)'
  else
    timeout 900 cargo test --locked --lib config::tests::every_deploy_config_loads -- --exact
  fi
  note "config: passed ($(elapsed "$start"))"
}

# ---- image -----------------------------------------------------------------------------

base_image() {
  local start=$SECONDS rootfs="$CACHE/bookworm-minbase"
  if "${PODMAN[@]}" image exists "$BASE_IMAGE"; then
    note "base image $BASE_IMAGE: cached"
    return 0
  fi
  if [[ ! -x $rootfs/bin/bash ]]; then
    need debootstrap debootstrap
    note "debootstrap --variant=minbase bookworm (into $rootfs; a few minutes, once)"
    rm -rf "$rootfs.tmp"
    mkdir -p "$CACHE"
    timeout 900 debootstrap --variant=minbase --include=ca-certificates bookworm \
      "$rootfs.tmp" http://deb.debian.org/debian >"$CACHE/debootstrap.log" 2>&1 ||
      fail "debootstrap failed (see $CACHE/debootstrap.log)"
    rm -f "$rootfs.tmp"/var/cache/apt/archives/*.deb
    mv "$rootfs.tmp" "$rootfs"
  fi
  note "podman import $rootfs as $BASE_IMAGE"
  tar -C "$rootfs" --numeric-owner -c . |
    timeout 300 "${PODMAN[@]}" import -q --change 'CMD ["/bin/bash"]' - "$BASE_IMAGE" >/dev/null ||
    fail "podman import failed"
  note "base image: done ($(elapsed "$start"))"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

PROVIDER_PID=
CONTAINER=
UNIT_CONTAINER=
VOLUME=
cleanup_image() {
  local c
  for c in "$CONTAINER" "$UNIT_CONTAINER"; do
    [[ -z $c ]] || "${PODMAN[@]}" rm -f -t 0 "$c" >/dev/null 2>&1 || true
  done
  if [[ -n $VOLUME ]]; then
    "${PODMAN[@]}" volume rm -f "$VOLUME" >/dev/null 2>&1 || true
  fi
  if [[ -n $PROVIDER_PID ]]; then
    kill "$PROVIDER_PID" 2>/dev/null || true
    wait "$PROVIDER_PID" 2>/dev/null || true
  fi
}

container_logs() {
  echo "--- container log:" >&2
  "${PODMAN[@]}" logs "$CONTAINER" 2>&1 | tail -n 40 >&2 || true
}

check_image() {
  local start=$SECONDS t issuer port admin i code body uid
  need podman podman
  need runc runc
  need curl curl
  need strip binutils
  need objdump binutils
  [[ -d demo/provider/node_modules/oidc-provider ]] ||
    fail "demo/provider/node_modules is missing: npm ci in demo/provider"
  [[ -x target/debug/portcullis ]] || fail "target/debug/portcullis is missing (cargo build)"
  # The host's binary runs on the bookworm base only if it needs no newer glibc.
  local libs
  libs=$(ldd target/debug/portcullis) || fail "ldd target/debug/portcullis failed"
  grep -q 'libc.so.6' <<<"$libs" || fail "unexpected: portcullis is not linked to glibc"
  # Its newest glibc symbol version must exist in bookworm's glibc (2.36).
  local glibc
  glibc=$(objdump -T target/debug/portcullis | grep -o 'GLIBC_2\.[0-9]*' | sort -t. -k2 -n | tail -n 1)
  [[ ${glibc#GLIBC_2.} -le 36 ]] || fail "target/debug/portcullis needs $glibc, newer than bookworm's 2.36"
  note "target/debug/portcullis needs $glibc at most (bookworm has 2.36)"
  base_image

  t=$SECONDS
  rm -rf "$WORK/context"
  mkdir -p "$WORK/context"
  strip -o "$WORK/context/portcullis" target/debug/portcullis
  # --isolation chroot: RUN needs no OCI runtime (see PODMAN above).
  timeout 300 "${PODMAN[@]}" build --isolation chroot --format docker --quiet \
    -f deploy/Dockerfile --build-arg BINARY=prebuilt --build-arg "BASE_IMAGE=$BASE_IMAGE" \
    -t "$IMAGE" "$WORK/context" >/dev/null || fail "podman build failed"
  # Earlier runs' images (untagged now) and stages: only this Dockerfile's (its labels).
  local title
  for title in portcullis portcullis-binary; do
    "${PODMAN[@]}" image prune -f --filter "label=org.opencontainers.image.title=$title" \
      >/dev/null || true
  done
  note "podman build deploy/Dockerfile: ok ($(elapsed "$t"))"
  [[ $("${PODMAN[@]}" image inspect "$IMAGE" --format '{{.Config.User}}') == 10001:10001 ]] ||
    fail "the image's USER is not 10001:10001"
  "${PODMAN[@]}" image inspect "$IMAGE" --format '{{json .}}' | grep -q '"Healthcheck"' ||
    fail "the image has no HEALTHCHECK"

  trap cleanup_image EXIT
  port=$(free_port)
  admin=$(free_port)
  [[ $port != "$admin" ]] || admin=$(free_port)
  local uport uadmin
  uport=$(free_port)
  uadmin=$(free_port)
  # The test provider on loopback, with the client the shipped config names.
  local provider_log="$WORK/provider.log"
  coproc PROVIDER {
    PROVIDER_CONFIG="{\"port\":0,\"keysFile\":\"$WORK/provider-keys.json\",\"clients\":[{\"client_id\":\"portcullis\",\"client_secret\":\"deploy-check-secret\",\"redirect_uris\":[\"http://127.0.0.1:$port/bff/callback\",\"http://127.0.0.1:$uport/bff/callback\"]}]}" \
      exec node demo/provider/provider.mjs 2>"$provider_log"
  }
  PROVIDER_PID=$PROVIDER_PID
  issuer=
  while IFS= read -r -t 30 line <&"${PROVIDER[0]}"; do
    if [[ $line == READY\ * ]]; then
      issuer=${line#READY }
      break
    fi
  done
  [[ -n $issuer ]] || fail "the test provider did not start: $(cat "$provider_log")"
  note "test provider at $issuer"

  VOLUME="portcullis-deploy-check-$$"
  CONTAINER="portcullis-deploy-check-$$"
  "${PODMAN[@]}" volume create "$VOLUME" >/dev/null
  # The sandbox here lacks CAP_SYS_RESOURCE: podman's default rlimits can't be set.
  local run=(--network host --read-only --health-interval disable
    --ulimit nofile=4096:4096 --ulimit nproc=4096:4096
    -v "$ROOT/deploy/portcullis.toml:/etc/portcullis/portcullis.toml:ro"
    -v "$VOLUME:/var/lib/portcullis"
    -e PORTCULLIS_OIDC__CLIENT_SECRET=deploy-check-secret
    -e 'PORTCULLIS_SESSION__KEYS=["hekyQHTosvculEk8CMUKNgwBC6Y3BzZ7iPc9C1RuEJI"]'
    -e "PORTCULLIS_OIDC__ISSUER=$issuer"
    -e "PORTCULLIS_SERVER__LISTEN=127.0.0.1:$port"
    -e "PORTCULLIS_SERVER__ADMIN_LISTEN=127.0.0.1:$admin"
    -e "PORTCULLIS_SERVER__PUBLIC_ORIGIN=http://127.0.0.1:$port"
    -e "PORTCULLIS_OIDC__POST_LOGOUT_REDIRECT_URI=http://127.0.0.1:$port/"
    -e "READYZ_PORT=$admin")

  # `check` with the mounted config and the secrets from the environment.
  timeout 60 "${PODMAN[@]}" run --rm "${run[@]}" "$IMAGE" \
    check --config /etc/portcullis/portcullis.toml >"$WORK/check.log" 2>&1 ||
    fail "portcullis check in the container failed: $(grep -v 'level=error' "$WORK/check.log")"
  note "portcullis check in the container: ok"

  t=$SECONDS
  "${PODMAN[@]}" run -d --name "$CONTAINER" "${run[@]}" "$IMAGE" >/dev/null ||
    fail "podman run failed"
  code=
  for ((i = 0; i < 300; i++)); do
    code=$(curl -s -o "$WORK/readyz.json" -w '%{http_code}' --max-time 2 \
      "http://127.0.0.1:$admin/readyz" || true)
    [[ $code == 200 ]] && break
    [[ $("${PODMAN[@]}" inspect -f '{{.State.Running}}' "$CONTAINER") == true ]] || {
      container_logs
      fail "the container exited"
    }
    sleep 0.2
  done
  [[ $code == 200 ]] || {
    container_logs
    fail "/readyz answered ${code:-nothing} after 60 s: $(cat "$WORK/readyz.json" 2>/dev/null)"
  }
  body=$(cat "$WORK/readyz.json")
  note "/readyz: 200 $body ($(elapsed "$t") after podman run)"
  grep -q '"store":"ok"' <<<"$body" || fail "/readyz: store not ok"
  timeout 30 "${PODMAN[@]}" healthcheck run "$CONTAINER" >/dev/null ||
    fail "the image's HEALTHCHECK is not healthy"
  note "HEALTHCHECK (bash /dev/tcp to /readyz on port $admin): healthy"

  uid=$("${PODMAN[@]}" exec "$CONTAINER" sh -c 'cat /proc/1/status' | awk '/^Uid:/ { print $2 }')
  [[ $uid == 10001 ]] || fail "the process runs as uid $uid, not 10001"
  note "the process runs as uid $uid (non-root)"
  "${PODMAN[@]}" exec "$CONTAINER" sh -c \
    '[ "$(stat -c %u /var/lib/portcullis/portcullis.db)" = 10001 ]' ||
    fail "/var/lib/portcullis/portcullis.db was not written by the service user"
  # A write through the CLI, in the same data directory, as the same user.
  "${PODMAN[@]}" exec "$CONTAINER" portcullis --config /etc/portcullis/portcullis.toml \
    sessions revoke --all >/dev/null || fail "sessions revoke --all (a write) failed"
  if "${PODMAN[@]}" exec "$CONTAINER" sh -c 'touch /usr/local/bin/x' 2>/dev/null; then
    fail "the root file system is writable despite --read-only"
  fi
  note "SQLite store written in /var/lib/portcullis (root file system read-only)"

  t=$SECONDS
  timeout 60 "${PODMAN[@]}" stop -t 45 "$CONTAINER" >/dev/null || fail "podman stop failed"
  code=$("${PODMAN[@]}" inspect -f '{{.State.ExitCode}}' "$CONTAINER")
  [[ $code == 0 ]] || {
    container_logs
    fail "the container exited with $code after SIGTERM"
  }
  note "SIGTERM: exited 0 ($(elapsed "$t"))"
  note "image: passed ($(elapsed "$start"))"

  check_unit_runs "$issuer" "$uport" "$uadmin"
  cleanup_image
  trap - EXIT
}

# deploy/portcullis.service started by a real systemd (PID 1 of a podman container made
# from the same debootstrap base with Debian's systemd): the sandbox lets Portcullis run.
SYSTEMD_IMAGE=localhost/portcullis-systemd:bookworm
unit_exec() { "${PODMAN[@]}" exec "$UNIT_CONTAINER" "$@"; }
unit_journal() {
  echo "--- journalctl -u portcullis:" >&2
  unit_exec journalctl -u portcullis --no-pager 2>&1 | tail -n 30 >&2 || true
}
check_unit_runs() {
  local issuer=$1 port=$2 admin=$3 start=$SECONDS i code pid status uid
  if ! "${PODMAN[@]}" image exists "$SYSTEMD_IMAGE"; then
    note "building $SYSTEMD_IMAGE (the base + Debian's systemd and procps; once)"
    mkdir -p "$WORK/systemd-image"
    cat >"$WORK/systemd-image/Containerfile" <<CONTAINERFILE
FROM $BASE_IMAGE
RUN apt-get update && apt-get install -y --no-install-recommends systemd systemd-sysv procps \
 && rm -rf /var/lib/apt/lists/*
CMD ["/sbin/init"]
CONTAINERFILE
    timeout 600 "${PODMAN[@]}" build --isolation chroot --quiet -t "$SYSTEMD_IMAGE" \
      "$WORK/systemd-image" >/dev/null || fail "building $SYSTEMD_IMAGE failed"
  fi
  UNIT_CONTAINER="portcullis-unit-check-$$"
  "${PODMAN[@]}" run -d --name "$UNIT_CONTAINER" --network host --systemd=always \
    --ulimit nofile=4096:4096 --ulimit nproc=4096:4096 "$SYSTEMD_IMAGE" >/dev/null ||
    fail "podman run $SYSTEMD_IMAGE failed"
  status=
  for ((i = 0; i < 150; i++)); do
    status=$(unit_exec systemctl is-system-running 2>/dev/null || true)
    [[ $status == running || $status == degraded ]] && break
    sleep 0.2
  done
  [[ $status == running || $status == degraded ]] || fail "systemd did not start: $status"
  "${PODMAN[@]}" cp "$WORK/context/portcullis" "$UNIT_CONTAINER:/usr/local/bin/portcullis"
  unit_exec install -d -m 0755 /etc/portcullis
  "${PODMAN[@]}" cp deploy/portcullis.toml "$UNIT_CONTAINER:/etc/portcullis/portcullis.toml"
  "${PODMAN[@]}" cp deploy/portcullis.service \
    "$UNIT_CONTAINER:/etc/systemd/system/portcullis.service"
  cat >"$WORK/secrets.env" <<SECRETS
PORTCULLIS_OIDC__CLIENT_SECRET=deploy-check-secret
PORTCULLIS_SESSION__KEYS=["hekyQHTosvculEk8CMUKNgwBC6Y3BzZ7iPc9C1RuEJI"]
PORTCULLIS_OIDC__ISSUER=$issuer
PORTCULLIS_SERVER__LISTEN=127.0.0.1:$port
PORTCULLIS_SERVER__ADMIN_LISTEN=127.0.0.1:$admin
PORTCULLIS_SERVER__PUBLIC_ORIGIN=http://127.0.0.1:$port
PORTCULLIS_OIDC__POST_LOGOUT_REDIRECT_URI=http://127.0.0.1:$port/
SECRETS
  "${PODMAN[@]}" cp "$WORK/secrets.env" "$UNIT_CONTAINER:/etc/portcullis/secrets.env"
  unit_exec sh -c 'chmod 0600 /etc/portcullis/secrets.env && systemctl daemon-reload &&
    systemctl start portcullis' || {
    unit_journal
    fail "systemctl start portcullis failed"
  }
  code=
  for ((i = 0; i < 150; i++)); do
    code=$(curl -s -o "$WORK/readyz.json" -w '%{http_code}' --max-time 2 \
      "http://127.0.0.1:$admin/readyz" || true)
    [[ $code == 200 ]] && break
    unit_exec systemctl is-active --quiet portcullis || {
      unit_journal
      fail "portcullis.service stopped"
    }
    sleep 0.2
  done
  [[ $code == 200 ]] || {
    unit_journal
    fail "/readyz of the unit answered ${code:-nothing} after 30 s"
  }
  note "systemd unit: active, /readyz 200 $(cat "$WORK/readyz.json")"
  pid=$(unit_exec systemctl show -p MainPID --value portcullis)
  status=$(unit_exec cat "/proc/$pid/status")
  uid=$(awk '/^Uid:/ { print $2 }' <<<"$status")
  [[ -n $uid && $uid != 0 ]] || fail "the unit runs as root"
  grep -qx $'NoNewPrivs:\t1' <<<"$status" || fail "the unit's process may gain privileges"
  grep -qx $'Seccomp:\t2' <<<"$status" || fail "the unit's process has no seccomp filter"
  grep -qx $'CapEff:\t0000000000000000' <<<"$status" || fail "the unit's process has capabilities"
  [[ $(unit_exec stat -c %u /var/lib/private/portcullis/portcullis.db) == "$uid" ]] ||
    fail "the unit's SQLite DB is not in its StateDirectory, owned by its dynamic user"
  note "systemd unit: dynamic uid $uid, no capabilities, seccomp, no new privileges, DB in /var/lib/portcullis"
  unit_exec systemctl reload portcullis || {
    unit_journal
    fail "systemctl reload portcullis failed"
  }
  sleep 0.5
  unit_exec systemctl is-active --quiet portcullis || fail "portcullis.service died at reload"
  unit_exec journalctl -u portcullis --no-pager | grep -q 'SIGHUP' ||
    fail "reload did not reach Portcullis (no SIGHUP in its log)"
  note "systemd unit: reload (SIGHUP) reached it, still active"
  unit_exec systemctl stop portcullis || fail "systemctl stop portcullis failed"
  [[ $(unit_exec systemctl show -p Result --value portcullis) == success ]] || {
    unit_journal
    fail "portcullis.service did not stop cleanly"
  }
  note "systemd unit: stopped by SIGTERM, result success"
  note "systemd unit run: passed ($(elapsed "$start"))"
}

mkdir -p "$WORK"
case $WHAT in
fast)
  check_systemd
  check_kubernetes
  check_config
  ;;
image) check_image ;;
all)
  check_systemd
  check_kubernetes
  check_config
  check_image
  ;;
*) fail "usage: $0 [fast|image|all]" ;;
esac
note "deploy-check $WHAT: passed"
