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
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v jq >/dev/null 2>&1 || need+=(jq)
# The console's browser test (tests/console.rs) drives Debian's Chromium with Playwright.
[ -x /usr/bin/chromium ] || need+=(chromium)
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

# pip puts console scripts in the interpreter's scripts dir; pyenv shims for them only
# appear after a rehash (and may outlive the package), so look there and put it on PATH.
pyscripts="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')"
export PATH="$pyscripts:$PATH"
# The Python example plugin's test (tests/python_plugin.rs) builds it with componentize-py.
[ -x "$pyscripts/componentize-py" ] || python3 -m pip install --quiet componentize-py==0.25.1 ||
  echo "scripts/test.sh: could not install componentize-py; tests/python_plugin.rs will fail" >&2
# The API contract test (tests/api_contract.rs) generates a client with openapi-python-client.
[ -x "$pyscripts/openapi-python-client" ] || python3 -m pip install --quiet openapi-python-client==0.29.1
# The webhook test's receiver (tests/webhooks/receiver.py) verifies signatures with it.
python3 -c 'import standardwebhooks' 2>/dev/null || python3 -m pip install --quiet standardwebhooks==1.1.0
# The console's browser test (tests/console/test_console.py); it launches /usr/bin/chromium,
# so no `playwright install` (no browser download).
python3 -c 'import playwright' 2>/dev/null || python3 -m pip install --quiet playwright==1.65.2

# Every test server appends the statuses it answered here; checked against the OpenAPI
# document after the suite (tests/api_contract.rs).
export CREDHOST_STATUS_LOG="$PWD/target/status-log.txt"
rm -f "$CREDHOST_STATUS_LOG"

# Release: components compile ~20x faster than in debug, and `serve` shares the build.
cargo test --release --workspace "$@"
if [ $# -eq 0 ]; then
  # The API and store suites again with PostgreSQL storage (docs/deploy.md); the tests that
  # read or edit the redb file itself are redb's alone.
  CREDHOST_TEST_STORAGE=postgres cargo test --release --test api --test listing --test use_credentials --test store -- \
    --skip blob_copied_from_another_user --skip blob_moved_to_another_credential --skip raw_file_contains_no_plaintext \
    --skip tampered_audit_record --skip unknown_schema_version_refused --skip wrong_master_key_refused_and_file_unchanged \
    --skip store_is_shareable_and_opens_empty --skip a_secret_only_goes_where_it_was_sent \
    --skip a_removed_tail_is_found_even_with_the_head_moved_back --skip a_head_from_before_keyed_heads_is_keyed_once
  cargo test --release --test api_contract -- --ignored --exact statuses_seen_by_the_suite_are_documented
fi
