"""`chair`: CHAIR-s / CHAIR-i object hallucination of generated captions (`chair_metric.py`).

An image's ground-truth classes are its `objects` (lmms-lab-style `gt_object`, as lmms-eval's
`coco_cap_chair` task reads `tsunghanwu/mscoco_chair`) together with the classes its reference
captions mention (CHAIR unions COCO's segmentation labels with the caption mentions); the
per-sample `reference` is that class list. The default synonym table is the Shapes world's
(`shapes_synonyms`: a class per colour+shape pair, "red circle"); for COCO pass CHAIR's table as a
JSON file (`--chair-synonyms FILE`, format in `chair_metric.py`). Prompt: lmms-eval's
`coco_cap_chair/utils.py:coco_cap_chair_doc_to_text` (LLaVA-1.5 has no CHAIR script).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from data.shapes import DEFAULT_COLORS, SHAPE_NAMES
from train.evaluation.chair_metric import SynonymTable, chair_scores, load_synonyms
from train.evaluation.tasks import _require

DETAIL_PROMPT = "Please describe this image in detail."
# words a Shapes caption may use for a shape besides its name (plurals are matched by rule)
SHAPE_SYNONYMS = {"circle": ("disc", "disk")}


def shapes_synonyms(colors=tuple(DEFAULT_COLORS), shapes=SHAPE_NAMES) -> dict[str, list[str]]:
    """{"red circle": ["red circle", "red disc", "red disk"], "red square": ["red square"], ...}."""
    return {f"{c} {s}": [f"{c} {w}" for w in (s, *SHAPE_SYNONYMS.get(s, ()))] for c in colors for s in shapes}


@dataclass
class ChairTask:
    name: str = "chair"
    default_file: str = "val_captions.jsonl"
    prompt_template: str = DETAIL_PROMPT
    prompt_suffix: str = ""
    max_new_tokens: int = 512
    synonyms_file: str | None = None
    table: SynonymTable = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.table = load_synonyms(self.synonyms_file) if self.synonyms_file else SynonymTable(shapes_synonyms())

    def check(self, records: list[dict], source: str) -> None:
        _require(records, {"id", "image"}, self.name, source)
        for rec in records:
            unknown = [o for o in self._objects(rec) if o not in self.table.classes and not self.table.mentions(o)]
            if unknown:
                raise ValueError(f"{source}: record {rec['id']!r} lists objects {unknown} that are not in the synonym "
                                 "table (pass --chair-synonyms FILE)")
            if not self.references(rec):
                raise ValueError(f"{source}: record {rec['id']!r} has no ground-truth objects ('objects'/'gt_object', "
                                 "or reference captions that mention one)")

    def prompt(self, rec: dict) -> str:
        return self.prompt_template + self.prompt_suffix

    @staticmethod
    def _objects(rec: dict) -> list[str]:
        value = rec.get("objects") or []
        return [value] if isinstance(value, str) else [str(o) for o in value]

    def references(self, rec: dict) -> list[str]:
        """The image's ground-truth classes, sorted."""
        truth = set()
        for obj in self._objects(rec):  # a class name, or a synonym of one ("puppy")
            truth.update([obj] if obj in self.table.classes else self.table.mentions(obj))
        captions = rec.get("captions", rec.get("caption")) or []
        for text in [captions] if isinstance(captions, str) else captions:
            truth.update(self.table.mentions(str(text)))
        return sorted(truth)

    def score_sample(self, prediction: str, rec: dict) -> float:
        """1 when the caption mentions an object the image lacks (its part of CHAIR-s)."""
        truth = set(self.references(rec))
        return float(any(c not in truth for c in self.table.mentions(prediction)))

    def aggregate(self, records: list[dict]) -> dict[str, float]:
        mentioned = [self.table.mentions(r["prediction"]) for r in records]
        truth = [set(r["reference"]) if isinstance(r["reference"], list) else {r["reference"]} for r in records]
        for r, m, t in zip(records, mentioned, truth):
            r["mentioned"], r["hallucinated"] = m, sorted({c for c in m if c not in t})
        return chair_scores(mentioned, truth)


CHAIR_TASKS = {"chair": ChairTask}
