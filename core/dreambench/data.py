"""DreamBench: the subject-driven benchmark of DreamBooth (Ruiz et al., "DreamBooth: Fine Tuning Text-to-Image
Diffusion Models for Subject-Driven Generation", CVPR 2023), which SuTI reports on (its Table 1).

The loader reads the original `google/dreambooth` layout: `dataset/<subject>/*.jpg` and
`dataset/prompts_and_classes.txt`, which holds the class rows (`subject_name,class`) and two `prompt_list = [...]`
blocks, object prompts then live-subject prompts, each template written as
`'a {0} {1} in the jungle'.format(unique_token, class_token)`. Everything is parsed, nothing hard-coded; a folder,
row, line or image the loader cannot use is reported in `DreamBench.problems` and skipped, never raised.

Protocol (DreamBooth section 4.1): every subject with every prompt of its list (25), 4 images each; live subjects are
the classes dog and cat. Prompt kinds follow the paper's grouping: object prompts 0-19 re-contextualization;
live prompts 0-9 re-contextualization and 10-19 accessorization; 20-24 property modification in both.

Generation for one subject, by either method (no Ray here; actors/dreambench_pool.py runs it on the cluster):
- apprentice: the subject's images as demonstrations captioned "a photo of a {class}", the prompt with the class
  word where the identifier was ("a dog in the jungle");
- expert: the base fine-tuned on the same images captioned "a photo of a {identifier} {class}", then the prompts
  "a {identifier} {class} ..." (identifier "sks" as in DreamBooth by default; "" for class-only experts).
"""

from __future__ import annotations

import ast
import re
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow.fs as pafs
from PIL import Image, ImageOps

from core.data import storage
from core.data.images import from_png, to_png
from core.method.expert import seed_for

PROMPTS_FILE = "prompts_and_classes.txt"
LIVE_CLASSES = frozenset({"dog", "cat"})
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
KINDS = ("recontextualization", "accessorization", "property")
METHODS = ("apprentice", "expert")

_TEMPLATE_LINE = re.compile(
    r"""^\s*(?P<literal>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")\s*\.format\(\s*unique_token\s*,\s*class_token\s*\)\s*,?\s*$"""
)


class DreamBenchError(ValueError):
    """The prompt file cannot give the protocol: no class rows, or a prompt list missing."""


@dataclass(frozen=True)
class Prompt:
    index: int  # position in its list
    template: str  # "a {0} {1} in the jungle": {0} the identifier, {1} the class word
    kind: str  # one of KINDS

    def text(self, identifier: str, class_name: str) -> str:
        """The template filled in; an empty identifier leaves no double space."""
        return " ".join(self.template.format(identifier, class_name).split())


@dataclass(frozen=True)
class Subject:
    name: str  # folder name, e.g. "dog2"
    class_name: str  # e.g. "dog", "stuffed animal"
    live: bool
    images: tuple[str, ...]  # URIs of the readable images, sorted by name


@dataclass
class DreamBench:
    root: str
    subjects: list[Subject]
    object_prompts: list[Prompt]
    live_prompts: list[Prompt]
    problems: list[str] = field(default_factory=list)

    def prompts_for(self, subject: Subject) -> list[Prompt]:
        return self.live_prompts if subject.live else self.object_prompts


def prompt_kind(index: int, live: bool) -> str:
    if index >= 20:
        return "property"
    if live and index >= 10:
        return "accessorization"
    return "recontextualization"


def _template(line: str) -> str | None:
    """The template of one `'...'.format(unique_token, class_token),` line, or None when the line is not one."""
    match = _TEMPLATE_LINE.match(line)
    if not match:
        return None
    try:
        template = ast.literal_eval(match.group("literal"))  # a string literal, never code
        template.format("identifier", "class")
    except (ValueError, SyntaxError, IndexError, KeyError):
        return None
    return template if "{0}" in template and "{1}" in template else None


def parse_prompt_file(text: str) -> tuple[dict[str, str], dict[str, list[str]], list[str]]:
    """prompts_and_classes.txt -> ({subject: class}, {"object"|"live": [template]}, problems)."""
    classes: dict[str, str] = {}
    lists: dict[str, list[str]] = {}
    problems: list[str] = []
    lines = text.splitlines()
    header = next(
        (i for i, line in enumerate(lines) if line.strip().replace(" ", "").lower() == "subject_name,class"), None
    )
    if header is not None:
        for line in lines[header + 1 :]:
            if not line.strip():
                break
            name, sep, class_name = line.partition(",")
            name, class_name = name.strip(), class_name.strip()
            if not sep or not name or not class_name:
                problems.append(f"class row {line.strip()!r}: not 'subject_name,class'; skipped")
            elif name in classes:
                problems.append(f"class row {line.strip()!r}: subject {name!r} listed twice; the first row is used")
            else:
                classes[name] = class_name
    heading, block = "", None
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        if block is None:
            if stripped.replace(" ", "").startswith("prompt_list=["):
                # Which list this is: the heading above it says ("Object Prompts", "Live Subject Prompts"), else order.
                kind = (
                    "live"
                    if "live" in heading.lower()
                    else "object"
                    if "object" in heading.lower()
                    else ("live" if "object" in lists else "object")
                )
                block = []
                if kind in lists:
                    problems.append(f"line {number}: a second {kind} prompt list; ignored")
                else:
                    lists[kind] = block
            elif stripped:
                heading = stripped
            continue
        if stripped.startswith("]"):
            block, heading = None, ""
            continue
        if not stripped:
            continue
        template = _template(line)
        if template is None:
            problems.append(
                f"line {number}: not a '...{{0}} {{1}}...'.format(unique_token, class_token) template: "
                f"{stripped[:80]!r}; skipped"
            )
            continue
        block.append(template)
    return classes, lists, problems


def square(image: np.ndarray, size: int) -> np.ndarray:
    """Centre crop to a square and resize to `size` (the model's resolution): uint8 (size, size, 3)."""
    return np.asarray(ImageOps.fit(Image.fromarray(image), (size, size), Image.BICUBIC))


def read_image(uri: str) -> np.ndarray:
    """uint8 (H, W, 3); raises ValueError when the file is not a whole image."""
    return from_png(storage.read_bytes(uri))


def load(data_uri: str | None, config_key: str = "dreambench.data") -> DreamBench:
    """Read a DreamBench folder (local path or URI). Raises only when the prompt file is absent or unusable."""
    if not data_uri:
        raise storage.MissingInputError(
            f"no DreamBench folder given: set config key `{config_key}` "
            "(the dataset/ folder of a google/dreambooth clone)"
        )
    prompt_uri = storage.join(data_uri, PROMPTS_FILE)
    storage.require(prompt_uri, config_key, "DreamBench prompt file")
    classes, lists, problems = parse_prompt_file(storage.read_bytes(prompt_uri).decode("utf-8", errors="replace"))
    if not classes:
        raise DreamBenchError(f"{prompt_uri}: no 'subject_name,class' rows found (set by config key `{config_key}`)")
    missing = [k for k in ("object", "live") if not lists.get(k)]
    if missing:
        raise DreamBenchError(
            f"{prompt_uri}: no {' or '.join(missing)} prompt list found (set by config key `{config_key}`)"
        )
    object_prompts = [Prompt(i, t, prompt_kind(i, False)) for i, t in enumerate(lists["object"])]
    live_prompts = [Prompt(i, t, prompt_kind(i, True)) for i, t in enumerate(lists["live"])]

    fs, root = storage.resolve(data_uri)
    entries = fs.get_file_info(pafs.FileSelector(root, recursive=False))
    folders = sorted(
        e.base_name for e in entries if e.type == pafs.FileType.Directory and not e.base_name.startswith(".")
    )
    for name in folders:
        if name not in classes:
            problems.append(f"folder {name!r}: no class row in {PROMPTS_FILE}; skipped")
    subjects = []
    for name, class_name in sorted(classes.items()):
        if name not in folders:
            problems.append(f"class row {name},{class_name}: no folder {name!r}; skipped")
            continue
        images = []
        files = fs.get_file_info(pafs.FileSelector(f"{root}/{name}", recursive=False))
        for info in sorted(files, key=lambda i: i.base_name):
            if info.type != pafs.FileType.File or info.base_name.startswith("."):
                continue
            uri = storage.join(data_uri, name, info.base_name)
            if not info.base_name.lower().endswith(IMAGE_SUFFIXES):
                problems.append(f"{name}/{info.base_name}: not an image file; ignored")
                continue
            try:
                read_image(uri)
            except ValueError as err:
                problems.append(f"{name}/{info.base_name}: unreadable image ({err}); skipped")
                continue
            images.append(uri)
        if not images:
            problems.append(f"folder {name!r}: no readable image; subject skipped")
            continue
        subjects.append(Subject(name, class_name, class_name.lower() in LIVE_CLASSES, tuple(images)))
    return DreamBench(data_uri, subjects, object_prompts, live_prompts, problems)


# ---------------------------------------------------------------- generation for one subject


def demo_caption(class_name: str, identifier: str = "") -> str:
    return " ".join(f"a photo of a {identifier} {class_name}".split())


def _rows(
    method: str,
    subject: Subject,
    prompts: list[Prompt],
    texts: list[str],
    images: list[np.ndarray],
    seeds: list[int],
    common: dict,
) -> list[dict]:
    rows = []
    for prompt, text, per_prompt, seed in zip(prompts, texts, images, seeds):
        for j, image in enumerate(per_prompt):
            rows.append(
                {
                    "method": method,
                    "subject": subject.name,
                    "class_name": subject.class_name,
                    "live": subject.live,
                    "prompt_index": prompt.index,
                    "prompt_kind": prompt.kind,
                    "prompt": text,
                    "eval_prompt": prompt.text("", subject.class_name),
                    "sample_index": j,
                    "seed": seed,
                    "image": to_png(image),
                    **common,
                }
            )
    return rows


def generate_apprentice(
    apprentice,
    subject: Subject,
    prompts: list[Prompt],
    demos: list[np.ndarray],
    images_per_prompt: int,
    seed: int,
    sampling: dict,
    provenance: dict,
) -> list[dict]:
    """DREAMBENCH rows of one subject drawn by the apprentice. demos: K uint8 (R, R, 3) at the model's resolution R.

    sampling: sampler, num_inference_steps, guidance_scale, demo_guidance_scale (core.method.apprentice.sample's
    keywords).
    provenance: backbone, run_hash.
    """
    from core.method.apprentice import sample

    captions = [demo_caption(subject.class_name)] * len(demos)
    texts = [p.text("", subject.class_name) for p in prompts]
    seeds = [seed_for(seed, subject.name, p.index) for p in prompts]
    start = time.perf_counter()
    images = [
        list(sample(apprentice, text, demos, captions, num_images=images_per_prompt, seed=s, **sampling))
        for text, s in zip(texts, seeds)
    ]
    common = {"num_demos": len(demos), "fine_tune_s": 0.0, "sample_s": time.perf_counter() - start, **provenance}
    return _rows("apprentice", subject, prompts, texts, images, seeds, common)


def generate_expert(
    expert,
    subject: Subject,
    prompts: list[Prompt],
    demos: list[np.ndarray],
    images_per_prompt: int,
    seed: int,
    identifier: str,
    provenance: dict,
) -> list[dict]:
    """DREAMBENCH rows of one subject drawn by a per-subject expert: `expert` (a core.method.expert.Expert) is reset to
    the base, fine-tuned on `demos` captioned with the identifier, then samples each prompt with its own settings."""
    from core.models.sampling import sample

    cfg = expert.cfg
    start = time.perf_counter()
    expert.fine_tune(
        demos, [demo_caption(subject.class_name, identifier)] * len(demos), seed_for(seed, subject.name, "expert")
    )
    tuned = time.perf_counter()
    texts = [p.text(identifier, subject.class_name) for p in prompts]
    seeds = [seed_for(seed, subject.name, p.index) for p in prompts]
    images = [
        list(
            sample(
                expert.backbone,
                [text] * images_per_prompt,
                sampler=cfg.sampler,
                num_inference_steps=cfg.num_inference_steps,
                guidance_scale=cfg.guidance_scale,
                seed=s,
            )
        )
        for text, s in zip(texts, seeds)
    ]
    common = {
        "num_demos": len(demos),
        "fine_tune_s": tuned - start,
        "sample_s": time.perf_counter() - tuned,
        **provenance,
    }
    return _rows("expert", subject, prompts, texts, images, seeds, common)
