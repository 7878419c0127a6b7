"""DataModule for conversation training + QA validation; tokenizer, template and image
transform come from the model being trained, so the data config never repeats them."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from torch.utils.data import DataLoader

from data.collate import Collator
from data.conversation_dataset import ConversationDataset, QADataset
from data.image_placeholders import ImagePlaceholders
from data.packing import PackingCollator
from data.preference_dataset import PreferenceCollator, PreferenceDataset
from data.sampling import ResumableSampler
from models.llava import LLaVA


def image_placeholders(model) -> ImagePlaceholders | None:
    """How collators widen `<image>` for `model`: a LLaVA reads its image tokens from the sequence;
    None for a Flamingo, which keeps one `<image>` and attends to images by cross-attention."""
    return model.image_placeholders if isinstance(model, LLaVA) else None


def image_transform(model, train: bool):
    """PIL image -> what a dataset item holds for `model`: its LLaVA's (any-resolution views when it
    has a grid), else the tower's square tensor."""
    return model.image_transform(train) if isinstance(model, LLaVA) else model.vision.transform(train=train)


def clip_transform(model, train: bool):
    """Video frames -> a clip for a LLaVA that pools them (`LLaVA.clip_transform`); None for a model
    that reads no video (datasets then refuse video records at construction)."""
    return model.clip_transform(train) if isinstance(model, LLaVA) else None


def prompt_transforms(model) -> dict:
    """How prompts read their media for `model`, wherever prompts are answered (validation, `chimera eval`,
    `chimera generate`, `EvalAtFitEnd`): images by its `image_transform` (any-resolution views and sizes),
    video clips by its `clip_transform`; the keyword arguments of `PromptDataset` and `QADataset`."""
    return {"transform": image_transform(model, train=False), "clip_transform": clip_transform(model, train=False)}


def prompt_collator(model, left_pad: bool = True) -> Collator:
    """Batches of prompt items for `model`, each `<image>` widened to its placeholders: left-padded for
    generation, right-padded to score continuations (`--mc-mode loglik`)."""
    return Collator(model.tokenizer.pad_token_id, left_pad=left_pad, placeholders=image_placeholders(model))


def image_width(model) -> int | None:
    """LM positions one `<image>` takes, as the token budget `max_length` counts it; None: one."""
    placeholders = image_placeholders(model)
    return None if placeholders is None else placeholders.width


def train_files(train_json: str | list[str], several: bool, reader: str) -> list[tuple[str, str]]:
    """(config key, path) of each training file: `train_json` itself, or `train_json[k]` of a list;
    a list is refused in one line where the reader takes one file (`several` False), and so is an
    empty one."""
    if isinstance(train_json, (str, Path)):
        return [("train_json", train_json)]
    if not several:
        raise ValueError(f"data.train_json: {reader} reads one file, got a list of {len(train_json)}")
    if not train_json:
        raise ValueError("data.train_json: an empty list names no training file")
    return [(f"train_json[{k}]", path) for k, path in enumerate(train_json)]


class ConversationDataModule(L.LightningDataModule):
    """`pack_length`: pack each training batch's conversations into rows of at most this many
    LM positions (`data.packing`; LLaVA-style models), instead of padding every sample to the longest.
    `image_folder` / `val_image_folder`: where the JSON's relative image paths resolve (LLaVA's
    `--image_folder`, e.g. the folder holding `coco/`, `gqa/`, ... for `llava_v1_5_mix665k.json`);
    by default each file's own folder. `train_json`: one file, or a list whose records train as one
    set, in the order given (e.g. `[train.json, train_video.json]`); subclasses whose datasets read
    one file say so with `several_train_files = False`."""

    several_train_files = True

    def __init__(
        self,
        train_json: str | list[str],
        val_qa: str | None = None,
        batch_size: int = 32,
        eval_batch_size: int = 64,
        num_workers: int = 1,
        max_length: int | None = 1024,
        max_turns: int | None = None,
        max_val_samples: int | None = None,
        type_groups: dict[str, list[str]] | None = None,
        seed: int = 0,
        pack_length: int | None = None,
        image_folder: str | None = None,
        val_image_folder: str | None = None,
    ) -> None:
        super().__init__()
        for name, path in (*train_files(train_json, self.several_train_files, type(self).__name__),
                           ("val_qa", val_qa)):
            if path is not None and not Path(path).is_file():
                raise FileNotFoundError(
                    f"data.{name}: {path} does not exist (generate it with `chimera data ...`)"
                )
        for name, folder in (("image_folder", image_folder), ("val_image_folder", val_image_folder)):
            if folder is not None and not Path(folder).is_dir():
                raise FileNotFoundError(f"data.{name}: {folder} is not a folder")
        self.image_folder, self.val_image_folder = image_folder, val_image_folder
        self.train_json, self.val_qa = train_json, val_qa
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size, num_workers
        self.max_length, self.max_val_samples, self.max_turns = max_length, max_val_samples, max_turns
        self.type_groups = type_groups or {}
        self.seed, self.pack_length = seed, pack_length
        self._resume: dict | None = None

    def setup(self, stage: str | None = None) -> None:
        module = self.trainer.lightning_module
        model, template = module.model, module.template
        module.type_groups = self.type_groups
        self.pad_id = model.tokenizer.pad_token_id
        self.placeholders = image_placeholders(model)
        self.packer = self.build_packer(model)
        self.train_set = self.build_train_set(model, template)
        self.val_set = None
        if self.val_qa:
            self.val_set = QADataset(self.val_qa, model.tokenizer, template, limit=self.max_val_samples,
                                     image_folder=self.val_image_folder, **prompt_transforms(model))
        self.val_collator = prompt_collator(model)

    def build_packer(self, model) -> PackingCollator | None:
        if self.pack_length is None:
            return None
        if not isinstance(model, LLaVA):
            raise ValueError(f"data.pack_length: packing needs a LLaVA-style model (images spliced into the "
                             f"sequence); {type(model).__name__} attends to images by cross-attention")
        return PackingCollator(model.tokenizer.pad_token_id, model.image_placeholders, self.pack_length)

    def build_train_set(self, model, template):
        return ConversationDataset(self.train_json, model.tokenizer, template, image_transform(model, train=True),
                                   self.max_length, max_turns=self.max_turns,
                                   num_image_tokens=image_width(model), image_folder=self.image_folder,
                                   clip_transform=clip_transform(model, train=True))

    def train_collator(self):
        return self.packer or Collator(self.pad_id, placeholders=self.placeholders)

    def _loader(self, dataset, batch_size: int, shuffle: bool, collate) -> DataLoader:
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          collate_fn=collate, persistent_workers=self.num_workers > 0, drop_last=False)

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        self.sampler = ResumableSampler(len(self.train_set), seed=self.seed, num_replicas=trainer.world_size,
                                        rank=trainer.global_rank)
        if self._resume is not None:
            self.sampler.resume_at(**self._resume)
            self._resume = None
        return DataLoader(self.train_set, batch_size=self.batch_size, sampler=self.sampler,
                          num_workers=self.num_workers, collate_fn=self.train_collator(),
                          persistent_workers=self.num_workers > 0)

    # checkpointed with the run: where in which epoch the sampler is, in global samples consumed
    # (every rank has processed as many batches), so a run resumes at any world size
    def state_dict(self) -> dict:
        trainer = getattr(self, "trainer", None)
        if trainer is None or getattr(self, "sampler", None) is None:
            return {}
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return {"epoch": trainer.current_epoch, "consumed": done * self.batch_size * trainer.world_size}

    def load_state_dict(self, state: dict) -> None:
        self._resume = dict(state) if state else None

    def val_dataloader(self):
        if self.val_set is None:
            return []
        return self._loader(self.val_set, self.eval_batch_size, shuffle=False, collate=self.val_collator)


class PreferenceDataModule(ConversationDataModule):
    """DPO data: `train_json` is a preference JSONL (`prompt, image, chosen, rejected`);
    validation is the same generation-based QA as for supervised stages."""

    several_train_files = False

    def build_train_set(self, model, template):
        return PreferenceDataset(self.train_json, model.tokenizer, template, model.vision.transform(train=True),
                                 self.max_length, num_image_tokens=image_width(model),
                                 image_folder=self.image_folder)

    def train_collator(self):
        return PreferenceCollator(self.pad_id, self.placeholders)
