"""The one image decoder every stage uses (corpus, demos, G, DreamBench, Serve): corrupt bytes and decompression
bombs are refused with a ValueError before any pixel is decoded."""

import struct
import zlib

import numpy as np
import pytest

from core.data import images


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def huge_png(side: int) -> bytes:
    """A valid grey PNG of side x side pixels, built row by row (never the whole image in memory): a few hundred KB
    that would decode to side^2 bytes."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)  # 8-bit greyscale
    packer = zlib.compressobj(9)
    row = bytes(side + 1)  # filter byte + pixels
    idat = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def test_a_small_image_round_trips():
    img = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    assert np.array_equal(images.from_png(images.to_png(img)), img)


def test_a_decompression_bomb_is_refused_from_its_header():
    bomb = huge_png(12000)
    assert len(bomb) < 1_000_000  # a valid PNG of 144 M pixels in under 1 MB
    with pytest.raises(images.ImageTooLarge, match="12000x12000"):
        images.from_png(bomb)
    assert issubclass(images.ImageTooLarge, ValueError)  # counted like corrupt bytes wherever those are skipped
    with pytest.raises(images.ImageTooLarge):
        images.from_png(images.to_png(np.zeros((64, 64, 3), np.uint8)), max_pixels=32 * 32)
    assert images.from_png(huge_png(64), max_pixels=64 * 64).shape == (64, 64, 3)


@pytest.mark.parametrize("data", [b"", b"not an image", images.to_png(np.zeros((4, 4, 3), np.uint8))[:40]])
def test_corrupt_bytes_are_a_value_error(data):
    with pytest.raises(ValueError, match="not a decodable image"):
        images.from_png(data)


def test_serve_decodes_through_the_same_guard():
    import base64

    from fastapi import HTTPException

    from actors.serve_app import open_demo

    with pytest.raises(HTTPException) as err:
        open_demo(base64.b64encode(huge_png(5000)).decode(), "demos[0].image", 32)
    assert err.value.status_code == 422 and "5000x5000" in err.value.detail
    assert images.MAX_IMAGE_PIXELS == 4096 * 4096
