"""The training curve as a picture, read back from `metrics.jsonl`, so a finished (or resumed) run can
be judged at a glance: SFT's per-segment loss, or GRPO's reward and KL, beside the learning rate."""

from __future__ import annotations

import json
from pathlib import Path


def plot_losses(metrics: str | Path, out: str | Path) -> Path | None:
    """Write `out` (PNG) from the train events in `metrics`; None when there is nothing to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in Path(metrics).read_text().splitlines() if line.strip()]
    rows = sorted({r["step"]: r for r in rows if "loss" in r and "step" in r}.values(), key=lambda r: r["step"])
    if not rows:
        return None
    steps = [r["step"] for r in rows]
    fig, (ax, lr) = plt.subplots(1, 2, figsize=(10, 3.4))
    if all("reward" in r for r in rows):  # GRPO: its loss is a surrogate; the reward says how it goes
        ax.plot(steps, [r["reward"] for r in rows], label="reward", lw=2)
        ax.plot(steps, [r.get("rewards/final/mean", float("nan")) for r in rows], label="final image right")
        ax.set(xlabel="step", ylabel="mean over the step's trajectories", title="GRPO reward")
        kl = ax.twinx()
        kl.plot(steps, [r.get("kl", float("nan")) for r in rows], ":", color="gray", label="KL")
        kl.set(ylabel="KL to the start")
    else:
        for key in ("loss", "loss_text", "loss_image", "loss_boundary"):
            if all(key in r for r in rows):
                ax.plot(steps, [r[key] for r in rows], label=key.removeprefix("loss_") if key != "loss" else "all",
                        lw=2 if key == "loss" else 1)
        ax.set(xlabel="step", ylabel="cross-entropy", yscale="log", title="loss per segment kind")
    ax.legend()
    lr.plot(steps, [r.get("learning_rate", float("nan")) for r in rows])
    lr.set(xlabel="step", title="learning rate")
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
