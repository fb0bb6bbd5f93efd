"""`report.html`: one self-contained page (images embedded) that says how the run went.

It opens with a summary box (the policy the run ended with, the net change and whether it is
significant, wall time), a glossary and the run's metadata; then per-round accuracy (process vs
single-pass, and the control arm; ±1 SE everywhere), per-task plots, the gaps with
their standard errors, the own-sketch inspection table (ROC AUC on the validation split), judge statistics (conflicts found per kind, acceptance of corrections,
outcomes of the rollouts), a few trajectories of each GRPO round's last step with their rewards,
promotions, and trajectory strips of fixed prompts round by round.
"""

from __future__ import annotations

import base64
import html
import io
import json
import platform
import subprocess
import time
from pathlib import Path

import yaml

from judges import OracleJudge
from strokes.io import write_atomic
from strokes.trajectory import from_row, png_bytes, read_jsonl

from .inspect_stats import inspect_stats
from .run_dir import (CHECKPOINT, CONTROL_EVAL, CONTROL_VALIDATE, DATA, EVAL, STAGES, VALIDATE, RunDir,
                      read_scores)
from .stats import gap, significant
from .visualize import describe, strip_image


def _inspect(folder: Path) -> dict | None:
    """Inspect/Refine behaviour on the process-mode eval rollouts in `folder`, by the exact judge."""
    trajs = folder / "process" / "trajectories"
    if not trajs.exists():
        return None
    return inspect_stats(read_jsonl(trajs), OracleJudge()).to_json()


def _validation(folder: Path) -> dict | None:
    """The validation split's process score and the own-sketch inspection table, when measured."""
    if not (folder / "inspection.json").exists():
        return None
    return {"score": read_scores(folder)["process"], **json.loads((folder / "inspection.json").read_text())}


def collect(run_dir: Path, inspect: bool = False) -> dict:
    """Everything the report shows, as plain data (also used by tests); `inspect` adds the
    Inspect/Refine statistics of each eval (a few seconds per eval)."""
    run = RunDir(run_dir)
    rows = []
    for rnd in run.rounds():
        entry = {"round": rnd, "eval": run.scores(rnd, EVAL), "control": run.scores(rnd, CONTROL_EVAL)}
        if inspect:
            entry["inspect"] = {arm: _inspect(run.stage(rnd, s)) for arm, s in (("policy", EVAL), ("control", CONTROL_EVAL))}
        entry["validate"] = {arm: _validation(run.stage(rnd, s))
                             for arm, s in (("policy", VALIDATE), ("control", CONTROL_VALIDATE))}
        if (run.stage(rnd, DATA) / "summary.json").exists():
            entry["data"] = json.loads((run.stage(rnd, DATA) / "summary.json").read_text())
        curve = _grpo_curve(run.events(rnd, CHECKPOINT))
        if curve:
            entry["grpo"] = curve
        rows.append(entry)
    return {"rounds": rows, "promotions": run.state().promotions}


GRPO_KEYS = ("reward", "reward_std", "rewards/final/mean", "rewards/inspection/mean", "rewards/refine/mean",
             "rewards/steps/mean", "kl", "frac_reward_zero_std", "groups/any_right", "entropy")
"""What the report keeps of each GRPO log line (TRL's names; `groups/*` are ours)."""


def _grpo_curve(events: list[dict]) -> list[dict]:
    """A GRPO round's log lines (step and `GRPO_KEYS`), in step order; [] for an SFT round."""
    return [{"step": r["step"], **{k: r[k] for k in GRPO_KEYS if k in r}} for r in events
            if r.get("event") == "train" and "reward" in r]


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def _plots(data: dict) -> list[str]:
    """The report's figures as base64 PNGs: overall per round, per task per round, GRPO curves."""
    import matplotlib

    matplotlib.use("Agg")
    rounds = [r for r in data["rounds"] if r["eval"]]
    if not rounds:
        return []
    grpo = [r for r in data["rounds"] if r.get("grpo")]
    return [_overall_plot(rounds), _task_plot(rounds)] + ([_grpo_plot(grpo)] if grpo else [])


def _overall_plot(rounds: list[dict]) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    modes = sorted({m for r in rounds for m in r["eval"]})
    styles = {"process": "-o", "single_pass": "--s", "judge": ":^"}
    for arm, key in (("policy", "eval"), ("control", "control")):
        for mode in modes:
            style = styles.get(mode, "-.")
            xs = [r["round"] for r in rounds if mode in r[key]]
            if not xs:
                continue
            ys = [100 * r[key][mode]["overall"] for r in rounds if mode in r[key]]
            es = [100 * r[key][mode]["overall_se"] for r in rounds if mode in r[key]]
            control = arm == "control"  # hollow markers on dotted lines, apart from the policy's
            ax.errorbar(xs, ys, yerr=es, fmt=style[-1], linestyle=":" if control else style[:-1], capsize=3,
                        label=f"{arm} {mode}", mfc="none" if control else None, alpha=0.7 if control else 1.0)
    ax.set_xlabel("round")
    ax.set_ylabel("GenEval overall (%), ±1 SE")
    ax.set_xticks([r["round"] for r in rounds])
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _close(fig)


def _task_plot(rounds: list[dict]) -> str:
    import matplotlib.pyplot as plt

    modes = sorted({m for r in rounds for m in r["eval"]})
    fig, axes = plt.subplots(1, len(modes), figsize=(5 * len(modes), 3.4), squeeze=False)
    for ax, mode in zip(axes[0], modes):
        tasks = list(next(r["eval"][mode]["per_task"] for r in rounds if mode in r["eval"]))
        for t in tasks:
            xs = [r["round"] for r in rounds if mode in r["eval"]]
            ax.plot(xs, [100 * r["eval"][mode]["per_task"][t] for r in rounds if mode in r["eval"]], "-o", label=t)
        ax.set_title(f"{mode}: per-task accuracy (%)")
        ax.set_xlabel("round")
        ax.set_xticks([r["round"] for r in rounds])
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1))  # outside: it hid points
    return _close(fig)


GRPO_PANELS = (("reward (mean of the batch)", ("reward", "rewards/final/mean")),
               ("process reward components", ("rewards/inspection/mean", "rewards/refine/mean", "rewards/steps/mean")),
               ("KL to the round's start", ("kl",)))


def _grpo_plot(grpo: list[dict]) -> str:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(GRPO_PANELS), figsize=(11, 3.2))  # fits a 1100-px page
    for ax, (title, keys) in zip(axes, GRPO_PANELS):
        for r in grpo:
            steps = [x["step"] for x in r["grpo"]]
            for k in keys:
                ax.plot(steps, [float("nan") if x.get(k) is None else x[k] for x in r["grpo"]], label=f"round {r['round']} {k}")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("GRPO step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    return _close(fig)


def _close(fig) -> str:
    import matplotlib.pyplot as plt

    png = _png(fig)
    plt.close(fig)
    return png


def _table(headers: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _share(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def _auc(row: dict) -> str:
    if row.get("auc") is None:
        return "-"
    return f"{100 * row['auc']:.1f}" + (f" ± {100 * row['auc_se']:.1f}" if row.get("auc_se") is not None else "")


def _pct(s: dict) -> str:
    return f"{100 * s['overall']:.1f} ± {100 * s['overall_se']:.1f}"


GLOSSARY = """<h2>Glossary</h2><dl class="glossary">
<dt>process</dt><dd>The model draws step by step: plan (<code>&lt;ins&gt;</code>, <code>&lt;des&gt;</code>), sketch,
inspect its own sketch, refine it when the inspection finds a conflict.</dd>
<dt>single-pass</dt><dd>The same model draws the prompt in one image, with no plan, inspection or refinement.</dd>
<dt>control</dt><dd>A twin of each round's policy trained for the same number of steps on base data only; the
policy beating it means the round's critique data helped, not just more training.</dd>
<dt>promotion</dt><dd>A round's policy becomes the one the next round samples from unless its validation score
fell more than the tolerance below the current policy's.</dd>
</dl>"""


def _summary(run: RunDir, data: dict) -> str:
    """The box a reader sees first: the policy the run ended with, the net change of the process score
    since round 0 (points ± 1 SE, significant when |gap| > 2 SE) and the wall time."""
    state = run.state()
    items = [f"Current policy: round {state.policy_round}" + ("" if state.policy else " (no policy yet)")]
    evals = [r for r in data["rounds"] if "process" in r["eval"]]
    ended = next((r for r in evals if r["round"] == state.policy_round), None)
    if len(evals) > 1:
        if state.policy_round == 0:
            items.append("Net change: none — no round was promoted, so the run ends with round 0's policy")
        elif ended is not None:
            items.append(_change("Net change (the policy the run ended with)", ended, evals[0]))
        if evals[-1] is not ended:
            items.append(_change("Last round", evals[-1], evals[0]))
    elif evals:
        items.append(f"Process score at round 0: {_pct(evals[0]['eval']['process'])} % (no later round to compare)")
    seconds = sum(t for *_, t in _stage_times(run))
    items.append(f"Wall time: {seconds / 60:.1f} min over the stages")
    return '<div class="summary"><ul>' + "".join(f"<li>{html.escape(i)}</li>" for i in items) + "</ul></div>"


def _change(label: str, r: dict, r0: dict) -> str:
    """A round's process score against round 0's, in points ± 1 SE, and whether |gap| > 2 SE."""
    d, se = gap(r["eval"]["process"], r0["eval"]["process"])
    yes = significant(d, se)
    return (f"{label}: process score of round {r['round']} vs round 0 {100 * d:+.1f} ± {100 * se:.1f} points "
            f"({'significant' if yes else 'not significant'}: |gap| {'>' if yes else '≤'} 2 SE)")


def _stage_times(run: RunDir) -> list[tuple[int, str, float]]:
    """(round, stage, seconds) of every completed stage, from the stages' own events."""
    return [(e["round"], e["stage"], e["seconds"]) for rnd in run.rounds() for name in STAGES
            for e in run.events(rnd, name) if e.get("event") == "stage"]


def _metadata(run: RunDir) -> str:
    """Date, commit, seed, machine, wall time per stage and the config (collapsed): enough to tell two
    reports apart and to rerun one."""
    text = run.config.read_text() if run.config.exists() else ""
    seed = (yaml.safe_load(text) or {}).get("loop", {}).get("seed", "-")
    rows = [["date", time.strftime("%Y-%m-%d %H:%M", time.localtime())], ["git commit", _commit()],
            ["seed (loop.seed)", seed],
            ["machine", f"{platform.platform()}, {platform.machine()}, Python {platform.python_version()}"]]
    times = _table(["round", "stage", "seconds"], [list(t) for t in _stage_times(run)])
    return ("<h2>Run metadata</h2>" + _table(["what", "value"], rows) + "<details><summary>wall time per stage</summary>"
            + times + "</details><details><summary>config.yaml</summary><pre>" + html.escape(text)
            + "</pre></details>")


def _commit() -> str:
    """The code's git commit, when the package lives in a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def _strip(rnd: int, png: Path) -> str:
    """A trajectory strip with its alt text and, when its captions were saved, each frame's plan and
    inspection (flagged frames marked) and the exact judge's verdict on the final image."""
    prompt = png.stem.replace("_", " ")
    b64 = base64.b64encode(png.read_bytes()).decode()
    caps = json.loads(png.with_suffix(".json").read_text()) if png.with_suffix(".json").exists() else None
    verdict = ""
    if caps and caps["conflicts"] is not None:
        wrong = "; ".join(caps["conflicts"])
        verdict = f" ✗ final image wrong: {wrong}" if wrong else " ✓ final image right"
    frames = "".join(
        f'<li class="{"flagged" if f["flagged"] else ""}">step {f["step"]} {f["kind"]}: '
        f'<code>{html.escape(f["instruction"])}</code> — inspection: {html.escape(f["inspection"])}'
        f'{" ⚑ flagged" if f["flagged"] else ""}</li>' for f in (caps["frames"] if caps else []))
    return (f"<p><b>round {rnd}</b> — {html.escape(prompt)}{html.escape(verdict)}<br>"
            f'<img src="data:image/png;base64,{b64}" alt="round {rnd}: every visual state drawn for '
            f'{html.escape(prompt, quote=True)}, left to right"></p>'
            + (f'<ol class="frames">{frames}</ol>' if frames else ""))


def _accuracy(data: dict) -> list[str]:
    """The held-out accuracy table (every round, arm and mode) and the plots."""
    rows = [[r["round"], arm, mode, _pct(s)] + [f"{100 * v:.0f}" for v in s["per_task"].values()]
            for r in data["rounds"] for arm, key in (("policy", "eval"), ("control", "control"))
            for mode, s in r[key].items()]
    parts = []
    if rows:
        first = next(r for r in data["rounds"] if r["eval"])
        tasks = list(next(iter(first["eval"].values()))["per_task"])
        parts += ["<h2>Accuracy on the held-out suite (GenEval rules, %, ± 1 SE)</h2>",
                  _table(["round", "arm", "mode", "overall"] + tasks, rows)]
    alts = ["GenEval overall per round, policy and control arms, per eval mode, with ±1 SE error bars",
            "Per-task accuracy per round, one panel per eval mode",
            "GRPO rounds: reward, its process components and the KL to the round's starting policy, per step"]
    return parts + [f'<img src="data:image/png;base64,{p}" alt="{alt}">' for p, alt in zip(_plots(data), alts)]


def _gaps(data: dict) -> list[str]:
    """The last round against round 0 and against its control, and process against single pass."""
    def row(label: str, a: dict, b: dict) -> list:
        d, se = gap(a, b)
        return [label, f"{100 * d:+.1f} ± {100 * se:.1f}", f"{d / se:.1f}" if se else "-"]

    rows = []
    evals = [r for r in data["rounds"] if "process" in r["eval"]]
    if evals:
        r0, last = evals[0], evals[-1]
        rows.append(row(f"round {last['round']} vs round 0 (process)", last["eval"]["process"], r0["eval"]["process"]))
        for r in ([r0, last] if last is not r0 else [r0]):  # did the rounds change what the process adds?
            if "single_pass" in r["eval"]:
                rows.append(row(f"process vs single-pass (round {r['round']})", r["eval"]["process"],
                                r["eval"]["single_pass"]))
        if "process" in last["control"]:
            rows.append(row(f"round {last['round']} vs control (process)", last["eval"]["process"],
                            last["control"]["process"]))
    return ["<h2>Gaps (overall, points ± SE)</h2>", _table(["comparison", "gap", "gap / SE"], rows)]


def _inspection(data: dict) -> list[str]:
    """The model's Inspect and Refine on the eval rollouts, and its own-sketch AUC on validation."""
    parts = []
    inspect_rows = [[r["round"], arm, f"{st['wrong']} ({st['plan_errors']} plan errors)", _share(st["recall"]),
                     f"{_share(st['plan_recall'])} / {_share(st['image_recall'])}",
                     _share(st["false_alarm_rate"]), _share(st["fix_rate"])]
                    for r in data["rounds"] for arm, st in r.get("inspect", {}).items() if st]
    if inspect_rows:
        parts.append("<h2>The model's own Inspect and Refine on the eval rollouts (process mode, exact judge)</h2>")
        parts.append(_table(["round", "arm", "wrong sketches", "flagged by the model (recall)", "recall: plan / image errors",
                             "right sketches flagged (false alarms)", "flagged wrong ones fixed by its refinement"],
                            inspect_rows))
    auc_rows = [[r["round"], arm, _pct(v["score"]), f"{v['table']['all']['states']} ({v['table']['all']['wrong']} wrong)",
                 _auc(v["table"]["all"]), _auc(v["table"].get("within_task", {})), _auc(v["table"]["plan"]),
                 _auc(v["table"]["image"]), _auc(v["table"]["refined"]),
                 _share(v["table"]["all"].get("recall@0.05")), _share(v["table"]["all"].get("recall@0.10"))]
                for r in data["rounds"] for arm, v in r.get("validate", {}).items() if v]
    if auc_rows:
        parts.append("<h2>Own-sketch inspection on the validation split (exact judge; promotion compares its score)</h2>")
        parts.append("<p>Every visual state the model drew (first sketches and refined states) is labelled by the "
                     "exact judge and scored by the model's own P(conflict) at its inspection. ROC AUC 50 is "
                     "chance, 100 perfect; plan errors contradict the prompt in <code>&lt;ins&gt;/&lt;des&gt;</code>, "
                     "image errors misdraw a right plan.</p>")
        parts.append(_table(["round", "arm", "validation process (%)", "states", "ROC AUC, all (± 1 SE)",
                             "within task", "plan errors",
                             "image errors", "refined states", "recall @5% false alarms", "recall @10% false alarms"],
                            auc_rows))
    return parts


GRPO_COLUMNS = ("reward", "rewards/final/mean", "rewards/inspection/mean", "rewards/refine/mean",
                "rewards/steps/mean", "groups/any_right", "frac_reward_zero_std")


def _grpo(data: dict) -> list[str]:
    """Each GRPO round's first fifth of steps against its last fifth."""
    def mean(k: str, part: list[dict]) -> str:
        xs = [x[k] for x in part if x.get(k) is not None]  # None: the judge gave no verdict that step
        return f"{sum(xs) / len(xs):.3f}" if xs else "-"

    rows = []
    for r in data["rounds"]:
        c = r.get("grpo")
        if c:
            head, tail = c[: max(1, len(c) // 5)], c[-max(1, len(c) // 5):]
            rows.append([r["round"], c[-1]["step"]] + [f"{mean(k, head)} → {mean(k, tail)}" for k in GRPO_COLUMNS]
                        + [mean("kl", tail)])
    if not rows:
        return []
    return ["<h2>GRPO rounds (first fifth of the steps → last fifth)</h2>",
            _table(["round", "steps", "reward", "final right", "inspection", "steps left wrong (−)", "extra steps (−)",
                    "groups with a right one", "groups with one reward (no signal)", "KL at the end"], rows)]


SHOWN_TRAJECTORIES = 3
"""GRPO trajectories the report shows of each round's last step: the best rewarded two and the worst."""


def _grpo_trajectories(run: RunDir) -> list[str]:
    """A few trajectories of each GRPO round's last step, as the reward saw them: the strip, the text
    the model wrote and each reward component, so a reward the model games shows in what it draws."""
    text = run.config.read_text() if run.config.exists() else ""
    weights = (yaml.safe_load(text) or {}).get("train", {}).get("grpo", {}).get("reward_weights") or {}

    def total(row: dict) -> float:
        return sum(weights.get(k, 1.0) * (v or 0.0) for k, v in row["rewards"].items())

    parts = []
    for rnd in run.rounds():
        kept = run.step_trajectories(rnd)
        if not kept:
            continue
        step = max(kept)
        ranked = sorted(kept[step], key=total, reverse=True)
        shown = ranked[: SHOWN_TRAJECTORIES - 1] + ranked[SHOWN_TRAJECTORIES - 1:][-1:]
        parts.append(f"<h3>Round {rnd}, step {step} ({len(kept[step])} of its trajectories kept in "
                     f"round_{rnd:03d}/checkpoint/trajectories/)</h3>")
        for row in shown:
            traj = from_row({**row, "images": [base64.b64decode(x) for x in row["images"]]})
            png = base64.b64encode(png_bytes(strip_image(traj))).decode()
            rewards = ", ".join(f"{k} {v:+.2f}" if v is not None else f"{k} -" for k, v in row["rewards"].items())
            parts.append(f"<p><b>reward {total(row):+.2f}</b> ({html.escape(rewards)}), group {row['group']}<br>"
                         f'<img src="data:image/png;base64,{png}" alt="GRPO round {rnd} step {step}: every visual '
                         f'state drawn for {html.escape(traj.prompt, quote=True)}, left to right"></p>'
                         f"<pre>{html.escape(describe(traj, header=False))}</pre>")
    if not parts:
        return []
    return ["<h2>GRPO trajectories as the reward saw them (each round's last step)</h2>", *parts]


def _judge(data: dict) -> list[str]:
    """What the judge found in each SFT round's rollouts and what became training data."""
    rows = [[r["round"], d["critique"], d["replay"], ", ".join(f"{k} {v}" for k, v in sorted(d["outcomes"].items())),
             ", ".join(f"{k} {v}" for k, v in sorted(d["conflicts"].items())),
             "-" if d["acceptance_rate"] is None else f"{100 * d['acceptance_rate']:.0f}%"]
            for r in data["rounds"] if (d := r.get("data")) and "critique" in d]
    if not rows:
        return []
    return ["<h2>Judge and critique data per round</h2>",
            _table(["round", "critique traces", "replay rows", "rollout outcomes",
                    "conflicts found (source:kind)", "corrections accepted"], rows)]


def _training_judge(run: RunDir) -> list[str]:
    """Each GRPO round's judge: what it cost (requests, tokens, verdicts; its time against the
    rollouts') and, when it is not the exact judge, how often it agreed with the exact one on the
    round's own rollouts, per task: the mistakes it missed and the false alarms it raised are what
    its errors cost the rewards."""
    cost_rows, agree_rows = [], []
    for rnd in run.rounds():
        path = run.stage(rnd, CHECKPOINT) / "train_summary.json"
        j = json.loads(path.read_text()).get("judge") if path.is_file() else None
        if not j or "judge_seconds" not in j:
            continue
        steps = max(1, j["steps"])
        ratio = "-" if j["judge_to_rollout"] is None else f"{j['judge_to_rollout']:.2f}"
        cost_rows.append([rnd, j["steps"], f"{j['judge_requests']:.0f}", f"{j['judge_tokens']:.0f}",
                          f"{j['judge_verdicts']:.0f}", f"{j['judge_requests'] / steps:.1f}",
                          f"{j['judge_tokens'] / steps:.0f}", f"{j['judge_seconds'] / steps:.2f}",
                          f"{j['rollout_seconds'] / steps:.2f}", ratio,
                          sum(j.get("counters", {}).get(k, 0) for k in ("failed", "unparsable", "over_budget"))])
        for task, c in (j.get("agreement") or {}).items():
            def pct(num: str, den: str) -> str:
                return f"{100 * c.get(num, 0) / c[den]:.1f}" if c.get(den) else "-"

            agree_rows.append([rnd, task, c.get("states", 0), pct("states_agree", "states"),
                               f"{c.get('missed', 0)} of {c.get('reference_wrong', 0)}",
                               f"{c.get('false_alarms', 0)} of {c.get('states', 0) - c.get('reference_wrong', 0)}",
                               c.get("finals", 0), pct("finals_agree", "finals"), pct("finals_judge_right", "finals"),
                               pct("finals_exact_right", "finals")])
    parts = []
    if cost_rows:
        parts += ["<h2>The training judge's cost per GRPO round</h2>",
                  _table(["round", "steps", "requests", "tokens", "verdicts", "requests / step", "tokens / step",
                          "judge s / step", "rollout s / step", "judge / rollout time", "unjudged"], cost_rows)]
    if agree_rows:
        parts += ["<h2>The training judge against the exact judge on the round's own rollouts</h2>",
                  "<p>Every visual state and final image the training judge labelled, labelled again by the exact "
                  "judge. Missed: states the exact judge calls wrong that the training judge passed (a mistake "
                  "rewarded); false alarms: right states it flagged (a right step penalised). The last two columns "
                  "are the shares of final images each judge calls right: a policy that learns to please its judge "
                  "(reward hacking) raises the first without the second.</p>",
                  _table(["round", "task", "states", "agree (%)", "missed", "false alarms", "final images",
                          "final agree (%)", "final right: training judge (%)", "final right: exact judge (%)"],
                         agree_rows)]
    return parts


def _promotions(data: dict) -> list[str]:
    if not data["promotions"]:
        return []
    return ["<h2>Promotions</h2>",
            _table(["round", "promoted", "new (validation %)", "current (validation %)", "tolerance (points)"],
                   [[k, v["promoted"], f"{100 * v['new']:.1f}", f"{100 * v['current']:.1f}", f"{100 * v['tolerance']:.1f}"]
                    for k, v in sorted(data["promotions"].items(), key=lambda kv: int(kv[0]))])]


def _strips(run: RunDir) -> list[str]:
    strips = [_strip(rnd, p) for rnd in run.rounds()
              for p in sorted((run.stage(rnd, EVAL) / "strips").glob("*.png"))]
    return ["<h2>Trajectory strips of fixed prompts, round by round</h2>", *strips] if strips else []


STYLE = ("<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}img{max-width:100%}"
         "table{border-collapse:collapse;"
         "margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}"
         ".summary{border:2px solid #447;background:#f3f5fb;padding:.5em 1em;margin:1em 0}"
         ".flagged{color:#b00}ol.frames{font-size:13px}</style>")


def write_report(run_dir: Path) -> Path:
    """`run_dir/report.html`: every section above, in reading order, one self-contained page."""
    run = RunDir(run_dir)
    data = collect(run.path, inspect=True)
    parts = [f"<h1>strokes run: {html.escape(run.path.name)}</h1>", _summary(run, data), GLOSSARY, _metadata(run),
             *_accuracy(data), *_gaps(data), *_inspection(data), *_grpo(data), *_grpo_trajectories(run), *_training_judge(run), *_judge(data),
             *_promotions(data),
             *_strips(run)]
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>strokes report</title>{STYLE}</head><body>"
    page += "\n".join(parts) + "</body></html>"
    return write_atomic(run.report, page)
