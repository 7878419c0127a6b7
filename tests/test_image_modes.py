"""Image modes (resize / pad / crop): the tensors each gives, and that transformers'
LlavaImageProcessor configured by `llava_image_processor_kwargs` reproduces them exactly."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch

from models.hf_image_processor import image_mode_of, llava_image_processor_kwargs
from models.image_transform import ImageTransform
from models.vision import HFVision

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PLAIN = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def noise(width: int, height: int, seed: int = 0) -> PIL.Image.Image:
    return PIL.Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_pad_centres_the_image_on_the_mean_colour():
    red = PIL.Image.new("RGB", (30, 10), (255, 0, 0))  # wide: 10 rows of padding above and below
    out = ImageTransform(30, CLIP_MEAN, CLIP_STD, "pad")(red)
    assert out.shape == (3, 30, 30)
    colour = [int(m * 255) for m in CLIP_MEAN]  # LLaVA's tuple(int(x * 255) for x in image_mean)
    assert colour == [122, 116, 104]
    for c in range(3):
        pad = (colour[c] / 255 - CLIP_MEAN[c]) / CLIP_STD[c]
        torch.testing.assert_close(out[c, :10], torch.full((10, 30), pad), rtol=0, atol=1e-6)
        torch.testing.assert_close(out[c, 20:], torch.full((10, 30), pad), rtol=0, atol=1e-6)
        body = ((255 if c == 0 else 0) / 255 - CLIP_MEAN[c]) / CLIP_STD[c]
        torch.testing.assert_close(out[c, 10:20], torch.full((10, 30), body), rtol=0, atol=1e-6)


def test_crop_keeps_the_centre_and_resize_keeps_everything():
    img = PIL.Image.new("L", (40, 20), 0)  # left half white
    img.paste(255, (0, 0, 20, 20))
    crop = ImageTransform(20, **PLAIN, mode="crop")(img)  # shortest side already 20: columns 10..29
    assert torch.equal(crop[:, :, :10], torch.ones(3, 20, 10)) and torch.equal(crop[:, :, 10:], torch.zeros(3, 20, 10))
    squash = ImageTransform(20, **PLAIN, mode="resize")(img)  # the whole width, squashed
    assert torch.allclose(squash[:, :, 0], torch.ones(3, 20)) and torch.allclose(squash[:, :, -1], torch.zeros(3, 20))


def test_crop_offset_rounds_down():
    columns = np.tile(np.arange(23, dtype=np.uint8) * 10, (20, 1))  # column i holds 10 * i
    out = ImageTransform(20, **PLAIN, mode="crop")(PIL.Image.fromarray(columns))
    assert out[0, 0, 0].item() * 255 == pytest.approx(10)  # (23 - 20) // 2 = 1 (torchvision's round gives 2)
    assert out[0, 0, -1].item() * 255 == pytest.approx(200)


def test_mode_is_a_tower_setting_and_part_of_the_release_description():
    tower = HFVision(config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                             "num_attention_heads": 2, "image_size": 14, "patch_size": 7}, image_mode="pad")
    tf = tower.transform(train=False)
    assert (tf.mode, tf.size) == ("pad", 14)
    assert tf.to_dict()["mode"] == "pad" and tf.to_dict()["pad_colour"] == [int(m * 255) for m in tower.mean]
    assert ImageTransform(8, **PLAIN).to_dict()["mode"] == "resize"
    with pytest.raises(ValueError, match="image_mode must be one of"):
        HFVision(config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                         "num_attention_heads": 2, "image_size": 14, "patch_size": 7}, image_mode="letterbox")


@pytest.mark.parametrize("mode", ["resize", "pad", "crop"])
@pytest.mark.parametrize("size", [(45, 31), (31, 45)])
def test_llava_image_processor_reproduces_our_pixels(mode, size):
    from transformers import LlavaImageProcessor, LlavaImageProcessorPil  # the same config, two backends

    img, tf = noise(*size), ImageTransform(28, CLIP_MEAN, CLIP_STD, mode)
    kwargs = llava_image_processor_kwargs(tf)
    theirs = LlavaImageProcessorPil(**kwargs)(images=img, return_tensors="pt")["pixel_values"][0]
    assert torch.equal(theirs, tf(img))  # exact, bit for bit
    assert image_mode_of(LlavaImageProcessor(**kwargs).to_dict()) == mode


def test_image_mode_of_hub_clip_processor_configs():
    assert image_mode_of({"size": {"shortest_edge": 336}, "crop_size": {"height": 336, "width": 336},
                          "do_center_crop": True}) == "crop"  # openai/clip-vit-large-patch14-336
    assert image_mode_of({"size": 224}) == "crop"  # older configs: an int is the shortest side
    assert image_mode_of({"size": {"height": 28, "width": 28}, "do_center_crop": False}) == "resize"
    assert image_mode_of({"size": {"shortest_edge": 336}, "do_pad": True}) == "pad"
