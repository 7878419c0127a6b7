"""Preference pairs `{id, image, prompt, chosen, rejected}` -> token rows for DPO.

A batch holds the B chosen rows followed by the B rejected rows (images repeated in the same
order), so one forward pass scores both; labels cover the response tokens only.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import Dataset
from transformers import PreTrainedTokenizerBase

from data.collate import Collator
from data.conversation_dataset import load_pixels, read_records
from data.templates import IMAGE_TOKEN, ChatTemplate
from data.tokenize import tokenize_conversation


class PreferenceDataset(Dataset):
    def __init__(self, path: str | Path, tokenizer: PreTrainedTokenizerBase, template: ChatTemplate,
                 transform: Callable, max_length: int | None = None) -> None:
        self.path = Path(path)
        self.records = read_records(self.path)
        for n, rec in enumerate(self.records):
            missing = {"prompt", "chosen", "rejected"} - rec.keys()
            if missing:
                raise ValueError(f"{self.path}: record {n} lacks {sorted(missing)}")
        self.root = self.path.parent
        self.tokenizer, self.template, self.transform, self.max_length = tokenizer, template, transform, max_length

    def __len__(self) -> int:
        return len(self.records)

    def _row(self, prompt: str, response: str) -> tuple[torch.Tensor, torch.Tensor]:
        turns = [{"from": "human", "value": prompt}, {"from": "gpt", "value": response}]
        ids, labels = tokenize_conversation(turns, self.tokenizer, self.template, self.max_length)
        return torch.tensor(ids), torch.tensor(labels)

    def __getitem__(self, key: int | tuple[int, int]) -> dict | None:
        i = key[0] if isinstance(key, tuple) else key  # (index, epoch) from ResumableSampler
        rec = self.records[i]
        ok, pixels = load_pixels(rec, self.root, self.transform)
        if not ok:
            return None
        prompt = rec["prompt"]
        if pixels is not None and IMAGE_TOKEN not in prompt:
            prompt = IMAGE_TOKEN + "\n" + prompt
        chosen, rejected = self._row(prompt, rec["chosen"]), self._row(prompt, rec["rejected"])
        return {"chosen": {"input_ids": chosen[0], "labels": chosen[1], "pixel_values": pixels},
                "rejected": {"input_ids": rejected[0], "labels": rejected[1], "pixel_values": pixels}}


class PreferenceCollator:
    """[chosen_1..chosen_B, rejected_1..rejected_B] as one right-padded batch."""

    def __init__(self, pad_token_id: int) -> None:
        self.rows = Collator(pad_token_id)

    def __call__(self, items: list[dict | None]) -> dict:
        good = [it for it in items if it is not None]
        if not good:
            return {"skipped": len(items)}
        batch = self.rows([it["chosen"] for it in good] + [it["rejected"] for it in good])
        batch["skipped"] = len(items) - len(good)
        batch["num_pairs"] = len(good)
        return batch
