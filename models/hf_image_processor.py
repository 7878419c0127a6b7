"""Our `ImageTransform` as a transformers `LlavaImageProcessor` config, and back.

An hf-llava export must feed HF users the pixels the model was trained on; the hub processor a
tower came with (shortest side + centre crop for CLIP) is not that when training squashed or
padded. `LlavaImageProcessor` covers all three modes (`do_pad` is LLaVA-1.5's expand2square with
`tuple(int(x * 255) for x in image_mean)`). Its PIL backend (`backend="pil"`) resizes as our
transform does, so its tensors equal ours bit for bit; transformers' default torchvision backend
resizes 8-bit tensors with its own bicubic kernel, and on noise images pixels differ by up to a
dozen 8-bit levels (none where no resize happens).
"""

from __future__ import annotations

from models.image_transform import ImageMode, ImageTransform

BICUBIC = 3  # PIL.Image.Resampling.BICUBIC, as transformers stores `resample`


def llava_image_processor_kwargs(transform: ImageTransform) -> dict:
    """`LlavaImageProcessor(**kwargs)` producing `transform`'s tensors (PIL backend)."""
    square = {"height": transform.size, "width": transform.size}
    crop = transform.mode == "crop"
    return {
        "do_convert_rgb": True, "do_resize": True, "resample": BICUBIC,
        "size": {"shortest_edge": transform.size} if crop else square,
        "do_center_crop": crop, "crop_size": square, "do_pad": transform.mode == "pad",
        "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "image_mean": list(transform.mean), "image_std": list(transform.std),
    }


def llava_image_processor(transform: ImageTransform):
    from transformers import LlavaImageProcessor

    return LlavaImageProcessor(**llava_image_processor_kwargs(transform))


def image_mode_of(config: dict) -> ImageMode:
    """The mode a saved image processor config (preprocessor_config.json) applies: `pad` when it
    pads to a square, `crop` when it centre-crops after a shortest-side resize, else `resize`."""
    if config.get("do_pad"):
        return "pad"
    size = config.get("size")
    shortest_side = isinstance(size, int) or "shortest_edge" in (size or {})  # an int: older CLIP configs
    if config.get("do_center_crop", True) and shortest_side:
        return "crop"
    return "resize"
