"""Ray Train job for the apprentice: `train_loop_per_worker` builds model, optimizer and data inside the worker;
`fit` is the small driver.

Data: every epoch, rank 0 plans the read from G's manifest (`core.data.g_manifest.plan`: no shard is opened) and
sends the plan to the other workers; each worker streams only its own shards through Ray Data
(`actors.g_dataset.read_g`): disjoint parts balanced by kept rows, and every worker takes the same number of steps
in an epoch, so DDP never waits on a short part. Shards the expert stage commits while training runs are picked up
at the next epoch; with `apprentice.g_wait_s` > 0 the workers wait that long for G's first rows (a row for every
worker) instead of failing at once.

Checkpoints (every `checkpoint_every` steps and at the end, under the run's `storage_path`) hold the apprentice as
a `SuTIPipeline` folder (safetensors), `ema.safetensors` (the EMA weights), `optimizer.pt` (optimizer and lr
schedule), and `train_state.json` (step, losses, epochs read, resumes, gates, the resolved config). Metrics (loss,
lr, samples/s) go to `ray.train.report` every `log_every` steps and to TensorBoard (tensorboardX) under the run's
folder. A killed worker restarts from the latest checkpoint (`FailureConfig`); the resume is logged with the step
it continues at and a fingerprint of the optimizer state it restored.

Every checkpoint folder ends with `checkpoint_complete.json` (its step, metrics and the SHA-256 of each file), written
last: a folder without it, or whose files no longer match it, is partial or damaged. A resume takes the newest
checkpoint that is whole and loads, logging and recording (`resumes[-1]["skipped"]`) any newer one it passed over;
a run whose newest good checkpoint is already at `apprentice.steps` is not started again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass, field

import pyarrow.fs as pafs
import ray
import ray.train
import torch
from diffusers.training_utils import EMAModel
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from safetensors.torch import load_file, save_file
from tensorboardX import SummaryWriter
from tqdm import tqdm

from actors.g_dataset import read_g
from core.config import ApprenticeConfig
from core.data import g, storage
from core.data import g_manifest as manifest
from core.method.apprentice import DEMO_ENCODER_FILE, Apprentice, load_demo_encoder, training_loss
from core.models.backbone import load_backbone
from core.models.device import step_done
from core.models.schedules import warmup_cosine
from core.pipelines.suti import load_apprentice, save_apprentice

logger = logging.getLogger(__name__)

COMPLETE = "checkpoint_complete.json"  # written last into every checkpoint folder


def _file_digests(folder: str) -> dict[str, str]:
    digests = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, folder)
            if rel != COMPLETE:
                with open(path, "rb") as f:
                    digests[rel] = hashlib.file_digest(f, "sha256").hexdigest()
    return digests


def mark_complete(folder: str, step: int, metrics: dict) -> None:
    """Seal a checkpoint folder: its step, metrics and every file's SHA-256, written after everything else."""
    marker = {"step": step, "metrics": metrics, "files": _file_digests(folder)}
    with open(os.path.join(folder, COMPLETE), "w") as f:
        json.dump(marker, f)


def verify_checkpoint(folder: str) -> dict:
    """The checkpoint's marker when the folder is whole; ValueError naming what is wrong when it is not."""
    try:
        with open(os.path.join(folder, COMPLETE)) as f:
            marker = json.load(f)
    except (OSError, ValueError) as err:
        raise ValueError(f"no completeness marker ({type(err).__name__}): a partial checkpoint") from err
    found = _file_digests(folder)
    bad = sorted(n for n, digest in marker["files"].items() if found.get(n) != digest)
    if bad:
        raise ValueError(f"files missing or changed since the checkpoint was written: {bad}")
    return marker


def sealed_checkpoints(fs: pafs.FileSystem, run_folder: str) -> list[tuple[int, str]]:
    """(step, path) of the checkpoint folders in a run folder that carry a completeness marker, newest step first;
    a folder without one is partial and never listed."""
    found = []
    for info in fs.get_file_info(pafs.FileSelector(run_folder)):
        if info.type != pafs.FileType.Directory or not info.path.rsplit("/", 1)[-1].startswith("checkpoint_"):
            continue
        try:
            with fs.open_input_stream(f"{info.path}/{COMPLETE}") as f:
                found.append((json.loads(f.read())["step"], info.path))
        except (OSError, ValueError, KeyError):
            continue
    return sorted(found, reverse=True)


def run_checkpoints(latest: Checkpoint) -> list[Checkpoint]:
    """`latest`, then the other sealed checkpoints of its run folder, newest step first."""
    fs, path = latest.filesystem, latest.path
    others = [p for _, p in sealed_checkpoints(fs, path.rsplit("/", 1)[0]) if p != path]
    return [latest] + [Checkpoint(path=p, filesystem=fs) for p in others]


def finished_checkpoint(storage_uri: str, run_name: str, steps: int) -> tuple[Checkpoint, dict] | None:
    """The newest whole checkpoint of run `run_name` when it is already at `steps`, with its marker; else None."""
    fs, path = storage.resolve(storage.join(storage_uri, run_name))
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return None
    for step, ckpt_path in sealed_checkpoints(fs, path):
        if step < steps:
            return None
        checkpoint = Checkpoint(path=ckpt_path, filesystem=fs)
        try:
            with checkpoint.as_directory() as folder:
                return checkpoint, verify_checkpoint(folder)
        except ValueError as err:
            logger.warning("checkpoint %s is damaged (%s); looking at an older one", ckpt_path, err)
    return None


@dataclass
class TrainResult:
    """What `fit` returns: the final checkpoint, its metrics, and whether the run had already finished before."""

    checkpoint: Checkpoint
    metrics: dict
    already_finished: bool = False


class ApprenticeLoss(torch.nn.Module):
    """The whole training loss as one module forward, so DDP sees every parameter the loss uses."""

    def __init__(self, apprentice, cfg: ApprenticeConfig):
        super().__init__()
        self.apprentice = apprentice
        self.cfg = cfg

    def forward(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        return training_loss(self.apprentice, batch, self.cfg.text_dropout, self.cfg.demo_dropout, generator)


def load_init(apprentice: Apprentice, folder: str) -> None:
    """Copy a trained apprentice's weights (a folder written by `save_apprentice`) into `apprentice`; a clear error
    when they do not fit (another base, demo grid or attention)."""
    own = apprentice.state_dict()
    trained = load_apprentice(folder).state_dict()
    differ = {
        k: (tuple(v.shape), tuple(own[k].shape)) for k, v in trained.items() if k in own and v.shape != own[k].shape
    }
    if set(trained) != set(own) or differ:
        missing, extra = sorted(set(own) - set(trained))[:5], sorted(set(trained) - set(own))[:5]
        raise ValueError(
            f"apprentice.init {folder} does not fit this apprentice (missing {missing}, unexpected {extra}, shapes "
            f"(file, apprentice) {dict(list(differ.items())[:5])}): it needs the same base, demo_grid, attention and "
            "text_tokens"
        )
    apprentice.load_state_dict({k: v.to(own[k].dtype) for k, v in trained.items()})


def optimizer_fingerprint(opt: torch.optim.Optimizer) -> float:
    """Sum of every floating tensor in the optimizer state: equal before saving and after loading, 0 when fresh."""
    return float(
        sum(
            v.double().sum()
            for s in opt.state.values()
            for v in s.values()
            if torch.is_tensor(v) and v.is_floating_point()
        )
    )


def named_trainable(apprentice) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in apprentice.named_parameters() if p.requires_grad}


def param_groups(params: dict[str, torch.nn.Parameter], cfg: ApprenticeConfig) -> list[dict]:
    """The optimizer's groups: the base's weights at `lr`, the new layers (`adapter.*`) at `lr_new` (default `lr`)."""
    if cfg.lr_new is None:
        return [{"params": list(params.values()), "lr": cfg.lr}]
    new = [p for n, p in params.items() if n.startswith("adapter.")]
    old = [p for n, p in params.items() if not n.startswith("adapter.")]
    groups = [{"params": old, "lr": cfg.lr}] if old else []
    return groups + [{"params": new, "lr": cfg.lr_new}]


def ema_state(ema, names: list[str]) -> dict[str, torch.Tensor]:
    return {n: s.detach().cpu().contiguous() for n, s in zip(names, ema.shadow_params)}


def epoch_passes(cfg: ApprenticeConfig, remaining_steps: int, world: int, rows: int) -> int:
    """How many times an epoch emits each row (each time with its own demos): enough to cover the remaining steps
    in one read (every epoch restarts Ray Data's execution, seconds on a small machine), at most
    `passes_per_epoch` (streaming: a small number plans from the manifest again sooner)."""
    cap = cfg.passes_per_epoch or 32
    return max(1, min(cap, math.ceil(remaining_steps * cfg.batch_size / max(1, rows / world))))


@dataclass
class WorkerConfig:
    """Everything a training worker needs, typed: the apprentice's settings and where its inputs live."""

    apprentice: ApprenticeConfig
    base_uri: str
    g_uri: str
    min_delta: float | None
    tensorboard_dir: str
    resolved: dict = field(default_factory=dict)  # the whole resolved pipeline config, saved beside the weights
    # When `apprentice.budget_s` ends the run (seconds since the epoch, set once by the driver): a worker group that
    # Ray Train restarts, and the wait for G's first rows, spend the same budget.
    deadline: float | None = None


class WorkerRun:
    """One Ray Train worker's training: model, optimizer, EMA and state, built or restored from a checkpoint."""

    def __init__(self, job: WorkerConfig):
        self.job, self.cfg = job, job.apprentice
        cfg = self.cfg
        torch.set_num_threads(cfg.threads)
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        torch.manual_seed(cfg.seed)
        self.device = ray.train.torch.get_device()  # this worker's own accelerator (or the CPU)
        backbone = load_backbone(storage.local_dir(job.base_uri))
        self.apprentice = Apprentice(
            backbone, cfg.demo_grid, zero_init=cfg.zero_init, attention=cfg.attention, text_tokens=cfg.text_tokens
        )
        checkpoint = ray.train.get_checkpoint()
        if cfg.init and not checkpoint:  # a new run continues a trained apprentice; a resumed one has its weights
            load_init(self.apprentice, storage.local_dir(cfg.init))
        elif cfg.demo_encoder_init and not checkpoint:  # a new run starts from the warm start; a resumed one has it
            folder = storage.local_dir(cfg.demo_encoder_init)
            load_demo_encoder(self.apprentice, os.path.join(folder, DEMO_ENCODER_FILE))
        self.initial_gates = self.apprentice.gates().detach().clone()
        self.apprentice.to(self.device)  # before the optimizer state is loaded, so that state lands on the same device
        self.params = named_trainable(self.apprentice)
        self.opt = torch.optim.AdamW(param_groups(self.params, cfg), weight_decay=0.0)
        self.schedule = warmup_cosine(self.opt, cfg.steps, warmup_fraction=cfg.warmup_fraction)
        self.ema = EMAModel(self.params.values(), decay=cfg.ema_decay)
        self.state = {"step": 0, "losses": [], "epochs": [], "resumes": [], "init": cfg.init}
        if checkpoint:
            self.restore(checkpoint)
        self.model = ray.train.torch.prepare_model(ApprenticeLoss(self.apprentice, cfg), move_to_device=False)
        self.generator = torch.Generator().manual_seed(cfg.seed * 1000 + self.rank + self.state["step"])
        tb = os.path.join(job.tensorboard_dir, f"rank{self.rank}")
        self.writer = SummaryWriter(tb) if self.rank == 0 else None
        self.tokenizer_uri = storage.join(job.base_uri, "tokenizer")
        self.window_start, self.window_samples, self.metrics = time.perf_counter(), 0, {}
        self.deadline = job.deadline
        self.out_of_budget = False

    def restore(self, latest: Checkpoint) -> None:
        """Continue from the newest checkpoint of the run that is whole and loads, `latest` first."""
        skipped = []
        for checkpoint in run_checkpoints(latest):
            name = checkpoint.path.rsplit("/", 1)[-1]
            try:
                with checkpoint.as_directory() as folder:
                    verify_checkpoint(folder)
                    weights = load_apprentice(folder).state_dict()
                    saved = torch.load(
                        os.path.join(folder, "optimizer.pt"), weights_only=True, map_location=self.device
                    )
                    shadow = load_file(os.path.join(folder, "ema.safetensors"))
                    with open(os.path.join(folder, "train_state.json")) as f:
                        state = json.load(f)
            except Exception as err:  # noqa: BLE001  any damage: safetensors, torch, JSON and OS errors differ
                logger.warning(
                    "checkpoint %s is unusable (%s: %s); trying an older one", name, type(err).__name__, err
                )
                skipped.append(name)
                continue
            break
        else:
            raise RuntimeError(f"no usable checkpoint to resume from under {latest.path.rsplit('/', 1)[0]}: {skipped}")
        self.apprentice.load_state_dict(weights)
        self.opt.load_state_dict(saved["optimizer"])
        self.schedule.load_state_dict(saved["lr_schedule"])
        self.ema.shadow_params = [shadow[n].to(self.device) for n in self.params]
        self.state = state
        self.ema.optimization_step = self.state["step"]
        if skipped:
            logger.warning("resuming from checkpoint %s at step %d; skipped %s", name, state["step"], skipped)
        self.state["resumes"].append(
            {
                "checkpoint": name,
                "checkpoint_step": self.state["step"],
                "skipped": skipped,
                "optimizer_fingerprint_saved": self.state.pop("optimizer_fingerprint"),
                "optimizer_fingerprint_loaded": optimizer_fingerprint(self.opt),
                "first_step": None,
            }
        )
        for key in ("initial_gates", "gates", "resolved_config"):
            self.state.pop(key, None)

    def report(self, final: bool) -> None:
        """Metrics to Ray Train; with a checkpoint from rank 0 every `checkpoint_every` steps and at the end."""
        step = self.state["step"]
        metrics = {**self.metrics, "step": step, "final": final}
        if self.rank != 0 or not (final or step % self.cfg.checkpoint_every == 0):
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as folder:
            save_apprentice(
                self.apprentice, folder, {"config": dataclasses.asdict(self.job)}, sampler=self.cfg.sampler
            )
            optimizer = {"optimizer": self.opt.state_dict(), "lr_schedule": self.schedule.state_dict()}
            torch.save(optimizer, os.path.join(folder, "optimizer.pt"))
            save_file(ema_state(self.ema, list(self.params)), os.path.join(folder, "ema.safetensors"))
            state = {
                **self.state,
                "optimizer_fingerprint": optimizer_fingerprint(self.opt),
                "initial_gates": self.initial_gates.tolist(),
                "gates": self.apprentice.gates().detach().tolist(),
                "resolved_config": self.job.resolved,
            }
            with open(os.path.join(folder, "train_state.json"), "w") as f:
                json.dump(state, f)
            mark_complete(folder, step, metrics)
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(folder))

    def epoch_plan(self, waited: float) -> manifest.Plan | None:
        """This epoch's read of G, planned by rank 0 from the manifest and the same on every worker; None means
        wait (up to `g_wait_s`) for G's first rows, at least one shard with kept rows for every worker."""
        found = None
        if self.rank == 0:
            found = manifest.plan(
                self.job.g_uri,
                self.job.min_delta,
                self.world,
                g.read_manifest(self.job.g_uri, manifest.PLAN_COLUMNS, live_only=True),
            )
        if self.world > 1:
            box = [found]
            torch.distributed.broadcast_object_list(box, src=0)
            found = box[0]
        if min(found.rows) > 0:
            return found
        if waited >= self.cfg.g_wait_s:
            where = f"G under {self.job.g_uri}"
            if not sum(found.rows):
                raise RuntimeError(f"no G row {where} passes filter.min_delta={self.job.min_delta}: nothing to train")
            raise RuntimeError(
                f"{where} has {sum(found.rows)} rows passing filter.min_delta={self.job.min_delta} in "
                f"{sum(map(len, found.shards))} shards: too few for {self.world} workers (each needs a shard)"
            )
        return None

    def step(self, batch: dict) -> None:
        if self.cfg.min_demos is not None:  # this step's number of demos, the same for the whole batch
            k = int(torch.randint(self.cfg.min_demos, self.cfg.num_demos + 1, (1,), generator=self.generator))
            batch = {**batch, "demo_images": batch["demo_images"][:, :k], "demo_ids": batch["demo_ids"][:, :k]}
        loss = self.model(batch, self.generator)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params.values(), self.cfg.max_grad_norm)
        self.opt.step()
        self.schedule.step()
        self.ema.step(self.params.values())
        step_done(self.device)
        state = self.state
        state["step"] += 1
        state["losses"].append(float(loss.detach()))
        if state["resumes"] and state["resumes"][-1]["first_step"] is None:
            state["resumes"][-1]["first_step"] = state["step"]
        self.window_samples += len(batch["image"]) * self.world

    def log(self) -> None:
        """TensorBoard every step; metrics (and checkpoints) every `log_every` / `checkpoint_every` steps."""
        step, cfg = self.state["step"], self.cfg
        lr = self.schedule.get_last_lr()[0]
        if self.writer is not None:
            self.writer.add_scalar("train/loss", self.state["losses"][-1], step)
            self.writer.add_scalar("train/lr", lr, step)
        if step % cfg.log_every == 0 or step % cfg.checkpoint_every == 0 or step >= cfg.steps:
            now = time.perf_counter()
            speed = self.window_samples / max(now - self.window_start, 1e-9)
            self.metrics = {"loss": self.state["losses"][-1], "lr": lr, "samples_per_s": speed}
            if self.writer is not None:
                self.writer.add_scalar("train/samples_per_s", speed, step)
                self.writer.flush()
            self.window_start, self.window_samples = now, 0
            if step < cfg.steps and not self.out_of_budget:
                self.report(False)

    def budget_spent(self) -> bool:
        """Whether `budget_s` is spent: rank 0 decides for every worker, so all stop at the same step."""
        if self.deadline is None:
            return False
        flag = torch.tensor([float(time.time() >= self.deadline)], device=self.device)
        if self.world > 1:
            torch.distributed.broadcast(flag, src=0)
        return bool(flag.item())

    def train_epoch(self, plan: manifest.Plan) -> None:
        """One pass over this worker's part of G, `epoch_steps` steps (the same on every worker), ending early when
        the step budget is spent."""
        cfg, state = self.cfg, self.state
        fewest = min(plan.rows)
        passes = epoch_passes(cfg, cfg.steps - state["step"], 1, fewest)
        epoch_steps = max(1, fewest * passes // cfg.batch_size)
        seed = cfg.seed + len(state["epochs"])
        part, rows = plan.parts[self.rank], plan.rows[self.rank]
        shards = [uri for uri, _ in part]
        dataset = read_g(
            self.job.g_uri, self.job.min_delta, self.tokenizer_uri, cfg.num_demos, seed, passes, part, cfg.random_flip
        )
        # Closed when the step budget ends the epoch early, so this epoch's Ray Data pipeline stops decoding rows
        # nobody will read (it would otherwise run on beside the next stage).
        batches = iter(dataset.iter_torch_batches(batch_size=cfg.batch_size, drop_last=False, device=self.device))
        seen_rows = steps = 0
        for batch in batches:
            self.step(batch)
            seen_rows += len(batch["image"])
            steps += 1
            self.bar.update(1)
            # Every worker asks at the same steps (the broadcast in budget_spent), before any break below.
            if state["step"] < cfg.steps and state["step"] % cfg.log_every == 0 and self.budget_spent():
                self.out_of_budget = True  # the run's last report checkpoints this step, after the epoch's record
            self.log()
            if self.out_of_budget or state["step"] >= cfg.steps or steps >= epoch_steps:
                break
        if hasattr(batches, "close"):
            batches.close()
        state["epochs"].append(
            {
                "shards": len(shards),
                "kept_rows": rows,
                "kept_rows_all": sum(plan.rows),
                "balance": round(plan.balance, 4),
                "passes": passes,
                "steps": steps,
                "rows_read": seen_rows,
            }
        )
        if seen_rows == 0:
            raise RuntimeError(
                f"worker {self.rank} of {self.world} read no G rows in an epoch "
                f"({rows} kept rows in {len(shards)} shards)"
            )

    def run(self) -> None:
        cfg = self.cfg
        self.bar = tqdm(
            total=cfg.steps, initial=self.state["step"], desc="apprentice", disable=self.rank != 0, mininterval=5
        )
        waited = 0.0
        while self.state["step"] < cfg.steps and not self.out_of_budget:
            plan = self.epoch_plan(waited)
            if plan is None:
                if self.budget_spent():  # the budget ends a wait for G too (every worker waits alike: all ask here)
                    self.out_of_budget = True
                    break
                time.sleep(2.0)
                waited += 2.0
                continue
            self.train_epoch(plan)
        self.bar.close()
        if self.writer is not None:
            self.writer.close()
        self.report(True)


def train_loop_per_worker(loop_config: dict) -> None:
    """Ray Train's entry point on every worker: `loop_config["job"]` is the typed `WorkerConfig`."""
    WorkerRun(loop_config["job"]).run()


def export(checkpoint_dir: str, out_uri: str, use_ema: bool) -> dict:
    """Write the trained apprentice to `out_uri` as a `SuTIPipeline` folder, with the EMA weights when `use_ema`,
    plus the checkpoint's train_state.json. Returns the train state."""
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
    save_apprentice(
        apprentice.eval(),
        folder,
        {**{k: v for k, v in meta.items() if k != "demo_grid"}, "weights": "ema" if use_ema else "raw"},
        sampler=state["resolved_config"]["apprentice"]["sampler"],
    )
    with open(os.path.join(folder, "train_state.json"), "w") as f:
        json.dump(state, f)
    if not storage.is_local(out_uri):
        fs, path = storage.resolve(out_uri)
        fs.create_dir(path, recursive=True)
        pafs.copy_files(folder, path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
    return state


def fit(
    cfg: ApprenticeConfig,
    g_uri: str,
    min_delta: float | None,
    base_uri: str,
    storage_uri: str,
    run_name: str,
    config_dict: dict,
):
    """Train the apprentice (or find that run `run_name` has already reached `cfg.steps`); the final checkpoint."""
    if done := finished_checkpoint(storage_uri, run_name, cfg.steps):
        checkpoint, marker = done
        logger.warning(
            "apprentice run %s already finished at step %d (%s): nothing to train",
            run_name,
            marker["step"],
            checkpoint.path,
        )
        return TrainResult(checkpoint, marker["metrics"], already_finished=True)
    fs, path = storage.resolve(storage_uri)
    # TensorBoard writes local files: beside the checkpoints for local storage, else on the rank-0 node.
    tb_root = storage.absolute_uri(storage_uri) if storage.is_local(storage_uri) else tempfile.gettempdir()
    job = WorkerConfig(
        apprentice=cfg,
        base_uri=base_uri,
        g_uri=storage.absolute_uri(g_uri),
        min_delta=min_delta,
        tensorboard_dir=os.path.join(tb_root, run_name, "tensorboard"),
        resolved=config_dict,
        deadline=time.time() + cfg.budget_s if cfg.budget_s is not None else None,
    )
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"job": job},
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
    return TrainResult(result.checkpoint, result.metrics)
