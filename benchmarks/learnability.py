"""How fast can two CPU cores teach the toy world to a base model? Base identity against training minutes, for
candidates that pair a world version with a training recipe.

    python -m benchmarks.learnability --work W                       # every candidate, 15 minutes each
    python -m benchmarks.learnability --work W --candidates v2,v2-v-minsnr --budget-min 30 --marks 10,20,30
    python -m benchmarks.learnability --work W --quick               # a minute in all: every code path

Each candidate trains its preset (`toy` unless named) from scratch with the pretraining stage's own loop
(`core.toy.pretrain.pretrain`: train subjects, identity-spelling captions, batch 32, EMA weights) for `--budget-min`
minutes of training time. At each of `--marks` (training minutes; sampling time excluded) its EMA weights draw
`--eval-n` full captions of *test* subjects (unseen combinations of seen attribute values) at guidance
`--guidance`, and attribute readers trained on that world version read them back: identity is the mean of the
readers' accuracies on body colour, pattern and pattern colour (chance: about 0.17). The readers of every version
are trained here the same way (`--reader-min` minutes on augmented renders of train subjects), and their accuracy
on clean renders of test subjects is reported beside the curves.

Run alone: two jobs on two cores slow each other. A finished candidate (same name, budget and marks) is kept from
an earlier run of the same work folder, so an interrupted study resumes at the candidate it was in. Writes
`learnability.json`, `learnability.md`, `learnability.png` (the curves) and `learnability_samples.png` (each
candidate's last samples) to `--out`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from core.config import PretrainConfig
from core.models import backbone as bb
from core.toy import readers as rd
from core.toy import world as tw
from core.toy.evaluation import IDENTITY, base_identity
from core.toy.pretrain import pretrain


@dataclass(frozen=True)
class Candidate:
    name: str
    world_version: int
    recipe: PretrainConfig
    note: str
    preset: str = "toy"


BASE_RECIPE = PretrainConfig(
    steps=10**7, batch_size=32, lr=1e-3, schedule="constant", ema_decay=0.995, threads=2, budget_schedule=True
)
CANDIDATES = {
    c.name: c
    for c in (
        Candidate("v1", 1, BASE_RECIPE, "world v1 as it is; the stage's recipe (epsilon, unweighted)"),
        Candidate("v2", 2, BASE_RECIPE, "world v2 (plain, larger); the same recipe"),
        Candidate(
            "v2-v-minsnr",
            2,
            replace(BASE_RECIPE, prediction_type="v_prediction", snr_gamma=5.0),
            "world v2; v-prediction with Min-SNR-5 weighting",
        ),
        Candidate(
            "v1-v-minsnr",
            1,
            replace(BASE_RECIPE, prediction_type="v_prediction", snr_gamma=5.0),
            "world v1; v-prediction with Min-SNR-5 weighting",
        ),
        Candidate(
            "v2-v-minsnr-plain",
            2,
            replace(BASE_RECIPE, prediction_type="v_prediction", snr_gamma=5.0, plain_steps=1000),
            "world v2; v-prediction, Min-SNR-5; a curriculum: plain scenes (no style, no edit) for 1,000 steps",
        ),
        Candidate(
            "v2-pooled",
            2,
            replace(BASE_RECIPE, prediction_type="v_prediction", snr_gamma=5.0),
            "world v2; v-prediction, Min-SNR-5; the toy-pooled preset (pooled text added to the timestep embedding)",
            preset="toy-pooled",
        ),
        Candidate(
            "v2-words",
            2,
            replace(BASE_RECIPE, prediction_type="v_prediction", snr_gamma=5.0),
            "world v2; v-prediction, Min-SNR-5; the toy-words preset (a word-level tokenizer and text encoder)",
            preset="toy-words",
        ),
        Candidate(
            "v2-words-plain",
            2,
            replace(BASE_RECIPE, prediction_type="v_prediction", snr_gamma=5.0, plain_steps=1000),
            "world v2; v-prediction, Min-SNR-5, plain scenes for 1,000 steps; the toy-words preset",
            preset="toy-words",
        ),
        Candidate(
            "v2-pooled-plain",
            2,
            replace(BASE_RECIPE, prediction_type="v_prediction", snr_gamma=5.0, plain_steps=1000),
            "world v2; v-prediction, Min-SNR-5, plain scenes for 1,000 steps; the toy-pooled preset",
            preset="toy-pooled",
        ),
    )
}
COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189)]


def readers_for(version: int, work: str, minutes: float, seed: int) -> tuple[rd.AttributeReader, dict]:
    """Readers of world `version`, trained once per work folder; their accuracy on clean test-subject renders."""
    folder = os.path.join(work, f"readers-v{version}")
    train, test = tw.split_subjects(0, 0.2)
    if os.path.exists(os.path.join(folder, "readers.json")):
        reader = rd.load_readers(folder)
        info = json.loads(Path(folder, "info.json").read_text())
    else:
        start = time.perf_counter()
        reader, losses = rd.train_readers(
            train, 10**6, seed=seed, deadline=time.monotonic() + 60 * minutes, world_version=version, progress=False
        )
        rd.save_readers(reader, folder, dtype=torch.float32)
        info = {"steps": len(losses), "seconds": round(time.perf_counter() - start, 1)}
        with open(os.path.join(folder, "info.json"), "w") as f:
            json.dump(info, f)
    images, labels = rd.labelled_batch(test, 1024, np.random.default_rng(seed + 5), 32, version)
    acc = rd.accuracy(reader, images, labels)
    info = {**info, "clean_test_accuracy": {k: round(v, 4) for k, v in acc.items()}}
    info["clean_test_identity"] = round(float(np.mean([acc[k] for k in IDENTITY])), 4)
    return reader, info


def run_candidate(c: Candidate, reader, args, budget_s: float, marks_s: list[float]) -> tuple[dict, np.ndarray]:
    train, test = tw.split_subjects(0, 0.2)
    backbone = bb.create_backbone(c.preset, seed=args.seed)
    recipe = replace(c.recipe, budget_s=budget_s, seed=args.seed)
    points, last = [], {}

    def on_mark(mark_s: float, step: int, modules: torch.nn.ModuleList) -> None:
        start = time.perf_counter()
        drawn = bb.Backbone(modules[0], modules[1], backbone.tokenizer, backbone.noise_scheduler, backbone.resolution)
        rng = np.random.default_rng(args.seed + 77)
        acc, images = base_identity(
            drawn, reader, test, args.eval_n, rng, args.seed + 1000, args.guidance, version=c.world_version
        )
        point = {
            "minutes": round(mark_s / 60, 2),
            "step": step,
            **acc,
            "eval_s": round(time.perf_counter() - start, 1),
        }
        points.append(point)
        last["images"] = images
        print(f"[learnability] {c.name}: {point}", flush=True)

    start = time.perf_counter()
    losses = pretrain(
        backbone, train, recipe, progress=False, world_version=c.world_version, marks_s=marks_s, on_mark=on_mark
    )
    wall = time.perf_counter() - start
    eval_s = sum(p["eval_s"] for p in points)
    result = {
        "world_version": c.world_version,
        "preset": c.preset,
        "note": c.note,
        "recipe": {k: v for k, v in asdict(recipe).items() if k not in ("steps",)},
        "steps": len(losses),
        "seconds_per_step": round((wall - eval_s) / max(1, len(losses)), 3),
        "last_loss": round(float(np.mean(losses[-100:])), 4),
        "points": points,
    }
    return result, last.get("images", np.zeros((0, 32, 32, 3), np.uint8))


def plot(results: dict, chance: float, path: str) -> None:
    """Identity against training minutes, one line per candidate (PIL: no plotting library in the stack)."""
    w, h, left, bottom, top, right = 720, 420, 60, 50, 20, 200
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    xmax = max([p["minutes"] for r in results.values() for p in r["points"]] + [1.0])
    x = lambda m: left + (w - left - right) * m / xmax
    y = lambda v: h - bottom - (h - bottom - top) * v
    d.line([(left, top), (left, h - bottom), (w - right, h - bottom)], fill="black")
    for v in (0.0, 0.25, 0.5, 0.75, 1.0):
        d.line([(left - 4, y(v)), (left, y(v))], fill="black")
        d.text((left - 34, y(v) - 6), f"{v:.2f}", fill="black")
    for m in np.linspace(0, xmax, 5):
        d.text((x(m) - 8, h - bottom + 6), f"{m:.3g}", fill="black")
    d.text((left + 150, h - 22), "training minutes (2 CPU cores)", fill="black")
    d.text((6, top - 14), "identity", fill="black")
    d.line([(x(0), y(chance)), (x(xmax), y(chance))], fill=(170, 170, 170))
    d.text((x(xmax) + 4, y(chance) - 6), "chance", fill=(120, 120, 120))
    for i, (name, r) in enumerate(results.items()):
        colour = COLOURS[i % len(COLOURS)]
        pts = [(x(0), y(chance))] + [(x(p["minutes"]), y(p["identity"])) for p in r["points"]]
        d.line(pts, fill=colour, width=2)
        for px, py in pts[1:]:
            d.ellipse([px - 3, py - 3, px + 3, py + 3], fill=colour)
        d.line([(w - right + 20, top + 20 * i + 6), (w - right + 40, top + 20 * i + 6)], fill=colour, width=3)
        d.text((w - right + 46, top + 20 * i), name, fill="black")
    img.save(path)


def samples_sheet(images: dict[str, np.ndarray], path: str, per_row: int = 16) -> None:
    rows = []
    for name, imgs in images.items():
        if len(imgs) == 0:
            continue
        imgs = imgs[:per_row]
        strip = np.concatenate(list(imgs) + [np.full((32, 32, 3), 255, np.uint8)] * (per_row - len(imgs)), axis=1)
        label = Image.new("RGB", (110, 32), "white")
        ImageDraw.Draw(label).text((4, 10), name, fill="black")
        rows.append(np.concatenate([np.asarray(label), strip], axis=1))
    if rows:
        Image.fromarray(np.concatenate(rows, axis=0)).resize((rows[0].shape[1] * 2, 64 * len(rows)), 0).save(path)


def markdown(result: dict) -> str:
    lines = [
        (
            f"Base identity on test subjects (full captions, guidance {result['guidance']}, {result['eval_n']} "
            f"samples per point; chance {result['chance']:.3f}), by training minutes on {result['machine']}."
        ),
        "",
        "| candidate | world | preset | recipe | s/step | "
        + " | ".join(f"{m:g} min" for m in result["marks_min"])
        + " | readers on clean test renders |",
        "|---|---|---|---|---|" + "---|" * len(result["marks_min"]) + "---|",
    ]
    for name, r in result["candidates"].items():
        by_mark = {p["minutes"]: p["identity"] for p in r["points"]}
        cells = [f"{by_mark[m]:.3f}" if m in by_mark else "-" for m in result["marks_min"]]
        readers = result["readers"][f"v{r['world_version']}"]["clean_test_identity"]
        recipe = r["recipe"]
        kind = "v" if recipe["prediction_type"] == "v_prediction" else "eps"
        snr = f", min-SNR {recipe['snr_gamma']:g}" if recipe["snr_gamma"] else ""
        plain = f", plain scenes for {recipe['plain_steps']:,} steps" if recipe.get("plain_steps") else ""
        row = (
            f"| {name} | v{r['world_version']} | {r.get('preset', 'toy')} | {kind}{snr}, lr {recipe['lr']:g}, "
            f"batch {recipe['batch_size']}{plain} |"
        )
        lines.append(f"{row} {r['seconds_per_step']} | " + " | ".join(cells) + f" | {readers:.3f} |")
    attributes = ("body", "pattern", "pattern_colour", "class_name", "background", "accessory", "style")
    lines += [
        "",
        "Each attribute at the last mark (the readers' accuracy; identity is the mean of the first three):",
        "",
        "| candidate | minutes | " + " | ".join(attributes) + " |",
        "|---|---|" + "---|" * len(attributes),
    ]
    for name, r in result["candidates"].items():
        if r["points"]:
            last = r["points"][-1]
            cells = " | ".join(f"{last[a]:.3f}" for a in attributes)
            lines.append(f"| {name} | {last['minutes']:g} | {cells} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", required=True, help="folder for readers and partial results (resumable)")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--candidates", default="v1,v2,v2-v-minsnr", help=f"comma-separated, of {list(CANDIDATES)}")
    p.add_argument("--budget-min", type=float, default=15.0, help="training minutes per candidate")
    p.add_argument("--marks", default="5,10,15", help="training minutes at which identity is measured")
    p.add_argument("--reader-min", type=float, default=4.0, help="training minutes of each world's readers")
    p.add_argument("--eval-n", type=int, default=256)
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="seconds, not minutes: checks every code path")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    names = [n for n in args.candidates.split(",") if n]
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown:
        p.error(f"unknown candidates {unknown}; known: {list(CANDIDATES)}")
    marks_min = [float(m) for m in args.marks.split(",")]
    budget_min = args.budget_min
    if args.quick:
        marks_min, budget_min, args.reader_min, args.eval_n = [0.1, 0.2], 0.2, 0.1, 16
    os.makedirs(args.work, exist_ok=True)
    os.makedirs(args.out, exist_ok=True)
    partial_path = os.path.join(args.work, "learnability_partial.json")
    partial = json.loads(Path(partial_path).read_text()) if os.path.exists(partial_path) else {}
    chance = float(np.mean([1 / len(tw.PALETTE), 1 / len(tw.PATTERNS), 1 / (len(tw.PALETTE) - 1)]))
    readers, samples, results = {}, {}, {}
    for name in names:
        c = CANDIDATES[name]
        key = f"v{c.world_version}"
        if key not in readers:
            readers[key] = readers_for(c.world_version, args.work, args.reader_min, args.seed)
        done = partial.get(name)
        if done and done["budget_min"] == budget_min and done["marks_min"] == marks_min:
            results[name] = done["result"]
            print(f"[learnability] {name}: kept from {partial_path}", flush=True)
            continue
        result, images = run_candidate(c, readers[key][0], args, budget_min * 60, [m * 60 for m in marks_min])
        results[name], samples[name] = result, images
        partial[name] = {"budget_min": budget_min, "marks_min": marks_min, "result": result}
        with open(partial_path + ".tmp", "w") as f:
            json.dump(partial, f, indent=1)
        os.replace(partial_path + ".tmp", partial_path)
    stem = "learnability_quick" if args.quick else "learnability"
    out = {
        "command": "python -m benchmarks.learnability " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), torch threads 2",
        "guidance": args.guidance,
        "eval_n": args.eval_n,
        "chance": round(chance, 4),
        "budget_min": budget_min,
        "marks_min": marks_min,
        "readers": {k: v[1] for k, v in readers.items()},
        "candidates": results,
    }
    with open(os.path.join(args.out, f"{stem}.json"), "w") as f:
        json.dump(out, f, indent=1)
    with open(os.path.join(args.out, f"{stem}.md"), "w") as f:
        f.write(markdown(out))
    plot(results, chance, os.path.join(args.out, f"{stem}.png"))
    samples_sheet(samples, os.path.join(args.out, f"{stem}_samples.png"))
    print(markdown(out))
    return out


if __name__ == "__main__":
    main()
