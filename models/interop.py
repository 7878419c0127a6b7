"""Interop with the formats full-scale users already have, and full-scale models without weights.

Three things, each a pure mapping of names and configs (no model code of its own):

- **Architecture stand-ins**: `configs/arch/<org>--<name>.json` hold the hyperparameters of
  the hub models the reproduction configs use (config JSONs only, no weights).
  `offline_stand_in` rewrites an experiment's `model:` section so every pretrained part is
  built from those hyperparameters instead (random init), and `build_on_meta` instantiates it
  on the meta device: parameter counts of a 7B model in seconds, with no download and no memory.
- **transformers LLaVA** (`LlavaForConditionalGeneration`): `export_hf_llava` writes a directory
  it loads; `import_hf_llava` builds our `LLaVA` from one (either weight layout: transformers
  >= 4.52 `model.language_model.*` or the older `language_model.model.*`).
- **OpenFlamingo** (`checkpoint.pt` of mlfoundations/open_flamingo): `openflamingo_to_chimera`
  renames its state dict to our `Flamingo`'s names, `chimera_to_openflamingo` is the inverse.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from torch import Tensor, nn

from models.safe_load import safe_load

ARCH_DIR = Path(__file__).resolve().parent.parent / "configs" / "arch"


# ---------------------------------------------------------------------------
# architecture stand-ins (meta device)
# ---------------------------------------------------------------------------


def arch_config(hub_id: str) -> dict:
    """Hyperparameters of `hub_id` from `configs/arch/<org>--<name>.json` (keys starting with `_` are notes)."""
    path = ARCH_DIR / (hub_id.replace("/", "--") + ".json")
    if not path.is_file():
        known = sorted(p.stem.replace("--", "/") for p in ARCH_DIR.glob("*.json"))
        raise FileNotFoundError(f"no architecture file for {hub_id!r} ({path}); known: {known}")
    return {k: v for k, v in json.loads(path.read_text()).items() if not k.startswith("_")}


def _leaf(class_path: str | None) -> str:
    return (class_path or "").rsplit(".", 1)[-1]


def offline_stand_in(config: dict, tokenizer: str) -> dict:
    """A copy of a `model:` config section in which nothing loads weights or tokenizers.

    Hub ids of `LanguageModel` / `HFVision` become `config` dicts from `configs/arch`, the LM
    uses the local `tokenizer` (its vocabulary size is the architecture's, not the tokenizer's),
    open_clip `pretrained` tags and `init_from` / `weights_from` checkpoints are dropped, and so
    is 4-bit quantisation (bitsandbytes packs two weights per byte, which would halve the
    counted elements; LoRA's parameters are the same either way).
    """

    def visit(node):
        if isinstance(node, list):
            return [visit(v) for v in node]
        if not isinstance(node, dict):
            return node
        node = {k: visit(v) for k, v in node.items()}
        args = node.get("init_args")
        leaf = _leaf(node.get("class_path"))
        if isinstance(args, dict):
            if leaf == "LanguageModel":
                name = args.pop("name_or_path", None)
                if name is not None:
                    args["config"] = arch_config(name)
                args["tokenizer"] = tokenizer
                for key in ("weights_from", "quantization"):
                    args.pop(key, None)
            elif leaf == "HFVision":
                name = args.pop("name_or_path", None)
                if name is not None:
                    args["config"] = arch_config(name)
            elif leaf == "OpenCLIPVision":
                args.pop("pretrained", None)
            args.pop("init_from", None)
        return node

    return visit(copy.deepcopy(config))


def build_on_meta(config: dict, tokenizer: str) -> nn.Module:
    """Instantiate a `model:` section (e.g. `train.module.VLMModule`) on the meta device via
    `offline_stand_in`: real shapes, stage freezing and adapters, no storage."""
    from train.checkpoint import build_module

    with torch.device("meta"):
        return build_module(offline_stand_in(config, tokenizer))


# ---------------------------------------------------------------------------
# transformers LLaVA
# ---------------------------------------------------------------------------

_HF_VISION_PREFIX = "model.vision_tower."
_HF_PROJECTOR = {"net.0": "model.multi_modal_projector.linear_1", "net.2": "model.multi_modal_projector.linear_2"}
_HF_LM_PREFIX = "model.language_model."
_HF_HEAD = "lm_head.weight"
_HF_NEWLINE = "model.image_newline"  # LlavaNext's row end
# transformers < 4.52 saved LLaVA with these prefixes (still what many hub checkpoints hold)
_HF_LEGACY = (("language_model.model.", _HF_LM_PREFIX), ("language_model.lm_head.", "lm_head."),
              ("vision_tower.", _HF_VISION_PREFIX), ("multi_modal_projector.", "model.multi_modal_projector."),
              ("image_newline", _HF_NEWLINE))


def _output_weight_name(lm: nn.Module) -> str | None:
    """Parameter name of the LM head's weight (found by identity), None if it has no head."""
    head = lm.get_output_embeddings()
    for name, mod in lm.named_modules():
        if mod is head:
            return f"{name}.weight"
    return None


def _check_hf_llava_compatible(model) -> None:
    from models.connectors import MLPConnector
    from models.vision import HFVision

    problems = []
    if not (isinstance(model.vision, HFVision) and model.vision.model_type == "clip"):
        problems.append(f"vision must be models.vision.HFVision with model_type 'clip', got {type(model.vision).__name__}")
    conn = model.connector
    if not (isinstance(conn, MLPConnector) and len(conn.net) == 3 and isinstance(conn.net[1], nn.GELU)
            and conn.net[0].out_features == conn.out_dim):
        problems.append("connector must be MLPConnector(depth=2, activation='gelu') without hidden_dim (mlp2x_gelu)")
    if getattr(model.language, "adapter", None) is not None or getattr(model.language, "quantization", None):
        problems.append("the language model has an adapter or is quantised: run `chimera merge` first")
    if problems:
        raise ValueError("cannot export as hf-llava: " + "; ".join(problems))


def hf_llava_config(model):
    """The `transformers.LlavaConfig` equivalent to our LLaVA (CLIP tower, mlp2x_gelu, any HF causal LM)."""
    from transformers import LlavaConfig

    _check_hf_llava_compatible(model)
    if getattr(model, "anyres", None) is not None:
        raise ValueError("cannot export as hf-llava: the model reads images at any resolution "
                         "(image_grid_pinpoints); export it as LlavaNext (models.hf_llava_next)")
    return LlavaConfig(**llava_config_fields(model))


def llava_config_fields(model) -> dict:
    """The config fields transformers' LLaVA family (LlavaConfig, LlavaNextConfig) shares, from our LLaVA."""
    text = model.language.model.config.to_dict()
    return {
        "vision_config": model.vision.model.config.to_dict(),
        "text_config": text,
        "image_token_index": model.language.image_token_id,
        "image_seq_length": model.num_image_tokens,
        "projector_hidden_act": "gelu",
        "vision_feature_select_strategy": "default",  # drop CLS, as HFVision does for CLIP
        "vision_feature_layer": model.vision.select_layer,
        "multimodal_projector_bias": True,
        "tie_word_embeddings": bool(text.get("tie_word_embeddings", False)),
        "pad_token_id": model.tokenizer.pad_token_id,
    }


def chimera_to_hf_llava(model) -> dict[str, Tensor]:
    """Our LLaVA's state dict under `LlavaForConditionalGeneration`'s names (tensors shared, not copied)."""
    _check_hf_llava_compatible(model)
    out = {f"{_HF_VISION_PREFIX}{k}": v for k, v in model.vision.model.state_dict().items()}
    for k, v in model.connector.state_dict().items():
        layer, param = k.rsplit(".", 1)
        out[f"{_HF_PROJECTOR[layer]}.{param}"] = v
    lm = model.language.model
    prefix, head = lm.base_model_prefix + ".", _output_weight_name(lm)
    tied = bool(getattr(lm.config, "tie_word_embeddings", False))
    for k, v in lm.state_dict().items():
        if k.startswith(prefix):
            out[_HF_LM_PREFIX + k[len(prefix):]] = v
        elif k == head:
            if not tied:
                out[_HF_HEAD] = v
        else:
            raise ValueError(f"cannot place LM weight {k!r} in the hf-llava layout")
    return out


def export_hf_llava(model, out_dir: str | Path, template=None) -> Path:
    """Write a directory that `LlavaForConditionalGeneration.from_pretrained` (and `AutoProcessor`) load.

    Both models take the same `input_ids`: `image_seq_length` `<image>` tokens per image (HF's
    processor widens them from the saved config, our collators from `LLaVA.image_placeholders`).
    The tokenizer and processor carry `template` (default `ChatTemplate()`) as their Jinja
    `chat_template`, and the image processor is the tower's transform (`models.hf_image_processor`),
    so HF users get the prompts and pixels the model was trained on.
    """
    from huggingface_hub import save_torch_state_dict
    from transformers import LlavaProcessor

    from data.template_jinja import adds_bos, jinja_chat_template
    from data.templates import ChatTemplate
    from models.hf_image_processor import llava_image_processor

    template = template or ChatTemplate()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = hf_llava_config(model)
    config.architectures = ["LlavaForConditionalGeneration"]
    config.dtype = str(next(model.language.parameters()).dtype).removeprefix("torch.")
    config.save_pretrained(out)
    state = {k: v.detach().contiguous() for k, v in chimera_to_hf_llava(model).items()}
    save_torch_state_dict(state, out)
    tokenizer = copy.deepcopy(model.tokenizer)  # the model's own keeps its template
    if template.style == "chat_template":
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("the template is the tokenizer's chat_template, but the tokenizer has none")
    else:
        tokenizer.chat_template = jinja_chat_template(template, with_bos=not adds_bos(tokenizer))
    image_token = tokenizer.convert_ids_to_tokens(model.language.image_token_id)
    transform = model.vision.transform(train=False)
    processor = LlavaProcessor(image_processor=llava_image_processor(transform), tokenizer=tokenizer,
                               patch_size=int(model.vision.model.config.patch_size), image_token=image_token,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,  # CLS
                               chat_template=tokenizer.chat_template)
    processor.save_pretrained(out)
    (out / "README.md").write_text(export_readme(template, transform))
    return out


def export_readme(template, transform) -> str:
    """What an HF user of the export needs to know to reproduce training's inputs."""
    name = template.name or f"{template.style} template"
    return (
        "# Exported from Chimera (`chimera export --format hf-llava`)\n\n"
        f"- Prompts: `processor.apply_chat_template(messages, add_generation_prompt=True)` renders Chimera's "
        f"`{name}` template (BOS included when the tokenizer does not add one).\n"
        f"- Images: mode `{transform.mode}` at {transform.size}px ({_MODE_TEXT[transform.mode]}), written as a "
        "`LlavaImageProcessor` config. Load it with `AutoProcessor.from_pretrained(DIR, backend=\"pil\")` for "
        "pixel tensors equal to training's; transformers' default torchvision backend resizes with another "
        "bicubic kernel (pixels differ by up to a dozen 8-bit levels where an image is resized).\n"
    )


_MODE_TEXT = {"resize": "squashed to a square", "pad": "padded to a square with the mean colour, then resized",
              "crop": "shortest side resized, then the centre square"}


def _load_safetensors_dir(src: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    files = sorted(src.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{src} holds no *.safetensors weights")
    state: dict[str, Tensor] = {}
    for f in files:
        state.update(load_file(f))
    return state


def _config_kwargs(cfg) -> dict:
    drop = {"model_type", "transformers_version", "architectures", "_name_or_path", "dtype", "torch_dtype"}
    return {k: v for k, v in cfg.to_dict().items() if k not in drop}


def import_hf_llava(src: str | Path):
    """Our `LLaVA` (HFVision + MLPConnector + LanguageModel, all built from the saved configs) with the
    weights of a transformers LLaVA directory. The tokenizer is the directory's own; the tower's
    image mode, mean and std are its image processor's (`models.hf_llava_inputs`)."""
    from transformers import LlavaConfig

    src = Path(src)
    if not (src / "config.json").is_file():
        raise FileNotFoundError(f"{src} is not a transformers LLaVA directory (no config.json)")
    return llava_from_hf_dir(src, LlavaConfig.from_pretrained(src))


def llava_from_hf_dir(src: Path, cfg, vision_settings: dict | None = None, **llava_kwargs):
    """Our `LLaVA(..., **llava_kwargs)` from a transformers LLaVA-family directory whose config is
    `cfg` (Llava or LlavaNext: same tower, projector and LM names; LlavaNext adds `image_newline`).
    `vision_settings` override what the directory's image processor says (`image_settings`)."""
    from models.hf_llava_inputs import image_settings
    from models.connectors import MLPConnector
    from models.language import LanguageModel
    from models.llava import LLaVA
    from models.vision import HFVision

    if cfg.vision_config.model_type != "clip_vision_model":
        raise ValueError(f"{src}: vision tower {cfg.vision_config.model_type!r} is not a CLIP vision model")
    if cfg.vision_feature_select_strategy != "default" or not isinstance(cfg.vision_feature_layer, int):
        raise ValueError(f"{src}: only one feature layer with the CLS token dropped ('default') is supported")
    if cfg.projector_hidden_act != "gelu" or not cfg.multimodal_projector_bias:
        raise ValueError(f"{src}: projector must be mlp2x_gelu with biases")
    vision = HFVision(config=_config_kwargs(cfg.vision_config), model_type="clip", select_layer=cfg.vision_feature_layer,
                      **{**image_settings(src), **(vision_settings or {})})  # the directory's image mode and normalisation
    language = LanguageModel(config={"model_type": cfg.text_config.model_type, **_config_kwargs(cfg.text_config)},
                             tokenizer=str(src))
    if language.image_token_id != cfg.image_token_id:
        raise ValueError(f"{src}: tokenizer's <image> id {language.image_token_id} != config's {cfg.image_token_id}")
    model = LLaVA(vision, language, MLPConnector, **llava_kwargs)
    state = _load_safetensors_dir(src)
    for old, new in _HF_LEGACY:
        state = {(new + k[len(old):] if k.startswith(old) else k): v for k, v in state.items()}
    ours = {}
    inverse = {v: k for k, v in _HF_PROJECTOR.items()}
    lm = language.model
    prefix, head = lm.base_model_prefix + ".", _output_weight_name(lm)
    for k, v in state.items():
        if k.startswith(_HF_VISION_PREFIX):
            ours["vision.model." + k[len(_HF_VISION_PREFIX):]] = v
        elif k.startswith("model.multi_modal_projector."):
            layer, param = k.rsplit(".", 1)
            ours[f"connector.{inverse[layer]}.{param}"] = v
        elif k.startswith(_HF_LM_PREFIX):
            ours["language.model." + prefix + k[len(_HF_LM_PREFIX):]] = v
        elif k == _HF_HEAD:
            ours["language.model." + head] = v
        elif k == _HF_NEWLINE:
            ours["image_newline.weight"] = v
        else:
            raise ValueError(f"{src}: unexpected weight {k!r} for a {type(cfg).__name__} checkpoint")
    missing, unexpected = model.load_state_dict(ours, strict=False)
    tied = bool(getattr(lm.config, "tie_word_embeddings", False))
    missing = [k for k in missing if not (tied and k == f"language.model.{head}")]  # the head shares the embedding
    if missing or unexpected:
        raise ValueError(f"{src}: weights do not fit (missing {missing[:5]}, unexpected {unexpected[:5]})")
    return model.eval()


# ---------------------------------------------------------------------------
# OpenFlamingo
# ---------------------------------------------------------------------------

_OF_ATTN = ("norm.", "to_q.", "to_kv.", "to_out.")


def _decoder_layers_path(model) -> str:
    """Where Flamingo found the decoder layers, relative to `language.model` (found by identity)."""
    target = model.decoder_layers
    for name, mod in model.language.model.named_modules():
        if mod is target:
            return name
    raise ValueError("Flamingo's decoder layers are not inside its language model")


def _wrapped_layers(model) -> list[int]:
    from models.flamingo import FlamingoLayer

    return [i for i, layer in enumerate(model.decoder_layers) if isinstance(layer, FlamingoLayer)]


def chimera_to_openflamingo(model, trainable_only: bool = False) -> dict[str, Tensor]:
    """Our Flamingo's state dict under open_flamingo's names (`vision_encoder.*`, `perceiver.*`,
    `lang_encoder.<layers>.<i>.{decoder_layer,gated_cross_attn_layer}.*`).

    open_flamingo trains whole embedding matrices, not per-token deltas: the deltas are folded
    into the embedding rows (input delta into the input embedding, output delta into the head).
    `trainable_only` keeps what open_flamingo's `checkpoint.pt` holds: perceiver, gated
    cross-attention and the input embedding (and an untied head, which carries our output delta).
    """
    if isinstance(getattr(model.connector, "proj", None), nn.Linear):
        raise ValueError("open_flamingo's perceiver has no output projection: resampler out_dim must equal in_dim")
    if model.language.adapter is not None or model.language.quantization:
        raise ValueError("open_flamingo has no adapters or 4-bit weights: the language model has an adapter or is "
                         "quantised; merge it first (LanguageModel.merge_adapter)")
    path = _decoder_layers_path(model)
    wrapped = _wrapped_layers(model)
    lm = model.language.model
    lm_state = {k: v.detach().clone() for k, v in lm.state_dict().items()}
    ids, deltas = model.special_tokens.token_ids, model.special_tokens
    emb_name = next(n for n, m in lm.named_modules() if m is lm.get_input_embeddings()) + ".weight"
    head_name = _output_weight_name(lm)
    tied = head_name is not None and lm.get_output_embeddings().weight is lm.get_input_embeddings().weight
    if tied and deltas.output_delta.detach().ne(deltas.input_delta.detach()).any():
        raise ValueError("tied embeddings with different input/output deltas cannot be folded into one matrix")
    lm_state[emb_name][ids] += deltas.input_delta.detach().to(lm_state[emb_name].dtype)
    if head_name is not None and not tied:
        lm_state[head_name][ids] += deltas.output_delta.detach().to(lm_state[head_name].dtype)

    out: dict[str, Tensor] = {}
    if not trainable_only:
        out.update({f"vision_encoder.{k}": v for k, v in model.vision.model.state_dict().items()})
    out.update({f"perceiver.{k}": v for k, v in model.connector.state_dict().items()})
    for k, v in lm_state.items():
        if k.startswith(path + "."):
            i, rest = k[len(path) + 1:].split(".", 1)
            if int(i) in wrapped:
                rest = rest.removeprefix("decoder_layer.")
            if not trainable_only:
                out[f"lang_encoder.{path}.{i}.decoder_layer.{rest}"] = v
        elif k in (emb_name, head_name) or not trainable_only:
            if tied and k == head_name:
                continue
            out[f"lang_encoder.{k}"] = v
    for i, block in zip(wrapped, model.cross_attention):
        for k, v in block.state_dict().items():
            name = "attn." + k if k.startswith(_OF_ATTN) else k
            out[f"lang_encoder.{path}.{i}.gated_cross_attn_layer.{name}"] = v
    return out


def openflamingo_to_chimera(state: dict[str, Tensor], model) -> dict[str, Tensor]:
    """open_flamingo names -> ours (a DDP `module.` prefix is dropped). Special-token deltas are
    set to zero: open_flamingo's trained rows arrive inside the embedding matrices."""
    path = _decoder_layers_path(model)
    wrapped = _wrapped_layers(model)
    block_of = {i: k for k, i in enumerate(wrapped)}
    layers_prefix = f"lang_encoder.{path}."
    out: dict[str, Tensor] = {}
    for key, v in state.items():
        k = key.removeprefix("module.")
        if k.startswith("vision_encoder."):
            out["vision.model." + k[len("vision_encoder."):]] = v
        elif k.startswith("perceiver."):
            out["connector." + k[len("perceiver."):]] = v
        elif k.startswith(layers_prefix):
            i, kind, rest = k[len(layers_prefix):].split(".", 2)
            if kind == "gated_cross_attn_layer":
                if int(i) not in block_of:
                    raise ValueError(f"{k}: layer {i} has cross-attention in the checkpoint but not in this model "
                                     f"(cross_attn_every_n_layers differs?)")
                out[f"cross_attention.{block_of[int(i)]}.{rest.removeprefix('attn.')}"] = v
            elif kind == "decoder_layer":
                inner = "decoder_layer." if int(i) in block_of else ""
                out[f"language.model.{path}.{i}.{inner}{rest}"] = v
            else:
                raise ValueError(f"unexpected open_flamingo key {k!r}")
        elif k.startswith("lang_encoder."):
            out["language.model." + k[len("lang_encoder."):]] = v
        else:
            raise ValueError(f"unexpected open_flamingo key {k!r}")
    out["special_tokens.input_delta"] = torch.zeros_like(model.special_tokens.input_delta)
    out["special_tokens.output_delta"] = torch.zeros_like(model.special_tokens.output_delta)
    return out


def load_openflamingo_checkpoint(model, checkpoint: str | Path | dict[str, Tensor]) -> list[str]:
    """Load an open_flamingo `checkpoint.pt` (or its state dict) into our Flamingo, in place.

    Its released checkpoints hold only what trained (perceiver, cross-attention, embeddings);
    vision and LM come from their own pretrained sources. Every checkpoint tensor must fit a
    parameter of `model` (shape included); returns our parameter names left as they were.
    The tokenizer must be open_flamingo's (with `<|endofchunk|>` and `<image>` added), so that
    embedding rows mean the same tokens.
    """
    state = checkpoint
    if not isinstance(state, dict):
        path = Path(checkpoint)
        if not path.is_file():
            raise FileNotFoundError(f"OpenFlamingo checkpoint not found: {path}")
        state = safe_load(path)
    state = state.get("model_state_dict", state)  # open_flamingo's resumable training checkpoints
    mapped = openflamingo_to_chimera(state, model)
    missing, unexpected = model.load_state_dict(mapped, strict=False)
    if unexpected:
        raise ValueError(f"OpenFlamingo checkpoint keys with no place in this model: {unexpected[:8]}")
    return missing


__all__ = [
    "arch_config", "build_on_meta", "chimera_to_hf_llava", "chimera_to_openflamingo", "export_hf_llava",
    "hf_llava_config", "import_hf_llava", "llava_config_fields", "load_openflamingo_checkpoint", "offline_stand_in",
    "openflamingo_to_chimera",
]
