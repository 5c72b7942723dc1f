import numpy as np
import pytest

from core import toyworld as tw
from core.config import WorldConfig


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


def test_readers_are_exact_on_clean_renders():
    rng = np.random.default_rng(0)
    subjects = tw.all_subjects()
    for i in rng.choice(len(subjects), size=150, replace=False):
        s = subjects[int(i)]
        scene = tw.random_scene(rng, accessory=rng.choice([None, "hat", "flag"]), style=rng.choice([None, None, "blocky"]))
        read = tw.read_attributes(tw.render(s, scene, 32, rng))
        want = {} if scene.style else s.identity()
        assert {k: read[k] for k in want} == want, (s, scene, read)
        accessory = None if scene.style else scene.accessory
        assert (read["background"], read["accessory"], read["style"]) == (scene.background, accessory, scene.style)


def test_fidelity_scores_an_oracle_render_at_the_maximum_and_a_wrong_subject_lower():
    rng = np.random.default_rng(1)
    s = tw.Subject("ball", "red", "dots", "blue")
    for prompt, scene in tw.prompts_for(s.class_name, 4, rng, keep_colours=(s.body, s.pattern_colour)):
        img = tw.render(s, scene, 32, rng)
        assert tw.text_fidelity(img, prompt.truth) == 1.0
        fidelity = tw.subject_fidelity(img, s, prompt.truth)
        assert np.isnan(fidelity) if "style" in prompt.truth else fidelity == 1.0
    other = tw.Subject("ball", "green", "stripes", "yellow")
    assert tw.subject_fidelity(tw.render(other, tw.random_scene(rng), 32, rng), s) == 0.0


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
            tw.from_png(r["image"])
    by_url = {}
    for r in rows:
        if r["truth_subject_id"]:
            by_url.setdefault(r["url"], set()).add(r["truth_subject_id"])
    assert any(len(v) > 1 for v in by_url.values())  # some groups mix subjects
    assert any(len(v) == 1 for v in by_url.values())
