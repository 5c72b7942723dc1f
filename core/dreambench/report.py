"""The DreamBench report: SuTI's Table 1 (method, backbone, DINO, CLIP-I, CLIP-T, seconds per subject) with the
real-images row, breakdowns by subject and by prompt kind, one image grid per subject and an HTML page showing them.
"""

from __future__ import annotations

import html
import math
import textwrap
from collections import defaultdict

import numpy as np
from PIL import Image, ImageDraw

from core.dreambench.data import KINDS, METHODS, Prompt, Subject

ORACLE = "real images"


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def summarize(
    scores: list[dict],
    oracle: dict[str, dict],
    seconds: dict[str, dict[str, float]],
    backbones: dict[str, str],
    subjects: list[Subject],
) -> dict:
    """scores: DREAMBENCH_SCORE rows; oracle: {subject: {dino, clip_i}}; seconds: {method: {subject: s}}.

    Every mean is over images (each subject and prompt weighs its number of samples, equal by the protocol).
    """
    by_method, by_subject, by_kind = defaultdict(list), defaultdict(list), defaultdict(list)
    for row in scores:
        by_method[row["method"]].append(row)
        by_subject[(row["method"], row["subject"])].append(row)
        by_kind[(row["method"], row["prompt_kind"])].append(row)

    def metrics(rows: list[dict]) -> dict:
        return {m: _mean([r[m] for r in rows]) for m in ("dino", "clip_i", "clip_t")} | {"images": len(rows)}

    methods = [m for m in METHODS if m in by_method]
    real = [oracle[s.name] for s in subjects if s.name in oracle]
    table = [
        {
            "method": ORACLE,
            "backbone": None,
            "dino": _mean([o["dino"] for o in real if not math.isnan(o["dino"])]),
            "clip_i": _mean([o["clip_i"] for o in real if not math.isnan(o["clip_i"])]),
            "clip_t": None,
            "images": sum(len(s.images) for s in subjects),
            "seconds_per_subject": None,
        }
    ]
    for method in methods:
        secs = list(seconds.get(method, {}).values())
        table.append(
            {
                "method": method,
                "backbone": backbones.get(method),
                **metrics(by_method[method]),
                "seconds_per_subject": _mean(secs) if secs else None,
            }
        )
    per_subject = []
    for s in subjects:
        if s.name in oracle:
            per_subject.append(
                {
                    "method": ORACLE,
                    "subject": s.name,
                    "class_name": s.class_name,
                    "live": s.live,
                    **oracle[s.name],
                    "clip_t": None,
                    "images": len(s.images),
                    "seconds": None,
                }
            )
        for method in methods:
            if (method, s.name) in by_subject:
                per_subject.append(
                    {
                        "method": method,
                        "subject": s.name,
                        "class_name": s.class_name,
                        "live": s.live,
                        **metrics(by_subject[(method, s.name)]),
                        "seconds": seconds.get(method, {}).get(s.name),
                    }
                )
    per_kind = [
        {"method": m, "kind": k, **metrics(by_kind[(m, k)])} for m in methods for k in KINDS if (m, k) in by_kind
    ]
    return {"table": table, "per_subject": per_subject, "per_kind": per_kind}


def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def markdown(report: dict, notes: list[str] | None = None, by_subject: bool = True) -> str:
    lines = ["# DreamBench", ""]
    lines += [f"- {n}" for n in notes or []] + ([""] if notes else [])
    lines += ["| method | backbone | DINO | CLIP-I | CLIP-T | s per subject |", "|---|---|---|---|---|---|"]
    for row in report["table"]:
        lines.append(
            f"| {row['method']} | {row['backbone'] or '-'} | {_fmt(row['dino'])} | {_fmt(row['clip_i'])} | "
            f"{_fmt(row['clip_t'])} | {_fmt(row['seconds_per_subject'], 1)} |"
        )
    lines += [
        "",
        "## By prompt kind",
        "",
        "| method | kind | DINO | CLIP-I | CLIP-T | images |",
        "|---|---|---|---|---|---|",
    ]
    for row in report["per_kind"]:
        lines.append(
            f"| {row['method']} | {row['kind']} | {_fmt(row['dino'])} | {_fmt(row['clip_i'])} | "
            f"{_fmt(row['clip_t'])} | {row['images']} |"
        )
    if not by_subject:
        return "\n".join(lines) + "\n"
    lines += [
        "",
        "## By subject",
        "",
        "| subject | class | method | DINO | CLIP-I | CLIP-T | s |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in report["per_subject"]:
        lines.append(
            f"| {row['subject']} | {row['class_name']} | {row['method']} | {_fmt(row['dino'])} | "
            f"{_fmt(row['clip_i'])} | {_fmt(row['clip_t'])} | {_fmt(row['seconds'], 1)} |"
        )
    if report.get("problems"):
        lines += ["", "## Problems found in the data", ""] + [f"- {p}" for p in report["problems"]]
    return "\n".join(lines) + "\n"


def csv(rows: list[dict], columns: list[str]) -> str:
    out = [",".join(columns)]
    for row in rows:
        out.append(
            ",".join(
                ""
                if row.get(c) is None
                else f"{row[c]:.6f}"
                if isinstance(row[c], float)
                else str(row[c]).replace(",", ";")
                for c in columns
            )
        )
    return "\n".join(out) + "\n"


def grid(
    subject: Subject,
    real: list[np.ndarray],
    num_demos: int,
    prompts: list[Prompt],
    generated: dict[str, dict[tuple[int, int], np.ndarray]],
    images_per_prompt: int,
    cell: int = 96,
) -> Image.Image:
    """One subject: its real images on top (the first `num_demos` were the demos), then a row per prompt with every
    sample of each method. generated[method][(prompt_index, sample_index)] = uint8 (H, W, 3)."""
    methods = [m for m in METHODS if m in generated]
    text_w, head_h, gap = 300, 16, 2
    cols = max(len(real), len(methods) * images_per_prompt)
    width = text_w + cols * (cell + gap) + len(methods) * 6
    height = head_h + (cell + gap) + head_h + len(prompts) * (cell + gap)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)

    def paste(img: np.ndarray, x: int, y: int) -> None:
        canvas.paste(Image.fromarray(img).resize((cell, cell), Image.BICUBIC), (x, y))

    draw.text((2, 2), f"{subject.name} ({subject.class_name}{', live' if subject.live else ''})", fill="black")
    for i, img in enumerate(real):
        x = text_w + i * (cell + gap)
        draw.text((x, 2), "demo" if i < num_demos else "real", fill="black")
        paste(img, x, head_h)
    y0 = head_h + cell + gap
    for k, method in enumerate(methods):
        draw.text((text_w + k * (images_per_prompt * (cell + gap) + 6), y0 + 2), method, fill="black")
    for r, prompt in enumerate(prompts):
        y = y0 + head_h + r * (cell + gap)
        draw.text((2, y + 2), f"{prompt.index} {prompt.kind}", fill="gray")
        for line, words in enumerate(
            textwrap.wrap(prompt.text("", subject.class_name), 46)[: max(1, (cell - 14) // 12)]
        ):
            draw.text((2, y + 14 + 12 * line), words, fill="black")
        for k, method in enumerate(methods):
            for j in range(images_per_prompt):
                img = generated[method].get((prompt.index, j))
                if img is not None:
                    paste(img, text_w + k * (images_per_prompt * (cell + gap) + 6) + j * (cell + gap), y)
    return canvas


def index_html(report: dict, grids: dict[str, str], notes: list[str]) -> str:
    """A self-contained page (relative links) with the tables and every subject's grid."""
    esc = html.escape

    def table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
        head = "".join(f"<th>{esc(title)}</th>" for _, title in columns)
        body = "".join(
            "<tr>"
            + "".join(f"<td>{esc(_fmt(r.get(k), 1 if 'seconds' in k else 3))}</td>" for k, _ in columns)
            + "</tr>"
            for r in rows
        )
        return f"<table><tr>{head}</tr>{body}</table>"

    metric_cols = [("dino", "DINO"), ("clip_i", "CLIP-I"), ("clip_t", "CLIP-T")]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>DreamBench report</title>",
        (
            "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}"
            "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}img{max-width:100%}</style>"
        ),
        "</head><body><h1>DreamBench</h1>",
        "<ul>" + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul>",
        table(
            report["table"],
            [("method", "method"), ("backbone", "backbone"), *metric_cols, ("seconds_per_subject", "s per subject")],
        ),
        "<h2>By prompt kind</h2>",
        table(report["per_kind"], [("method", "method"), ("kind", "kind"), *metric_cols, ("images", "images")]),
        "<h2>By subject</h2>",
        table(
            report["per_subject"],
            [("subject", "subject"), ("class_name", "class"), ("method", "method"), *metric_cols, ("seconds", "s")],
        ),
    ]
    if report.get("problems"):
        parts.append(
            "<h2>Problems found in the data</h2><ul>"
            + "".join(f"<li>{esc(p)}</li>" for p in report["problems"])
            + "</ul>"
        )
    parts.append("<h2>Grids</h2>")
    for name, file in grids.items():
        parts.append(
            f"<h3 id='{esc(name)}'>{esc(name)}</h3><a href='{esc(file)}'><img src='{esc(file)}' alt='{esc(name)}'></a>"
        )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
