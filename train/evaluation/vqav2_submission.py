"""The VQAv2 answer file EvalAI scores: `[{"question_id": int, "answer": str}, ...]`.

Answers are processed as EvalAI's own `EvalAIAnswerProcessor` does (LLaVA's and lmms-eval's
submission scripts apply it too): lowercase, commas and question marks dropped, "'s" split off,
then the official VQA normalisation. EvalAI's test-dev phase wants an answer for every test2015
question: given the test2015 questions file, those not predicted get "" (as LLaVA's script does).
"""

from __future__ import annotations

import json
from pathlib import Path

from train.evaluation.predictions import read_predictions
from train.evaluation.vqa_metric import normalize_vqa_answer


def evalai_answer(text: str) -> str:
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    return normalize_vqa_answer(text)


def _question_id(key: str, source) -> int:
    try:
        return int(key)
    except ValueError:
        raise ValueError(f"{source}: id {key!r} is not a VQAv2 question_id (an integer)") from None


def write_vqav2_submission(predictions: str | Path, out: str | Path, questions: str | Path | None = None,
                           id_field: str | None = None, text_field: str | None = None) -> tuple[int, int]:
    """Writes `out`; returns (questions answered, entries written). `predictions`: `chimera eval`'s
    vqa.jsonl, a LLaVA answer file, or the named fields; a skipped sample's answer is ""."""
    answers = {_question_id(k, predictions): evalai_answer(v or "") for k, v in read_predictions(
        predictions, id_field, text_field).items()}
    order = list(answers)
    if questions is not None:
        data = json.loads(Path(questions).read_text()) if Path(questions).is_file() else None
        if data is None:
            raise FileNotFoundError(f"questions file not found: {questions}")
        if not isinstance(data, dict) or "questions" not in data:
            raise ValueError(f"{questions}: expected a JSON object with a 'questions' list (a VQAv2 questions file)")
        order = []
        for n, q in enumerate(data["questions"]):
            if not isinstance(q, dict) or "question_id" not in q:
                raise ValueError(f"{questions}: question {n} has no 'question_id' field")
            order.append(q["question_id"])
        unknown = sorted(set(answers) - set(order))
        if unknown:
            raise ValueError(f"{predictions}: {len(unknown)} question_ids are not in {questions} (e.g. {unknown[0]})")
    entries = [{"question_id": qid, "answer": answers.get(qid, "")} for qid in order]
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(entries))
    return len(answers), len(entries)
