"""`chimera eval --hf-llava DIR`: a transformers LLaVA directory evaluated as it ships.

Its weights are imported into our LLaVA (`models.interop.import_hf_llava`: logits equal to
transformers', tests/test_interop.py), so it runs on the same batching, KV cache and scoring as our
checkpoints, and `<image>` is widened to the same placeholder ids transformers' processor writes.
Prompts: the directory's own Jinja chat_template, used as it is (the tokenizer's, else the
processor's), tokenized as its processor does (BOS added by the tokenizer unless the text starts with
it, `data.tokenize.adds_bos_before`); a directory without one gets LLaVA-1.5's vicuna_v1 (the import
rule, `data.template_jinja.template_for_chat_template`). `--template` still overrides it. Pixels: the
image processor's settings (mode, mean, std) in our transform, equal bit for bit to transformers'
PIL backend (`AutoProcessor.from_pretrained(DIR, backend="pil")`); its torchvision backend resizes
with another bicubic kernel (about one 8-bit level apart).
"""

from __future__ import annotations

from pathlib import Path

from data.template_jinja import template_for_chat_template
from data.templates import ChatTemplate
from models.hf_llava_inputs import chat_template_of, image_processor_config


def processor_output_size(config: dict) -> int | None:
    """The square side the saved image processor outputs (None: not a square it states)."""
    box = config.get("crop_size") if config.get("do_center_crop") else config.get("size")
    if isinstance(box, int):
        return box
    box = box or {}
    if "height" in box and box.get("height") == box.get("width"):
        return int(box["height"])
    return box.get("shortest_edge") if not config.get("do_center_crop") else None


def check_image_processor(src: Path, image_size: int) -> None:
    """Our transform resizes to the tower's side: the processor must output that side, and (centre
    crop) resize the shortest edge to it, or the pixels would not be the processor's."""
    config = image_processor_config(src)
    if not config:
        return
    side = processor_output_size(config)
    size = config.get("size")
    edge = size if isinstance(size, int) else (size or {}).get("shortest_edge")
    if side != image_size or (config.get("do_center_crop") and edge not in (None, image_size)):
        raise ValueError(f"{src}: the image processor outputs {side}px (size {size}, crop {config.get('crop_size')}) "
                         f"but the vision tower takes {image_size}px; only a processor that resizes to the tower's "
                         "side is supported")


def load_hf_llava(src: str | Path):
    """A `VLMModule` (eval mode) holding the directory's LLaVA, with its chat template."""
    from models.interop import import_hf_llava
    from train.module import VLMModule

    src = Path(src)
    if not (src / "config.json").is_file():
        raise FileNotFoundError(f"--hf-llava {src}: not a transformers LLaVA directory (no config.json)")
    model = import_hf_llava(src)
    check_image_processor(src, model.vision.image_size)
    jinja = chat_template_of(src, model.tokenizer)
    if jinja:
        model.tokenizer.chat_template = jinja  # where the chat_template style reads it
        template = ChatTemplate.named("chat_template")
    else:
        template = ChatTemplate(**template_for_chat_template(model.tokenizer, None)[0])
    return VLMModule(model, stage="finetune", template=template).eval()
