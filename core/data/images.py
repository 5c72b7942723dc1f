"""Images as bytes: PNG encoding and the one decoder for stored and uploaded images.

Every place that decodes an image (the corpus, demos, G, DreamBench, Serve) goes through `open_image`, which reads
the header first and refuses a decompression bomb before any pixel is decoded."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

# The most pixels an image may state in its header: 4096x4096, 48 MB decoded as RGB. A 12000x12000 PNG of one colour
# is a few hundred KB on disk and would decode to 432 MB.
MAX_IMAGE_PIXELS = 4096 * 4096


class ImageTooLarge(ValueError):
    """An image whose header states more pixels than allowed; refused before decoding."""


def to_png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def open_image(data: bytes, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Open image bytes lazily (header only); ValueError on bytes that are not an image, ImageTooLarge when the
    header states more than `max_pixels` pixels. The caller decodes (and closes) it."""
    try:
        im = Image.open(io.BytesIO(data))
    except Exception as err:  # PIL raises several unrelated types for bad bytes
        raise ValueError(f"not a decodable image ({type(err).__name__}: {err})") from err
    if im.width * im.height > max_pixels:
        im.close()
        raise ImageTooLarge(
            f"image of {im.width}x{im.height} pixels is too large (the limit is {max_pixels:,} pixels)"
        )
    return im


def from_png(data: bytes, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Decode PNG/JPEG bytes to uint8 (H, W, 3); raises ValueError on corrupt bytes and ImageTooLarge (a ValueError)
    on an image over `max_pixels`."""
    with open_image(data, max_pixels) as im:
        try:
            im.load()
            return np.asarray(im.convert("RGB"))
        except Exception as err:  # PIL raises several unrelated types for bad bytes
            raise ValueError(f"not a decodable image ({type(err).__name__}: {err})") from err
