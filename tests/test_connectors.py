"""Connectors: dims, token counts, and the patch merger's exact regrouping of neighbours."""

import pytest
import torch

from models.connectors import LinearConnector, MLPConnector, PatchMergerConnector


def test_mlp2x_gelu_layout_matches_llava_1_5():
    mlp = MLPConnector(16, 32, depth=2, activation="gelu")
    kinds = [type(m).__name__ for m in mlp.net]
    assert kinds == ["Linear", "GELU", "Linear"]
    assert (mlp.net[0].in_features, mlp.net[0].out_features, mlp.net[2].out_features) == (16, 32, 32)
    assert mlp(torch.randn(2, 5, 16)).shape == (2, 5, 32)
    assert LinearConnector(16, 8)(torch.randn(1, 3, 16)).shape == (1, 3, 8)


def test_bad_connector_settings_are_named():
    with pytest.raises(ValueError, match="activation 'swish'"):
        MLPConnector(4, 4, activation="swish")
    with pytest.raises(ValueError, match="depth"):
        MLPConnector(4, 4, depth=0)
    with pytest.raises(ValueError, match="divisible by merge=2"):
        PatchMergerConnector(4, 8, merge=2).num_tokens(25)


def test_patch_merger_concatenates_each_block_of_neighbours():
    merger = PatchMergerConnector(in_dim=1, out_dim=4, merge=2, depth=1)
    # identity read-out: a 4x4 grid of scalar features, cell value = its row-major index
    with torch.no_grad():
        merger.mlp.net[0].weight.copy_(torch.eye(4))
        merger.mlp.net[0].bias.zero_()
    x = torch.arange(16.0).reshape(1, 16, 1)
    out = merger(x)
    assert merger.num_tokens(16) == 4 and out.shape == (1, 4, 4)
    assert out[0].tolist() == [[0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15]]


def test_patch_merger_whole_grid_is_one_token():
    merger = PatchMergerConnector(in_dim=3, out_dim=8, merge=5)
    assert merger.num_tokens(25) == 1
    assert merger(torch.randn(2, 25, 3)).shape == (2, 1, 8)
