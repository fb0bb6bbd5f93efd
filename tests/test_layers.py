"""The packages' layering (docs/design.md §2), read from the source with `ast`, every import counted
(function-level ones too):

    strokes     the foundation: imports nothing else of ours
    rollout, judges, trainer    import only strokes and themselves
    selfplay    the top: may import everything; nothing imports it

and no import cycle among our modules.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ALLOWED = {
    "strokes": {"strokes"},
    "rollout": {"strokes", "rollout"},
    "judges": {"strokes", "judges"},
    "trainer": {"strokes", "trainer"},
    "selfplay": {"strokes", "rollout", "judges", "trainer", "selfplay"},
}


def _modules() -> dict[str, Path]:
    """Every module of our packages by dotted name (a package by its own name)."""
    out = {}
    for pkg in ALLOWED:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, int]]:
    """(imported module of ours, line) for every import statement in the file."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            # `from pkg import sub` imports the module pkg.sub when there is one
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        found += [(t, node.lineno) for t in targets if t.split(".")[0] in ALLOWED]
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: {t for t, _ in _imports(name, path, modules)} - {name} for name, path in modules.items()}


def test_no_upward_import():
    modules = _modules()
    bad = [f"{path.relative_to(ROOT)}:{line}: {name.split('.')[0]} may not import {target}"
           for name, path in modules.items() for target, line in _imports(name, path, modules)
           if target.split(".")[0] not in ALLOWED[name.split(".")[0]]]
    assert not bad, "\n".join(bad)


def test_no_import_cycle():
    graph = _graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_the_checks_see_imports():
    """The graph is not empty by accident: known edges are in it."""
    graph = _graph()
    assert "strokes.errors" in graph["strokes.shapeworld.records"]
    assert "strokes.shapeworld.queries" in graph["judges.oracle"]


# The modules that may import `strokes.shapeworld`: ShapeWorld's own parts and tools, and the loop's
# world seam. The loop itself (driver, stages, evaluation, GRPO, rewards, report), the rollout engine,
# the trainers and the world-agnostic judges reach ShapeWorld only through `selfplay.world`.
SHAPEWORLD_USERS = {
    "strokes.data.build", "strokes.data.continuation", "strokes.data.pipelines",  # its base-data pipelines
    "strokes.language",  # its plan and inspection language
    "strokes.model.processor", "strokes.model.image_tokenizer",  # the tiny model's vocabulary and codebook
    "judges.oracle", "judges.evaluate",  # the exact judge, and judge-eval on ShapeWorld steps
    "judges.vlm",  # the stand-in VLM judge: the exact judge with mistakes that depend on the picture
    "selfplay.world.shapeworld",  # the world seam's ShapeWorld
    "selfplay.critique",  # SFT critique traces: exact corrections and continuations
    "selfplay.commands.suite", "selfplay.commands.render", "selfplay.commands.sample",  # ShapeWorld tools
    "selfplay.commands.eval", "selfplay.commands.score",
}


def test_only_shapeworld_and_the_world_seam_import_shapeworld():
    modules = _modules()
    users = {name for name, path in modules.items() if not name.startswith("strokes.shapeworld")
             for target, _ in _imports(name, path, modules) if target.startswith("strokes.shapeworld")}
    assert users <= SHAPEWORLD_USERS, f"these import strokes.shapeworld: {sorted(users - SHAPEWORLD_USERS)}"
    assert "selfplay.world.shapeworld" in users  # the check sees imports at all
    for loop_module in ("selfplay.loop", "selfplay.stages", "selfplay.evaluation", "selfplay.grpo",
                        "selfplay.rewards", "selfplay.report"):
        assert loop_module in modules and loop_module not in SHAPEWORLD_USERS
