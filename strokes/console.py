"""How much a long job shows on the terminal, decided once per process by the CLI.

Progress bars follow the ecosystem's convention (pip, tqdm with `disable=None`, huggingface): only
where someone watches, i.e. when stderr is a terminal, so logs and CI output stay clean. `--quiet`
turns the bars and the per-step lines off; stage lines and results still print.
"""

from __future__ import annotations

import sys
import warnings

_quiet = False


def set_quiet(quiet: bool) -> None:
    """Called by the CLI for `--quiet`; the loop, rollouts and training read it."""
    global _quiet
    _quiet = quiet


def bars() -> bool:
    """Whether to draw progress bars: a terminal is watching and nobody asked for quiet."""
    return not _quiet and sys.stderr.isatty()


def lines() -> bool:
    """Whether to print per-step lines (training loss every logging step)."""
    return not _quiet


def hush_libraries() -> None:
    """No bars from the HF libraries (loading weights, saving and packing datasets): they draw one per
    checkpoint load and dataset step, even into a log file, and would bury the stage lines; our own
    bars (rollouts, SFT steps) say how far the work is."""
    import datasets
    from transformers.utils import logging

    datasets.disable_progress_bars()
    logging.disable_progress_bar()
    hush_deprecations()


# TRL 1.16 and peft read transformers' deprecated `is_gradient_checkpointing` alias (peft when it wraps
# a model in LoRA, TRL around its generation and reference forwards): FutureWarnings in every run's
# console that no user of ours can act on (the fix is theirs). Silenced by their message alone, so
# every other warning still shows.
DEPRECATIONS = (r"`is_gradient_checkpointing` is deprecated",)


def hush_deprecations() -> None:
    """Silence the libraries' deprecation warnings in `DEPRECATIONS`, for this process."""
    for message in DEPRECATIONS:
        warnings.filterwarnings("ignore", message=message, category=FutureWarning)
