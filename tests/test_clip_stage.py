"""The `clip` stage: a tiny open_clip model learns Shapes captions, exports an open_clip checkpoint
that the vision-encoder backend loads, and `chimera eval` scores it by retrieval and zero-shot."""

import csv
import io
import json

import pytest
import torch
import webdataset as wds
import yaml
from PIL import Image

from data.image_text import expand_shards, image_text_pipeline
from data.shapes import write_shapes
from models.clip import ContrastiveDualEncoder
from models.vision import ImageTransform, OpenCLIPVision
from train.checkpoint import load_module
from train.cli import main

CLIP_CONFIG = {"embed_dim": 32,
               "vision_cfg": {"image_size": 72, "layers": 2, "width": 64, "patch_size": 12, "head_width": 32},
               "text_cfg": {"context_length": 64, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    write_shapes(root, train_images=96, val_images=24, seed=0, shard_size=48, max_objects=2)
    return root


def _experiment(shapes, run_root, max_steps):
    return {
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "devices": 1, "max_steps": max_steps, "val_check_interval": max_steps,
                    "check_val_every_n_epoch": None, "log_every_n_steps": 5, "num_sanity_val_steps": 0,
                    "enable_progress_bar": False, "enable_model_summary": False,
                    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                               "init_args": {"save_dir": str(run_root), "name": "clip"}}},
        "model": {"class_path": "train.clip_module.CLIPModule",
                  "init_args": {"lr": 2e-3, "warmup_ratio": 0.1,
                                "model": {"class_path": "models.clip.ContrastiveDualEncoder",
                                          "init_args": {"model_config": CLIP_CONFIG}}}},
        "data": {"class_path": "data.image_text.ImageTextDataModule",
                 "init_args": {"train_shards": str(shapes / "shards" / "train-*.tar"),
                               "val_shards": str(shapes / "shards" / "val-*.tar"), "batch_size": 24,
                               "num_workers": 0, "shuffle_buffer": 96}},
    }


@pytest.fixture(scope="module")
def fitted(shapes, tmp_path_factory):
    root = tmp_path_factory.mktemp("clip_run")
    path = root / "clip.yaml"
    path.write_text(yaml.safe_dump(_experiment(shapes, root, max_steps=120)))
    main(["fit", "--config", str(path)])
    return root / "clip" / "version_0"


def test_clip_stage_learns_retrieval(fitted):
    rows = list(csv.DictReader(open(fitted / "metrics.csv")))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert sum(losses[-3:]) / 3 < 0.7 * sum(losses[:3]) / 3
    val = [r for r in rows if r.get("val/t2i_R@1")][-1]
    # 24 val images: chance R@1 is 1/24 and R@5 is 5/24
    assert float(val["val/t2i_R@1"]) > 0.2 and float(val["val/i2t_R@5"]) > 0.5


def test_exported_open_clip_checkpoint_loads_as_vision_tower(fitted):
    module = load_module(next((fitted / "checkpoints").glob("*.ckpt")))
    export = fitted / "open_clip.pt"
    assert export.is_file()
    reloaded = ContrastiveDualEncoder(model_config=CLIP_CONFIG, pretrained=str(export)).eval()
    pixels = torch.randn(2, 3, 72, 72)
    with torch.no_grad():
        assert torch.equal(reloaded.encode_image(pixels), module.model.encode_image(pixels))
        vision = OpenCLIPVision(model_config=CLIP_CONFIG, pretrained=str(export), select_layer=-1).eval()
        tokens = vision(pixels)
        ref = module.model.model.visual.forward_intermediates(pixels, indices=[-1], intermediates_only=True)
    assert tokens.shape == (2, 36, 64)
    assert torch.allclose(tokens, ref["image_intermediates"][0].flatten(2).transpose(1, 2))


def test_eval_retrieval_and_zeroshot_on_the_clip_checkpoint(fitted, shapes, tmp_path):
    ckpt = next((fitted / "checkpoints").glob("*.ckpt"))
    main(["eval", "--ckpt", str(ckpt), "--tasks", "retrieval,zeroshot",
          "--data", f"retrieval={shapes / 'val_captions.jsonl'}", "--data", f"zeroshot={shapes / 'zeroshot_val.jsonl'}",
          "--out", str(tmp_path)])
    results = json.loads((tmp_path / "results.json").read_text())
    r = results["retrieval"]
    assert {"i2t_R@1", "t2i_R@1", "i2t_R@5", "t2i_R@10"} <= r.keys() and r["n"] == 24
    assert r["t2i_R@1"] > 0.2
    z = results["zeroshot"]
    assert z["num_classes"] > 1 and 0 <= z["accuracy"] <= z["accuracy_color"] <= 1
    rows = [json.loads(line) for line in open(tmp_path / "zeroshot.jsonl")]
    assert z["accuracy"] == pytest.approx(sum(x["score"] for x in rows) / len(rows))
    # a generative task on a contrastive checkpoint is refused with the reason
    with pytest.raises(ValueError, match="needs a generative model"):
        main(["eval", "--ckpt", str(ckpt), "--tasks", "vqa", "--data", str(shapes / "val_qa.jsonl"),
              "--out", str(tmp_path / "x")])


def test_corrupt_shard_sample_is_skipped(tmp_path):
    good = io.BytesIO()
    Image.new("RGB", (8, 8), (255, 0, 0)).save(good, format="PNG")
    with wds.TarWriter(str(tmp_path / "s-000000.tar")) as sink:
        sink.write({"__key__": "a", "png": good.getvalue(), "txt": b"a red square"})
        sink.write({"__key__": "b", "png": b"not an image", "txt": b"broken"})
        sink.write({"__key__": "c", "png": good.getvalue(), "txt": b"another red square"})
    urls = expand_shards(str(tmp_path / "s-*.tar"), "test")
    pairs = list(image_text_pipeline(urls, ImageTransform(8, (0.5,) * 3, (0.5,) * 3), train=False))
    assert [t for _, t in pairs] == ["a red square", "another red square"]
    assert pairs[0][0].shape == (3, 8, 8)


def test_missing_shards_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing-\\*.tar"):
        expand_shards(str(tmp_path / "nothing-*.tar"), "data.train_shards")


def test_training_order_is_shuffled_and_reproducible(shapes):
    """The sample shuffle is seeded (webdataset seeds it from the clock unless told), so two
    runs with the same seed read the same order; another seed reads another."""
    urls = expand_shards(str(shapes / "shards" / "train-*.tar"), "test")
    transform = ImageTransform(8, (0.5,) * 3, (0.5,) * 3)

    def order(seed):
        return [t for _, t in image_text_pipeline(urls, transform, train=True, shuffle_buffer=50, seed=seed)]

    plain = [t for _, t in image_text_pipeline(urls, transform, train=False)]
    first = order(0)
    assert sorted(first) == sorted(plain) and first != plain
    assert order(0) == first and order(1) != first
