#!/usr/bin/env bash
# `make test-integration`: install what the integration tests need (Debian packages for
# PostgreSQL, Redis and Chromium; the `integration` extra from PyPI), start the servers on
# loopback, run tests/integration (the production profile end to end, the deploy configs, the
# UI in headless Chromium) and stop everything, also on failure or interrupt.
# Without root and without sudo, or when apt-get fails, the tests skip and say why.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
export MLOPS_SERVICES_DIR="${MLOPS_SERVICES_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/mlops-it.XXXXXX")}"

have_postgres() { ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; }
have_servers() { have_postgres && command -v redis-server >/dev/null; }

# apt_install PACKAGE...: install with apt-get (sudo when not root); on failure print why.
apt_install() {
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
            sudo="sudo -n"
        else
            echo "cannot install $*: apt-get needs root and sudo is not available"
            return 0
        fi
    fi
    echo "[integration] apt-get install $*" >&2
    if ! { $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "$@"; } >&2; then
        echo "apt-get install $* failed"
    fi
}

# The servers and the browser separately: without Chromium only the UI tests skip.
apt_problem=""
have_servers || apt_problem="$(apt_install postgresql redis-server)"
[ -x /usr/bin/chromium ] || apt_install chromium >&2
# The spark engine's tests run Spark local[2] (pyspark from the extra below) on Java 17.
command -v java >/dev/null || apt_install openjdk-17-jre-headless >&2
"$BIN/pip" install --quiet -c constraints.txt -e '.[dev,integration]'

if have_servers; then
    trap 'bash scripts/services.sh stop; rm -rf "$MLOPS_SERVICES_DIR"' EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    bash scripts/services.sh start
else
    export MLOPS_INTEGRATION_UNAVAILABLE="PostgreSQL or Redis missing: ${apt_problem:-unknown}"
    echo "[integration] $MLOPS_INTEGRATION_UNAVAILABLE: the server tests will skip" >&2
fi
"$BIN/pytest" -q -p no:cacheprovider -rs --durations=15 tests/integration
