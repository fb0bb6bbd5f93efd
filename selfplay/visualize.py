"""Trajectories for people to look at: image strips and readable text (`data show`, `sample`,
the loop's report strips)."""

from __future__ import annotations

from typing import Callable

import numpy as np

from strokes.language import says_conflict
from strokes.trajectory import Trajectory

SCALE = 3  # strip panels are the canvas scaled up this much (nearest neighbour)
BORDER = 3  # frame around each panel: red for a deliberately wrong state, grey otherwise
GAP = 4  # white separator between framed panels
WRONG = (220, 0, 0)
FRAME = (190, 190, 190)


def states(t: Trajectory) -> list[tuple[np.ndarray, bool]]:
    """Every visual state in order, with whether it is deliberately wrong (a wrong plan's sketch or a
    misdrawn sketch): the same order as `Trajectory.images()`."""
    out = []
    for s in t.steps:
        out.append((s.image, s.wrong_plan or s.wrong_image))
        out.extend((r.image, r.wrong_image) for r in s.refinements)
    return out


def strip_image(t: Trajectory, scale: int = SCALE) -> np.ndarray:
    """All visual states side by side, scaled up with nearest neighbour, each in a frame (red when
    deliberately wrong, grey otherwise), separated by white gaps. Panel i's pixels start at
    (x, y) = (i * (side + 2 * BORDER + GAP) + BORDER, BORDER), with side = canvas * scale."""
    panels = states(t) or [(np.full((64, 64, 3), 255, np.uint8), False)]  # nothing drawn: one blank
    side = panels[0][0].shape[0] * scale
    cell = side + 2 * BORDER
    width = len(panels) * cell + (len(panels) - 1) * GAP
    canvas = np.empty((cell, width, 3), np.uint8)
    canvas[:] = 255
    for i, (img, wrong) in enumerate(panels):
        x = i * (cell + GAP)
        canvas[:, x: x + cell] = WRONG if wrong else FRAME
        big = np.repeat(np.repeat(np.asarray(img, np.uint8)[..., :3], scale, 0), scale, 1)
        canvas[BORDER: BORDER + side, x + BORDER: x + BORDER + side] = big
    return canvas


def flagged_steps(t: Trajectory) -> list[int]:
    """The steps (from 1) whose sketch the model's own inspection flagged."""
    return [k for k, s in enumerate(t.steps, start=1) if says_conflict(s.inspection)]


Conflicts = Callable[[Trajectory], "list[str] | None"]
"""The world's verdict on a trajectory's final image: what is wrong ([] when right), None when it
cannot be checked (`selfplay.world`'s `final_conflicts`)."""


def captions(t: Trajectory, conflicts: Conflicts) -> dict:
    """Words for a strip, frame by frame in `states` order: the step's <ins> (or <refine>), the
    model's inspection and whether it flagged the frame; and the final image's exact verdict
    (`conflicts` [] when right, None when it cannot be checked)."""
    frames = []
    for k, s in enumerate(t.steps, start=1):
        frames.append({"step": k, "kind": "sketch", "instruction": s.instruction, "inspection": s.inspection,
                       "flagged": says_conflict(s.inspection)})
        frames.extend({"step": k, "kind": "refinement", "instruction": r.instruction, "inspection": r.inspection,
                       "flagged": says_conflict(r.inspection)} for r in s.refinements)
    return {"prompt": t.prompt, "frames": frames, "conflicts": conflicts(t)}


def describe(t: Trajectory, index: int | None = None, header: bool = True, conflicts: Conflicts | None = None) -> str:
    """A trajectory as readable text: prompt; per step the plan (<ins>, <des>), inspection and
    refinements, with the loss flags; the final image's GenEval verdict when `conflicts` can give it.
    `header` names where the trajectory came from (a data set's source and variant)."""
    variant = t.meta.get("error", t.meta.get("detour", t.meta.get("outcome", "none")))
    head = (f"#{index}  " if index is not None else "") + f"{t.source} ({variant})"
    head += f"  task {t.meta['tag']}" if "tag" in t.meta else ""
    lines = ([head] if header else []) + [f"  prompt:  {t.prompt}"]
    if t.single_pass:
        lines.append("  single pass: the prompt, then one image")
    for k, s in enumerate([] if t.single_pass else t.steps, start=1):
        flags = []
        if s.wrong_plan:
            flags.append("WRONG PLAN (no loss on plan or sketch)")
        if s.wrong_image:
            flags.append("WRONG IMAGE (no loss on sketch)")
        if s.context:
            flags.append("context (no loss on plan or sketch)")
        edit = f"  [{s.edit}]" if s.edit != "add" else ""
        lines.append(f"  step {k}{edit}" + (f"  {'; '.join(flags)}" if flags else ""))
        lines.append(f"    <ins>     {s.instruction}")
        lines.append(f"    <des>     {s.description}")
        lines.append(f"    inspect:  {s.inspection}")
        for r in s.refinements:
            lines.append(f"    refine:   {r.instruction}" + ("  WRONG IMAGE" if r.wrong_image else ""))
            lines.append(f"    inspect:  {r.inspection}")
    wrong = conflicts(t) if conflicts is not None else None
    if wrong is not None:
        verdict = "correct" if not wrong else "WRONG (" + "; ".join(wrong) + ")"
        lines.append(f"  final image by the GenEval rules: {verdict}")
    if "failed" in t.meta:
        lines.append(f"  failed: {t.meta['failed']}")
    lines.append(f"  {len(t.images())} visual states" + (f", {t.meta['tokens']} tokens" if "tokens" in t.meta else ""))
    return "\n".join(lines)
