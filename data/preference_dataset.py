"""Preference pairs `{id, image, prompt, chosen, rejected}` -> token rows for DPO.

A batch holds the B chosen rows followed by the B rejected rows (images repeated in the same
order), so one forward pass scores both; labels cover the response tokens only. A pair either
row of which cannot be trained on (an image cut by `max_length`, no response token left) is
`Dropped` and counted.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import Dataset
from transformers import PreTrainedTokenizerBase

from data.collate import Collator, Dropped, Unreadable, usable
from data.conversation_dataset import image_root, load_pixels, read_records
from data.image_placeholders import ImagePlaceholders
from data.templates import IMAGE_TOKEN, ChatTemplate
from data.tokenize import Unfit, tokenize_conversation


class PreferenceDataset(Dataset):
    """`max_length` counts each `<image>` as `num_image_tokens` positions when given (else one)."""

    def __init__(self, path: str | Path, tokenizer: PreTrainedTokenizerBase, template: ChatTemplate,
                 transform: Callable, max_length: int | None = None, num_image_tokens: int | None = None,
                 image_folder: str | Path | None = None) -> None:
        self.path = Path(path)
        self.records = read_records(self.path)
        for n, rec in enumerate(self.records):
            missing = {"prompt", "chosen", "rejected"} - rec.keys()
            if missing:
                raise ValueError(f"{self.path}: record {n} lacks {sorted(missing)}")
        self.root = image_root(self.path, image_folder)
        self.tokenizer, self.template, self.transform, self.max_length = tokenizer, template, transform, max_length
        self.image_tokens = num_image_tokens or 1

    def __len__(self) -> int:
        return len(self.records)

    def _row(self, prompt: str, response: str) -> tuple[torch.Tensor, torch.Tensor]:
        turns = [{"from": "human", "value": prompt}, {"from": "gpt", "value": response}]
        ids, labels = tokenize_conversation(turns, self.tokenizer, self.template, self.max_length, self.image_tokens)
        return torch.tensor(ids), torch.tensor(labels)

    def __getitem__(self, key: int | tuple[int, int]) -> dict | Dropped | Unreadable:
        i = key[0] if isinstance(key, tuple) else key  # (index, epoch) from ResumableSampler
        rec = self.records[i]
        ok, pixels = load_pixels(rec, self.root, self.transform)
        if not ok:
            return Unreadable(str(rec.get("id", i)), str(self.root / str(rec["image"])))
        prompt = rec["prompt"]
        if pixels is not None and IMAGE_TOKEN not in prompt:
            prompt = IMAGE_TOKEN + "\n" + prompt
        try:
            chosen, rejected = self._row(prompt, rec["chosen"]), self._row(prompt, rec["rejected"])
        except Unfit as err:
            return Dropped(str(rec.get("id", i)), str(err))
        return {"chosen": {"input_ids": chosen[0], "labels": chosen[1], "pixel_values": pixels},
                "rejected": {"input_ids": rejected[0], "labels": rejected[1], "pixel_values": pixels}}


class PreferenceCollator:
    """[chosen_1..chosen_B, rejected_1..rejected_B] as one right-padded batch; `placeholders` as
    for `Collator`."""

    def __init__(self, pad_token_id: int, placeholders: ImagePlaceholders | None = None) -> None:
        self.rows = Collator(pad_token_id, placeholders=placeholders)

    def __call__(self, items: list) -> dict:
        good, counts = usable(items)
        if not good:
            return counts
        batch = self.rows([it["chosen"] for it in good] + [it["rejected"] for it in good])
        batch.update(counts)
        batch["num_pairs"] = len(good)
        return batch
