"""The toy world's renderer for whole batches, in torch, on the training device.

`toyworld.render` draws one image in numpy. Fed by CPU workers drawing that way, base pretraining on a GPU is
bound by rendering, not by the GPU. Here the same drawing runs on tensors for a whole batch, so the workers only pick
scenes and tokenize captions, and the device draws (`python -m benchmarks.toy_render_speed` times both ways).
`render_batch` reproduces `toyworld.render` pixel for pixel given the same background noise
(tests/unit/test_toyrender.py); the noise itself comes from a torch generator.

    arrays = pack_scenes(subjects, scenes)          # numpy int arrays, cheap to send between processes
    images = render_batch(arrays, device=device)    # float (B, 3, H, W) in [0, 255], on `device`
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from core.toy import world as tw

_COLOURS = list(tw.PALETTE)
_BACKGROUNDS = list(tw.BACKGROUNDS)
_ACCESSORIES = list(tw.ACCESSORIES)
FIELDS = (
    "class_idx",
    "body",
    "pattern",
    "pattern_colour",
    "background",
    "cx",
    "cy",
    "radius",
    "upside_down",
    "accessory",
    "style",
    "textured",
    "cell",
)


def pack_scenes(subjects: list[tw.Subject], scenes: list[tw.Scene]) -> dict[str, np.ndarray]:
    """One int64 array per field of `FIELDS` (accessory and style: -1 for none; body: the scene's edit if any)."""
    rows = [
        (
            tw.CLASSES.index(s.class_name),
            _COLOURS.index(sc.body or s.body),
            tw.PATTERNS.index(s.pattern),
            _COLOURS.index(s.pattern_colour),
            _BACKGROUNDS.index(sc.background),
            sc.cx,
            sc.cy,
            sc.radius,
            int(sc.view == "upside-down"),
            _ACCESSORIES.index(sc.accessory) if sc.accessory else -1,
            tw.STYLES.index(sc.style) if sc.style else -1,
            int(sc.textured),
            sc.cell,
        )
        for s, sc in zip(subjects, scenes, strict=True)
    ]
    table = np.asarray(rows, dtype=np.int64).reshape(len(rows), len(FIELDS))
    return {name: table[:, i] for i, name in enumerate(FIELDS)}


@functools.lru_cache(maxsize=8)
def _textures(size: int, device: str) -> torch.Tensor:
    """(8, H, W) background textures in `BACKGROUNDS` order (`toyworld.texture`)."""
    return torch.from_numpy(np.stack([tw.texture(name, size) for name in _BACKGROUNDS])).to(
        device=device, dtype=torch.float64
    )


def _shape_masks(dx: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """(8, B, H, W): every class's mask, in `CLASSES` order, as `toyworld._shape_mask` draws them."""
    ax, ay = dx.abs(), dy.abs()
    masks = {
        "ball": dx**2 + dy**2 <= 1.0,
        "box": (ax <= 0.85) & (ay <= 0.85),
        "cone": (dy <= 0.9) & (dy >= -1.0) & (ax <= (dy + 1.0) / 1.9),
        "kite": ax + ay <= 1.0,
        "cross": ((ax <= 0.38) & (ay <= 1.0)) | ((ay <= 0.38) & (ax <= 1.0)),
        "egg": (dx / 0.72) ** 2 + dy**2 <= 1.0,
        "tower": (ax <= 0.45) & (ay <= 1.0),
        "bowl": (dx**2 + (dy + 0.45) ** 2 <= 1.0) & (dy >= -0.45),
    }
    return torch.stack([masks[name] for name in tw.CLASSES])


def _pick(stack: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """stack (K, B, ...) and index (B,) -> stack[index[b], b] (B, ...)."""
    return stack[index, torch.arange(stack.shape[1], device=stack.device)]


@torch.no_grad()
def render_batch(
    arrays: dict[str, np.ndarray | torch.Tensor],
    size: int = 32,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Draw a batch packed by `pack_scenes`. Returns float32 (B, 3, H, W) holding whole numbers in [0, 255].

    `noise` (B, H, W, 3) is the background's pixel noise; by default N(0, 3) from `generator` (on `device`)."""
    a = {
        k: torch.as_tensor(np.asarray(arrays[k]) if not torch.is_tensor(arrays[k]) else arrays[k], device=device)
        for k in FIELDS
    }
    b = a["cx"].shape[0]
    f32 = {"device": device, "dtype": torch.float32}
    palette = torch.tensor(list(tw.PALETTE.values()), **f32)
    backgrounds = torch.tensor(list(tw.BACKGROUNDS.values()), **f32)
    accessories = torch.tensor(list(tw.ACCESSORIES.values()), **f32)
    grey = torch.tensor([90.0, 90.0, 90.0], **f32)

    if noise is None:
        noise = torch.randn((b, size, size, 3), generator=generator, **f32) * 3.0
    # In float64 and rounded once to float32, as numpy adds the float64 texture into its float32 image.
    textures = _textures(size, str(device))[a["background"]] * a["textured"].double()[:, None, None]
    img = (backgrounds[a["background"]].double()[:, None, None, :] + textures[..., None]).to(torch.float32)
    # Added at the noise's own precision, then rounded once, as numpy's `img += noise` does.
    img = (img.to(noise.dtype) + noise.to(device)).to(torch.float32)

    yy, xx = (t.to(**f32)[None] for t in torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij"))
    cx, cy, r = (a[k].to(**f32)[:, None, None] for k in ("cx", "cy", "radius"))
    sy = torch.where(a["upside_down"].bool()[:, None, None], 2 * cy - yy, yy.expand(b, -1, -1))
    outer = _pick(_shape_masks((xx - cx) / r, (sy - cy) / r), a["class_idx"])
    inner_r = r * 0.72
    inner = _pick(_shape_masks((xx - cx) / inner_r, (sy - cy) / inner_r), a["class_idx"])
    cell = a["cell"][:, None, None]
    xi, yi = xx.long() // cell, yy.long() // cell
    patterns = torch.stack(
        [(yi // 2) % 2 == 0, (xi // 2) % 2 == 0, ((xi % 4) < 2) & ((yi % 4) < 2), ((xi // 3 + yi // 3) % 2) == 0]
    )
    pattern = _pick(patterns, a["pattern"])

    def paint(mask: torch.Tensor, colour: torch.Tensor) -> torch.Tensor:
        # colour (B, 3) or (3,); mask (B, H, W)
        colour = colour if colour.dim() == 2 else colour.expand(b, 3)
        return torch.where(mask[..., None], colour[:, None, None, :], img)

    img = paint(outer, palette[a["body"]])
    img = paint(inner & pattern, palette[a["pattern_colour"]])

    acc = a["accessory"]
    # Hat: above the subject.
    top = cy - r
    hat = (
        ((xx - cx).abs() <= r * 0.5) & (yy >= top - 4) & (yy < top) & (acc == _ACCESSORIES.index("hat"))[:, None, None]
    )
    img = paint(hat, accessories[_ACCESSORIES.index("hat")])
    # Flag: a pole right of the subject and a flag at its top.
    is_flag = (acc == _ACCESSORIES.index("flag"))[:, None, None]
    pole_x = cx + r + 2
    pole = (xx == pole_x) & (yy >= cy - r) & (yy <= cy + r) & is_flag
    flag = (xx > pole_x) & (xx <= pole_x + 4) & (yy >= cy - r) & (yy < cy - r + 4) & is_flag
    img = paint(pole, grey)
    img = paint(flag, accessories[_ACCESSORIES.index("flag")])
    # Balloon: up and left, on a string.
    is_balloon = (acc == _ACCESSORIES.index("balloon"))[:, None, None]
    bx, by = cx - r, cy - r - 1
    string = (xx == bx) & (yy > by + 2) & (yy <= cy - r * 0.3) & is_balloon
    img = paint(string, grey)
    img = paint(((xx - bx) ** 2 + (yy - by) ** 2 <= 6.5) & is_balloon, accessories[_ACCESSORIES.index("balloon")])
    # Pedestal: below.
    bottom = cy + r
    stand = (
        ((xx - cx).abs() <= r * 0.8)
        & (yy > bottom)
        & (yy <= bottom + 3)
        & (acc == _ACCESSORIES.index("pedestal"))[:, None, None]
    )
    img = paint(stand, accessories[_ACCESSORIES.index("pedestal")])
    img = img.clamp(0, 255)

    style = a["style"][:, None, None, None]
    lum = img @ torch.tensor([0.299, 0.587, 0.114], **f32)
    img = torch.where(style == tw.STYLES.index("grayscale"), lum[..., None].expand(-1, -1, -1, 3), img)
    small = img.round().reshape(b, size // 4, 4, size // 4, 4, 3).mean(dim=(2, 4))  # whole levels, as numpy
    blocky = small.repeat_interleave(4, dim=1).repeat_interleave(4, dim=2)
    img = torch.where(style == tw.STYLES.index("blocky"), blocky, img)
    img = torch.where(style == tw.STYLES.index("negative"), 255.0 - img, img)
    return img.round().clamp(0, 255).permute(0, 3, 1, 2).contiguous()
