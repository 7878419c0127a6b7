"""Vision encoders: normalised images -> patch features ``(B, N, D)``.

A VLM is ``vision -> connector -> language model``; this module is the first
part. Every backend (open_clip, Hugging Face transformers, timm) is wrapped
behind the same small interface, :class:`VisionEncoder`, so the connector only
needs ``dim`` and ``num_patches``, and the data pipeline only ``transform()``.

Library imports happen inside the constructors, so importing this module (e.g.
for a timm-only experiment) does not pay for open_clip or transformers.

``select_layer`` picks the block whose output is used. Negative values count
from the end and mean the same in every backend (-1: last block, -2: the
penultimate one, as LLaVA-1.5 uses); non-negative values follow each library's
own list (see each class).
"""

from __future__ import annotations

import abc
import hashlib
import json
import os
import tempfile
from typing import Any, Literal

import torch
from torch import Tensor, nn

from models.image_transform import IMAGE_MODES, ImageMode, ImageTransform
from models.config_dict import ConfigDict
from models.meta_init import on_meta

__all__ = [
    "HFVision",
    "ImageTransform",
    "OpenCLIPVision",
    "TimmVision",
    "VisionEncoder",
    "grid_coords",
]


def grid_coords(
    height: int, width: int, device: torch.device | None = None, dtype: torch.dtype | None = None
) -> Tensor:
    """``(height * width, 2)`` normalised ``(x, y)`` of each cell, row-major.

    x runs from -1 (left column) to +1 (right column), y from -1 (top row) to
    +1 (bottom row); a dimension of size 1 gets 0 (its centre).
    """

    def axis(n: int) -> Tensor:
        if n == 1:
            return torch.zeros(1, device=device, dtype=dtype)
        return torch.linspace(-1.0, 1.0, n, device=device, dtype=dtype)

    ys, xs = torch.meshgrid(axis(height), axis(width), indexing="ij")
    return torch.stack([xs, ys], dim=-1).reshape(height * width, 2)


def _nchw_to_tokens(features: Tensor, add_coords: bool = False, coords_scale: float = 1.0) -> Tensor:
    """``(B, C, H, W)`` -> ``(B, H*W, C)``, row-major over the grid; with ``add_coords``,
    ``(B, H*W, C + 2)``: each token's ``grid_coords`` (times ``coords_scale``) appended."""
    return _with_coords(features.flatten(2).transpose(1, 2), features.shape[-2:], add_coords, coords_scale)


def _with_coords(tokens: Tensor, grid: tuple[int, int], add_coords: bool, coords_scale: float) -> Tensor:
    """``(B, H*W, C)`` tokens (row-major over an ``H x W`` grid), with ``add_coords`` each token's
    ``grid_coords`` (times ``coords_scale``) appended: ``(B, H*W, C + 2)``."""
    if not add_coords:
        return tokens
    coords = coords_scale * grid_coords(*grid, device=tokens.device, dtype=tokens.dtype)
    return torch.cat([tokens, coords.expand(tokens.shape[0], -1, -1)], dim=-1)


def encode_without_frozen_graph(vision: nn.Module, pixel_values: Tensor) -> Tensor:
    """Patch features; a fully frozen tower runs under no_grad, so no activations are kept for it."""
    if any(p.requires_grad for p in vision.parameters()):
        return vision(pixel_values)
    with torch.no_grad():
        return vision(pixel_values)


class VisionEncoder(nn.Module, abc.ABC):
    """Image encoder returning one feature vector per patch (or CNN cell).

    Attributes set by each backend's constructor:
        dim: feature width D of the returned tokens.
        num_patches: number of tokens N per image.
        image_size: square input side the encoder expects.
        mean, std: per-channel normalisation the weights were trained with.
        image_mode: how an image becomes a square (`models.image_transform`): `resize`, `pad`
            (LLaVA-1.5) or `crop`; one setting for training, eval, generate and export.
    """

    image_mode: ImageMode = "resize"
    dim: int
    num_patches: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def forward(self, pixels: Tensor) -> Tensor:
        """``(B, 3, H, W)`` normalised pixels -> ``(B, N, D)`` patch features."""
        self._check_input(pixels)
        return self.features(pixels.to(self._param_dtype()))

    @abc.abstractmethod
    def features(self, pixels: Tensor) -> Tensor:
        """Backend-specific feature extraction on already-checked input."""

    def transform(self, train: bool = False) -> ImageTransform:
        """Preprocessing matching this encoder (size, mean, std, image mode).

        ``train`` is accepted so the data code can ask for a split-specific
        transform, but both are the same: flips or crops would silently break
        answers about position ("left of", "top"), so augmentation is left to
        data code that knows the task.
        """
        del train
        return ImageTransform(self.image_size, self.mean, self.std, self.image_mode)

    # -- helpers for subclasses -------------------------------------------------

    def _check_input(self, pixels: Tensor) -> None:
        expected = (3, self.image_size, self.image_size)
        if pixels.ndim != 4 or tuple(pixels.shape[1:]) != expected:
            raise ValueError(
                f"{type(self).__name__} expects images of shape (B, {expected[0]}, "
                f"{expected[1]}, {expected[2]}) (image_size={self.image_size}), "
                f"got {tuple(pixels.shape)}"
            )

    def _set_image_mode(self, image_mode: ImageMode) -> None:
        if image_mode not in IMAGE_MODES:
            raise ValueError(f"{type(self).__name__}: image_mode must be one of {list(IMAGE_MODES)}, got {image_mode!r}")
        self.image_mode = image_mode

    def _set_coords(self, add_coords: bool, coords_scale: float) -> None:
        if not coords_scale > 0:
            raise ValueError(f"{type(self).__name__}: coords_scale must be > 0, got {coords_scale}")
        self.add_coords, self.coords_scale = add_coords, float(coords_scale)

    def _param_dtype(self) -> torch.dtype:
        for p in self.parameters():
            if p.is_floating_point():
                return p.dtype
        return torch.get_default_dtype()

    def _param_device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        return torch.device("cpu")

    def _probe_shape(self) -> tuple[int, int]:
        """``(num_patches, dim)`` from one forward on zeros (eval mode, no grad).

        Used where the library has no reliable metadata (CNN strides, padding);
        a bad ``select_layer`` / ``image_size`` combination fails here, at
        construction, rather than in the first training step.
        """
        was_training = self.training
        self.eval()
        try:
            x = torch.zeros(
                1, 3, self.image_size, self.image_size,
                device=self._param_device(), dtype=self._param_dtype(),
            )
            with torch.no_grad():
                out = self.features(x)
        except Exception as e:  # the library's own error, made actionable
            raise ValueError(
                f"{type(self).__name__}: a forward pass at image_size={self.image_size} with "
                f"select_layer={getattr(self, 'select_layer', None)} failed: {e}"
            ) from e
        finally:
            self.train(was_training)
        return int(out.shape[1]), int(out.shape[2])


def _square(size: Any, what: str) -> int:
    """int or (h, w) with h == w -> int; encoders here take square inputs only."""
    if isinstance(size, int):
        return size
    h, w = (int(s) for s in size)
    if h != w:
        raise ValueError(f"{what}: only square inputs are supported, got {h}x{w}")
    return h


def _download_hint() -> str:
    """Tail of a "weights not found" message: offline mode or a failed download."""
    from huggingface_hub import is_offline_mode

    if is_offline_mode():
        return "and offline mode is on (HF_HUB_OFFLINE), so nothing was downloaded"
    return "and downloading it failed"


# ---------------------------------------------------------------------------
# open_clip
# ---------------------------------------------------------------------------


def _register_open_clip_config(config: dict) -> str:
    """Register a model config dict with open_clip; return its name.

    open_clip only creates models by registered name. The name is derived
    from a hash of the config so that equal configs share one entry. The JSON
    is written to a temporary directory (never into the package) and removed
    again: open_clip keeps the parsed dict in its registry and skips missing
    paths on later rescans.
    """
    import open_clip

    missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if k not in config]
    if missing:
        # open_clip would silently ignore such a file and then report "not found".
        raise ValueError(f"open_clip model_config is missing keys {missing}")
    blob = json.dumps(config, sort_keys=True)
    name = "chimera-" + hashlib.sha256(blob.encode()).hexdigest()[:16]
    if name not in open_clip.list_models():
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, f"{name}.json")
            with open(path, "w") as f:
                f.write(blob)
            open_clip.add_model_config(path)
    return name


class OpenCLIPVision(VisionEncoder):
    """Visual tower of an open_clip CLIP model.

    Args:
        model_name: registered open_clip architecture, e.g. ``"ViT-B-32"``.
        model_config: an architecture dict shaped like open_clip's model config
            JSONs (``embed_dim``, ``vision_cfg``, ``text_cfg``); exactly one of
            this and ``model_name``.
        pretrained: an open_clip pretrained tag (downloaded, or read from the
            HF cache offline) or the path of a full CLIP checkpoint as open_clip
            saves it. None: random init.
        select_layer: index into the visual transformer's blocks
            (``visual.transformer.resblocks``); patch tokens only, CLS dropped.
        final_norm: apply the tower's final LayerNorm (``ln_post``) to the tokens.
            With ``select_layer=-1`` these are open_clip's ``output_tokens``, what
            OpenFlamingo feeds its resampler, so released resampler weights see the
            inputs they were trained on (the raw last block differs by O(1)).
        add_coords: append each patch's (x, y) grid coordinate in [-1, 1] as two
            extra channels, as ``TimmVision`` does: a connector that attends over
            patches without their order (Flamingo's) can then still say where one is.
        coords_scale: multiplies the coordinate channels. Beside ``dim`` frozen
            feature channels of about unit size two channels are easy to overlook;
            about ``sqrt(dim)`` gives them the energy of the whole feature vector. A
            tower that trains scales its own channels and is better left at 1
            (docs/benchmarks.md, "Where is the X?" for Flamingo).
        image_mean, image_std: normalisation, overriding what open_clip takes from
            the pretrained tag (a checkpoint records them, since it loads without the tag).
        image_mode: how images become squares for this tower: `resize` (squash), `pad` (LLaVA-1.5:
            pad to a square with the mean colour) or `crop` (shortest side, centre crop).
    """

    def __init__(
        self,
        model_name: str | None = None,
        model_config: ConfigDict | None = None,
        pretrained: str | None = None,
        select_layer: int = -2,
        final_norm: bool = False,
        add_coords: bool = False,
        coords_scale: float = 1.0,
        image_mean: list[float] | None = None,
        image_std: list[float] | None = None,
        image_mode: ImageMode = "resize",
    ) -> None:
        super().__init__()
        import open_clip

        self._set_image_mode(image_mode)

        if (model_name is None) == (model_config is None):
            raise ValueError("OpenCLIPVision needs exactly one of model_name and model_config")
        name = model_name if model_name is not None else _register_open_clip_config(model_config)

        is_tag = pretrained is not None and bool(open_clip.get_pretrained_cfg(name, pretrained))
        if pretrained is not None and not is_tag and not os.path.isfile(pretrained):
            tags = open_clip.list_pretrained_tags_by_model(name)
            raise FileNotFoundError(
                f"open_clip checkpoint file not found: {pretrained!r} "
                f"(nor is it a pretrained tag of {name!r}; known tags: {tags})"
            )
        try:
            # on the default device, so `with torch.device("meta")` builds it without storage
            force = {k: list(v) for k, v in (("mean", image_mean), ("std", image_std)) if v is not None}
            # on meta (a rank that receives rank 0's weights) no weights are read
            clip = open_clip.create_model(name, pretrained=None if on_meta() else pretrained,
                                          device=torch.get_default_device(),
                                          force_preprocess_cfg=force or None)
        except RuntimeError as e:
            # open_clip turns download failures (OSError from the hub) into RuntimeError.
            if is_tag and isinstance(e.__context__, OSError):
                raise FileNotFoundError(
                    f"open_clip weights {name!r} / pretrained={pretrained!r} could not be found "
                    f"in the local cache {_download_hint()}"
                ) from e
            raise

        # Only the visual tower is kept; the text tower would be dead weight.
        self.model = clip.visual
        del clip
        if final_norm and (self.model.attn_pool is not None or self.model.final_ln_after_pool):
            # these towers normalise after pooling, so their output tokens are not ln_post(tokens)
            raise ValueError(f"OpenCLIPVision final_norm: {name!r} pools before its final LayerNorm; "
                             "its output tokens are not ln_post of the patch tokens")
        self.select_layer, self.final_norm = select_layer, final_norm
        self._set_coords(add_coords, coords_scale)

        cfg = open_clip.get_model_preprocess_cfg(self.model)
        self.image_size = _square(cfg["size"], "OpenCLIPVision")
        self.mean = tuple(float(m) for m in cfg["mean"])
        self.std = tuple(float(s) for s in cfg["std"])
        self.num_patches, self.dim = self._probe_shape()

    def architecture(self) -> dict:
        """Arguments that rebuild this tower without its pretrained tag or file (the normalisation
        the tag brought is kept; the weights come from a checkpoint's state_dict)."""
        return {"pretrained": None, "image_mean": list(self.mean), "image_std": list(self.std)}

    def features(self, pixels: Tensor) -> Tensor:
        # forward_intermediates (open_clip >= 2.26) already drops the CLS token;
        # stop_early skips the blocks after select_layer. NLC is the blocks' own layout
        # (row-major patches), so the tokens come back without a copy to a grid and back.
        out = self.model.forward_intermediates(
            pixels,
            indices=[self.select_layer],
            stop_early=True,
            normalize_intermediates=self.final_norm,
            intermediates_only=True,
            output_fmt="NLC",
        )
        return _with_coords(out["image_intermediates"][0], self.model.grid_size, self.add_coords, self.coords_scale)


# ---------------------------------------------------------------------------
# Hugging Face transformers
# ---------------------------------------------------------------------------


def _hf_classes(model_type: str) -> tuple[type, type, type]:
    """(config, model, image processor) classes for an HF vision tower type."""
    import transformers

    if model_type == "clip":
        return (
            transformers.CLIPVisionConfig,
            transformers.CLIPVisionModel,
            transformers.CLIPImageProcessor,
        )
    if model_type == "siglip":
        return (
            transformers.SiglipVisionConfig,
            transformers.SiglipVisionModel,
            transformers.SiglipImageProcessor,
        )
    raise ValueError(f"HFVision: model_type must be 'clip' or 'siglip', got {model_type!r}")


class HFVision(VisionEncoder):
    """transformers ``CLIPVisionModel`` / ``SiglipVisionModel``.

    Args:
        name_or_path: hub id or local directory for ``from_pretrained`` (a full
            CLIP/SigLIP checkpoint works too: only the vision weights are used).
        config: kwargs for ``CLIPVisionConfig`` / ``SiglipVisionConfig`` to build
            a randomly initialised tower; exactly one of this and name_or_path.
        model_type: which architecture, declared rather than guessed from the
            name; a checkpoint of another type is rejected.
        select_layer: index into ``hidden_states`` (0 = embeddings, i = output
            of block i); CLS dropped for CLIP (SigLIP has none). Only the embeddings
            and the blocks up to it run, and only they are kept: the later blocks, the
            post-LayerNorm (unless ``final_norm``) and SigLIP's attention-pooling head
            are dropped at build time, so they take no memory, no time and no gradient.
            A state dict that still holds them (a checkpoint written before, a full
            transformers checkpoint) loads: their weights are ignored.
        final_norm: apply the tower's ``post_layernorm`` to the selected tokens. With
            ``select_layer=-1`` this is SigLIP's ``last_hidden_state``; for CLIP (whose
            post-norm transformers applies to the pooled CLS only) it is what open_clip's
            ``output_tokens`` are for the same weights.
        image_mean, image_std: normalisation of a tower built from ``config``
            (default: the image processor type's); a checkpoint records the
            pretrained processor's here, since it loads without that directory.
        image_mode: how images become squares for this tower: `resize` (squash), `pad` (LLaVA-1.5:
            pad to a square with the mean colour) or `crop` (shortest side, centre crop).
    """

    def __init__(
        self,
        name_or_path: str | None = None,
        config: ConfigDict | None = None,
        model_type: Literal["clip", "siglip"] = "clip",
        select_layer: int = -2,
        final_norm: bool = False,
        image_mean: list[float] | None = None,
        image_std: list[float] | None = None,
        image_mode: ImageMode = "resize",
    ) -> None:
        super().__init__()
        self._set_image_mode(image_mode)
        config_cls, model_cls, processor_cls = _hf_classes(model_type)
        if (name_or_path is None) == (config is None):
            raise ValueError("HFVision needs exactly one of name_or_path and config")
        self.model_type = model_type

        processor = None
        if name_or_path is not None:
            try:
                hf_config = config_cls.from_pretrained(name_or_path)
            except OSError as e:
                raise FileNotFoundError(_hf_not_found(name_or_path)) from e
            if hf_config.model_type != config_cls.model_type:
                raise ValueError(
                    f"HFVision: {name_or_path!r} holds a {hf_config.model_type!r} model, "
                    f"but model_type={model_type!r} expects {config_cls.model_type!r}"
                )
            try:  # on meta (a rank that receives rank 0's weights) the architecture only
                self.model = (model_cls(hf_config) if on_meta()
                              else model_cls.from_pretrained(name_or_path, config=hf_config))
            except OSError as e:
                raise FileNotFoundError(_hf_not_found(name_or_path)) from e
            try:
                processor = processor_cls.from_pretrained(name_or_path)
            except OSError:
                processor = None  # no preprocessor_config.json: use the type's defaults
        else:
            self.model = model_cls(config_cls(**config))

        hf_config = self.model.config
        self.image_size = int(hf_config.image_size)
        if processor is None:
            size = {"height": self.image_size, "width": self.image_size}
            extra = {"crop_size": size, "do_center_crop": False} if model_type == "clip" else {}
            extra.update({k: list(v) for k, v in (("image_mean", image_mean), ("image_std", image_std))
                          if v is not None})
            processor = processor_cls(size=size, **extra)
        self._processor = processor
        self.mean = tuple(float(m) for m in processor.image_mean)
        self.std = tuple(float(s) for s in processor.image_std)

        n_states = hf_config.num_hidden_layers + 1  # embeddings + each block
        if not -n_states <= select_layer < n_states:
            raise ValueError(
                f"HFVision: select_layer={select_layer} out of range for {n_states} hidden states"
            )
        self.select_layer, self.final_norm = select_layer, final_norm
        self.depth = select_layer % n_states  # encoder blocks that run
        self._drop_unused_parts()
        self.num_prefix_tokens = 1 if model_type == "clip" else 0
        self.dim = int(hf_config.hidden_size)
        self.num_patches = (self.image_size // int(hf_config.patch_size)) ** 2

    def _drop_unused_parts(self) -> None:
        """Keep the embeddings, the pre-norm and the first ``depth`` blocks (and the post-norm for
        ``final_norm``); what the selected tokens never pass through is deleted. ``self.model``
        then holds the kept weights under transformers' names (``save_pretrained`` writes them,
        the config still describes the whole tower); its own forward is not used."""
        n_blocks = len(self.model.encoder.layers)
        del self.model.encoder.layers[self.depth :]
        dropped = [f"encoder.layers.{i}." for i in range(self.depth, n_blocks)]
        children = dict(self.model.named_children())
        for name in ("head", *(() if self.final_norm else ("post_layernorm",))):
            if name in children:
                delattr(self.model, name)
                dropped.append(name + ".")
        self.model.register_load_state_dict_pre_hook(_IgnoreWeights(tuple(dropped)))

    def features(self, pixels: Tensor) -> Tensor:
        """The same tokens as ``hidden_states[select_layer]`` of the whole tower, computed by its own
        modules up to that block only."""
        model = self.model
        hidden = model.embeddings(pixels)
        pre_norm = getattr(model, "pre_layrnorm", None)  # CLIP has one, SigLIP none
        if pre_norm is not None:
            hidden = pre_norm(hidden)
        for block in model.encoder.layers:
            hidden = block(hidden, None)
        if self.final_norm:
            hidden = model.post_layernorm(hidden)
        return hidden[:, self.num_prefix_tokens :]

    def architecture(self) -> dict:
        """Arguments that rebuild this tower with no file: its transformers config (random init; a
        checkpoint's state_dict brings the weights) and the processor's normalisation."""
        config = self.model.config.to_diff_dict()
        for key in ("_name_or_path", "transformers_version", "architectures", "model_type", "dtype", "torch_dtype"):
            config.pop(key, None)
        return {"name_or_path": None, "config": config, "image_mean": list(self.mean), "image_std": list(self.std)}

    def save_pretrained(self, directory: str) -> None:
        """Write an HF model dir (weights, config, preprocessor) that
        ``HFVision(name_or_path=directory, model_type=...)`` loads back."""
        self.model.save_pretrained(directory)
        self._processor.save_pretrained(directory)


class _IgnoreWeights:
    """Load-state-dict pre-hook: drops the keys under the given sub-prefixes (parts a truncated tower
    no longer has), so full checkpoints still load strictly into it."""

    def __init__(self, parts: tuple[str, ...]) -> None:
        self.parts = parts

    def __call__(self, module: nn.Module, state_dict: dict, prefix: str, *args: Any) -> None:
        dropped = tuple(prefix + part for part in self.parts)
        for key in [k for k in state_dict if k.startswith(dropped)]:
            del state_dict[key]


def _hf_not_found(name_or_path: str) -> str:
    return (
        f"HF vision model {name_or_path!r} could not be found: it is not a local model "
        f"directory nor in the Hugging Face cache, {_download_hint()}"
    )


# ---------------------------------------------------------------------------
# timm
# ---------------------------------------------------------------------------


class TimmVision(VisionEncoder):
    """Any timm model with ``forward_intermediates`` (ViTs and CNNs).

    Args:
        model_name: timm architecture name.
        pretrained: load timm's pretrained weights (hub or HF cache).
        checkpoint_path: a local state dict (.pth/.safetensors) loaded strictly
            into the model instead.
        select_layer: index into the model's intermediate features (ViT: blocks;
            ResNet: stem, layer1..layer4), e.g. -1 = last block/stage.
        model_kwargs: extra ``timm.create_model`` kwargs (e.g. ``img_size``,
            ``embed_dim`` for ViTs; ``channels``, ``stem_width`` for ResNets).
        image_size: input side; defaults to ``model_kwargs["img_size"]`` if given,
            else the model's pretrained_cfg input size. CNNs take any size.
        add_coords: append each token's (x, y) grid coordinate in [-1, 1] as two
            extra channels (as in Relation Networks): CNN features carry little
            absolute position, which an LM needs for "left of"-style questions.
        coords_scale: multiplies the coordinate channels (see ``OpenCLIPVision``).
        image_mode: how images become squares for this tower: `resize` (squash), `pad` (LLaVA-1.5:
            pad to a square with the mean colour) or `crop` (shortest side, centre crop).
    """

    def __init__(
        self,
        model_name: str,
        pretrained: bool = False,
        checkpoint_path: str | None = None,
        select_layer: int = -1,
        model_kwargs: ConfigDict | None = None,
        image_size: int | None = None,
        add_coords: bool = False,
        coords_scale: float = 1.0,
        image_mode: ImageMode = "resize",
    ) -> None:
        super().__init__()
        import timm

        self._set_image_mode(image_mode)
        import timm.data
        import timm.models

        model_kwargs = dict(model_kwargs or {})
        if pretrained and checkpoint_path is not None:
            raise ValueError("TimmVision: give pretrained=True or checkpoint_path, not both")
        if checkpoint_path is not None and not os.path.isfile(checkpoint_path):
            raise FileNotFoundError(f"timm checkpoint file not found: {checkpoint_path!r}")
        try:
            self.model = timm.create_model(model_name, pretrained=pretrained and not on_meta(), **model_kwargs)
        except OSError as e:  # hub / cache errors (LocalEntryNotFoundError, URLError)
            if not pretrained:
                raise
            raise FileNotFoundError(
                f"timm pretrained weights for {model_name!r} could not be found in the local "
                f"cache {_download_hint()}"
            ) from e
        if checkpoint_path is not None and not on_meta():
            timm.models.load_checkpoint(self.model, checkpoint_path, strict=True)

        data_cfg = timm.data.resolve_model_data_config(self.model)
        if image_size is None:
            # ViTs built with img_size=... keep the pretrained_cfg's input_size, so the
            # kwarg the model was actually built with takes precedence.
            image_size = _square(model_kwargs.get("img_size", data_cfg["input_size"][1:]), "TimmVision")
        self.image_size = int(image_size)
        self.mean = tuple(float(m) for m in data_cfg["mean"])
        self.std = tuple(float(s) for s in data_cfg["std"])
        self.select_layer = select_layer
        self._set_coords(add_coords, coords_scale)
        self.num_patches, self.dim = self._probe_shape()

    def features(self, pixels: Tensor) -> Tensor:
        maps = self.model.forward_intermediates(
            pixels, indices=[self.select_layer], intermediates_only=True, stop_early=True
        )[0]
        return _nchw_to_tokens(maps, self.add_coords, self.coords_scale)
