"""The three base data pipelines (paper §3.1), each turning a prompt record into a trajectory.

- `scene_graph`: order the target scene's objects (a relation's reference before the object placed
  relative to it), one edit per step, every intermediate image rendered exactly. Edit
  diversification realises some objects through detours that reach the same final scene:
  `recolor` (an object whose colour the prompt leaves free is drawn in another colour, then
  recoloured), `move` (drawn without its relation, then moved into it), `swap` (two objects drawn in
  each other's places, then swapped). Intermediate plans never contradict the prompt.
- `conflict`: one step's plan contradicts the prompt (wrong colour, wrong relation, wrong object, too
  many); its sketch follows that plan; the inspection explains the conflict against the prompt and
  `<refine>` fixes it. Loss is masked on the wrong plan and its sketch.
- `alignment`: one step's plan is right but its sketch does not follow it (rendered from a perturbed
  graph: wrong colour, wrong shape, wrong place, missing, extra); the inspection names the conflict,
  `<refine>` gives the corrective instruction and the corrected image. Loss is masked on the wrong sketch.

Every other step is aligned, and its inspection names what the prompt still needs. `remove` and
`replace` edits appear as corrections.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from typing import ClassVar

from ..config_loader import require
from ..language import Edit, checklist_text, description_text, inspection_text, instruction_text, parse_description
from ..records import PromptRecord
from ..shapeworld import COLORS, SHAPES, Obj, Scene, detect, relations, render, target_scene
from ..shapeworld.check import Item, check_items, item_checks, plan_conflicts
from ..shapeworld.queries import missing_parts
from ..shapeworld.scene import OPPOSITE, free_slots
from ..trajectory import Refinement, Step, Trajectory, single_pass_trajectory
from ..verdict import Conflict, Verdict

SOURCES = ("scene_graph", "conflict", "alignment", "single_pass")
PLAN_ORDERS = ("random", "prompt")


@dataclass
class PipelineConfig:
    """How base trajectories are made."""

    SECTION: ClassVar[str] = "data.pipelines"

    detour_prob: float = 0.4
    """Chance that a scene-graph trajectory realises one object by a detour."""
    detour_weights: dict = field(default_factory=lambda: {"recolor": 1.0, "move": 1.0, "swap": 1.0})
    """Relative weight of each detour kind (recolor, move, swap)."""
    conflict_negative: float = 0.55
    """Share of conflict-set trajectories with a wrong plan (paper ~45% positive)."""
    alignment_negative: float = 0.67
    """Share of alignment-set trajectories with a misdrawn sketch (1/3 positive)."""
    swapped_colors: float = 0.0
    """Share of conflict-set negatives, on prompts with two objects of stated colours, whose wrong
    plan gives an object the other one's colour (a swapped binding: "a blue circle" for "a red circle
    and a blue square"). The default wrong colour is one the prompt never names, which a model can
    flag without reading which colour goes with which object."""
    checklist: bool = False
    """Open every step's inspection with a check list of the step's described objects, each against
    the prompt and the sketch ('red circle planned drawn. blue square not planned drawn.'), before
    the verdict: inspection by enumeration (`language.checklist_text`)."""
    plan_order: str = "prompt"
    """Drawing order of a prompt's objects when the prompt states no relation: 'prompt' (its word
    order: the first instruction copies the prompt's first phrase, so which colour goes with which
    shape is read from where a phrase sits) or 'random' (any order: the shape bound to a colour must
    be looked up by colour, which the tiny model never learnt; the base before 2026-12-05)."""

    def __post_init__(self) -> None:
        require(self, "plan_order", self.plan_order in PLAN_ORDERS, f"must be one of {', '.join(PLAN_ORDERS)}")
        for name in ("detour_prob", "conflict_negative", "alignment_negative", "swapped_colors"):
            value = getattr(self, name)
            require(self, name, isinstance(value, (int, float)) and 0 <= value <= 1, "must be a share between 0 and 1")


@dataclass
class _State:
    """The scene so far and its description: `items[i]` describes `scene.objects[i]`."""

    scene: Scene
    items: list[Item]

    @property
    def description(self) -> str:
        return description_text(self.items)


def _state(objs: list[Obj], rels: list, size: int, no_rel: frozenset = frozenset()) -> _State:
    """Objects with their intended relations, stating only relations that hold in this geometry."""
    items = []
    for i, o in enumerate(objs):
        rel = None if i in no_rel else rels[i]
        if rel is not None and rel[0] not in relations(o.box, objs[rel[1]].box):
            rel = None
        items.append(Item(o.shape, o.color, rel))
    return _State(Scene(tuple(objs), size), items)


def aligned_inspection(rec: PromptRecord, scene: Scene) -> str:
    return inspection_text(Verdict(aligned=True, conflicts=[], correction="", missing=missing_parts(rec, scene)))


def with_checklist(rec: PromptRecord, description: str, image, inspection: str) -> str:
    """`inspection` opened by the check list of `description`'s objects against `rec` and `image`."""
    checks = checklist_text(item_checks(rec, parse_description(description) or [], detect(image)))
    return f"{checks} {inspection}" if checks else inspection


def conflict_inspection(conflicts: list[Conflict]) -> str:
    return inspection_text(Verdict(aligned=False, conflicts=conflicts, correction=""))


def _add_edit(state: _State, k: int) -> Edit:
    it = state.items[k]
    ref = state.items[it.relation[1]] if it.relation else None
    return Edit("add", (it.shape, it.color), it.relation[0] if it.relation else None,
                (ref.shape, ref.color) if ref else None)


class TrajectoryMaker:
    """Builds base trajectories for one canvas size."""

    def __init__(self, cfg: PipelineConfig | None = None, size: int = 64) -> None:
        self.cfg = cfg or PipelineConfig()
        self.size = size

    def make(self, source: str, rec: PromptRecord, rng: random.Random) -> Trajectory:
        if source == "single_pass":
            return self.single_pass(rec, rng)
        if source not in SOURCES:
            raise ValueError(f"unknown source {source!r} (sources: {', '.join(SOURCES)})")
        t = getattr(self, source)(rec, rng)
        if self.cfg.checklist:
            for step in t.steps:
                step.inspection = with_checklist(rec, step.description, step.image, step.inspection)
        return t

    def single_pass(self, rec: PromptRecord, rng: random.Random) -> Trajectory:
        """The prompt and its final image alone: the baseline mode, which shares the model's weights."""
        scene = Scene(tuple(self.target(rec, rng)[0]), self.size)
        return single_pass_trajectory(rec.text, render(scene), rec.to_json())

    # ---- the target and its order -----------------------------------------------------------

    def target(self, rec: PromptRecord, rng: random.Random) -> tuple[list[Obj], list]:
        """Target objects in drawing order, with the relation each one's instruction states (to an
        earlier object). Free colours are made distinct so every phrase names one object."""
        objs = list(target_scene(rec, rng, self.size).objects)
        free = [r.color is None for r in rec.include for _ in range(r.count)]
        for k, (o, f) in enumerate(zip(objs, free)):
            if f and any((p.shape, p.color) == (o.shape, o.color) for p in objs[:k]):
                taken = {(p.shape, p.color) for p in objs}
                objs[k] = replace(o, color=rng.choice([c for c in COLORS if (o.shape, c) not in taken]))
        starts = [sum(r.count for r in rec.include[:g]) for g in range(len(rec.include))]
        prompt_rel = {starts[g] + k: (r.position[0], starts[r.position[1]])
                      for g, r in enumerate(rec.include) if r.position for k in range(r.count)}
        order = list(range(len(objs)))
        if not prompt_rel and self.cfg.plan_order == "random":  # a relation keeps its reference first
            rng.shuffle(order)
        pos = {o: n for n, o in enumerate(order)}
        ordered = [objs[o] for o in order]
        rels: list = []
        for n, o in enumerate(order):
            if o in prompt_rel:
                rels.append((prompt_rel[o][0], pos[prompt_rel[o][1]]))
                continue
            held = [(rel, k) for k in range(n) for rel in sorted(relations(ordered[n].box, ordered[k].box))]
            rels.append(rng.choice(held) if held and rng.random() < 0.85 else None)
        return ordered, rels

    def _clean_steps(self, rec: PromptRecord, objs: list[Obj], rels: list, upto: int) -> list[Step]:
        steps = []
        for k in range(upto):
            st = _state(objs[: k + 1], rels, self.size)
            steps.append(Step(instruction_text(_add_edit(st, k)), st.description, render(st.scene),
                              aligned_inspection(rec, st.scene)))
        return steps

    # ---- scene-graph subsampling with detours ----------------------------------------------------

    def scene_graph(self, rec: PromptRecord, rng: random.Random) -> Trajectory:
        objs, rels = self.target(rec, rng)
        detour = self._pick_detour(rec, objs, rels, rng)
        if detour is None:
            steps = self._clean_steps(rec, objs, rels, len(objs))
        elif detour[0] == "swap":
            steps = self._swap(rec, objs, rels, rng)
        else:
            steps = self._detour(rec, objs, rels, detour[0], detour[1], rng)
        return Trajectory(rec.text, steps, rec.to_json(), "scene_graph",
                          {"detour": detour[0] if detour else "none", "tag": rec.tag})

    def _pick_detour(self, rec: PromptRecord, objs: list[Obj], rels: list, rng: random.Random):
        if rng.random() >= self.cfg.detour_prob:
            return None
        # A detour must leave the scene visibly unfinished, or the inspection would say "matches
        # the prompt" before the fix: so it happens before the last object, or on a relation the
        # prompt itself requires.
        free = {r.shape for r in rec.include if r.color is None}
        required = any(r.position for r in rec.include)
        w = self.cfg.detour_weights
        options = []
        last = len(objs) - 1
        for k, o in enumerate(objs):
            if o.shape in free and k < last:
                options.append((w.get("recolor", 0), ("recolor", k)))
            if rels[k] is not None and (k < last or required):
                options.append((w.get("move", 0), ("move", k)))
        if rels[-1] is not None and required:
            options.append((w.get("swap", 0), ("swap", last)))
        options = [(wt, o) for wt, o in options if wt > 0]
        if not options:
            return None
        return rng.choices([o for _, o in options], weights=[wt for wt, _ in options])[0]

    def _detour(self, rec, objs: list[Obj], rels: list, kind: str, k: int, rng) -> list[Step]:
        """Object k is first drawn another way (other colour, or elsewhere without its relation),
        then the next step recolours or moves it; the rest follows the clean order."""
        steps = self._clean_steps(rec, objs, rels, k)
        obj = objs[k]
        if kind == "recolor":
            taken = {(p.shape, p.color) for p in objs}
            first = replace(obj, color=rng.choice([c for c in COLORS if (obj.shape, c) not in taken]))
            no_rel: frozenset = frozenset()
        else:
            prev = Scene(tuple(objs[:k]), self.size)
            later = [o for o in objs[k + 1:]]
            rel, ref = rels[k]
            # The first placement must not already hold the relation, or the move would be a no-op
            # and the scene could look finished (the inspection saying so) before the move.
            slots = [s for s in free_slots(prev) if s != (obj.x, obj.y)
                     and rel not in relations(obj.moved(*s).box, objs[ref].box)
                     and all(abs(s[0] - o.x) >= 16 or abs(s[1] - o.y) >= 16 for o in later)]
            first = obj.moved(*rng.choice(slots)) if slots else obj
            no_rel = frozenset({k})
        st = _state(objs[:k] + [first], rels, self.size, no_rel)
        steps.append(Step(instruction_text(_add_edit(st, k)), st.description, render(st.scene),
                          aligned_inspection(rec, st.scene)))
        done = _state(objs[: k + 1], rels, self.size)
        if kind == "recolor":
            fix = Edit("recolor", (first.shape, first.color), new_color=obj.color)
        else:
            fix = _add_edit(done, k)
            fix = Edit("move", fix.target, fix.relation, fix.other)
        steps.append(Step(instruction_text(fix), done.description, render(done.scene),
                          aligned_inspection(rec, done.scene), edit=kind))
        for j in range(k + 1, len(objs)):
            st = _state(objs[: j + 1], rels, self.size)
            steps.append(Step(instruction_text(_add_edit(st, j)), st.description, render(st.scene),
                              aligned_inspection(rec, st.scene)))
        return steps

    def _swap(self, rec, objs: list[Obj], rels: list, rng) -> list[Step]:
        """The last object B and its reference A are drawn in each other's places (A from its own
        step on, B without its relation); a final `swap` puts both where the prompt wants them."""
        b = len(objs) - 1
        a = rels[b][1]
        A, B = objs[a], objs[b]
        steps = self._clean_steps(rec, objs, rels, a)
        placed = list(objs)
        placed[a] = A.moved(B.x, B.y)
        for j in range(a, b):
            st = _state(placed[: j + 1], rels, self.size)
            steps.append(Step(instruction_text(_add_edit(st, j)), st.description, render(st.scene),
                              aligned_inspection(rec, st.scene)))
        placed[b] = B.moved(A.x, A.y)
        st = _state(placed, rels, self.size, frozenset({b}))
        steps.append(Step(instruction_text(_add_edit(st, b)), st.description, render(st.scene),
                          aligned_inspection(rec, st.scene)))
        done = _state(objs, rels, self.size)
        swap = Edit("swap", (A.shape, A.color), other=(B.shape, B.color))
        steps.append(Step(instruction_text(swap), done.description, render(done.scene),
                          aligned_inspection(rec, done.scene), edit="swap"))
        return steps

    # ---- instruction–intermediate conflicts --------------------------------------------------------

    def conflict(self, rec: PromptRecord, rng: random.Random) -> Trajectory:
        """A clean trajectory in which, with probability `conflict_negative`, one step's plan
        contradicts the prompt; the step is inspected against the prompt and refined."""
        objs, rels = self.target(rec, rng)
        options = self._plan_errors(rec, objs, rels)
        if not options or rng.random() >= self.cfg.conflict_negative:
            return Trajectory(rec.text, self._clean_steps(rec, objs, rels, len(objs)), rec.to_json(),
                              "conflict", {"error": "none", "tag": rec.tag})
        swaps = self._swapped_colors(rec, objs)
        if swaps and self.cfg.swapped_colors and rng.random() < self.cfg.swapped_colors:
            kind, (k, swapped) = "wrong_color", rng.choice(swaps)
        else:
            kind = rng.choice(sorted({kd for kd, _ in options}))  # kinds equally likely, then a step
            k, swapped = rng.choice([k for kd, k in options if kd == kind]), None
        n = len(objs)
        obj = objs[k] if k < n else None
        if kind == "too_many":
            taken = {(p.shape, p.color) for p in objs}
            shape = rng.choice([r.shape for r in rec.include if r.color is None] or [objs[-1].shape])
            color = rng.choice([c for c in COLORS if (shape, c) not in taken])
            wrong = Obj(shape, color, *rng.choice(free_slots(Scene(tuple(objs), self.size))))
            plan_objs, plan_rels = objs + [wrong], rels + [None]
        elif kind == "wrong_color":
            taken = {(p.shape, p.color) for p in objs}
            wrong = replace(obj, color=swapped or rng.choice([c for c in COLORS if (obj.shape, c) not in taken]))
            plan_objs, plan_rels = objs[:k] + [wrong], rels[: k + 1]
        elif kind == "wrong_object":
            shapes = [s for s in SHAPES if s not in {r.shape for r in rec.include}]
            wrong = replace(obj, shape=rng.choice(shapes))
            plan_objs, plan_rels = objs[:k] + [wrong], rels[: k + 1]
        else:  # wrong_relation: state and draw the opposite of the prompt's relation
            rel, ref = rels[k]
            wrong = obj.moved(*rng.choice(self._opposite_slots(objs, rels, k)))
            plan_objs, plan_rels = objs[:k] + [wrong], rels[:k] + [(OPPOSITE[rel], ref)]
        j = len(plan_objs) - 1
        st = _state(plan_objs, plan_rels, self.size)
        conflicts = plan_conflicts(rec, st.items)
        wrong_step = Step(instruction_text(_add_edit(st, j)), st.description, render(st.scene),
                          conflict_inspection(conflicts), wrong_plan=True)
        if kind in ("too_many", "wrong_object"):
            fix = Edit("remove", (wrong.shape, wrong.color))
            fixed = _state(objs[:k] if kind == "wrong_object" else objs, rels, self.size)
            resume = k
        elif kind == "wrong_color":
            fix = Edit("recolor", (wrong.shape, wrong.color), new_color=obj.color)
            fixed, resume = _state(objs[: k + 1], rels, self.size), k + 1
        else:
            fixed, resume = _state(objs[: k + 1], rels, self.size), k + 1
            e = _add_edit(fixed, k)
            fix = Edit("move", e.target, e.relation, e.other)
        wrong_step.refinements.append(Refinement(instruction_text(fix), render(fixed.scene),
                                                 aligned_inspection(rec, fixed.scene)))
        steps = self._clean_steps(rec, objs, rels, min(k, n)) + [wrong_step]
        for i in range(resume, n):
            s = _state(objs[: i + 1], rels, self.size)
            steps.append(Step(instruction_text(_add_edit(s, i)), s.description, render(s.scene),
                              aligned_inspection(rec, s.scene)))
        return Trajectory(rec.text, steps, rec.to_json(), "conflict",
                          {"error": "swapped_color" if swapped else kind, "tag": rec.tag})

    def _swapped_colors(self, rec: PromptRecord, objs: list[Obj]) -> list[tuple[int, str]]:
        """(step, colour): an object of a stated colour planned in another stated object's colour,
        where no object of that shape and colour is wanted."""
        colored = {(r.shape, r.color) for r in rec.include if r.color}
        taken = {(p.shape, p.color) for p in objs}
        return [(k, c) for k, o in enumerate(objs) if (o.shape, o.color) in colored
                for c in sorted({c for _, c in colored} - {o.color}) if (o.shape, c) not in taken]

    def _plan_errors(self, rec: PromptRecord, objs: list[Obj], rels: list) -> list[tuple[str, int]]:
        """(kind, step) plan errors that contradict this prompt and that the canvas has room for (so
        a conflict-set trajectory never silently falls back to another source)."""
        colored = {(r.shape, r.color) for r in rec.include if r.color}
        out = []
        prompt_rel = any(r.position for r in rec.include)
        other_shapes = [s for s in SHAPES if s not in {r.shape for r in rec.include}]
        for k, o in enumerate(objs):
            if (o.shape, o.color) in colored:
                out.append(("wrong_color", k))
            if other_shapes:
                out.append(("wrong_object", k))
            if prompt_rel and rels[k] is not None and k == len(objs) - 1 and self._opposite_slots(objs, rels, k):
                out.append(("wrong_relation", k))
        if len(objs) < 5 and free_slots(Scene(tuple(objs), self.size)):
            out.append(("too_many", len(objs)))
        return out

    def _opposite_slots(self, objs: list[Obj], rels: list, k: int) -> list[tuple[int, int]]:
        """Free places (among the objects before k) where object k holds the opposite of its relation."""
        rel, ref = rels[k]
        prev = Scene(tuple(objs[:k]), self.size)
        return [s for s in free_slots(prev) if OPPOSITE[rel] in relations(objs[k].moved(*s).box, objs[ref].box)]

    def _misplaced_slots(self, objs: list[Obj], relation: tuple[str, int], k: int) -> list[tuple[int, int]]:
        """Free places for object k that break its stated relation and keep clear of later objects."""
        rel, ref = relation
        prev = Scene(tuple(objs[:k]), self.size)
        return [s for s in free_slots(prev) if rel not in relations(objs[k].moved(*s).box, objs[ref].box)
                and all(abs(s[0] - o.x) >= 16 or abs(s[1] - o.y) >= 16 for o in objs[k + 1:])]

    # ---- image–instruction alignment ---------------------------------------------------------------

    def alignment(self, rec: PromptRecord, rng: random.Random) -> Trajectory:
        """A clean trajectory in which, with probability `alignment_negative`, one step's sketch does
        not follow its (correct) instruction; the inspection names the conflict and `<refine>` fixes it."""
        objs, rels = self.target(rec, rng)
        n = len(objs)
        if rng.random() >= self.cfg.alignment_negative:
            return Trajectory(rec.text, self._clean_steps(rec, objs, rels, n), rec.to_json(),
                              "alignment", {"error": "none", "tag": rec.tag})
        k = rng.randrange(n)
        good = _state(objs[: k + 1], rels, self.size)
        obj = objs[k]
        # Only perturbations the canvas has room for, so the set never falls back to another source.
        kinds = ["wrong_color", "wrong_shape", "missing"]
        if free_slots(Scene(tuple(objs), self.size)):
            kinds.append("extra")
        if good.items[k].relation and self._misplaced_slots(objs, good.items[k].relation, k):
            kinds.append("wrong_position")
        kind = rng.choice(kinds)
        drawn = list(objs[: k + 1])
        taken = {(p.shape, p.color) for p in objs}
        if kind == "wrong_color":
            drawn[k] = replace(obj, color=rng.choice([c for c in COLORS if (obj.shape, c) not in taken]))
            fix = Edit("recolor", (obj.shape, drawn[k].color), new_color=obj.color)
        elif kind == "wrong_shape":
            drawn[k] = replace(obj, shape=rng.choice([s for s in SHAPES if s != obj.shape and (s, obj.color) not in taken]))
            fix = Edit("replace", (drawn[k].shape, obj.color), other=(obj.shape, obj.color))
        elif kind == "missing":
            drawn = drawn[:k]
            fix = _add_edit(good, k)
        elif kind == "extra":
            shape, color = rng.choice([(s, c) for s in SHAPES for c in COLORS if (s, c) not in taken])
            drawn.append(Obj(shape, color, *rng.choice(free_slots(Scene(tuple(objs), self.size)))))
            fix = Edit("remove", (shape, color))
        else:
            drawn[k] = obj.moved(*rng.choice(self._misplaced_slots(objs, good.items[k].relation, k)))
            e = _add_edit(good, k)
            fix = Edit("move", e.target, e.relation, e.other)
        wrong_image = render(Scene(tuple(drawn), self.size))
        conflicts = check_items(good.items, detect(wrong_image))
        step = Step(instruction_text(_add_edit(good, k)), good.description, wrong_image,
                    conflict_inspection(conflicts), wrong_image=True)
        step.refinements.append(Refinement(instruction_text(fix), render(good.scene),
                                           aligned_inspection(rec, good.scene)))
        steps = self._clean_steps(rec, objs, rels, k) + [step]
        for i in range(k + 1, n):
            s = _state(objs[: i + 1], rels, self.size)
            steps.append(Step(instruction_text(_add_edit(s, i)), s.description, render(s.scene),
                              aligned_inspection(rec, s.scene)))
        return Trajectory(rec.text, steps, rec.to_json(), "alignment", {"error": kind, "tag": rec.tag})
