"""Tiny random stand-ins for the real backbones, saved as real diffusers pipeline folders.

Tests never download weights (and need to run where none can be downloaded), so the Stable Diffusion and
DeepFloyd IF code paths are exercised with components of the very same classes (UNet2DConditionModel,
AutoencoderKL, CLIPTextModel, T5EncoderModel, their tokenizers and schedulers) at toy sizes, random weights,
written with `save_pretrained` exactly as the real checkpoints are laid out. `core.models.backbone.load_backbone` then
reads them like a downloaded model. The unet configurations follow the dummy components of diffusers' own pipeline
tests (tests/pipelines/deepfloyd_if/__init__.py and the Stable Diffusion ones).
"""

from __future__ import annotations

import re

import torch

from core.toy import world as toyworld


def _toy_words() -> list[str]:
    """Every word the toy world's captions and prompts use (the tiny T5 vocabulary)."""
    words = {"a", "an", "the", "on", "in", "of", "with", "wearing", "style", "photo"}
    for name in (*toyworld.CLASSES, *toyworld.PALETTE, *toyworld.PATTERNS, *toyworld.BACKGROUNDS, *toyworld.STYLES):
        words.update(re.findall(r"[a-z]+", str(name).lower()))
    for phrase in toyworld.ACCESSORY_PHRASES.values():
        words.update(re.findall(r"[a-z]+", phrase))
    return sorted(words)


def tiny_t5_tokenizer(max_length: int = 24):
    """A `T5Tokenizer` (transformers' tokenizers-backed class, as IF's) over a unigram vocabulary of the toy
    world's words plus single characters, so no text maps to <unk>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.processors import TemplateProcessing
    from transformers import T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [("\u2581" + w, -1.0) for w in _toy_words()]
    pieces += [(c, -8.0) for c in "\u2581abcdefghijklmnopqrstuvwxyz0123456789,.'-"]
    tok = Tokenizer(models.Unigram(pieces, unk_id=2))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.post_processor = TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return T5TokenizerFast(
        tokenizer_object=tok,
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        extra_ids=0,
        model_max_length=max_length,
    )


def save_tiny_stable_diffusion(folder: str, resolution: int = 32, seed: int = 0) -> None:
    """A Stable Diffusion 1.x-layout pipeline folder: 4-channel latents at resolution / 2 (a 2-level VAE; the real
    one has 4 levels, factor 8), CLIP text encoder, PNDM scheduler config as SD ships it."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from core.models.tokenizer import create_tokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=resolution // 2,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(32, 64),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=resolution,
    )
    tokenizer = create_tokenizer(24)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=24,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    scheduler = PNDMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True, steps_offset=1
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)


def save_tiny_deepfloyd_if(folder: str, resolution: int = 32, seed: int = 0) -> None:
    """A DeepFloyd IF stage I-layout pipeline folder: pixel UNet with learned variance (6 output channels), text
    projection and attention pooling of T5 states, T5 encoder, DDPM scheduler with learned_range variance and
    thresholding (the real one draws 64x64)."""
    from diffusers import DDPMScheduler, IFPipeline, UNet2DConditionModel
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    tokenizer = tiny_t5_tokenizer()
    text_encoder = T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer),
            d_model=32,
            d_kv=8,
            d_ff=37,
            num_layers=2,
            num_heads=4,
            pad_token_id=0,
            eos_token_id=1,
        )
    )
    unet = UNet2DConditionModel(
        sample_size=resolution,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        in_channels=3,
        out_channels=6,
        cross_attention_dim=32,
        encoder_hid_dim=32,
        attention_head_dim=8,
        addition_embed_type="text",
        addition_embed_type_num_heads=2,
        cross_attention_norm="group_norm",
        resnet_time_scale_shift="scale_shift",
        act_fn="gelu",
    )
    scheduler = DDPMScheduler(
        num_train_timesteps=1000,
        beta_schedule="squaredcos_cap_v2",
        thresholding=True,
        dynamic_thresholding_ratio=0.95,
        sample_max_value=1.0,
        prediction_type="epsilon",
        variance_type="learned_range",
    )
    pipe = IFPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        watermarker=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)
