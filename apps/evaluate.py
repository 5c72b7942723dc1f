"""Stage `evaluate`: on toy test subjects never seen in training, compare the oracle (real renders), the base
model without demos, per-subject experts (Ray actor pool) and the apprentice; with `evaluate.demo_counts`, the
apprentice given fewer demos too, and with `evaluate.apprentices`, other apprentices (trained on other kinds of G).
Every metric comes with a bootstrap 95% interval over subjects, identity per attribute and text fidelity per prompt
skill. Writes metrics.json, metrics.md and grid.png to `paths.eval` and prints the table.

    python -m apps.evaluate experiment=smoke
"""

from __future__ import annotations

import dataclasses
import io
import json
import time

import numpy as np
from tqdm import tqdm

from actors.cluster import ray_cluster, remote_call
from actors.expert_pool import run_pool
from apps.config import base_uri, require_base, stage_main
from apps.experts import provenance
from core.config import PipelineConfig
from core.data import storage
from core.data.images import from_png
from core.pipelines.suti import load_apprentice
from core.toy import evaluation


def apprentice_rows(config: PipelineConfig) -> list[tuple[str, str, int | None]]:
    """(row name, apprentice folder, demos given: None for all) for every apprentice row of the table."""
    ev = config.evaluate
    if any(k < 0 or k > ev.num_demos for k in ev.demo_counts):
        raise ValueError(f"evaluate.demo_counts {ev.demo_counts} must lie in 0..evaluate.num_demos ({ev.num_demos})")
    rows = []
    if "apprentice" in ev.rows:
        rows = [("apprentice", config.paths.apprentice, None)]
        rows += [(f"apprentice, {k} demo{'' if k == 1 else 's'}", config.paths.apprentice, k) for k in ev.demo_counts]
    return rows + [(name, folder, None) for name, folder in ev.apprentices.items()]


def sample_apprentice_and_base(config: PipelineConfig, records: list[dict]) -> dict:
    """Runs as one Ray task: samples of every apprentice row (with its demos) and of the base (prompt only) for
    every eval prompt."""
    import torch

    from core.method import apprentice as ap
    from core.models.backbone import load_backbone
    from core.models.sampling import sample

    torch.set_num_threads(config.apprentice.threads)
    acfg, n = config.apprentice, config.evaluate.samples_per_prompt
    rows = apprentice_rows(config)
    loaded = {folder: load_apprentice(storage.local_dir(folder)) for _, folder, _ in rows}
    base = load_backbone(storage.local_dir(base_uri(config)))
    methods = [name for name, _, _ in rows] + (["base"] if "base" in config.evaluate.rows else [])
    out = {**{m: [] for m in methods}, "seconds": {m: [] for m in methods}}
    given = {name: (loaded[folder], k) for name, folder, k in rows}
    for r, record in enumerate(tqdm(records, desc="evaluate: apprentices and base")):
        for method in methods:
            start = time.perf_counter()
            per_prompt = []
            for p, prompt in enumerate(record["prompts"]):
                kwargs = {
                    "sampler": acfg.sampler,
                    "num_inference_steps": acfg.num_inference_steps,
                    "guidance_scale": acfg.guidance_scale,
                    "seed": config.evaluate.seed + 100 * r + p,
                }
                if method != "base":
                    apprentice, k = given[method]
                    k = len(record["demo_images"]) if k is None else k
                    imgs = ap.sample(
                        apprentice,
                        prompt,
                        [from_png(b) for b in record["demo_images"][:k]],
                        record["demo_captions"][:k],
                        num_images=n,
                        demo_guidance_scale=acfg.demo_guidance_scale,
                        **kwargs,
                    )
                else:
                    imgs = sample(base, [prompt] * n, **kwargs)
                per_prompt.append(list(imgs))
            out[method].append(per_prompt)
            out["seconds"][method].append(time.perf_counter() - start)
    return out


def expert_counts(config: PipelineConfig) -> list[int]:
    """The fine-tune step counts the experts' rows are rendered at: `expert.steps` and `evaluate.expert_steps`."""
    return sorted({*config.evaluate.expert_steps, config.expert.steps})


def expert_row_name(config: PipelineConfig, steps: int) -> str:
    return "expert" if steps == config.expert.steps else f"expert, {steps} steps"


def expert_rows(config: PipelineConfig, plain: list[dict], expert_cfg) -> tuple[dict[str, list], dict[str, float]]:
    """The per-subject experts' samples (the actor pool, nothing written to G) and their mean seconds per subject:
    the "expert" row at `expert.steps` and, with `evaluate.expert_steps`, a row per step count, all rendered by one
    fine-tuning run per subject (each row's seconds: fine-tuning to its step count, then its renders)."""
    counts = expert_counts(config)  # expert_cfg keeps expert.steps
    if counts[0] < 1:
        raise ValueError(f"evaluate.expert_steps {config.evaluate.expert_steps} must be positive step counts")
    # One fine-tuning run per subject renders every row (a lone row needs no checkpoints).
    expert_cfg = dataclasses.replace(expert_cfg, steps=counts[-1], checkpoints=counts if len(counts) > 1 else [])
    expert_results, _ = run_pool(
        plain,
        base_uri(config),
        config.paths.scorer,
        expert_cfg,
        provenance(config),
        None,
        config.filter,
        world_version=config.world.version,
    )
    by_subject = {res["subject_id"]: res for res in expert_results}
    outputs = {expert_row_name(config, n): [] for n in counts}
    seconds: dict[str, list[float]] = {name: [] for name in outputs}
    n = config.evaluate.samples_per_prompt
    for record in plain:
        res = by_subject[record["subject_id"]]
        if res["status"] != "done":
            raise RuntimeError(f"expert failed on eval subject {record['subject_id']}: {res.get('reason')}")
        for steps, at in res.get("checkpoints", {expert_cfg.steps: res}).items():
            name = expert_row_name(config, steps)
            rows = {(row["prompt_id"], row["sample_index"]): from_png(row["image"]) for row in at["rows"]}
            outputs[name].append([[rows[(pid, j)] for j in range(n)] for pid in record["prompt_ids"]])
            seconds[name].append(at["fine_tune_s"] + at["sample_s"])
    return outputs, {name: float(np.mean(s)) for name, s in seconds.items()}


def expert_plateau(config: PipelineConfig, table: dict) -> dict | None:
    """The fidelity of the experts by fine-tune steps, and the plateau: the fewest steps whose mean subject fidelity
    reaches the lower end of the 95% interval of the best step count's (None without `evaluate.expert_steps`)."""
    counts = expert_counts(config)
    if len(counts) < 2 or expert_row_name(config, counts[0]) not in table:
        return None
    rows = {n: table[expert_row_name(config, n)] for n in counts}
    best = max(counts, key=lambda n: rows[n]["subject_fidelity"])  # the fewest of equals
    floor = rows[best]["ci"]["subject_fidelity"][0]
    floor = rows[best]["subject_fidelity"] if np.isnan(floor) else floor
    return {
        "steps": min(n for n in counts if rows[n]["subject_fidelity"] >= floor),
        "best_steps": best,
        "subject_fidelity_by_steps": {str(n): rows[n]["subject_fidelity"] for n in counts},
        "text_fidelity_by_steps": {str(n): rows[n]["text_fidelity"] for n in counts},
    }


def check_readers_world(config: PipelineConfig) -> None:
    """Readers read the world they were trained on: refuse readers whose info.json names another world version."""
    info_uri = storage.join(config.paths.readers, "info.json")
    made_for = json.loads(storage.read_bytes(info_uri)).get("world_version") if storage.exists(info_uri) else None
    if made_for is not None and made_for != config.world.version:
        raise ValueError(
            f"the readers at {config.paths.readers} (paths.readers) read world version {made_for}, not "
            f"world.version={config.world.version}: make readers for it with python -m apps.readers"
        )


class GateMissed(RuntimeError):
    """The apprentice's subject fidelity missed a gate of `evaluate.gain_over_base` / `evaluate.gain_over_no_demos`."""


def gate_specs(config: PipelineConfig) -> list[tuple[str, str, float]]:
    """(gate, reference row, gain needed) for every gate set, checked against the config before sampling."""
    ev, specs = config.evaluate, []
    if ev.gain_over_base is not None:
        specs.append(("subject fidelity over the base", "base", ev.gain_over_base))
    if ev.gain_over_no_demos is not None:
        specs.append(("subject fidelity over 0 demos", "apprentice, 0 demos", ev.gain_over_no_demos))
    if specs and "apprentice" not in ev.rows:
        raise ValueError("evaluate.gain_over_* gate the apprentice: put 'apprentice' in evaluate.rows")
    if ev.gain_over_base is not None and "base" not in ev.rows:
        raise ValueError("evaluate.gain_over_base needs the base row: put 'base' in evaluate.rows")
    if ev.gain_over_no_demos is not None and 0 not in ev.demo_counts:
        raise ValueError("evaluate.gain_over_no_demos needs the 0-demo row: put 0 in evaluate.demo_counts")
    return specs


def check_gates(config: PipelineConfig, table: dict[str, dict]) -> list[dict]:
    """Each gate's apprentice and reference subject fidelity, the gain needed and whether it held."""
    found = []
    for gate, reference, gain in gate_specs(config):
        have, ref = table["apprentice"]["subject_fidelity"], table[reference]["subject_fidelity"]
        found.append(
            {
                "gate": gate,
                "apprentice": have,
                "reference": ref,
                "needed": round(ref + gain, 4),
                "held": have >= ref + gain,
            }
        )
    return found


def run(config: PipelineConfig) -> dict:
    from core.models.scorer import load_scorer

    known = {"oracle", "base", "expert", "apprentice"}
    if set(config.evaluate.rows) - known:
        raise ValueError(f"unknown evaluate.rows {sorted(set(config.evaluate.rows) - known)}; known: {sorted(known)}")
    if "apprentice" in config.evaluate.rows:
        storage.require(config.paths.apprentice, "paths.apprentice", "trained apprentice")
    for name, folder in config.evaluate.apprentices.items():
        storage.require(folder, f"evaluate.apprentices.{name}", "trained apprentice")
    storage.require(config.paths.scorer, "paths.scorer", "toy scorer")
    require_base(config)
    storage.require(config.paths.readers, "paths.readers", "toy attribute readers (artifacts/toy-v2/readers)")
    check_readers_world(config)
    gate_specs(config)  # refuse gates this config cannot check before sampling anything
    records = evaluation.eval_set(config.world, config.evaluate)
    plain = [{k: v for k, v in r.items() if k != "oracle"} for r in records]
    # The expert row is the experts' renders, whatever kind of G this configuration writes.
    expert_cfg = dataclasses.replace(
        config.expert, samples_per_prompt=config.evaluate.samples_per_prompt, max_subjects=None, kind="finetune"
    )
    wanted = config.evaluate.rows
    names = [name for name, _, _ in apprentice_rows(config)]
    outputs, seconds = {}, {}
    if "oracle" in wanted:
        outputs["oracle"] = [r["oracle"] for r in records]
    with ray_cluster(config.cluster):
        sampled = remote_call(sample_apprentice_and_base, config, plain, num_cpus=1, num_gpus=config.serve.num_gpus)
        if "expert" in wanted:
            experts_out, experts_s = expert_rows(config, plain, expert_cfg)
            outputs.update(experts_out)
            seconds.update(experts_s)
    for name in (["base"] if "base" in wanted else []) + names:
        outputs[name] = sampled[name]
        seconds[name] = float(np.mean(sampled["seconds"][name]))
    expert_names = [expert_row_name(config, n) for n in expert_counts(config)]
    # The table's order: oracle, base, the experts by steps, the apprentices.
    outputs = {k: outputs[k] for k in ["oracle", "base", *expert_names, *names] if k in outputs}
    from core.toy.readers import load_readers

    table = evaluation.score(
        records,
        outputs,
        load_scorer(storage.local_dir(config.paths.scorer)),
        load_readers(storage.local_dir(config.paths.readers)),
        resamples=config.evaluate.resamples,
        seed=config.evaluate.seed,
    )
    markdown = evaluation.markdown_table(table, seconds)
    plateau = expert_plateau(config, table)
    if plateau is not None:
        markdown += (
            f"\n\nThe experts' plateau: {plateau['steps']} fine-tune steps (subject fidelity by steps: "
            + ", ".join(f"{n}: {v:.3f}" for n, v in plateau["subject_fidelity_by_steps"].items())
            + ")."
        )
    gates = check_gates(config, table)
    if gates:
        markdown += "\n\n" + "\n".join(
            f"Gate, {g['gate']}: apprentice {g['apprentice']:.3f}, needed {g['needed']:.3f}: "
            + ("held." if g["held"] else "**missed**.")
            for g in gates
        )
    metrics = {"table": table, "seconds_per_subject": seconds, "subjects": [r["subject_id"] for r in records]}
    if plateau is not None:
        metrics["expert_plateau"] = plateau
    if gates:
        metrics["gates"] = gates
    storage.write_bytes(storage.join(config.paths.eval, "metrics.json"), json.dumps(metrics, indent=1).encode())
    storage.write_bytes(storage.join(config.paths.eval, "metrics.md"), (markdown + "\n").encode())
    buf = io.BytesIO()
    evaluation.grid(records, outputs).save(buf, format="PNG")
    storage.write_bytes(storage.join(config.paths.eval, "grid.png"), buf.getvalue())
    print(markdown)
    missed = [g["gate"] for g in gates if not g["held"]]
    if missed:
        raise GateMissed(f"the apprentice missed its gates ({', '.join(missed)}): see {config.paths.eval}/metrics.md")
    out = {"stage": "evaluate", "table": table, "seconds_per_subject": seconds, "out": config.paths.eval}
    return out if plateau is None else {**out, "expert_plateau": plateau}


main = stage_main(run)

if __name__ == "__main__":
    main()
