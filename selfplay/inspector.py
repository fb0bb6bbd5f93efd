"""An attention Inspect head: a small classifier on a frozen policy's hidden states that reads the
prompt, the current step and its sketch, fitted once on the policy's own labelled states (issue 27).

Why: the policy's own verdict (its P(conflict) at an inspection) sees few of its own mistakes, and a
linear head on the verdict position's logits sees more but not the counts and relations that are
left to learn (`benchmarks/inspect_head_probe.py`). This head attends from the verdict position over
the hidden states of the token embeddings, a middle layer and the last, restricted to the prompt and
the current step (its instruction, description and sketches: no telling the current sketch from
earlier ones), with a learnt embedding of each image code's place on the 8x8 grid (the policy's
hidden states carry no absolute position: RoPE acts inside its attention). On the base's own
validation states it reaches a within-task ROC AUC of 0.89 (`selfplay inspect-eval --inspector`;
0.87 on the held-out test suite) where the LM verdict gives 0.65; within one prompt's rollouts,
which is what GRPO compares, far less (docs/loop.md, "An attention Inspect head").

It judges self-judged rounds (`judge.kind: self` with `judge.inspector`): a frozen copy of the
checkpoint it was fitted on reads the live policy's trajectories, and the head's P(conflict) labels
each state (`self_reading.TrajectoryReader`). The labels it is fitted on come from one labelled set
made before any round (`selfplay fit-inspector`: the run config's judge, the exact one for
ShapeWorld, a VLM endpoint elsewhere); no judge but the model is asked during the rounds.

Saved as a folder: `inspector.safetensors` (the head's weights) and `inspector.json` (the checkpoint
it reads, its layers, its threshold and what it was measured on).
"""

from __future__ import annotations

import dataclasses
import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from strokes.errors import InputError
from strokes.io import write_atomic
from strokes.trajectory import Trajectory

from .inspect_eval import LabelledState, recall_at
from .inspect_head import verdict_positions

GRID = 64
"""An image's codes (8x8, row-major); grid index GRID marks a token outside any image."""
WEIGHTS, META = "inspector.safetensors", "inspector.json"


class AttentionHead(nn.Module):
    """Per verdict position, P(conflict) logits: multi-head attention pooling from that position over
    its allowed keys, then a small MLP on the pooled vector and the position's own features."""

    def __init__(self, width: int, heads: int = 4, head_dim: int = 32) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.norm = nn.LayerNorm(width)
        self.grid = nn.Embedding(GRID + 1, width)
        self.q, self.k, self.v = (nn.Linear(width, heads * head_dim) for _ in range(3))
        self.out = nn.Sequential(nn.Linear(heads * head_dim + width, 64), nn.GELU(), nn.Linear(64, 1))

    def forward(self, hidden: torch.Tensor, queries: list[int], allowed: torch.Tensor,
                grid: torch.Tensor) -> torch.Tensor:
        x = self.norm(hidden.float()) + self.grid(grid)
        t, q = x.shape[0], len(queries)
        query = self.q(x[queries]).view(q, self.heads, self.head_dim)
        key, value = (f(x).view(t, self.heads, self.head_dim) for f in (self.k, self.v))
        scores = torch.einsum("qhd,thd->qht", query, key) / self.head_dim ** 0.5
        weights = scores.masked_fill(~allowed[:, None, :], float("-inf")).softmax(-1)
        pooled = torch.einsum("qht,thd->qhd", weights, value).reshape(q, -1)
        return self.out(torch.cat([pooled, x[queries]], -1)).squeeze(-1)


@dataclass
class Reads:
    """What the head reads of one trajectory: hidden states up to its last verdict, the verdict
    positions, each verdict's allowed keys and each token's grid index."""

    hidden: torch.Tensor
    queries: list[int]
    allowed: torch.Tensor
    grid: torch.Tensor


def reads(policy, t: Trajectory) -> Reads | None:
    """The head's input for `t` (None when it has no inspection)."""
    p = policy.processor
    ids = p.encode(t).input_ids
    queries = verdict_positions(p, ids)
    if not queries:
        return None
    end = max(queries) + 1
    with torch.no_grad():
        hidden = policy.model(input_ids=torch.tensor([ids[:end]], device=policy.model.device),
                              output_hidden_states=True).hidden_states
    tokens = torch.tensor(ids[:end])
    grid = torch.full((end,), GRID, dtype=torch.long)
    for v in (tokens == p.special["<vision_start>"]).nonzero().flatten().tolist():
        n = min(GRID, end - v - 1)
        grid[v + 1: v + 1 + n] = torch.arange(n)
    closes = (tokens == p.special["</prompt>"]).nonzero().flatten()
    prompt_end = int(closes[0]) if len(closes) else 0
    steps = (tokens == p.special["<ins>"]).nonzero().flatten().tolist()
    allowed = torch.zeros(len(queries), end, dtype=torch.bool)
    for row, q in enumerate(queries):
        allowed[row, : prompt_end + 1] = True
        allowed[row, max([i for i in steps if i <= q], default=0): q + 1] = True
    layers = (0, len(hidden) // 2, -1)  # the token embeddings, a middle layer and the last
    return Reads(torch.cat([hidden[i][0] for i in layers], -1).float().cpu(), queries, allowed, grid)


@dataclass
class Inspector:
    """A fitted head, the checkpoint whose hidden states it reads, and its threshold."""

    head: AttentionHead
    checkpoint: str
    threshold: float
    """P(conflict) at or above which a state is wrong: `target_false_alarm` on held-out states."""
    target_false_alarm: float = 0.10
    held_out: dict = field(default_factory=dict)
    """What the threshold was chosen on: states, wrong, auc, recall, false alarms, epochs."""

    def p_conflict(self, policy, trajectories: list[Trajectory]) -> list[np.ndarray]:
        """P(conflict) at each inspection's verdict position, per trajectory (`policy` is the
        checkpoint's policy)."""
        self.head.eval()
        out = []
        with torch.no_grad():
            for t in trajectories:
                r = reads(policy, t)
                out.append(np.zeros(0) if r is None else
                           torch.sigmoid(self.head(r.hidden, r.queries, r.allowed, r.grid)).numpy())
        return out

    def scored(self, trajectories: list[Trajectory]) -> list[Trajectory]:
        """`trajectories` with the head's P(conflict) as each visual state's score
        (`meta["inspect_scores"]`, what the inspection table reads), the checkpoint it was fitted on
        reading them: how `selfplay inspect-eval --inspector` scores a head with the project's table."""
        from strokes.model.policy import Policy

        policy = Policy.from_pretrained(self.checkpoint)
        return [dataclasses.replace(t, meta={**t.meta, "inspect_scores": [float(x) for x in p]})
                for t, p in zip(trajectories, self.p_conflict(policy, trajectories))]

    def save(self, folder: str | Path) -> Path:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.head.state_dict().items()}, str(folder / WEIGHTS))
        meta = {k: v for k, v in asdict(self).items() if k != "head"}
        return write_atomic(folder / META, json.dumps({**meta, "width": self.head.norm.normalized_shape[0]}, indent=2))

    @classmethod
    def load(cls, folder: str | Path) -> Inspector:
        from safetensors.torch import load_file

        folder = Path(folder)
        if not (folder / META).is_file() or not (folder / WEIGHTS).is_file():
            raise InputError(f"{folder}: not a fitted inspector (needs {META} and {WEIGHTS}: selfplay fit-inspector)")
        meta = json.loads((folder / META).read_text())
        head = AttentionHead(int(meta.pop("width")))
        head.load_state_dict(load_file(str(folder / WEIGHTS)))
        return cls(head, **meta)


def fit_inspector(policy, checkpoint: str, trajectories: list[Trajectory], states: list[LabelledState],
                  false_alarm: float = 0.10, max_epochs: int = 30, seed: int = 0,
                  log=print) -> Inspector:
    """A head fitted on the labelled `states` of `trajectories` (the policy's own, from `checkpoint`):
    a fifth of the trajectories held out chooses the epoch count and the threshold for
    `false_alarm`, then the head is refitted on all of them for that many epochs."""
    from sklearn.metrics import roc_auc_score

    by_source: dict[int, list[LabelledState]] = {}
    for s in states:
        by_source.setdefault(s.source, []).append(s)
    items = []
    for k, mine in sorted(by_source.items()):
        r = reads(policy, trajectories[k])
        mine = [s for s in mine if r is not None and s.index < len(r.queries)]
        if mine:
            items.append((Reads(r.hidden, [r.queries[s.index] for s in mine], r.allowed[[s.index for s in mine]], r.grid),
                          torch.tensor([float(s.wrong) for s in mine])))
    labels = torch.cat([y for _, y in items]) if items else torch.zeros(0)
    if len(items) < 10 or labels.sum() < 2 or labels.sum() > len(labels) - 2:
        raise ValueError(f"an inspector needs right and wrong states; got {len(labels)} states, {int(labels.sum())} wrong")
    pos_weight = (1 - labels.mean()) / labels.mean()

    def scores(head: AttentionHead, some: list) -> np.ndarray:
        head.eval()
        with torch.no_grad():
            return np.concatenate([torch.sigmoid(head(r.hidden, r.queries, r.allowed, r.grid)).numpy() for r, _ in some])

    def fit(train: list, epochs: int, held: list = ()) -> tuple[AttentionHead, list[tuple[float, np.ndarray]]]:
        """The head after `epochs` epochs, and after each epoch its AUC on `held` and its scores of it."""
        torch.manual_seed(seed)
        order = random.Random(seed)
        head = AttentionHead(items[0][0].hidden.shape[1])
        opt = torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=1e-2)
        loss_fn = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
        curve = []
        for epoch in range(epochs):
            head.train()
            train = order.sample(train, len(train))
            for b in range(0, len(train), 16):
                opt.zero_grad()
                batch = train[b: b + 16]
                loss = sum(loss_fn(head(r.hidden, r.queries, r.allowed, r.grid), y) for r, y in batch) / len(batch)
                loss.backward()
                opt.step()
            if held:
                held_scores = scores(head, held)
                curve.append((float(roc_auc_score(torch.cat([y for _, y in held]).numpy(), held_scores)), held_scores))
                log(f"inspector: epoch {epoch + 1}/{epochs}, held-out AUC {curve[-1][0]:.3f}")
        return head, curve

    shuffled = random.Random(seed).sample(items, len(items))
    held = shuffled[: max(2, len(items) // 5)]
    _, curve = fit(shuffled[len(held):], max_epochs, held)
    # the epoch count and the threshold from the held-out fifth, as scored at its best epoch
    epochs = int(np.argmax([auc for auc, _ in curve])) + 1
    auc, held_scores = curve[epochs - 1]
    wrong = torch.cat([y for _, y in held]).numpy().astype(bool)
    recall, threshold = recall_at(wrong, held_scores, false_alarm)
    measured = {"states": int(len(wrong)), "wrong": int(wrong.sum()), "auc": auc,
                "recall": recall, "false_alarm": float((held_scores[~wrong] >= threshold).mean()),
                "fitted_states": int(len(labels)), "epochs": epochs}
    log(f"inspector: {epochs} epochs; held-out AUC {measured['auc']:.3f}, recall {recall:.0%} at threshold "
        f"{threshold:.3f}; refitting on all {len(labels)} states")
    head, _ = fit(items, epochs)
    return Inspector(head, str(checkpoint), float(threshold), false_alarm, measured)
