#!/usr/bin/env bash
# The project's one test command: installs the test peers it can, then runs every test.
# Usage: scripts/test.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v sshd >/dev/null 2>&1 || [ -x /usr/sbin/sshd ] || need+=(openssh-server)
[ -x /usr/bin/ssh-keygen ] || need+=(openssh-client)
[ -x /usr/lib/postgresql/15/bin/initdb ] || need+=(postgresql-15)
[ -x /usr/bin/openssl ] || need+=(openssl)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "scripts/test.sh: installing test peers: ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "scripts/test.sh: missing test peers: ${need[*]} (install them with apt-get, as root)" >&2
    exit 1
  fi
fi

if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
  rustup target add wasm32-wasip2 || { sleep 5; rustup target add wasm32-wasip2; }
fi

# Release: components compile ~20x faster than in debug, and `serve` shares the build.
exec cargo test --release --workspace "$@"
