"""`report.html`: one self-contained page (images embedded) that says how the run went.

Per-round accuracy (process vs single-pass, and the control arm), per-task plots, the gaps with
their standard errors, the own-sketch inspection table (ROC AUC on the validation split), judge statistics (conflicts found per kind, acceptance of corrections,
outcomes of the rollouts), promotions, and trajectory strips of fixed prompts round by round.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path

from judges import OracleJudge
from strokes.io import write_atomic
from strokes.trajectory import read_jsonl

from .inspect_stats import inspect_stats
from .run_state import RunState


def _rounds(run_dir: Path) -> list[Path]:
    return sorted(p for p in run_dir.glob("round_[0-9][0-9][0-9]") if p.is_dir())


def _scores(folder: Path) -> dict:
    f = folder / "scores.json"
    return json.loads(f.read_text()) if f.exists() else {}


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
    return {"score": _scores(folder)["process"], **json.loads((folder / "inspection.json").read_text())}


def collect(run_dir: Path, inspect: bool = False) -> dict:
    """Everything the report shows, as plain data (also used by tests and `ablate`); `inspect` adds
    the Inspect/Refine statistics of each eval (a few seconds per eval)."""
    rows = []
    for rd in _rounds(run_dir):
        rnd = int(rd.name.split("_")[1])
        entry = {"round": rnd, "eval": _scores(rd / "eval"), "control": _scores(rd / "control_eval")}
        if inspect:
            entry["inspect"] = {arm: _inspect(rd / f) for arm, f in (("policy", "eval"), ("control", "control_eval"))}
        entry["validate"] = {arm: _validation(rd / folder)
                             for arm, folder in (("policy", "validate"), ("control", "control_validate"))}
        if (rd / "data" / "summary.json").exists():
            entry["data"] = json.loads((rd / "data" / "summary.json").read_text())
        rows.append(entry)
    return {"rounds": rows, "promotions": RunState.load(run_dir).promotions}


def gap(a: dict, b: dict) -> tuple[float, float]:
    """Difference of two overall scores and its standard error (independent samples)."""
    return a["overall"] - b["overall"], math.sqrt(a["overall_se"] ** 2 + b["overall_se"] ** 2)


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def _plots(data: dict) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [r for r in data["rounds"] if r["eval"]]
    if not rounds:
        return []
    out = []
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
            es = [200 * r[key][mode]["overall_se"] for r in rounds if mode in r[key]]
            ax.errorbar(xs, ys, yerr=es, fmt=style, capsize=3, label=f"{arm} {mode}",
                        alpha=1.0 if arm == "policy" else 0.6)
    ax.set_xlabel("round")
    ax.set_ylabel("GenEval overall (%), ±2 SE")
    ax.set_xticks([r["round"] for r in rounds])
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    out.append(_png(fig))
    plt.close(fig)
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
    axes[0][-1].legend(fontsize=7, loc="lower right")
    out.append(_png(fig))
    plt.close(fig)
    return out


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


def write_report(run_dir: Path) -> Path:
    run_dir = Path(run_dir)
    data = collect(run_dir, inspect=True)
    parts = [f"<h1>strokes run: {html.escape(run_dir.name)}</h1>"]
    rows = []
    for r in data["rounds"]:
        for arm, key in (("policy", "eval"), ("control", "control")):
            for mode, s in r[key].items():
                rows.append([r["round"], arm, mode, _pct(s)] + [f"{100 * v:.0f}" for v in s["per_task"].values()])
    if rows:
        first = next(r for r in data["rounds"] if r["eval"])
        tasks = list(next(iter(first["eval"].values()))["per_task"])
        parts.append("<h2>Accuracy on the held-out suite (GenEval rules, %, ± 1 SE)</h2>")
        parts.append(_table(["round", "arm", "mode", "overall"] + tasks, rows))
    parts += [f'<img src="data:image/png;base64,{p}">' for p in _plots(data)]
    parts.append("<h2>Gaps (overall, points ± SE)</h2>")
    gaps = []
    evals = [r for r in data["rounds"] if "process" in r["eval"]]
    if evals:
        r0, last = evals[0], evals[-1]
        d, se = gap(last["eval"]["process"], r0["eval"]["process"])
        gaps.append([f"round {last['round']} vs round 0 (process)", f"{100 * d:+.1f} ± {100 * se:.1f}", f"{d / se:.1f}" if se else "-"])
        if "single_pass" in last["eval"]:
            d, se = gap(last["eval"]["process"], last["eval"]["single_pass"])
            gaps.append([f"process vs single-pass (round {last['round']})", f"{100 * d:+.1f} ± {100 * se:.1f}", f"{d / se:.1f}" if se else "-"])
        if "process" in last["control"]:
            d, se = gap(last["eval"]["process"], last["control"]["process"])
            gaps.append([f"round {last['round']} vs control (process)", f"{100 * d:+.1f} ± {100 * se:.1f}", f"{d / se:.1f}" if se else "-"])
    parts.append(_table(["comparison", "gap", "gap / SE"], gaps))
    inspect_rows = [[r["round"], arm, f"{st['wrong']} ({st['plan_errors']} plan errors)", _share(st["recall"]),
                     f"{_share(st['plan_recall'])} / {_share(st['image_recall'])}",
                     _share(st["false_alarm_rate"]), _share(st["fix_rate"])]
                    for r in data["rounds"] for arm, st in r.get("inspect", {}).items() if st]
    if inspect_rows:
        parts.append("<h2>The model's own Inspect and Refine on the eval rollouts (process mode, exact judge)</h2>")
        parts.append(_table(["round", "arm", "wrong sketches", "flagged by the model (recall)", "recall: plan / image errors",
                             "right sketches flagged (false alarms)", "flagged wrong ones fixed by its refinement"],
                            inspect_rows))
    auc_rows = []
    for r in data["rounds"]:
        for arm, v in r.get("validate", {}).items():
            if v:
                t = v["table"]
                auc_rows.append([r["round"], arm, _pct(v["score"]), f"{t['all']['states']} ({t['all']['wrong']} wrong)",
                                 _auc(t["all"]), _auc(t.get("within_task", {})), _auc(t["plan"]), _auc(t["image"]),
                                 _auc(t["refined"]),
                                 _share(t["all"].get("recall@0.05")), _share(t["all"].get("recall@0.10"))])
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
    judge_rows = []
    for r in data["rounds"]:
        d = r.get("data")
        if d:
            judge_rows.append([r["round"], d["critique"], d["replay"],
                               ", ".join(f"{k} {v}" for k, v in sorted(d["outcomes"].items())),
                               ", ".join(f"{k} {v}" for k, v in sorted(d["conflicts"].items())),
                               "-" if d["acceptance_rate"] is None else f"{100 * d['acceptance_rate']:.0f}%"])
    if judge_rows:
        parts.append("<h2>Judge and critique data per round</h2>")
        parts.append(_table(["round", "critique traces", "replay rows", "rollout outcomes",
                             "conflicts found (source:kind)", "corrections accepted"], judge_rows))
    if data["promotions"]:
        parts.append("<h2>Promotions</h2>")
        parts.append(_table(["round", "promoted", "new", "current", "tolerance"],
                            [[k, v["promoted"], f"{100 * v['new']:.1f}", f"{100 * v['current']:.1f}", v["tolerance"]]
                             for k, v in sorted(data["promotions"].items(), key=lambda kv: int(kv[0]))]))
    strips = []
    for rd in _rounds(run_dir):
        for p in sorted((rd / "eval" / "strips").glob("*.png")) if (rd / "eval" / "strips").exists() else []:
            b64 = base64.b64encode(p.read_bytes()).decode()
            strips.append(f"<p><b>round {int(rd.name[6:])}</b> — {html.escape(p.stem.replace('_', ' '))}<br>"
                          f'<img src="data:image/png;base64,{b64}"></p>')
    if strips:
        parts.append("<h2>Trajectory strips of fixed prompts, round by round</h2>")
        parts += strips
    style = ("<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse;"
             "margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}</style>")
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>strokes report</title>{style}</head><body>"
    page += "\n".join(parts) + "</body></html>"
    return write_atomic(run_dir / "report.html", page)
