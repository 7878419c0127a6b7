"""Prompts with reference answers for on-policy training (the `grpo` stage), from the same files
supervised stages read: LLaVA conversation JSON (each human/gpt pair one prompt, its `types[k]` the
question type) or `{id, image, question, answer, type}` JSONL."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from data.conversation_dataset import (PromptDataset, check_image_placeholders, image_root, media_count, media_paths,
                                       placeholder_count, read_records)
from data.templates import IMAGE_TOKEN, ChatTemplate


def media_seen(record: dict, seen: int) -> dict:
    """The record's media a prompt that has seen `seen` of its `<image>` placeholders reads: the
    first `seen` images (the record's own value when it is all of them), or its video."""
    if "video" in record:
        return {"video": record["video"]} if seen else {"image": None}
    image = record.get("image")
    if seen == media_count(record):
        return {"image": image}
    return {"image": media_paths(record)[:seen]}


def conversation_rows(rec: dict, n: int, path: Path) -> list[dict]:
    """One row per human/gpt pair. A question keeps its own `<image>`s where it places them, and the
    images earlier turns placed (all of them when the text places none) go before it, so each prompt
    reads every image its question has seen, in order."""
    turns, types = rec["conversations"], rec.get("types") or []
    placed = placeholder_count(rec)
    seen = 0 if placed else media_count(rec)
    rows = []
    for k in range(len(turns) // 2):
        human, gpt = turns[2 * k], turns[2 * k + 1]
        if human.get("from") != "human" or gpt.get("from") != "gpt":
            raise ValueError(f"{path}: record {rec.get('id', n)} turn {2 * k} is not a human/gpt pair")
        question = (IMAGE_TOKEN + "\n") * seen + human["value"].strip()
        seen += human["value"].count(IMAGE_TOKEN)
        rows.append({"id": f"{rec.get('id', n)}-{k}", **media_seen(rec, seen), "question": question,
                     "answer": gpt["value"], "type": types[k] if k < len(types) else rec.get("type")})
    return rows


def question_rows(records: list[dict], path: Path, video: bool = True, types: list[str] | None = None) -> list[dict]:
    """One `{id, image, question, answer, type}` row per question (`video` instead of `image` for a
    clip): QA rows as they are, conversation records split into their human/gpt pairs. `video`:
    whether the model reads clips (`check_image_placeholders`). `types`: keep only questions of these
    types (e.g. leave out caption records, whose long answers an exact-match reward cannot grade)."""
    check_image_placeholders(records, path, video=video)
    rows = []
    for n, rec in enumerate(records):
        if "conversations" in rec:
            rows += conversation_rows(rec, n, path)
            continue
        missing = {"question", "answer"} - rec.keys()
        if missing:
            raise ValueError(f"{path}: record {n} lacks {sorted(missing)} (nor has it `conversations`)")
        rows.append({"id": rec.get("id", str(n)), **media_seen(rec, media_count(rec)), "question": rec["question"],
                     "answer": rec["answer"], "type": rec.get("type")})
    if not rows:
        raise ValueError(f"{path}: no question with a reference answer")
    if types is not None:
        found = sorted({str(r["type"]) for r in rows})
        rows = [r for r in rows if r["type"] in types]
        if not rows:
            raise ValueError(f"{path}: no question of types {sorted(types)} (its types: {found})")
    return rows


class PromptAnswerDataset(PromptDataset):
    """Generation prompts (no answer in the ids); `meta` holds each one's `answer` and `type`."""

    def __init__(self, path: str | Path, tokenizer: PreTrainedTokenizerBase, template: ChatTemplate,
                 transform: Callable, image_folder: str | Path | None = None,
                 clip_transform: Callable | None = None, types: list[str] | None = None) -> None:
        path = Path(path)
        rows = question_rows(read_records(path), path, video=clip_transform is not None, types=types)
        super().__init__(rows, image_root(path, image_folder), [r["question"] for r in rows], tokenizer, template,
                         transform, meta_keys=("id", "answer", "type"), clip_transform=clip_transform)
        self.path = path

    def __getitem__(self, key: int | tuple[int, int]) -> dict | None:
        """`key`: an index or `(index, epoch)` from `ResumableSampler` (the prompt is the same each epoch)."""
        return super().__getitem__(key[0] if isinstance(key, tuple) else key)


class GroupCollator:
    """Each readable prompt repeated `group_size` times in a row (GRPO's group), collated by `inner`
    (left-padded for generation); `samples` still counts prompts, as the data guard judges them."""

    def __init__(self, inner: Callable[[list], dict], group_size: int) -> None:
        if group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {group_size}")
        self.inner, self.group_size = inner, group_size

    def __call__(self, items: list) -> dict:
        repeated = [x for it in items for x in ([it] * self.group_size if isinstance(it, dict) else [it])]
        batch = self.inner(repeated)
        batch["samples"] = len(items)
        return batch
