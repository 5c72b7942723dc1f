"""The expert: the base model fine-tuned on one subject cluster C_s, rendering y_s for its unseen prompts p_s,
each render scored by delta-CLIP (the paper's filter: keep when delta > lambda).

One `Expert` keeps the base weights in memory and restores them before every subject, so a long-lived worker
(a Ray actor on an accelerator slot) never re-reads them from disk.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import time

import numpy as np
import torch

from core.config import ExpertConfig
from core.data.images import from_png, to_png
from core.models import backbone as bb
from core.models import sampling
from core.models.device import autocast, step_done, wait
from core.models.scorer import Scorer
from core.models.tokenizer import tokenize
from core.toy import world as toyworld


def _optimizer(params, cfg: ExpertConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    if cfg.optimizer == "adafactor":
        return torch.optim.Adafactor(params, lr=cfg.lr)
    raise ValueError(f"unknown expert optimizer {cfg.optimizer!r}; known: adamw, adafactor")


def seed_for(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:4], "big")


def delta_clip(
    scorer: Scorer, renders: list[np.ndarray], prompts: list[str], demo_images: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(clip_score, ref_clip_score, delta) per render: CLIP(y, p) - max over x in C_s of CLIP(x, p)."""
    text = scorer.encode_texts(prompts)  # (N, E)
    clip = (scorer.encode_images(renders) * text).sum(-1).numpy()
    ref = (text @ scorer.encode_images(demo_images).T).max(dim=1).values.numpy()  # (N,)
    return clip, ref, clip - ref


def g_rows(
    scorer: Scorer,
    cfg: ExpertConfig,
    provenance: dict,
    record: dict,
    renders: np.ndarray,
    demo_images: list[np.ndarray],
) -> list[dict]:
    """G rows of one subject: each render (`cfg.samples_per_prompt` per prompt, in prompt order) with its
    delta-CLIP scores (the threshold is applied when G is read: `core.data.g`)."""
    prompts = [p for p in record["prompts"] for _ in range(cfg.samples_per_prompt)]
    clip, ref, delta = delta_clip(scorer, list(renders), prompts, demo_images)
    rows = []
    for i, (pid, prompt, skill) in enumerate(zip(record["prompt_ids"], record["prompts"], record["prompt_skills"])):
        for j in range(cfg.samples_per_prompt):
            k = i * cfg.samples_per_prompt + j
            rows.append(
                {
                    "subject_id": record["subject_id"],
                    "prompt_id": pid,
                    "sample_index": j,
                    "prompt": prompt,
                    "prompt_skill": skill,
                    "image": to_png(renders[k]),
                    "demo_images": list(record["demo_images"]),
                    "demo_captions": list(record["demo_captions"]),
                    "clip_score": float(clip[k]),
                    "ref_clip_score": float(ref[k]),
                    "delta": float(delta[k]),
                    **provenance,
                }
            )
    return rows


def oracle_renders(record: dict, cfg: ExpertConfig, size: int, version: int) -> np.ndarray:
    """kind "oracle": for each prompt, `cfg.samples_per_prompt` true renders of the subject in a scene with what
    the prompt asks (its `prompt_truths`) and the rest drawn from world `version`, seeded by subject and prompt."""
    subject = toyworld.truth_subject(record)
    out = []
    for pid, truth in zip(record["prompt_ids"], record["prompt_truths"], strict=True):
        rng = np.random.default_rng(seed_for(cfg.seed, record["subject_id"], pid))
        for _ in range(cfg.samples_per_prompt):
            scene = toyworld.random_scene(rng, size, version, **json.loads(truth))
            out.append(toyworld.render(subject, scene, size, rng))
    return np.stack(out)


class Expert:
    def __init__(
        self,
        backbone: bb.Backbone,
        scorer: Scorer,
        cfg: ExpertConfig,
        provenance: dict[str, str],
        world_version: int = 1,
    ):
        if cfg.kind not in ("finetune", "oracle", "raw"):
            raise ValueError(f"unknown expert.kind {cfg.kind!r}; one of finetune, oracle, raw")
        if any(n < 1 or n > cfg.steps for n in cfg.checkpoints):
            raise ValueError(f"expert.checkpoints {cfg.checkpoints} must lie in 1..expert.steps ({cfg.steps})")
        self.backbone = backbone
        self.scorer = scorer
        self.cfg = cfg
        self.provenance = provenance  # base_checkpoint_hash, expert_config_hash, scorer_hash
        self.world_version = world_version  # the toy world whose scenes kind "oracle" draws
        self._base_state = [copy.deepcopy(m.state_dict()) for m in backbone.modules()]

    def reset(self) -> None:
        """Restore the base weights from memory (dropping a LoRA adapter first, if the last subject had one)."""
        unet = self.backbone.unet
        if getattr(unet, "_hf_peft_config_loaded", False):
            unet.unload_lora()  # back to plain layers (diffusers' PeftAdapterMixin)
        for module, state in zip(self.backbone.modules(), self._base_state):
            module.load_state_dict(state)
            module.requires_grad_(True)

    def _trainable(self) -> list[torch.nn.Parameter]:
        """Full fine-tuning: the UNet (and the text encoder, `train_text_encoder`). LoRA (`lora_rank` > 0): a fresh
        peft adapter on the UNet's attention projections, everything else frozen (as diffusers' LoRA scripts do)."""
        cfg, unet, text_encoder = self.cfg, self.backbone.unet, self.backbone.text_encoder
        if cfg.lora_rank <= 0:
            return list(unet.parameters()) + (list(text_encoder.parameters()) if cfg.train_text_encoder else [])
        from peft import LoraConfig

        unet.requires_grad_(False)
        text_encoder.requires_grad_(False)
        lora = LoraConfig(
            r=cfg.lora_rank,
            lora_alpha=cfg.lora_alpha or cfg.lora_rank,
            init_lora_weights="gaussian",
            target_modules=["to_q", "to_k", "to_v", "to_out.0"],
        )
        unet.add_adapter(lora, adapter_name="expert")
        return [p for p in unet.parameters() if p.requires_grad]

    def fine_tune(
        self, demo_images: list[np.ndarray], demo_captions: list[str], seed: int, on_step=None
    ) -> list[float]:
        """Fine-tune on C_s with the plain denoising loss (no identifier token, no prior preservation).
        `on_step(step)` (1-based), if given, runs after every step with the model in eval mode (e.g. to sample
        at checkpoints), then training goes on."""
        cfg = self.cfg
        self.reset()
        unet, text_encoder = self.backbone.unet, self.backbone.text_encoder
        params = self._trainable()
        tune_text = cfg.train_text_encoder and cfg.lora_rank <= 0
        unet.train()
        text_encoder.train(tune_text)
        opt = _optimizer(params, cfg)
        device = self.backbone.device
        # The demos in the model's space (pixels, or VAE latents for a latent model), unflipped and flipped: a
        # latent model encodes each demo twice, once per subject, not once per step.
        pixels = bb.images_to_tensor(bb.fit_images(demo_images, self.backbone.resolution)).to(device)
        plain, flipped = bb.to_model_space(self.backbone, pixels), bb.to_model_space(self.backbone, pixels.flip(-1))
        ids = tokenize(self.backbone.tokenizer, demo_captions).to(device)
        generator = torch.Generator().manual_seed(seed)
        losses = []
        for _ in range(cfg.steps):
            idx = torch.randint(0, len(demo_images), (cfg.batch_size,), generator=generator)
            flip = torch.rand(cfg.batch_size, generator=generator) < 0.5
            x0 = torch.where(flip.view(-1, 1, 1, 1).to(device), flipped[idx.to(device)], plain[idx.to(device)])
            with autocast(device):
                with torch.set_grad_enabled(tune_text):
                    states = bb.encode_text(self.backbone, ids[idx])
                loss = sampling.denoising_loss(unet, self.backbone.noise_scheduler, x0, states, generator)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step_done(device)
            # Kept on the device until the end: reading each loss back would wait for every step on a GPU.
            losses.append(loss.detach())
            if on_step is not None:
                unet.eval()
                text_encoder.eval()
                on_step(len(losses))
                unet.train()
                text_encoder.train(tune_text)
        unet.eval()
        text_encoder.eval()
        return torch.stack(losses).float().tolist() if losses else []

    def run_subject(self, record: dict, should_stop=None) -> tuple[list[dict], dict]:
        """Fine-tune on one D_S record, render every (prompt, sample), score them. Returns (G rows, stats).
        Kind "oracle" renders the truth instead and "raw" takes each demo as a target (`ExpertConfig.kind`).
        With `cfg.checkpoints`, stats["checkpoints"][n] holds the rows rendered after n fine-tune steps, the
        fine-tuning seconds to get there (renders at earlier checkpoints not counted) and the rendering seconds."""
        cfg = self.cfg
        start = time.perf_counter()
        if cfg.kind != "finetune":
            rows = self.raw_rows(record) if cfg.kind == "raw" else self.oracle_rows(record)
            elapsed = time.perf_counter() - start
            nan = float("nan")
            return rows, {"subject_id": record["subject_id"], "first_loss": nan, "last_loss": nan,
                          "fine_tune_s": 0.0, "sample_s": elapsed}  # fmt: skip
        demo_images = [from_png(b) for b in record["demo_images"]]
        seed = seed_for(cfg.seed, record["subject_id"])
        checkpoints: dict[int, dict] = {}
        rendering = [0.0]  # seconds spent rendering at checkpoints, kept out of the fine-tuning time

        def at_checkpoint(step: int) -> None:
            if step in cfg.checkpoints and step != cfg.steps:
                wait(self.backbone.device)
                t = time.perf_counter()
                rows = self._render_rows(record, demo_images, seed)
                wait(self.backbone.device)
                sample_s = time.perf_counter() - t
                fine_tune_s = t - start - rendering[0]
                rendering[0] += sample_s
                checkpoints[step] = {"rows": rows, "fine_tune_s": fine_tune_s, "sample_s": sample_s}

        on_step = at_checkpoint if cfg.checkpoints else None
        losses = self.fine_tune(demo_images, record["demo_captions"], seed, on_step=on_step)
        wait(self.backbone.device)
        tuned = time.perf_counter()
        rows = self._render_rows(record, demo_images, seed)
        stats = {
            "subject_id": record["subject_id"],
            "first_loss": losses[0] if losses else float("nan"),
            "last_loss": float(np.mean(losses[-10:])) if losses else float("nan"),
            "fine_tune_s": tuned - start - rendering[0],
            "sample_s": time.perf_counter() - tuned,
        }
        if cfg.checkpoints:
            final = {"rows": rows, "fine_tune_s": stats["fine_tune_s"], "sample_s": stats["sample_s"]}
            stats["checkpoints"] = {**checkpoints, **({cfg.steps: final} if cfg.steps in cfg.checkpoints else {})}
        return rows, stats

    def _render_rows(self, record: dict, demo_images: list[np.ndarray], seed: int) -> list[dict]:
        """The current model's renders of the record's prompts (the same seed at every checkpoint), scored."""
        cfg = self.cfg
        prompts = [p for p in record["prompts"] for _ in range(cfg.samples_per_prompt)]
        with autocast(self.backbone.device):
            renders = sampling.sample(
                self.backbone,
                prompts,
                sampler=cfg.sampler,
                num_inference_steps=cfg.num_inference_steps,
                guidance_scale=cfg.guidance_scale,
                seed=seed,
            )
        return g_rows(self.scorer, cfg, self.provenance, record, renders, demo_images)

    def oracle_rows(self, record: dict) -> list[dict]:
        renders = oracle_renders(record, self.cfg, self.backbone.resolution, self.world_version)
        demos = [from_png(b) for b in record["demo_images"]]
        return g_rows(self.scorer, self.cfg, self.provenance, record, renders, demos)

    def raw_rows(self, record: dict) -> list[dict]:
        """Kind "raw": one row per demo, that demo the target of its own (class-only) caption, the other demos the
        row's demos; scored by delta-CLIP like any render."""
        images, captions = list(record["demo_images"]), list(record["demo_captions"])
        if len(images) < 2:
            raise ValueError(f"subject {record['subject_id']}: kind raw needs at least 2 demos, it has {len(images)}")
        one = dataclasses.replace(self.cfg, samples_per_prompt=1)
        rows = []
        for j, (image, caption) in enumerate(zip(images, captions, strict=True)):
            rest = [i for i in range(len(images)) if i != j]
            sub = {
                **record,
                "prompt_ids": [f"raw-{j}"],
                "prompts": [caption],
                "prompt_skills": ["raw"],
                "demo_images": [images[i] for i in rest],
                "demo_captions": [captions[i] for i in rest],
            }
            target = from_png(image)[None]
            rows += g_rows(self.scorer, one, self.provenance, sub, target, [from_png(images[i]) for i in rest])
        return rows
