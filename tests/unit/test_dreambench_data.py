"""The DreamBench loader on the 20-subject copy in ../shared/data/dreambench (the google/dreambooth layout), and on
a broken copy: what it cannot use is reported, never raised."""

import shutil
from pathlib import Path

import pytest

from core.data.storage import MissingInputError
from core.dreambench import data as dreambench

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "dreambench" / "dataset"
LIVE = {"cat2", "dog", "dog2", "dog3", "dog5", "dog7"}


def test_loader_reads_the_shared_copy():
    bench = dreambench.load(str(DATA))
    assert bench.problems == []
    assert len(bench.subjects) == 20
    classes = {s.name: s.class_name for s in bench.subjects}
    assert (
        classes["grey_sloth_plushie"] == "stuffed animal"
        and classes["backpack_dog"] == "backpack"
        and classes["poop_emoji"] == "toy"
    )
    assert {s.name for s in bench.subjects if s.live} == LIVE
    assert all(len(s.images) >= 4 and all(u.endswith(".jpg") for u in s.images) for s in bench.subjects)
    assert len(bench.object_prompts) == len(bench.live_prompts) == 25
    assert [p.kind for p in bench.object_prompts] == ["recontextualization"] * 20 + ["property"] * 5
    assert [p.kind for p in bench.live_prompts] == ["recontextualization"] * 10 + ["accessorization"] * 10 + [
        "property"
    ] * 5
    dog = next(s for s in bench.subjects if s.name == "dog2")
    prompts = bench.prompts_for(dog)
    assert prompts[10].text("sks", dog.class_name) == "a sks dog wearing a red hat"
    assert prompts[0].text("", dog.class_name) == "a dog in the jungle"  # the apprentice's prompt: no double space
    teapot = next(s for s in bench.subjects if s.name == "teapot")
    assert bench.prompts_for(teapot)[24].text("", "teapot") == "a cube shaped teapot"
    assert (
        bench.prompts_for(teapot)[12].text("sks", "teapot") == "a sks teapot with the Eiffel Tower in the background"
    )
    image = dreambench.read_image(dog.images[0])
    assert image.shape == (256, 256, 3) and dreambench.square(image, 32).shape == (32, 32, 3)


def test_a_broken_copy_is_reported_not_raised(tmp_path):
    root = tmp_path / "dataset"
    root.mkdir()
    for name in ("dog", "teapot", "can"):
        shutil.copytree(DATA / name, root / name)
    text = (DATA / dreambench.PROMPTS_FILE).read_text()
    text = text.replace(
        "can,can\n", "can,can\nghost,dog\nnocomma\nteapot,kettle\nempty_one,toy\n"
    )  # no folder; bad; twice
    text = text.replace(
        "'a {0} {1} in the snow'.format(unique_token, class_token),",
        "__import__('os').system('echo pwned').format(unique_token, class_token),",
        1,
    )
    text = text.replace(
        "'a {0} {1} on the beach'.format(unique_token, class_token),",
        "'a {0} {1} on {2}'.format(unique_token, class_token),",
        1,
    )
    (root / dreambench.PROMPTS_FILE).write_text(text)
    (root / "mystery").mkdir()  # a folder with no class row
    shutil.copy(DATA / "dog" / "00.jpg", root / "mystery" / "00.jpg")
    (root / "dog" / "07.jpg").write_bytes(b"not a jpeg at all")
    (root / "teapot" / "09.jpg").write_bytes((DATA / "teapot" / "00.jpg").read_bytes()[:3000])  # truncated
    (root / "can" / "notes.txt").write_text("hello")
    (root / "empty_one").mkdir()  # a class row whose folder holds no image

    bench = dreambench.load(str(root))
    assert [s.name for s in bench.subjects] == ["can", "dog", "teapot"]
    assert next(s for s in bench.subjects if s.name == "teapot").class_name == "kettle"  # the first row wins
    by_name = {s.name: s for s in bench.subjects}
    assert not any(u.endswith("07.jpg") for u in by_name["dog"].images) and len(by_name["dog"].images) == 5
    assert not any(u.endswith("09.jpg") for u in by_name["teapot"].images)
    problems = "\n".join(bench.problems)
    for expected in (
        "folder 'mystery': no class row",
        "on {2}",
        "class row ghost,dog: no folder 'ghost'",
        "'nocomma'",
        "'teapot' listed twice",
        "dog/07.jpg: unreadable image",
        "teapot/09.jpg: unreadable image",
        "can/notes.txt: not an image file",
        "folder 'empty_one': no readable image",
        "__import__",
    ):
        assert expected in problems, (expected, problems)
    assert len(bench.object_prompts) == 23 and len(bench.live_prompts) == 25  # the bad lines are skipped, never run


def test_a_missing_or_unusable_prompt_file_fails_naming_the_key(tmp_path):
    from apps.config import compose

    assert compose([]).dreambench.data is None  # required: no default folder
    with pytest.raises(MissingInputError, match=r"`dreambench.data`"):
        dreambench.load(None)
    with pytest.raises(MissingInputError, match=r"prompts_and_classes.txt.*`dreambench.data`"):
        dreambench.load(str(tmp_path))
    text = (DATA / dreambench.PROMPTS_FILE).read_text()
    (tmp_path / dreambench.PROMPTS_FILE).write_text(text[: text.index("Live Subject Prompts")])
    with pytest.raises(dreambench.DreamBenchError, match="no live prompt list"):
        dreambench.load(str(tmp_path))
