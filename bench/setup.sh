#!/usr/bin/env bash
# Create (or update) the benchmark venv at /work/main/.venv-bench with tasklift (editable)
# and the peer systems from bench/requirements.txt. Safe to run again: an existing venv is
# reused and pip only installs what is missing or changed.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
VENV="${BENCH_VENV:-$ROOT/.venv-bench}"
PY="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
    echo "creating $VENV"
    "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet -e "$ROOT" -r "$HERE/requirements.txt"

if ! command -v redis-server >/dev/null 2>&1; then
    echo "note: redis-server not found; the Celery peer needs Redis at 127.0.0.1:6379" \
         "(apt-get install -y redis-server)" >&2
fi
"$VENV/bin/python" - <<'PY'
import importlib.metadata as md
for name in ("tasklift", "ray", "parsl", "dask", "distributed", "celery", "redis", "kombu", "psutil"):
    try:
        print(f"{name:12s} {md.version(name)}")
    except md.PackageNotFoundError:
        print(f"{name:12s} MISSING")
PY
echo "bench venv ready: $VENV"
