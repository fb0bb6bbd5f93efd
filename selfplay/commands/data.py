"""`selfplay data`: build the base trajectory dataset (`data build`) and look inside it (`data show`).

`data build` reads only the `data:` section of a YAML config, so the same file can hold the whole
run config; `data show` prints trajectories as text and writes each one's visual states as a strip of
PNG panels, the quickest way to see what the model will be taught (and what it must learn to reject:
deliberately wrong states get a red frame).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from strokes.io import atomic_path

if TYPE_CHECKING:
    from strokes.data.build import DataConfig


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="build and inspect the base trajectory dataset")
    actions = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")

    b = actions.add_parser("build", help="make the base dataset (HF dataset on disk + summary.json)")
    b.add_argument("--config", help="YAML config; only its `data:` section is read (defaults without it)")
    b.add_argument("--set", dest="overrides", action="append", default=[], metavar="data.KEY=VALUE",
                   help="override a data field, e.g. --set data.size=2000 (repeatable)")
    b.add_argument("--out", required=True, help="folder for the dataset (replaced if it holds one)")
    b.set_defaults(func=run_build)

    s = actions.add_parser("show", help="print trajectories as text and write their image strips")
    s.add_argument("dir", help="a dataset folder written by `selfplay data build`")
    s.add_argument("--n", type=int, default=3, help="how many trajectories")
    s.add_argument("--source", help="only trajectories of this pipeline (scene_graph, conflict, ...)")
    s.add_argument("--out", help="folder for the PNG strips (default DIR/show)")
    s.set_defaults(func=run_show)


# ---- data build ------------------------------------------------------------------------------------

def load_data_config(path: str | None, overrides: list[str]) -> "DataConfig":
    """The `data:` section of a YAML config (other sections are left to their own commands), with
    `--set data.KEY=VALUE` overrides; a bad field fails with one line naming it (`data.mixture.bogus`)."""
    from strokes.config_loader import from_dict, read
    from strokes.data.build import DataConfig
    from strokes.errors import InputError

    for item in overrides:
        if not item.startswith("data."):
            raise InputError(f"--set {item}: `data build` reads only the data section (write data.KEY=VALUE)")
    raw = read(path, overrides)
    return from_dict(DataConfig, raw.get("data"), "data")


def run_build(args: argparse.Namespace) -> None:
    import datasets

    from strokes.data.build import build
    from strokes.errors import InputError

    datasets.disable_progress_bars()  # saving takes a blink; our own bar counts trajectories
    cfg = load_data_config(args.config, args.overrides)
    if cfg.size < 1:
        raise InputError(f"config field 'data.size' must be at least 1, got {cfg.size}")
    if cfg.workers < 1:
        raise InputError(f"config field 'data.workers' must be at least 1, got {cfg.workers}")
    out = Path(args.out)
    # build() replaces `out` wholesale: never let a typo wipe a folder that is not a dataset.
    if out.exists() and (not out.is_dir() or (not (out / "summary.json").is_file() and any(out.iterdir()))):
        raise InputError(f"--out {out}: exists and is not a dataset folder; refusing to replace it")
    summary = build(cfg, out)
    print(summary_table(summary, out))


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    """Left-aligned first column, right-aligned others."""
    cells = [headers] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for r in cells:
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def summary_table(summary: dict, out: Path | str) -> str:
    """The build summary (as written to summary.json) as readable tables."""
    n = summary["trajectories"]
    secs = summary.get("seconds_total", 0.0)
    rate = n / secs if secs else float("nan")
    steps = summary.get("mean_steps_per_source", {})
    parts = [
        f"built {n} trajectories in {secs:.1f} s ({summary.get('seconds_to_make', secs):.1f} s making them, "
        f"{summary.get('workers', 1)} workers, {rate:.0f} traj/s) -> {out}",
        _table(["source", "count", "share", "mean steps"],
               [[s, c, f"{100 * c / n:.1f}%", f"{steps[s]:.2f}" if s in steps else ""]
                for s, c in sorted(summary["per_source"].items())]),
        _table(["variant (source:error or detour)", "count", "share of source"],
               [[v, c, f"{100 * c / summary['per_source'][v.split(':')[0]]:.1f}%"]
                for v, c in summary["per_variant"].items()]),
        _table(["edit kind (step / refine:)", "count"], [[k, c] for k, c in summary["per_edit_kind"].items()]),
    ]
    tok = summary["tokens"]
    parts.append(f"mean steps {summary['mean_steps']:.2f}; tokens per trajectory: mean {tok['mean']:.1f}, "
                 f"p50 {tok['p50']:.0f}, p95 {tok['p95']:.0f}, max {tok['max']}, total {tok['total']}")
    return "\n\n".join(parts)


# ---- data show -------------------------------------------------------------------------------------

def run_show(args: argparse.Namespace) -> None:
    import datasets
    from PIL import Image

    from strokes.data.build import load
    from strokes.data.pipelines import SOURCES
    from strokes.errors import InputError
    from strokes.trajectory import from_dataset

    from ..visualize import describe, strip_image
    from ..world.shapeworld import final_conflicts

    if args.n < 1:
        raise InputError(f"--n must be at least 1, got {args.n}")
    if args.source is not None and args.source not in SOURCES:
        raise InputError(f"--source {args.source!r} is not one of {', '.join(SOURCES)}")
    datasets.disable_progress_bars()
    ds = load(args.dir)
    picked = [i for i, s in enumerate(ds["source"]) if args.source in (None, s)][: args.n]
    if not picked:
        raise InputError(f"{args.dir}: no trajectories" + (f" of source {args.source}" if args.source else ""))
    out = Path(args.out) if args.out else Path(args.dir) / "show"
    out.mkdir(parents=True, exist_ok=True)
    for index, t in zip(picked, from_dataset(ds.select(picked))):
        path = out / f"{index:05d}.png"
        with atomic_path(path) as tmp:
            Image.fromarray(strip_image(t)).save(tmp, format="PNG")
        print(describe(t, index, conflicts=final_conflicts))
        print(f"  strip: {path}\n")
