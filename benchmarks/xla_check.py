"""One expert subject on XLA, through the very code an expert actor runs (`actors.expert_pool.run_subject`).

torch-xla 2.9 needs torch 2.9, which cannot share the main environment (torch 2.14.1), so this check builds its
own and is not part of the default CI; `benchmarks/xla_check.sh` makes that environment and runs it. With
`PJRT_DEVICE=CPU`, XLA compiles for the host CPU: the check proves the device module's XLA path (the model on
the XLA device, bf16 autocast, generators on the CPU, results read back), not TPU speed.

    bash benchmarks/xla_check.sh            # or, in an environment with torch-xla: python -m benchmarks.xla_check
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

from core.data import g as gc
from core.data.images import to_png

os.environ.setdefault("PJRT_DEVICE", "CPU")
os.environ.setdefault("SUTI_DEVICE", "xla")


def record(seed: int = 0) -> dict:
    import numpy as np

    from core.toy import world as tw

    rng = np.random.default_rng(seed)
    subject = tw.Subject("ball", "red", "dots", "blue")
    demos = tw.demonstrations(subject, 3, rng)
    prompts = [p for p, _ in tw.prompts_for(subject.class_name, 2, rng, key="xla")]
    return {
        "subject_id": "xla-check",
        "demo_images": [to_png(img) for img, _ in demos],
        "demo_captions": [c for _, c in demos],
        "prompts": [p.text for p in prompts],
        "prompt_ids": [p.prompt_id for p in prompts],
        "prompt_skills": [p.skill for p in prompts],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    import torch

    from actors.expert_pool import run_subject
    from core.config import ExpertConfig, ScorerConfig
    from core.method.expert import Expert
    from core.models.backbone import create_backbone
    from core.models.device import pick_device
    from core.models.scorer import create_scorer

    device = pick_device()
    backbone = create_backbone("tiny", seed=0).to(device)
    cfg = ExpertConfig(steps=args.steps, batch_size=4, num_inference_steps=4, samples_per_prompt=1, threads=2)
    torch.set_num_threads(cfg.threads)
    expert = Expert(
        backbone,
        create_scorer(ScorerConfig()),
        cfg,
        {"base_checkpoint_hash": "b", "expert_config_hash": "e", "scorer_hash": "s"},
    )
    with tempfile.TemporaryDirectory() as g:
        start = time.perf_counter()
        out = run_subject(expert, record(), g, None)
        seconds = time.perf_counter() - start
        table = gc.read_table(g)
    param = next(backbone.unet.parameters())
    import torch_xla

    print(
        json.dumps(
            {
                "torch": torch.__version__,
                "torch_xla": torch_xla.__version__,
                "PJRT_DEVICE": os.environ["PJRT_DEVICE"],
                "device": str(device),
                "unet_param_device": str(param.device),
                "status": out["status"],
                "first_loss": round(out["first_loss"], 4),
                "last_loss": round(out["last_loss"], 4),
                "fine_tune_s": round(out["fine_tune_s"], 1),
                "sample_s": round(out["sample_s"], 1),
                "total_s": round(seconds, 1),
                "g_rows": table.num_rows,
                "deltas": [round(d, 4) for d in table.column("delta").to_pylist()],
            },
            indent=1,
        )
    )
    if out["status"] != "done" or table.num_rows != 2 or param.device.type != "xla":
        raise SystemExit("XLA check failed")


if __name__ == "__main__":
    main()
