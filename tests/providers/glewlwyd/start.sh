#!/usr/bin/env bash
# Starts a fresh Glewlwyd 2.7 (Debian's package) for tests/e2e/real_providers.rs:
#   start.sh PORT DATA_DIR
# DATA_DIR gets the SQLite DB (the package's own init script, with the client backend's
# data format extended by `post_logout_redirect_uris`, the plural end-session reads),
# an RSA signing key and the config; then glewlwyd runs in the foreground on
# 127.0.0.1:PORT (external URL http://localhost:PORT). The test configures the rest
# (OIDC plugin, user, client) through the admin REST API as `admin` / `password`,
# the package's default administrator.
set -euo pipefail
port=$1
data=$2
sql=/usr/share/dbconfig-common/data/glewlwyd/install/sqlite3
[[ -x /usr/bin/glewlwyd && -f $sql ]] || {
  echo "glewlwyd is not installed: ./scripts/test.sh installs it (apt-get install glewlwyd)" >&2
  exit 1
}
mkdir -p "$data"
rm -f "$data/glewlwyd.db"
sed 's/"post_logout_redirect_uri":{"multiple":false,"read":true,"write":true}/&,"post_logout_redirect_uris":{"multiple":true,"read":true,"write":true}/' "$sql" |
  sqlite3 "$data/glewlwyd.db"
openssl genrsa -out "$data/key.pem" 2048 2>/dev/null
openssl rsa -in "$data/key.pem" -pubout -out "$data/public.pem" 2>/dev/null
# No `use_secure_connection` line at all: writing it false still demands certificates.
cat >"$data/glewlwyd.conf" <<CONF
port=$port
external_url="http://localhost:$port"
login_url="login.html"
api_prefix="api"
allow_origin="*"
log_mode="console"
log_level="INFO"
cookie_secure=0
session_expiration=3600
session_key="GLEWLWYD2_SESSION_ID"
admin_scope="g_admin"
profile_scope="g_profile"
user_module_path="/usr/lib/glewlwyd/user"
client_module_path="/usr/lib/glewlwyd/client"
user_auth_scheme_module_path="/usr/lib/glewlwyd/scheme"
plugin_module_path="/usr/lib/glewlwyd/plugin"
hash_algorithm="SHA512"
database = { type = "sqlite3"; path = "$data/glewlwyd.db"; };
CONF
exec stdbuf -oL -eL /usr/bin/glewlwyd -c "$data/glewlwyd.conf"
