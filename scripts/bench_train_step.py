"""Training-step speed, ours vs the peers, on the same shapes and random weights, in one table.

    python -m scripts.bench_train_step              # GPU shapes (CLIP ViT-L/14-336 + 1.1B / 7B llama)
    python -m scripts.bench_train_step --size tiny  # the same cases at toy sizes (CPU, tested in CI)
    python -m scripts.bench_train_step --size small # ~30M-parameter shapes, for a CPU measurement
    python -m scripts.bench_train_step --cases llava_1b,llava_1b_hf
    python -m scripts.bench_train_step --size tiny --compile aot_eager  # each case's step compiled

Cases (a case and its peer share every shape, dtype, optimizer and batch):
  llava_1b / llava_1b_hf          our LLaVA vs transformers' LlavaForConditionalGeneration: CLIP
                                  ViT-L/14-336 frozen, mlp2x_gelu + 1.1B llama trained, 8 x (576+512)
  llava_1b_chunked                ours with the chunked loss (`LLaVA(loss_chunk_size=...)`)
  llava_7b_lora / llava_7b_lora_hf  7B llama with LoRA r128 on every LM linear, batch 4
  flamingo_1b / flamingo_1b_of    our Flamingo vs open_flamingo 2.0.1: ViT-L/14 + the 1.1B llama,
                                  cross-attention every layer, 8 x 512 text tokens, resampler +
                                  cross-attention trained (open_flamingo also trains the input
                                  embeddings: its default, kept). open_flamingo is benchmark-only:
                                  `pip install --no-deps open_flamingo==2.0.1 einops-exts`; the
                                  case is reported as not installed otherwise.
  mix_padded / mix_packed         ours on a LLaVA-like length mix (mostly short answers, a few long
                                  ones), one batch padded vs packed (`data.packing`): effective
                                  (non-pad) tokens/s is what counts
  matmul_peak                     measured dense matmul rate of the device and dtype (the MFU base)
  llava_1b+OPTION                 ours with one speed option, against llava_1b: +compile (inductor on
                                  each decoder layer), +ckpt1 / +ckpt2 (activation checkpointing of
                                  every / every 2nd decoder layer), +unfused (for-each AdamW)

Every case runs in its own process (memory is its own). Timing: `--warmup` untimed steps, then
`--steps` steps between synchronised clocks. FLOPs are counted by torch's FlopCounterMode on one
extra step (forward + backward, as executed), so MFU = counted FLOPs per second / measured peak.
Host syncs (`train.host_syncs.HostSyncCounter`: `.item()`, nonzero, boolean-mask indexing, ... each
of which makes the host wait for the device, and under torch.compile breaks the graph) are counted
on one more, eager, step: `syncs/step` is the forward + backward's; the optimizer's are reported
apart in the JSON (`optimizer_syncs`: AdamW's unfused CPU path reads its CPU step counter per
parameter, which is no device sync).
`--compile [BACKEND]` times each case with its forward (and, through AOTAutograd, its backward)
under `torch.compile` (default inductor; on a CPU `aot_eager` compiles in seconds); the `compile`
column gives the backend and the graph breaks dynamo took.
Precision: bf16 autocast with fp32 master weights and fused AdamW on CUDA; fp32 on CPU.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from scripts.process_memory import reset_peak_rss, status_mb

LLAMA_1B = {"model_type": "llama", "hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22,
            "num_attention_heads": 32, "num_key_value_heads": 4, "vocab_size": 32000,
            "max_position_embeddings": 4096}
LLAMA_TINY = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 512,
              "max_position_embeddings": 1024}
CLIP_TINY = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
             "image_size": 32, "patch_size": 8, "projection_dim": 32}
OPEN_CLIP_TINY = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16,
                                                 "patch_size": 8},
                  "text_cfg": {"context_length": 16, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1}}

CASES = ["matmul_peak", "llava_1b", "llava_1b_hf", "llava_1b_chunked", "llava_7b_lora", "llava_7b_lora_hf",
         "flamingo_1b", "flamingo_1b_of", "mix_padded", "mix_packed"]
OPTIONS = {"compile": {"compile_layers": "inductor"}, "ckpt1": {"gradient_checkpointing": True},
           "ckpt2": {"gradient_checkpointing": True, "checkpoint_every": 2}, "unfused": {}}
CASES += [f"llava_1b+{o}" for o in OPTIONS]
PEERS = {"llava_1b": "llava_1b_hf", "llava_1b_chunked": "llava_1b", "llava_7b_lora": "llava_7b_lora_hf",
         "flamingo_1b": "flamingo_1b_of", "mix_packed": "mix_padded", **{f"llava_1b+{o}": "llava_1b" for o in OPTIONS}}


def shapes(size: str) -> dict:
    from models.interop import arch_config

    if size == "small":
        lm = {**LLAMA_TINY, "hidden_size": 512, "intermediate_size": 1376, "num_hidden_layers": 4,
              "num_attention_heads": 8, "num_key_value_heads": 4, "vocab_size": 8000}
        clip = {"hidden_size": 256, "intermediate_size": 1024, "num_hidden_layers": 4, "num_attention_heads": 4,
                "image_size": 112, "patch_size": 14, "projection_dim": 256}
        open_clip = {"embed_dim": 256, "vision_cfg": {"image_size": 112, "layers": 4, "width": 256, "head_width": 64,
                                                      "patch_size": 14},
                     "text_cfg": {"context_length": 16, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1}}
        return {"lm": lm, "lm_7b": {**lm, "hidden_size": 768, "num_attention_heads": 12}, "clip": clip,
                "open_clip": open_clip, "batch": 4, "batch_7b": 4, "text": 128, "lora_r": 16, "mix_batch": 16,
                "mix_lengths": (16, 64, 384), "chunk": 128, "matmul": 1024}
    if size == "tiny":
        return {"lm": LLAMA_TINY, "lm_7b": {**LLAMA_TINY, "hidden_size": 96, "num_attention_heads": 4},
                "clip": CLIP_TINY, "open_clip": OPEN_CLIP_TINY, "batch": 2, "batch_7b": 2, "text": 32,
                "lora_r": 8, "mix_batch": 16, "mix_lengths": (4, 16, 64), "chunk": 16, "matmul": 512}
    return {"lm": LLAMA_1B, "lm_7b": {**arch_config("lmsys/vicuna-7b-v1.5"), "vocab_size": 32000},
            "clip": arch_config("openai/clip-vit-large-patch14-336"), "open_clip": "ViT-L-14", "batch": 8,
            "batch_7b": 4, "text": 512, "lora_r": 128, "mix_batch": 32, "mix_lengths": (32, 256, 1536),
            "chunk": 1024, "matmul": 8192}


# ---------------------------------------------------------------------------
# builders: each returns (step inputs, model, trainable params, tokens per step, samples per step)
# ---------------------------------------------------------------------------


def _tokenizer() -> str:
    from data.tokenizer import train_tokenizer

    out = Path(tempfile.gettempdir()) / "chimera_bench_tokenizer"
    if not (out / "tokenizer.json").exists():
        train_tokenizer(["a small red circle", "a large blue square", "what is this"], out)
    return str(out)


def _ours_llava(s: dict, lm_cfg: dict, adapter=None, loss_chunk_size=None, **lm_options):
    from models.connectors import MLPConnector
    from models.language import LanguageModel
    from models.llava import LLaVA
    from models.vision import HFVision

    lm = LanguageModel(config=dict(lm_cfg), tokenizer=_tokenizer(), adapter=adapter, **lm_options)
    model = LLaVA(HFVision(config=dict(s["clip"]), select_layer=-2), lm, MLPConnector, loss_chunk_size=loss_chunk_size)
    model.vision.requires_grad_(False)  # the LM trains whole, or its adapter only (LanguageModel's default)
    return model


def _llava_batch(model, s: dict, batch: int, image_token_id: int, expand: int):
    """One image + `text` tokens per sample; `expand` image placeholders in the ids (the model's image
    tokens: ours and HF's LLaVA alike take widened ids)."""
    import torch

    side = s["clip"]["image_size"]
    text = torch.randint(10, 200, (batch, s["text"]))
    ids = torch.cat([torch.full((batch, expand), image_token_id), text], 1)
    labels = ids.clone()
    labels[:, : expand + s["text"] // 2] = -100  # the answer half is supervised
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels,
            "pixel_values": torch.randn(batch, 3, side, side)}


def build(case: str, s: dict):
    import torch

    from models.peft import LoRA

    base, _, option = case.partition("+")
    if base in ("llava_1b", "llava_1b_chunked", "llava_7b_lora"):
        lora = case == "llava_7b_lora"
        model = _ours_llava(s, s["lm_7b"] if lora else s["lm"],
                            adapter=LoRA(r=s["lora_r"], alpha=2 * s["lora_r"], dropout=0.0) if lora else None,
                            loss_chunk_size=s["chunk"] if case == "llava_1b_chunked" else None,
                            **OPTIONS.get(option, {}))
        b = s["batch_7b"] if lora else s["batch"]
        batch = _llava_batch(model, s, b, model.language.image_token_id, model.num_image_tokens)
        batch["image_positions"] = model.image_placeholders.positions(batch["input_ids"])  # as collators do
        return batch, model, lambda m, x: m(**x)[1], b * (s["text"] + model.num_image_tokens), b
    if case in ("llava_1b_hf", "llava_7b_lora_hf"):
        from transformers import LlavaForConditionalGeneration

        from models.interop import hf_llava_config

        lora = case == "llava_7b_lora_hf"
        ours = _ours_llava(s, s["lm_7b"] if lora else s["lm"])
        config = hf_llava_config(ours)
        n_img, image_id = ours.num_image_tokens, ours.language.image_token_id
        del ours
        model = LlavaForConditionalGeneration(config)
        model.model.vision_tower.requires_grad_(False)
        if lora:
            from peft import LoraConfig, get_peft_model

            targets = sorted({n.rsplit(".", 1)[-1] for n, m in model.model.language_model.named_modules()
                              if isinstance(m, torch.nn.Linear)})
            model = get_peft_model(model, LoraConfig(r=s["lora_r"], lora_alpha=2 * s["lora_r"], lora_dropout=0.0,
                                                     target_modules=rf".*language_model.*\.({'|'.join(targets)})"))
        b = s["batch_7b"] if lora else s["batch"]
        batch = _llava_batch(model, s, b, image_id, n_img)
        return batch, model, lambda m, x: m(**x).loss, b * (s["text"] + n_img), b
    if case == "flamingo_1b":
        return _ours_flamingo(s)
    if case == "flamingo_1b_of":
        return _open_flamingo(s)
    if case in ("mix_padded", "mix_packed"):
        return _length_mix(s, packed=case == "mix_packed")
    raise ValueError(f"unknown case {case!r}; choose from {CASES}")


def _flamingo_ids(s: dict, batch: int, image_id: int, chunk_id: int):
    import torch

    text = torch.randint(10, 200, (batch, s["text"] - 2))
    ids = torch.cat([torch.full((batch, 1), image_id), text, torch.full((batch, 1), chunk_id)], 1)
    labels = ids.clone()
    labels[:, 0] = -100
    return ids, labels


def _vision_side(s: dict) -> int:
    return s["open_clip"]["vision_cfg"]["image_size"] if isinstance(s["open_clip"], dict) else 224


def _ours_flamingo(s: dict):
    import torch

    from models.flamingo import Flamingo
    from models.language import LanguageModel
    from models.vision import OpenCLIPVision

    oc = s["open_clip"]
    vision = OpenCLIPVision(model_config=oc, select_layer=-1) if isinstance(oc, dict) else \
        OpenCLIPVision(model_name=oc, select_layer=-1)
    model = Flamingo(vision, LanguageModel(config=dict(s["lm"]), tokenizer=_tokenizer()), cross_attn_every_n_layers=1)
    model.requires_grad_(False)
    for part in (model.connector, model.cross_attention, model.special_tokens):
        part.requires_grad_(True)
    tok = model.tokenizer
    ids, labels = _flamingo_ids(s, s["batch"], tok.convert_tokens_to_ids("<image>"),
                                tok.convert_tokens_to_ids("<|endofchunk|>"))
    side = _vision_side(s)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels,
             "pixel_values": torch.randn(s["batch"], 3, side, side)}
    return batch, model, lambda m, x: m(**x)[1], s["batch"] * s["text"], s["batch"]


def _open_flamingo(s: dict):
    import torch

    try:
        from open_flamingo import create_model_and_transforms
    except ImportError as err:
        raise ModuleNotFoundError("open_flamingo is not installed (benchmark-only: "
                                  "pip install --no-deps open_flamingo==2.0.1 einops-exts)") from err
    from transformers import AutoConfig, AutoModelForCausalLM

    from models.vision import _register_open_clip_config

    oc = s["open_clip"]
    name = _register_open_clip_config(oc) if isinstance(oc, dict) else oc
    lm_dir = Path(tempfile.mkdtemp(prefix="bench_of_lm"))
    cfg = dict(s["lm"])
    AutoModelForCausalLM.from_config(AutoConfig.for_model(cfg.pop("model_type"), **cfg)).save_pretrained(lm_dir)
    model, _, tok = create_model_and_transforms(name, None, str(lm_dir), _tokenizer(), cross_attn_every_n_layers=1,
                                                decoder_layers_attr_name="model.layers")
    ids, labels = _flamingo_ids(s, s["batch"], tok.convert_tokens_to_ids("<image>"),
                                tok.convert_tokens_to_ids("<|endofchunk|>"))
    side = _vision_side(s)
    batch = {"vision_x": torch.randn(s["batch"], 1, 1, 3, side, side), "lang_x": ids,
             "attention_mask": torch.ones_like(ids), "labels": labels}
    return batch, model, lambda m, x: m(**x)[0], s["batch"] * s["text"], s["batch"]


def _length_mix(s: dict, packed: bool):
    """A LLaVA-like mix, each sample with one image: 5% (at least one) long, 25% medium, the rest
    short texts, lengths uniform in [max/4, max] of their class. Packed rows are as long as the
    longest sample (what padding makes every row), so attention per row costs the same."""
    import torch

    from data.collate import Collator
    from data.packing import PackingCollator

    model = _ours_llava(s, s["lm"])
    g = torch.Generator().manual_seed(0)
    short, medium, long = s["mix_lengths"]
    items = []
    n_long = max(1, round(0.05 * s["mix_batch"]))
    n_medium = round(0.25 * s["mix_batch"])
    classes = [long] * n_long + [medium] * n_medium + [short] * (s["mix_batch"] - n_long - n_medium)
    for hi in classes:
        n = int(torch.randint(max(2, hi // 4), hi + 1, (), generator=g))
        ids = torch.cat([torch.tensor([model.language.image_token_id]), torch.randint(10, 200, (n,), generator=g)])
        labels = ids.clone()
        labels[: 1 + n // 2] = -100
        items.append({"input_ids": ids, "labels": labels,
                      "pixel_values": torch.randn(1, 3, s["clip"]["image_size"], s["clip"]["image_size"])})
    pad = model.tokenizer.pad_token_id
    n_img = model.num_image_tokens
    if packed:  # rows as long as the padded batch's, so attention costs the same per row
        longest = max(len(it["input_ids"]) - 1 + n_img for it in items)
        collate = PackingCollator(pad, model.image_placeholders, max_length=longest)
    else:
        collate = Collator(pad, placeholders=model.image_placeholders)
    # the model's inputs; the collator's counts (skipped, dropped, num_targets, ...) are not
    batch = {k: v for k, v in collate(items).items()
             if k in ("input_ids", "attention_mask", "pixel_values", "labels", "segment_ids", "image_positions")}
    effective = sum(len(it["input_ids"]) - 1 + n_img for it in items)
    return batch, model, lambda m, x: m(**x)[1], effective, len(items)


# ---------------------------------------------------------------------------
# one case in this process
# ---------------------------------------------------------------------------


def matmul_peak(s: dict, device, dtype) -> dict:
    import torch

    n = s["matmul"]
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    reps = 20 if device.type == "cuda" else 3
    _sync(device)
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(device)
    return {"tflops": 2 * n**3 * reps / (time.perf_counter() - start) / 1e12}


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_case(case: str, args) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    s = shapes(args.size)
    cuda = torch.cuda.is_available() and not args.cpu
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    if case == "matmul_peak":
        return matmul_peak(s, device, dtype)
    torch.manual_seed(0)
    base = status_mb("VmRSS")
    batch, model, loss_fn, tokens, samples = build(case, s)
    model.to(device).train()
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    params = [p for p in model.parameters() if p.requires_grad]
    fused = cuda and not case.endswith("+unfused")
    opt = torch.optim.AdamW(params, lr=1e-5, fused=True) if fused else torch.optim.AdamW(params, lr=1e-5)

    def eager_loss():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            return loss_fn(model, batch)

    compiled_loss = None
    if args.compile:
        import torch._dynamo

        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
        compiled_loss = torch.compile(eager_loss, backend=args.compile)

    def step(forward=compiled_loss or eager_loss):
        loss = forward()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    else:
        reset_peak_rss()
    for _ in range(args.warmup):
        loss = step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    _sync(device)
    seconds = (time.perf_counter() - start) / args.steps
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else (status_mb("VmHWM") - base) / 1024
    compile_info = None
    if args.compile:
        import torch._dynamo

        reasons = dict(torch._dynamo.utils.counters["graph_break"])  # reason -> count
        compile_info = {"backend": args.compile, "graph_breaks": sum(reasons.values()), "graph_break_reasons": reasons}
    with FlopCounterMode(display=False) as counter:
        step(eager_loss)
    syncs, optimizer_syncs = host_syncs(eager_loss, opt)
    return {"seconds": seconds, "tokens_per_s": tokens / seconds, "samples_per_s": samples / seconds,
            "tflops": counter.get_total_flops() / seconds / 1e12, "memory_gib": peak,
            "trainable": sum(p.numel() for p in params), "loss": float(loss.detach()), "device": str(device),
            "host_syncs": syncs.total, "host_syncs_by_op": dict(syncs.by_op),
            "optimizer_syncs": optimizer_syncs.total, "compile": compile_info}


def host_syncs(forward, opt):
    """Counters of the syncs of one eager training step: (forward + backward, optimizer step)."""
    from train.host_syncs import HostSyncCounter

    with HostSyncCounter() as model_syncs:
        forward().backward()
    with HostSyncCounter() as optimizer_syncs:
        opt.step()
        opt.zero_grad(set_to_none=True)
    return model_syncs, optimizer_syncs


# ---------------------------------------------------------------------------
# the table
# ---------------------------------------------------------------------------


def collect(cases: list[str], args) -> dict[str, dict]:
    results = {}
    for case in cases:
        cmd = [sys.executable, "-m", "scripts.bench_train_step", "--case", case, "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--size", args.size, *(["--cpu"] if args.cpu else []),
               *(["--compile", args.compile] if args.compile else [])]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode != 0 or not lines:
            reason = (proc.stderr.strip().splitlines() or ["failed"])[-1]
            results[case] = {"error": reason[:120]}
        else:
            results[case] = json.loads(lines[-1])
    return results


def table(results: dict[str, dict]) -> str:
    peak = results.get("matmul_peak", {}).get("tflops")
    head = (f"{'case':<20} {'tokens/s':>10} {'syncs/step':>10} {'samples/s':>10} {'TFLOP/s':>9} {'MFU':>6} "
            f"{'memory GiB':>10} {'vs peer':>14} {'compile':>22}")
    lines = [head, "-" * len(head)]
    if peak:
        lines.append(f"{'matmul_peak':<20} {'':>10} {'':>10} {'':>10} {peak:>9.2f} {'1.00':>6}")
    for case, r in results.items():
        if case == "matmul_peak":
            continue
        if "error" in r:
            lines.append(f"{case:<20} not run: {r['error']}")
            continue
        mfu = f"{r['tflops'] / peak:.2f}" if peak else "-"
        peer = results.get(PEERS.get(case, ""), {})
        vs = ""
        if "tokens_per_s" in peer:
            vs = f"{r['tokens_per_s'] / peer['tokens_per_s']:.2f}x {PEERS[case]}"
        compiled = r.get("compile") or {}
        how = f"{compiled['backend']}, {compiled['graph_breaks']} breaks" if compiled else "-"
        lines.append(f"{case:<20} {r['tokens_per_s']:>10.0f} {r['host_syncs']:>10} {r['samples_per_s']:>10.2f} "
                     f"{r['tflops']:>9.3f} {mfu:>6} {r['memory_gib']:>10.2f} {vs:>14} {how:>22}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=["full", "small", "tiny"], default="full",
                   help="full: the issue's GPU shapes; small / tiny: scaled down for a CPU")
    p.add_argument("--cpu", action="store_true", help="stay on the CPU even where CUDA is available")
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--case", help=argparse.SUPPRESS)  # one case, in a child process
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--compile", nargs="?", const="inductor", default=None, metavar="BACKEND",
                   help="time each step with its forward/backward under torch.compile (default backend: inductor; "
                        "aot_eager compiles fast on a CPU)")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    if args.case:
        print(json.dumps(run_case(args.case, args)))
        return {}
    cases = [c for c in args.cases.split(",") if c]
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        p.error(f"unknown cases {unknown}; choose from {CASES}")
    results = collect(cases, args)
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
