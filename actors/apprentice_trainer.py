"""Ray Train job for the apprentice: `train_loop_per_worker` builds model, optimizer and data inside the worker;
`fit` is the small driver.

Data: every epoch, each worker lists G's complete shards again and streams its share of the rows (a hash of the
row key picks the worker) through Ray Data (`actors.g_dataset.read_g`), so shards the expert stage writes while
training runs are picked up at the next epoch; with `apprentice.g_wait_s` > 0 a worker waits that long for G's
first rows instead of failing at once.

Checkpoints (every `checkpoint_every` steps and at the end, under the run's `storage_path`) hold the apprentice as
a `SuTIPipeline` folder (safetensors), `ema.safetensors` (the EMA weights), `optimizer.pt` (optimizer and lr
schedule), and `train_state.json` (step, losses, epochs read, resumes, gates, the resolved config). Metrics (loss,
lr, samples/s) go to `ray.train.report` every `log_every` steps and to TensorBoard (tensorboardX) under the run's
folder. A killed worker restarts from the latest checkpoint (`FailureConfig`); the resume is logged with the step
it continues at and a fingerprint of the optimizer state it restored.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time

import ray
import ray.train
import torch
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from tqdm import tqdm

from core.config import ApprenticeConfig, from_dict
from core.data import storage


class ApprenticeLoss(torch.nn.Module):
    """The whole training loss as one module forward, so DDP sees every parameter the loss uses."""

    def __init__(self, apprentice, cfg: ApprenticeConfig):
        super().__init__()
        self.apprentice = apprentice
        self.cfg = cfg

    def forward(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        from core.method.apprentice import training_loss

        return training_loss(self.apprentice, batch, self.cfg.text_dropout, self.cfg.demo_dropout, generator)


def optimizer_fingerprint(opt: torch.optim.Optimizer) -> float:
    """Sum of every floating tensor in the optimizer state: equal before saving and after loading, 0 when fresh."""
    return float(sum(v.double().sum() for s in opt.state.values() for v in s.values() if torch.is_tensor(v) and v.is_floating_point()))


def named_trainable(apprentice) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in apprentice.named_parameters() if p.requires_grad}


def ema_state(ema, names: list[str]) -> dict[str, torch.Tensor]:
    return {n: s.detach().cpu().contiguous() for n, s in zip(names, ema.shadow_params)}


def epoch_passes(cfg: ApprenticeConfig, remaining_steps: int, world: int, rows: int) -> int:
    """How many times an epoch emits each row (each time with its own demos): enough to cover the remaining steps
    in one read (every epoch restarts Ray Data's execution, seconds on a small machine), at most
    `passes_per_epoch` (streaming: a small number re-lists G sooner)."""
    cap = cfg.passes_per_epoch or 32
    return max(1, min(cap, math.ceil(remaining_steps * cfg.batch_size / max(1, rows / world))))


def train_loop_per_worker(config: dict) -> None:
    from diffusers.training_utils import EMAModel
    from safetensors.torch import load_file, save_file
    from tensorboardX import SummaryWriter

    from actors.g_dataset import read_g
    from core.data.g import count_kept
    from core.method.apprentice import Apprentice
    from core.models.backbone import load_backbone
    from core.models.device import step_done
    from core.models.schedules import warmup_cosine
    from core.pipelines.suti import load_apprentice, save_apprentice

    cfg: ApprenticeConfig = from_dict(ApprenticeConfig, config["apprentice"])
    torch.set_num_threads(cfg.threads)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(cfg.seed)
    device = ray.train.torch.get_device()  # this worker's own accelerator (or the CPU)
    apprentice = Apprentice(load_backbone(storage.local_dir(config["base_uri"])), cfg.demo_grid, zero_init=cfg.zero_init, attention=cfg.attention)
    initial_gates = apprentice.gates().detach().clone()
    apprentice.to(device)  # before the optimizer state is loaded, so that state lands on the same device
    params = named_trainable(apprentice)
    opt = torch.optim.AdamW(params.values(), lr=cfg.lr, weight_decay=0.0)
    schedule = warmup_cosine(opt, cfg.steps, warmup_fraction=cfg.warmup_fraction)
    ema = EMAModel(params.values(), decay=cfg.ema_decay)
    state = {"step": 0, "losses": [], "epochs": [], "resumes": []}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder:
            apprentice.load_state_dict(load_apprentice(folder).state_dict())
            saved = torch.load(os.path.join(folder, "optimizer.pt"), weights_only=True, map_location=device)
            opt.load_state_dict(saved["optimizer"])
            schedule.load_state_dict(saved["lr_schedule"])
            shadow = load_file(os.path.join(folder, "ema.safetensors"))
            ema.shadow_params = [shadow[n].to(device) for n in params]
            with open(os.path.join(folder, "train_state.json")) as f:
                state = json.load(f)
            ema.optimization_step = state["step"]
        state["resumes"].append(
            {
                "checkpoint_step": state["step"],
                "optimizer_fingerprint_saved": state.pop("optimizer_fingerprint"),
                "optimizer_fingerprint_loaded": optimizer_fingerprint(opt),
                "first_step": None,
            }
        )
        for key in ("initial_gates", "gates", "resolved_config"):
            state.pop(key, None)
    model = ray.train.torch.prepare_model(ApprenticeLoss(apprentice, cfg), move_to_device=False)
    generator = torch.Generator().manual_seed(cfg.seed * 1000 + rank + state["step"])
    writer = SummaryWriter(os.path.join(config["tensorboard_dir"], f"rank{rank}")) if rank == 0 else None
    tokenizer_uri = storage.join(config["base_uri"], "tokenizer")

    def report(final: bool, metrics: dict) -> None:
        metrics = {**metrics, "step": state["step"], "final": final}
        if rank != 0 or not (final or state["step"] % cfg.checkpoint_every == 0):
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as folder:
            save_apprentice(apprentice, folder, {"config": config}, sampler=cfg.sampler)
            torch.save({"optimizer": opt.state_dict(), "lr_schedule": schedule.state_dict()}, os.path.join(folder, "optimizer.pt"))
            save_file(ema_state(ema, list(params)), os.path.join(folder, "ema.safetensors"))
            with open(os.path.join(folder, "train_state.json"), "w") as f:
                json.dump(
                    {
                        **state,
                        "optimizer_fingerprint": optimizer_fingerprint(opt),
                        "initial_gates": initial_gates.tolist(),
                        "gates": apprentice.gates().detach().tolist(),
                        "resolved_config": config["resolved"],
                    },
                    f,
                )
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(folder))

    bar = tqdm(total=cfg.steps, initial=state["step"], desc="apprentice", disable=rank != 0, mininterval=5)
    window_start, window_samples, metrics = time.perf_counter(), 0, {}
    waited = 0.0
    while state["step"] < cfg.steps:
        shards = storage.list_shards(config["g_uri"])
        rows = count_kept(config["g_uri"], config["min_delta"], shards)  # the very shards this epoch reads
        if rows == 0:
            if waited < cfg.g_wait_s:
                time.sleep(2.0)
                waited += 2.0
                continue
            raise RuntimeError(f"no G row under {config['g_uri']} passes filter.min_delta={config['min_delta']}: nothing to train on")
        passes = epoch_passes(cfg, cfg.steps - state["step"], world, rows)
        dataset = read_g(config["g_uri"], config["min_delta"], tokenizer_uri, cfg.num_demos, cfg.seed + len(state["epochs"]), passes, shard=(rank, world), shards=shards)
        seen_rows = 0
        # Closed when the step budget ends the epoch early, so this epoch's Ray Data pipeline stops decoding rows
        # nobody will read (it would otherwise run on beside the next stage).
        batches = iter(dataset.iter_torch_batches(batch_size=cfg.batch_size, drop_last=False, device=device))
        for batch in batches:
            loss = model(batch, generator)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params.values(), cfg.max_grad_norm)
            opt.step()
            schedule.step()
            ema.step(params.values())
            step_done(device)
            state["step"] += 1
            n = len(batch["image"])
            seen_rows += n
            window_samples += n * world
            state["losses"].append(float(loss.detach()))
            if state["resumes"] and state["resumes"][-1]["first_step"] is None:
                state["resumes"][-1]["first_step"] = state["step"]
            bar.update(1)
            if writer is not None:
                writer.add_scalar("train/loss", state["losses"][-1], state["step"])
                writer.add_scalar("train/lr", schedule.get_last_lr()[0], state["step"])
            if state["step"] % cfg.log_every == 0 or state["step"] % cfg.checkpoint_every == 0 or state["step"] >= cfg.steps:
                now = time.perf_counter()
                metrics = {"loss": state["losses"][-1], "lr": schedule.get_last_lr()[0], "samples_per_s": window_samples / max(now - window_start, 1e-9)}
                if writer is not None:
                    writer.add_scalar("train/samples_per_s", metrics["samples_per_s"], state["step"])
                    writer.flush()
                window_start, window_samples = now, 0
                if state["step"] < cfg.steps:
                    report(False, metrics)
            if state["step"] >= cfg.steps:
                break
        if hasattr(batches, "close"):
            batches.close()
        state["epochs"].append({"shards": len(shards), "kept_rows": rows, "passes": passes, "rows_read": seen_rows})
        if seen_rows == 0:
            raise RuntimeError(f"worker {rank} of {world} read no G rows in an epoch ({rows} kept rows in {len(shards)} shards)")
    bar.close()
    if writer is not None:
        writer.close()
    report(True, metrics)


def export(checkpoint_dir: str, out_uri: str, use_ema: bool) -> dict:
    """Write the trained apprentice to `out_uri` as a `SuTIPipeline` folder, with the EMA weights when `use_ema`,
    plus the checkpoint's train_state.json. Returns the train state."""
    from safetensors.torch import load_file

    from core.pipelines.suti import load_apprentice, save_apprentice

    apprentice = load_apprentice(checkpoint_dir)
    if use_ema:
        shadow = load_file(os.path.join(checkpoint_dir, "ema.safetensors"))
        with torch.no_grad():
            for name, p in named_trainable(apprentice.train()).items():
                p.copy_(shadow[name])
    with open(os.path.join(checkpoint_dir, "train_state.json")) as f:
        state = json.load(f)
    with open(os.path.join(checkpoint_dir, "apprentice_config.json")) as f:
        meta = json.load(f)
    folder = storage.local_dir(out_uri) if storage.is_local(out_uri) else tempfile.mkdtemp(prefix="suti-export-")
    save_apprentice(apprentice.eval(), folder, {**{k: v for k, v in meta.items() if k != "demo_grid"}, "weights": "ema" if use_ema else "raw"}, sampler=state["resolved_config"]["apprentice"]["sampler"])
    with open(os.path.join(folder, "train_state.json"), "w") as f:
        json.dump(state, f)
    if not storage.is_local(out_uri):
        import pyarrow.fs as pafs

        fs, path = storage.resolve(out_uri)
        fs.create_dir(path, recursive=True)
        pafs.copy_files(folder, path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
    return state


def fit(cfg: ApprenticeConfig, g_uri: str, min_delta: float | None, base_uri: str, storage_uri: str, run_name: str, config_dict: dict):
    """Train the apprentice; returns the final `ray.train.Checkpoint`."""
    fs, path = storage.resolve(storage_uri)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "apprentice": config_dict["apprentice"], "base_uri": base_uri, "g_uri": storage.absolute_uri(g_uri),
            "min_delta": min_delta, "resolved": config_dict,
            # TensorBoard writes local files: beside the checkpoints for local storage, else on the rank-0 node.
            "tensorboard_dir": os.path.join(storage.absolute_uri(storage_uri) if storage.is_local(storage_uri) else tempfile.gettempdir(), run_name, "tensorboard"),
        },
        scaling_config=ScalingConfig(
            num_workers=cfg.num_workers, use_gpu=cfg.use_gpu, resources_per_worker={"CPU": cfg.num_cpus_per_worker}
        ),
        run_config=RunConfig(
            name=run_name,
            storage_path=path,
            storage_filesystem=fs,
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"apprentice training produced no checkpoint: {result.error}")
    return result
