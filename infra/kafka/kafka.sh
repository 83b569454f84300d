#!/bin/sh
# Thin wrapper over `python -m aob.infra.kafka`: infra/kafka/kafka.sh start|stop|status|fetch
# Uses the repository's .venv when there is one (or $AOB_PYTHON).
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
python=${AOB_PYTHON:-$root/.venv/bin/python}
[ -x "$python" ] || python=python3
exec "$python" -m aob.infra.kafka "$@"
