"""Multiple choice by option log-likelihood (`chimera eval --mc-mode loglik`).

Each option's continuation (a task's `choices(rec)`: the option text, or the letter where the
options live inside the question, MMStar) is tokenised on its own, appended to the prompt's ids and
scored by one forward pass of the model (LLaVA and Flamingo alike: `model(ids, mask, pixels)` returns
logits). The pick is the option with the highest SUMMED log-probability of its tokens, as
lmms-eval's loglikelihood tasks score `acc` (e.g. seedbench_ppl): no length normalisation. The
prediction is the picked option's label (its letter, MME's Yes/No), scored by the task's usual rule.
A record without choices (an MMMU open question) and a task without them are generated instead.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from data.collate import media_arguments
from data.conversation_dataset import PromptDataset
from data.tokenize import IGNORE_INDEX
from models.losses import summed_label_logprobs
from train.data_module import prompt_collator
from train.evaluation.decoding import Decoding, cut_at_stop, device_batches, generate_predictions, prompt_dataset

MC_MODES = ("generate", "loglik")


def check_mc_mode(mode: str) -> None:
    if mode not in MC_MODES:
        raise ValueError(f"mc_mode {mode!r}: choose from {list(MC_MODES)}")


class OptionDataset(Dataset):
    """(prompt ids + continuation ids, labels on the continuation only) per (record, option)."""

    def __init__(self, prompts: PromptDataset, items: list[tuple[int, list[int]]]) -> None:
        self.prompts, self.items = prompts, items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, j: int) -> dict | None:
        index, continuation = self.items[j]
        item = self.prompts[index]
        if item is None:  # unreadable image: skipped like in generation
            return None
        cont = torch.tensor(continuation, dtype=item["input_ids"].dtype)
        ids = torch.cat([item["input_ids"], cont])
        labels = torch.cat([torch.full_like(item["input_ids"], IGNORE_INDEX), cont])
        # the prompt's media entries travel as they are (any-resolution sizes and widths, clip frames)
        return {**item, "input_ids": ids, "labels": labels, "meta": {"item": j}}


def continuation_ids(tokenizer, text: str) -> list[int]:
    ids = tokenizer(text, add_special_tokens=False).input_ids
    if not ids:
        raise ValueError(f"option {text!r} tokenises to nothing: it cannot be scored by log-likelihood")
    return ids


@torch.no_grad()
def option_logprobs(module, records: list[dict], root: str | Path, prompts: list, choices: list[list | None],
                    decoding: Decoding) -> list[list[float] | None]:
    """Per record, the summed log-probability of each of its choices' continuations (None: no choices,
    or its image unreadable). Right-padded batches of `decoding.batch_size` (record, option) rows."""
    model = module.model
    tok = model.tokenizer
    base = prompt_dataset(module, records, root, prompts, decoding)
    owners, items = [], []
    for i, options in enumerate(choices):
        for _, text in options or []:
            owners.append(i)
            items.append((i, continuation_ids(tok, text)))
    loader = DataLoader(OptionDataset(base, items), batch_size=decoding.batch_size, shuffle=False,
                        collate_fn=prompt_collator(model, left_pad=False))
    scores: list[float | None] = [None] * len(items)
    for batch, ids, mask, pixels in device_batches(module, loader):
        # summed_label_logprobs upcasts a chunk of positions at a time
        logits, _ = model(ids, mask, pixels, **media_arguments(batch))
        values = summed_label_logprobs(logits, batch["labels"].to(ids.device)).tolist()
        for meta, value in zip(batch["meta"], values):
            scores[meta["item"]] = value
    out: list[list[float] | None] = [None if not c else [] for c in choices]
    for owner, value in zip(owners, scores):
        if value is None:
            out[owner] = None
        elif out[owner] is not None:
            out[owner].append(value)
    return out


def loglik_predictions(module, task, records: list[dict], root: str | Path, prompts: list, decoding: Decoding,
                       max_new_tokens: int) -> tuple[list[str | None], list]:
    """(predictions, raw responses): the best-scoring choice's label and, as the raw response, every
    choice's summed log-probability; records without choices are generated (raw = the text)."""
    choices = [task.choices(r) if hasattr(task, "choices") else None for r in records]
    logprobs = option_logprobs(module, records, root, prompts, choices, decoding)
    preds: list[str | None] = [None] * len(records)
    raw: list = [None] * len(records)
    for i, (options, values) in enumerate(zip(choices, logprobs)):
        if options and values is not None:
            preds[i] = options[max(range(len(values)), key=values.__getitem__)][0]
            raw[i] = values
    rest = [i for i, c in enumerate(choices) if not c]
    if rest:
        generated = generate_predictions(module, [records[i] for i in rest], root, [prompts[i] for i in rest],
                                         decoding, max_new_tokens)
        for i, text in zip(rest, generated):
            raw[i], preds[i] = text, None if text is None else cut_at_stop(text, decoding.stop)
    return preds, raw
