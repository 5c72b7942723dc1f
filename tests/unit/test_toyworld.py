from dataclasses import replace

import numpy as np
import pytest

from core.config import WorldConfig
from core.data.images import from_png
from core.toy import world as tw


def test_world_has_many_subjects_and_a_disjoint_split():
    train, test = tw.split_subjects(0, 0.2)
    assert len(train) + len(test) == len(tw.all_subjects()) >= 1000
    assert not {s.subject_id for s in train} & {s.subject_id for s in test}
    assert 0.15 < len(test) / (len(train) + len(test)) < 0.25
    assert tw.split_subjects(0, 0.2) == (train, test)
    assert tw.split_subjects(1, 0.2)[1] != test


def test_renders_are_32px_and_deterministic_by_seed():
    s = tw.all_subjects()[5]
    a = tw.render(s, tw.random_scene(np.random.default_rng(3)), 32, np.random.default_rng(3))
    b = tw.render(s, tw.random_scene(np.random.default_rng(3)), 32, np.random.default_rng(3))
    assert a.shape == (32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)


def test_world_v1_has_the_variety_the_benchmark_needs():
    assert len(tw.CLASSES) >= 8 and len(tw.BACKGROUNDS) >= 8 and len(tw.ACCESSORIES) >= 4 and len(tw.STYLES) >= 3
    assert len(tw.all_subjects()) >= 1000
    skills = [k for k, _ in tw.TEMPLATES]
    assert set(skills) == set(tw.SKILLS) and skills.count("property") >= 4 and len(tw.TEMPLATES) >= 20


def test_every_accessory_style_and_view_changes_the_render_and_stays_in_frame():
    rng = np.random.default_rng(0)
    s = tw.Subject("cone", "red", "checks", "blue")
    plain = tw.Scene("sky", 16, 16, 9)
    base = tw.render(s, plain, 32, np.random.default_rng(1))
    for name, colour in tw.ACCESSORIES.items():
        for i in range(40):  # extreme positions and sizes: the accessory is always drawn inside the frame
            scene = tw.random_scene(rng, 32, version=tw.VERSIONS[i % 2], accessory=name)
            img = tw.render(s, scene, 32, np.random.default_rng(1)).astype(int)
            assert (np.abs(img - np.array(colour)).sum(-1) < 30).sum() >= 4, (name, scene)
    for style in tw.STYLES:
        assert not np.array_equal(tw.render(s, replace(plain, style=style), 32, np.random.default_rng(1)), base)
    flipped = tw.render(s, replace(plain, view="upside-down"), 32, np.random.default_rng(1))
    assert not np.array_equal(flipped, base)


def test_world_v2_is_the_same_world_drawn_plainer():
    rng = np.random.default_rng(0)
    scenes = [tw.random_scene(rng, 32, version=2) for _ in range(200)]
    assert all(sc.view == "upright" and not sc.textured and sc.cell == 2 and 10 <= sc.radius <= 12 for sc in scenes)
    assert {sc.background for sc in scenes} == set(tw.BACKGROUNDS)  # re-contextualization keeps every place
    s = tw.Subject("ball", "red", "stripes", "blue")
    scene = replace(scenes[0], accessory=None, style=None, body=None)
    drawn = {p: tw.render(replace(s, pattern=p), scene, 32, np.random.default_rng(1)) for p in tw.PATTERNS}
    assert len({d.tobytes() for d in drawn.values()}) == len(tw.PATTERNS)  # every pattern still tells apart
    blue = (np.abs(drawn["stripes"].astype(int) - np.array(tw.PALETTE["blue"])).sum(-1) < 30).sum()
    assert blue >= 40  # pattern-colour regions large enough to read at 32 px
    with pytest.raises(ValueError, match="world version"):
        tw.random_scene(rng, 32, version=3)


def test_fidelity_counts_only_what_the_prompt_leaves_visible():
    s = tw.Subject("ball", "red", "dots", "blue")
    read = {
        "body": "red",
        "pattern": "dots",
        "pattern_colour": "blue",
        "background": "sky",
        "accessory": "hat",
        "style": None,
    }
    assert tw.subject_fidelity(read, s) == 1.0
    assert tw.subject_fidelity({**read, "pattern": "bars"}, s) == 2 / 3
    # A property edit asks for another body colour: identity is then pattern and pattern colour, text the body.
    assert tw.subject_fidelity({**read, "body": "green"}, s, {"body": "green"}) == 1.0
    assert tw.text_fidelity({**read, "body": "green"}, {"body": "green", "background": "sky"}) == 1.0
    assert tw.subject_fidelity(read, s, {"style": "grayscale"}) == 1.0  # only the pattern is visible in grayscale
    assert tw.subject_fidelity({**read, "pattern": "bars"}, s, {"style": "grayscale"}) == 0.0
    assert tw.text_fidelity(read, {"accessory": "flag"}) == 0.0


def test_demonstrations_never_name_the_identity():
    s = tw.Subject("kite", "purple", "bars", "orange")
    demos = tw.demonstrations(s, 5, np.random.default_rng(0))
    assert len(demos) == 5
    for _, caption in demos:
        assert "kite" in caption
        assert not {"purple", "orange", "bars"} & set(caption.split())


def test_prompts_cover_every_skill():
    prompts = tw.prompts_for("cone", 8, np.random.default_rng(0))
    assert {p.skill for p, _ in prompts} == set(tw.SKILLS)
    assert len({p.prompt_id for p, _ in prompts}) == 8


def test_corpus_is_deterministic_and_noisy():
    train, _ = tw.split_subjects(0, 0.2)
    cfg = WorldConfig(corpus_groups=30)
    rows = tw.corpus_rows(train, cfg, np.random.default_rng(0))
    again = tw.corpus_rows(train, cfg, np.random.default_rng(0))
    assert [r["image"] for r in rows] == [r["image"] for r in again]
    assert len({r["url"] for r in rows}) == 30
    corrupt = [r for r in rows if r["truth_subject_id"] is None]
    assert len(corrupt) == cfg.corrupt_records
    for r in corrupt:
        with pytest.raises(ValueError):
            from_png(r["image"])
    by_url = {}
    for r in rows:
        if r["truth_subject_id"]:
            by_url.setdefault(r["url"], set()).add(r["truth_subject_id"])
    assert any(len(v) > 1 for v in by_url.values())  # some groups mix subjects
    assert any(len(v) == 1 for v in by_url.values())


def test_the_word_tokenizer_knows_every_word_of_the_toy_worlds_captions_and_prompts():
    from core.models.tokenizer import create_word_tokenizer
    from core.toy.pretrain import toy_scenes

    tokenizer = create_word_tokenizer(24)
    rng = np.random.default_rng(0)
    subjects = tw.all_subjects()
    _, _, captions = toy_scenes(subjects, 2000, rng, 32, version=2)
    prompts = [p.text for s in subjects[:64] for p, _ in tw.prompts_for(s.class_name, 23, rng)]
    for text in captions + prompts + [tw.class_caption(s, tw.random_scene(rng)) for s in subjects[:64]]:
        ids = tokenizer(text).input_ids
        assert tokenizer.unk_token_id not in ids and len(ids) <= 24, text
    assert tokenizer("a zebra").input_ids.count(tokenizer.unk_token_id) == 1


def test_world_version_reaches_demonstrations_prompts_and_the_corpus():
    s = tw.Subject("cone", "green", "bars", "white")
    prompts = tw.prompts_for("cone", 8, np.random.default_rng(0), 32, version=2)
    assert all(not sc.textured and 10 <= sc.radius <= 12 for _, sc in prompts)
    assert all(sc.textured for _, sc in tw.prompts_for("cone", 8, np.random.default_rng(0), 32))
    rng = np.random.default_rng(3)
    expected = []
    for _ in range(3):
        scene = tw.random_scene(rng, 32, 2)
        expected.append(tw.render(s, scene, 32, rng))
    drawn = [img for img, _ in tw.demonstrations(s, 3, np.random.default_rng(3), 32, version=2)]
    assert all(np.array_equal(a, b) for a, b in zip(drawn, expected, strict=True))
    v1, v2 = (
        tw.corpus_rows(tw.all_subjects()[::10], WorldConfig(version=v, corpus_groups=4), np.random.default_rng(0))
        for v in (1, 2)
    )
    assert len(v1) >= 16 and len(v2) >= 16 and not {r["image"] for r in v1} & {r["image"] for r in v2}


def test_validation_subjects_are_train_subjects_kept_out_of_the_corpus():
    train, test = tw.split_subjects(0, 0.2)
    rest, validation = tw.split_validation(train, 0, 0.1)
    assert 0.05 < len(validation) / len(train) < 0.15 and set(rest) | set(validation) == set(train)
    assert not set(validation) & set(test) and tw.split_validation(train, 0, 0.0) == (train, [])
    rows = tw.corpus_rows(rest, WorldConfig(corpus_groups=40), np.random.default_rng(0))
    assert not {r["truth_subject_id"] for r in rows} & {s.subject_id for s in validation}
