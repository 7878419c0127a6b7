"""Interop with transformers' `LlavaNextForConditionalGeneration` (LLaVA-NeXT any-resolution).

Same tower, projector and LM names as hf-llava (`models.interop`), plus `model.image_newline`;
the config adds the `image_grid_pinpoints`. `export_hf_llava_next` writes a directory that
`LlavaNextForConditionalGeneration` and `AutoProcessor` load, `import_hf_llava_next` builds our
any-resolution `LLaVA` from one. OneVision's `anyres_max_N` has no place in LlavaNext's config, so
a capped model is refused rather than exported to a model that would read it differently.
The any-resolution pieces OneVision shares (checks, image processor, tokenizer, writing the directory)
live here, once, for `models.hf_llava_onevision`.
"""

from __future__ import annotations

import copy
from pathlib import Path

from torch import Tensor

from models.interop import (_HF_NEWLINE, _check_hf_llava_compatible, chimera_to_hf_llava, llava_config_fields,
                            llava_from_hf_dir)


def anyres_export_problems(model) -> list[str]:
    """Why our LLaVA cannot be an any-resolution transformers model (LlavaNext or OneVision), if it cannot."""
    _check_hf_llava_compatible(model)
    problems = []
    if model.anyres is None:
        problems.append("the model has no image_grid_pinpoints (export a LLaVA-1.5 as hf-llava)")
    if model.vision.image_mode != "resize":
        problems.append(f"the tower's image mode is {model.vision.image_mode!r}; the any-resolution base view "
                        "squashes the image ('resize')")
    return problems


def _check_exportable(model) -> None:
    problems = anyres_export_problems(model)
    if model.anyres is not None and model.anyres.max_tiles is not None:
        problems.append(f"anyres_max_tiles={model.anyres.max_tiles} is OneVision's cap, which LlavaNext lacks "
                        "(export as hf-llava-onevision)")
    if problems:
        raise ValueError("cannot export as LlavaNext: " + "; ".join(problems))


def hf_llava_next_config(model):
    """The `transformers.LlavaNextConfig` equivalent to our any-resolution LLaVA."""
    from transformers import LlavaNextConfig

    _check_exportable(model)
    return LlavaNextConfig(**llava_config_fields(model),
                           image_grid_pinpoints=[list(p) for p in model.anyres.grid_pinpoints])


def chimera_to_hf_llava_next(model) -> dict[str, Tensor]:
    """Our state dict under `LlavaNextForConditionalGeneration`'s names (tensors shared, not copied);
    OneVision's names are the same."""
    _check_hf_llava_compatible(model)
    return {**chimera_to_hf_llava(model), _HF_NEWLINE: model.image_newline.weight}


def anyres_image_processor_kwargs(model) -> dict:
    """Image processor settings (LlavaNext's and OneVision's) cutting the views our `AnyResTransform`
    cuts: base squashed to the tower's side, tiles of that side from the best-fit canvas, the tower's
    mean and std."""
    side, transform = model.anyres.tile_size, model.vision.transform(train=False)
    return dict(
        do_resize=True, size={"shortest_edge": side}, resample=3, do_center_crop=True,
        crop_size={"height": side, "width": side}, do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
        image_mean=list(transform.mean), image_std=list(transform.std), do_pad=True, do_convert_rgb=True,
        image_grid_pinpoints=[list(p) for p in model.anyres.grid_pinpoints])


def llava_next_image_processor(model):
    from transformers import LlavaNextImageProcessor

    return LlavaNextImageProcessor(**anyres_image_processor_kwargs(model))


def export_tokenizer(model, template=None):
    """A copy of the model's tokenizer carrying `template` (default `ChatTemplate()`) as its chat_template."""
    from data.template_jinja import adds_bos, jinja_chat_template
    from data.templates import ChatTemplate

    template = template or ChatTemplate()
    tokenizer = copy.deepcopy(model.tokenizer)
    if template.style != "chat_template":
        tokenizer.chat_template = jinja_chat_template(template, with_bos=not adds_bos(tokenizer))
    return tokenizer


def write_hf_dir(model, out_dir: str | Path, config, architecture: str, state: dict[str, Tensor], processor) -> Path:
    """Write `config` (as `architecture`, in the LM's dtype), `state` as safetensors and `processor`
    (with its tokenizer)."""
    from huggingface_hub import save_torch_state_dict

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config.architectures = [architecture]
    config.dtype = str(next(model.language.parameters()).dtype).removeprefix("torch.")
    config.save_pretrained(out)
    save_torch_state_dict({k: v.detach().contiguous() for k, v in state.items()}, out)
    processor.save_pretrained(out)
    return out


def export_hf_llava_next(model, out_dir: str | Path, template=None) -> Path:
    """Write config, safetensors weights, tokenizer (with `template` as its chat_template) and a
    `LlavaNextProcessor` whose token count per image equals ours (`LLaVA.image_token_count`)."""
    from transformers import LlavaNextProcessor

    config = hf_llava_next_config(model)
    tokenizer = export_tokenizer(model, template)
    processor = LlavaNextProcessor(
        image_processor=llava_next_image_processor(model), tokenizer=tokenizer,
        patch_size=int(model.vision.model.config.patch_size),
        image_token=tokenizer.convert_ids_to_tokens(model.language.image_token_id),
        vision_feature_select_strategy="default", num_additional_image_tokens=1,  # CLS
        chat_template=tokenizer.chat_template)
    return write_hf_dir(model, out_dir, config, "LlavaNextForConditionalGeneration", chimera_to_hf_llava_next(model),
                        processor)


def check_hf_dir(src: str | Path, kind: str) -> Path:
    src = Path(src)
    if not (src / "config.json").is_file():
        raise FileNotFoundError(f"{src} is not a transformers {kind} directory (no config.json)")
    return src


def import_hf_llava_next(src: str | Path):
    """Our any-resolution `LLaVA` with the weights and grid of a transformers LlavaNext directory."""
    from transformers import LlavaNextConfig

    src = check_hf_dir(src, "LlavaNext")
    cfg = LlavaNextConfig.from_pretrained(src)
    # LlavaNext's processor squashes the base view whatever its shortest-edge/crop settings say
    return llava_from_hf_dir(src, cfg, vision_settings={"image_mode": "resize"},
                             image_grid_pinpoints=[tuple(p) for p in cfg.image_grid_pinpoints])
