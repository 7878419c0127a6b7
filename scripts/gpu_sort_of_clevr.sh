#!/bin/bash
# The Sort-of-CLEVR LLaVA config trained far longer than the CPU allows, on a lent GPU, to tell a
# plateau from slow learning. Usage (on the GPU machine, repo root): OUT=dir MINUTES=6 bash scripts/gpu_sort_of_clevr.sh
# Needs our pure-Python dependencies the machine lacks as wheels in .whl/ (jsonargparse,
# docstring-parser, typeshed-client, webdataset, braceexpand).
set -eo pipefail
OUT=${OUT:-runs/gpu}; MINUTES=${MINUTES:-6}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name())"
python3 -c "from train.cli import main; main()" data sort-of-clevr --out /tmp/soc --train-images 9800 --val-images 200 --seed 0 > /dev/null
python3 -c "from train.cli import main; main()" fit --config configs/experiments/llava_sort_of_clevr_tiny.yaml \
  --trainer.accelerator gpu --trainer.max_steps 200000 --trainer.max_time "00:00:$(printf %02d "$MINUTES"):00" \
  --trainer.val_check_interval 2500 --trainer.enable_progress_bar false --trainer.callbacks '[]' \
  --trainer.logger.init_args.save_dir "$OUT" \
  --model.init_args.model.init_args.language.init_args.tokenizer /tmp/soc/tokenizer \
  --data.init_args.train_json /tmp/soc/train.json --data.init_args.val_qa /tmp/soc/val_qa.jsonl \
  --model.init_args.warmup_ratio 0.005 --data.init_args.num_workers 8 2>&1 | grep -v Warning | tee "$OUT/fit.log"
cp "$OUT"/llava_sort_of_clevr_tiny/latest/metrics.csv "$OUT/metrics.csv"
