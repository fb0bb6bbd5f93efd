"""Benchmark: which final reward holds up under a judge's mistakes (issue 26 item 2). Not a test
(it rolls out a few hundred trajectories); run it by hand:

    OMP_NUM_THREADS=1 python benchmarks/robust_reward.py [--prompts 32] [--generations 8] [--seeds 3]

The base policy rolls out GRPO's groups (process mode, its own sampled verdicts, the main job's
rollout settings) on training prompts; the final reward of every trajectory is then computed with
the exact judge (GenEval's rule: the reference) and with the exact judge asked as any other judge is
and the stand-in VLM judge (`strong`, `typical`, several seeds), once holistic (one verdict on the
last step), as one question about the finished picture against the whole prompt (as an eval image is
asked), from atomic questions (selfplay/questions.py) answered yes or no, and from the same
questions graded by the judge's P(yes) (its token log-probabilities, `judge.logprobs`). What GRPO
uses is the order within a group, so the table gives, over the pairs of a group whose exact rewards
differ, the share the judge's reward orders the same way (a tie counts half), and the correlation of
group-centred rewards (the advantages) with the exact ones. "recovered" is the share of what the
holistic reward loses against the exact judge that the questions win back. With `--question-judge
DIR` a judge copy of the model (`selfplay fit-judge`) answers the same questions, graded by its
P(yes): the model's own understanding set against the stand-in VLM judges on the same groups (issue
27). A second table does the same for GRPO's whole reward under each stand-in judge (questions
final, yes/no and graded): each component alone and weighted sums, against the exact final reward. A
third gives GRPO's advantages as `train.grpo.scale_rewards` makes them (each group's std, or the
batch's), with the shipped weights and without the inspection component, against the exact centred
final reward: how much a group whose spread is only the judge's mistakes weighs. A fourth sets the
step credit (refine's steps left wrong, within groups; each verdict word's credit, over states)
against the exact judge's, with the stand-in's verdicts as labels and with its P(conflict)
(`judge.graded_steps`). With `--votes`, a table of k rephrasings of each question averaged, under a
stand-in whose rephrasings repeat the original question's mistake with chance rho.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import statistics
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")


def pair_order(groups: list[list[float]], exact: list[list[float]]) -> float:
    """Over pairs within a group whose exact rewards differ: the share ordered the same way."""
    same = total = 0.0
    for got, ref in zip(groups, exact):
        for i in range(len(ref)):
            for j in range(i + 1, len(ref)):
                if ref[i] == ref[j]:
                    continue
                total += 1
                d = (got[i] - got[j]) * (ref[i] - ref[j])
                same += 1.0 if d > 0 else 0.5 if d == 0 else 0.0
    return same / total if total else float("nan")


def advantage_correlation(groups: list[list[float]], exact: list[list[float]]) -> float:
    """Pearson correlation of group-centred rewards with group-centred exact rewards."""
    xs, ys = [], []
    for got, ref in zip(groups, exact):
        mg, mr = statistics.fmean(got), statistics.fmean(ref)
        xs += [g - mg for g in got]
        ys += [r - mr for r in ref]
    return statistics.correlation(xs, ys)


def scaled_advantages(groups: list[list[float]], scale: str) -> list[list[float]]:
    """GRPO's advantages as TRL computes them: group-centred rewards divided by the group's std
    (`scale_rewards: group`), by the whole batch's (`batch`), or left as they are (`none`)."""
    centred = [[g - statistics.fmean(got) for g in got] for got in groups]
    if scale == "none":
        return centred
    if scale == "batch":
        sd = statistics.stdev([x for got in groups for x in got]) + 1e-4
        return [[c / sd for c in got] for got in centred]
    return [[c / (statistics.stdev(got) + 1e-4) for c in cs] for got, cs in zip(groups, centred)]


def votes_table(trajectories: list, exact: list[list[float]], grouped, rows: list[dict], seeds: int) -> None:
    """Each atomic question asked k ways, its graded answer the mean of the k P(yes). A VLM's
    mistakes correlate across rephrasings (the same picture is hard whichever way it is asked);
    the stand-in's draws are a hash of the question's text, so here a rephrasing repeats the
    original question's draw with chance rho and draws afresh otherwise (rho 0: independent asks,
    the best votes can do)."""
    from judges.evaluate import REWORDINGS
    from judges.vlm import VLMJudge, load_profile
    from selfplay.questions import question_contexts, question_score
    from strokes.records import PromptRecord

    asked_as = ("{}", *REWORDINGS)  # as written, then reworded (`selfplay judge-eval --rephrase`)

    class Rephrased(VLMJudge):
        def __init__(self, profile, seed: int, rho: float) -> None:
            super().__init__(profile, seed, graded=True)
            self.rho = rho

        def _draw(self, ctx, question: str) -> float:
            original = PromptRecord.from_json(ctx.record).text
            if ctx.prompt != original and super()._draw(ctx, "repeats " + question) < self.rho:
                return super()._draw(dataclasses.replace(ctx, prompt=original), question)
            return super()._draw(ctx, question)

    usable = [k for k, t in enumerate(trajectories) if t.steps and t.record is not None and "failed" not in t.meta]
    asked = {k: question_contexts(trajectories[k]) for k in usable}

    def voted(judge, k: int) -> list[float]:
        contexts = [dataclasses.replace(c, prompt=asked_as[r].format(c.prompt))
                    for i in usable for c in asked[i] for r in range(k)]
        p_yes = iter(1.0 - p for _, p in judge.judge_graded(contexts))
        out = [0.0] * len(trajectories)
        for i in usable:
            answers = [statistics.fmean(next(p_yes) for _ in range(k)) for _ in asked[i]]
            out[i] = question_score(PromptRecord.from_json(trajectories[i].record), answers)
        return out

    print("\nk rephrasings of each question, P(yes) averaged: pair order / advantage r / recovered (vs holistic)")
    for profile in ("strong", "typical"):
        holistic = next(r["pair order"] for r in rows if r["judge"] == profile and r["final reward"] == "holistic")
        for rho in (0.0, 0.5, 0.8):
            cells = []
            for k in (1, 3, 5):
                got = [grouped(voted(Rephrased(load_profile(profile), seed, rho), k)) for seed in range(seeds)]
                order = statistics.fmean(pair_order(g, exact) for g in got)
                r = statistics.fmean(advantage_correlation(g, exact) for g in got)
                cells.append(f"k={k} {order:.3f} / {r:.3f} / {100 * (order - holistic) / (1 - holistic):.0f}%")
            print(f"{profile:8} rho {rho:.1f}  " + "; ".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/shapeworld.yaml")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--generations", type=int, default=8)
    parser.add_argument("--seeds", type=int, default=3, help="stand-in judge seeds per profile")
    parser.add_argument("--json", default="", help="also write the table's numbers here")
    parser.add_argument("--inspector", action="append", default=[], metavar="DIR",
                        help="a fitted attention head to add to the second table (repeatable)")
    parser.add_argument("--votes", action="store_true",
                        help="add a table of k rephrasings of each question, their P(yes) averaged, under a "
                             "stand-in whose rephrasings repeat the original's mistake with chance rho")
    parser.add_argument("--question-judge", action="append", default=[], metavar="DIR",
                        help="a judge copy (`selfplay fit-judge`) to add to the first table, its answers graded "
                             "(repeatable)")
    args = parser.parse_args()

    import torch

    from judges import OracleJudge
    from judges.vlm import VLMJudge, load_profile
    from rollout import Engine
    from selfplay.config import load_config
    from selfplay.evaluation import sampled_verdicts
    from selfplay.grpo import grpo_prompts
    from selfplay.inspector import Inspector
    from selfplay.question_judge import load_judge_copy
    from selfplay.rewards import judge_rollouts, reward_functions, verdict_credit
    from selfplay.self_reading import TrajectoryReader
    from selfplay.world import make_world
    from strokes.model.policy import Policy
    from strokes.records import PromptRecord
    from strokes.verdict import StepContext

    torch.set_num_threads(1)
    cfg = load_config(args.config)
    world = make_world(cfg)
    prompts = random.Random(0).sample(grpo_prompts(cfg, 1), args.prompts)  # the round's tasks, mixed
    records = [PromptRecord.from_json(json.loads(p)) for p in prompts for _ in range(args.generations)]
    engine = Engine(Policy.from_pretrained(Path(cfg.loop.base_checkpoint)),
                    dataclasses.replace(sampled_verdicts(cfg.rollout), mode="process", actors=0))
    t0 = time.perf_counter()
    trajectories = [s.trajectory for s in engine.sample(records, seed=7)]
    rollout_s = time.perf_counter() - t0

    def grouped(values: list[float]) -> list[list[float]]:
        g = args.generations
        return [values[i: i + g] for i in range(0, len(values), g)]

    def finals(judged) -> list[float]:
        return [0.0 if j.final is None else j.final_score if j.final_score is not None else float(j.final)
                for j in judged]

    def picture(judge) -> list[float]:
        """One holistic question about the finished picture against the whole prompt (as an eval
        image is asked): what the atomic questions are measured against, apart from the step."""
        contexts = [StepContext(t.prompt, "", PromptRecord.from_json(t.record).text, t.final_image, t.record)
                    for t in trajectories]
        return [0.0 if not t.steps or "failed" in t.meta or v is None else float(v.aligned)
                for t, v in zip(trajectories, judge.judge(contexts))]

    def rewards(judge, kind: str) -> list[float]:
        if kind == "picture":
            return picture(judge)
        if kind == "both":  # the questions' share, counted only when the whole-picture question agrees
            return [q * w for q, w in zip(rewards(judge, "questions"), picture(judge))]
        return finals(judge_rollouts(trajectories, judge, None, kind in ("questions", "graded")))

    exact = grouped(finals(judge_rollouts(trajectories, OracleJudge(), world.is_correct)))
    rows = []
    tasks = [PromptRecord.from_json(t.record).tag for t in trajectories][:: args.generations]
    own = {f"own:{Path(folder).name}": load_judge_copy(folder, world) for folder in args.question_judge}
    for profile in ("exact", "strong", "typical", *own):
        for kind in ("graded",) if profile in own else ("holistic", "picture", "questions", "graded", "both"):
            orders, corrs, secs, per_task = [], [], [], {}
            for seed in range(1 if profile == "exact" or profile in own else args.seeds):
                judge = (OracleJudge() if profile == "exact" else own[profile] if profile in own
                         else VLMJudge(load_profile(profile), seed, kind == "graded"))
                t1 = time.perf_counter()
                got = grouped(rewards(judge, kind))
                secs.append(time.perf_counter() - t1)
                orders.append(pair_order(got, exact))
                corrs.append(advantage_correlation(got, exact))
                for task in sorted(set(tasks)):
                    mine = [k for k, t in enumerate(tasks) if t == task]
                    per_task.setdefault(task, []).append(pair_order([got[k] for k in mine], [exact[k] for k in mine]))
            rows.append({"judge": profile, "final reward": kind,
                         "pair order": statistics.fmean(orders), "pair order sd": statistics.pstdev(orders),
                         "advantage r": statistics.fmean(corrs), "judge s": statistics.fmean(secs),
                         "per task": {t: statistics.fmean(v) for t, v in per_task.items()}})
    right = sum(x for g in exact for x in g)
    print(f"{len(trajectories)} trajectories ({args.prompts} prompts x {args.generations}), rolled out in "
          f"{rollout_s:.0f} s; exact final right: {right:.0f}; seeds per judge: {args.seeds}")
    names = sorted(set(tasks))
    print(f"{'judge':8} {'final reward':13} {'pair order':>16} {'advantage r':>12} {'recovered':>10} "
          + " ".join(f"{t:>11}" for t in names))
    for row in rows:
        holistic = next((r for r in rows if r["judge"] == row["judge"] and r["final reward"] == "holistic"), row)
        lost = 1.0 - holistic["pair order"]
        rec = "" if row is holistic or lost <= 0 else f"{100 * (row['pair order'] - holistic['pair order']) / lost:.0f}%"
        print(f"{row['judge']:8} {row['final reward']:13} {row['pair order']:10.3f} ± {row['pair order sd']:.3f} "
              f"{row['advantage r']:12.3f} {rec:>10} " + " ".join(f"{row['per task'][t]:11.3f}" for t in names))
    # the whole GRPO reward: its components under each stand-in judge, alone and summed with weights
    prompts_of = [t.prompt for t in trajectories]
    weightings = {"final alone": {"final": 1.0}, "inspection alone": {"inspection": 1.0},
                  "refine alone": {"refine": 1.0}, "shipped weights": dict(cfg.train.grpo.reward_weights),
                  "no inspection": {**cfg.train.grpo.reward_weights, "inspection": 0.0},
                  "refine x2": {**cfg.train.grpo.reward_weights, "refine": 2 * cfg.train.grpo.reward_weights.get("refine", 0)}}

    def components(judged) -> dict[str, list]:
        return {k: f(prompts=prompts_of, completions=None, judged=judged) for k, f in reward_functions().items()}

    def summed(parts: dict[str, list], weights: dict) -> list[float]:
        return [sum(w * (parts[k][i] or 0.0) for k, w in weights.items() if k in parts) for i in range(len(trajectories))]

    def cell(name: str, parts: list[dict], weights: dict) -> str:
        """One weighting's advantage r against the exact final reward, mean ± sd over judge seeds."""
        rs = [advantage_correlation(grouped(summed(p, weights)), exact) for p in parts]
        return f"{name} {statistics.fmean(rs):.3f} ± {statistics.pstdev(rs):.3f}"

    heads = {}  # each head's graded final reward: 1 - its P(conflict) of the finished picture
    for folder in args.inspector:
        reader = TrajectoryReader.with_inspector(Inspector.load(folder), graded=True)
        heads[Path(folder).name] = finals(judge_rollouts(trajectories, reader))
        print(f"head {Path(folder).name}: final reward alone, advantage r "
              f"{advantage_correlation(grouped(heads[Path(folder).name]), exact):.3f}")

    print("\nGRPO's whole reward (questions final) against the exact final reward: advantage r, mean ± sd over seeds")
    for profile, graded in (("strong", False), ("strong", True), ("typical", False), ("typical", True)):
        parts = [components(judge_rollouts(trajectories, VLMJudge(load_profile(profile), seed, graded), None, True))
                 for seed in range(args.seeds)]
        cells = [cell(name, parts, weights) for name, weights in weightings.items()]
        for name, head in heads.items():  # the final reward: the judge's questions averaged with the head's
            mixed = [{**p, "final": [0.5 * ((q or 0.0) + h) for q, h in zip(p["final"], head)]} for p in parts]
            cells += [cell(f"questions+{name}", mixed, {"final": 1.0}),
                      cell(f"shipped, final questions+{name}", mixed, dict(cfg.train.grpo.reward_weights))]
        print(f"{profile + (', graded' if graded else ''):17} " + "; ".join(cells))
    # how GRPO scales the advantages decides how much a group whose spread is only the judge's
    # mistakes weighs: correlation of each scaling's advantages with the exact centred final reward
    print("\nGRPO's advantages against the exact centred final reward, by train.grpo.scale_rewards")
    truth = [x for got in exact for x in [g - statistics.fmean(got) for g in got]]
    for profile in ("exact", "strong", "typical"):
        judges = [OracleJudge()] if profile == "exact" else [VLMJudge(load_profile(profile), s, False) for s in range(args.seeds)]
        parts = [components(judge_rollouts(trajectories, j, world.is_correct if profile == "exact" else None,
                                           profile != "exact")) for j in judges]
        row = []
        for name in ("shipped weights", "no inspection"):
            for scale in ("group", "batch"):
                rs = [statistics.correlation([x for got in scaled_advantages(grouped(summed(p, weightings[name])), scale)
                                              for x in got], truth) for p in parts]
                row.append(f"{name}, {scale} {statistics.fmean(rs):.3f} ± {statistics.pstdev(rs):.3f}")
        print(f"{profile:8} " + "; ".join(row))
    if args.votes:
        votes_table(trajectories, exact, grouped, rows, args.seeds)
    # the step credit itself (refine's steps left wrong, each verdict word's credit) against the exact
    # judge's, from the stand-in's verdicts or from its P(conflict) per state (`judge.graded_steps`)
    print("\nGRPO's step credit against the exact judge's: refine's advantage r; verdict credit r over states")
    exact_steps = judge_rollouts(trajectories, OracleJudge(), world.is_correct)

    def credit(judged) -> dict[tuple[int, int], float]:
        return {(k, n): verdict_credit(said, p) for k, j in enumerate(judged)
                for (n, _, said), p in zip(j.verdicts, j.labels)}

    truth_credit = credit(exact_steps)
    for profile in ("strong", "typical"):
        for graded_steps in (False, True):
            refine_r, credit_r = [], []
            for seed in range(args.seeds):
                judged = judge_rollouts(trajectories, VLMJudge(load_profile(profile), seed), None, True, graded_steps)
                refine_r.append(advantage_correlation(grouped([-j.left_wrong for j in judged]),
                                                      grouped([-j.left_wrong for j in exact_steps])))
                mine = credit(judged)
                both = sorted(set(mine) & set(truth_credit))
                credit_r.append(statistics.correlation([mine[k] for k in both], [truth_credit[k] for k in both]))
            print(f"{profile:8} {'graded steps' if graded_steps else 'verdict steps':13} refine "
                  f"{statistics.fmean(refine_r):.3f} ± {statistics.pstdev(refine_r):.3f}; verdict credit "
                  f"{statistics.fmean(credit_r):.3f} ± {statistics.pstdev(credit_r):.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "trajectories": len(trajectories),
                                               "rollout_s": rollout_s}, indent=2))


if __name__ == "__main__":
    main()
