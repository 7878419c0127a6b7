"""Evaluation throughput (samples/s) of `chimera eval` for VQA and captioning, per batch size.

usage: python scripts/bench_eval.py [--ckpt CKPT] [--config configs/experiments/llava_sort_of_clevr_tiny.yaml]
                                    [--samples 256] [--batch-sizes 1,16,64] [--threads 2]

Without --ckpt the config's model is built with random weights (same shapes, same cost per token;
captions then run to --caption-tokens new tokens, since nothing stops them early). Data: small
synthetic worlds written to a temporary folder. Prints one table.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
import yaml


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/experiments/llava_sort_of_clevr_tiny.yaml")
    p.add_argument("--ckpt")
    p.add_argument("--samples", type=int, default=256)
    p.add_argument("--batch-sizes", default="1,16,64")
    p.add_argument("--caption-tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)

    from data.shapes import write_shapes
    from data.sort_of_clevr import write_sort_of_clevr
    from train.checkpoint import build_module, load_module
    from train.evaluation.decoding import Decoding
    from train.evaluation.runner import evaluate_model

    tmp = Path(tempfile.mkdtemp(prefix="bench_eval_"))
    soc = tmp / "soc"
    write_sort_of_clevr(soc, train_images=8, val_images=max(1, args.samples // 20 + 1), seed=0)
    shapes = tmp / "shapes"
    write_shapes(shapes, train_images=8, val_images=args.samples, seed=0)
    if args.ckpt:
        module = load_module(args.ckpt)
    else:
        cfg = yaml.safe_load(Path(args.config).read_text())["model"]
        cfg["init_args"]["model"]["init_args"]["language"]["init_args"]["tokenizer"] = str(soc / "tokenizer")
        module = build_module(cfg).eval()
    n_params = sum(p.numel() for p in module.parameters())
    print(f"model: {'checkpoint ' + args.ckpt if args.ckpt else 'random weights from ' + args.config} "
          f"({n_params / 1e6:.2f} M parameters), {args.threads} threads, {args.samples} samples per task")
    print(f"{'task':<8} {'batch':>5} {'new tokens':>10} {'seconds':>8} {'samples/s':>10}")
    for task, path, max_new in (("vqa", soc / "val_qa.jsonl", 3), ("caption", shapes / "val_captions.jsonl",
                                                                    args.caption_tokens)):
        for bs in (int(b) for b in args.batch_sizes.split(",")):
            decoding = Decoding(batch_size=bs, max_new_tokens=max_new, stop=[] if not args.ckpt else ["\n"])
            t0 = time.perf_counter()
            results, _ = evaluate_model(module, {task: path}, tmp / f"out_{task}_{bs}", decoding, limit=args.samples)
            dt = time.perf_counter() - t0
            n = int(results[task]["n"])
            print(f"{task:<8} {bs:>5} {max_new:>10} {dt:>8.2f} {n / dt:>10.1f}", flush=True)


if __name__ == "__main__":
    main()
