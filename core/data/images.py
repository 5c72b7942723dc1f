"""Images as bytes: PNG encoding and the one decoder for stored and uploaded images."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def to_png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def from_png(data: bytes) -> np.ndarray:
    """Decode PNG/JPEG bytes to uint8 (H, W, 3); raises ValueError on corrupt bytes."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return np.asarray(im.convert("RGB"))
    except Exception as err:  # PIL raises several unrelated types for bad bytes
        raise ValueError(f"not a decodable image ({type(err).__name__}: {err})") from err
