"""Where each task's record fields come from in a data file: the one table per task.

Each field lists the column names it is read from, first found wins: ours first (so our JSONL
reads as it is), then the lmms-lab datasets' names that lmms-eval uses (lmms-lab/VQAv2:
`question_id`, `answers` as `[{"answer", ...}]`, `answer_type`; lmms-lab/POPE: `category` is the
split; lmms-lab/COCO-Caption: `answer` is the list of captions). Columns not named here are kept
as they are. `REQUIRED` fields must have a column: a file without one is an error naming the
file, the field and the names looked for.
"""

from __future__ import annotations

_CAPTIONS = {"id": ("id", "question_id", "image_id"), "image": ("image",), "captions": ("captions", "answer"),
             "caption": ("caption",)}

TASK_COLUMNS: dict[str, dict[str, tuple[str, ...]]] = {
    "vqa": {"id": ("id", "question_id"), "image": ("image",), "question": ("question",), "answers": ("answers",),
            "answer": ("answer", "multiple_choice_answer"), "type": ("type", "answer_type")},
    "pope": {"id": ("id", "question_id"), "image": ("image",), "question": ("question",), "answer": ("answer",),
             "split": ("split", "category")},
    "caption": _CAPTIONS,
    "retrieval": _CAPTIONS,
    "zeroshot": {"id": ("id",), "image": ("image",), "label": ("label",)},
    # lmms-lab/VQAv2, GQA (testdev_balanced_instructions + the `image` lmms-eval joins in by imageId),
    # textvqa, VizWiz-VQA (`category`: unanswerable, yes/no, number, other), OK-VQA
    "vqav2": {"id": ("id", "question_id"), "image": ("image",), "question": ("question",), "answers": ("answers",),
              "answer": ("answer", "multiple_choice_answer"), "type": ("type", "answer_type")},
    "gqa": {"id": ("id", "question_id"), "image": ("image",), "question": ("question",), "answer": ("answer",)},
    "textvqa": {"id": ("id", "question_id"), "image": ("image",), "question": ("question",), "answers": ("answers",),
                "ocr_tokens": ("ocr_tokens",)},
    "vizwiz": {"id": ("id", "question_id"), "image": ("image",), "question": ("question",), "answers": ("answers",),
               "type": ("type", "category")},
    "okvqa": {"id": ("id", "question_id"), "image": ("image",), "question": ("question",), "answers": ("answers",)},
    # lmms-lab/COCO-Caption2017 (`answer`), NoCaps (`annotations_captions`), flickr30k (`caption`, a list)
    "coco_caption": _CAPTIONS,
    "nocaps": {"id": ("id", "image_id"), "image": ("image",), "captions": ("captions", "annotations_captions"),
               "caption": ("caption",)},
    "flickr30k": {"id": ("id", "img_id"), "image": ("image",), "captions": ("captions", "caption")},
    # tsunghanwu/mscoco_chair (lmms-eval's coco_cap_chair): `gt_object` lists the image's classes
    "chair": {"id": ("id", "question_id", "image_id"), "image": ("image",), "objects": ("objects", "gt_object"),
              "captions": ("captions", "answer"), "caption": ("caption",)},
    # multiple choice (tasks_multiple_choice.py, tasks_mmmu_mme.py); lmms-lab/ScienceQA and MME rows
    # get their position as id (MME's question_id names the image its two questions share)
    "scienceqa_img": {"id": ("id",), "image": ("image",), "question": ("question",), "choices": ("choices",),
                      "answer": ("answer",), "hint": ("hint",), "subject": ("subject",)},
    "mmbench": {"id": ("id", "index"), "image": ("image",), "question": ("question",), "hint": ("hint",),
                **{c: (c,) for c in "ABCDE"}, "answer": ("answer",), "category": ("category",),
                "l2_category": ("l2_category", "L2-category")},
    "seed_bench": {"id": ("id", "question_id"), "image": ("image",), "question": ("question",),
                   **{f"choice_{c}": (f"choice_{c}",) for c in "abcd"}, "answer": ("answer",),
                   "data_type": ("data_type",), "question_type_id": ("question_type_id",)},
    "mmmu": {"id": ("id",), "image": ("image", "image_1"), "question": ("question",), "options": ("options",),
             "answer": ("answer",), "question_type": ("question_type",)},
    "mmstar": {"id": ("id", "index"), "image": ("image",), "question": ("question",), "answer": ("answer",),
               "category": ("category",), "l2_category": ("l2_category",)},
    "mme": {"id": ("id",), "pair": ("pair", "question_id"), "image": ("image",), "question": ("question",),
            "answer": ("answer",), "category": ("category",)},
}

REQUIRED: dict[str, tuple[str, ...]] = {
    "vqa": ("id", "question"),  # no answers: a test split (VQAv2 test-dev), predictions only
    "pope": ("id", "question", "answer"),
    "caption": ("id", "image"),
    "retrieval": ("id", "image"),
    "zeroshot": ("id", "image", "label"),
    "vqav2": ("id", "question"), "gqa": ("id", "question"), "textvqa": ("id", "question"),
    "vizwiz": ("id", "question"), "okvqa": ("id", "question"),
    "coco_caption": ("id", "image"), "nocaps": ("id", "image"), "flickr30k": ("id", "image"), "chair": ("id", "image"),
    "scienceqa_img": ("question", "choices", "answer"),
    "mmbench": ("id", "question", "A", "B"),  # no answer: the test split, predictions only
    "seed_bench": ("id", "question", "choice_a", "choice_b", "choice_c", "choice_d", "answer"),
    "mmmu": ("id", "question", "question_type"),
    "mmstar": ("id", "question", "answer"),
    "mme": ("pair", "question", "answer", "category"),
}


def source_columns(task: str, columns: list[str], source: str) -> dict[str, str]:
    """{our field: the file's column} for the fields this file has; a required one missing is an error."""
    table = TASK_COLUMNS[task]
    found = {f: next(c for c in names if c in columns) for f, names in table.items() if any(c in columns for c in names)}
    for field in REQUIRED[task]:
        if field not in found:
            looked = " or ".join(repr(c) for c in table[field])
            raise ValueError(f"{source}: no {looked} column (the {task!r} task's {field!r} field); "
                             f"it has {sorted(columns)}")
    return found


def answer_texts(value) -> list | None:
    """An answers list as text: lmms-lab/VQAv2 stores `[{"answer": ...}, ...]`."""
    if not isinstance(value, list):
        return value
    return [a["answer"] if isinstance(a, dict) and "answer" in a else a for a in value]


def map_record(raw: dict, fields: dict[str, str]) -> dict:
    """A record under our field names; a None value counts as absent (a test split's empty answers)."""
    renamed = set(fields.values()) - set(fields)
    rec = {k: v for k, v in raw.items() if k not in renamed and v is not None}
    for field, column in fields.items():
        value = raw.get(column)
        if value is None:
            rec.pop(field, None)
        else:
            rec[field] = answer_texts(value) if field == "answers" else value
    return rec
