"""Why the tiny LLaVA plateaus on Sort-of-CLEVR: the language model's colour lookup against the
number of image tokens that hold no object.

The image is replaced by perfect object vectors (one-hot colour, one-hot shape, centre x and y
in [-1, 1]), in random order, through the LLaVA's 2-layer MLP connector into the same tiny Llama
as `configs/experiments/llava_sort_of_clevr_tiny.yaml`. `--pads` adds image tokens that hold no
object (zero vectors, as the empty cells of a 5x5 grid: 6 objects + 19 pads = 25 tokens). The
vision problem is gone, so what is left is the LM learning to find the token of the asked colour.
Questions are the three non-relational ones, answers scored on each batch before it is learned
from (online accuracy over the last 400 questions).

`--captions` adds the caption supervision of `chimera data sort-of-clevr --captions`: `records`
makes every other row a caption record ("Describe the image." -> every object in colour order),
`context` puts that caption turn before each question in the same conversation. Accuracy is
always that of the question's answer.

usage: python scripts/probe_object_lookup.py [--pads 0,3,19] [--steps 750] [--batch 64] [--lr 1e-3]
                                             [--every 250] [--threads 2] [--seed 0]
                                             [--captions none|records|context]
"""

from __future__ import annotations

import argparse
import collections
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from data.sort_of_clevr import (COLORS, NON_RELATIONAL, SHAPES, TEMPLATES, Scene, answer, caption, question,
                                sample_scene)
from data.collate import Collator
from data.image_placeholders import ImagePlaceholders
from data.templates import IMAGE_TOKEN, ChatTemplate
from data.tokenize import IGNORE_INDEX, tokenize_conversation
from data.tokenizer import train_tokenizer
from data.writers import CAPTION_PROMPT, QA, llava_record
from models.connectors import MLPConnector
from models.language import LanguageModel
from models.losses import next_token_loss, shifted_targets

FEATURES = len(COLORS) + len(SHAPES) + 2
CAPTIONS = ("none", "records", "context")
LM_CONFIG = dict(model_type="llama", hidden_size=128, intermediate_size=512, num_hidden_layers=3,
                 num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
                 tie_word_embeddings=True)


def scene_tokens(scene: Scene, pads: int, rng: np.random.Generator) -> Tensor:
    """(objects + pads, FEATURES): one row per object, `pads` zero rows, shuffled together."""
    colors, rows = list(COLORS), torch.zeros(len(scene.objects) + pads, FEATURES)
    for i, o in enumerate(scene.objects):
        rows[i, colors.index(o.color)] = 1
        rows[i, len(colors) + SHAPES.index(o.shape)] = 1
        rows[i, -2:] = torch.tensor([o.cx / 37.5 - 1, o.cy / 37.5 - 1])
    return rows[torch.from_numpy(rng.permutation(len(rows)))]


def world_tokenizer(out: Path):
    """A tokenizer for the non-relational questions, their answers and captions, trained on the spot."""
    texts = [TEMPLATES[t].format(c=c) for t in NON_RELATIONAL for c in COLORS]
    rng = np.random.default_rng(0)
    captions = [CAPTION_PROMPT] + [caption(sample_scene(rng)) for _ in range(100)]
    return train_tokenizer(texts + captions + list(SHAPES) + ["left", "right", "top", "bottom"], out)


def conversation(scene: Scene, color: str, qtype: str, kind: str) -> list[dict]:
    """A question row (`kind` "question"), a caption record ("caption"), or both in one ("context")."""
    ask = QA(question(color, qtype), answer(scene, color, qtype), qtype)
    describe = QA(CAPTION_PROMPT, caption(scene), "caption")
    qas = {"question": [ask], "caption": [describe], "context": [describe, ask]}[kind]
    return llava_record("probe", "", qas)["conversations"]


def last_answer(targets: Tensor) -> Tensor:
    """Mask of each row's last contiguous run of target positions: the final answer."""
    labelled = targets != IGNORE_INDEX
    pos = torch.arange(targets.shape[1]).expand_as(targets)
    end = torch.where(labelled, pos, -1).max(-1, keepdim=True).values
    gap = torch.where(~labelled & (pos < end), pos, -1).max(-1, keepdim=True).values  # last hole before the end
    return labelled & (pos > gap)


def run(pads: int, args: argparse.Namespace, tokenizer_dir: str, save: str | None = None) -> list[dict]:
    """Train from scratch; one row of online accuracies per `args.every` steps."""
    captions = args.captions
    if captions not in CAPTIONS:
        raise ValueError(f"--captions must be one of {CAPTIONS}, got {captions!r}")
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    lm = LanguageModel(config=dict(LM_CONFIG), tokenizer=tokenizer_dir)
    connector = MLPConnector(FEATURES, lm.hidden_size, depth=2)
    params = [*lm.parameters(), *connector.parameters()]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    warmup = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 100))
    tok, template = lm.tokenizer, ChatTemplate()
    image_id = tok.convert_tokens_to_ids(IMAGE_TOKEN)
    # every scene holds one object per colour: each image is len(COLORS) + pads object tokens
    collate = Collator(tok.pad_token_id, placeholders=ImagePlaceholders(image_id, len(COLORS) + pads))
    seen: dict[str, collections.deque] = {t: collections.deque(maxlen=400) for t in NON_RELATIONAL}
    rows, start = [], time.perf_counter()
    for step in range(1, args.steps + 1):
        items, objects, types = [], [], []
        for i in range(args.batch):
            scene = sample_scene(rng)
            color, qtype = list(COLORS)[rng.integers(len(COLORS))], NON_RELATIONAL[rng.integers(3)]
            # `records`: every other row is a caption record
            kind = {"none": "question", "context": "context", "records": ("question", "caption")[i % 2]}[captions]
            ids, labels = tokenize_conversation(conversation(scene, color, qtype, kind), tok, template)
            items.append({"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "pixel_values": None})
            objects.append(scene_tokens(scene, pads, rng))
            types.append(None if kind == "caption" else qtype)
        batch = collate(items)
        text = lm.embed(batch["input_ids"])  # object features written at the image placeholders
        features = connector(torch.stack(objects)).flatten(0, 1)
        embeds = text.flatten(0, 1).index_copy(0, batch["image_positions"], features).view_as(text)
        logits = lm(embeds, attention_mask=batch["attention_mask"])
        loss = next_token_loss(logits, batch["labels"])
        with torch.no_grad():
            target = shifted_targets(batch["labels"])
            right = ((logits.argmax(-1) == target) | ~last_answer(target)).all(-1)
        for t, r in zip(types, right.tolist()):
            if t is not None:
                seen[t].append(r)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        warmup.step()
        if step % args.every == 0 or step == args.steps:
            acc = {t: sum(v) / len(v) if v else float("nan") for t, v in seen.items()}
            rows.append({"pads": pads, "tokens": len(COLORS) + pads, "captions": captions, "step": step,
                         "loss": loss.item(),
                         "seconds": time.perf_counter() - start, **acc,
                         "non_relational": sum(acc.values()) / len(acc)})
    if save:
        torch.save({"state_dict": {f"model.language.{k}": v for k, v in lm.state_dict().items()}}, save)
    return rows


def table(rows: list[dict]) -> str:
    head = "| image tokens | empty | captions | step | non-rel | shape | left/right | top/bottom | loss | seconds |"
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    for r in rows:
        lines.append(f"| {r['tokens']} | {r['pads']} | {r['captions']} | {r['step']} | {r['non_relational']:.3f} | {r['shape']:.2f} "
                     f"| {r['horizontal']:.2f} | {r['vertical']:.2f} | {r['loss']:.3f} | {r['seconds']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pads", default="0,3,19")
    p.add_argument("--steps", type=int, default=750)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--every", type=int, default=250)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--captions", default="none", choices=CAPTIONS,
                   help="caption supervision: none, caption records beside the questions, or a caption turn before each")
    p.add_argument("--tokenizer", help="a world's tokenizer dir (default: one trained on the spot)")
    p.add_argument("--save", help="write the last run's LM here, loadable by `LanguageModel(weights_from=...)`")
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    tok_dir = args.tokenizer
    if tok_dir is None:
        tok_dir = Path(tempfile.mkdtemp(prefix="probe_lookup_")) / "tokenizer"
        world_tokenizer(tok_dir)
    rows = []
    for pads in (int(x) for x in args.pads.split(",")):
        rows += run(pads, args, str(tok_dir), args.save)
        print(table(rows), flush=True)


if __name__ == "__main__":
    main()
