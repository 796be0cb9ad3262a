#!/usr/bin/env bash
# `dagster dev` (webserver + daemon) for workspace.yaml: what `make dev` and
# `scripts/services.sh start-ui` run.
#
#   scripts/dagster-dev.sh [HOST [PORT]]      (default 127.0.0.1 3000)
#
# 1. Writes the local instance's $DAGSTER_HOME/dagster.yaml (run queue limits, no telemetry;
#    mlops_resources/instance.py), unless a dagster.yaml the suite did not write is there (the
#    production profile's, for example).
# 2. Starts `dagster dev` with SIGINT and SIGTERM at their default dispositions. A program that
#    a non-interactive shell starts in the background (`make dev &`, `setsid ... &` in a script,
#    a CI step) inherits SIGINT *ignored*, and `dagster dev` gives SIGTERM the disposition of
#    SIGINT: it then ignored Ctrl-C and SIGTERM alike and had to be killed. With the defaults
#    restored it shuts down in about 2 s (tests/integration/test_dev_shutdown.py).
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
BIN="${MLOPS_VENV_BIN:-$REPO/.venv/bin}"
HOST="${1:-127.0.0.1}"
PORT="${2:-3000}"
cd "$REPO"
"$BIN/python" -m mlops_resources.instance >/dev/null
# exec twice (bash -> python -> dagster): the pid the caller holds is dagster dev's own.
exec "$BIN/python" -c '
import os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_DFL)
signal.signal(signal.SIGTERM, signal.SIG_DFL)
os.execv(sys.argv[1], sys.argv[1:])
' "$BIN/dagster" dev -w workspace.yaml -h "$HOST" -p "$PORT"
