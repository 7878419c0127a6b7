"""Predictions written by any model, read for scoring or for a submission file.

Field pairs recognised (first one a record has wins): ours `{"id", "prediction"}`, LLaVA's answer
files `{"question_id", "text", ...}` (llava/eval/model_vqa*.py), an EvalAI submission
`{"question_id", "answer"}`; other names are given explicitly. Ids compare as text (`id_key`):
`262148000` from one tool and `"262148000"` from another name the same question.
"""

from __future__ import annotations

from pathlib import Path

from data.conversation_dataset import read_records

KNOWN_FIELDS = (("id", "prediction"), ("question_id", "text"), ("question_id", "answer"))


def id_key(value) -> str:
    """The text an id compares by: ints, integral floats (pandas) and numeric strings agree."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def prediction_fields(record: dict, source: str | Path, id_field: str | None, text_field: str | None) -> tuple[str, str]:
    if id_field or text_field:
        return id_field or "id", text_field or "prediction"
    for pair in KNOWN_FIELDS:
        if all(f in record for f in pair):
            return pair
    raise ValueError(f"{source}: record 0 has none of the field pairs {[list(p) for p in KNOWN_FIELDS]} "
                     f"(it has {sorted(record)}); name them with --id-field and --text-field")


def read_predictions(path: str | Path, id_field: str | None = None,
                     text_field: str | None = None) -> dict[str, str | None]:
    """{id_key: prediction text (None where the model gave none)} from a JSONL or JSON list."""
    records = read_records(path)
    if not records:
        raise ValueError(f"{path}: no predictions")
    id_name, text_name = prediction_fields(records[0], path, id_field, text_field)
    out: dict[str, str | None] = {}
    for n, rec in enumerate(records):
        for name in (id_name, text_name):
            if name not in rec:
                raise ValueError(f"{path}: record {n} has no {name!r} field (its fields: {sorted(rec)})")
        key = id_key(rec[id_name])
        if key in out:
            raise ValueError(f"{path}: id {rec[id_name]!r} has two predictions (records {n} and an earlier one)")
        out[key] = None if rec[text_name] is None else str(rec[text_name])
    return out
