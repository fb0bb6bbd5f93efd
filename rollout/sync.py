"""Per-step weights from a trainer to the rollout fleet, through Ray's object store.

An RL trainer changes its weights every step, and the fleet's actors must sample the next step from
exactly those weights. Writing a checkpoint per step would cost a save and a load of the whole model;
instead the trainer publishes the parameters it trains (all of them in full fine-tuning, only the
adapter's with LoRA: the deltas) once per step with `ray.put`, as a `WeightUpdate` whose `key` names
the step. Each actor holds the round's starting checkpoint and applies the newest update on top of
it before it samples (`weights.PolicySlot.apply`), once per key: an actor that restarted or a
replacement loads the checkpoint and applies the same update, so every shard of a step comes from
the same weights wherever it runs.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass


@dataclass
class WeightUpdate:
    """One step's weights, as the fleet's actors take them."""

    series: str
    """The publisher's id: updates of one series are each applied on top of the last; an update of
    another series (another round) starts again from the checkpoint."""
    step: int
    """The trainer's optimizer step whose weights these are: every trajectory records it."""
    tensors: list
    """[ObjectRef] of {parameter name: CPU tensor}: nested so Ray hands the reference to the actor
    instead of the tensors with every shard; the actor fetches them once per key."""
    lora: object | None = None
    """peft's `LoraConfig` when the tensors are a LoRA adapter's, else None."""

    @property
    def key(self) -> str:
        """Names this publication: actors apply each key once."""
        return f"{self.series}:{self.step}"


def trained_parameters(model) -> dict:
    """The parameters a trainer changes (`requires_grad`), by name, copied to the CPU. With peft's
    LoRA layers in the model these are the adapter's A and B matrices only."""
    return {name: p.detach().to("cpu", copy=True) for name, p in model.named_parameters() if p.requires_grad}


class WeightPublisher:
    """Publishes one model's trained parameters, one `WeightUpdate` per step (keys of this
    publisher's own series, so a new round's step 0 is never mistaken for an old one's)."""

    def __init__(self, model, lora=None) -> None:
        self.model, self.lora = model, lora
        self.series = uuid.uuid4().hex[:12]
        self.bytes = 0  # of the last update

    def publish(self, step: int) -> WeightUpdate:
        import ray

        tensors = trained_parameters(self.model)
        self.bytes = sum(t.numel() * t.element_size() for t in tensors.values())
        return WeightUpdate(self.series, step, [ray.put(tensors)], self.lora)
