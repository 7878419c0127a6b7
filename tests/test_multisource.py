"""Per-source loss weights (OpenFlamingo's LAION 0.2 / MMC4 1.0): one batch per named source each
step, loss = sum of weight x source loss; values and gradients checked against the sources'
losses computed separately on the same batches, and a tiny Flamingo trained from the Shapes config."""

from __future__ import annotations

import copy
import csv
import math
from pathlib import Path

import pytest
import torch

from data.collate import count_targets
import yaml

from data.multisource import MultiSourceDataModule, Source, split_sources
from data.shapes import write_shapes
from tests.tiny import LM_CONFIG, VISION
from train.checkpoint import build_module
from train.cli import main

CONFIG = Path("configs/experiments/flamingo_shapes_tiny_multisource.yaml")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    write_shapes(root, train_images=24, val_images=2, seed=0, max_objects=2)
    return root


def sources(shapes: Path, captions: float = 0.2, documents: float = 1.0) -> dict[str, dict]:
    return {"captions": {"shards": str(shapes / "shards" / "train-*.tar"), "weight": captions, "batch_size": 3},
            "documents": {"shards": str(shapes / "shards" / "interleaved-train-*.tar"), "weight": documents,
                          "batch_size": 2}}


def tiny_flamingo(shapes: Path):
    vision = copy.deepcopy(VISION)
    vision["init_args"]["image_size"] = 72
    return build_module({"class_path": "train.module.VLMModule", "init_args": {
        "stage": "full", "lr": 1e-2, "warmup_ratio": 0.0,
        "model": {"class_path": "models.flamingo.Flamingo", "init_args": {
            "vision": vision,
            "language": {"class_path": "models.language.LanguageModel",
                         "init_args": {"tokenizer": str(shapes / "tokenizer"), "config": dict(LM_CONFIG)}},
            "resampler": {"class_path": "models.resampler.PerceiverResampler",
                          "init_args": {"num_latents": 4, "depth": 1, "heads": 2, "dim_head": 16}},
            "xattn_heads": 2, "xattn_dim_head": 16}}}})


@pytest.fixture(scope="module")
def module_and_batch(shapes):
    module = tiny_flamingo(shapes).eval()  # nothing random between the forwards compared below
    dm = MultiSourceDataModule({k: Source(**v) for k, v in sources(shapes).items()}, num_workers=0)
    dm.prepare_for(module.model)
    batch, _, _ = next(iter(dm.train_dataloader()))
    return module, batch


def source_loss(module, part: dict) -> torch.Tensor:
    return module.model(part["input_ids"], part["attention_mask"], part["pixel_values"], part["labels"])[1]


def grads_of(module, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    module.zero_grad(set_to_none=True)
    loss.backward()
    return {n: p.grad.clone() if p.grad is not None else torch.zeros_like(p)
            for n, p in module.named_parameters() if p.requires_grad}


def test_each_step_has_one_batch_per_source_captions_as_one_image_documents(module_and_batch):
    module, batch = module_and_batch
    tok = module.model.tokenizer
    parts = split_sources(batch)
    assert list(parts) == ["captions", "documents"]
    assert [w for w, _ in parts.values()] == [0.2, 1.0]
    caps, docs = parts["captions"][1], parts["documents"][1]
    assert caps["input_ids"].shape[0] == 3 and docs["input_ids"].shape[0] == 2  # each source's own batch size
    image = module.model.image_token_id
    assert (caps["input_ids"] == image).sum(1).tolist() == [1, 1, 1]
    assert caps["pixel_values"].shape[0] == 3
    assert (docs["input_ids"] == image).sum(1).min() >= 2  # interleaved: several images per document
    text = tok.decode(caps["input_ids"][0][caps["attention_mask"][0].bool()])
    assert "<image>" in text and text.rstrip().endswith("<|endofchunk|>" + (tok.eos_token or ""))
    # a plain (single-source) batch is one unnamed source of weight 1
    assert split_sources(caps) == {"": (1.0, caps)}


def test_total_loss_and_gradients_are_the_weighted_sum(module_and_batch):
    module, batch = module_and_batch
    total = module.training_step(batch, 0)
    loss_c, loss_d = (source_loss(module, batch[k]) for k in ("captions", "documents"))
    # the step returns the weighted mean times the micro-batch's target tokens (train.module)
    tokens = sum(count_targets(batch[k]["labels"]) for k in ("captions", "documents"))
    expected = (0.2 * loss_c + 1.0 * loss_d) * tokens
    assert loss_c.item() != loss_d.item()
    assert torch.equal(total.detach(), expected.detach())
    got, want = grads_of(module, total), grads_of(module, expected)
    assert got.keys() == want.keys() and len(got) > 10
    for name in got:
        assert torch.equal(got[name], want[name]), name
    assert any(g.abs().sum() > 0 for g in got.values())


def test_zero_weight_gives_exactly_the_other_sources_gradients(module_and_batch):
    module, batch = module_and_batch
    zeroed = {**batch, "captions": {**batch["captions"], "loss_weight": 0.0}}
    total = module.training_step(zeroed, 0)
    tokens = sum(count_targets(batch[k]["labels"]) for k in ("captions", "documents"))
    alone = (0.0 * source_loss(module, batch["captions"]) + source_loss(module, batch["documents"])) * tokens
    assert torch.equal(total.detach(), alone.detach())
    got, want = grads_of(module, total), grads_of(module, alone)
    for name in got:
        assert torch.equal(got[name], want[name]), name


def test_bad_sources_fail_with_the_key_named(shapes, tmp_path):
    good = sources(shapes)
    with pytest.raises(FileNotFoundError, match=r"data\.sources\.mmc4\.shards: no shard files match"):
        MultiSourceDataModule({**good, "mmc4": {"shards": str(tmp_path / "missing-*.tar")}})
    with pytest.raises(FileNotFoundError, match=r"data\.sources\.laion\.shards.*missing"):
        MultiSourceDataModule({"laion": {"shards": str(tmp_path / "x-{000000..000001}.tar")}})
    with pytest.raises(ValueError, match=r"data\.sources\.captions\.weight must be a finite number >= 0, got -0\.2"):
        MultiSourceDataModule({**good, "captions": {**good["captions"], "weight": -0.2}})
    with pytest.raises(ValueError, match=r"weight must be a finite number >= 0, got nan"):
        MultiSourceDataModule({"c": {**good["captions"], "weight": math.nan}})
    with pytest.raises(ValueError, match=r"batch_size must be >= 1"):
        MultiSourceDataModule({"c": {**good["captions"], "batch_size": 0}})
    with pytest.raises(ValueError, match="letters, digits and '_'"):
        MultiSourceDataModule({"laion/2b": good["captions"]})
    with pytest.raises(ValueError, match="data.sources is empty"):
        MultiSourceDataModule({})


def test_a_llava_cannot_read_flamingo_documents(shapes):
    from tests.tiny import module_config

    llava = build_module(module_config(shapes)).model
    dm = MultiSourceDataModule(sources(shapes))
    with pytest.raises(ValueError, match="no <\\|endofchunk\\|> token .*LLaVA is not a Flamingo"):
        dm.prepare_for(llava)


def tiny_config(shapes: Path, tmp_path: Path, max_steps: int) -> dict:
    """The shipped tiny config logging to CSV under tmp_path, model shrunk, vision random."""
    cfg = yaml.safe_load(CONFIG.read_text())
    cfg["trainer"].update({"max_steps": max_steps, "log_every_n_steps": 1, "enable_progress_bar": False,
                           "enable_model_summary": False, "callbacks": [], "enable_checkpointing": False,
                           "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                                      "init_args": {"save_dir": str(tmp_path), "name": "ms"}}})
    cfg["model"]["init_args"].update({"lr": 1e-2, "warmup_ratio": 0.0})
    model = cfg["model"]["init_args"]["model"]["init_args"]
    model["vision"]["init_args"].update({"pretrained": None})
    model["vision"]["init_args"]["model_config"]["vision_cfg"].update({"layers": 1, "width": 32, "head_width": 16,
                                                                       "patch_size": 12})
    model["language"]["init_args"].update({"tokenizer": str(shapes / "tokenizer"), "config": dict(LM_CONFIG)})
    model["resampler"]["init_args"].update({"num_latents": 4, "depth": 1, "heads": 2, "dim_head": 16})
    model.update({"xattn_heads": 2, "xattn_dim_head": 16})
    cfg["data"]["init_args"]["num_workers"] = 0
    return cfg


def test_shapes_config_trains_a_tiny_flamingo_on_two_sources(shapes, tmp_path):
    """The shipped tiny config, pointed at freshly written shards."""
    cfg = tiny_config(shapes, tmp_path, max_steps=8)
    data = cfg["data"]["init_args"]
    assert {k: v["weight"] for k, v in data["sources"].items()} == {"captions": 0.2, "documents": 1.0}
    for name, src in sources(shapes).items():
        data["sources"][name].update({"shards": src["shards"], "batch_size": 4})
    path = tmp_path / "ms.yaml"
    path.write_text(yaml.safe_dump(cfg))
    main(["fit", "--config", str(path)])

    rows = [r for r in csv.DictReader(open(tmp_path / "ms" / "version_0" / "metrics.csv")) if r.get("train/loss")]
    assert len(rows) == 8
    for r in rows:  # the logged total is the weighted sum of the logged per-source losses
        caps, docs, total = (float(r[f"train/loss{k}"]) for k in ("_captions", "_documents", ""))
        assert total == pytest.approx(0.2 * caps + 1.0 * docs, rel=1e-5)
    docs = [float(r["train/loss_documents"]) for r in rows]
    caps = [float(r["train/loss_captions"]) for r in rows]
    assert sum(docs[-3:]) < sum(docs[:3]) and sum(caps[-3:]) < sum(caps[:3])


def openflamingo_layout(shapes: Path, out: Path) -> dict[str, str]:
    """The Shapes train images as OpenFlamingo reads its data: img2dataset JPEG caption shards (LAION)
    and MMC4 documents of three images each, base64 JPEGs matched to their captions (similarity 0.3)."""
    import base64
    import io
    import json

    import webdataset as wds
    from PIL import Image

    from tests.shard_fixtures import write_tar

    def jpeg(png: bytes) -> bytes:
        buf = io.BytesIO()
        Image.open(io.BytesIO(png)).convert("RGB").save(buf, format="JPEG")
        return buf.getvalue()

    items = [(jpeg(x["png"]), x["txt"].decode()) for x in
             wds.WebDataset(sorted(map(str, (shapes / "shards").glob("train-*.tar"))), shardshuffle=False,
                            empty_check=False)]
    laion = [{"__key__": f"{i:09d}", "jpg": im, "txt": cap.encode(), "json": json.dumps({"caption": cap}).encode()}
             for i, (im, cap) in enumerate(items)]
    docs = []
    for d in range(len(items) // 3):
        group = items[3 * d: 3 * d + 3]
        sim = [[0.3 if i == j else 0.1 for j in range(3)] for i in range(3)]
        info = [{"image_name": f"{d}-{i}.jpg", "matched_text_index": i, "matched_sim": 0.3,
                 "image_base64": base64.b64encode(im).decode()} for i, (im, _) in enumerate(group)]
        docs.append({"__key__": f"doc-{d:05d}", "json": json.dumps(
            {"text_list": [cap for _, cap in group], "image_info": info, "similarity_matrix": sim}).encode()})
    return {"laion": write_tar(out / "laion2b" / "00000.tar", laion), "mmc4": write_tar(out / "mmc4" / "00000.tar", docs)}


def test_openflamingo_data_layout_trains(shapes, tmp_path):
    """img2dataset LAION shards and MMC4 json shards train steps (they used to give 0 samples)."""
    cfg = tiny_config(shapes, tmp_path, max_steps=4)
    shards = openflamingo_layout(shapes, tmp_path / "data")
    cfg["data"]["init_args"]["sources"] = {
        "laion": {"shards": shards["laion"], "weight": 0.2, "batch_size": 4, "max_length": 32},
        "mmc4": {"shards": shards["mmc4"], "weight": 1.0, "batch_size": 2, "max_length": 256,
                 "mmc4": {"min_image_bytes": 0}}}  # Shapes JPEGs are under OpenFlamingo's 10 KB floor
    path = tmp_path / "of.yaml"
    path.write_text(yaml.safe_dump(cfg))
    main(["fit", "--config", str(path)])
    rows = [r for r in csv.DictReader(open(tmp_path / "ms" / "version_0" / "metrics.csv")) if r.get("train/loss")]
    assert len(rows) == 4
    for r in rows:
        laion, mmc4, total = (float(r[f"train/loss{k}"]) for k in ("_laion", "_mmc4", ""))
        assert total == pytest.approx(0.2 * laion + 1.0 * mmc4, rel=1e-5) and math.isfinite(total)
        assert float(r["train/skipped_samples"]) == 0
