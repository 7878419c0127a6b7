"""Interop with transformers' `LlavaOnevisionForConditionalGeneration` (LLaVA-OneVision).

OneVision is LlavaNext's layout (same weight names, pinpoints, unpadding, `image_newline` after each
row: `models.hf_llava_next`) plus what our LLaVA's settings say:

- `anyres_max_tiles=N` is `vision_aspect_ratio="anyres_max_N"` (a map over N tiles by more than 1.1
  per side shrinks bilinearly); an uncapped model exports with N = the largest pinpoint's tiles, a cap
  that never applies;
- a video clip is frames at base resolution, each pooled bilinearly to ceil(side / 2) per side
  (`apply_pooling`: `video_pool: 2`, `video_pool_mode: bilinear`), then one `image_newline`
  (`video_newline: true`); other video settings are refused, naming the setting.

Our data writes one `<image>` for an image or a clip; OneVision has a `<video>` token for clips. The
export's tokenizer gains `<video>` when it lacks one, its embedding and output rows copying `<image>`'s
(placeholder embeddings are overwritten, so only the extra logit column, equal to `<image>`'s, is new);
the logits over our vocabulary are ours, with clips at `<video>` positions. Importing keeps the token.
transformers reads each image of a several-image sample at any resolution, as ours does, when
`batch_num_images` is not passed; its processor passes it for such samples and then reads each image
as one padded base view plus a newline, which our LLaVA does not.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import Tensor

from models.hf_llava_next import (anyres_export_problems, anyres_image_processor_kwargs, check_hf_dir,
                                  chimera_to_hf_llava_next, export_tokenizer, write_hf_dir)
from models.interop import _HF_HEAD, _HF_LM_PREFIX, llava_config_fields, llava_from_hf_dir

VIDEO_TOKEN = "<video>"

_MAX_TILES = re.compile(r"anyres_max_(\d+)")
# what transformers' LlavaOnevision does with a clip's frames (`apply_pooling`, `get_video_features`)
VIDEO_SETTINGS = {"video_pool": 2, "video_pool_mode": "bilinear", "video_newline": True}


def vision_aspect_ratio(model) -> str:
    """`anyres_max_N` for our cap; without one, the largest pinpoint's tiles (never more than that)."""
    layout = model.anyres
    n = layout.max_tiles or max(h * w for h, w in layout.grid_pinpoints) // layout.tile_size**2
    return f"anyres_max_{n}"


def _check_exportable(model) -> None:
    problems = anyres_export_problems(model)
    problems += [f"{key}={getattr(model, key)!r}, but OneVision's video reading needs {key}={want!r}"
                 for key, want in VIDEO_SETTINGS.items() if getattr(model, key) != want]
    if problems:
        raise ValueError("cannot export as LlavaOnevision: " + "; ".join(problems))


def hf_llava_onevision_config(model, video_token_id: int, vocab_size: int):
    """The `transformers.LlavaOnevisionConfig` equivalent to our any-resolution LLaVA, reading clips at
    `video_token_id` with a vocabulary of `vocab_size` (`with_video_token`)."""
    from transformers import LlavaOnevisionConfig

    _check_exportable(model)
    fields = llava_config_fields(model)
    fields["text_config"] = {**fields["text_config"], "vocab_size": vocab_size}
    return LlavaOnevisionConfig(**fields, video_token_index=video_token_id,
                                image_grid_pinpoints=[list(p) for p in model.anyres.grid_pinpoints],
                                vision_aspect_ratio=vision_aspect_ratio(model))


def _token_rows(model) -> list[str]:
    """hf names of the matrices with a row per token: the input embedding and an untied output head."""
    lm = model.language.model
    embedding = next(n for n, m in lm.named_modules() if m is lm.get_input_embeddings()) + ".weight"
    tied = bool(getattr(lm.config, "tie_word_embeddings", False))
    return [_HF_LM_PREFIX + embedding.removeprefix(lm.base_model_prefix + ".")] + ([] if tied else [_HF_HEAD])


def with_video_token(model, tokenizer, state: dict[str, Tensor]) -> tuple[int, dict[str, Tensor]]:
    """`(<video> id, state)`: `tokenizer` (the export's copy) gains `<video>` when it lacks it, and the
    state's token rows give it `<image>`'s rows, growing by a row when the id is past the matrix."""
    if VIDEO_TOKEN in tokenizer.get_vocab():  # e.g. an imported OneVision: its rows are kept
        return tokenizer.convert_tokens_to_ids(VIDEO_TOKEN), state
    tokenizer.add_special_tokens({"additional_special_tokens": [VIDEO_TOKEN]}, replace_extra_special_tokens=False)
    video, image = tokenizer.convert_tokens_to_ids(VIDEO_TOKEN), model.language.image_token_id
    state = dict(state)
    for name in _token_rows(model):
        rows = state[name].detach()
        rows = torch.cat([rows, rows.new_zeros(max(0, video + 1 - rows.shape[0]), rows.shape[1])])
        rows[video] = rows[image]
        state[name] = rows
    return video, state


def llava_onevision_processor(model, tokenizer):
    """A `LlavaOnevisionProcessor` widening an image or a clip to the positions our model writes
    (clips at `<video>`), frames squashed to the tower's side."""
    from transformers import LlavaOnevisionImageProcessor, LlavaOnevisionProcessor, LlavaOnevisionVideoProcessor

    kwargs = anyres_image_processor_kwargs(model)
    side = model.anyres.tile_size
    video = LlavaOnevisionVideoProcessor(
        do_resize=True, size={"height": side, "width": side}, resample=kwargs["resample"], do_center_crop=False,
        do_rescale=True, rescale_factor=1 / 255, do_normalize=True, image_mean=kwargs["image_mean"],
        image_std=kwargs["image_std"], do_convert_rgb=True)
    token = tokenizer.convert_ids_to_tokens(model.language.image_token_id)
    return LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(**kwargs), tokenizer=tokenizer, video_processor=video,
        num_image_tokens=model.num_image_tokens + 1, vision_feature_select_strategy="default",  # + CLS, dropped
        image_token=token, video_token=VIDEO_TOKEN, vision_aspect_ratio=vision_aspect_ratio(model),
        chat_template=tokenizer.chat_template)


def export_hf_llava_onevision(model, out_dir: str | Path, template=None) -> Path:
    """Write config, safetensors weights, tokenizer (with `template` as its chat_template) and a
    `LlavaOnevisionProcessor`: a directory `LlavaOnevisionForConditionalGeneration.from_pretrained` loads."""
    _check_exportable(model)
    tokenizer = export_tokenizer(model, template)
    video, state = with_video_token(model, tokenizer, chimera_to_hf_llava_next(model))
    config = hf_llava_onevision_config(model, video, state[_token_rows(model)[0]].shape[0])
    return write_hf_dir(model, out_dir, config, "LlavaOnevisionForConditionalGeneration", state,
                        llava_onevision_processor(model, tokenizer))


def max_tiles_of(aspect_ratio: str, src) -> int:
    """N of `anyres_max_N`, the only `vision_aspect_ratio` OneVision's model reads."""
    match = _MAX_TILES.fullmatch(aspect_ratio)
    if match is None:
        raise ValueError(f"{src}: vision_aspect_ratio {aspect_ratio!r} is not 'anyres_max_N'")
    return int(match.group(1))


def import_hf_llava_onevision(src: str | Path):
    """Our any-resolution `LLaVA` with the weights, grid, cap and video reading of a transformers
    LlavaOnevision directory (a CLIP tower with the CLS token dropped: other towers are refused)."""
    from transformers import LlavaOnevisionConfig

    src = check_hf_dir(src, "LlavaOnevision")
    cfg = LlavaOnevisionConfig.from_pretrained(src)
    return llava_from_hf_dir(src, cfg, vision_settings={"image_mode": "resize"},
                             image_grid_pinpoints=[tuple(p) for p in cfg.image_grid_pinpoints],
                             anyres_max_tiles=max_tiles_of(cfg.vision_aspect_ratio, src), **VIDEO_SETTINGS)
