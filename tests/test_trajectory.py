"""Trajectory storage keeps everything: JSONL + PNG folders, HF datasets, and `build()` + `load()`.

A trajectory is compared field by field (recursively over the dataclasses, so a field added later is
compared too), images pixel for pixel with their dtype and shape.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from test_pipelines import make

from strokes.data.build import DataConfig, build, load, make_rows
from strokes.data.pipelines import SOURCES, PipelineConfig, TrajectoryMaker
from strokes.errors import InputError
from strokes.records import TASKS
from strokes.trajectory import (
    Refinement,
    Step,
    Trajectory,
    from_dataset,
    from_row,
    read_jsonl,
    single_pass_trajectory,
    to_dataset,
    write_jsonl,
)


def assert_same(a, b, where: str = "trajectory") -> None:
    """Equal in every field, recursively; arrays equal in dtype, shape and every pixel."""
    if isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape, where
        assert np.array_equal(a, b), f"{where}: pixels differ"
    elif dataclasses.is_dataclass(a):
        assert type(a) is type(b), where
        for f in dataclasses.fields(a):
            assert_same(getattr(a, f.name), getattr(b, f.name), f"{where}.{f.name}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), where
        for k, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{k}]")
    else:
        assert a == b, (where, a, b)


def hand_made() -> Trajectory:
    """What the pipelines never make but self-play data will: no record, a refinement that is itself
    wrong and refined again, and nested metadata."""
    rng = np.random.default_rng(0)
    img = lambda: rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)  # noqa: E731
    step = Step("add a red circle", "a red circle", img(), "conflict. a red circle is missing.",
                [Refinement("add a red circle", img(), "conflict. a red circle is missing.", wrong_image=True),
                 Refinement("add a red circle", img(), "aligned. the image follows the instruction")],
                wrong_image=True)
    return Trajectory("a red circle", [step, Step("remove the red circle", "nothing", img(), "aligned.")],
                      None, "self", {"round": 2, "judge": {"kind": "oracle"}, "score": 0.5})


@pytest.fixture(scope="module")
def trajectories() -> list[Trajectory]:
    """Every source and task, the flags and edit kinds of the pipelines, plus `hand_made()`."""
    maker = TrajectoryMaker(PipelineConfig(detour_prob=1.0, conflict_negative=0.8, alignment_negative=0.8))
    out = [make(src, task, i, maker)[1] for src in SOURCES for task in TASKS for i in range(4)]
    steps = [s for t in out for s in t.steps]
    assert any(s.wrong_plan for s in steps) and any(s.wrong_image for s in steps)
    assert {s.edit for s in steps} >= {"add", "recolor", "move", "swap"} and any(t.single_pass for t in out)
    return out + [hand_made()]


def test_jsonl_and_png_round_trip(trajectories, tmp_path):
    folder = tmp_path / "trajs"
    assert write_jsonl(trajectories, folder) == len(trajectories)
    assert len((folder / "trajectories.jsonl").read_text().splitlines()) == len(trajectories)
    assert len(list((folder / "images").glob("*.png"))) == sum(len(t.images()) for t in trajectories)
    assert_same(read_jsonl(folder), trajectories)
    # Rewriting replaces the folder whole (no stale images) and leaves no temporary behind.
    assert write_jsonl(trajectories[:2], folder) == 2
    assert_same(read_jsonl(folder), trajectories[:2])
    assert len(list((folder / "images").glob("*.png"))) == sum(len(t.images()) for t in trajectories[:2])
    assert [p.name for p in tmp_path.iterdir()] == ["trajs"]


def test_hf_dataset_round_trip(trajectories, tmp_path):
    import datasets

    ds = to_dataset(trajectories)
    assert isinstance(ds.features["images"], datasets.List)
    assert isinstance(ds.features["images"].feature, datasets.Image)
    first = ds[0]["images"][0]  # decoded on access: a PIL image of the first visual state
    assert np.array_equal(np.asarray(first.convert("RGB")), trajectories[0].images()[0])
    assert_same(from_dataset(ds), trajectories)
    ds.save_to_disk(str(tmp_path / "ds"))
    assert_same(from_dataset(datasets.load_from_disk(str(tmp_path / "ds"))), trajectories)


def test_build_then_load_gives_the_made_trajectories(tmp_path):
    cfg = DataConfig(size=60, workers=1, seed=7)
    summary = build(cfg, tmp_path / "base", progress=False)
    assert json.loads((tmp_path / "base" / "summary.json").read_text()) == summary
    assert [p.name for p in tmp_path.iterdir()] == ["base"]  # the temporary folder was renamed
    loaded = from_dataset(load(tmp_path / "base"))
    assert_same(loaded, [from_row(r) for r in make_rows(cfg, progress=False)])
    assert summary["trajectories"] == 60 and sum(summary["per_source"].values()) == 60


def test_load_names_a_folder_that_is_not_a_dataset(tmp_path):
    with pytest.raises(InputError, match="not a saved dataset"):
        load(tmp_path)


def test_final_image_and_state_order():
    t = hand_made()
    first, second = t.steps
    assert [id(im) for im in t.images()] == [id(first.image), id(first.refinements[0].image),
                                             id(first.refinements[1].image), id(second.image)]
    assert first.final_image is first.refinements[-1].image and first.conflict_found
    assert t.final_image is second.image and not second.conflict_found
    sp = single_pass_trajectory("a circle", second.image)
    assert sp.single_pass and not t.single_pass and sp.final_image is second.image
    assert Trajectory("nothing yet", []).final_image is None
