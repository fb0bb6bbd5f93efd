"""The few statistics the loop, the report and the ablations state results with.

Every score is a GenEval accuracy with its sampling standard error (`strokes.geneval.Score`); two
scores from independent rollouts differ by `gap`, with the SE of a difference of independent means.
"""

from __future__ import annotations

import math

import numpy as np

SPREADS = ("half-range", "se")
"""How a value measured over several seeds is spread: (max - min) / 2, or std / sqrt(n)."""


def gap(a: dict, b: dict) -> tuple[float, float]:
    """Difference of two overall scores (`{"overall", "overall_se"}`) and its standard error."""
    return a["overall"] - b["overall"], math.sqrt(a["overall_se"] ** 2 + b["overall_se"] ** 2)


def significant(difference: float, se: float) -> bool:
    """|difference| beyond two standard errors: the bar every claim of a gain is held to."""
    return se > 0 and abs(difference) > 2 * se


def spread(values: np.ndarray, how: str) -> float:
    """The spread of one value over seeds (`SPREADS`); 0 for a single seed."""
    if len(values) < 2:
        return 0.0
    return float((values.max() - values.min()) / 2 if how == "half-range" else values.std(ddof=1) / np.sqrt(len(values)))
