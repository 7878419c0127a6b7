"""Converters from official benchmark files to the project's JSONL eval format.

Ours: one object per line, `{"id", "image", "question", "answer" | "answers", "type"}` for
VQA (no answers for a test split), `{"id", "image", "captions"}` for captioning, `{"id", "image",
"question", "answer", "split"}` for POPE. Image paths are relative to the output file (or absolute).

Sources: VQAv2 questions (+ annotations, absent for test-dev/test), COCO captions JSON (and
LAVIS's `coco_karpathy_*_gt.json`, the same layout without file names), LAVIS's annotation lists
(`coco_karpathy_{train,val,test}.json`), Karpathy's `dataset_coco.json` (one split or several),
POPE's JSON lines. A field a file lacks is an error naming the file, the entry and the field.
"""

from __future__ import annotations

import json
import os
import re
from collections import defaultdict
from pathlib import Path

from data.conversation_dataset import read_json_lines
from data.writers import write_jsonl

KARPATHY_SPLITS = ("train", "restval", "val", "test")
_TRAILING_NUMBER = re.compile(r"(\d+)$")


def _load_json(path: str | Path):
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON: {err}") from None


def _load_list(path: str | Path, key: str) -> list[dict]:
    data = _load_json(path)
    if not isinstance(data, dict) or key not in data:
        raise ValueError(f"{path}: expected a JSON object with a {key!r} list")
    return data[key]


def _field(entry: dict, key: str, source: str | Path, what: str, n: int):
    """entry[key], or an error naming the file, the entry and the missing field (not a KeyError)."""
    if not isinstance(entry, dict) or key not in entry:
        has = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
        raise ValueError(f"{source}: {what} {n} has no {key!r} field (it has {has})")
    return entry[key]


def _image_path(image_dir: str | Path, file_name: str, out: Path) -> str:
    """Relative to the output file's folder, so the JSONL moves with its images."""
    return os.path.relpath(Path(image_dir) / file_name, out.parent.resolve()) if image_dir else file_name


def vqav2_image_pattern(questions: str | Path, data: dict) -> str:
    """COCO's file name for the questions' images: test-dev2015 questions are about test2015 images."""
    subtype = data.get("data_subtype")
    if not subtype:
        raise ValueError(f"{questions}: no 'data_subtype' field to name the images by; pass --image-pattern")
    folder = "test2015" if subtype.startswith("test") else subtype
    return f"COCO_{folder}_{{image_id:012d}}.jpg"


def convert_vqav2(questions: str | Path, annotations: str | Path | None, image_dir: str | Path, out: str | Path,
                  image_pattern: str | None = None) -> int:
    """VQAv2 questions (+ annotations) JSON -> JSONL with the ten human answers and the answer type.
    Without annotations (test-dev, test) the records carry no answers: `chimera eval` predicts them
    and `chimera data vqav2-submission` writes the file EvalAI scores."""
    out = Path(out).resolve()
    data = _load_json(questions)
    if not isinstance(data, dict) or "questions" not in data:
        raise ValueError(f"{questions}: expected a JSON object with a 'questions' list")
    pattern = image_pattern or vqav2_image_pattern(questions, data)
    anns = {}
    if annotations is not None:
        anns = {_field(a, "question_id", annotations, "annotation", n): a
                for n, a in enumerate(_load_list(annotations, "annotations"))}
    rows = []
    for n, q in enumerate(data["questions"]):
        qid = _field(q, "question_id", questions, "question", n)
        row = {"id": qid, "image": _image_path(image_dir, pattern.format(image_id=_field(q, "image_id", questions,
                                                                                           "question", n)), out),
               "question": _field(q, "question", questions, "question", n)}
        if annotations is not None:
            ann = anns.get(qid)
            if ann is None:
                raise ValueError(f"{annotations}: no annotation for question_id {qid}")
            row["answers"] = [_field(a, "answer", annotations, f"question {qid}'s answer", i)
                              for i, a in enumerate(_field(ann, "answers", annotations, "annotation of question", qid))]
            row["type"] = ann.get("answer_type")
        rows.append(row)
    return write_jsonl(out, rows)


def convert_coco_captions(captions: str | Path, image_dir: str | Path, out: str | Path,
                          image_pattern: str | None = None) -> int:
    """COCO captions JSON (`images` + `annotations`) -> one JSONL row per image with all its captions.
    LAVIS's `coco_karpathy_*_gt.json` lists images by id only: `image_pattern` (e.g.
    `COCO_val2014_{image_id:012d}.jpg`, the Karpathy val/test images) names their files."""
    out = Path(out).resolve()
    by_image: dict[int, list[str]] = defaultdict(list)
    for n, a in enumerate(_load_list(captions, "annotations")):
        by_image[_field(a, "image_id", captions, "annotation", n)].append(
            _field(a, "caption", captions, "annotation", n).strip())
    rows = []
    for n, im in enumerate(_load_list(captions, "images")):
        image_id = _field(im, "id", captions, "image", n)
        if not by_image.get(image_id):
            continue
        if image_pattern:
            file_name = image_pattern.format(image_id=image_id)
        elif "file_name" in im:
            file_name = im["file_name"]
        else:
            raise ValueError(f"{captions}: image {n} has no 'file_name' field (it has {sorted(im)}; LAVIS's *_gt.json "
                             "files list ids only): pass --image-pattern, e.g. 'COCO_val2014_{image_id:012d}.jpg'")
        rows.append({"id": image_id, "image": _image_path(image_dir, file_name, out), "captions": by_image[image_id]})
    return write_jsonl(out, rows)


def lavis_image_id(image: str) -> int | str:
    """The COCO id BLIP/LAVIS read off an image path (`val2014/COCO_val2014_000000391895.jpg` -> 391895),
    so ids match their `*_gt.json` files; a path without a trailing number is its own id."""
    m = _TRAILING_NUMBER.search(Path(image).stem)
    return int(m[1]) if m else image


def convert_lavis_captions(annotations: str | Path, image_dir: str | Path, out: str | Path) -> int:
    """LAVIS's caption annotation list (`[{"image", "caption"}]`: one caption per entry in the train
    file, a list per image in val/test) -> one JSONL row per image with all its captions."""
    out = Path(out).resolve()
    entries = _load_json(annotations)
    if not isinstance(entries, list):
        raise ValueError(f"{annotations}: expected a JSON list of {{'image', 'caption'}} entries (LAVIS's layout)")
    by_image: dict[str, list[str]] = {}
    for n, e in enumerate(entries):
        caption = _field(e, "caption", annotations, "entry", n)
        by_image.setdefault(_field(e, "image", annotations, "entry", n), []).extend(
            [c.strip() for c in caption] if isinstance(caption, list) else [caption.strip()])
    rows = [{"id": lavis_image_id(image), "image": _image_path(image_dir, image, out), "captions": caps}
            for image, caps in by_image.items()]
    return write_jsonl(out, rows)


def convert_karpathy(dataset: str | Path, splits: list[str], image_dir: str | Path, out: str | Path) -> int:
    """Karpathy's `dataset_coco.json` (`images: [{filepath, filename, split, sentences: [{raw}], cocoid}]`)
    -> the images of `splits` (train, restval, val, test; LAVIS's train is train + restval), one
    row each with its captions; id is `cocoid` (Flickr's files have only `imgid`)."""
    unknown = sorted(set(splits) - set(KARPATHY_SPLITS))
    if unknown or not splits:
        raise ValueError(f"Karpathy splits are {list(KARPATHY_SPLITS)}; got {list(splits)}")
    out = Path(out).resolve()
    rows = []
    for n, im in enumerate(_load_list(dataset, "images")):
        if _field(im, "split", dataset, "image", n) not in splits:
            continue
        file_name = _field(im, "filename", dataset, "image", n)
        if im.get("filepath"):
            file_name = f"{im['filepath']}/{file_name}"
        caps = [_field(s, "raw", dataset, f"image {n}'s sentence", i).strip()
                for i, s in enumerate(_field(im, "sentences", dataset, "image", n))]
        rows.append({"id": im["cocoid"] if "cocoid" in im else _field(im, "imgid", dataset, "image", n),
                     "image": _image_path(image_dir, file_name, out), "captions": caps})
    if not rows:
        raise ValueError(f"{dataset}: no image in split(s) {list(splits)}")
    return write_jsonl(out, rows)


def convert_pope(pope_files: dict[str, str | Path], image_dir: str | Path, out: str | Path) -> int:
    """POPE JSONL files (`{"question_id", "image", "text", "label"}`, one per split) -> one JSONL."""
    out = Path(out).resolve()
    rows = []
    for split, path in pope_files.items():
        for n, r in enumerate(read_json_lines(path)):  # official files: JSON lines named .json
            qid, image, text, label = (_field(r, k, path, "line", n + 1)
                                       for k in ("question_id", "image", "text", "label"))
            rows.append({"id": f"{split}-{qid}", "image": _image_path(image_dir, image, out),
                         "question": text, "answer": label.strip().lower(), "split": split})
    return write_jsonl(out, rows)
