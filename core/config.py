"""Typed configuration of every stage: one source of defaults.

The dataclasses hold every default: `python -m apps.pipeline` with no overrides runs on them. Hydra composes the
YAML presets under conf/ onto them (apps/config.py registers them); a preset holds only what differs from here
(a test checks). Core code only ever sees the dataclasses. A required value (a path with nothing sensible to
default to) is None here and fails naming its key where it is used.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ModelConfig:
    # A name in core.models.backbone.PRESETS: "tiny" (32x32 pixels, about 1 M UNet parameters, a 2-layer CLIP text
    # encoder) is created and pretrained here; sd15, sd21 and if_stage1 are loaded from `path` (conf/model/).
    preset: str = "tiny"
    # A local folder (or URI) of a pretrained base; None: the pretrain stage's output (paths.base).
    path: str | None = None


@dataclass
class WorldConfig:
    # The scene distribution (core/toy/world.py): 2, plain and larger, the world the shipped artifacts are made for;
    # 1, textured and varied (too hard for a base trained on 2 CPU cores: docs/toy_study.md).
    version: int = 2
    seed: int = 0
    resolution: int = 32
    test_fraction: float = 0.2  # share of subjects no training stage ever sees
    # Share of the train subjects left out of the corpus: the validation subjects of `evaluate.split=validation`.
    validation_fraction: float = 0.0
    # The "web" corpus: URL groups of one subject, plus noise for mining to remove.
    corpus_groups: int = 40
    group_min_images: int = 4
    group_max_images: int = 6
    mixed_group_fraction: float = 0.2  # groups that mix two subjects
    offtopic_image_fraction: float = 0.1  # images of an unrelated subject slipped into a clean group
    corrupt_records: int = 3


@dataclass
class ScorerConfig:
    steps: int = 400
    batch_size: int = 32
    lr: float = 2e-3
    seed: int = 0
    embed_dim: int = 64
    width: int = 64
    layers: int = 2
    threads: int = 2


@dataclass
class ReadersConfig:
    # apps.readers trains for `steps` steps or `budget_s` seconds, whichever ends first.
    steps: int = 2000
    budget_s: float | None = None
    batch_size: int = 128
    lr: float = 2e-3
    seed: int = 0
    threads: int = 2
    workers: int = 1  # DataLoader processes drawing the renders while the readers train
    eval_n: int = 1024  # clean renders of test subjects their accuracy is measured on


@dataclass
class StudyConfig:
    # apps.study: the kinds of G (expert.kind) that each get a G and an apprentice, compared by one evaluate run.
    kinds: list[str] = field(default_factory=lambda: ["finetune", "raw", "oracle"])
    # The threshold sweep: an apprentice on the experts' G at each of these lambdas (None: keep every render),
    # `sweep_steps` steps each (None: apprentice.steps), compared on validation subjects (world.validation_fraction);
    # the best by mean subject and text fidelity becomes filter.min_delta for the kinds above.
    lambdas: list[float | None] = field(default_factory=list)
    sweep_steps: int | None = None


@dataclass
class DemoEncoderConfig:
    # apps.demo_encoder trains for `steps` steps or `budget_s` seconds, whichever ends first.
    steps: int = 400
    budget_s: float | None = None
    batch_size: int = 128
    lr: float = 2e-3
    seed: int = 0
    threads: int = 2
    eval_n: int = 512  # demos of test subjects its accuracy is measured on


@dataclass
class PretrainConfig:
    steps: int = 400
    batch_size: int = 16
    lr: float = 1e-3
    seed: int = 0
    threads: int = 2
    # "cosine": warm-up, then cosine decay over `steps` (or over `budget_s`); "constant": warm-up, then flat (with EMA
    # weights, a run can stop at any step).
    schedule: str = "cosine"
    prediction_type: str = "epsilon"  # what the UNet predicts: "epsilon" or "v_prediction" (Salimans & Ho 2022)
    # Min-SNR-gamma loss weighting (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting Strategy"):
    # each timestep's loss weighted by min(SNR, gamma) / SNR (epsilon) or / (SNR + 1) (v); None: unweighted.
    snr_gamma: float | None = None
    ema_decay: float | None = None  # EMA of the weights (warmed up as (1 + step) / (10 + step)); None: no EMA
    budget_s: float | None = None  # seconds of training, the time spent in `on_mark` callbacks excluded
    # True: warm-up and decay follow the share of `budget_s` used (one run, stopped by its budget). False: they follow
    # the step out of `steps`, and continue there when a later run resumes from a checkpoint.
    budget_schedule: bool = False
    # A curriculum: the first `plain_steps` steps draw plain scenes (no style, no property edit; the same captions).
    plain_steps: int = 0
    # The stage keeps a checkpoint in `paths.base` (fp16 EMA weights and a report), rewritten every `save_every` steps
    # and at the end; with `resume` a run continues from the one there (same recipe), its schedule at the saved step.
    resume: bool = True
    save_every: int = 500
    # After each run: the base draws `eval_n` full captions of test subjects at `eval_guidance`, and the readers at
    # `paths.readers` give its identity (recorded in the checkpoint's report; 0: not measured).
    eval_n: int = 0
    eval_guidance: float = 3.0
    # With scales here, the run first measures identity on `eval_n` full captions of *train* subjects at each of
    # them and measures the test subjects at the best one instead of `eval_guidance` (the choice is recorded).
    guidance_sweep: list[float] = field(default_factory=list)
    eval_every_s: float | None = None  # also measure every so many seconds of training: the run's identity curve


@dataclass
class MineConfig:
    # Keep an image when its mean similarity to the rest of its group passes this: same-subject groups sit above
    # about 0.9 with the 400-step toy scorer.
    min_image_image: float = 0.88
    min_image_text: float = 0.0  # keep a cluster when its mean image-caption similarity passes this
    min_cluster_size: int = 3
    max_demos: int = 5
    prompts_per_subject: int = 4
    seed: int = 0
    # local: one process embeds every group (small corpora, the toy world); ray_data: Ray Data streams the corpus
    # through `num_actors` scorer actors (`actors/mining_pool.py`), for real corpora. Both give the same D_S.
    engine: str = "local"
    num_actors: int = 2
    batch_size: int = 64


@dataclass
class ExpertConfig:
    # One actor per CPU slot here; on a GPU cluster num_gpus: 1 (or resources: {TPU: 1}) per actor
    # (conf/expert/paper.yaml has the paper's settings for real backbones).
    num_actors: int = 2
    num_cpus: float = 1.0  # per actor
    num_gpus: float = 0.0  # per actor
    resources: dict[str, float] = field(default_factory=dict)  # e.g. {"TPU": 1}
    threads: int = 1  # torch threads per actor
    max_tasks_in_flight: int = 2  # per actor
    max_subjects: int | None = None  # None: every subject of D_S
    steps: int = 60
    batch_size: int = 8
    lr: float = 5e-4
    optimizer: str = "adamw"  # adamw | adafactor (the paper's; conf/expert/paper.yaml)
    train_text_encoder: bool = True  # full fine-tuning only; LoRA tunes the UNet's attention alone
    lora_rank: int = (
        0  # 0: full fine-tuning (the paper); > 0: a LoRA adapter (peft) of this rank on the UNet's attention
    )
    lora_alpha: float | None = None  # None: the rank (scale 1)
    samples_per_prompt: int = 1
    sampler: str = "ddim"  # ddim | ddpm
    num_inference_steps: int = 25
    guidance_scale: float = 3.0  # the tiny model's samples collapse well above 3; the paper uses 30 on Imagen
    seed: int = 0
    max_retries: int = 2
    # What the pool writes to G (each kind to its own `paths.g`; training refuses a G mixing them): "finetune", the
    # experts' renders (SuTI); "oracle", the true render of each prompt (toy world only: an upper bound on what
    # experts could give); "raw", each demo as the target of its own caption, the other demos as the demos (the
    # Re-Imagen-style apprentice, trained on the clusters without experts).
    kind: str = "finetune"
    # Also render at these fine-tune step counts (each at most `steps`), for the fidelity-by-steps curve that finds
    # the expert's plateau (`evaluate.expert_steps`); the renders at `steps` are the ones written to G.
    checkpoints: list[int] = field(default_factory=list)


@dataclass
class GLayoutConfig:
    """How G's files are laid out (core/data/g_manifest.py): experts write one small shard per subject, the stage's
    driver records them in the manifest in batches and merges them into shards of about `shard_rows` rows."""

    shard_rows: int = 1024  # rows per merged shard; a read is split among workers shard by shard
    commit_every: int = 64  # finished subjects per manifest commit
    commit_every_s: float = 30.0  # ...or this many seconds, whichever comes first
    compact_every: int = 1024  # finished subjects between merges
    snapshot_every: int = 32  # manifest commits between snapshots
    retention_s: float = 600.0  # a shard merged away is deleted this long after (an epoch may be reading it)


@dataclass
class FilterConfig:
    min_delta: float | None = 0.0  # the paper's lambda (0.02 there); None keeps every render


@dataclass
class ApprenticeConfig:
    num_workers: int = 1
    num_cpus_per_worker: float = 1.0
    use_gpu: bool = False
    threads: int = 2  # torch threads per worker
    steps: int = 300  # 0 exports the starting apprentice (the base with its warm start), for comparison
    batch_size: int = 8
    lr: float = 5e-4
    lr_new: float | None = None  # the new layers' (demo encoder, demo attention, gates) rate; None: `lr`
    num_demos: int = 3  # demonstrations per training example (paper: 3)
    # Each step gives its batch k demos, k drawn from min_demos..num_demos, so the apprentice learns to use however
    # many a user brings; None: always num_demos.
    min_demos: int | None = None
    # A warm start for the demo encoder's image layers (safetensors of `DemoEncoder.conv`, e.g. from
    # `python -m apps.demo_encoder`: a folder holding demo_encoder.safetensors), loaded before the first step of a
    # new run.
    demo_encoder_init: str | None = None
    # A trained apprentice to continue (a folder written by apps.train: its UNet, text encoder, demo encoder and
    # attention branches), loaded before the first step of a new run in place of the base and the warm start; it
    # must have this run's `demo_grid` and `attention`.
    init: str | None = None
    demo_grid: int = 4  # each demo image becomes demo_grid**2 tokens
    attention: str = (
        "separate"  # "separate": a new gated branch per cross-attention layer; "joint": demos join the text tokens
    )
    zero_init: str = "gate"  # separate branches: "gate" (gate at 0) or "out" (output projection at 0, gate at 1)
    # Tokens in the text encoder's output space that the demo encoder's text head makes from the demos (averaged over
    # them) and that join each cross-attention layer's own text tokens: the subject as words would say it. 0: none.
    # Standard cross-attention only (not IF's added-KV layers). The toy warm start (apps.demo_encoder) trains the head
    # on the text states of the identity spelled out, which takes 6 tokens ("a red ball with blue dots").
    text_tokens: int = 0
    text_dropout: float = 0.1
    demo_dropout: float = 0.1
    # Mirror half the targets left to right (diffusers' `--random_flip`), each row's choice drawn with its demos from
    # its key, pass and epoch; the demos are left as they are.
    random_flip: bool = False
    checkpoint_every: int = 100
    # Stop this many seconds after the train stage starts (checked every `log_every` steps; Ray Train's restarts of
    # the workers and their wait for G count too) with a checkpoint; the next run of the same settings resumes from
    # it on the same step-based schedule. None: train to `steps`. Not part of the run's name, so runs with other
    # budgets continue one another.
    budget_s: float | None = None
    log_every: int = 10  # metrics to ray.train.report and TensorBoard
    warmup_fraction: float = 0.05  # linear warm-up, then cosine decay to 10% (core.models.schedules.warmup_cosine)
    max_grad_norm: float = 1.0
    ema_decay: float = 0.999  # diffusers' EMAModel (its decay warms up as (1 + step) / (10 + step))
    export_ema: bool = True  # paths.apprentice gets the EMA weights; checkpoints keep both
    # G is listed again every epoch, so shards written while training runs are read at the next epoch.
    passes_per_epoch: int | None = (
        None  # None: enough to cover the remaining steps (at most 32); 1-2 re-plans from G's manifest sooner
    )
    g_wait_s: float = 0.0  # how long a worker waits for G's first rows (the expert stage still writing) before failing
    max_failures: int = 2  # Ray Train restarts from the latest checkpoint after a lost worker, this many times
    seed: int = 0
    # Sampling defaults for the trained apprentice.
    sampler: str = "ddim"
    num_inference_steps: int = 25
    guidance_scale: float = 3.0
    demo_guidance_scale: float | None = None  # None: one scale over text and demos together


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"  # Serve's HTTP port stays on loopback unless configured otherwise
    port: int = 8000
    keep_serving: bool = False  # the pipeline asks once and shuts down unless this is set
    num_replicas: int = 1
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    max_body_bytes: int = 20 * 1024 * 1024
    max_images: int = 4
    max_steps: int = 200
    max_demos: int = 8
    max_prompt_chars: int = 300
    # Request limits: over one, a request gets a 4xx naming the field.
    # The pixels all of a request's demos decode to, in millions (a JPEG is decoded towards the model's resolution
    # and counts for what it decodes to): bounds the memory one request can make a replica allocate.
    max_request_megapixels: float = 64.0
    decode_threads: int = 2  # demos decoded at once per ingress replica, off its event loop
    # Request batching on the apprentice replicas (@serve.batch): up to max_batch_size requests share one reverse
    # process; 1 turns batching off.
    max_batch_size: int = 4
    batch_wait_timeout_s: float = 0.05
    max_ongoing_requests: int = 16  # per apprentice replica; at least max_batch_size, or batches never fill
    # Beyond ongoing + queued requests, a request is answered at once with 503 and a Retry-After of retry_after_s
    # seconds, rather than waiting without bound: max_queued_requests waiting for an apprentice replica at each
    # ingress replica, ingress_max_queued_requests waiting for an ingress replica at the HTTP proxy.
    max_queued_requests: int = 32
    ingress_max_ongoing_requests: int = 8  # per ingress replica (Serve's default of 5 is too few)
    ingress_max_queued_requests: int = 16
    # What an ingress replica may grow by while it holds ingress_max_ongoing_requests bodies of max_body_bytes and
    # decodes decode_threads demos at once: the app refuses to start with limits that could exceed it
    # (actors.serve_app.ingress_memory_bound_mb; benchmarks/serve_memory.py measures it).
    ingress_memory_budget_mb: int = 1024
    retry_after_s: int = 5
    # A client that stops sending its body for body_read_timeout_s seconds gets a 408 and frees its slot; no request
    # takes longer than request_timeout_s end to end (Serve's HTTP proxy answers 408).
    body_read_timeout_s: float = 10.0
    request_timeout_s: float = 300.0
    # Serve's autoscaling_config (min_replicas, max_replicas, target_ongoing_requests, ...); when not empty it
    # replaces num_replicas. Set on the command line with `+serve.autoscaling='{min_replicas: 1, max_replicas: 4}'`.
    autoscaling: dict[str, Any] = field(default_factory=dict)


@dataclass
class EvaluateConfig:
    num_subjects: int = 6  # test subjects, never seen in training
    prompts_per_subject: int = 4
    num_demos: int = 3
    samples_per_prompt: int = 1
    seed: int = 1234
    # Also the apprentice given only the first k of each subject's demos, for each k here (rows "apprentice, k
    # demos"; the same prompts and seeds); at most `num_demos`.
    demo_counts: list[int] = field(default_factory=list)
    # More apprentices to compare, row name -> folder (e.g. one trained on raw or oracle G), with all the demos.
    apprentices: dict[str, str] = field(default_factory=dict)
    resamples: int = 1000  # bootstrap resamples of the subjects for each metric's 95% interval
    # "test": subjects no training stage saw (the table); "validation": train subjects kept out of the corpus
    # (`world.validation_fraction`), for choosing settings such as lambda.
    split: str = "test"
    # The fixed rows (any of oracle, base, expert, apprentice; "apprentice" brings the `demo_counts` rows along);
    # `apprentices` add theirs whatever this says.
    rows: list[str] = field(default_factory=lambda: ["oracle", "base", "expert", "apprentice"])
    # The expert's fidelity by fine-tune steps: rows "expert, N steps" for each N here, rendered by the same
    # fine-tuning run as the "expert" row (at `expert.steps`), and the plateau in metrics.json: the fewest steps
    # whose subject fidelity reaches the lower end of the best step count's interval. Run on the validation split
    # to choose `expert.steps` for G.
    expert_steps: list[int] = field(default_factory=list)
    # Gates on the apprentice's subject fidelity (None: not checked): at least the base's plus `gain_over_base`, and
    # at least its own with 0 demos plus `gain_over_no_demos` (0 must be in `demo_counts`). metrics.json records
    # each; a missed gate fails the stage once the table, metrics and grid are written.
    gain_over_base: float | None = None
    gain_over_no_demos: float | None = None


LOCAL_DIR = "local-dir:"  # open_clip's prefix for a model folder (open_clip_config.json and weights)


@dataclass
class DreamBenchConfig:
    """The DreamBench protocol (apps/dreambench.py). Sampling and fine-tuning settings come from `apprentice.*`
    and `expert.*`, so one sweep over, say, `apprentice.guidance_scale` moves training-time and benchmark sampling
    alike."""

    # The `dataset/` folder of a google/dreambooth clone (subject folders and prompts_and_classes.txt): required.
    # Relative paths resolve against the working directory.
    data: str | None = None
    # Metric encoders, local only: a folder holding a transformers ViTModel (facebook/dino-vits16 saved with
    # save_pretrained), and an open_clip model name with a local weights file, or "local-dir:<folder>" holding
    # open_clip_config.json and the weights (the layout of open_clip's hub repositories).
    dino: str | None = None  # required
    clip_model: str = "ViT-B-32"
    clip_pretrained: str | None = None  # required unless clip_model is local-dir:
    methods: list[str] = field(default_factory=lambda: ["apprentice", "expert"])
    images_per_prompt: int = 4
    max_demos: int = 4  # subject images shown to the apprentice and fine-tuned on by the expert
    # The expert's rare token, as in DreamBooth ("a sks dog"); "" gives SuTI-style experts that see the class only.
    identifier: str = "sks"
    max_subjects: int | None = None  # None: every subject; a number for quick runs
    max_prompts: int | None = None  # None: all 25 prompts of each list
    seed: int = 0
    # Generation actors (one per accelerator slot) and the scoring task.
    num_actors: int = 2
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    resources: dict[str, float] = field(default_factory=dict)
    threads: int = 1
    score_batch_size: int = 64
    grid_cell: int = 96  # pixels per image in the grids


@dataclass
class ClusterConfig:
    # None starts a local cluster; "auto" (or ray://host:10001) joins a running one, e.g. after `ray up`.
    address: str | None = None
    num_cpus: int = 4  # logical CPUs of a local cluster; Ray Data needs room beside Train workers
    object_store_memory_mb: int = 512
    # A local cluster binds every port (Ray's gRPC servers, its /metrics exporters, agents, Serve) to 127.0.0.1, as
    # Ray does on macOS and Windows; false keeps Ray's Linux default of all interfaces, for machines that join it.
    loopback_only: bool = True


@dataclass
class PathsConfig:
    # Every stage path is a URI read through pyarrow.fs: a local path here, s3://... or gs://... on a cluster.
    root: str = "outputs/${experiment_name}"
    # Outputs that depend on a run's settings. A single run writes them under `root`; in a Hydra multirun each job
    # gets `root/runs/<its overrides>` (apps/config.py), while the shared inputs (corpus, D_S, G, base) stay put.
    run: str = "${paths.root}"
    corpus: str = "${paths.root}/corpus"
    ds: str = "${paths.root}/ds"
    g: str = "${paths.root}/g"
    scorer: str = "${paths.root}/scorer"
    base: str = "${paths.root}/base"
    demo_encoder: str = "${paths.root}/demo_encoder"  # apps.demo_encoder's warm start for the apprentice
    apprentice: str = "${paths.run}/apprentice"
    train_storage: str = "${paths.root}/ray_train"  # Ray Train runs are named by their inputs: shared is safe
    eval: str = "${paths.run}/eval"
    dreambench: str = "${paths.run}/dreambench"
    # Trained attribute readers for exact fidelity, shipped in the repo for world version 2 (apps.readers makes
    # them); a relative path is taken from the project's root, not the working directory.
    readers: str = "artifacts/toy-v2/readers"


@dataclass
class PipelineConfig:
    experiment_name: str = "default"
    stages: list[str] = field(
        default_factory=lambda: ["world", "scorer", "pretrain", "mine", "experts", "train", "evaluate", "serve"]
    )
    model: ModelConfig = field(default_factory=ModelConfig)
    world: WorldConfig = field(default_factory=WorldConfig)
    scorer: ScorerConfig = field(default_factory=ScorerConfig)
    readers: ReadersConfig = field(default_factory=ReadersConfig)
    demo_encoder: DemoEncoderConfig = field(default_factory=DemoEncoderConfig)
    study: StudyConfig = field(default_factory=StudyConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    mine: MineConfig = field(default_factory=MineConfig)
    expert: ExpertConfig = field(default_factory=ExpertConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)
    g_layout: GLayoutConfig = field(default_factory=GLayoutConfig)
    apprentice: ApprenticeConfig = field(default_factory=ApprenticeConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    dreambench: DreamBenchConfig = field(default_factory=DreamBenchConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def config_hash(cfg: Any) -> str:
    """A short stable hash of a config dataclass (or dict), for provenance columns."""
    data = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else cfg
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]
