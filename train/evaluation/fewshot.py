"""k-shot prompting: demonstrations chosen at random or by RICES (Yang et al. 2022, as used by
Flamingo/OpenFlamingo: the support examples whose images are most similar to the query's
under the model's own vision encoder), placed most-similar-last, just before the query.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from data.conversation_dataset import readable_image_batches


@torch.no_grad()
def pooled_image_embeddings(vision, records: list[dict], root: Path, batch_size: int = 64) -> Tensor:
    """(N, D) L2-normalised mean of each image's patch features; unreadable images get zeros."""
    transform = vision.transform(train=False)
    device = next(vision.parameters()).device
    out = torch.zeros(len(records), vision.dim)
    for idx, pixels in readable_image_batches(records, root, transform, batch_size):
        out[idx] = F.normalize(vision(pixels.to(device)).float().mean(1).cpu(), dim=-1)
    return out


def select_demonstrations(num_queries: int, num_support: int, shots: int, method: str = "rices",
                          query_embeds: Tensor | None = None, support_embeds: Tensor | None = None,
                          exclude: list[set[int]] | None = None, seed: int = 0) -> list[list[int]]:
    """Support indices per query, most similar last (RICES) or in random order (random).

    `exclude[q]`: support indices query q must not see (when the support set is the evaluated
    set: the query itself and every other question about the same image).
    """
    exclude = exclude or [set() for _ in range(num_queries)]
    fewest = num_support - max((len(e) for e in exclude), default=0)
    if shots < 0 or shots > fewest:
        raise ValueError(f"cannot take {shots} demonstrations from a support set of {num_support} "
                         f"({num_support - fewest} excluded for some query)")
    if method == "random":
        gen = torch.Generator().manual_seed(seed)
        picks = []
        for q in range(num_queries):
            order = torch.randperm(num_support, generator=gen).tolist()
            picks.append([i for i in order if i not in exclude[q]][:shots])
        return picks
    if method != "rices":
        raise ValueError(f"demonstration selection {method!r} unknown; choose 'random' or 'rices'")
    if query_embeds is None or support_embeds is None:
        raise ValueError("RICES needs query and support image embeddings")
    sim = query_embeds @ support_embeds.T
    for q, banned in enumerate(exclude):
        if banned:
            sim[q, list(banned)] = float("-inf")
    top = sim.topk(shots, dim=1).indices  # most similar first
    return [list(reversed(row)) for row in top.tolist()]


def fewshot_turns(demos: list[tuple[str, str]], query_prompt: str) -> list[dict]:
    """Demonstrations as earlier turns of one conversation, each with its own image."""
    turns = []
    for prompt, answer in demos:
        turns += [{"from": "human", "value": "<image>\n" + prompt}, {"from": "gpt", "value": answer}]
    return turns + [{"from": "human", "value": "<image>\n" + query_prompt}]
