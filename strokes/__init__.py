"""strokes: the shared foundation every other package stands on (docs/design.md §2).

Errors, the trajectory and verdict schemas, the language of plans and inspections, GenEval scoring,
the typed YAML config loader, atomic writes, the world (`strokes.shapeworld`), the models and
processors (`strokes.model`) and the base-data pipelines (`strokes.data`). It imports nothing else of
ours: `rollout`, `judges` and `trainer` build on it, and `selfplay` sits on top of all of them.
"""
