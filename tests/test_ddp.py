"""Two-process DDP on CPU (gloo), launched the way users launch it: `chimera fit` with
`trainer.strategy=ddp, devices=2`; Lightning starts the second rank itself. Each case runs under
a timeout, so a hang fails instead of stalling CI."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import lightning as L
import torch

from data.sampling import ResumableSampler
from tests.tiny import experiment_config, launch_fit, tiny_world
from train.checkpoint import build_module
from train.cli import main


class RecordRank(L.Callback):
    """Writes `rank{R}.json` (a digest per trained sample, and how many batches had none) and
    `rank{R}.pt` (final weights) to `out_dir`."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir, self.seen, self.empty_batches = Path(out_dir), [], 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if "input_ids" not in batch:
            self.empty_batches += 1
            return
        for ids, mask, pixels in zip(batch["input_ids"], batch["attention_mask"], batch["pixel_values"]):
            digest = hashlib.sha1(ids[mask.bool()].numpy().tobytes() + pixels.numpy().tobytes()).hexdigest()
            self.seen.append(digest)

    def on_train_end(self, trainer, pl_module) -> None:
        rank = trainer.global_rank
        (self.out_dir / f"rank{rank}.json").write_text(json.dumps(
            {"seen": self.seen, "empty_batches": self.empty_batches, "world_size": trainer.world_size,
             "strategy": type(trainer.strategy).__name__}))
        torch.save({k: v.detach().clone() for k, v in pl_module.state_dict().items()}, self.out_dir / f"rank{rank}.pt")


def ddp_config(world: Path, runs: Path, name: str, max_steps: int = -1, batch: int = 4) -> dict:
    cfg = experiment_config(world, runs, max_steps=max_steps)
    cfg["trainer"].update({"devices": 2, "strategy": "ddp"})
    cfg["trainer"]["logger"]["init_args"]["name"] = name
    cfg["data"]["init_args"].update({"batch_size": batch, "num_workers": 0})
    cfg["model"]["init_args"]["stage"] = "finetune"
    return cfg


def metrics(run_dir: Path) -> list[dict]:
    return list(csv.DictReader(open(run_dir / "metrics.csv")))


def test_two_ranks_split_data_validate_everything_and_survive_an_unreadable_batch(tmp_path):
    """Validation every 2 steps (rank-0-only writers once deadlocked here); the ranks see disjoint
    samples and end with equal weights; rank 1's first batch is entirely unreadable and the run
    still finishes; the last validation equals a 1-process `chimera validate` of the final
    checkpoint on the same (odd-sized) val set, metrics and per-sample predictions."""
    world = tiny_world(tmp_path)
    records = json.loads((world / "train.json").read_text())
    batch, steps = 2, 4
    for i in [i for i, _ in ResumableSampler(len(records), num_replicas=2, rank=1)][:batch]:
        records[i] = {**records[i], "image": "images/missing.png"}
    (world / "train_gaps.json").write_text(json.dumps(records))

    cfg = ddp_config(world, tmp_path / "runs", "ddp", max_steps=steps, batch=batch)
    cfg["trainer"].update({"val_check_interval": 2, "callbacks": [
        {"class_path": "tests.test_ddp.RecordRank", "init_args": {"out_dir": str(tmp_path)}},
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
         "init_args": {"dirpath": str(tmp_path / "ckpt"), "save_last": True}}]})
    cfg["data"]["init_args"].update({"train_json": str(world / "train_gaps.json"), "max_val_samples": 7})
    cfg["model"]["init_args"]["max_skip_fraction"] = 0.2  # 2 of 16 samples unreadable: on purpose
    launch_fit(cfg, tmp_path / "ddp.yaml")

    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert all(r["world_size"] == 2 and r["strategy"] == "DDPStrategy" for r in ranks)
    assert [r["empty_batches"] for r in ranks] == [0, 1]
    seen = [set(r["seen"]) for r in ranks]
    assert [len(s) for s in seen] == [steps * batch, (steps - 1) * batch] and not seen[0] & seen[1]
    weights = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for key in weights[0]:
        assert torch.equal(weights[0][key], weights[1][key]), key
    L.seed_everything(0)
    initial = build_module(cfg["model"]).state_dict()
    assert any(not torch.equal(initial[k], weights[0][k]) for k in initial if k.startswith("model.connector."))

    run = tmp_path / "runs" / "ddp" / "version_0"
    val_rows = [r for r in metrics(run) if r.get("val/acc")]
    assert [int(r["step"]) for r in val_rows] == [1, 3]  # steps 2 and 4 (Lightning logs step - 1)
    two_rank = [json.loads(line) for line in (run / "predictions" / f"val_step{steps:07d}.jsonl").open()]
    assert [r["index"] for r in two_rank] == list(range(7))  # both ranks' shares, padding repeat dropped

    one = experiment_config(world, tmp_path / "runs", max_steps=steps)
    one["trainer"]["logger"]["init_args"]["name"] = "one"
    one["data"]["init_args"]["max_val_samples"] = 7
    one["model"]["init_args"]["stage"] = "finetune"
    (tmp_path / "one.yaml").write_text(json.dumps(one))
    main(["validate", "--config", str(tmp_path / "one.yaml"), "--ckpt_path", str(tmp_path / "ckpt" / "last.ckpt")])
    (written,) = (tmp_path / "runs" / "one" / "version_0" / "predictions").iterdir()
    one_rank = [json.loads(line) for line in written.open()]
    assert one_rank == two_rank
    validated = metrics(tmp_path / "runs" / "one" / "version_0")[-1]
    assert float(validated["val/acc"]) == float(val_rows[-1]["val/acc"])
    assert float(validated["val/acc"]) == sum(r["correct"] for r in one_rank) / 7


def test_webdataset_shards_split_by_rank(tmp_path, monkeypatch):
    """Caption/interleaved shards: each DDP rank reads its own shards (webdataset's split_by_node)."""
    import io

    import PIL.Image

    from data.image_text import image_text_pipeline
    from data.writers import write_shards

    def png() -> bytes:
        buf = io.BytesIO()
        PIL.Image.new("RGB", (8, 8)).save(buf, format="PNG")
        return buf.getvalue()

    image = png()
    samples = [{"__key__": f"s{i:03d}", "png": image, "txt": f"caption {i}".encode()} for i in range(8)]
    urls = [str(p) for p in write_shards(tmp_path, "cap", samples, shard_size=2)]
    seen = []
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        seen.append({caption for _, caption in image_text_pipeline(urls, lambda im: 0, train=True)})
    assert not seen[0] & seen[1]
    assert seen[0] | seen[1] == {f"caption {i}" for i in range(8)}


def test_resampled_epochs_are_equal_on_every_rank_from_uneven_shards(tmp_path, monkeypatch):
    """3 shards of 5, 5 and 2 samples on 2 ranks: split, the ranks would get 7 and 5 samples; a
    fixed resampled epoch gives each rank the same number of full batches, reproducibly."""
    import io

    import PIL.Image
    import pytest

    from data.image_text import check_epoch_length, fixed_epoch, image_text_pipeline
    from data.writers import write_shards

    buf = io.BytesIO()
    PIL.Image.new("RGB", (8, 8)).save(buf, format="PNG")
    samples = [{"__key__": f"s{i:03d}", "png": buf.getvalue(), "txt": f"caption {i}".encode()} for i in range(12)]
    urls = [str(p) for p in write_shards(tmp_path, "cap", samples, shard_size=5)]
    assert len(urls) == 3

    def epoch(rank: int) -> list[str]:
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        ds = image_text_pipeline(urls, lambda im: 0, train=True, shuffle_buffer=4, resampled=True)
        ds = fixed_epoch(ds, samples_per_epoch=12, batch_size=4, world_size=2, num_workers=1)
        assert len(ds) == 8  # ceil(12 / 2 ranks / 4) = 2 batches of 4 per rank
        return [caption for _, caption in ds]

    split = []
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        split.append(len(list(image_text_pipeline(urls, lambda im: 0, train=True))))
    assert sorted(split) == [5, 7]
    ranks = [epoch(0), epoch(1)]
    assert [len(r) for r in ranks] == [8, 8] and ranks[0] != ranks[1]
    assert epoch(0) == ranks[0]  # seeded by (seed, rank, worker): the same stream again
    with pytest.raises(ValueError, match="data.samples_per_epoch: training on 2 ranks"):
        check_epoch_length(None, 2, "data.samples_per_epoch")
    check_epoch_length(None, 1, "data.samples_per_epoch")
