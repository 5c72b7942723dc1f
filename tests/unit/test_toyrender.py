"""The batch renderer draws what `toyworld.render` draws, pixel for pixel, given the same background noise."""

import numpy as np
import torch

from core.toy import render as tr
from core.toy import world as tw
from core.toy.pretrain import CaptionStream, toy_scenes


def _scenes(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    subjects, scenes = [], []
    everything = tw.all_subjects()
    for _ in range(n):
        subjects.append(everything[int(rng.integers(len(everything)))])
        scenes.append(
            tw.random_scene(
                rng,
                32,
                version=int(rng.choice(tw.VERSIONS)),
                style=rng.choice([None, *tw.STYLES]),
                accessory=rng.choice([None, *tw.ACCESSORIES]),
                body=rng.choice([None] * 4 + list(tw.PALETTE)),
            )
        )
    return subjects, scenes


def test_render_batch_matches_render_pixel_for_pixel():
    subjects, scenes = _scenes(600)
    # Every class, pattern, accessory, style, view and world version occurs, so every branch of both renderers is
    # compared.
    assert {sc.cell for sc in scenes} == {1, 2} and {sc.textured for sc in scenes} == {True, False}
    assert {s.class_name for s in subjects} == set(tw.CLASSES) and {s.pattern for s in subjects} == set(tw.PATTERNS)
    assert {sc.accessory for sc in scenes} == {None, *tw.ACCESSORIES} and {sc.style for sc in scenes} == {
        None,
        *tw.STYLES,
    }
    assert {sc.view for sc in scenes} == set(tw.VIEWS) and {sc.background for sc in scenes} == set(tw.BACKGROUNDS)
    reference = np.stack(
        [tw.render(s, sc, 32, np.random.default_rng(i)) for i, (s, sc) in enumerate(zip(subjects, scenes))]
    )
    # tw.render's only random draw is its background noise, N(0, 3) per pixel: the same draws, handed over.
    noise = torch.from_numpy(
        np.stack([np.random.default_rng(i).normal(0, 3, size=(32, 32, 3)) for i in range(len(scenes))])
    )
    drawn = tr.render_batch(tr.pack_scenes(subjects, scenes), noise=noise)
    assert drawn.shape == (600, 3, 32, 32) and drawn.dtype == torch.float32
    np.testing.assert_array_equal(drawn.permute(0, 2, 3, 1).numpy().astype(np.uint8), reference)


def test_render_batch_noise_comes_from_the_generator():
    subjects, scenes = _scenes(8, seed=1)
    arrays = tr.pack_scenes(subjects, scenes)
    a = tr.render_batch(arrays, generator=torch.Generator().manual_seed(3))
    b = tr.render_batch(arrays, generator=torch.Generator().manual_seed(3))
    c = tr.render_batch(arrays, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    # Noise only moves the background a few levels: without it the images differ by little.
    quiet = tr.render_batch(arrays, noise=torch.zeros(8, 32, 32, 3))
    assert 0 < (a - quiet).abs().mean() < 5


def test_pack_scenes_takes_the_property_edit():
    subject = tw.Subject("ball", "red", "dots", "blue")
    scene = tw.Scene("grass", 16, 16, 9, body="green")
    arrays = tr.pack_scenes([subject, subject], [scene, tw.Scene("grass", 16, 16, 9)])
    assert list(arrays["body"]) == [list(tw.PALETTE).index("green"), list(tw.PALETTE).index("red")]
    assert list(arrays["accessory"]) == [-1, -1] and list(arrays["style"]) == [-1, -1]


def test_caption_stream_yields_scenes_and_ids_for_the_device_to_draw():
    from core.models.tokenizer import create_tokenizer, tokenize

    tokenizer = create_tokenizer(24)
    subjects = tw.all_subjects()[:50]
    stream = iter(CaptionStream(subjects, 6, seed=5, size=32, tokenizer=tokenizer))
    arrays, ids = next(stream)
    # The same seed picks the same scenes and captions as toy_scenes does for worker 0.
    picked, scenes, captions = toy_scenes(subjects, 6, np.random.default_rng([5, 0]), 32)
    expected = tr.pack_scenes(picked, scenes)
    assert set(arrays) == set(tr.FIELDS) and all(np.array_equal(arrays[k], expected[k]) for k in tr.FIELDS)
    assert torch.equal(ids, tokenize(tokenizer, captions))
    assert tr.render_batch(arrays).shape == (6, 3, 32, 32)
