"""Vectorised image splicing (unwidened ids, `scripts/probe_object_lookup.py`) equals a plain per-sample reference."""

import pytest
import torch

from models.splice import splice_image_features

IMG = 7


def _reference(ids, embeds, feats, mask, labels):
    rows, k = [], 0
    for b in range(ids.shape[0]):
        e, m, lab = [], [], []
        for t in range(ids.shape[1]):
            if ids[b, t] == IMG:
                e += list(feats[k]); m += [1] * feats.shape[1]; lab += [-100] * feats.shape[1]; k += 1
            else:
                e.append(embeds[b, t]); m.append(int(mask[b, t])); lab.append(int(labels[b, t]))
        rows.append((e, m, lab))
    T = max(len(r[0]) for r in rows)
    out_e = torch.zeros(ids.shape[0], T, embeds.shape[-1]); out_m = torch.zeros(ids.shape[0], T, dtype=torch.long)
    out_l = torch.full((ids.shape[0], T), -100)
    for b, (e, m, lab) in enumerate(rows):
        out_e[b, :len(e)] = torch.stack(e); out_m[b, :len(e)] = torch.tensor(m); out_l[b, :len(e)] = torch.tensor(lab)
    return out_e, out_m, out_l


def test_splice_matches_reference():
    # row 0: two images, row 1: one image then padding, row 2: no image
    ids = torch.tensor([[1, IMG, 5, IMG, 6], [1, 5, IMG, 0, 0], [1, 5, 6, 8, 0]])
    mask = (torch.arange(5) < torch.tensor([5, 3, 4])[:, None]).long()
    labels = torch.where(mask.bool(), ids + 100, torch.tensor(-100))
    embeds = torch.randn(3, 5, 4)
    feats = torch.randn(3, 3, 4)  # three images of three tokens each, in reading order
    s = splice_image_features(ids, embeds, feats, IMG, mask, labels)
    ref_e, ref_m, ref_l = _reference(ids, embeds, feats, mask, labels)
    assert s.embeds.shape == (3, 9, 4)
    torch.testing.assert_close(s.embeds, ref_e, rtol=0, atol=0)
    assert torch.equal(s.attention_mask, ref_m) and torch.equal(s.labels, ref_l)


def test_image_count_mismatch_is_a_clear_error():
    ids = torch.tensor([[1, IMG, 2]])
    with pytest.raises(ValueError, match="1 <image> tokens but 2 images"):
        splice_image_features(ids, torch.zeros(1, 3, 4), torch.zeros(2, 3, 4), IMG, torch.ones_like(ids))
