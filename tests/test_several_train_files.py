"""Training on several conversation files at once (`data.train_json: [a, b]`): the records of both in
the sampler's order, each file's media resolved against its own folder, errors naming the file."""

from __future__ import annotations

import json
from types import SimpleNamespace

import PIL.Image
import pytest
import torch

from data.collate import Collator
from data.conversation_dataset import ConversationDataset
from data.templates import ChatTemplate
from data.tokenizer import train_tokenizer
from models.connectors import MLPConnector
from models.language import LanguageModel
from models.llava import LLaVA
from models.vision import HFVision
from tests.tiny import LM_CONFIG
from train.data_module import ConversationDataModule, PreferenceDataModule
from train.grpo_data_module import PromptDataModule
from train.module import VLMModule

COLOURS = {"images": (220, 30, 30), "clips": (30, 30, 220)}


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("tok")
    train_tokenizer(["what colour is it", "which way does it move", "red", "blue", "left", "right"] * 5, out,
                    vocab_size=300)
    return str(out)


@pytest.fixture(scope="module")
def model(tok) -> LLaVA:
    torch.manual_seed(0)
    vision = HFVision(config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                              "num_attention_heads": 2, "image_size": 28, "patch_size": 7, "projection_dim": 16},
                      model_type="clip", select_layer=-1)
    return LLaVA(vision, LanguageModel(config=dict(LM_CONFIG), tokenizer=tok), MLPConnector).eval()


def turns(question: str, answer: str) -> list[dict]:
    return [{"from": "human", "value": f"<image>\n{question}"}, {"from": "gpt", "value": answer}]


def write_world(root):
    """images/train.json (3 single-image records) and clips/train_video.json (2 clips of 2 frames); both
    folders hold `0.png` and `1.png` (red in images/, blue in clips/), so only resolving each file's
    paths against its own folder reads the right pixels."""
    files = {}
    for name, file, records in (
            ("images", "train.json", [{"id": f"im{k}", "image": f"{k % 2}.png",
                                       "conversations": turns("what colour is it", "red")} for k in range(3)]),
            ("clips", "train_video.json", [{"id": f"clip{k}", "video": ["0.png", "1.png"][::1 - 2 * k],
                                            "conversations": turns("which way does it move", "left")}
                                           for k in range(2)])):
        (root / name).mkdir()
        for k in range(2):
            PIL.Image.new("RGB", (28, 28), COLOURS[name]).save(root / name / f"{k}.png")
        (root / name / file).write_text(json.dumps(records))
        files[name] = str(root / name / file)
    return files["images"], files["clips"]


def attached(data: ConversationDataModule, model: LLaVA) -> ConversationDataModule:
    """`data` set up for `model` as a one-process trainer would."""
    data.trainer = SimpleNamespace(lightning_module=VLMModule(model, stage="finetune"), world_size=1, global_rank=0)
    data.setup("fit")
    return data


def one_file(path, model) -> ConversationDataset:
    return ConversationDataset(path, model.tokenizer, ChatTemplate(), model.image_transform(train=True),
                               max_length=256, num_image_tokens=model.num_image_tokens,
                               clip_transform=model.clip_transform(train=True))


def test_two_files_yield_the_records_of_both_in_the_sampler_order(model, tmp_path):
    images, clips = write_world(tmp_path)
    data = attached(ConversationDataModule([images, clips], batch_size=1, num_workers=0, max_length=256, seed=3),
                    model)
    assert [r["id"] for r in data.train_set.records] == ["im0", "im1", "im2", "clip0", "clip1"]
    expected = [one_file(images, model)[i] for i in range(3)] + [one_file(clips, model)[i] for i in range(2)]
    red, blue = (model.vision.transform()(PIL.Image.new("RGB", (28, 28), c)) for c in COLOURS.values())
    torch.testing.assert_close(expected[0]["pixel_values"][0], red)  # images/0.png, not clips/0.png
    torch.testing.assert_close(expected[3]["pixel_values"], torch.stack([blue, blue]))
    loader = data.train_dataloader()
    order = [i for i, _ in data.sampler]
    assert order == torch.randperm(5, generator=torch.Generator().manual_seed(3)).tolist()  # one set of 5
    collate = Collator(model.tokenizer.pad_token_id, placeholders=model.image_placeholders)
    batches = list(loader)
    assert len(batches) == 5
    for batch, i in zip(batches, order):
        want = collate([expected[i]])
        assert batch["input_ids"].tolist() == want["input_ids"].tolist()
        assert batch["labels"].tolist() == want["labels"].tolist()
        torch.testing.assert_close(batch["pixel_values"], want["pixel_values"])
        assert batch.get("clip_frames") == want.get("clip_frames") == ([2] if i >= 3 else None)  # a clip of 2 frames


def test_one_path_and_a_list_of_it_are_the_same_set(model, tmp_path):
    images, _ = write_world(tmp_path)
    single, listed = one_file(images, model), one_file([images], model)
    assert single.records == listed.records and single.roots == listed.roots == [tmp_path / "images"] * 3
    assert single[2]["input_ids"].tolist() == listed[2]["input_ids"].tolist()


def test_image_folder_serves_every_file(model, tmp_path):
    images, clips = write_world(tmp_path)
    data = ConversationDataset([images, clips], model.tokenizer, ChatTemplate(), model.image_transform(),
                               image_folder=tmp_path / "clips", clip_transform=model.clip_transform())
    assert data.roots == [tmp_path / "clips"] * 5
    blue = model.vision.transform()(PIL.Image.new("RGB", (28, 28), COLOURS["clips"]))
    torch.testing.assert_close(data[0]["pixel_values"][0], blue)


def test_a_missing_second_file_is_one_line_naming_it(model, tmp_path):
    images, _ = write_world(tmp_path)
    missing = str(tmp_path / "clips" / "nope.json")
    with pytest.raises(FileNotFoundError) as err:
        ConversationDataModule([images, missing])
    assert str(err.value) == f"data.train_json[1]: {missing} does not exist (generate it with `chimera data ...`)"
    with pytest.raises(FileNotFoundError, match=f"^data file not found: {missing}$"):
        one_file([images, missing], model)
    with pytest.raises(ValueError, match=r"^data.train_json: an empty list names no training file$"):
        ConversationDataModule([])


def test_a_missing_second_file_from_the_shell_is_one_line(tok, tmp_path):
    """`chimera fit` on the video config with the second training file missing: status 2, one line."""
    from tests.cli_run import chimera, plain_error

    import yaml

    images, _ = write_world(tmp_path)
    missing = tmp_path / "clips" / "nope.json"
    cfg = yaml.safe_load(open("configs/experiments/llava_shapes_hr_video_tiny.yaml"))
    model = cfg["model"]["init_args"]["model"]["init_args"]
    model["vision"]["init_args"]["pretrained"], model["language"]["init_args"]["tokenizer"] = None, tok
    cfg["trainer"]["logger"]["init_args"]["save_dir"] = str(tmp_path / "runs")
    cfg["data"]["init_args"].update({"train_json": [images, str(missing)], "val_qa": None})
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    proc = chimera("fit", "--config", tmp_path / "config.yaml")
    assert plain_error(proc, "fit", alone=False) == \
        f"data.train_json[1]: {missing} does not exist (generate it with `chimera data ...`)"


def test_a_bad_record_names_its_own_file(model, tmp_path):
    images, clips = write_world(tmp_path)
    records = json.loads(open(clips).read())
    records[1]["conversations"][0]["value"] = "<image> <image> which way"
    open(clips, "w").write(json.dumps(records))
    placeholders = rf"^{clips}: 1 records have <image> placeholders .*clip1 \(2 <image>, 1 video\)"
    with pytest.raises(ValueError, match=placeholders):
        one_file([images, clips], model)
    with pytest.raises(ValueError, match=rf"^{clips}: record clip0 has a video, which this reader does not take"):
        ConversationDataset([images, clips], model.tokenizer, ChatTemplate(), model.image_transform())


@pytest.mark.parametrize("module", [PreferenceDataModule, PromptDataModule])
def test_one_file_readers_refuse_a_list_in_one_line(module, tmp_path):
    images, clips = write_world(tmp_path)
    with pytest.raises(ValueError, match=rf"^data.train_json: {module.__name__} reads one file, got a list of 2$"):
        module([images, clips])
