#!/usr/bin/env bash
# Weft plug-in for the sidecar-path benchmark harness (shared/bench; see its README).
#   start.sh --check | --version | CONFIG ROLE WORKDIR
# WEFT_BIN defaults to this project's release build (cargo build --release -p weft).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
WEFT_BIN=${WEFT_BIN:-$here/../../../target/release/weft}
case "${1:-}" in
  --check)   [[ -x "$WEFT_BIN" ]] || { echo "weft: $WEFT_BIN not built (cargo build --release -p weft) or set WEFT_BIN" >&2; exit 1; }; exit 0 ;;
  --version) "$WEFT_BIN" --version | head -1; exit 0 ;;
esac
CONFIG=$1
# One worker, like the peers; metrics, x-request-id and response flags stay on (the product
# as shipped); the access log is off in the templates, as for the peers.
exec "$WEFT_BIN" proxy --config "$CONFIG" --concurrency 1 --log-level warn ${WEFT_EXTRA_ARGS:-}
