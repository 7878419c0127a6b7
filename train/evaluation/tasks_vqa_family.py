"""The VQA family of LLaVA-1.5's benchmark table: VQAv2, GQA, TextVQA, VizWiz, plus OK-VQA.

Prompts follow LLaVA-1.5's question files (`playground/data/eval/*/llava_*.jsonl`, run by
`scripts/v1_5/eval/{vqav2,gqa,textvqa,vizwiz}.sh`; the suffixes are listed in its
`docs/Evaluation.md` and repeated in lmms-eval's task YAMLs as `post_prompt`):
  VQAv2, GQA, OK-VQA  "<question>\nAnswer the question using a single word or phrase."
  TextVQA             "<question>\nReference OCR token: <tok>, <tok>, ...\nAnswer the question using ..."
                      (the OCR line only when the image has OCR tokens; LLaVA's `llava_textvqa_val_v051_ocr.jsonl`,
                      which `llava/eval/eval_textvqa.py:prompt_processor` parses back)
  VizWiz              "<question>\nWhen the provided information is insufficient, respond with
                      'Unanswerable'.\nAnswer the question using a single word or phrase."
OK-VQA is not in LLaVA-1.5's table; lmms-eval's `ok_vqa` YAML reuses VizWiz's suffix, we keep
the plain short-answer one (`--prompt-suffix okvqa=...` changes it).

Scoring: VQAv2, VizWiz (whose "unanswerable" is an ordinary answer among the ten) and OK-VQA by
`vqa_metric.vqa_accuracy`; TextVQA by the same soft accuracy over EvalAI's answer processor
(`llava/eval/m4c_evaluator.py:TextVQAAccuracyEvaluator`, lmms-eval `textvqa/utils.py`);
GQA by `gqa_metric.gqa_match`. A split without answers (test-dev) is predicted, not scored;
`vqav2`'s predictions become EvalAI's file with `chimera data vqav2-submission`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from train.evaluation.gqa_metric import gqa_match
from train.evaluation.tasks import SHORT_ANSWER, VQATask
from train.evaluation.vqa_metric import vqa_accuracy
from train.evaluation.vqav2_submission import evalai_answer

UNANSWERABLE = "\nWhen the provided information is insufficient, respond with 'Unanswerable'."
OCR_LINE = "\nReference OCR token: "


@dataclass
class VQAv2Task(VQATask):
    """VQAv2 (val: scored; test-dev: predicted for EvalAI), per `answer_type`."""

    name: str = "vqav2"
    default_file: str = "vqav2_val.jsonl"
    max_new_tokens: int = 16  # lmms-eval's vqav2 template
    type_groups: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class GQATask(VQATask):
    """GQA testdev-balanced: one answer per question, exact match after `normalize_gqa_answer`."""

    name: str = "gqa"
    default_file: str = "gqa_testdev_balanced.jsonl"
    max_new_tokens: int = 16  # lmms-eval's gqa.yaml
    type_groups: dict[str, list[str]] = field(default_factory=dict)

    def score_sample(self, prediction: str, rec: dict) -> float:
        return max(gqa_match(prediction, ref) for ref in self.references(rec))


@dataclass
class TextVQATask(VQATask):
    """TextVQA val: ten answers, soft VQA accuracy over EvalAI's answer processing; OCR tokens in the prompt."""

    name: str = "textvqa"
    default_file: str = "textvqa_val.jsonl"
    max_new_tokens: int = 16
    ocr_in_prompt: bool = True
    type_groups: dict[str, list[str]] = field(default_factory=dict)

    def prompt(self, rec: dict) -> str:
        tokens = rec.get("ocr_tokens") or []
        ocr = OCR_LINE + ", ".join(str(t) for t in tokens) if self.ocr_in_prompt and tokens else ""
        return self.prompt_template.format(question=rec["question"]) + ocr + self.prompt_suffix

    def score_sample(self, prediction: str, rec: dict) -> float:
        return vqa_accuracy(prediction, self.references(rec), normalize=evalai_answer)


@dataclass
class VizWizTask(VQATask):
    """VizWiz-VQA val: ten answers, "unanswerable" among them; accuracy per answer type (`category`)."""

    name: str = "vizwiz"
    default_file: str = "vizwiz_val.jsonl"
    prompt_suffix: str = UNANSWERABLE + SHORT_ANSWER
    max_new_tokens: int = 16
    type_groups: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class OKVQATask(VQATask):
    """OK-VQA val2014: ten answers (five annotators, each twice), VQA accuracy."""

    name: str = "okvqa"
    default_file: str = "okvqa_val.jsonl"
    max_new_tokens: int = 16
    type_groups: dict[str, list[str]] = field(default_factory=dict)


VQA_FAMILY_TASKS = {"vqav2": VQAv2Task, "gqa": GQATask, "textvqa": TextVQATask, "vizwiz": VizWizTask,
                    "okvqa": OKVQATask}
