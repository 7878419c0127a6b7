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
from models.hf_image_processor import image_mode_of
from models.hf_llava_inputs import chat_template_of, image_processor_config


def _side(box) -> int | None:
    if isinstance(box, int):
        return box
    box = box or {}
    return int(box["height"]) if box.get("height") is not None and box.get("height") == box.get("width") else None


def check_image_processor(src: Path, image_size: int) -> None:
    """Our transform makes the tower's square side: the processor must output that side (centre crop: its
    crop, after a shortest-edge resize to the same side), or the pixels would not be the processor's."""
    config = image_processor_config(src)
    if not config:
        return
    size, crop = config.get("size"), config.get("crop_size")
    if image_mode_of(config) == "crop":  # a shortest-edge resize, then the centre square
        edge = size if isinstance(size, int) else size["shortest_edge"]
        fits = edge == _side(crop) == image_size
    else:
        fits = _side(size) == image_size
    if not fits:
        raise ValueError(f"{src}: the image processor (size {size}, crop {crop}) does not make the vision tower's "
                         f"{image_size}px square; only one that does is supported")


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
