"""Checkpoints and releases load with no upstream file: fit chained stages as the demo does (an
open_clip tower from a file, a tokenizer folder, `init_from` / `weights_from`), delete all of that,
and every command still loads the model and gives the same outputs."""

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from models.clip import ContrastiveDualEncoder
from models.vision import OpenCLIPVision
from tests.tiny import experiment_config, tiny_world
from train.checkpoint import build_module, load_module
from train.cli import main
from train.generate import generate_answer
from train.release import read_release, write_release

CLIP_ARCH = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8,
                                             "head_width": 16},
             "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1}}
CHAT_TEMPLATE = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
LORA = {"class_path": "models.peft.LoRA", "init_args": {"r": 4, "alpha": 8, "dropout": 0.0}}
RESAMPLER = {"class_path": "models.resampler.PerceiverResampler",
             "init_args": {"num_latents": 4, "depth": 1, "heads": 2, "dim_head": 16}}
PROMPTS = [("What is the shape of the red object?", True), ("Is there a square?", False)]


def _fit(cfg: dict, root: Path, name: str) -> Path:
    cfg["trainer"]["logger"]["init_args"].update(save_dir=str(root), name=name)
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    main(["fit", "--config", str(path)])
    return next((root / name).rglob("*.ckpt"))


def _stage(world: Path, root: Path, clip_file: Path, **language) -> dict:
    """The demo's shape: a frozen open_clip tower read from a file, the world's tokenizer folder."""
    cfg = experiment_config(world, root, max_steps=3)
    model = cfg["model"]["init_args"]["model"]["init_args"]
    model["vision"] = {"class_path": "models.vision.OpenCLIPVision",
                       "init_args": {"model_config": CLIP_ARCH, "pretrained": str(clip_file), "select_layer": -1}}
    model["language"]["init_args"].update(language)
    cfg["model"]["init_args"].update(stage="finetune", lr=1e-2)
    return cfg


@pytest.fixture(scope="module")
def portable(tmp_path_factory):
    """Three stages fitted, their answers recorded, checkpoints and one image copied elsewhere,
    then the world (tokenizer, upstream checkpoints, open_clip.pt, images) deleted."""
    root = tmp_path_factory.mktemp("portable")
    world = tiny_world(root / "world")
    tok_config = world / "tokenizer" / "tokenizer_config.json"
    tok_config.write_text(json.dumps({**json.loads(tok_config.read_text()), "chat_template": CHAT_TEMPLATE}))
    torch.manual_seed(0)
    clip_file = ContrastiveDualEncoder(model_config=CLIP_ARCH).save_checkpoint(world / "open_clip.pt")
    runs = world / "runs"
    runs.mkdir()
    ckpts = {"llava": _fit(_stage(world, runs, clip_file), runs, "llava")}
    lora = _stage(world, runs, clip_file, adapter=LORA, weights_from=str(ckpts["llava"]))
    lora["model"]["init_args"]["init_from"] = str(ckpts["llava"])
    ckpts["lora"] = _fit(lora, runs, "lora")
    flamingo = _stage(world, runs, clip_file)
    model = flamingo["model"]
    model["init_args"]["model"]["class_path"] = "models.flamingo.Flamingo"
    model["init_args"]["model"]["init_args"].pop("connector")
    model["init_args"]["model"]["init_args"].update(resampler=RESAMPLER, cross_attn_every_n_layers=1, xattn_heads=2,
                                                    xattn_dim_head=16)
    ckpts["flamingo"] = _fit(flamingo, runs, "flamingo")

    safe = root / "elsewhere"
    (safe / "ckpts").mkdir(parents=True)
    image = shutil.copy(world / "images" / "val" / "000000.png", safe / "image.png")
    shutil.copytree(world, safe / "data", ignore=shutil.ignore_patterns("runs", "tokenizer", "open_clip.pt"))
    answers = {name: [generate_answer(str(ckpt), p, image if with_image else None, 4) for p, with_image in PROMPTS]
               for name, ckpt in ckpts.items()}
    logits = {}
    for name, ckpt in ckpts.items():
        module = load_module(ckpt)
        logits[name] = _logits(module, _batch(module, image))
    copies = {name: Path(shutil.copy(ckpt, safe / "ckpts" / f"{name}.ckpt")) for name, ckpt in ckpts.items()}
    shutil.rmtree(world)
    return {"ckpts": copies, "answers": answers, "image": image, "data": safe / "data", "root": root,
            "world": world, "logits": logits}


def _generate(capsys, ckpt, prompt, image):
    main(["generate", "--ckpt", str(ckpt), "--prompt", prompt, "--max-new-tokens", "4",
          *(["--image", str(image)] if image else [])])
    return capsys.readouterr().out.strip()


def _batch(module, image: str):
    from data.images import load_image
    from data.tokenize import tokenize_prompt

    from train.data_module import image_placeholders

    model = module.model
    ids = torch.tensor(tokenize_prompt(PROMPTS[0][0], model.tokenizer, module.template, image=True))
    if image_placeholders(model) is not None:  # a LLaVA reads its image tokens from the sequence
        ids = image_placeholders(model).widen(ids)[0]
    ids = ids[None]
    pixels = model.vision.transform(train=False)(load_image(image))[None]
    return ids, torch.ones_like(ids), pixels


def _logits(module, batch):
    with torch.no_grad():
        return module.eval().model(*batch)[0]


@pytest.mark.parametrize("name", ["llava", "lora", "flamingo"])
def test_checkpoint_generates_the_same_text_with_the_world_deleted(portable, capsys, name):
    ckpt = portable["ckpts"][name]
    stored = torch.load(ckpt, weights_only=True)["chimera_config"]
    text = json.dumps(stored)
    assert str(portable["world"]) not in text and "open_clip.pt" not in text  # no upstream path left
    language = stored["init_args"]["model"]["init_args"]["language"]["init_args"]
    assert language["weights_from"] is None and stored["init_args"]["init_from"] is None
    assert set(language["tokenizer"]) >= {"tokenizer.json", "tokenizer_config.json"}
    for (prompt, with_image), before in zip(PROMPTS, portable["answers"][name]):
        assert _generate(capsys, ckpt, prompt, portable["image"] if with_image else None) == before
    module = load_module(ckpt)
    assert torch.equal(_logits(module, _batch(module, portable["image"])), portable["logits"][name])
    assert module.model.tokenizer.chat_template == CHAT_TEMPLATE


@pytest.mark.parametrize("name", ["llava", "lora", "flamingo"])
def test_release_has_the_checkpoints_logits_and_answers(portable, capsys, name):
    ckpt, out = portable["ckpts"][name], portable["root"] / "releases" / name
    main(["export", "--format", "chimera", "--ckpt", str(ckpt), "--out", str(out)])
    capsys.readouterr()
    assert {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json",
            "image_processing.json"} <= {p.name for p in out.iterdir()}
    original, release = load_module(ckpt), load_module(out)
    batch = _batch(original, portable["image"])
    assert torch.equal(_logits(release, batch), _logits(original, batch))
    for (prompt, with_image), before in zip(PROMPTS, portable["answers"][name]):
        assert _generate(capsys, out, prompt, portable["image"] if with_image else None) == before
    assert release.model.tokenizer.chat_template == CHAT_TEMPLATE
    processing = json.loads((out / "image_processing.json").read_text())
    tower = original.model.vision
    assert isinstance(tower, OpenCLIPVision)
    assert (processing["size"], processing["mean"], processing["std"]) == (32, list(tower.mean), list(tower.std))
    assert processing["resize"] == "squash"
    config = json.loads((out / "config.json").read_text())["model"]
    assert config["init_args"]["model"]["init_args"]["language"]["init_args"]["tokenizer"] is None
    adapter = config["init_args"]["model"]["init_args"]["language"]["init_args"]["adapter"]
    assert (adapter is not None) == (name == "lora")  # LoRA is released unmerged: base + adapter weights


def test_eval_scores_a_release_as_its_checkpoint(portable, tmp_path):
    ckpt, out = portable["ckpts"]["llava"], tmp_path / "release"
    main(["export", "--format", "chimera", "--ckpt", str(ckpt), "--out", str(out)])
    data = portable["data"] / "val_qa.jsonl"
    results = {}
    for name, model in (("ckpt", ckpt), ("release", out)):
        main(["eval", "--ckpt", str(model), "--tasks", "vqa", "--data", str(data), "--out", str(tmp_path / name),
              "--limit", "6"])
        results[name] = [json.loads(line)["prediction"] for line in open(tmp_path / name / "vqa.jsonl")]
    assert len(results["ckpt"]) == 6 and results["release"] == results["ckpt"]


def test_init_from_and_weights_from_accept_a_release(portable, tmp_path):
    out = tmp_path / "release"
    main(["export", "--format", "chimera", "--ckpt", str(portable["ckpts"]["llava"]), "--out", str(out)])
    config, weights = read_release(out)
    config["init_args"]["init_from"] = str(out)
    started = build_module(config).state_dict()
    assert all(torch.equal(started[k], v) for k, v in weights.items())
    config["init_args"]["init_from"] = None
    language = config["init_args"]["model"]["init_args"]["language"]["init_args"]
    language.update(weights_from=str(out), adapter=LORA)
    lm = build_module(config).model.language
    base = lm.model.get_base_model().state_dict()
    prefix = "model.language.model."
    dense = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
    assert torch.equal(base["model.embed_tokens.weight"], dense["model.embed_tokens.weight"])
    assert torch.equal(base["model.layers.0.self_attn.q_proj.base_layer.weight"],
                       dense["model.layers.0.self_attn.q_proj.weight"])


def test_lm_and_clip_stages_release_too(tmp_path):
    """Every module the project trains: the LM stage (no vision) and the contrastive CLIP stage."""
    world = tiny_world(tmp_path / "world")
    lm_config = {"class_path": "train.lm_module.LMModule", "init_args": {"language": {
        "class_path": "models.language.LanguageModel",
        "init_args": {"tokenizer": str(world / "tokenizer"),
                      "config": {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64,
                                 "num_hidden_layers": 1, "num_attention_heads": 2}}}}}
    clip_config = {"class_path": "train.clip_module.CLIPModule", "init_args": {"model": {
        "class_path": "models.clip.ContrastiveDualEncoder", "init_args": {"model_config": CLIP_ARCH}}}}
    ids = torch.tensor([[1, 5, 9, 2]])
    pixels = torch.randn(2, 3, 32, 32)
    for name, config in (("lm", lm_config), ("clip", clip_config)):
        module = build_module(config).eval()
        module.chimera_config = config
        write_release(module, tmp_path / name)
        release = load_module(tmp_path / name)
        with torch.no_grad():
            if name == "lm":
                assert (tmp_path / name / "tokenizer.json").is_file()
                assert not (tmp_path / name / "image_processing.json").exists()
                got, want = (m.model["language"].model(input_ids=ids).logits for m in (release, module))
            else:
                assert json.loads((tmp_path / name / "image_processing.json").read_text())["size"] == 32
                got, want = (m.model.encode_image(pixels) for m in (release, module))
        assert torch.equal(got, want)


def test_a_directory_that_is_not_a_release_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a chimera release"):
        load_module(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llava"}))
    with pytest.raises(ValueError, match="not a chimera release config"):
        load_module(tmp_path)
