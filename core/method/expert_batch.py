"""Many per-subject experts at once: N fine-tunes of the base as one vmapped model (torch.func).

Why: the toy models are far too small to fill a GPU one subject at a time; one `Expert` per process is bound by
kernel launches, not arithmetic. Here the weights of N experts are stacked along a new first dimension and one
`torch.func.vmap` call runs all N forward and backward passes, so a step of N experts costs about the kernel
launches of one. On a CPU there is nothing to gain (`python -m benchmarks.expert_batch_speed`).

The maths is `Expert`'s, subject by subject: each subject draws its batches, noise and timesteps from its own
generator in the same order `Expert.fine_tune` does, its loss is its own (the sum of independent losses has
independent gradients) and AdamW acts element by element, so N stacked AdamW states are N separate ones.
`tests/unit/test_expert_batch.py` checks the weights and DDIM renders against `Expert`'s. Scope: full fine-tuning
(not LoRA) with AdamW (Adafactor factors each matrix's second moment, which stacking would change).

    batch = ExpertBatch(backbone, scorer, cfg, provenance)
    for rows, stats in batch.run_subjects(records):   # G rows, as Expert.run_subject gives them
        ...
"""

from __future__ import annotations

import copy
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call, vmap
from transformers import T5EncoderModel

from core.config import ExpertConfig
from core.data.images import from_png
from core.method.expert import g_rows, seed_for
from core.models import backbone as bb
from core.models import sampling
from core.models.device import autocast, step_done
from core.models.scorer import Scorer
from core.models.tokenizer import tokenize


def _functional_copy(module: torch.nn.Module) -> torch.nn.Module:
    """A weightless copy (meta tensors) to call with stacked weights; attention by plain matmuls, which vmap
    batches (its fallback for fused attention kernels loops over the stacked dimension)."""
    twin = copy.deepcopy(module).to("meta")
    if hasattr(twin, "set_default_attn_processor"):
        twin.set_default_attn_processor()
    elif hasattr(twin, "set_attn_implementation"):
        twin.set_attn_implementation("eager")
    return twin


class ExpertBatch:
    """Fine-tunes and samples up to any number of subjects together (`run_subjects`); the base stays untouched."""

    def __init__(self, backbone: bb.Backbone, scorer: Scorer | None, cfg: ExpertConfig, provenance: dict[str, str]):
        if cfg.lora_rank > 0 or cfg.optimizer != "adamw":
            raise ValueError("ExpertBatch runs full fine-tuning with AdamW; use Expert for LoRA or Adafactor")
        self.backbone, self.scorer, self.cfg, self.provenance = backbone, scorer, cfg, provenance
        self._unet = _functional_copy(backbone.unet)
        self._text = _functional_copy(backbone.text_encoder)
        self._t5 = isinstance(backbone.text_encoder, T5EncoderModel)
        self._base = {
            "unet": {k: v.detach() for k, v in backbone.unet.named_parameters()},
            "text": {k: v.detach() for k, v in backbone.text_encoder.named_parameters()},
        }
        self._buffers = {
            "unet": dict(backbone.unet.named_buffers()),
            "text": dict(backbone.text_encoder.named_buffers()),
        }
        self.params: dict[str, dict[str, torch.Tensor]] = {}

    # ------------------------------------------------------------ stacked calls

    def _stack(self, n: int) -> None:
        """N fresh copies of the base weights (the text encoder's only when it is tuned; else it is shared)."""
        tune_text = self.cfg.train_text_encoder
        self.params = {
            part: {
                k: v.unsqueeze(0).repeat(n, *[1] * v.dim()).requires_grad_(True) for k, v in self._base[part].items()
            }
            for part in (("unet", "text") if tune_text else ("unet",))
        }

    def _encode(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (N, B, L) -> hidden states (N, B, L, D), each expert through its own (or the shared) text encoder."""
        if "text" not in self.params:
            n, b, length = ids.shape
            with torch.no_grad():
                return bb.encode_text(self.backbone, ids.reshape(n * b, length)).reshape(n, b, length, -1)

        def one(params, ids):
            # T5 (IF) reads with the padding masked out, as bb.encode_text does.
            kwargs = {"attention_mask": (ids != self.backbone.tokenizer.pad_token_id).long()} if self._t5 else {}
            return functional_call(self._text, (params, self._buffers["text"]), (ids,), kwargs).last_hidden_state

        return vmap(one)(self.params["text"], ids)

    def _predict(self, x: torch.Tensor, t: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        """x (N, B, C, H, W), t (N, B) or a scalar, states (N, B, L, D) -> the UNets' outputs (N, B, C', H, W)."""

        def one(params, x, t, states):
            return functional_call(
                self._unet,
                (params, self._buffers["unet"]),
                (x, t),
                {"encoder_hidden_states": states, "return_dict": False},
            )[0]

        return vmap(one, in_dims=(0, 0, 0 if t.dim() else None, 0))(self.params["unet"], x, t, states)

    def _mode(self, training: bool) -> None:
        self._unet.train(training)
        self._text.train(training and "text" in self.params)

    # ------------------------------------------------------------ fine-tune

    def fine_tune(self, jobs: list[tuple[list[np.ndarray], list[str], int]], on_step=None) -> list[list[float]]:
        """Fine-tune one expert per (demo images, demo captions, seed) on its demos, as `Expert.fine_tune` does.
        `on_step(step)` (1-based) runs after every step in eval mode (e.g. `sample` at checkpoints). Returns each
        expert's losses."""
        cfg, backbone, device = self.cfg, self.backbone, self.backbone.device
        n = len(jobs)
        self._stack(n)
        opt = torch.optim.AdamW(
            [p for part in self.params.values() for p in part.values()], lr=cfg.lr, weight_decay=0.0
        )
        # Demos in model space, padded to the most any subject has: (N, D, C, H, W), unflipped and flipped.
        counts = [len(images) for images, _, _ in jobs]
        most = max(counts)
        pixels = torch.stack(
            [
                bb.images_to_tensor(bb.fit_images(images + images[:1] * (most - len(images)), backbone.resolution))
                for images, _, _ in jobs
            ]
        ).to(device)
        flat = pixels.flatten(0, 1)
        plain = bb.to_model_space(backbone, flat).unflatten(0, (n, most))
        flipped = bb.to_model_space(backbone, flat.flip(-1)).unflatten(0, (n, most))
        ids = torch.stack(
            [tokenize(backbone.tokenizer, captions + captions[:1] * (most - len(captions))) for _, captions, _ in jobs]
        ).to(device)
        generators = [torch.Generator().manual_seed(seed) for _, _, seed in jobs]
        channels, rows = plain.shape[2], torch.arange(n, device=device)[:, None]
        scheduler = backbone.noise_scheduler
        losses = []
        self._mode(True)
        for step in range(cfg.steps):
            # Each subject's draws, from its own generator, in Expert.fine_tune's order: demos, flips, noise, times.
            idx, flip, noise, t = [], [], [], []
            for g, count in zip(generators, counts):
                idx.append(torch.randint(0, count, (cfg.batch_size,), generator=g))
                flip.append(torch.rand(cfg.batch_size, generator=g) < 0.5)
                noise.append(torch.randn((cfg.batch_size, *plain.shape[2:]), generator=g))
                t.append(torch.randint(0, scheduler.config.num_train_timesteps, (cfg.batch_size,), generator=g))
            idx, flip, noise, t = (torch.stack(v).to(device) for v in (idx, flip, noise, t))
            x0 = torch.where(flip[..., None, None, None], flipped[rows, idx], plain[rows, idx])
            with autocast(device):
                with torch.set_grad_enabled("text" in self.params):
                    states = self._encode(ids[rows, idx])
                noisy = scheduler.add_noise(x0.flatten(0, 1), noise.flatten(0, 1), t.flatten()).unflatten(
                    0, (n, cfg.batch_size)
                )
                pred = self._predict(noisy, t, states)
                target = sampling.denoising_target(
                    scheduler, x0.flatten(0, 1), noise.flatten(0, 1), t.flatten()
                ).unflatten(0, (n, cfg.batch_size))
                # Each subject's mean squared error (the noise half of a learned-variance UNet), summed: independent
                # gradients.
                per = F.mse_loss(pred[:, :, :channels].float(), target.float(), reduction="none").flatten(1).mean(1)
            opt.zero_grad(set_to_none=True)
            per.sum().backward()
            opt.step()
            step_done(device)
            losses.append(per.detach())
            if on_step is not None:
                self._mode(False)
                on_step(step + 1)
                self._mode(True)
        self._mode(False)
        return torch.stack(losses, 1).tolist() if losses else [[] for _ in jobs]

    # ------------------------------------------------------------ sample

    @torch.no_grad()
    def sample(self, prompts: list[list[str]], seeds: list[int]) -> list[np.ndarray]:
        """Each expert draws its own prompts (classifier-free guidance, `cfg.sampler`). Returns uint8 (B_i, H, W, 3)
        per expert. With DDIM each expert's images are those `sampling.sample` draws at its seed; DDPM draws its step
        noise from the first seed's generator for the whole batch."""
        cfg, backbone, device = self.cfg, self.backbone, self.backbone.device
        n, most = len(prompts), max(len(p) for p in prompts)
        padded = [p + p[:1] * (most - len(p)) for p in prompts]
        ids = torch.stack(
            [torch.cat([tokenize(backbone.tokenizer, [""] * most), tokenize(backbone.tokenizer, p)]) for p in padded]
        ).to(device)
        scheduler = sampling.create_sampler(cfg.sampler, backbone.noise_scheduler)
        scheduler.set_timesteps(cfg.num_inference_steps)
        shape = bb.model_shape(backbone, most)
        x = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds]).to(device)
        generator = torch.Generator().manual_seed(seeds[0])
        with autocast(device):
            states = self._encode(ids)
            for t in scheduler.timesteps:
                out = self._predict(torch.cat([x, x], dim=1), t.to(device), states)
                eps_u, eps_c = out[:, :, : shape[1]].chunk(2, dim=1)
                eps = eps_u + cfg.guidance_scale * (eps_c - eps_u)
                if out.shape[2] > shape[1] and sampling.learned_variance(scheduler):
                    eps = torch.cat([eps, out[:, most:, shape[1] :]], dim=2)
                x = scheduler.step(eps.flatten(0, 1), t, x.flatten(0, 1), generator=generator).prev_sample.unflatten(
                    0, (n, most)
                )
                step_done(device)
        images = bb.tensor_to_images(bb.from_model_space(backbone, x.flatten(0, 1).float()))
        return [images[i * most : i * most + len(p)] for i, p in enumerate(prompts)]

    # ------------------------------------------------------------ G rows

    def run_subjects(self, records: list[dict]) -> list[tuple[list[dict], dict]]:
        """`Expert.run_subject` for every record at once: (G rows, stats) per record, in order."""
        cfg = self.cfg
        start = time.perf_counter()
        demos = [[from_png(b) for b in r["demo_images"]] for r in records]
        seeds = [seed_for(cfg.seed, r["subject_id"]) for r in records]
        losses = self.fine_tune([(d, r["demo_captions"], s) for d, r, s in zip(demos, records, seeds)])
        tuned = time.perf_counter()
        prompts = [[p for p in r["prompts"] for _ in range(cfg.samples_per_prompt)] for r in records]
        renders = self.sample(prompts, seeds)
        sampled = time.perf_counter()
        out = []
        for record, images, d, loss in zip(records, renders, demos, losses):
            rows = g_rows(self.scorer, cfg, self.provenance, record, images, d)
            # Shared time, split evenly: what one subject cost in this batch.
            stats = {
                "subject_id": record["subject_id"],
                "first_loss": loss[0] if loss else float("nan"),
                "last_loss": float(np.mean(loss[-10:])) if loss else float("nan"),
                "fine_tune_s": (tuned - start) / len(records),
                "sample_s": (sampled - tuned) / len(records),
            }
            out.append((rows, stats))
        return out
