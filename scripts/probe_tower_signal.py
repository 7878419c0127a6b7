"""How much of a frozen tower's output an image's objects move, at the tower's own input size and in
any-resolution tiles: the diagnostic behind the Shapes-HR runs (docs/benchmarks.md, "Shapes-HR").

For each view (`base`: the whole image resized to the tower's input; `tiles`: the image cut into a
KxK grid of tower-sized crops, their feature maps stitched back) it prints
- `signal`: the root-mean-square deviation of the patch features from their mean over the images
  (per patch position and channel) divided by the features' root-mean-square: the share of the
  tower's output that depends on the image at all;
- linear probes for the colour and the shape of the object in a grid cell (mean and max of the cell's
  patch features, standardised; logistic regression on 3/4 of the questions, accuracy on the rest),
  labels read from the world's "What color/shape is the object at the <cell>?" questions; and the
  majority answer's accuracy on the same held-out questions.
`--reference DIR` adds the signal of another world's images (e.g. the Shapes world the tower was
trained on) at the tower's input size.

usage: python scripts/probe_tower_signal.py --config configs/experiments/llava_shapes_hr_tiny.yaml
           --tower runs/shapes_hr/clip/open_clip.pt --world runs/shapes_hr/data [--reference DIR]
           [--images 600] [--tiles 4] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import torch
import yaml
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file: this checkout's packages

from data.anyres_images import AnyResTransform  # noqa: E402
from data.shapes import GRID, POSITIONS  # noqa: E402
from models.anyres import AnyResLayout  # noqa: E402
from models.vision import OpenCLIPVision  # noqa: E402

CELL_OF = {name: rc for rc, name in POSITIONS.items()}
QUESTION = re.compile(r"What (color|shape) is the object at the (.+)\?")


def signal(features: torch.Tensor) -> float:
    """(images, patches, channels) -> rms of the deviation from the per-(patch, channel) mean / rms."""
    return float((features - features.mean(0)).pow(2).mean().sqrt() / features.pow(2).mean().sqrt())


def cell_questions(records: list[dict]) -> list[tuple[int, tuple[int, int], str, str]]:
    """(record index, (row, col), "color"|"shape", answer) for each cell question of single-image records."""
    out = []
    for i, record in enumerate(records):
        turns = record["conversations"]
        for human, gpt in zip(turns[0::2], turns[1::2]):
            match = QUESTION.search(human["value"])
            if match and match.group(2) in CELL_OF:
                out.append((i, CELL_OF[match.group(2)], match.group(1), gpt["value"]))
    return out


def linear_probe(x: torch.Tensor, y: torch.Tensor, classes: int, train: int, steps: int = 500) -> float:
    """Held-out accuracy of a logistic regression on standardised `x` (first `train` rows to fit)."""
    torch.manual_seed(0)
    x = (x - x[:train].mean(0)) / (x[:train].std(0) + 1e-6)
    head = torch.nn.Linear(x.shape[1], classes)
    opt = torch.optim.Adam(head.parameters(), lr=1e-2, weight_decay=1e-3)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(head(x[:train]), y[:train]).backward()
        opt.step()
    with torch.no_grad():
        return float((head(x[train:]).argmax(1) == y[train:]).float().mean())


def grid_features(tower: OpenCLIPVision, images: list[Image.Image], tiles: int) -> torch.Tensor:
    """(images, side, side, channels): the base view's patch grid (tiles=1), or the feature maps of the
    tiles an any-resolution model cuts for a (tiles x tower size)-square canvas, stitched back."""
    side, size = int(round(tower.num_patches ** 0.5)), tower.image_size
    layout = AnyResLayout(tile_size=size, patch_side=side, grid_pinpoints=((tiles * size, tiles * size),))
    cut = AnyResTransform(layout, tower.transform())
    out = []
    with torch.no_grad():
        for image in images:
            views = cut.base(image)[None] if tiles == 1 else cut.tiles(image)  # row-major tiles
            f = tower.features(views).reshape(tiles, tiles, side, side, -1).permute(0, 2, 1, 3, 4)
            out.append(f.reshape(tiles * side, tiles * side, -1))
    return torch.stack(out)


def cell_vector(grid: torch.Tensor, cell: tuple[int, int]) -> torch.Tensor:
    span = grid.shape[0] // GRID
    patch = grid[cell[0] * span:(cell[0] + 1) * span, cell[1] * span:(cell[1] + 1) * span].flatten(0, 1)
    return torch.cat([patch.mean(0), patch.amax(0)])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="experiment YAML whose OpenCLIPVision tower is probed")
    parser.add_argument("--tower", required=True, help="open_clip checkpoint file (the clip stage's export)")
    parser.add_argument("--world", required=True, help="a Shapes-HR (or Shapes) folder with train.json and images")
    parser.add_argument("--reference", help="another world's folder: its signal at the tower's input size")
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--tiles", type=int, default=4, help="tiles per side of the tiled view")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    vision = yaml.safe_load(Path(args.config).read_text())["model"]["init_args"]["model"]["init_args"]["vision"]
    tower = OpenCLIPVision(**{**vision["init_args"], "pretrained": args.tower}).eval()
    world = Path(args.world)
    records = [r for r in json.loads((world / "train.json").read_text())
               if isinstance(r.get("image"), str) and r.get("types") != ["caption"]][:args.images]
    images = [Image.open(world / r["image"]).convert("RGB") for r in records]
    questions = cell_questions(records)

    print("| view | images | signal | colour probe | colour majority | shape probe | shape majority |")
    print("|---|---|---|---|---|---|---|")
    for view, tiles in (("base", 1), (f"tiles {args.tiles}x{args.tiles}", args.tiles)):
        grids = grid_features(tower, images, tiles)
        cells = []
        for kind in ("color", "shape"):
            rows = [q for q in questions if q[2] == kind]
            labels = sorted({q[3] for q in rows})
            y = torch.tensor([labels.index(q[3]) for q in rows])
            x = torch.stack([cell_vector(grids[q[0]], q[1]) for q in rows])
            train = len(rows) * 3 // 4
            majority = float((y[train:] == y[:train].mode().values).float().mean())
            cells += [f"{linear_probe(x, y, len(labels), train):.3f}", f"{majority:.3f}"]
        print(f"| {view} | {len(images)} | {signal(grids.flatten(1, 2)):.3f} | {' | '.join(cells)} |")
    if args.reference:
        ref = Path(args.reference)
        paths = sorted((ref / "images" / "train").glob("*.png"))[:args.images]
        grids = grid_features(tower, [Image.open(p).convert("RGB") for p in paths], 1)
        print(f"| base, {args.reference} | {len(paths)} | {signal(grids.flatten(1, 2)):.3f} | | | | |")


if __name__ == "__main__":
    main()
