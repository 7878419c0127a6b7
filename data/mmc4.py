"""MMC4 documents (OpenFlamingo's shard format) as Flamingo documents, placed as OpenFlamingo places them.

A sample is `key.json` = {"text_list": [sentence, ...], "image_info": [{"image_name", "matched_text_index",
"matched_sim", "image_base64"}, ...], "similarity_matrix": [[image x sentence CLIP similarity]]}.
Rules (OpenFlamingo's `preprocess_interleaved`): images without bytes or too small are left out;
a one-to-one assignment over the remaining images' similarity rows gives each image a sentence;
pairs below `sim_threshold` are left out; at most `max_images` images; `<image>` goes before its
sentence and `<|endofchunk|>` ends the text that follows it; after truncation to the source's
max_length a document with fewer than `min_images` images is dropped, and one with a single
image is kept with probability `single_image_keep`.

One difference, on purpose: OpenFlamingo orders the kept images by their index in `image_info`
but places `<image>` tokens in sentence order, so an image can be paired with another's place.
Here images are ordered by their sentence, and the `max_images` kept are the first in the text.
"""

from __future__ import annotations

import base64
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image

from data.assignment import max_score_pairs
from data.reading import Rejected


@dataclass(frozen=True)
class Mmc4Rules:
    """OpenFlamingo's MMC4 limits. sim_threshold: 0.24 as its README's training command
    (`--mmc4_textsim_threshold 0.24`; its argparse default of 30 is off MMC4's cosine scale and
    keeps no image). min_image_bytes: its `len // 1000 > 10` test (MIN_KB), i.e. 11,000 bytes.
    single_image_keep: the share of one-image documents kept, drawn from the sample key so a
    document's fate is the same on every rank, worker and epoch."""

    sim_threshold: float = 0.24
    min_images: int = 1
    max_images: int = 6
    min_image_bytes: int = 11_000
    single_image_keep: float = 0.5

    def __post_init__(self) -> None:
        if not 1 <= self.min_images <= self.max_images:
            raise ValueError(f"mmc4: need 1 <= min_images <= max_images, got {self.min_images}, {self.max_images}")
        if not 0.0 <= self.single_image_keep <= 1.0:
            raise ValueError(f"mmc4: single_image_keep must be in [0, 1], got {self.single_image_keep}")

    def check_count(self, n_images: int, key: str) -> None:
        """After truncation: too few images, or a single image not drawn to be kept, is Rejected."""
        if n_images < self.min_images:
            raise Rejected(f"{n_images} image(s) left after truncation, min_images is {self.min_images}")
        if n_images == 1 and zlib.crc32(key.encode()) / 2**32 >= self.single_image_keep:
            raise Rejected(f"one image left; single_image_keep is {self.single_image_keep}")


def _image(entry: dict, min_bytes: int, decode) -> Image.Image | None:
    if not isinstance(entry, dict) or "image_base64" not in entry:
        return None
    data = base64.b64decode(entry["image_base64"])
    if len(data) < min_bytes:
        return None
    try:
        return decode(data)
    except (OSError, ValueError, Image.DecompressionBombError):  # the rest of the document stays usable
        return None


def mmc4_document(info: dict, rules: Mmc4Rules, decode) -> tuple[list[Image.Image], list[str], str]:
    """(images, the text chunk each precedes, leading text) of one MMC4 json; `decode`: bytes -> RGB image."""
    sentences = [str(s) for s in info["text_list"]]
    loaded = [_image(entry, rules.min_image_bytes, decode) for entry in info["image_info"]]
    valid = [i for i, im in enumerate(loaded) if im is not None]
    if not valid:
        raise Rejected(f"no readable image_base64 of >= {rules.min_image_bytes} bytes")
    similarity = np.asarray(info["similarity_matrix"], dtype=float)
    if similarity.shape != (len(loaded), len(sentences)):
        raise ValueError(f"similarity_matrix has shape {similarity.shape}, expected (images, sentences) = "
                         f"{(len(loaded), len(sentences))}")
    pairs = [(sentence, valid[row]) for row, sentence in max_score_pairs(similarity[valid])
             if similarity[valid[row], sentence] >= rules.sim_threshold]
    if not pairs:
        raise Rejected(f"no image matches a sentence with similarity >= {rules.sim_threshold}")
    pairs = sorted(pairs)[: rules.max_images]
    starts = [s for s, _ in pairs] + [len(sentences)]
    chunks = [" ".join(sentences[a:b]) for a, b in zip(starts, starts[1:])]
    return [loaded[i] for _, i in pairs], chunks, " ".join(sentences[: starts[0]])
