"""Ray Train job for the apprentice: `train_loop_per_worker` builds model, optimizer and data inside the
worker; `fit` is the small driver. G streams in through `get_dataset_shard("train").iter_torch_batches`.

Checkpoints (every `checkpoint_every` steps and at the end) hold apprentice.safetensors with the component
configs, the optimizer state, the step, the loss log and the resolved config, under the run's `storage_path`.
"""

from __future__ import annotations

import json
import os
import tempfile

import ray
import ray.train
import torch
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from tqdm import tqdm

from core import storage
from core.config import ApprenticeConfig, from_dict


class ApprenticeLoss(torch.nn.Module):
    """The whole training loss as one module forward, so DDP sees every parameter the loss uses."""

    def __init__(self, apprentice, cfg: ApprenticeConfig):
        super().__init__()
        self.apprentice = apprentice
        self.cfg = cfg

    def forward(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        from core.apprentice import training_loss

        return training_loss(self.apprentice, batch, self.cfg.text_dropout, self.cfg.demo_dropout, generator)


def train_loop_per_worker(config: dict) -> None:
    from core.apprentice import Apprentice, save_apprentice
    from core.backbone import load_backbone

    cfg: ApprenticeConfig = from_dict(ApprenticeConfig, config["apprentice"])
    torch.set_num_threads(cfg.threads)
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    torch.manual_seed(cfg.seed)
    device = ray.train.torch.get_device()  # this worker's own accelerator (or the CPU)
    apprentice = Apprentice(load_backbone(storage.local_dir(config["base_uri"])), cfg.demo_grid)
    initial_gates = apprentice.gates().detach().clone()
    apprentice.to(device)  # before the optimizer state is loaded, so that state lands on the same device
    opt = torch.optim.AdamW(apprentice.parameters(), lr=cfg.lr, weight_decay=0.0)
    step, losses = 0, []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder:
            from safetensors.torch import load_file

            apprentice.load_state_dict(load_file(os.path.join(folder, "apprentice.safetensors")))
            opt.load_state_dict(torch.load(os.path.join(folder, "optimizer.pt"), weights_only=True, map_location=device))
            with open(os.path.join(folder, "train_state.json")) as f:
                state = json.load(f)
            step, losses = state["step"], state["losses"]
    model = ray.train.torch.prepare_model(ApprenticeLoss(apprentice, cfg), move_to_device=False)
    generator = torch.Generator().manual_seed(cfg.seed * 1000 + rank + step)
    shard = ray.train.get_dataset_shard("train")

    def report(final: bool) -> None:
        metrics = {"step": step, "loss": losses[-1] if losses else float("nan"), "final": final}
        if rank != 0:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as folder:
            save_apprentice(apprentice, folder, {"config": config})
            torch.save(opt.state_dict(), os.path.join(folder, "optimizer.pt"))
            with open(os.path.join(folder, "train_state.json"), "w") as f:
                gates = apprentice.gates().detach()
                json.dump(
                    {"step": step, "losses": losses, "initial_gates": initial_gates.tolist(), "gates": gates.tolist()}, f
                )
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(folder))

    bar = tqdm(total=cfg.steps, initial=step, desc="apprentice", disable=rank != 0, mininterval=5)
    while step < cfg.steps:
        seen = 0
        for batch in shard.iter_torch_batches(batch_size=cfg.batch_size, drop_last=False, device=device):
            loss = model(batch, generator)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            seen += 1
            losses.append(float(loss.detach()))
            bar.update(1)
            if step % cfg.checkpoint_every == 0 and step < cfg.steps:
                report(final=False)
            if step >= cfg.steps:
                break
        if seen == 0:
            raise RuntimeError("the G dataset is empty after filtering by filter.min_delta: nothing to train on")
    bar.close()
    report(final=True)


def fit(cfg: ApprenticeConfig, g_dataset, base_uri: str, storage_uri: str, run_name: str, config_dict: dict):
    """Train the apprentice; returns the final `ray.train.Checkpoint`."""
    fs, path = storage.resolve(storage_uri)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"apprentice": config_dict["apprentice"], "base_uri": base_uri, "resolved": config_dict},
        scaling_config=ScalingConfig(
            num_workers=cfg.num_workers, use_gpu=cfg.use_gpu, resources_per_worker={"CPU": cfg.num_cpus_per_worker}
        ),
        run_config=RunConfig(
            name=run_name,
            storage_path=path,
            storage_filesystem=fs,
            failure_config=FailureConfig(max_failures=2),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
        datasets={"train": g_dataset},
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"apprentice training produced no checkpoint: {result.error}")
    return result.checkpoint
