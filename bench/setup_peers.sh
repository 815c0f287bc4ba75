#!/usr/bin/env bash
# Make one venv per peer under bench/.venvs (gitignored); bench/run.py uses them.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
make_venv() {  # name packages...
    local name=$1; shift
    [ -x ".venvs/$name/bin/python" ] || "$PY" -m venv ".venvs/$name"
    ".venvs/$name/bin/pip" install -q "$@"
}
make_venv mlserver mlserver mlserver-sklearn
make_venv litserve litserve scikit-learn numpy
make_venv bentoml bentoml scikit-learn numpy
make_venv fastapi fastapi "uvicorn[standard]" scikit-learn numpy pydantic orjson onnxruntime starlette
for name in mlserver litserve bentoml fastapi; do
    echo "$name: $(".venvs/$name/bin/pip" list 2>/dev/null | grep -iE "^($name|mlserver|litserve|bentoml|fastapi) " | tr -s ' ' | paste -sd' ')"
done
