#!/usr/bin/env bash
# The compose coordinator: makes the data, a CA and server certificate for the name
# `coordinator`, and the operator `admin` (password from the secret file) on first start, then
# serves the run over TLS on 0.0.0.0:8443. State lives in /var/lib/bitnet (a volume).
set -euo pipefail
CONFIG=${BITNET_CONFIG:-/etc/bitnet/configs/truckmate-small.toml}
cd /var/lib/bitnet
SET=(--set run.dir=/var/lib/bitnet/run --set data.dir=/var/lib/bitnet/data)
if [ ! -f tls/ca.pem ]; then
  bitnet certs init --out tls --name coordinator --name localhost --ip 127.0.0.1
fi
bitnet tokenize-corpus "$CONFIG" "${SET[@]}"
bitnet admin add "$CONFIG" "${SET[@]}" --name admin --password-stdin --replace < /run/secrets/operator_password
exec bitnet coordinator "$CONFIG" "${SET[@]}" \
  --set transport.bind=0.0.0.0:8443 \
  --set transport.tls_cert_file=/var/lib/bitnet/tls/server.pem \
  --set transport.tls_key_file=/var/lib/bitnet/tls/server.key \
  --set coordinator.ca_file=/var/lib/bitnet/tls/ca.pem
