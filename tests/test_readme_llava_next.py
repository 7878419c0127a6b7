"""README's "From LLaVA-1.5 to LLaVA-NeXT in a config": its YAML blocks, read from the README (so the
two cannot drift), go after a LLaVA-1.5 experiment as extra `--config` files and give an
any-resolution model (a non-square image takes its base view's tokens plus its tiles'), the
7B grid with room for its images, and clips pooled per frame."""

from __future__ import annotations

import re
from pathlib import Path

import PIL.Image
import pytest
import torch
import yaml

from data.tokenizer import train_tokenizer
from models.anyres import AnyResLayout
from train.checkpoint import build_module
from train.cli import main

ROOT = Path(__file__).resolve().parent.parent
SECTION = "## From LLaVA-1.5 to LLaVA-NeXT in a config"


def readme_blocks() -> list[str]:
    """The section's ```yaml blocks, in order: next.yaml (72 px), the 7B lines, video.yaml."""
    text = (ROOT / "README.md").read_text()
    start = text.index(SECTION)
    section = text[start:text.index("\n## ", start + len(SECTION))]
    return re.findall(r"```yaml\n(.*?)```", section, flags=re.DOTALL)


def resolved(capsys, *configs: Path | str) -> dict:
    """The experiment `chimera fit --config A --config B ...` would run (`--print_config`)."""
    args = ["fit", *[a for c in configs for a in ("--config", str(c))], "--print_config"]
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        main(args)
    assert done.value.code == 0
    return yaml.safe_load(capsys.readouterr().out)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory) -> Path:
    """llava_shapes_tiny.yaml with an untrained tower and a tokenizer of its own (no file it needs)."""
    root = tmp_path_factory.mktemp("readme")
    train_tokenizer(["which way does the red circle move", "what shape is it", "left", "square"] * 5,
                    root / "tok", vocab_size=300)
    cfg = yaml.safe_load((ROOT / "configs/experiments/llava_shapes_tiny.yaml").read_text())
    model = cfg["model"]["init_args"]["model"]["init_args"]
    model["vision"]["init_args"]["pretrained"] = None
    model["language"]["init_args"]["tokenizer"] = str(root / "tok")
    return write(root / "llava_shapes_tiny.yaml", yaml.safe_dump(cfg))


def test_the_readme_has_the_three_blocks():
    blocks = [yaml.safe_load(b) for b in readme_blocks()]
    assert len(blocks) == 3
    assert "image_grid_pinpoints" in blocks[0]["model"]["init_args"]["model"]["init_args"]
    assert "video_pool" in blocks[2]["model"]["init_args"]["model"]["init_args"]


def test_next_yaml_makes_the_tiny_llava_any_resolution(tiny_base, tmp_path, capsys):
    next_yaml, _, video_yaml = readme_blocks()
    base = build_module(resolved(capsys, tiny_base)["model"]).model
    assert base.anyres is None and base.image_token_count() == 9  # 3x3 merged patches, any image
    cfg = resolved(capsys, tiny_base, write(tmp_path / "next.yaml", next_yaml),
                   write(tmp_path / "video.yaml", video_yaml))
    model = build_module(cfg["model"]).model.eval()
    assert model.anyres is not None and model.num_image_tokens == 81  # one view: 9x9 patches
    assert model.image_newline.weight.shape == (128,)
    wide = model.image_transform()(PIL.Image.new("RGB", (144, 72), (200, 30, 30)))  # width 144, height 72
    assert wide.size == (72, 144) and wide.views.shape == (3, 3, 72, 72)  # base view + 2 tiles
    assert wide.num_tokens == 81 + 9 * (18 + 1) == 252  # base + a 9x18 tile map, a newline per row
    with torch.no_grad():
        assert model.image_embeddings(wide.views, [wide.size]).shape == (252, 128)
    square = model.image_transform()(PIL.Image.new("RGB", (72, 72)))
    assert square.num_tokens == 81 + 9 * (10 + 1) == 180  # unpadded back to 9x10 columns of the 9x18 map
    # video.yaml: clips pooled 9x9 -> 5x5 per frame, the two files one training set
    assert (model.video_pool, model.video_pool_mode, model.frame_token_count) == (2, "bilinear", 25)
    clip = model.clip_transform()([PIL.Image.new("RGB", (288, 288))] * 4)
    assert clip.frames.shape == (4, 3, 72, 72) and clip.num_tokens == 100
    data = cfg["data"]["init_args"]
    assert data["train_json"] == ["runs/data/shapes-hr/train.json", "runs/data/shapes-hr/train_video.json"]
    assert data["val_qa"] == "runs/data/shapes-hr/val_video_qa.jsonl"


def test_the_7b_lines_give_llava_next_grid_and_room_for_a_square_photo(tmp_path, capsys):
    lines = readme_blocks()[1]
    finetune = ROOT / "configs/experiments/llava-1.5-7b/finetune.yaml"
    before = resolved(capsys, finetune)
    after = resolved(capsys, finetune, write(tmp_path / "next_7b.yaml", lines))
    model = after["model"]["init_args"]["model"]["init_args"]
    assert before["model"]["init_args"]["model"]["init_args"]["image_grid_pinpoints"] is None
    assert model["connector"]["class_path"] == "models.connectors.MLPConnector"  # mlp2x_gelu: stitchable
    layout = AnyResLayout(336, 24, tuple(map(tuple, model["image_grid_pinpoints"])), model["anyres_max_tiles"])
    assert layout.canvas((1000, 1000)) == (672, 672) and layout.num_views((1000, 1000)) == 5
    assert layout.num_tokens((1000, 1000)) == 576 + 48 * 49 == 2928
    assert before["data"]["init_args"]["max_length"] == 2048 < 2928 <= after["data"]["init_args"]["max_length"]
