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
    (lambda: JudgeConfig(kind="gpt", final_reward="likelihood"), "judge.final_reward"),  # the self judge's own P
    (lambda: TrainConfig(grad_accum=0), "train.grad_accum"),
    (lambda: DataConfig(mixture={"doodle": 1.0}), "data.mixture.doodle"),
    (lambda: LoopConfig(eval_samples=0), "loop.eval_samples"),
    (lambda: load_config(None, ["tracking.mode=sometimes"]), "tracking.mode"),
])
def test_a_bad_value_names_its_field_on_construction(build, field):
    with pytest.raises(InputError) as e:
        build()
    assert f"config field '{field}'" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("override, field", [
    ("train.lr=.nan", "train.lr"),
    ("train.min_lr_ratio=.nan", "train.min_lr_ratio"),  # NaN fails no `x > 0` check: refused as not finite
    ("judge.timeout_s=.inf", "judge.timeout_s"),
    ("data.mixture.scene_graph=.inf", "data.mixture.scene_graph"),
    ("train.adam_beta2=1.5", "train.adam_beta2"),
    ("train.lora.dropout=1.0", "train.lora.dropout"),
    ("loop.promote_tolerance=-5", "loop.promote_tolerance"),
    ("loop.promote_tolerance=2", "loop.promote_tolerance"),  # percent where a fraction is meant
    ("loop.samples_per_prompt=0", "loop.samples_per_prompt"),
    ("loop.data_temperature=-0.5", "loop.data_temperature"),
    ("loop.data_mode=oracle", "loop.data_mode"),
    ("loop.data_retries=2", "loop.data_retries"),
    ("loop.tasks=[counting, drawing]", "loop.tasks"),
    ("loop.tasks=[]", "loop.tasks"),
    ("train.grpo.advantages=negative", "train.grpo.advantages"),
    ("critique.weighting=reward", "critique.weighting"),
    ("model.hidden_size=-8", "model.hidden_size"),
    ("model.num_heads=7", "model.num_heads"),  # 256 / 7 is no head width
    ("model.patch=7", "model.patch"),
    ("loop.strip_prompts=[123]", "loop.strip_prompts[0]"),
    ("train.lora.target_modules=[q_proj, 1]", "train.lora.target_modules[1]"),
    ("data.mixture.scene_graph=abc", "data.mixture.scene_graph"),
    ("data.tasks={1: 1.0}", "data.tasks"),
])
def test_values_that_used_to_pass_are_refused_naming_the_field(override, field):
    with pytest.raises(InputError) as e:
        load_config(None, [override])
    assert f"config field '{field}'" in str(e.value) and "\n" not in str(e.value)


def test_a_mixture_weight_given_as_text_in_yaml_names_its_key(tmp_path):
    """Not `'<' not supported between 'str' and 'float'`, from the loader or from DataConfig itself."""
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  mixture: {scene_graph: high, conflict: 1}\n")
    with pytest.raises(InputError, match=r"config field 'data\.mixture\.scene_graph' must be a number"):
        load_config(path)
    with pytest.raises(InputError, match=r"config field 'data\.mixture\.conflict' must be a number"):
        DataConfig(mixture={"scene_graph": 1.0, "conflict": "1"})


def test_the_shipped_configs_still_load():
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        load_config(path)


def test_a_config_inherits_its_parent_and_says_only_what_differs(tmp_path):
    (tmp_path / "parent.yaml").write_text("train: {lr: 1.0e-3, batch_size: 6}\ndata: {mixture: {conflict: 2.0}}\n")
    (tmp_path / "child.yaml").write_text("inherit: parent.yaml\ntrain: {lr: 5.0e-4}\n")
    cfg = load_config(tmp_path / "child.yaml")
    assert cfg.train.lr == 5e-4 and cfg.train.batch_size == 6  # the child's value wins, the rest is the parent's
    assert cfg.data.mixture["conflict"] == 2.0


@pytest.mark.parametrize("files, message", [
    ({"a.yaml": "inherit: b.yaml\n", "b.yaml": "inherit: a.yaml\n"}, "makes a cycle"),
    ({"a.yaml": "inherit: missing.yaml\n"}, "names no config file"),
    ({"a.yaml": "inherit: [b.yaml]\n"}, "must name a config file"),
])
def test_a_broken_chain_of_parents_is_refused_in_one_line(tmp_path, files, message):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(InputError) as e:
        load_config(tmp_path / "a.yaml")
    assert message in str(e.value) and "a.yaml" in str(e.value) and "\n" not in str(e.value)


ROOT_CONFIGS = {"base.yaml", "shapeworld.yaml", "cluster.yaml"}


def test_every_shipped_config_but_the_roots_holds_only_what_differs_from_its_parent():
    import yaml

    from strokes.config_loader import INHERIT, read

    def leaves(data: dict, prefix: str = "") -> dict:
        out = {}
        for k, v in data.items():
            out.update(leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    for path in sorted((ROOT / "configs").glob("*.yaml")):
        own = yaml.safe_load(path.read_text())
        if path.name in ROOT_CONFIGS:
            assert INHERIT not in own, f"{path.name} is a root config"
            continue
        assert INHERIT in own, f"{path.name} names no parent (roots: {', '.join(sorted(ROOT_CONFIGS))})"
        parent = leaves(read(path.parent / own.pop(INHERIT)))
        same = [k for k, v in leaves(own).items() if parent.get(k, object()) == v]
        assert not same, f"{path.name} repeats its parent's values: {same}"


def test_model_kind_names_every_adapter_and_nothing_else():
    from strokes.model.policy import ADAPTERS
    from strokes.model.tiny import KINDS

    assert sorted(KINDS) == sorted(["tiny", *(name.removeprefix("strokes.") for name in ADAPTERS)])


def test_a_base_checkpoint_of_another_kind_than_model_kind_is_refused_in_one_line(capsys):
    from selfplay.cli import main

    assert main(["run", str(ROOT / "configs/shapeworld.yaml"), "--dry-run", "--set", "model.kind=janus"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "model.kind: 'janus', but" in err and "'tiny' checkpoint" in err
