"""Stage `study`: the toy study's comparison made by the product's own stages. For each kind of G in `study.kinds`
the expert stage writes that G (the experts' renders at `paths.g`; the others beside it, `<paths.g>-<kind>`) and the
train stage trains an apprentice on it (`paths.apprentice`, `<paths.apprentice>-<kind>`); then the evaluate stage
compares them on test subjects (with `evaluate.demo_counts` for the demo curve). With `study.lambdas`, apprentices
on the experts' G at each threshold are compared first on validation subjects (`world.validation_fraction`), the
best sets `filter.min_delta`, and they join the test table. With `apprentice.budget_s`, each run trains every
apprentice for at most that long and evaluates once all of them have reached `apprentice.steps`; until then it
says which stopped where, and the next run goes on from their checkpoints. The table is evaluate's own
`metrics.json`, written to `paths.eval/study.{json,md}` with each G's rows and kept rows and the sweep.

    python -m apps.study experiment=smoke              # needs D_S, the base and the scorer (the smoke pipeline's)
    python -m apps.study experiment=smoke 'study.kinds=[raw]'   # one more kind beside an existing SuTI apprentice
"""

from __future__ import annotations

import dataclasses
import json

from actors.cluster import ray_cluster
from apps import evaluate, experts, train
from apps.config import stage_main
from core.config import PipelineConfig
from core.data import g, schema, storage
from core.toy import evaluation as toy_eval

ROW = {"finetune": "apprentice", "raw": "raw-cluster apprentice", "oracle": "oracle-G apprentice"}


class Unfinished(Exception):
    """Some apprentice stopped at `apprentice.budget_s` short of its steps: nothing is evaluated until all are done."""


def check_finished(stages: dict) -> None:
    names = [name for name, out in stages.items() if name.startswith("train[") and not out.get("finished", True)]
    if names:
        raise Unfinished(", ".join(f"{n} at step {stages[n]['steps']}" for n in names))


def paths_for(config: PipelineConfig, kind: str) -> tuple[str, str]:
    """(G, apprentice) of a kind of G: the configured paths for the experts' renders, suffixed ones for the rest."""
    if kind == "finetune":
        return config.paths.g, config.paths.apprentice
    return f"{config.paths.g}-{kind}", f"{config.paths.apprentice}-{kind}"


def with_kind(config: PipelineConfig, kind: str) -> PipelineConfig:
    g_uri, apprentice = paths_for(config, kind)
    return dataclasses.replace(
        config,
        expert=dataclasses.replace(config.expert, kind=kind),
        paths=dataclasses.replace(config.paths, g=g_uri, apprentice=apprentice),
    )


def g_truth(config: PipelineConfig, g_uri: str) -> list[dict] | None:
    """Each row of G checked by the toy attribute readers against the truth D_S holds (core.toy.evaluation.g_truth);
    None where there are no readers (a real-world G has no truth to check)."""
    if not config.paths.readers or not storage.exists(config.paths.readers):
        return None
    from core.toy.readers import load_readers

    rows = g.read_table(g_uri, ["subject_id", "prompt_id", "prompt_skill", "image", "delta"]).to_pylist()
    _, records = storage.iter_rows(config.paths.ds, schema.DS_SCHEMA, "paths.ds", "D_S")
    return toy_eval.g_truth(rows, list(records), load_readers(storage.local_dir(config.paths.readers)))


def sweep_lambda(config: PipelineConfig, stages: dict) -> dict:
    """Apprentices on the experts' G at each of `study.lambdas`, compared on validation subjects. Returns the sweep:
    per lambda its G rows kept, apprentice folder and validation metrics, and the lambda chosen."""
    cfg = with_kind(config, "finetune")
    stages["experts[finetune]"] = experts.run(cfg)
    steps = config.study.sweep_steps or config.apprentice.steps
    folders, kept = {}, {}
    for lam in config.study.lambdas:
        name = f"lambda={lam}"
        kept[name] = g.count_kept(cfg.paths.g, lam)
        if not kept[name]:  # nothing to train on: reported, not a candidate
            continue
        folders[name] = f"{config.paths.apprentice}-lambda-{lam}"
        stages[f"train[{name}]"] = train.run(
            dataclasses.replace(
                cfg,
                filter=dataclasses.replace(cfg.filter, min_delta=lam),
                apprentice=dataclasses.replace(cfg.apprentice, steps=steps),
                paths=dataclasses.replace(cfg.paths, apprentice=folders[name]),
            )
        )
    check_finished(stages)
    validation = dataclasses.replace(
        config,
        evaluate=dataclasses.replace(
            config.evaluate, split="validation", rows=[], demo_counts=[], apprentices=folders
        ),
        paths=dataclasses.replace(config.paths, eval=storage.join(config.paths.eval, "validation")),
    )
    if not folders:
        raise RuntimeError(f"no lambda of study.lambdas={config.study.lambdas} keeps a row of {cfg.paths.g}")
    table = evaluate.run(validation)["table"]
    trained = [lam for lam in config.study.lambdas if f"lambda={lam}" in folders]
    score = {lam: (table[f"lambda={lam}"]["subject_fidelity"] + table[f"lambda={lam}"]["text_fidelity"]) / 2
             for lam in trained}  # fmt: skip
    chosen = max(trained, key=lambda lam: score[lam])  # the first of equals
    rows = g.count_kept(cfg.paths.g, None)
    truth = g_truth(config, cfg.paths.g)
    return {
        "steps": steps,
        "by_lambda": {
            f"lambda={lam}": {
                "kept_rows": kept[f"lambda={lam}"],
                "kept_share": round(kept[f"lambda={lam}"] / rows, 4) if rows else None,
                "g_truth": toy_eval.kept_truth(truth, lam) if truth is not None else None,
                "validation": table.get(f"lambda={lam}"),
                "score": score.get(lam),
                "apprentice": folders.get(f"lambda={lam}"),
            }
            for lam in config.study.lambdas
        },
        "chosen": chosen,
    }


def run(config: PipelineConfig) -> dict:
    kinds = list(config.study.kinds)
    unknown = [k for k in kinds if k not in ROW]
    if unknown:
        raise ValueError(f"unknown study.kinds {unknown}; known: {list(ROW)}")
    stages, g_sizes, sweep = {}, {}, None
    with ray_cluster(config.cluster):
        try:
            if config.study.lambdas:
                sweep = sweep_lambda(config, stages)
                config = dataclasses.replace(
                    config, filter=dataclasses.replace(config.filter, min_delta=sweep["chosen"])
                )
            for kind in kinds:
                cfg = with_kind(config, kind)
                stages[f"experts[{kind}]"] = experts.run(cfg)
                stages[f"train[{kind}]"] = train.run(cfg)
                g_sizes[kind] = {
                    "rows": g.count_kept(cfg.paths.g, None),
                    "kept": g.count_kept(cfg.paths.g, config.filter.min_delta),
                    "min_delta": config.filter.min_delta,
                }
                truth = g_truth(config, cfg.paths.g)
                if truth is not None:
                    g_sizes[kind]["g_truth"] = toy_eval.kept_truth(truth, config.filter.min_delta)
            check_finished(stages)
        except Unfinished as stopped:
            print(f"[study] apprentices stopped by apprentice.budget_s ({stopped}): run the study again to go on")
            return {"stage": "study", "unfinished": str(stopped), "stages": stages}
        others = {ROW[k]: paths_for(config, k)[1] for k in kinds if k != "finetune"}
        if sweep is not None:  # the sweep's apprentices on test subjects too, beside the chosen one
            others.update(
                {f"SuTI, {n}": row["apprentice"] for n, row in sweep["by_lambda"].items() if row["apprentice"]}
            )
        ev = dataclasses.replace(
            config,
            evaluate=dataclasses.replace(config.evaluate, apprentices={**config.evaluate.apprentices, **others}),
        )
        stages["evaluate"] = evaluate.run(ev)
    metrics = json.loads(storage.read_bytes(storage.join(config.paths.eval, "metrics.json")))
    report = {"g": g_sizes, "lambda_sweep": sweep, **metrics, "stages": stages}
    storage.write_bytes(
        storage.join(config.paths.eval, "study.json"), json.dumps(report, indent=1, default=str).encode()
    )
    lines = ["| G | rows | kept | kept rows' subject fidelity | their text fidelity |", "|---|---|---|---|---|"]
    lines += [f"| {kind} | {s['rows']} | {s['kept']} (lambda {s['min_delta']}) | {truth_cells(s.get('g_truth'))} |"
              for kind, s in g_sizes.items()]  # fmt: skip
    if sweep is not None:
        lines += ["", f"lambda chosen on validation subjects: {sweep['chosen']}", "",
                  ("| lambda | G rows kept | share | kept rows' subject fidelity | their text fidelity "
                   "| validation subject fidelity | validation text fidelity |"),
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        for name, row in sweep["by_lambda"].items():
            val = row["validation"]
            fidelity = f"{val['subject_fidelity']:.3f} | {val['text_fidelity']:.3f}" if val else "nothing kept | "
            lines.append(
                f"| {name.split('=', 1)[1]} | {row['kept_rows']} | {row['kept_share']} "
                f"| {truth_cells(row.get('g_truth'))} | {fidelity} |"
            )
        lines += ["", "(kept rows' fidelity: G's own images read by the toy attribute readers against the truth)"]
    markdown = "\n".join(lines) + "\n\n" + storage.read_bytes(storage.join(config.paths.eval, "metrics.md")).decode()
    storage.write_bytes(storage.join(config.paths.eval, "study.md"), markdown.encode())
    print(markdown)
    return {"stage": "study", "g": g_sizes, "lambda_sweep": sweep, "table": metrics["table"], "out": config.paths.eval}


def truth_cells(truth: dict | None) -> str:
    """Two table cells: the subject and text fidelity of a G's kept rows (blank without readers)."""
    if not truth:
        return " | "
    return " | ".join("-" if truth[m] is None else f"{truth[m]:.3f}" for m in ("subject_fidelity", "text_fidelity"))


main = stage_main(run)

if __name__ == "__main__":
    main()
