"""LLaVA's own data layout: `blip_laion_cc_sbu_558k.json` beside an `images/` folder whose
sub-folders hold JPEGs (LLaVA-Pretrain), paths resolved against `data.image_folder` as LLaVA's
`--image_folder`. With the folder given the run trains; without it every image is missing and the
run stops with one line naming the count and the first paths, instead of exiting 0 on nothing."""

from __future__ import annotations

import csv
import json

import yaml
from PIL import Image

from tests.cli_run import chimera, plain_error
from tests.tiny import experiment_config, tiny_world

CAPTIONS = ["a red circle above a blue square", "two green triangles", "a gray square on the left",
            "an orange circle", "a blue triangle beside a red square", "three circles"]


def pretrain_layout(root):
    """LLaVA-Pretrain as released: the JSON, and images/<5-digit folder>/<id>.jpg."""
    base = root / "LLaVA-Pretrain"
    records = []
    for i, caption in enumerate(CAPTIONS * 2):
        sample = f"{4539375 + i:09d}"
        rel = f"{sample[:5]}/{sample}.jpg"
        path = base / "images" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40 + i, 32), (20 * i % 255, 90, 160)).save(path, format="JPEG")
        records.append({"id": sample, "image": rel, "conversations": [
            {"from": "human", "value": "Render a clear and concise summary of the photo.\n<image>"},
            {"from": "gpt", "value": caption}]})
    (base / "blip_laion_cc_sbu_558k.json").write_text(json.dumps(records))
    return base


def config(world, base, runs, image_folder):
    cfg = experiment_config(world, runs, max_steps=3)
    cfg["model"]["init_args"].update({"stage": "align", "template": {"name": "plain"}})
    cfg["data"]["init_args"].update({"train_json": str(base / "blip_laion_cc_sbu_558k.json"), "val_qa": None,
                                     "max_turns": None, "image_folder": image_folder})
    cfg["trainer"]["limit_val_batches"] = 0
    return cfg


def test_pretrain_layout_trains_with_image_folder_and_stops_without(tmp_path):
    world = tiny_world(tmp_path)
    base = pretrain_layout(tmp_path)
    good = config(world, base, tmp_path / "runs", str(base / "images"))
    (tmp_path / "good.yaml").write_text(yaml.safe_dump(good))
    proc = chimera("fit", "--config", tmp_path / "good.yaml")
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = list(csv.DictReader(open(tmp_path / "runs" / "tiny" / "version_0" / "metrics.csv")))
    assert [float(r["train/skipped_samples"]) for r in rows if r.get("train/skipped_samples")][-1] == 0
    assert len([r for r in rows if r.get("train/loss")]) == 3

    wrong = config(world, base, tmp_path / "runs", None)  # paths resolve against the JSON's folder
    (tmp_path / "wrong.yaml").write_text(yaml.safe_dump(wrong))
    line = plain_error(chimera("fit", "--config", tmp_path / "wrong.yaml"), "fit", alone=False)
    assert line.startswith("12 of 12 samples had a missing or unreadable image"), line
    assert f"first {base / '00453'}" in line and "data.image_folder" in line
