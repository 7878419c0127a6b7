"""scripts/probe_tower_signal.py: the signal measure, the cell questions it reads and the stitching of
tile feature maps, on hand-built values."""

import torch
from PIL import Image

from scripts.probe_tower_signal import cell_questions, cell_vector, grid_features, signal
from models.vision import OpenCLIPVision
from tests.test_vision import OPEN_CLIP_CFG


def test_signal_is_the_share_of_the_features_that_varies_between_images():
    constant = torch.ones(5, 4, 3)
    assert signal(constant) == 0.0
    varying = torch.zeros(2, 1, 1)
    varying[0], varying[1] = 1.0, -1.0  # mean 0: all of it varies
    assert abs(signal(varying) - 1.0) < 1e-6
    mixed = torch.tensor([[[3.0]], [[5.0]]])  # mean 4, deviation 1, rms sqrt(17)
    assert abs(signal(mixed) - 1 / 17 ** 0.5) < 1e-6


def test_cell_questions_read_colour_and_shape_questions_only():
    record = {"image": "a.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat color is the object at the middle left?"}, {"from": "gpt", "value": "red"},
        {"from": "human", "value": "How many circles are there?"}, {"from": "gpt", "value": "2"},
        {"from": "human", "value": "What shape is the object at the center?"}, {"from": "gpt", "value": "square"}]}
    assert cell_questions([record]) == [(0, (1, 0), "color", "red"), (0, (1, 1), "shape", "square")]


def test_tiles_are_stitched_where_they_lie_in_the_image():
    tower = OpenCLIPVision(model_config=OPEN_CLIP_CFG).eval()
    side = int(round(tower.num_patches ** 0.5))
    size = tower.image_size
    image = Image.new("RGB", (2 * size, 2 * size), "white")
    image.paste((255, 0, 0), (size, 0, 2 * size, size))  # top right tile red
    grid = grid_features(tower, [image], tiles=2)[0]
    assert grid.shape[:2] == (2 * side, 2 * side)
    with torch.no_grad():
        white, red = (tower.features(tower.transform()(Image.new("RGB", (size, size), c))[None])[0] for c in ("white", "red"))
    torch.testing.assert_close(grid[:side, side:].flatten(0, 1), red)
    torch.testing.assert_close(grid[side:, :side].flatten(0, 1), white)
    assert cell_vector(grid, (0, 0)).shape == (2 * grid.shape[-1],)
