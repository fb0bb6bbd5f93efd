"""One config convention (strokes/config_loader.py): every field of every `*Config` dataclass is
documented by a docstring under it, and a bad value fails on construction with one line naming the
dotted field."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from judges.config import JudgeConfig
from rollout.config import RolloutConfig
from selfplay.config import LoopConfig, load_config
from strokes.data.build import DataConfig
from strokes.errors import InputError
from trainer.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("strokes", "rollout", "judges", "trainer", "selfplay")


def _config_classes() -> list[tuple[Path, ast.ClassDef]]:
    found = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ClassDef) and node.name.endswith("Config") and any(
                        getattr(d, "id", None) == "dataclass" for d in node.decorator_list):
                    found.append((path, node))
    return found


def test_every_config_field_is_documented():
    classes = _config_classes()
    assert len(classes) >= 14, [c.name for _, c in classes]
    missing = []
    for path, cls in classes:
        for i, node in enumerate(cls.body):
            if not isinstance(node, ast.AnnAssign) or "ClassVar" in ast.unparse(node.annotation):
                continue
            doc = cls.body[i + 1] if i + 1 < len(cls.body) else None
            if not (isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant)
                    and isinstance(doc.value.value, str) and doc.value.value.strip()):
                missing.append(f"{path.relative_to(ROOT)}: {cls.name}.{ast.unparse(node.target)}")
    assert not missing, "fields without a docstring line under them:\n" + "\n".join(missing)


@pytest.mark.parametrize("build, field", [
    (lambda: RolloutConfig(top_p=2.0), "rollout.top_p"),
    (lambda: JudgeConfig(timeout_s=0), "judge.timeout_s"),
    (lambda: TrainConfig(grad_accum=0), "train.grad_accum"),
    (lambda: DataConfig(mixture={"doodle": 1.0}), "data.mixture.doodle"),
    (lambda: LoopConfig(eval_samples=0), "loop.eval_samples"),
    (lambda: load_config(None, ["tracking.mode=sometimes"]), "tracking.mode"),
])
def test_a_bad_value_names_its_field_on_construction(build, field):
    with pytest.raises(InputError) as e:
        build()
    assert f"config field '{field}'" in str(e.value) and "\n" not in str(e.value)
