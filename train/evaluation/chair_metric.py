"""CHAIR object hallucination in captions (Rohrbach et al. 2018, "Object Hallucination in Image Captioning").

Objects a caption mentions are found through a synonym table `{class: [word or phrase, ...]}`:
lowercased word tokens are matched greedily, longest phrase first (CHAIR's "double words" such as
"motor bike", here phrases of any length), a phrase's last word also in its regular singular form
(so "circles" and "red circles" match "circle" and "red circle"; irregular plurals such as
"people" or "knives" are listed in the table, as CHAIR's own list does). Every mention counts,
repeats included, as in CHAIR's `caption_to_words` and lmms-eval's `coco_cap_chair`:
  CHAIR-i = hallucinated mentions / all mentions        (mentions of classes not in the image)
  CHAIR-s = captions with >= 1 hallucination / captions
  recall  = ground-truth classes mentioned / ground-truth classes   (lmms-eval's `coco_cap_recall`)
Values are fractions (lmms-eval prints percentages).

Synonym file format (JSON): `{"dog": ["dog", "puppy"], "motorcycle": ["motor bike", "scooter"]}`;
a class name is always one of its own synonyms; a word or phrase belongs to one class only (to keep
"hot dog" from counting as a dog, list it under another class: the longer phrase wins). CHAIR's
COCO list (80 classes) is not shipped: pass it as such a file.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def singular(word: str) -> str:
    """English plural -> singular for regular nouns: boxes -> box, berries -> berry, dogs -> dog (bus stays)."""
    if len(word) > 3 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith(("ses", "xes", "zes", "ches", "shes")):
        return word[:-2]
    if len(word) > 2 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


class SynonymTable:
    """Word/phrase -> object class, with phrases matched longest first."""

    def __init__(self, synonyms: Mapping[str, Iterable[str]], source: str = "synonym table"):
        self.phrase_class: dict[tuple[str, ...], str] = {}
        for cls, words in synonyms.items():
            if isinstance(words, str) or not isinstance(words, Iterable):
                raise ValueError(f"{source}: class {cls!r} must map to a list of synonyms, got {words!r}")
            for phrase in [cls, *words]:
                key = tuple(_WORD.findall(str(phrase).lower()))
                if not key:
                    raise ValueError(f"{source}: class {cls!r} has an empty synonym {phrase!r}")
                if self.phrase_class.get(key, cls) != cls:
                    raise ValueError(f"{source}: {phrase!r} is a synonym of both "
                                     f"{self.phrase_class[key]!r} and {cls!r}")
                self.phrase_class[key] = cls
        if not self.phrase_class:
            raise ValueError(f"{source}: no classes")
        self.classes = frozenset(self.phrase_class.values())
        self.longest = max(len(k) for k in self.phrase_class)

    def mentions(self, text: str) -> list[str]:
        """The classes a text mentions, once per mention, in order."""
        words = _WORD.findall(text.lower())
        out, i = [], 0
        while i < len(words):
            for n in range(min(self.longest, len(words) - i), 0, -1):
                phrase = tuple(words[i:i + n])
                cls = self.phrase_class.get(phrase) or self.phrase_class.get(phrase[:-1] + (singular(phrase[-1]),))
                if cls is not None:
                    out.append(cls)
                    i += n
                    break
            else:
                i += 1
        return out


def load_synonyms(path: str | Path) -> SynonymTable:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CHAIR synonym file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not JSON ({err}); expected {{class: [synonym, ...]}}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object {{class: [synonym, ...]}}, got {type(data).__name__}")
    return SynonymTable(data, str(path))


def chair_scores(mentioned: Sequence[Sequence[str]], truth: Sequence[set[str]]) -> dict[str, float]:
    """Per caption: the classes it mentions (repeats counted) and the image's ground-truth classes."""
    mentions = hallucinated = bad_captions = found = total_truth = 0
    for classes, gt in zip(mentioned, truth, strict=True):
        wrong = sum(c not in gt for c in classes)
        mentions += len(classes)
        hallucinated += wrong
        bad_captions += wrong > 0
        found += len(gt & set(classes))
        total_truth += len(gt)
    n = len(truth)
    if n == 0:
        raise ValueError("no captions to score")
    return {"chair_s": bad_captions / n, "chair_i": hallucinated / mentions if mentions else 0.0,
            "recall": found / total_truth if total_truth else 0.0, "mentions": float(mentions),
            "hallucinated": float(hallucinated)}
