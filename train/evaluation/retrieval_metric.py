"""Contrastive-model metrics: image<->text recall@K and zero-shot classification accuracy."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def recall_at_k(similarity: Tensor, text_to_image: Sequence[int], ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """`similarity`: (images, texts) scores; text j describes image `text_to_image[j]`
    (an image may have several texts). Image->text counts a hit when any of the image's
    texts ranks in the top K; text->image when its own image does. Ties rank pessimistically."""
    n_img, n_txt = similarity.shape
    owner = torch.as_tensor(list(text_to_image))
    if owner.numel() != n_txt:
        raise ValueError(f"text_to_image has {owner.numel()} entries for {n_txt} texts")
    # text -> image: rank of the true image among all images (number scoring at least as high - 1)
    true_t2i = similarity[owner, torch.arange(n_txt)]
    t2i_rank = (similarity >= true_t2i[None, :]).sum(0) - 1
    # image -> text: best rank among the image's own texts
    own = owner[None, :] == torch.arange(n_img)[:, None]
    if not own.any(1).all():
        raise ValueError("every image needs at least one text")
    best_own = similarity.masked_fill(~own, float("-inf")).max(1).values
    i2t_rank = (similarity >= best_own[:, None]).sum(1) - own.sum(1).clamp(max=1)
    out = {}
    for k in ks:
        out[f"i2t_R@{k}"] = (i2t_rank < k).float().mean().item()
        out[f"t2i_R@{k}"] = (t2i_rank < k).float().mean().item()
    return out


def zeroshot_accuracy(image_features: Tensor, class_features: Tensor, labels: Sequence[int]) -> float:
    """Top-1 accuracy of assigning each image to the class with the most similar (normalised) embedding."""
    img = torch.nn.functional.normalize(image_features.float(), dim=-1)
    cls = torch.nn.functional.normalize(class_features.float(), dim=-1)
    pred = (img @ cls.T).argmax(-1)
    return (pred == torch.as_tensor(list(labels))).float().mean().item()
