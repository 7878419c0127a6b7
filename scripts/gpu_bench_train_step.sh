#!/bin/bash
# scripts/bench_train_step.py on a lent GPU (H100/H200), every case in one call, with the peers.
# Usage (on the GPU machine, repo root): OUT=dir STEPS=10 bash scripts/gpu_bench_train_step.sh
# The machine has no network: our pure-Python dependencies it lacks travel as wheels in .whl/
# (on this side: pip download --no-deps -d .whl jsonargparse docstring-parser typeshed-client
# webdataset braceexpand open_flamingo==2.0.1 einops-exts). open_flamingo is the peer only.
set -eo pipefail
OUT=${OUT:-runs/gpu_bench}; STEPS=${STEPS:-10}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name())" | tee "$OUT/device.txt"
# correctness first, on the GPU: packed == padded and chunked == plain losses and gradients
python3 -m pytest -q -p no:cacheprovider tests/test_packing.py -k "not fit_with_packing" 2>&1 | tail -3 | tee "$OUT/tests.txt"
python3 -m scripts.bench_train_step --steps "$STEPS" --warmup 3 --json "$OUT/results.json" 2>&1 | tee "$OUT/table.txt"
