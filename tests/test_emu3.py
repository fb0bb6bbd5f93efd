"""The Emu3 adapter: a tiny random `Emu3ForConditionalGeneration` runs a whole round through the
same components the loop uses (rollout -> oracle judge -> critique data + replay -> LoRA SFT ->
eval -> checkpoint reload), with Emu3's own VQ turning images into codes and back.

Nothing is mocked: the model is the real transformers class with random weights, the tokenizer a
locally built word-level one carrying Emu3's token names (no downloads).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from adapter_round import check_grammar_like_the_tiny_processor, grpo_step, run_round

from strokes.errors import InputError
from strokes.model.emu3 import Emu3ModelConfig, Emu3Policy, Emu3Processor, save_tiny_base
from strokes.model.policy import Policy
from strokes.shapeworld import make_suite


def first_q(model) -> torch.Tensor:
    return model.model.text_model.layers[0].self_attn.q_proj.weight


TINY = Emu3ModelConfig(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128, codebook_size=64,
                       max_positions=1024)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """A tiny Emu3 checkpoint in Hugging Face's layout, as a downloaded one would be (no markers yet)."""
    torch.set_num_threads(1)
    return save_tiny_base(TINY, tmp_path_factory.mktemp("emu3-base"))


@pytest.fixture(scope="module")
def policy(base_dir):
    return Emu3Policy.from_base(base_dir)


@pytest.fixture(scope="module")
def rows():
    from strokes.data.build import DataConfig, make_rows

    return make_rows(DataConfig(size=12, seed=3, workers=1), progress=False)


def test_processor_keeps_the_grammar_and_loss_mask_of_the_tiny_processor(policy, rows):
    """Same trajectory, same token structure: the masks and segment kinds of the Emu3 processor
    equal the tiny processor's position by position, and the text round-trips through Emu3's
    tokenizer. The grammar markers were added after Emu3's vocabulary; codes are its visual block."""
    p = policy.processor
    vocab = json.loads((policy.model.config.to_json_string()))["vocabulary_map"]
    assert p.code_offset == vocab["<|visual token 000000|>"] and p.num_codes == 64 and p.codes_per_image == 64
    assert min(p.special.values()) >= len(vocab)  # markers are new tokens at the end
    assert policy.model.get_input_embeddings().num_embeddings == p.vocab_size == len(vocab) + 15
    check_grammar_like_the_tiny_processor(p, rows)


def test_a_round_runs_end_to_end(policy, tmp_path):
    """rollout -> oracle -> critique + replay -> one LoRA SFT step (merged) -> eval -> reload."""
    run_round(policy, tmp_path, "Emu3ForConditionalGeneration", first_q)


def test_saved_policy_reloads_exactly_and_its_processor_loads_alone(policy, rows, tmp_path):
    from strokes.trajectory import from_row

    policy.save_pretrained(tmp_path)
    loaded = Policy.from_pretrained(tmp_path)
    t = from_row(rows[0])
    ids = torch.tensor([policy.processor.encode(t).input_ids])
    with torch.no_grad():
        assert torch.equal(loaded.model(input_ids=ids).logits, policy.model(input_ids=ids).logits)
    alone = Emu3Processor.from_pretrained(tmp_path)  # VQ read from the checkpoint's safetensors
    assert alone.encode(t) == policy.processor.encode(t)
    assert np.array_equal(alone.image_tokenizer.decode(list(range(64))), policy.processor.image_tokenizer.decode(list(range(64))))


def test_bad_inputs_fail_in_one_line(base_dir, tmp_path):
    with pytest.raises(InputError, match="model.image_size"):
        Emu3ModelConfig(image_size=60)
    with pytest.raises(InputError, match="model.base"):
        Emu3Policy.from_base(tmp_path / "nowhere")
    cfg = json.loads((base_dir / "config.json").read_text())
    cfg["vocabulary_map"]["<|visual token 000005|>"] = 0  # a hole in the visual block
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in base_dir.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(InputError, match="contiguous"):
        Emu3Policy.from_base(bad)
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "config.json").write_text("{}")
    (tmp_path / "odd" / "processor.json").write_text(json.dumps({"processor": "strokes.bagel"}))
    with pytest.raises(InputError, match="unknown policy kind"):
        Policy.from_pretrained(tmp_path / "odd")


def test_packed_rows_stay_isolated_as_the_trainer_feeds_them(policy):
    """The trainer feeds packed rows with restarting position ids, no mask and `use_cache=False`;
    Emu3's text model then builds the block-diagonal mask, so packed sequences never see each other."""
    torch.manual_seed(0)
    a, b = torch.randint(10, 60, (1, 7)), torch.randint(10, 60, (1, 5))
    ids, pos = torch.cat([a, b], 1), torch.cat([torch.arange(7), torch.arange(5)])[None]
    with torch.no_grad():
        packed = policy.model(input_ids=ids, position_ids=pos, use_cache=False).logits
        alone = torch.cat([policy.model(input_ids=a).logits, policy.model(input_ids=b).logits], 1)
    assert torch.allclose(packed, alone, atol=1e-5)


def test_a_downloaded_checkpoint_converts_the_same_way_every_time(base_dir, tmp_path):
    """`python -m strokes.model.emu3 --base DIR --out DIR` (what `loop.base_checkpoint` then names):
    the marker embeddings it adds are seeded, so two conversions give the same policy."""
    from strokes.model.emu3 import main

    for name in ("a", "b"):
        main(["--base", str(base_dir), "--out", str(tmp_path / name)])
    a, b = Policy.from_pretrained(tmp_path / "a"), Policy.from_pretrained(tmp_path / "b")
    assert isinstance(a, Emu3Policy)
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ---- classifier-free guidance in image spans ----------------------------------------------------------

@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_guidance_mixes_the_promptless_branch_into_image_spans_only(policy, scale):
    """Each trajectory decodes beside a twin whose prompt is empty and which is fed every token the
    trajectory gets. At every sampled image position the logits sampled from are
    cond + (scale - 1) * (cond - uncond), with cond a plain forward over the final trajectory and uncond
    one over the same tokens after an empty prompt; text positions keep cond. Scale 1 therefore
    samples exactly the unguided distribution. Rows refill and compact, and a plan review drops and
    rewrites each first plan, so the twins follow their leads through all of it."""
    from rollout import Engine, RolloutConfig
    from rollout.grammar import IMAGE
    from rollout.interventions import PlanReview

    torch.set_num_threads(1)
    engine = Engine(policy, RolloutConfig(batch_size=4, refill_fraction=0.5, max_steps=2, max_refines=1,
                                          max_text_tokens=12, device="cpu", cfg_scale=scale))
    p, s, grammar, model = policy.processor, policy.processor.special, engine.decoder.grammar, engine.model
    prompts = [r.text for r in make_suite("test", 1, 3)]  # 6 prompts through a batch of 2 pairs
    review = PlanReview(lambda prompt, step, ins, des: ("add " + prompt, prompt) if step == 1 else None,
                        p, grammar)
    engine.decoder.trace = []
    empty = p.prompt_ids("")
    outs = engine.decoder.run([p.prompt_ids(t) for t in prompts], engine.generator(0), on_pause=review,
                              pause_tokens=review.pause_tokens, uncond=[empty] * len(prompts))
    assert engine.decoder.stats["merges"] >= 1 and engine.decoder.stats["interventions"] >= 1
    seen = {(k, t): lg for k, t, lg in engine.decoder.trace}  # the last record wins after a rewind
    checked = {"image": 0, "text": 0}
    moved = gap = 0.0  # total variation over the codes: guided vs cond, cond vs uncond

    def tv(a: torch.Tensor, b: torch.Tensor) -> float:
        codes = slice(p.code_offset, p.code_offset + p.num_codes)
        return 0.5 * float((a[codes].softmax(-1) - b[codes].softmax(-1)).abs().sum())

    for k, o in enumerate(outs):
        assert not o.error and p.decode(o.ids).steps[0].instruction == "add " + prompts[k]
        first_plan = range(o.ids.index(s["<ins>"]), o.ids.index(s["</des>"]) + 1)  # written, not sampled
        shift = o.context_length - len(empty)
        with torch.no_grad():
            cond = model(input_ids=torch.tensor([o.ids])).logits[0].float()
            uncond = model(input_ids=torch.tensor([empty + o.generated])).logits[0].float()
        for t in range(o.context_length, len(o.ids)):
            if t in first_plan:
                continue
            c = cond[t - 1]
            if grammar.replay(o.ids[:t]).state == IMAGE:
                u = uncond[t - 1 - shift]
                expected = c + (scale - 1) * (c - u)
                moved, gap = moved + tv(expected, c), gap + tv(c, u)
                checked["image"] += 1
            else:
                expected = c
                checked["text"] += 1
            assert torch.allclose(seen[(k, t)], expected, atol=1e-4, rtol=1e-4), f"row {k} position {t}"
    assert checked["image"] >= 6 * 64 and checked["text"] > 6 * 5
    # Scale 1 leaves the code distribution exactly as it is; scale 3 moves it further from the
    # promptless one than the prompt itself does.
    assert gap > 0 and (moved == 0 if scale == 1.0 else moved > gap)


def test_cfg_scale_runs_through_the_engine(policy):
    """`rollout.cfg_scale` is all it takes: 1 (the default) passes no twins to the decoder and gives
    the plain path's trajectories; 3 samples other sketches from the same seed, every one well formed."""
    from dataclasses import replace

    from rollout import Engine, RolloutConfig

    torch.set_num_threads(1)
    records = make_suite("test", 1, 5)
    cfg = RolloutConfig(mode="single_pass", batch_size=12, device="cpu", seed=4)
    plain = Engine(policy, cfg).run(records)
    one = Engine(policy, replace(cfg, cfg_scale=1.0)).run(records)
    guided = Engine(policy, replace(cfg, cfg_scale=3.0)).run(records)
    assert all(np.array_equal(a.images()[0], b.images()[0]) for a, b in zip(plain, one))
    assert all("failed" not in t.meta and len(t.images()) == 1 for t in guided)
    assert any(not np.array_equal(a.images()[0], b.images()[0]) for a, b in zip(plain, guided))
    with pytest.raises(InputError, match="rollout.batch_size"):
        RolloutConfig(cfg_scale=3.0, batch_size=1).validate()


# ---- checkpoints loaded into a live policy (what a rollout actor does between rounds) -----------------

def test_checkpoints_load_in_place_and_adapters_go_on_and_off(policy, tmp_path):
    """`rollout.weights.PolicySlot` on Emu3, whose saved names differ from its module names
    (`text_model.*` on disk, `model.text_model.*` in memory): a later checkpoint is copied into the
    same model object, a LoRA adapter (as the trainer saves it with `merge: false`) goes on top of its
    base, and taking it off gives the base back exactly. The processor keeps the model's own VQ."""
    from dataclasses import replace

    from peft import LoraConfig, get_peft_model

    from rollout.weights import PolicySlot

    torch.set_num_threads(1)
    policy.save_pretrained(tmp_path / "a")
    Emu3Policy.build(replace(TINY, seed=1)).save_pretrained(tmp_path / "b")
    tuned = Policy.from_pretrained(tmp_path / "b")
    torch.manual_seed(3)
    tuned.model = get_peft_model(tuned.model, LoraConfig(r=4, lora_alpha=16, init_lora_weights=False,
                                                         target_modules=r".*text_model.*\.(q_proj|v_proj)"))
    tuned.save_pretrained(tmp_path / "b-lora")
    ids = torch.tensor([policy.processor.prompt_ids("a red circle") + [policy.processor.code_offset + 3]])

    def logits(model) -> torch.Tensor:
        with torch.no_grad():
            return model.eval()(input_ids=ids).logits

    slot = PolicySlot()
    assert slot.load(tmp_path / "a") == "fresh"
    model = slot.policy.model
    assert slot.load(tmp_path / "b") == "in_place" and slot.policy.model is model
    plain = logits(model)
    assert torch.equal(plain, logits(Policy.from_pretrained(tmp_path / "b").model))
    assert slot.load(tmp_path / "b-lora") == "in_place+adapter"  # b is in memory already
    assert torch.equal(logits(slot.policy.model), logits(tuned.model))
    assert not torch.equal(logits(slot.policy.model), plain)
    assert slot.load(tmp_path / "a") == "in_place" and slot.policy.model is model
    assert torch.equal(logits(model), logits(policy.model))
    assert slot.policy.processor.image_tokenizer.vq is model.model.vqmodel
    assert slot.load(tmp_path / "a") == "same"
    with pytest.raises(InputError, match="not a checkpoint"):
        slot.load(tmp_path / "nowhere")
    (tmp_path / "orphan").mkdir()
    (tmp_path / "orphan" / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/gone"}))
    with pytest.raises(InputError, match="base_model_name_or_path"):
        slot.load(tmp_path / "orphan")


def test_a_grpo_step_with_lora_runs_on_the_adapter(policy, tmp_path):
    """One GRPO step on tiny Emu3 through the same rollout function and judge rewards as the loop's
    GRPO rounds: LoRA adapters on the text model, merged back; the rewards are logged."""
    grpo_step(policy, tmp_path, "Emu3ForConditionalGeneration", first_q)
