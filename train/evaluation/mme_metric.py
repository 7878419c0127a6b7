"""MME (Fu et al. 2023) scores as its official `eval_tool/calculation.py` computes them (and lmms-eval's
mme/utils.py): per subtask, accuracy over questions and accuracy+ over images (both of an image's
yes/no questions right); a subtask's score is (acc + acc+) * 100; perception and cognition are the
sums of their subtasks' scores.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork",
              "OCR")
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")


def parse_mme_answer(text: str) -> str:
    """"yes" / "no" / "other", as the official `parse_pred_ans`: the whole answer, a lone "y" or "n",
    else "yes" or "no" within its first four characters (after lower-casing and dropping dots)."""
    text = text.lower().strip().replace(".", "")
    if text in ("yes", "no"):
        return text
    if len(text) == 1:
        return {"y": "yes", "n": "no"}.get(text, "other")
    head = text[:4]
    return "yes" if "yes" in head else "no" if "no" in head else "other"


def mme_scores(rows: Iterable[dict]) -> dict[str, float]:
    """rows: {"category", "image" (what pairs the questions: lmms-lab's `question_id`), "correct"} ->
    `<subtask>_acc`, `<subtask>_acc_plus`, `<subtask>_score` (percentages), `perception`, `cognition`
    (sums over the subtasks present) and `total`."""
    by_task: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        by_task[r["category"]][r["image"]].append(bool(r["correct"]))
    unknown = sorted(set(by_task) - set(PERCEPTION) - set(COGNITION))
    if unknown:
        raise ValueError(f"MME subtasks {unknown} are neither perception {list(PERCEPTION)} "
                         f"nor cognition {list(COGNITION)}")
    out: dict[str, float] = {}
    for task, images in sorted(by_task.items()):
        answers = [c for per_image in images.values() for c in per_image]
        acc = 100.0 * sum(answers) / len(answers)
        acc_plus = 100.0 * sum(all(v) for v in images.values()) / len(images)
        out.update({f"{task}_acc": acc, f"{task}_acc_plus": acc_plus, f"{task}_score": acc + acc_plus})
    out["perception"] = sum(out[f"{t}_score"] for t in PERCEPTION if t in by_task)
    out["cognition"] = sum(out[f"{t}_score"] for t in COGNITION if t in by_task)
    out["total"] = out["perception"] + out["cognition"]
    return out
