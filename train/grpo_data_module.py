"""Data for the `grpo` stage: prompts with reference answers, each repeated into its group."""

from __future__ import annotations

from data.collate import Collator
from data.prompt_answers import GroupCollator, PromptAnswerDataset
from train.data_module import ConversationDataModule


class PromptDataModule(ConversationDataModule):
    """`train_json`: LLaVA conversation JSON (each human/gpt pair one prompt) or QA JSONL
    (`question, answer, type`); `batch_size` counts prompts, each sampled `group_size` times (the
    module's). Validation is the same generation-based QA as for supervised stages. `types`: train on
    questions of these types only (default: every question in the file)."""

    several_train_files = False

    def __init__(self, *args, types: list[str] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.types = types

    def build_train_set(self, model, template):
        return PromptAnswerDataset(self.train_json, model.tokenizer, template, model.vision.transform(train=False),
                                   image_folder=self.image_folder, types=self.types)

    def train_collator(self):
        group_size = self.trainer.lightning_module.group_size
        return GroupCollator(Collator(self.pad_id, left_pad=True, placeholders=self.placeholders), group_size)
