"""Memory and step time of full finetuning vs LoRA vs QLoRA (NF4 + double quant) vs QLoRA + paged AdamW.

    python -m scripts.bench_peft                      # ~100M llama, batch 1 x 256
    python -m scripts.bench_peft --hidden 2048 --layers 16 --intermediate 5632   # ~1B

Each mode runs in its own process, so memory is that mode's alone. On CUDA it is
`torch.cuda.max_memory_allocated`; on CPU the kernel's peak RSS (VmHWM: no tracing overhead, and
tracemalloc cannot see torch's allocations), reset through /proc/self/clear_refs after the model
is built so the dense fp32 build that a config-built QLoRA model is quantised from does not
count. Both are relative to the process before the model: weights, grads, optimizer state,
activations (plus allocator slack on CPU).
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from scripts.process_memory import reset_peak_rss, status_mb

MODES = {  # adapter, quantization, optimizer
    "full": (None, None, "adamw"),
    "lora": ("lora", None, "adamw"),
    "qlora": ("lora", "nf4", "adamw"),
    "qlora+paged": ("lora", "nf4", "paged_adamw"),
}


def run_one(args) -> dict:
    import torch
    import torch.nn.functional as F

    from models.language import LanguageModel
    from models.peft import LoRA, build_optimizer
    from tests.tiny import tiny_world

    adapter, quant, opt_name = MODES[args.mode]
    cuda = torch.cuda.is_available()
    tok = str(tiny_world(Path(tempfile.gettempdir()) / "chimera_bench") / "tokenizer")
    config = {"model_type": "llama", "hidden_size": args.hidden, "intermediate_size": args.intermediate,
              "num_hidden_layers": args.layers, "num_attention_heads": args.heads,
              "num_key_value_heads": args.heads, "vocab_size": args.vocab, "max_position_embeddings": args.seq}
    torch.manual_seed(0)
    base_rss = status_mb("VmRSS")
    lm = LanguageModel(config=config, tokenizer=tok, adapter=LoRA(r=args.r) if adapter else None,
                       quantization=quant, gradient_checkpointing=args.gradient_checkpointing)
    device = "cuda" if cuda else "cpu"
    lm = lm.to(device).train()
    params = [p for p in lm.parameters() if p.requires_grad]
    opt = build_optimizer(opt_name, params, lr=1e-4)
    ids = torch.randint(0, args.vocab, (args.batch, args.seq), device=device)
    gc.collect()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        built = torch.cuda.memory_allocated() / 2**20
    else:
        reset_peak_rss()
        built = status_mb("VmRSS") - base_rss
    times, losses = [], []
    for step in range(args.warmup + args.steps):
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        logits = lm(lm.embed(ids))
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if cuda:
            torch.cuda.synchronize()
        if step >= args.warmup:
            times.append(time.perf_counter() - t)
        losses.append(loss.item())
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else status_mb("VmHWM") - base_rss
    total = sum(p.numel() for p in lm.parameters())
    return {"mode": args.mode, "device": device, "params_M": total / 1e6,
            "trainable_M": sum(p.numel() for p in params) / 1e6, "model_MiB": built, "peak_MiB": peak,
            "step_s": sum(times) / len(times), "loss_first": losses[0], "loss_last": losses[-1]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--intermediate", type=int, default=2048)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--r", type=int, default=8)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--mode", help=argparse.SUPPRESS)  # internal: run one mode, print JSON
    args = ap.parse_args()
    if args.mode:
        print("RESULT " + json.dumps(run_one(args)))
        return
    rows = []
    passthrough = [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
                   if k not in ("modes", "mode", "gradient_checkpointing")]
    passthrough += ["--gradient-checkpointing"] if args.gradient_checkpointing else []
    for mode in args.modes.split(","):
        out = subprocess.run([sys.executable, "-m", "scripts.bench_peft", *passthrough, "--mode", mode],
                             capture_output=True, text=True)
        lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
        if out.returncode or not lines:
            print(f"{mode}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
            continue
        rows.append(json.loads(lines[-1][len("RESULT "):]))
    print(f"llama hidden={args.hidden} layers={args.layers} inter={args.intermediate} vocab={args.vocab} "
          f"batch={args.batch} seq={args.seq} r={args.r} gc={args.gradient_checkpointing}")
    print(f"{'mode':<12} {'device':<6} {'params M':>9} {'train M':>8} {'model MiB':>9} {'peak MiB':>9} {'step s':>7}"
          f" {'loss':>13}")
    for r in rows:
        print(f"{r['mode']:<12} {r['device']:<6} {r['params_M']:>9.1f} {r['trainable_M']:>8.2f} "
              f"{r['model_MiB']:>9.0f} {r['peak_MiB']:>9.0f} {r['step_s']:>7.2f} {r['loss_first']:>6.3f}>{r['loss_last']:.3f}")


if __name__ == "__main__":
    main()
