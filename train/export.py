"""`chimera export` / `chimera import`: releases, and checkpoints in other projects' formats.

    chimera export --ckpt CKPT --format chimera --out DIR
        DIR is a release (train/release.py): model.safetensors, config.json, the tokenizer files and
        image_processing.json; `chimera generate|eval --ckpt DIR` and `init_from: DIR` load it.
    chimera export --ckpt CKPT --format hf-llava --out DIR
        DIR loads with `transformers.LlavaForConditionalGeneration.from_pretrained(DIR)` (and
        `AutoProcessor`); needs an HF CLIP tower, the mlp2x_gelu connector and a dense LM
        (`chimera merge` a LoRA/QLoRA checkpoint first). Its chat_template renders the checkpoint's
        template and its image processor applies the tower's image mode (DIR/README.md).
    chimera export --ckpt CKPT --format hf-llava-onevision --out DIR
        DIR loads with `transformers.LlavaOnevisionForConditionalGeneration.from_pretrained(DIR)`:
        an any-resolution LLaVA (image_grid_pinpoints, image mode `resize`; anyres_max_tiles is its
        `anyres_max_N`) that reads clips as OneVision does (video_pool 2, bilinear, video_newline).
    chimera import --format hf-llava|hf-llava-onevision --src HF_DIR --out DIR
        DIR/model.ckpt loads with `load_module` / `chimera generate|eval --ckpt`; DIR/vision and
        DIR/language are the parts as transformers directories (its config points at them). The
        template and image mode come from HF_DIR's chat_template and image processor.
    chimera import --format openflamingo --src checkpoint.pt --config EXPERIMENT.yaml --out DIR
        builds the Flamingo of EXPERIMENT.yaml (e.g. configs/experiments/openflamingo-3b.yaml:
        pretrained vision and LM) and loads open_flamingo's trained weights into it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from data.templates import ChatTemplate
from train.checkpoint_io import atomic_save


EXPORT_FORMATS = ("chimera", "hf-llava", "hf-llava-onevision")
IMPORT_FORMATS = ("hf-llava", "hf-llava-onevision", "openflamingo")


def _hf_exporter(fmt: str):
    from models.hf_llava_onevision import export_hf_llava_onevision
    from models.interop import export_hf_llava

    return {"hf-llava": export_hf_llava, "hf-llava-onevision": export_hf_llava_onevision}[fmt]


def _hf_importer(fmt: str):
    from models.hf_llava_onevision import import_hf_llava_onevision
    from models.interop import import_hf_llava

    return {"hf-llava": import_hf_llava, "hf-llava-onevision": import_hf_llava_onevision}[fmt]


def export_checkpoint(ckpt: str | Path, fmt: str, out_dir: str | Path) -> Path:
    from models.llava import LLaVA
    from train.checkpoint import load_module

    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {list(EXPORT_FORMATS)}")
    if fmt == "chimera":
        from train.release import write_release

        return write_release(load_module(ckpt), out_dir)
    module = load_module(ckpt)
    if not isinstance(module.model, LLaVA):
        raise ValueError(f"{ckpt}: {fmt} export needs a LLaVA model, got {type(module.model).__name__}")
    return _hf_exporter(fmt)(module.model, out_dir, module.template)


def _save_module(module, config: dict, out: Path, source: str) -> Path:
    """OUT/model.ckpt, self-contained like a `chimera fit` checkpoint (no path to SRC or OUT's parts)."""
    from train.checkpoint import self_contained

    path = out / "model.ckpt"
    ckpt = {"state_dict": module.state_dict(), "chimera_config": config, "imported_from": source}
    atomic_save(self_contained(ckpt, module), path)
    return path


def layout_args(model) -> dict:
    """`LLaVA` init args beyond its parts that an imported model was built with (any-resolution, video)."""
    if model.anyres is None:
        return {}
    return {"image_grid_pinpoints": [list(p) for p in model.anyres.grid_pinpoints],
            "anyres_max_tiles": model.anyres.max_tiles, "video_pool": model.video_pool,
            "video_pool_mode": model.video_pool_mode, "video_newline": model.video_newline}


def import_hf_llava_dir(src: str | Path, out_dir: str | Path, fmt: str = "hf-llava") -> Path:
    """A `chimera fit`-style checkpoint (config + weights) from a transformers LLaVA (`fmt` hf-llava) or
    LlavaOnevision (hf-llava-onevision) directory, with the template and image mode the directory's own
    chat_template and image processor imply."""
    from models.hf_llava_inputs import template_of
    from train.module import VLMModule

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = _hf_importer(fmt)(src)
    template, reason, jinja = template_of(src, model.tokenizer)
    if template["name"] == "chat_template":
        model.tokenizer.chat_template = jinja  # where the chat_template style reads it
    print(f"template: {template['name']} ({reason}); image mode: {model.vision.image_mode}")
    model.vision.save_pretrained(str(out / "vision"))
    model.language.save_pretrained(out / "language")
    config = {"class_path": "train.module.VLMModule", "init_args": {"stage": "finetune", "template": template, "model": {
        "class_path": "models.llava.LLaVA", "init_args": {
            "vision": {"class_path": "models.vision.HFVision",
                       "init_args": {"name_or_path": str(out / "vision"), "model_type": "clip",
                                     "select_layer": model.vision.select_layer, "image_mode": model.vision.image_mode}},
            "language": {"class_path": "models.language.LanguageModel",
                         "init_args": {"name_or_path": str(out / "language")}},
            "connector": {"class_path": "models.connectors.MLPConnector", "init_args": {"depth": 2, "activation": "gelu"}},
            **layout_args(model),
        }}}}
    module = VLMModule(model, stage="finetune", template=ChatTemplate(**template))
    return _save_module(module, config, out, str(src))


def import_openflamingo(src: str | Path, experiment: str | Path, out_dir: str | Path) -> Path:
    from models.interop import load_openflamingo_checkpoint
    from train.checkpoint import build_module

    config = yaml.safe_load(Path(experiment).read_text())["model"]
    module = build_module(config)
    left = load_openflamingo_checkpoint(module.model, src)
    bridge = [k for k in left if k.startswith(("connector.", "cross_attention."))]
    if bridge:
        raise ValueError(f"{src}: the checkpoint lacks trained weights for {bridge[:5]} ...")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return _save_module(module, config, out, str(src))


def export_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="chimera export", description="Write a checkpoint in another format.")
    parser.add_argument("--ckpt", required=True, help="checkpoint written by `chimera fit` (or `chimera merge`), or a release directory")
    parser.add_argument("--format", required=True, choices=list(EXPORT_FORMATS),
                        help="chimera: a release directory (safetensors + config + tokenizer); "
                             "hf-llava: a transformers LlavaForConditionalGeneration directory; "
                             "hf-llava-onevision: a LlavaOnevisionForConditionalGeneration directory")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    path = export_checkpoint(args.ckpt, args.format, args.out)
    print(f"wrote {path}")
    if args.format == "hf-llava":
        print(f"{path / 'README.md'}: its chat_template renders the training template; load with "
              "AutoProcessor.from_pretrained(DIR, backend='pil') for training's exact pixels")


def import_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="chimera import", description="Read a checkpoint of another project.")
    parser.add_argument("--format", required=True, choices=list(IMPORT_FORMATS))
    parser.add_argument("--src", required=True,
                        help="transformers LLaVA or LlavaOnevision directory, or open_flamingo checkpoint.pt")
    parser.add_argument("--config", help="experiment YAML whose model the openflamingo weights go into")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if args.format == "openflamingo":
        if not args.config:
            parser.error("--format openflamingo needs --config (e.g. configs/experiments/openflamingo-3b.yaml)")
        path = import_openflamingo(args.src, args.config, args.out)
    else:
        path = import_hf_llava_dir(args.src, args.out, args.format)
    print(f"wrote {path}")
