"""Trained attribute readers: one small CNN with a head per toy-world attribute, read back from pixels.

The readers turn a generated image into the attributes it shows (class, body colour, pattern, pattern colour,
background, accessory, style), so subject and text fidelity are exact counts (`toyworld.subject_fidelity`).
Readers trained on clean renders misread generated images, so training renders are augmented with noise, colour
casts and blur, and `finetune_on` adds renders that the base model has noised and denoised part-way (their labels
are still known). Identity heads learn only from train subjects, and only the
attributes a style leaves visible (`toyworld.OBSERVABLE`).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from core.models.schedules import warmup_cosine
from core.toy import world as tw

HEADS: dict[str, tuple] = {
    "class_name": tw.CLASSES,
    "body": tuple(tw.PALETTE),
    "pattern": tw.PATTERNS,
    "pattern_colour": tuple(tw.PALETTE),
    "background": tuple(tw.BACKGROUNDS),
    "accessory": (None, *tw.ACCESSORIES),
    "style": (None, *tw.STYLES),
}
IGNORE = -100  # label of an attribute the image does not show (cross_entropy's ignore_index)


def label_row(subject: tw.Subject, scene: tw.Scene) -> list[int]:
    """Class indices per head for a render of (subject, scene); IGNORE where the style hides the attribute."""
    labels = tw.scene_labels(subject, scene)
    visible = tw.OBSERVABLE[scene.style]
    row = []
    for head, values in HEADS.items():
        if head in ("body", "pattern", "pattern_colour") and head not in visible:
            row.append(IGNORE)
        else:
            row.append(values.index(labels[head]))
    return row


def random_scene_for_readers(rng: np.random.Generator, size: int, version: int = 1) -> tw.Scene:
    return tw.random_scene(
        rng,
        size,
        version,
        style=rng.choice([None, None, None, *tw.STYLES]),
        accessory=rng.choice([None, None, *tw.ACCESSORIES]),
        body=rng.choice([None] * 6 + list(tw.PALETTE)),
    )


def labelled_batch(
    subjects: list[tw.Subject], batch_size: int, rng: np.random.Generator, size: int = 32, version: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images (B, H, W, 3), int64 labels (B, len(HEADS)))."""
    images, labels = [], []
    for i in rng.choice(len(subjects), size=batch_size):
        subject = subjects[int(i)]
        scene = random_scene_for_readers(rng, size, version)
        images.append(tw.render(subject, scene, size, rng))
        labels.append(label_row(subject, scene))
    return np.stack(images), np.asarray(labels, dtype=np.int64)


class LabelledStream(torch.utils.data.IterableDataset):
    """Endless labelled batches; each DataLoader worker draws from its own seed."""

    def __init__(self, subjects: list[tw.Subject], batch_size: int, seed: int, size: int = 32, version: int = 1):
        self.subjects, self.batch_size, self.seed, self.size, self.version = subjects, batch_size, seed, size, version

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        info = torch.utils.data.get_worker_info()
        rng = np.random.default_rng([self.seed, info.id if info else 0])
        while True:
            yield labelled_batch(self.subjects, self.batch_size, rng, self.size, self.version)


class AttributeReader(nn.Module):
    def __init__(self, width: int = 48):
        super().__init__()
        w = width

        def block(cin: int, cout: int, stride: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.GroupNorm(8, cout), nn.SiLU())

        self.width = width
        self.features = nn.Sequential(
            block(3, w, 1),
            block(w, w, 1),
            block(w, 2 * w, 2),
            block(2 * w, 2 * w, 1),
            block(2 * w, 4 * w, 2),
            block(4 * w, 4 * w, 2),
        )
        self.trunk = nn.Sequential(nn.Flatten(), nn.Linear(4 * w * 16, 256), nn.SiLU())
        self.heads = nn.ModuleDict({name: nn.Linear(256, len(values)) for name, values in HEADS.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x: (B, 3, 32, 32) in [-1, 1] -> logits per head."""
        h = self.trunk(self.features(x))
        return {name: head(h) for name, head in self.heads.items()}


def to_input(images: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Noise, colour cast, contrast and blur of random strength per image: what generated images look like."""
    b = x.shape[0]

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(shape, generator=generator).to(x.device)

    sigma = rand(b, 1, 1, 1) * 0.25
    x = x + torch.randn(x.shape, generator=generator).to(x.device) * sigma
    x = x + (rand(b, 3, 1, 1) - 0.5) * 0.2
    x = x * (0.85 + 0.3 * rand(b, 1, 1, 1))
    blurred = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    alpha = rand(b, 1, 1, 1) * (rand(b, 1, 1, 1) < 0.5)
    return (x * (1 - alpha) + blurred * alpha).clamp(-1, 1)


def loss_fn(logits: dict[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    return sum(F.cross_entropy(logits[name], labels[:, i], ignore_index=IGNORE) for i, name in enumerate(HEADS))


def train_readers(
    subjects: list[tw.Subject],
    steps: int,
    batch_size: int = 128,
    lr: float = 2e-3,
    seed: int = 0,
    device: torch.device | str = "cpu",
    workers: int = 0,
    reader: AttributeReader | None = None,
    extra: tuple[np.ndarray, np.ndarray] | None = None,
    progress: bool = True,
    deadline: float | None = None,
    world_version: int = 1,
) -> tuple[AttributeReader, list[float]]:
    """Train (or go on training) readers on augmented fresh renders of `subjects`; `extra` (images, labels) are
    mixed into every batch (a quarter of it), e.g. renders the base model noised and denoised. `deadline` (a
    `time.monotonic()` value) ends training early."""

    from core.toy.pretrain import deadline_clock

    torch.manual_seed(seed)
    reader = (reader or AttributeReader()).to(device).train()
    opt = torch.optim.AdamW(reader.parameters(), lr=lr, weight_decay=0.01)
    sched = warmup_cosine(opt, steps, clock=deadline_clock(deadline))
    generator = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(
        LabelledStream(subjects, batch_size, seed, 32, world_version),
        batch_size=None,
        num_workers=workers,
        persistent_workers=workers > 0,
    )
    rng = np.random.default_rng(seed + 1)
    losses = []
    for step, (images, labels) in zip(tqdm(range(steps), desc="readers", disable=not progress, mininterval=5), loader):
        x = to_input(np.asarray(images), device)
        y = torch.as_tensor(np.asarray(labels)).to(device)
        if extra is not None:
            idx = rng.choice(len(extra[0]), size=batch_size // 4)
            x = torch.cat([x[: batch_size - len(idx)], to_input(extra[0][idx], device)])
            y = torch.cat([y[: batch_size - len(idx)], torch.as_tensor(extra[1][idx]).to(device)])
        loss = loss_fn(reader(augment(x, generator)), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if deadline is not None and time.monotonic() > deadline:
            break
    return reader.eval(), losses


@torch.no_grad()
def predict(reader: AttributeReader, images: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """uint8 (B, H, W, 3) -> predicted class index per head (B, len(HEADS))."""
    device = next(reader.parameters()).device
    out = []
    for i in range(0, len(images), batch_size):
        logits = reader(to_input(images[i : i + batch_size], device))
        out.append(torch.stack([logits[name].argmax(-1) for name in HEADS], dim=1).cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, len(HEADS)), dtype=np.int64)


def read(reader: AttributeReader, images: np.ndarray | list[np.ndarray]) -> list[dict]:
    """The attributes each image shows, by name: [{"body": "red", "accessory": None, ...}, ...]."""
    images = np.stack(images) if isinstance(images, list) else images
    return [{name: HEADS[name][int(v)] for name, v in zip(HEADS, row)} for row in predict(reader, images)]


def accuracy(reader: AttributeReader, images: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Accuracy per head over the labelled (non-IGNORE) entries, plus their mean as "mean"."""
    return accuracy_of(predict(reader, images), labels)


def accuracy_of(pred: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """`accuracy` of predicted class indices `pred` (B, len(HEADS)) against `labels`."""
    out = {}
    for i, name in enumerate(HEADS):
        mask = labels[:, i] != IGNORE
        out[name] = float((pred[mask, i] == labels[mask, i]).mean()) if mask.any() else float("nan")
    out["mean"] = float(np.nanmean([out[n] for n in HEADS]))
    return out


def save_readers(reader: AttributeReader, folder: str, dtype: torch.dtype = torch.float16) -> None:
    os.makedirs(folder, exist_ok=True)
    save_file(
        {k: v.detach().to("cpu", dtype).contiguous() for k, v in reader.state_dict().items()},
        os.path.join(folder, "readers.safetensors"),
    )
    with open(os.path.join(folder, "readers.json"), "w") as f:
        json.dump({"width": reader.width, "heads": {k: list(v) for k, v in HEADS.items()}}, f, indent=1)


def load_readers(folder: str) -> AttributeReader:
    """Readers saved by `save_readers` (safetensors; float32 in memory)."""
    with open(os.path.join(folder, "readers.json")) as f:
        meta = json.load(f)
    if meta["heads"] != {k: list(v) for k, v in HEADS.items()}:
        raise ValueError(f"readers in {folder} were trained for another toy world (heads differ): retrain them")
    reader = AttributeReader(meta["width"])
    reader.load_state_dict({k: v.float() for k, v in load_file(os.path.join(folder, "readers.safetensors")).items()})
    return reader.eval()
