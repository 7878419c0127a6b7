"""Which format a raw shard sample is in, and the caption pair or Flamingo document it holds.

Why: the shards people have are img2dataset's (`key.jpg|png|webp`, `key.txt`, `key.json` metadata;
LAION is read this way), OpenFlamingo's MMC4 (`key.json` with `text_list`, `image_info`,
`similarity_matrix`, see `data.mmc4`) and ours (`key.json` = {"texts", "leading"} with images
`key.0.png`, `key.1.jpg`, ...). Samples arrive undecoded (member extension -> bytes), so each format
decodes only what it uses.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass

from PIL import Image

from data.mmc4 import Mmc4Rules, mmc4_document

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
CAPTION_FORMAT = "caption pairs key.jpg|jpeg|png|webp + key.txt (img2dataset / LAION; key.json ignored)"
DOCUMENT_FORMATS = (f"{CAPTION_FORMAT}, MMC4 documents key.json with text_list, image_info[].image_base64 and "
                    "similarity_matrix (OpenFlamingo), or ours: key.json with texts + key.0.png|jpg|webp, ...")


@dataclass
class Document:
    """`images[i]` precedes `chunks[i]`. truncate: cut to max_length, leaving out images past the cut
    (MMC4, as OpenFlamingo); otherwise a document that does not fit is dropped whole."""

    images: list[Image.Image]
    chunks: list[str]
    leading: str = ""
    truncate: bool = False


def decode_image(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as im:
        return im.convert("RGB")


def _image_bytes(sample: dict, prefix: str = "") -> bytes | None:
    return next((sample[prefix + ext] for ext in IMAGE_EXTENSIONS if prefix + ext in sample), None)


def caption_pair(sample: dict) -> tuple[Image.Image, str]:
    """(image, caption) of an img2dataset-layout sample; ValueError naming what is missing."""
    image = _image_bytes(sample)
    if image is None or "txt" not in sample:
        missing = [w for w, gone in (("image (jpg|jpeg|png|webp)", image is None),
                                     (".txt caption", "txt" not in sample)) if gone]
        raise ValueError(f"caption pair without {' or '.join(missing)}")
    caption = sample["txt"].decode("utf-8").strip()
    if not caption:
        raise ValueError("empty caption")
    return decode_image(image), caption


def read_document(sample: dict, mmc4: Mmc4Rules) -> Document:
    """A caption pair as the one-image document `<image>caption<|endofchunk|>` (its json is metadata),
    an MMC4 json, or our document json; ValueError when the sample is none of these."""
    if _image_bytes(sample) is not None and "txt" in sample:
        image, caption = caption_pair(sample)
        return Document([image], [caption])
    doc = json.loads(sample["json"]) if "json" in sample else None
    if isinstance(doc, dict) and "text_list" in doc:
        images, chunks, leading = mmc4_document(doc, mmc4, decode_image)
        return Document(images, chunks, leading, truncate=True)
    if isinstance(doc, dict) and "texts" in doc:
        images = []
        for i in range(len(doc["texts"])):
            data = _image_bytes(sample, f"{i}.")
            if data is None:
                raise ValueError(f"document image {i} missing (no {i}.jpg|jpeg|png|webp member)")
            images.append(decode_image(data))
        return Document(images, [str(t) for t in doc["texts"]], doc.get("leading", ""))
    raise ValueError("neither an image (jpg|jpeg|png|webp) with a .txt caption nor a json with "
                     "text_list (MMC4) or texts (ours)")
