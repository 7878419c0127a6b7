"""scripts/probe_image_use.py on a tiny trained LLaVA: swapping images changes the loss of a model that
reads them, and changes nothing when every record shows the same image."""

import json

import pytest
import yaml

from scripts.probe_image_use import loss_on, single_image_records, swapped
from tests.tiny import experiment_config, tiny_world
from train.checkpoint import load_module
from train.cli import main


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe")
    world = tiny_world(root)
    config = root / "exp.yaml"
    config.write_text(yaml.safe_dump(experiment_config(world, root, max_steps=2)))
    main(["fit", "--config", str(config)])
    return world, load_module(str(next((root / "tiny" / "version_0" / "checkpoints").glob("*.ckpt"))))


def test_swapping_images_moves_the_loss_only_when_the_images_differ(trained, tmp_path):
    world, module = trained
    records = single_image_records(world / "train.json", 6)
    assert all(r["image"].startswith("/") for r in records)
    assert [r["image"] for r in swapped(records)] == [r["image"] for r in records[1:] + records[:1]]
    own, other = loss_on(module, records, tmp_path, "own"), loss_on(module, swapped(records), tmp_path, "swapped")
    assert own != other  # a tiny random tower still sees its pixels
    same = [{**r, "image": records[0]["image"]} for r in records]
    assert loss_on(module, same, tmp_path, "same") == loss_on(module, swapped(same), tmp_path, "same_swapped")


def test_too_few_records_is_refused(tmp_path):
    path = tmp_path / "one.json"
    path.write_text(json.dumps([{"id": "a", "image": "a.png", "conversations": []}]))
    with pytest.raises(ValueError, match="needs at least 2 single-image records, found 1"):
        single_image_records(path, 8)
