"""The policy's Inspect head: a linear verdict read from the policy's own next-token logits at the
first word of each inspection, saved beside its weights in the checkpoint folder.

Why a head: the language-model verdict (the softmax over "conflict" vs "aligned") uses one direction
of the final hidden state, the one SFT on inspection texts shapes slowly and at the cost of drawing.
The full logit vector at that position spans every linear function of the final hidden state (the
LM head has no bias and more rows than the hidden size), so a logistic regression on it is a linear
head on the hidden state that never touches the drawing weights. It is fitted on the model's own
labelled visual states (`selfplay/inspect_head.py`) and carries the threshold picked on held-out
states for a target false-alarm rate; `rollout.inspect: head` decides each verdict with it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import InputError
from ..io import write_atomic

FILE = "inspect_head.json"


@dataclass
class InspectHead:
    """P(conflict) = sigmoid(logits · weight + bias); conflict when it reaches `threshold`."""

    weight: list[float]
    """One weight per vocabulary entry (the feature scaling is folded in)."""
    bias: float
    threshold: float
    """Chosen on held-out own states for `target_false_alarm`."""
    target_false_alarm: float
    held_out: dict = field(default_factory=dict)
    """What the threshold was chosen on: states, wrong, auc, recall, false alarms."""

    def save(self, folder: str | Path) -> Path:
        return write_atomic(Path(folder) / FILE, json.dumps(asdict(self)))

    @classmethod
    def load(cls, folder: str | Path) -> InspectHead | None:
        """The head saved in a checkpoint folder, or None when it has none."""
        path = Path(folder) / FILE
        if not path.is_file():
            return None
        try:
            return cls(**json.loads(path.read_text()))
        except (ValueError, TypeError) as e:
            raise InputError(f"{path}: not an Inspect head ({e})") from None
