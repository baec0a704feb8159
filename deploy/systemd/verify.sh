#!/usr/bin/env bash
# Checks the systemd units with `systemd-analyze verify`, failing on any message it prints.
# The units name the installed binary (/usr/local/bin/bitnet, /opt/bitnet/bin/bitnet), which a
# build machine does not have: the copies checked here point at BITNET_BIN instead (default: the
# first `bitnet` on PATH, else /bin/true), and nothing else in them changes.
#
#   deploy/systemd/verify.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
command -v systemd-analyze >/dev/null || { echo "systemd-analyze not found (Debian: apt install systemd)" >&2; exit 2; }
bin="${BITNET_BIN:-$(command -v bitnet || echo /bin/true)}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
for unit in "$here"/*.service; do
  sed -e "s#/usr/local/bin/bitnet#$bin#g" -e "s#/opt/bitnet/bin/bitnet#$bin#g" "$unit" >"$tmp/$(basename "$unit")"
done
cd "$tmp"
# A template is checked through an instance of it.
out="$(systemd-analyze verify bitnet-coordinator.service bitnet-worker@ci.service 2>&1)" || {
  echo "$out" >&2
  exit 1
}
if [ -n "$out" ]; then
  echo "$out" >&2
  exit 1
fi
echo "systemd units verified: $(cd "$here" && ls *.service | tr '\n' ' ')"
