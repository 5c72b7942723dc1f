"""Toy tokenizers, made with nothing downloaded: a transformers `CLIPTokenizer` built from the BPE vocabulary that
open_clip ships, or a word-level one for the toy world's own vocabulary; and tokenizing for any backbone's tokenizer.
"""

from __future__ import annotations

import functools
import gzip
import os

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import CLIPTokenizer, PreTrainedTokenizerFast

# Every word of the toy world's captions and prompts (core/toy/world.py; tests/unit/test_toyworld.py checks that none
# is missing). A word-level text encoder over these has 51 embedding rows where CLIP's BPE has 49,408.
TOY_WORDS = tuple(
    word
    for kind in (
        "a with on wearing style , of photo",
        "ball box cone kite cross egg tower bowl",
        "red green blue yellow purple orange white black",
        "stripes bars dots checks",
        "grass sand sky stone night wood snow brick",
        "hat flag balloon pedestal",
        "grayscale blocky negative upright upside - down",
    )
    for word in kind.split()
)


@functools.lru_cache(maxsize=1)
def _clip_bpe() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's BPE vocabulary and merges, read from the copy that open_clip ships (no download)."""
    import open_clip

    bpe_path = os.path.join(os.path.dirname(open_clip.__file__), "bpe_simple_vocab_16e6.txt.gz")
    with gzip.open(bpe_path) as f:
        lines = f.read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    merges = [tuple(line.split()) for line in lines]
    byte_chars = list(_bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(vocab)}, merges


def _bytes_to_unicode() -> dict[int, str]:
    # The byte-to-character table of GPT-2/CLIP BPE (as in open_clip.tokenizer.bytes_to_unicode).
    bs = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def create_tokenizer(max_length: int) -> CLIPTokenizer:
    vocab, merges = _clip_bpe()
    return CLIPTokenizer(
        vocab=dict(vocab),
        merges=list(merges),
        model_max_length=max_length,
        pad_token="<|endoftext|>",
    )


def create_word_tokenizer(max_length: int, words: tuple[str, ...] = TOY_WORDS) -> PreTrainedTokenizerFast:
    """A word-level tokenizer (lower-cased, split on spaces and punctuation; unknown words become <unk>), wrapped as
    a transformers fast tokenizer so it saves and loads with the backbone like any other."""
    special = ["<pad>", "<unk>", "<bos>", "<eos>"]
    vocab = {w: i for i, w in enumerate([*special, *dict.fromkeys(words)])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", vocab["<bos>"]), ("<eos>", vocab["<eos>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=max_length,
    )


def tokenize(tokenizer, prompts: list[str]) -> torch.Tensor:
    """(B,) strings -> input ids (B, L). A tokenizer without a real length limit (T5's) pads to 77, as IF does."""
    length = tokenizer.model_max_length if tokenizer.model_max_length <= 1024 else 77
    return tokenizer(prompts, padding="max_length", truncation=True, max_length=length, return_tensors="pt").input_ids
