"""Reading an eval set from any of the layouts it ships in, as records under our field names.

Layouts: our JSONL (or a JSON list); a parquet file (lmms-lab datasets on the Hub); an arrow
file (a `datasets` loading script's cache, `<builder>-<split>.arrow`); a `save_to_disk` directory
(`state.json` + `data-*.arrow`). A file named `X-00000-of-00003.ext` brings its sibling shards.
Tables are read with pyarrow alone: nothing is converted or cached on the way.

Images may be paths (relative to the data's folder), bytes, or `datasets.Image` structs
(`{"bytes", "path"}`). Embedded bytes are written once per content to `image_dir` when a model
needs pixels; without `image_dir` (scoring predictions) a record keeps the image's stored name.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from data.conversation_dataset import read_records
from train.evaluation.columns import map_record, source_columns

_SHARD = re.compile(r"^(?P<stem>.+)-\d{5}-of-(?P<total>\d{5})$")
_IMAGE_SUFFIX = {b"\x89PNG": ".png", b"\xff\xd8\xff": ".jpg", b"GIF8": ".gif", b"RIFF": ".webp", b"BM": ".bmp"}


@dataclass
class TaskData:
    """Records under our field names and the folder their relative image paths resolve against."""

    records: list[dict]
    root: Path


def data_root(path: str | Path) -> Path:
    """Where a data file's relative image paths resolve: a dataset folder itself, else the file's folder."""
    path = Path(path)
    return path if path.is_dir() else path.parent


def read_task_data(path: str | Path, task: str, limit: int | None = None,
                   image_dir: str | Path | None = None) -> TaskData:
    path = Path(path)
    if path.is_dir():
        return _from_table(_read_directory(path), path, task, limit, image_dir)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    if path.suffix == ".parquet":
        return _from_table(_read_parquet(path), path, task, limit, image_dir)
    if path.suffix == ".arrow":
        return _from_table(_read_arrow_files(shard_siblings(path)), path, task, limit, image_dir)
    try:
        raw = read_records(path)[:limit]
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text; eval data is .jsonl/.json, .parquet, .arrow "
                         "or a `datasets` save_to_disk directory") from None
    fields = source_columns(task, sorted({k for r in raw for k in r}), str(path))
    return TaskData([_with_image(map_record(r, fields), image_dir) for r in raw], data_root(path))


def shard_siblings(path: Path) -> list[Path]:
    """`X-00001-of-00003.ext` -> all three shards in order (one missing is an error); else [path]."""
    m = _SHARD.match(path.stem)
    if not m:
        return [path]
    total = int(m["total"])
    shards = [path.with_name(f"{m['stem']}-{i:05d}-of-{total:05d}{path.suffix}") for i in range(total)]
    missing = [s.name for s in shards if not s.is_file()]
    if missing:
        raise FileNotFoundError(f"{path}: shard files missing beside it: {missing}")
    return shards


def _read_parquet(path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = []
    for shard in shard_siblings(path):
        try:
            tables.append(pq.read_table(shard))
        except pa.ArrowInvalid as err:
            raise ValueError(f"{shard}: not a parquet file ({err})") from None
    return pa.concat_tables(tables)


def _read_arrow_files(paths: list[Path]):
    """Arrow stream files as `datasets` writes them (save_to_disk and its cache)."""
    import pyarrow as pa

    tables = []
    for p in paths:
        try:
            tables.append(pa.ipc.open_stream(pa.memory_map(str(p))).read_all())
        except pa.ArrowInvalid as err:
            raise ValueError(f"{p}: not an arrow file as `datasets` writes it ({err})") from None
    return pa.concat_tables(tables)


def _read_directory(path: Path):
    if (path / "dataset_dict.json").is_file():
        splits = json.loads((path / "dataset_dict.json").read_text()).get("splits", [])
        raise ValueError(f"{path}: a DatasetDict with splits {splits}; give one split's folder, e.g. {path / splits[0]}"
                         if splits else f"{path}: a DatasetDict without splits")
    if (path / "state.json").is_file():
        files = [path / f["filename"] for f in json.loads((path / "state.json").read_text())["_data_files"]]
        return _read_arrow_files(files)
    arrows = sorted(path.glob("*.arrow"))
    if arrows:
        groups = sorted({_SHARD.sub(r"\g<stem>", a.stem) for a in arrows})
        if len(groups) > 1:
            raise ValueError(f"{path}: holds several splits ({', '.join(groups)}); give one split's .arrow file")
        return _read_arrow_files(arrows)
    raise ValueError(f"{path}: a folder without state.json or .arrow files (not a `datasets` save_to_disk "
                     "directory or cache); give a .jsonl, .parquet or .arrow file")


def _from_table(table, source: Path, task: str, limit: int | None, image_dir) -> TaskData:
    fields = source_columns(task, table.column_names, str(source))
    if limit is not None:
        table = table.slice(0, limit)
    image_column = fields.get("image")
    if image_column and image_dir is None:  # no pixels needed: never copy the bytes out of the table
        table = table.set_column(table.column_names.index(image_column), image_column,
                                 _stored_names(table.column(image_column)))
    rest = table.drop_columns([image_column]) if image_column else table
    records = []
    for i, raw in enumerate(rest.to_pylist()):  # images one at a time: a split's bytes never all in memory
        rec = map_record(raw, fields)
        if image_column:  # a record of a table with images keeps the key, even when its image has no name
            rec["image"] = table.column(image_column)[i].as_py()
        records.append(_with_image(rec, image_dir))
    return TaskData(records, data_root(source))


def _stored_names(column):
    """An image column as the names its values carry: a `datasets.Image` struct's `path`, a path
    as it is, nothing for raw bytes."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if pa.types.is_struct(column.type) and column.type.get_field_index("path") >= 0:
        return pc.struct_field(column, "path")
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return column
    return pa.nulls(len(column), pa.string())


def _with_image(rec: dict, image_dir) -> dict:
    if "image" in rec:
        image = rec["image"]
        rec["image"] = [image_reference(x, image_dir) for x in image] if isinstance(image, list) \
            else image_reference(image, image_dir)
    return rec


def image_reference(value, image_dir: str | Path | None) -> str | None:
    """A path for an image value: a path as it is; bytes (or a `datasets.Image` struct's bytes)
    written to `image_dir/<sha256[:16]><ext>`, or, without `image_dir`, the struct's stored name."""
    if isinstance(value, str) or value is None:
        return value
    data, name = (value.get("bytes"), value.get("path")) if isinstance(value, dict) else (value, None)
    if data is None:
        return name
    if not isinstance(data, bytes):
        raise ValueError(f"image value of type {type(data).__name__}: expected a path, bytes or {{'bytes', 'path'}}")
    if image_dir is None:
        return name
    suffix = next((s for magic, s in _IMAGE_SUFFIX.items() if data.startswith(magic)), ".img")
    out = Path(image_dir) / f"{hashlib.sha256(data).hexdigest()[:16]}{suffix}"
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(data)
    return str(out.resolve())
