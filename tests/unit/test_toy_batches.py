"""The toy benchmark's apprentice batches: decoded and tokenized once, then indexed."""

import numpy as np

from benchmarks.toy_reproduction import Examples, make_batch
from core.models.tokenizer import create_tokenizer, tokenize


def test_batches_take_distinct_demos_of_the_row_itself():
    tokenizer = create_tokenizer(24)
    rows = []
    for i in range(6):
        count = 3 + i % 3  # 3, 4 or 5 demos: padded rows must never hand out their padding
        demos = [np.full((32, 32, 3), 10 * i + j, np.uint8) for j in range(count)]
        image = np.zeros((32, 32, 3), np.uint8)
        image[:, :16] = 200 + i  # left half marked: a mirrored target has it on the right
        rows.append(
            {
                "image": image,
                "prompt": f"a ball number {i}",
                "demos": demos,
                "captions": [f"demo {i} {j}" for j in range(count)],
            }
        )
    examples = Examples(rows, tokenizer)
    rng = np.random.default_rng(0)
    flipped = 0
    for _ in range(30):
        batch = make_batch(examples, 8, 3, rng, "cpu")
        assert batch["image"].shape == (8, 3, 32, 32) and batch["demo_images"].shape == (8, 3, 3, 32, 32)
        for b in range(8):
            left = round((float(batch["image"][b, 0, 0, 0]) + 1) * 127.5)
            right = round((float(batch["image"][b, 0, 0, 31]) + 1) * 127.5)
            row = (left if left >= 200 else right) - 200
            flipped += left < 200
            values = [round((float(batch["demo_images"][b, j, 0, 0, 0]) + 1) * 127.5) for j in range(3)]
            assert len(set(values)) == 3, "demos repeat within a row"
            assert all(v // 10 == row and v % 10 < len(rows[row]["demos"]) for v in values), (row, values)
            # Each demo's caption ids are that demo's.
            expected = tokenize(tokenizer, [f"demo {row} {v % 10}" for v in values])
            assert (batch["demo_ids"][b] == expected).all()
            assert (batch["input_ids"][b] == tokenize(tokenizer, [f"a ball number {row}"])[0]).all()
    assert 60 < flipped < 180  # about half of 240 targets mirrored


def test_demo_encoder_warm_start_learns_identity_and_leaves_only_the_encoder_changed():
    import torch

    from benchmarks.toy_reproduction import IDENTITY_HEADS, pretrain_demo_encoder
    from core.method.apprentice import DemoEncoder

    torch.manual_seed(0)
    encoder = DemoEncoder(3, 64, 64, 4)
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    result = pretrain_demo_encoder(encoder, 40, "cpu", batch_size=32)
    assert set(result["test_accuracy"]) == set(IDENTITY_HEADS)
    assert set(encoder.state_dict()) == set(before)  # the heads were not attached to the encoder
    assert not torch.equal(encoder.conv[0].weight, before["conv.0.weight"])
    assert torch.equal(encoder.pos, before["pos"])  # only the convolutions are warm-started
    # Body colour is the easiest attribute (chance: 1/8); measured on test subjects the encoder never saw.
    assert result["test_accuracy"]["body"] > 0.5, result


def test_demo_encoder_warm_start_is_made_once_per_work_folder(tmp_path):
    import torch

    from benchmarks.toy_reproduction import warm_encoder
    from core.method.apprentice import DemoEncoder

    torch.manual_seed(0)
    first = DemoEncoder(3, 64, 64, 4)
    made = warm_encoder(first, 5, str(tmp_path), "cpu")
    assert "loaded_from" not in made
    assert sorted(p.name for p in (tmp_path / "demo_encoder").iterdir()) == [
        "grid4_dim64_steps5.json",
        "grid4_dim64_steps5.safetensors",
    ]
    torch.manual_seed(1)
    second = DemoEncoder(3, 64, 64, 4)
    assert not torch.equal(second.conv[0].weight, first.conv[0].weight)
    loaded = warm_encoder(second, 5, str(tmp_path), "cpu")
    assert loaded["loaded_from"].endswith("grid4_dim64_steps5.safetensors")
    assert loaded["test_accuracy"] == made["test_accuracy"]
    for a, b in zip(first.conv.state_dict().values(), second.conv.state_dict().values()):
        assert torch.equal(a, b)
    assert not torch.equal(second.pos, first.pos)  # only the convolutions are shared
    # Another step count is another warm start, not this one.
    third = DemoEncoder(3, 64, 64, 4)
    assert "loaded_from" not in warm_encoder(third, 3, str(tmp_path), "cpu")


def test_raw_examples_follow_g_unless_every_subject_is_asked_for(tmp_path):
    """The raw (Re-Imagen analogue) variant trains on G's subjects; `subjects="all"` takes every G subject of the
    settings with no G built (the CPU comparison with the oracle-G apprentice). Targets are the subject itself."""
    import dataclasses

    from benchmarks.toy_reproduction import FULL, g_subjects, raw_examples

    s = dataclasses.replace(FULL, g_subjects=3, g_prompts=4)
    assert raw_examples(str(tmp_path), s) == []  # no G shards: nothing to take by default
    (tmp_path / "g").mkdir()
    first = g_subjects(s)[0]
    (tmp_path / "g" / f"{first.subject_id}.parquet").write_bytes(b"")  # only the name is read
    assert len(raw_examples(str(tmp_path), s)) == 4
    rows = raw_examples(str(tmp_path), s, "all")
    assert len(rows) == 3 * 4
    assert all(len(r["demos"]) == 5 and len(r["captions"]) == 5 for r in rows)
    # A raw target is another render of the subject under a class-and-place caption: no edit, accessory or style.
    for subject, chunk in zip(g_subjects(s), (rows[i : i + 4] for i in range(0, 12, 4))):
        assert all(r["prompt"].split()[1] == subject.class_name for r in chunk), [r["prompt"] for r in chunk]


def test_every_settings_flag_overrides_its_field_and_only_that():
    from dataclasses import fields

    from benchmarks.toy_reproduction import FULL, QUICK, SETTING_FLAGS, parse_args

    names = {f.name for f in fields(FULL)}
    assert set(SETTING_FLAGS) <= names
    args, s = parse_args(["--quick"])
    assert s == QUICK and args.work.endswith("toy_reproduction_quick")
    for i, field in enumerate(SETTING_FLAGS):
        value = "7,3,7" if field == "expert_checkpoints" else str(11 + i)
        _, s = parse_args(["--" + field.replace("_", "-"), value])
        expected = (3, 7) if field == "expert_checkpoints" else 11 + i  # checkpoints sorted, repeats dropped
        assert getattr(s, field) == expected
        assert all(getattr(s, other) == getattr(FULL, other) for other in names - {field})
