#!/usr/bin/env bash
# The edubus test command: installs what the tests need, then runs the lints and every test.
# Usage: ./scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

apt_install() {
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@"
}

# A fresh clone gains nothing from incremental artifacts; they would double the disk used.
[ -z "${CI:-}" ] || export CARGO_INCREMENTAL=0

step "checking tools"
command -v cargo >/dev/null || { echo "cargo is missing: install Rust (rustup) first" >&2; exit 1; }
command -v node >/dev/null && command -v npm >/dev/null || apt_install nodejs npm
# The Redis and PostgreSQL tests start real servers from these packages' binaries (edubus-testsupport).
if ! command -v redis-server >/dev/null || ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; then
  apt_install redis-server postgresql
fi
# The HTTP gateway's tests run a Python client built on the CloudEvents SDK.
command -v python3 >/dev/null || apt_install python3 python3-pip
if ! python3 -c 'import cloudevents, requests' 2>/dev/null; then
  python3 -m pip install --quiet cloudevents requests \
    || python3 -m pip install --quiet --break-system-packages cloudevents requests
fi
free_kb=$(df -Pk . | awk 'NR==2 {print $4}')
if [ "${free_kb:-0}" -lt 6000000 ]; then
  echo "warning: $((free_kb / 1024)) MiB free here; a full build and test run needs about 6 GiB" >&2
fi
rustup component list --installed 2>/dev/null | grep -q clippy || rustup component add clippy rustfmt

step "installing the AsyncAPI parser (npm)"
if [ ! -d tools/asyncapi/node_modules/@asyncapi/parser ]; then
  npm install --prefix tools/asyncapi --no-save --no-package-lock --no-audit --no-fund --ignore-scripts --loglevel=error
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test"
cargo test --workspace --locked

step "AsyncAPI document checked by @asyncapi/parser"
out="target/catalog-export"
cargo run --quiet --locked -p edubus -- catalog export --out "$out"
node tools/asyncapi/check.mjs "$out/asyncapi.yaml"
