"""Converters from official benchmark files to the project's JSONL eval format.

Ours: one object per line, `{"id", "image", "question", "answer" | "answers", "type"}` for
VQA, `{"id", "image", "captions"}` for captioning, `{"id", "image", "question", "answer",
"split"}` for POPE. Image paths are relative to the output file (or absolute).
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path

from data.conversation_dataset import read_json_lines
from data.writers import write_jsonl


def _load_json(path: str | Path, key: str) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or key not in data:
        raise ValueError(f"{path}: expected a JSON object with a {key!r} list")
    return data[key]


def _image_path(image_dir: str | Path, file_name: str, out: Path) -> str:
    """Relative to the output file's folder, so the JSONL moves with its images."""
    return os.path.relpath(Path(image_dir) / file_name, out.parent.resolve()) if image_dir else file_name


def convert_vqav2(questions: str | Path, annotations: str | Path, image_dir: str | Path, out: str | Path,
                  image_pattern: str = "COCO_val2014_{image_id:012d}.jpg") -> int:
    """VQAv2 questions + annotations JSON -> JSONL with the ten human answers and the answer type."""
    out = Path(out).resolve()
    anns = {a["question_id"]: a for a in _load_json(annotations, "annotations")}
    rows = []
    for q in _load_json(questions, "questions"):
        ann = anns.get(q["question_id"])
        if ann is None:
            raise ValueError(f"{annotations}: no annotation for question_id {q['question_id']}")
        rows.append({"id": q["question_id"],
                     "image": _image_path(image_dir, image_pattern.format(image_id=q["image_id"]), out),
                     "question": q["question"], "answers": [a["answer"] for a in ann["answers"]],
                     "type": ann.get("answer_type")})
    return write_jsonl(out, rows)


def convert_coco_captions(captions: str | Path, image_dir: str | Path, out: str | Path) -> int:
    """COCO captions JSON (`images` + `annotations`) -> one JSONL row per image with all its captions."""
    out = Path(out).resolve()
    by_image: dict[int, list[str]] = defaultdict(list)
    for a in _load_json(captions, "annotations"):
        by_image[a["image_id"]].append(a["caption"].strip())
    rows = [{"id": im["id"], "image": _image_path(image_dir, im["file_name"], out), "captions": by_image[im["id"]]}
            for im in _load_json(captions, "images") if by_image.get(im["id"])]
    return write_jsonl(out, rows)


def convert_pope(pope_files: dict[str, str | Path], image_dir: str | Path, out: str | Path) -> int:
    """POPE JSONL files (`{"question_id", "image", "text", "label"}`, one per split) -> one JSONL."""
    out = Path(out).resolve()
    rows = []
    for split, path in pope_files.items():
        for r in read_json_lines(path):  # official files: JSON lines named .json
            rows.append({"id": f"{split}-{r['question_id']}", "image": _image_path(image_dir, r["image"], out),
                         "question": r["text"], "answer": r["label"].strip().lower(), "split": split})
    return write_jsonl(out, rows)
