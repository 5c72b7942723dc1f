"""The toy world v1: procedural subjects drawn in scenes at 32x32, where every attribute is known.

A subject is a class word ("ball", 8 classes) plus identity the class word does not say: body colour (8), pattern
(4) and pattern colour (7 others): 1,792 subjects. Scenes add a background (8), position, scale and view
(upright or upside down), and optionally a property edit (the body colour), an accessory (4) or a style (3).

Two scene distributions share these subjects, captions and prompts (`random_scene(version=...)`,
`world.version`): version 1 draws textured backgrounds, either view, radius 7-11 and 2-3 px pattern cells;
version 2 keeps what the evidence needs (the same identity, its colour binding, the four prompt skills) and drops
what only makes it harder to learn: plain backgrounds, upright subjects, radius 10-12 near the centre, pattern
cells twice as large.
Prompts follow 23 templates in the spirit of DreamBench's 25 (`TEMPLATES`). The world emits demonstrations with
class-only captions, unseen prompts by skill and a noisy URL-grouped "web" corpus for mining; trained attribute
readers (core/toy/readers.py) read renders back, and `subject_fidelity` / `text_fidelity` turn what they read into
exact scores. Deterministic by seed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from itertools import product

import numpy as np

from core.data.images import to_png

CLASSES = ("ball", "box", "cone", "kite", "cross", "egg", "tower", "bowl")
PALETTE = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 70, 220),
    "yellow": (235, 215, 40),
    "purple": (150, 60, 200),
    "orange": (245, 140, 30),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
PATTERNS = ("stripes", "bars", "dots", "checks")
BACKGROUNDS = {
    "grass": (95, 135, 75),
    "sand": (200, 180, 135),
    "sky": (135, 170, 210),
    "stone": (125, 125, 125),
    "night": (35, 40, 75),
    "wood": (135, 95, 60),
    "snow": (205, 218, 228),
    "brick": (160, 82, 62),
}
ACCESSORIES = {"hat": (255, 0, 200), "flag": (0, 235, 235), "balloon": (150, 255, 0), "pedestal": (255, 170, 200)}
STYLES = ("grayscale", "blocky", "negative")
VIEWS = ("upright", "upside-down")
VERSIONS = (1, 2)
SKILLS = ("recontextualization", "property", "accessory", "style")


@dataclass(frozen=True)
class Subject:
    class_name: str
    body: str
    pattern: str
    pattern_colour: str

    @property
    def subject_id(self) -> str:
        return f"{self.class_name}-{self.body}-{self.pattern}-{self.pattern_colour}"

    def identity(self) -> dict:
        return {"body": self.body, "pattern": self.pattern, "pattern_colour": self.pattern_colour}

    def describe(self) -> str:
        return f"{self.body} {self.class_name} with {self.pattern_colour} {self.pattern}"


@dataclass(frozen=True)
class Scene:
    background: str
    cx: int
    cy: int
    radius: int
    body: str | None = None  # property edit: replaces the subject's body colour
    accessory: str | None = None
    style: str | None = None
    view: str = "upright"
    textured: bool = True  # the background's texture (version 1) or its plain colour (version 2)
    cell: int = 1  # pattern cells are this many times their version-1 size


@dataclass(frozen=True)
class Prompt:
    prompt_id: str
    text: str
    skill: str
    truth: dict  # the attributes an image must show to follow the prompt


def all_subjects() -> list[Subject]:
    colours = list(PALETTE)
    return [Subject(c, b, p, pc) for c, b, p, pc in product(CLASSES, colours, PATTERNS, colours) if pc != b]


def _unit_hash(*parts: object) -> float:
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_subjects(seed: int, test_fraction: float) -> tuple[list[Subject], list[Subject]]:
    """(train, test): test subjects are seen by no training stage."""
    train, test = [], []
    for s in all_subjects():
        (test if _unit_hash(seed, "split", s.subject_id) < test_fraction else train).append(s)
    return train, test


def split_validation(train: list[Subject], seed: int, fraction: float) -> tuple[list[Subject], list[Subject]]:
    """(train, validation): a share of the train subjects kept out of the corpus (so no expert or apprentice sees
    them), to choose settings such as the threshold on without looking at test subjects. The base model and the
    scorer, trained on all train subjects, have seen them."""
    rest, validation = [], []
    for s in train:
        (validation if _unit_hash(seed, "validation", s.subject_id) < fraction else rest).append(s)
    return rest, validation


# ---------------------------------------------------------------- drawing


def _shape_mask(class_name: str, xx: np.ndarray, yy: np.ndarray, cx: float, cy: float, r: float) -> np.ndarray:
    dx, dy = (xx - cx) / r, (yy - cy) / r
    if class_name == "ball":
        return dx**2 + dy**2 <= 1.0
    if class_name == "box":
        return (np.abs(dx) <= 0.85) & (np.abs(dy) <= 0.85)
    if class_name == "cone":
        return (dy <= 0.9) & (dy >= -1.0) & (np.abs(dx) <= (dy + 1.0) / 1.9)
    if class_name == "kite":
        return np.abs(dx) + np.abs(dy) <= 1.0
    if class_name == "cross":
        return ((np.abs(dx) <= 0.38) & (np.abs(dy) <= 1.0)) | ((np.abs(dy) <= 0.38) & (np.abs(dx) <= 1.0))
    if class_name == "egg":
        return (dx / 0.72) ** 2 + dy**2 <= 1.0
    if class_name == "tower":
        return (np.abs(dx) <= 0.45) & (np.abs(dy) <= 1.0)
    if class_name == "bowl":
        return (dx**2 + (dy + 0.45) ** 2 <= 1.0) & (dy >= -0.45)
    raise ValueError(f"unknown class {class_name!r}")


def _pattern_mask(pattern: str, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    if pattern == "stripes":
        return (yy // 2) % 2 == 0
    if pattern == "bars":
        return (xx // 2) % 2 == 0
    if pattern == "dots":
        return ((xx % 4) < 2) & ((yy % 4) < 2)
    if pattern == "checks":
        return ((xx // 3 + yy // 3) % 2) == 0
    raise ValueError(f"unknown pattern {pattern!r}")


def texture(name: str, size: int) -> np.ndarray:
    """The background's texture (H, W), added to its colour on every channel."""
    yy, xx = np.mgrid[0:size, 0:size]
    return {
        "grass": lambda: 10 * np.sin(xx * 1.7),
        "sand": lambda: 6 * np.sin((xx + yy) * 0.9),
        "sky": lambda: (yy - size / 2) * 0.8,
        "stone": lambda: 8 * ((xx // 4 + yy // 4) % 2),
        "night": lambda: 5 * np.cos(yy * 0.5),
        "wood": lambda: 9 * np.sin(yy * 1.3),
        "snow": lambda: 12 * ((xx * 7 + yy * 13) % 11 == 0),
        "brick": lambda: 14 * ((yy % 4 == 0) | ((xx + 4 * ((yy // 4) % 2)) % 8 == 0)),
    }[name]()


def _background(name: str, size: int, rng: np.random.Generator, textured: bool = True) -> np.ndarray:
    base = np.array(BACKGROUNDS[name], dtype=np.float32)
    img = np.broadcast_to(base, (size, size, 3)).copy()
    if textured:
        img += texture(name, size)[..., None]
    img += rng.normal(0, 3, size=img.shape)
    return img


def render(subject: Subject, scene: Scene, size: int = 32, rng: np.random.Generator | None = None) -> np.ndarray:
    """Draw `subject` in `scene`. Returns uint8 (size, size, 3)."""
    rng = rng or np.random.default_rng(0)
    img = _background(scene.background, size, rng, scene.textured)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    body = scene.body or subject.body
    # Upside down: the shape is mirrored about its centre row (the pattern stays on the pixel grid).
    sy = (2 * scene.cy - yy) if scene.view == "upside-down" else yy
    outer = _shape_mask(subject.class_name, xx, sy, scene.cx, scene.cy, scene.radius)
    # The pattern lives inside a shrunk copy of the shape, so the body colour stays the outline and majority.
    inner = _shape_mask(subject.class_name, xx, sy, scene.cx, scene.cy, scene.radius * 0.72)
    img[outer] = PALETTE[body]
    cells = _pattern_mask(subject.pattern, xx.astype(int) // scene.cell, yy.astype(int) // scene.cell)
    img[inner & cells] = PALETTE[subject.pattern_colour]
    if scene.accessory == "hat":
        top = int(round(scene.cy - scene.radius))
        hat = (np.abs(xx - scene.cx) <= scene.radius * 0.5) & (yy >= top - 4) & (yy < top)
        img[hat] = ACCESSORIES["hat"]
    elif scene.accessory == "flag":
        pole_x = int(round(scene.cx + scene.radius + 2))
        pole = (xx == pole_x) & (yy >= scene.cy - scene.radius) & (yy <= scene.cy + scene.radius)
        flag = (
            (xx > pole_x) & (xx <= pole_x + 4) & (yy >= scene.cy - scene.radius) & (yy < scene.cy - scene.radius + 4)
        )
        img[pole] = (90, 90, 90)
        img[flag] = ACCESSORIES["flag"]
    elif scene.accessory == "balloon":
        bx, by = scene.cx - scene.radius, scene.cy - scene.radius - 1
        string = (xx == bx) & (yy > by + 2) & (yy <= scene.cy - scene.radius * 0.3)
        img[string] = (90, 90, 90)
        img[(xx - bx) ** 2 + (yy - by) ** 2 <= 6.5] = ACCESSORIES["balloon"]
    elif scene.accessory == "pedestal":
        bottom = int(round(scene.cy + scene.radius))
        stand = (np.abs(xx - scene.cx) <= scene.radius * 0.8) & (yy > bottom) & (yy <= bottom + 3)
        img[stand] = ACCESSORIES["pedestal"]
    img = np.clip(img, 0, 255)
    if scene.style == "grayscale":
        lum = img @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        img = np.repeat(lum[..., None], 3, axis=-1)
    elif scene.style == "blocky":
        # Averages of whole levels (as render_batch): both renderers agree on them to the last bit.
        small = np.round(img).reshape(size // 4, 4, size // 4, 4, 3).mean(axis=(1, 3))
        img = np.repeat(np.repeat(small, 4, axis=0), 4, axis=1)
    elif scene.style == "negative":
        img = 255.0 - img
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def random_scene(rng: np.random.Generator, size: int = 32, version: int = 1, **overrides) -> Scene:
    """A random scene of world `version` (module docstring); `overrides` set fields (accessory, style, body...)."""
    if version == 1:
        scene = Scene(
            background=str(rng.choice(list(BACKGROUNDS))),
            cx=int(rng.integers(size // 2 - 4, size // 2 + 5)),
            cy=int(rng.integers(size // 2 - 2, size // 2 + 5)),
            radius=int(rng.integers(7, 12)),
            view=str(rng.choice(VIEWS)),
        )
    elif version == 2:
        scene = Scene(
            background=str(rng.choice(list(BACKGROUNDS))),
            cx=int(rng.integers(size // 2 - 2, size // 2 + 2)),
            cy=int(rng.integers(size // 2 - 1, size // 2 + 2)),
            radius=int(rng.integers(10, 13)),
            textured=False,
            cell=2,
        )
    else:
        raise ValueError(f"unknown world version {version!r}; known: {VERSIONS}")
    scene = replace(scene, **overrides)
    # Keep accessories inside the frame: the flag right of the subject, the hat and balloon above, the pedestal below.
    r = scene.radius
    if scene.accessory == "flag":
        scene = replace(scene, cx=min(scene.cx, size - 7 - r))
    if scene.accessory == "hat":
        scene = replace(scene, cy=max(scene.cy, r + 4))
    if scene.accessory == "balloon":
        scene = replace(scene, cx=max(scene.cx, r + 3), cy=max(scene.cy, r + 4))
    if scene.accessory == "pedestal":
        scene = replace(scene, cy=min(scene.cy, size - 5 - r))
    return scene


# ---------------------------------------------------------------- captions and prompts


ACCESSORY_PHRASES = {
    "hat": "wearing a hat",
    "flag": "with a flag",
    "balloon": "with a balloon",
    "pedestal": "on a pedestal",
}

# Prompt templates, in the spirit of DreamBench's 25, for the toy vocabulary: (skill, scene overrides). Only a
# re-contextualization names the background; the others leave it to the model, as DreamBench's do.
TEMPLATES: tuple[tuple[str, dict], ...] = (
    *(("recontextualization", {"background": bg}) for bg in BACKGROUNDS),
    *(("property", {"body": colour}) for colour in PALETTE),
    *(("accessory", {"accessory": name}) for name in ACCESSORIES),
    *(("style", {"style": name}) for name in STYLES),
)


def class_caption(subject: Subject, scene: Scene) -> str:
    """What a demonstration or a corpus image says: class and place, never the identity."""
    return f"a {subject.class_name} on {scene.background}"


def _caption(head: str, scene: Scene, with_background: bool) -> str:
    text = head + (f" on {scene.background}" if with_background else "")
    if scene.accessory:
        text += " " + ACCESSORY_PHRASES[scene.accessory]
    if scene.style:
        text += f", {scene.style} style"
    return text


def full_caption(subject: Subject, scene: Scene, with_background: bool = True) -> str:
    """Identity spelled out: for base pretraining and scorer training on train subjects only."""
    body = scene.body or subject.body
    return _caption(
        f"a {body} {subject.class_name} with {subject.pattern_colour} {subject.pattern}", scene, with_background
    )


def prompt_text(class_name: str, scene: Scene, with_background: bool = True) -> str:
    """A prompt in the form users write: class word, edits, accessory and style, never the identity."""
    body = f"{scene.body} " if scene.body else ""
    return _caption(f"a {body}{class_name}", scene, with_background)


def scene_truth(scene: Scene, with_background: bool = True) -> dict:
    """The attributes a prompt for `scene` asks for."""
    truth = {"background": scene.background} if with_background else {}
    if scene.body:
        truth["body"] = scene.body
    if scene.accessory:
        truth["accessory"] = scene.accessory
    if scene.style:
        truth["style"] = scene.style
    return truth


def prompts_for(
    class_name: str,
    count: int,
    rng: np.random.Generator,
    size: int = 32,
    keep_colours: tuple[str, ...] = (),
    key: str = "",
    version: int = 1,
) -> list[tuple[Prompt, Scene]]:
    """Unseen prompts p_s for a subject of `class_name` from `TEMPLATES`, cycling through the skills; each comes
    with the scene an oracle would draw. A property edit never asks for a colour in `keep_colours` (the subject's
    own, when known)."""
    out = []
    for i in range(count):
        skill = SKILLS[i % len(SKILLS)]
        choices = [o for k, o in TEMPLATES if k == skill and o.get("body") not in keep_colours]
        overrides = dict(choices[int(rng.integers(len(choices)))])
        scene = random_scene(rng, size, version, **overrides)
        with_background = "background" in overrides
        text = prompt_text(class_name, scene, with_background)
        pid = hashlib.sha256(f"{key}|{i}|{text}".encode()).hexdigest()[:12]
        out.append((Prompt(pid, text, skill, scene_truth(scene, with_background)), scene))
    return out


# ---------------------------------------------------------------- images as bytes


def demonstrations(
    subject: Subject, count: int, rng: np.random.Generator, size: int = 32, version: int = 1
) -> list[tuple[np.ndarray, str]]:
    """C_s: `count` renders of the subject in random plain scenes of world `version`, each with a class-only
    caption."""
    out = []
    for _ in range(count):
        scene = random_scene(rng, size, version)
        out.append((render(subject, scene, size, rng), class_caption(subject, scene)))
    return out


# ---------------------------------------------------------------- the noisy web corpus


def corpus_rows(train_subjects: list[Subject], cfg, rng: np.random.Generator) -> list[dict]:
    """URL-grouped corpus rows (CORPUS_SCHEMA) of train subjects with known noise.

    Clean groups hold one subject; a share of groups mix two subjects of the same class; some clean groups get one
    off-topic image of another class; a few records carry corrupt image bytes.
    """
    size = cfg.resolution
    picks = rng.choice(len(train_subjects), size=cfg.corpus_groups, replace=False)
    rows: list[dict] = []
    for g, idx in enumerate(picks):
        subject = train_subjects[int(idx)]
        url = f"https://toy.example/album/{g:05d}"
        n = int(rng.integers(cfg.group_min_images, cfg.group_max_images + 1))
        members = [subject] * n
        if rng.random() < cfg.mixed_group_fraction:
            same_class = [s for s in train_subjects if s.class_name == subject.class_name and s != subject]
            other = same_class[int(rng.integers(len(same_class)))]
            members = [subject if i % 2 == 0 else other for i in range(n)]
        elif rng.random() < cfg.offtopic_image_fraction * 3:
            others = [s for s in train_subjects if s.class_name != subject.class_name]
            members[-1] = others[int(rng.integers(len(others)))]
        for member in members:
            scene = random_scene(rng, size, cfg.version)
            rows.append(
                {
                    "url": url,
                    "image": to_png(render(member, scene, size, rng)),
                    "caption": class_caption(member, scene),
                    "truth_subject_id": member.subject_id,
                }
            )
    for i in rng.choice(len(rows), size=min(cfg.corrupt_records, len(rows)), replace=False):
        rows[int(i)]["image"] = b"\x89PNG\r\n\x1a\n" + rng.bytes(40)  # a PNG header, then garbage
        rows[int(i)]["truth_subject_id"] = None
    return rows


# ---------------------------------------------------------------- fidelity from read attributes

# The identity attributes a render still shows under each style: grayscale removes colour, 4x4 blocks blend the
# pattern into the body. Subject fidelity counts only these; the trained readers (core/toy/readers.py) learn only
# these.
OBSERVABLE = {
    None: ("body", "pattern", "pattern_colour"),
    "negative": ("body", "pattern", "pattern_colour"),
    "grayscale": ("pattern",),
    "blocky": ("body",),
}


def identity_wanted(subject: Subject, truth: dict | None = None) -> dict:
    """The identity attributes an image of `subject` following a prompt with `truth` must show (a property edit
    replaces the body colour; a style hides what it removes)."""
    truth = truth or {}
    want = {k: v for k, v in subject.identity().items() if k in OBSERVABLE[truth.get("style")]}
    if "body" in truth:
        want.pop("body", None)  # the prompt asked for another body colour: text fidelity checks it
    return want


def subject_fidelity(read: dict, subject: Subject, truth: dict | None = None) -> float:
    """Share of the subject's identity attributes found in `read` (one image's attributes, from the readers)."""
    want = identity_wanted(subject, truth)
    if not want:
        return float("nan")
    return float(np.mean([read.get(k) == v for k, v in want.items()]))


def text_fidelity(read: dict, truth: dict) -> float:
    """Share of the prompt's attributes (background, property, accessory, style) found in `read`."""
    return float(np.mean([read.get(k) == v for k, v in truth.items()]))


def scene_labels(subject: Subject, scene: Scene) -> dict:
    """Every attribute a render of (subject, scene) shows, as the readers name them (None: absent)."""
    return {
        "class_name": subject.class_name,
        "body": scene.body or subject.body,
        "pattern": subject.pattern,
        "pattern_colour": subject.pattern_colour,
        "background": scene.background,
        "accessory": scene.accessory,
        "style": scene.style,
    }


def subject_to_json(subject: Subject) -> str:
    return json.dumps(asdict(subject), sort_keys=True)


def subject_from_json(text: str) -> Subject:
    return Subject(**json.loads(text))


def truth_subject(record: dict) -> Subject:
    """The toy subject a D_S record holds: its `subject_truth` (a whole subject from the evaluation set, or the
    subject id that a pure mined cluster carries)."""
    truth = json.loads(record.get("subject_truth") or "null")
    if not truth:
        raise ValueError(f"subject {record['subject_id']}: no known toy subject (an impure or real-world cluster)")
    if set(truth) == {"subject_id"}:
        return Subject(*truth["subject_id"].split("-"))
    return Subject(**truth)
