"""Judges: turning a trajectory step into a verdict (docs/design.md §2, §3, §7).

- `OracleJudge`: exact, from the ShapeWorld checker; also gives corrections and `corrected_scene`.
- `GPTJudge`: any OpenAI-compatible endpoint, with concurrency, retries, budget and cache.
- `SelfJudge`: the policy's own Inspect, through an injected `inspect_fn`.
- `VLMJudge`: a stand-in VLM, the exact judge with an error profile's systematic mistakes.
- `JudgeServer`: any judge behind an OpenAI-compatible endpoint (`selfplay judge-serve`); the same
  endpoint (`judges/endpoint.py`) on Ray Serve replicas: `judges.ray_serve.RayJudgeServer`.
- `evaluate` / `labelled_contexts`: precision and recall against the oracle (`selfplay judge-eval`).

Every judge answers `judge(contexts) -> verdicts` with the shared `strokes.verdict.Verdict`; a
verdict is None for a step the judge could not judge (an unreadable answer, a spent budget).
This package imports only selfplay's shared modules, never rollout/, trainer/ or the loop.
"""

from __future__ import annotations

from strokes.errors import InputError

from .config import KINDS, JudgeConfig
from .oracle import OracleJudge, corrected_scene
from .self_judge import InspectFn, SelfJudge


def make_judge(cfg: JudgeConfig, inspect_fn: InspectFn | None = None, image_side: int = 64):
    """The judge a config asks for. Kind "self" needs the policy's `inspect_fn` and the side of the
    images that policy reads."""
    cfg.validate()
    if cfg.kind == "oracle":
        return OracleJudge()
    if cfg.kind == "gpt":
        from .gpt import GPTJudge

        return GPTJudge(cfg)
    if cfg.kind == "vlm":
        from .vlm import VLMJudge, load_profile

        return VLMJudge(load_profile(cfg.profile), cfg.profile_seed, graded=cfg.logprobs)
    if inspect_fn is None:
        raise InputError("judge.kind 'self' needs a policy to inspect with (a checkpoint)")
    return SelfJudge(inspect_fn, image_side)


__all__ = ["KINDS", "InspectFn", "JudgeConfig", "OracleJudge", "SelfJudge", "corrected_scene", "make_judge"]
