"""Image loading that reports a bad file instead of crashing a run."""

from __future__ import annotations

import logging
from pathlib import Path

from PIL import Image, UnidentifiedImageError

log = logging.getLogger(__name__)


def load_image(path: str | Path) -> Image.Image | None:
    """RGB image, or None (with a warning naming the file) when missing or corrupt."""
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (FileNotFoundError, UnidentifiedImageError, OSError, ValueError) as err:
        log.warning("skipping unreadable image %s: %s", path, err)
        return None
