"""A team's own interleaved trajectories (`selfplay train --data`): JSONL with image files, or a Hugging
Face dataset with an `Image` feature; checked row by row, any image size the policy's processor takes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from selfplay.cli import main
from strokes.data.external import load_trajectories
from strokes.errors import InputError
from strokes.trajectory import from_dataset

STEPS = [{"instruction": "add a red circle", "description": "a red circle", "inspection": "aligned.",
          "refinements": []},
         {"instruction": "add a blue square left of the red circle",
          "description": "a red circle and a blue square left of it", "inspection": "conflict. a blue square is missing.",
          "refinements": [{"instruction": "add a blue square left of the red circle", "inspection": "aligned."}],
          "wrong_image": True}]


def picture(side: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (side, side, 3), dtype=np.uint8))


def write_jsonl_dataset(folder: Path, side: int = 64) -> Path:
    """Two rows in the documented form: steps as objects, images as files beside the JSONL."""
    (folder / "img").mkdir(parents=True)
    rows = []
    for n in range(2):
        names = []
        for k in range(3):  # two sketches and one refinement: three visual states
            name = f"img/{n}_{k}.{'jpg' if k == 2 else 'png'}"
            picture(side, 10 * n + k).save(folder / name)
            names.append(name)
        rows.append({"prompt": "a blue square left of a red circle", "steps": STEPS, "images": names,
                     "record": {"tag": "position", "include": [{"class": "circle", "count": 1, "color": "red"},
                                {"class": "square", "count": 1, "color": "blue", "position": ["left of", 0]}]}})
    path = folder / "mine.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_jsonl_with_image_files_loads_into_the_trainers_rows(tmp_path):
    data = load_trajectories(write_jsonl_dataset(tmp_path), image_side=64)
    t = from_dataset(data)[1]
    assert len(data) == 2 and len(t.steps) == 2 and len(t.images()) == 3
    assert t.steps[1].wrong_image and t.steps[1].refinements[0].inspection == "aligned."
    assert t.record["tag"] == "position" and t.source == "external"
    assert np.array_equal(t.steps[0].image, np.asarray(picture(64, 10)))  # PNG kept exactly


def test_a_hugging_face_dataset_with_an_image_feature_of_any_size(tmp_path):
    import datasets

    rows = {"prompt": ["a red circle"], "steps": [json.dumps(STEPS)],
            "images": [[picture(96, k) for k in range(3)]]}
    features = datasets.Features({"prompt": datasets.Value("string"), "steps": datasets.Value("string"),
                                  "images": datasets.List(datasets.Image())})
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(tmp_path / "hf"))
    assert len(load_trajectories(tmp_path / "hf")) == 1  # a processor that resizes takes 96 px
    with pytest.raises(InputError, match=r"row 1: images\[0\]: image is 96x96; this policy reads 64x64 images"):
        load_trajectories(tmp_path / "hf", image_side=64)


@pytest.mark.parametrize("change, message", [
    (lambda r: r.pop("steps"), "missing field(s) steps"),
    (lambda r: r["images"].pop(), "needs one image per visual state (steps and refinements: 3), got 2"),
    (lambda r: r.__setitem__("steps", "[not json"), "'steps' is not JSON"),
    (lambda r: r["steps"][0].pop("inspection"), "steps[0]: a step needs text fields"),
    (lambda r: r.__setitem__("record", {"tag": "colors"}), "record: field 'include' must be a non-empty list"),
])
def test_a_malformed_row_fails_in_one_line_naming_it(tmp_path, change, message):
    path = write_jsonl_dataset(tmp_path)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    change(rows[1])
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(InputError) as e:
        load_trajectories(path)
    assert "mine.jsonl: row 2: " in str(e.value) and message in str(e.value) and "\n" not in str(e.value)


def test_selfplay_train_takes_a_teams_jsonl(tmp_path, capsys):
    from test_rollout_support import TINY

    from strokes.model.policy import Policy

    Policy.build(TINY).save_pretrained(tmp_path / "init")
    cfg = tmp_path / "train.yaml"
    cfg.write_text(yaml.safe_dump({"train": {"max_steps": 1, "batch_size": 2, "max_length": 512, "warmup_steps": 0,
                                             "logging_steps": 1, "tokenize_workers": 1, "num_threads": 1}}))
    data = write_jsonl_dataset(tmp_path / "data")
    assert main(["train", "--config", str(cfg), "--data", str(data), "--init", str(tmp_path / "init"),
                 "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "checkpoint" / "model.safetensors").is_file()
    assert "2 trajectories" in capsys.readouterr().out
    bad = write_jsonl_dataset(tmp_path / "big", side=96)
    assert main(["train", "--config", str(cfg), "--data", str(bad), "--init", str(tmp_path / "init"),
                 "--out", str(tmp_path / "out2")]) == 2
    assert "this policy reads 64x64 images" in capsys.readouterr().err and not (tmp_path / "out2").exists()
