"""Datasets over LLaVA-format conversation JSON (training) and `{id,image,question,answer}` JSONL (eval)."""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset
from transformers import PreTrainedTokenizerBase

from data.anyres_images import image_fields
from data.collate import Dropped, Unreadable
from data.images import load_image
from data.templates import IMAGE_TOKEN, ChatTemplate, with_image_placeholders
from data.tokenize import Unfit, tokenize_conversation, tokenize_generation_prompt, tokenize_prompt


def read_json_lines(path: str | Path) -> list[dict]:
    """One JSON object per line (blank lines allowed); errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    records = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{n}: not valid JSON: {err}") from err
    return records


def read_records(path: str | Path) -> list[dict]:
    """A JSON list (LLaVA) or JSON lines; errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    if path.suffix == ".jsonl":
        return read_json_lines(path)
    text = path.read_text()
    try:
        records = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON: {err}") from err
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a JSON list of records, got {type(records).__name__}")
    return records


def image_root(json_path: Path, image_folder: str | Path | None) -> Path:
    """Where a conversation JSON's relative image paths resolve: `image_folder` (LLaVA's
    `--image_folder`), by default the JSON's own folder; a folder that does not exist is an error."""
    if image_folder is None:
        return json_path.parent
    root = Path(image_folder)
    if not root.is_dir():
        raise FileNotFoundError(f"image_folder {root} is not a folder (images of {json_path} resolve against it)")
    return root


def media_paths(record: dict) -> list[str]:
    """The files a record's media read: its images (`image`: a path, a list of paths or absent), or
    its clip's frames (`video`: a list of frame paths)."""
    if "video" in record:
        return list(record["video"])
    image = record.get("image")
    return [] if image is None else [image] if isinstance(image, str) else list(image)


def load_images(record: dict, root: Path, transform: Callable,
                clip_transform: Callable | None = None) -> tuple[bool, list]:
    """(ok, transformed media): a record's images, each by `transform`, or its video as one clip of
    all its frames by `clip_transform` (`data.video_frames`).

    ok is False when any image or frame is missing or unreadable: the caller drops the sample.
    """
    paths = media_paths(record)
    if not paths:
        return True, []
    images = [load_image(root / p) for p in paths]
    if any(im is None for im in images):
        return False, []
    if "video" in record:
        if clip_transform is None:
            raise ValueError(f"record {record.get('id')} has a video: this model reads no video clips")
        return True, [clip_transform(images)]
    return True, [transform(im) for im in images]


def first_unreadable(record: dict, root: Path) -> str:
    """The first of a record's media files that does not exist (else all of them: one is corrupt)."""
    paths = [root / p for p in media_paths(record)]
    return str(next((p for p in paths if not p.is_file()), ", ".join(map(str, paths))))


def load_pixels(record: dict, root: Path, transform: Callable) -> tuple[bool, torch.Tensor | None]:
    """(ok, pixels): a record's images transformed to square tensors, stacked (None without images)."""
    ok, images = load_images(record, root, transform)
    return ok, torch.stack(images) if images else None


def readable_image_batches(records: list[dict], root: Path, transform: Callable, batch_size: int):
    """Yield (record indices, (n, 3, H, W) pixels) of each record's first image, in batches;
    records whose image is missing or unreadable are left out (embedding and RICES code)."""
    for start in range(0, len(records), batch_size):
        idx, pixels = [], []
        for i in range(start, min(start + batch_size, len(records))):
            ok, px = load_pixels(records[i], root, transform)
            if ok and px is not None:
                idx.append(i)
                pixels.append(px[0])
        if pixels:
            yield idx, torch.stack(pixels)


def media_count(record: dict) -> int:
    """How many `<image>` placeholders a record's media take: one per image, one for a video clip."""
    if "video" in record:
        return 1
    return len(media_paths(record))


def placeholder_count(record: dict) -> int:
    """The `<image>` placeholders a record's text holds (its conversation, or a QA row's question)."""
    texts = [t.get("value") for t in record.get("conversations", ())] + [record.get("question")]
    return sum(t.count(IMAGE_TOKEN) for t in texts if isinstance(t, str))


def check_image_placeholders(records: list[dict], path: Path, video: bool = True) -> None:
    """Every record's `<image>` placeholders are none (one is added per image) or one per image, one
    for a video clip; a record has images or a video (a non-empty list of frames), not both.
    `video`: whether the model reading the records takes video clips.

    A literal `<image>` in a text-only record is an error naming the record, at construction
    (before training starts), rather than escaped: escaping would change the text the record
    means, and a mismatch otherwise surfaces mid-run as "batch has 2 <image> tokens but 1 images"
    without naming the sample.
    """
    for n, rec in enumerate(records):
        name = rec.get("id", f"record {n}")
        if "video" not in rec:
            continue
        if "image" in rec:
            raise ValueError(f"{path}: record {name} has both `image` and `video`: give one")
        if not isinstance(rec["video"], list) or not rec["video"]:
            raise ValueError(f"{path}: record {name}: `video` must be a non-empty list of frame paths")
        if not video:
            raise ValueError(f"{path}: record {name} has a video, which this reader does not take (LLaVA models read "
                             f"clips in conversation and QA data when their connector keeps a square token grid, "
                             f"or with video_pool: 1)")
    bad = []
    for n, rec in enumerate(records):
        placeholders = placeholder_count(rec)
        if placeholders and placeholders != media_count(rec):
            what = "video" if "video" in rec else "images"
            bad.append(f"{rec.get('id', f'record {n}')} ({placeholders} {IMAGE_TOKEN}, {media_count(rec)} {what})")
    if bad:
        raise ValueError(f"{path}: {len(bad)} records have {IMAGE_TOKEN} placeholders that do not match their "
                         f"images (a text-only record may not contain {IMAGE_TOKEN}; a video takes one): "
                         f"{', '.join(bad[:5])}")


def sample_turns(turns: list[dict], k: int, rng: random.Random) -> list[dict]:
    """A random subset of k question/answer pairs, in their original order; the images stay where the
    first pair places them when it is kept and holds them all, else they move to the first turn.

    Synthetic worlds ask many questions per image; sampling a few per visit shortens
    sequences so a step sees more images (the vision tower learns from images, not turns).
    """
    pairs = [turns[i:i + 2] for i in range(0, len(turns) - 1, 2)]
    if len(pairs) <= k:
        return turns
    images = sum(t["value"].count(IMAGE_TOKEN) for t in turns)
    keep = sorted(rng.sample(range(len(pairs)), k))
    if keep[0] == 0 and pairs[0][0]["value"].count(IMAGE_TOKEN) == images:
        return [t for i in keep for t in pairs[i]]  # interleaved images keep their text as written
    out = []
    for i in keep:
        human, gpt = pairs[i]
        out += [{**human, "value": human["value"].replace(IMAGE_TOKEN + "\n", "").replace(IMAGE_TOKEN, "")}, gpt]
    if images:
        out[0] = {**out[0], "value": (IMAGE_TOKEN + "\n") * images + out[0]["value"]}
    return out


def read_conversation_files(paths: str | Path | Sequence[str | Path], image_folder: str | Path | None = None,
                            video: bool = True) -> tuple[list[dict], list[Path]]:
    """(records, the folder each record's relative media paths resolve against) of one conversation
    file or several, their records concatenated in the order given (e.g. image and video data of one
    world); each file is checked by `check_image_placeholders` and its errors name it."""
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not paths:
        raise ValueError("no conversation file given (an empty list of training files)")
    records, roots = [], []
    for path in map(Path, paths):
        file_records = read_records(path)
        check_image_placeholders(file_records, path, video=video)
        records += file_records
        roots += [image_root(path, image_folder)] * len(file_records)
    return records, roots


class ConversationDataset(Dataset):
    """One item per conversation of one file or several (`read_conversation_files`; an item's index
    counts across them); an unreadable image makes the item None (collate counts it as
    skipped), a conversation that cannot be trained on makes it `Dropped` (counted as dropped):
    one that does not fit `max_length` without cutting an image, or with no target token left.

    `max_length` counts LM positions: each `<image>` as the `num_image_tokens` positions it widens
    to when given (else one), or as its own width when the transform gives one per image
    (any-resolution, `data.anyres_images`) or it stands for a video clip (`clip_transform`, the
    model's; `data.video_frames`). `max_turns` keeps a random subset of that many question/answer
    pairs per visit. Placeholders are checked at construction (`check_image_placeholders`).
    """

    def __init__(self, path: str | Path | Sequence[str | Path], tokenizer: PreTrainedTokenizerBase,
                 template: ChatTemplate, transform: Callable, max_length: int | None = None,
                 max_turns: int | None = None, seed: int = 0, num_image_tokens: int | None = None,
                 image_folder: str | Path | None = None, clip_transform: Callable | None = None) -> None:
        self.records, self.roots = read_conversation_files(path, image_folder, video=clip_transform is not None)
        if num_image_tokens is not None and num_image_tokens < 1:
            raise ValueError(f"num_image_tokens must be >= 1, got {num_image_tokens}")
        self.image_tokens = num_image_tokens or 1
        self.tokenizer, self.template, self.transform, self.max_length = tokenizer, template, transform, max_length
        self.clip_transform = clip_transform
        if max_turns is not None and max_turns < 1:
            raise ValueError(f"max_turns must be >= 1, got {max_turns}")
        self.max_turns = max_turns
        self.seed = seed

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: int | tuple[int, int]) -> dict | Dropped | Unreadable:
        """`key`: an index, or `(index, epoch)` from `ResumableSampler`; the turns sampled for a
        visit depend only on (seed, index, epoch), so they replay exactly after a resume."""
        i, epoch = key if isinstance(key, tuple) else (key, 0)
        rec, root = self.records[i], self.roots[i]
        ok, media = load_images(rec, root, self.transform, self.clip_transform)
        if not ok:
            return Unreadable(str(rec.get("id", i)), first_unreadable(rec, root))
        fields = image_fields(media)
        turns = rec["conversations"]
        if self.max_turns is not None:
            turns = sample_turns(turns, self.max_turns, random.Random(f"{self.seed}-{i}-{epoch}"))
        if not any(IMAGE_TOKEN in t["value"] for t in turns):
            turns = [{**turns[0], "value": with_image_placeholders(turns[0]["value"], len(media))}] + turns[1:]
        try:
            ids, labels = tokenize_conversation(turns, self.tokenizer, self.template, self.max_length,
                                                fields.get("image_widths", self.image_tokens))
        except Unfit as err:
            return Dropped(str(rec.get("id", i)), str(err))
        return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), **fields}


class PromptDataset(Dataset):
    """Single-turn generation prompts over records with optional images (or a video, by
    `clip_transform`); a prompt that does not place its `<image>`s gets one per image (one for a
    clip) before it. `meta` carries the record's index (and the fields named in `meta_keys`) so
    predictions map back to records."""

    def __init__(self, records: list[dict], root: str | Path, prompts: list[str | list[dict]],
                 tokenizer: PreTrainedTokenizerBase, template: ChatTemplate, transform: Callable,
                 meta_keys: tuple[str, ...] = (), clip_transform: Callable | None = None) -> None:
        if len(prompts) != len(records):
            raise ValueError(f"{len(prompts)} prompts for {len(records)} records")
        self.records, self.prompts, self.root = records, prompts, Path(root)
        self.tokenizer, self.template, self.transform, self.meta_keys = tokenizer, template, transform, meta_keys
        self.clip_transform = clip_transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict | None:
        rec = self.records[i]
        ok, media = load_images(rec, self.root, self.transform, self.clip_transform)
        if not ok:
            return None
        prompt = self.prompts[i]
        if isinstance(prompt, list):  # a conversation ending with the question (few-shot)
            ids = tokenize_generation_prompt(prompt, self.tokenizer, self.template)
        else:
            ids = tokenize_prompt(with_image_placeholders(prompt, len(media)), self.tokenizer, self.template,
                                  image=False)
        return {"input_ids": torch.tensor(ids), **image_fields(media),
                "meta": {"index": i, **{k: rec.get(k) for k in self.meta_keys}}}


class QADataset(PromptDataset):
    """`{id, image, question, answer, type}` JSONL for generation-based validation; `image` may be a
    list of paths, or the row has `video` (frame paths, read by `clip_transform`) instead."""

    def __init__(self, path: str | Path, tokenizer: PreTrainedTokenizerBase, template: ChatTemplate,
                 transform: Callable, limit: int | None = None, image_folder: str | Path | None = None,
                 clip_transform: Callable | None = None) -> None:
        path = Path(path)
        records = read_records(path)[:limit]
        for n, rec in enumerate(records):
            missing = {"id", "question", "answer"} - rec.keys()
            if missing:
                raise ValueError(f"{path}: record {n} lacks {sorted(missing)}")
        check_image_placeholders(records, path, video=clip_transform is not None)
        super().__init__(records, image_root(path, image_folder), [r["question"] for r in records], tokenizer,
                         template, transform, meta_keys=("id", "image", "video", "question", "answer", "type"),
                         clip_transform=clip_transform)
        self.path = path
