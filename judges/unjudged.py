"""Steps a judge left without a verdict: why (one line), and when there are too many to go on.

A judge that is down, or rejects every request, returns no verdicts rather than raising (a data
failure must never cost the other steps theirs). Downstream a missing verdict is quiet: a GRPO
trajectory without one gets no advantage, a critique rollout without one is skipped. So the
callers count what they asked and what came back, and `require_verdicts` stops the step or stage
with one line once more than `judge.max_unjudged` of it is missing, naming the causes the judge
counted (connection refused, a 503, unreadable answers) instead of training on nothing.
"""

from __future__ import annotations

from strokes.errors import InputError

from .config import JudgeConfig

UNJUDGED = ("unparsable", "failed", "over_budget")  # the reasons a judge returns no verdict
RETRIED = ("timeouts", "connection_errors", "http_errors")  # failed attempts of the GPT judge (the last included)


def judge_stats(judge: object) -> dict:
    """A judge's counters as a dict ({} for a judge that keeps none)."""
    stats = getattr(judge, "stats", None)
    if stats is None:
        return {}
    return stats.to_json() if hasattr(stats, "to_json") else dict(stats)


def failure_breakdown(stats: dict) -> str:
    """One line: the judge's failures by reason and by cause ("unjudged: failed 4; retries 8
    (connection_errors 12); causes: connection refused 12"), so a table with unjudged steps says why."""
    def counts(keys: tuple[str, ...]) -> str:
        return ", ".join(f"{k} {stats[k]}" for k in keys if stats.get(k)) or "none"

    line = f"unjudged: {counts(UNJUDGED)}"
    if stats.get("retries"):
        line += f"; retries {stats['retries']} ({counts(RETRIED)})"
    if stats.get("causes"):
        line += "; causes: " + ", ".join(f"{k} {v}" for k, v in sorted(stats["causes"].items(), key=lambda kv: -kv[1]))
    return line


class TooManyUnjudged(InputError):
    """More of a step's or stage's verdicts are missing than `judge.max_unjudged` allows. An
    InputError (one line, exit status 2): the fix is the user's (the endpoint, its key or model,
    the budget), and training on what little was judged would hide it."""


def require_verdicts(cfg: JudgeConfig, missing: int, asked: int, where: str, judge: object = None) -> None:
    """Raise `TooManyUnjudged` when `missing` of `asked` verdicts is more than `cfg.max_unjudged`;
    the message names `where` (e.g. "GRPO step 3 of round 1") and the judge's causes."""
    if asked <= 0 or missing / asked <= cfg.max_unjudged:
        return
    stats = judge_stats(judge)
    why = f" ({failure_breakdown(stats)})" if stats else ""
    raise TooManyUnjudged(f"judge: {missing} of {asked} verdicts missing in {where}, more than "
                          f"judge.max_unjudged {cfg.max_unjudged:g}{why}; check the judge "
                          f"({cfg.kind}{' at ' + str(cfg.base_url) if cfg.base_url else ''})")
