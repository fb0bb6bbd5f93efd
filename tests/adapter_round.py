"""The loop's steps on a real-architecture adapter (Emu3, Janus-Pro), shared by their test files:
the processor's grammar against the tiny processor's, a round (rollout with a plan review -> oracle
judge -> critique + replay -> LoRA SFT step, merged -> eval -> reload gives the same logits) and a
GRPO step. Each adapter's test file builds
its tiny random policy and says where its first text-model layer is and what its model class is."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from strokes.model.policy import Policy
from strokes.shapeworld import make_suite

FirstQ = Callable[[torch.nn.Module], torch.Tensor]
"""The weight of the first text-model layer's q_proj (what LoRA trains) of a model."""


def blank_canvas_decoder(policy: Policy) -> Policy:
    """A copy of `policy` whose VQ decoder draws a white canvas for any codes (its last conv outputs
    the normalised white). A random VQ decodes noise in which the detector finds dozens of
    'objects', too many for any correction chain; a blank sketch gives the oracle a missing object
    to correct, as an untrained model's empty canvas would, so critique traces get built."""
    p = copy.deepcopy(policy)
    p.processor.image_tokenizer.vq = p.model.model.vqmodel  # the copy's codec reads the copy's VQ
    conv = p.model.model.vqmodel.decoder.conv_out
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.fill_(1.0)  # (1.0 - mean 0.5) / std 0.5: white
    return p


def check_grammar_like_the_tiny_processor(processor, rows: list[dict]) -> None:
    """Same trajectory, same token structure: the adapter's masks and segment kinds equal the tiny
    processor's position by position, the text round-trips through the model's tokenizer, and each
    image is the VQ's fixed grid of codes (64 in the tiny configs)."""
    from strokes.model.image_tokenizer import ImageTokenizer, fitting_images
    from strokes.model.processor import Processor, build_text_tokenizer
    from strokes.trajectory import from_row

    it = ImageTokenizer.fit(fitting_images(40, 64, 0), 32, 8, 0)
    tiny = Processor(build_text_tokenizer(it.num_codes), it)
    for row in rows:
        t = from_row(row)
        a, b = processor.encode(t), tiny.encode(t)
        assert a.completion_mask == b.completion_mask and a.segments == b.segments
        back = processor.decode(a.input_ids)
        assert back.prompt == t.prompt and len(back.steps) == len(t.steps)
        for x, y in zip(back.steps, t.steps):
            assert (x.instruction, x.description, x.inspection) == (y.instruction, y.description, y.inspection)
            assert x.image.shape == (64, 64, 3) and x.image.dtype == np.uint8
        assert sum(processor.is_code(i) for i in a.input_ids) == processor.codes_per_image * len(t.images())


def saved(policy: Policy, path: Path) -> Path:
    policy.save_pretrained(path)
    return path


def run_round(policy: Policy, tmp_path: Path, model_class: str, first_q: FirstQ) -> None:
    """rollout -> oracle -> critique + replay -> one LoRA SFT step (merged) -> eval -> reload."""
    from judges import OracleJudge, corrected_scene
    from rollout import Engine, RolloutConfig, RolloutDir, rollout, write_geneval
    from selfplay.critique import CritiqueConfig, build_self_critique
    from strokes.data.build import DataConfig, make_rows
    from strokes.shapeworld import score_folder
    from strokes.trajectory import from_row, to_dataset
    from trainer.config import LoraConfig, TrainConfig
    from trainer.sft import train

    torch.set_num_threads(1)
    ckpt = saved(blank_canvas_decoder(policy), tmp_path / "round0")
    # Rollout: the grammar keeps the random model well-formed; a plan review writes the first plan
    # (what the prompt asks for) so the oracle has parsable steps whose sketches it can correct.
    records = make_suite("train", 4, 0, tasks=("colors",))
    rcfg = RolloutConfig(batch_size=4, max_steps=2, max_refines=1, max_text_tokens=8, device="cpu", seed=1)
    engine = Engine(Policy.from_pretrained(ckpt), rcfg)
    trajs = engine.run(records, plan_hook=lambda prompt, step, ins, des: ("add " + prompt, prompt) if step == 1 else None)
    assert all(np.all(im == 255) for t in trajs for im in t.images())  # the blank decoder drew them
    assert all("failed" not in t.meta for t in trajs), [t.meta.get("failed") for t in trajs]
    assert all(t.steps[0].instruction == "add " + r.text for t, r in zip(trajs, records))
    assert all(im.shape == (64, 64, 3) for t in trajs for im in t.images())
    # Judge and critique data: the model's own (VQ-decoded) sketches, the oracle's corrections.
    traces, stats = build_self_critique(trajs, OracleJudge(), CritiqueConfig(), exact=corrected_scene)
    assert traces and stats.corrections_accepted == len(traces)
    replay = [from_row(r) for r in make_rows(DataConfig(size=4, seed=5, workers=1), progress=False)]
    data = to_dataset(traces + replay)
    # One SFT step with LoRA on the text model, merged back into a plain checkpoint of the model's class.
    trained = Policy.from_pretrained(ckpt)
    vq_before = {k: v.clone() for k, v in trained.model.model.vqmodel.state_dict().items()}
    lm_before = trained.model.lm_head.weight.clone()
    tcfg = TrainConfig(max_steps=1, batch_size=2, max_length=1024, lr=1e-2, warmup_steps=0, logging_steps=1,
                       save_steps=1000, tokenize_workers=1, num_threads=1, device="cpu",
                       lora=LoraConfig(enabled=True, r=4, alpha=8))
    summary = train(trained, data, tcfg, tmp_path / "train")
    assert summary["steps"] == 1 and summary["useful_token_share"] > 0
    model = trained.model
    assert type(model).__name__ == model_class  # merged: no adapter left
    assert all(torch.equal(v, vq_before[k]) for k, v in model.model.vqmodel.state_dict().items())
    assert torch.equal(model.lm_head.weight, lm_before)  # LoRA touched only the projections
    assert not torch.equal(first_q(model), first_q(Policy.from_pretrained(ckpt).model))
    new = tmp_path / "train" / "checkpoint"
    # Eval: rollouts from the checkpoint (as the loop's Ray actors load it), GenEval layout, scores.
    suite = make_suite("test", 1, 7)
    rollout(suite, tmp_path / "eval", RolloutConfig(mode="single_pass", batch_size=6, device="cpu"),
            checkpoint=new, progress=False)
    n = write_geneval(RolloutDir(tmp_path / "eval").trajectories(), suite, tmp_path / "geneval")
    score = score_folder(tmp_path / "geneval")
    assert n == 6 and sum(score.counts.values()) == 6 and 0.0 <= score.overall <= 1.0
    # Reload: the same logits from the saved checkpoint.
    loaded = Policy.from_pretrained(new)
    assert isinstance(loaded, type(policy))
    ids = torch.tensor([loaded.processor.encode(traces[0]).input_ids])
    model.eval()
    with torch.no_grad():
        assert torch.allclose(loaded.model(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-5)


def grpo_step(policy: Policy, tmp_path: Path, model_class: str, first_q: FirstQ, lora: bool = True) -> None:
    """One GRPO step through the same rollout function and judge rewards as the loop's GRPO rounds:
    LoRA adapters on the text model, merged back (or, without `lora`, every weight trained, against a
    reference model TRL loads from the policy's folder); the rewards are logged; the checkpoint reloads."""
    from judges import OracleJudge
    from rollout import Engine, RolloutConfig
    from selfplay.grpo import make_sampler
    from selfplay.rewards import reward_functions
    from strokes.shapeworld import is_correct
    from trainer.config import GrpoConfig, LoraConfig, TrainConfig
    from trainer.grpo import train_grpo

    torch.set_num_threads(1)
    trained = Policy.from_pretrained(saved(policy, tmp_path / "round0"))
    engine = Engine(trained, RolloutConfig(batch_size=4, max_steps=1, max_refines=1, max_text_tokens=6, device="cpu"))
    prompts = [json.dumps(r.to_json()) for r in make_suite("train", 1, 0, tasks=("colors",))]
    tcfg = TrainConfig(method="grpo", lr=1e-2, warmup_steps=0, logging_steps=1, save_steps=1000,
                       num_threads=1, device="cpu", lora=LoraConfig(enabled=lora, r=4, alpha=8),
                       grpo=GrpoConfig(steps=1, prompts_per_step=1, generations=2, beta=0.1))
    summary = train_grpo(trained, prompts, tcfg, tmp_path / "grpo", make_sampler(engine, OracleJudge(), exact=is_correct),
                         reward_functions(), engine.legal_sets)
    assert summary["steps"] == 1
    logged = [json.loads(line) for line in (tmp_path / "grpo" / "metrics.jsonl").read_text().splitlines()]
    assert any("rewards/final/mean" in e and "kl" in e for e in logged)
    model = trained.model
    assert type(model).__name__ == model_class  # merged: no adapter left
    loaded = Policy.from_pretrained(tmp_path / "grpo" / "checkpoint")
    assert torch.equal(first_q(loaded.model), first_q(model))
