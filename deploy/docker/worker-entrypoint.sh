#!/usr/bin/env bash
# A compose worker replica: provisions its own credentials through the coordinator's admin API
# (a key named after the container's hostname, rotated if it exists), fetches the run config,
# then trains until stopped. The CA comes from the coordinator's volume, mounted read-only.
set -euo pipefail
URL=${BITNET_COORDINATOR:-https://coordinator:8443}
CA=/var/lib/bitnet-coordinator/tls/ca.pem
ID="worker-$(hostname)"
WORK=/var/lib/bitnet/$ID
mkdir -p "$WORK" && cd "$WORK"
until [ -s "$CA" ] && curl -fsS --cacert "$CA" "$URL/health" >/dev/null 2>&1; do sleep 2; done
CURL=(curl -fsS --cacert "$CA")
# The password is the secret file's first line, as `bitnet admin add --password-stdin` read it
# (curl's `@file` would send the newline too); it goes through stdin, never the command line.
ADMIN=$(head -n1 /run/secrets/operator_password | tr -d '\r\n' \
  | "${CURL[@]}" "$URL/connect/token" -d grant_type=client_credentials -d client_id=admin \
    --data-urlencode client_secret@- -d scope=admin \
  | sed -n 's/.*"access_token":"\([^"]*\)".*/\1/p')
printf 'Authorization: Bearer %s\n' "$ADMIN" > .admin-auth
umask 077
if ! "${CURL[@]}" -H @.admin-auth -X POST "$URL/admin/api/keys/$ID" -o credentials.json 2>/dev/null; then
  "${CURL[@]}" -H @.admin-auth -X POST "$URL/admin/api/keys/$ID/rotate" -o credentials.json
fi
rm -f .admin-auth
TOKEN=$("${CURL[@]}" "$URL/connect/token" -d grant_type=client_credentials --data-urlencode "client_id=$ID" \
  --data-urlencode "client_secret=$(sed -n 's/.*"client_secret": *"\([^"]*\)".*/\1/p' credentials.json)" \
  | sed -n 's/.*"access_token":"\([^"]*\)".*/\1/p')
printf 'Authorization: Bearer %s\n' "$TOKEN" > .auth
"${CURL[@]}" -H @.auth "$URL/install/config.toml" -o worker.toml
rm -f .auth
exec bitnet worker worker.toml --no-env --coordinator "$URL" --credentials credentials.json
