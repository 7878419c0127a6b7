"""Does a trained VLM read its images? Its loss on training records with their own images, with each
record's image swapped for the next record's, and with blank images.

Equal losses for own and swapped images mean the answers do not depend on what the image shows (the
model answers from the text alone, e.g. each question type's most frequent answer); a lower loss
with the own images is the share of the loss the image explains. Blank images change the input's
statistics as well as its content, so a gap there alone proves little.

usage: python scripts/probe_image_use.py --ckpt CKPT --data train.json [--records 64] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file: this checkout's packages

from data.collate import Collator, media_arguments  # noqa: E402
from data.conversation_dataset import ConversationDataset  # noqa: E402
from train.checkpoint import load_module  # noqa: E402
from train.data_module import image_transform, image_width  # noqa: E402


def single_image_records(path: Path, limit: int) -> list[dict]:
    """The first `limit` records with one image, their image paths made absolute."""
    records = [r for r in json.loads(path.read_text()) if isinstance(r.get("image"), str)][:limit]
    if len(records) < 2:
        raise ValueError(f"{path}: needs at least 2 single-image records, found {len(records)}")
    return [{**r, "image": str((path.parent / r["image"]).resolve())} for r in records]


def swapped(records: list[dict]) -> list[dict]:
    """Each record with the next record's image (the last with the first's)."""
    return [{**r, "image": records[(i + 1) % len(records)]["image"]} for i, r in enumerate(records)]


def blank(records: list[dict], folder: Path) -> list[dict]:
    """Each record with a white image of its own image's size."""
    out = []
    for i, r in enumerate(records):
        size = Image.open(r["image"]).size
        path = folder / f"blank_{i}.png"
        Image.new("RGB", size, "white").save(path)
        out.append({**r, "image": str(path)})
    return out


def loss_on(module, records: list[dict], folder: Path, name: str) -> float:
    """The model's mean loss over the answer tokens of `records`, in one batch."""
    model = module.model
    path = folder / f"{name}.json"
    path.write_text(json.dumps(records))
    dataset = ConversationDataset(path, model.tokenizer, module.template, image_transform(model, train=False),
                                  num_image_tokens=image_width(model))
    batch = Collator(model.tokenizer.pad_token_id, placeholders=model.image_placeholders)(
        [dataset[i] for i in range(len(dataset))])
    with torch.no_grad():
        _, loss = model(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], batch["labels"],
                        **media_arguments(batch))
    return float(loss)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", required=True, help="a chimera fit checkpoint or release directory (LLaVA)")
    parser.add_argument("--data", required=True, help="LLaVA conversation JSON; image paths relative to its folder")
    parser.add_argument("--records", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    module = load_module(args.ckpt)
    records = single_image_records(Path(args.data), args.records)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        losses = {name: loss_on(module, recs, folder, name) for name, recs in
                  (("own", records), ("swapped", swapped(records)), ("blank", blank(records, folder)))}
    print("| images | records | loss |")
    print("|---|---|---|")
    for name, value in losses.items():
        print(f"| {name} | {len(records)} | {value:.4f} |")


if __name__ == "__main__":
    main()
