"""The Janus-Pro adapter: a tiny random `JanusForConditionalGeneration` (the real classes: Llama text
model, SigLIP encoder, VQ, generation embeddings, aligner and head), written as a Hugging Face
checkpoint and adapted through the path real weights take, runs the loop's steps: rollout with a
plan review -> oracle judge -> critique + replay -> LoRA SFT step -> eval -> reload, and a GRPO step.

What is Janus-specific is checked against Janus's own modules: the one-vocabulary forward gives the
language-model head's logits over text ids and the generation head's over codes, and a code id goes
in through the generation embeddings and aligner. Nothing is mocked; nothing is downloaded.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from adapter_round import check_grammar_like_the_tiny_processor, grpo_step, run_round

from strokes.errors import InputError
from strokes.model.janus import JanusModelConfig, JanusPolicy, JanusProcessor, save_tiny_base
from strokes.model.policy import Policy
from strokes.shapeworld import make_suite

TINY = JanusModelConfig()


def first_q(model) -> torch.Tensor:
    return model.model.language_model.layers[0].self_attn.q_proj.weight


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """A tiny Janus checkpoint in Hugging Face's layout, as a downloaded one would be (no markers yet)."""
    torch.set_num_threads(1)
    return save_tiny_base(TINY, tmp_path_factory.mktemp("janus-base"))


@pytest.fixture(scope="module")
def policy(base_dir):
    torch.manual_seed(0)
    return JanusPolicy.from_base(base_dir)


@pytest.fixture(scope="module")
def rows():
    from strokes.data.build import DataConfig, make_rows

    return make_rows(DataConfig(size=12, seed=3, workers=1), progress=False)


def test_one_vocabulary_is_janus_text_head_then_its_generation_head(policy):
    """Ids below V (the language model's vocabulary) are text and go through `embed_tokens`; ids
    V + k are code k and go through Janus's generation embeddings and aligner; the logits are the
    LM head's over V then the generation head's over the codebook, from the same hidden states."""
    p, model = policy.processor, policy.model
    v = model.lm_head.out_features
    assert p.code_offset == v and p.num_codes == 64 and p.vocab_size == v + 64
    assert max(p.special.values()) < v and max(p.text_ids) < v  # markers and words are text ids
    torch.manual_seed(1)
    text = p.prompt_ids("a red circle") + [p.special["<vision_start>"]]
    codes = torch.randint(0, p.num_codes, (20,))
    ids = torch.tensor([text + (codes + v).tolist()])
    with torch.no_grad():
        out = model(input_ids=ids).logits[0]
        inner = model.model
        embeds = torch.cat([inner.language_model.embed_tokens(torch.tensor(text)),
                            inner.generation_aligner(inner.generation_embeddings(codes))])
        h = inner.language_model(inputs_embeds=embeds[None]).last_hidden_state[0]
        expected = torch.cat([model.lm_head(h), inner.generation_head(h)], -1)
    assert out.shape == (len(text) + 20, v + 64)
    assert torch.allclose(out, expected, atol=1e-5)


def test_processor_keeps_the_grammar_and_loss_mask_of_the_tiny_processor(policy, rows):
    """Same trajectory, same token structure as the tiny processor, position by position; the text
    round-trips through Janus's tokenizer and each image is its VQ's fixed grid of codes."""
    p = policy.processor
    assert p.codes_per_image == 64 and p.image_tokenizer.image_size == 64
    check_grammar_like_the_tiny_processor(p, rows)


def test_packed_rows_stay_isolated_as_the_trainer_feeds_them(policy):
    """Packed rows with restarting position ids, no mask, `use_cache=False` (the trainer's): Janus's
    Llama text model builds the block-diagonal mask, codes and text alike."""
    v = policy.processor.code_offset
    torch.manual_seed(0)
    a = torch.cat([torch.randint(10, 60, (1, 4)), torch.randint(v, v + 64, (1, 3))], 1)
    b = torch.randint(v, v + 64, (1, 5))
    ids, pos = torch.cat([a, b], 1), torch.cat([torch.arange(7), torch.arange(5)])[None]
    with torch.no_grad():
        packed = policy.model(input_ids=ids, position_ids=pos, use_cache=False).logits
        alone = torch.cat([policy.model(input_ids=a).logits, policy.model(input_ids=b).logits], 1)
    assert torch.allclose(packed, alone, atol=1e-5)


def test_cached_decoding_samples_from_the_plain_forwards_logits(policy):
    """The engine decodes through the one-vocabulary forward with a KV cache, refilling and compacting
    rows: at every sampled position the logits it sampled from equal a plain forward's over the
    finished sequence (text positions from the LM head, code positions from the generation head)."""
    from rollout import Engine, RolloutConfig

    torch.set_num_threads(1)
    engine = Engine(policy, RolloutConfig(batch_size=4, refill_fraction=0.5, max_steps=1, max_refines=1,
                                          max_text_tokens=6, device="cpu"))
    p = policy.processor
    engine.decoder.trace = []
    prompts = [r.text for r in make_suite("test", 1, 3)]  # 6 prompts through a batch of 4
    outs = engine.decoder.run([p.prompt_ids(t) for t in prompts], engine.generator(0))
    assert engine.decoder.stats["refills"] >= 1
    seen = {(k, t): lg for k, t, lg in engine.decoder.trace}
    sampled_codes = 0
    for k, o in enumerate(outs):
        assert not o.error
        with torch.no_grad():
            plain = policy.model(input_ids=torch.tensor([o.ids])).logits[0].float()
        for t in range(o.context_length, len(o.ids)):
            assert torch.allclose(seen[(k, t)], plain[t - 1], atol=1e-4, rtol=1e-4), f"row {k} position {t}"
            sampled_codes += p.is_code(o.ids[t])
    assert sampled_codes >= 6 * 64


def test_a_round_runs_end_to_end(policy, tmp_path):
    """rollout -> oracle -> critique + replay -> one LoRA SFT step (merged) -> eval -> reload."""
    run_round(policy, tmp_path, "JanusUnified", first_q)


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_a_grpo_step_runs_on_the_adapter(policy, tmp_path, lora):
    """One GRPO step through the loop's rollout function and judge rewards: LoRA on the text model
    merged back into a `JanusUnified`, or every weight trained against a KL reference that TRL loads
    from the policy's folder (it must come back as the one-vocabulary model, or the reference's
    log-probs over codes would not exist); rewards logged, the checkpoint reloads."""
    grpo_step(policy, tmp_path, "JanusUnified", first_q, lora=lora)


def test_checkpoint_round_trip(policy, rows, tmp_path):
    """One folder: the model (text model, generation embeddings/aligner/head, VQ, SigLIP) stored once,
    the tokenizer, `processor.json` naming the adapter, `checksums.json` over them. It reloads to the
    same weights and logits, and the processor loads alone (VQ read from the safetensors)."""
    from safetensors import safe_open

    from strokes.model.policy import checkpoint_kind
    from strokes.trajectory import from_row

    policy.save_pretrained(tmp_path)
    assert checkpoint_kind(tmp_path) == "strokes.janus"
    assert json.loads((tmp_path / "processor.json").read_text())["canvas"] == 64
    files = json.loads((tmp_path / "checksums.json").read_text())
    assert "model.safetensors" in json.dumps(files) and "processor.json" in json.dumps(files)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    for part in ("generation_embeddings", "generation_aligner", "generation_head", "vqmodel", "vision_model"):
        assert any(f"model.{part}." in k for k in keys), part
    assert len(keys) == len(set(keys)) and not any(k.startswith("vq.") for k in keys)
    loaded = Policy.from_pretrained(tmp_path)
    assert isinstance(loaded, JanusPolicy)
    a, b = policy.model.state_dict(), loaded.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    t = from_row(rows[0])
    ids = torch.tensor([policy.processor.encode(t).input_ids])
    with torch.no_grad():
        assert torch.equal(loaded.model(input_ids=ids).logits, policy.model(input_ids=ids).logits)
    alone = JanusProcessor.from_pretrained(tmp_path)
    assert alone.encode(t) == policy.processor.encode(t)
    assert np.array_equal(alone.image_tokenizer.decode(list(range(64))),
                          policy.processor.image_tokenizer.decode(list(range(64))))
    assert loaded.processor.image_tokenizer.vq is loaded.model.model.vqmodel  # shared, not a copy


def test_a_downloaded_checkpoint_converts_the_same_way_every_time(base_dir, tmp_path):
    """`python -m strokes.model.janus --base DIR --out DIR` (what `loop.base_checkpoint` then names):
    seeded, so two conversions give the same policy, and it grew the vocabulary by the markers."""
    from strokes.model.janus import main

    for name in ("a", "b"):
        main(["--base", str(base_dir), "--out", str(tmp_path / name)])
    a, b = Policy.from_pretrained(tmp_path / "a"), Policy.from_pretrained(tmp_path / "b")
    assert isinstance(a, JanusPolicy)
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    base = json.loads((base_dir / "config.json").read_text())["text_config"]["vocab_size"]
    assert a.processor.code_offset == base + 15


def test_cfg_scale_runs_through_the_engine(policy):
    """Classifier-free guidance is the engine's (twin rows with an empty prompt, image spans only):
    scale 1 gives the plain trajectories, scale 5 (Janus's default) other well-formed sketches."""
    from dataclasses import replace

    from rollout import Engine, RolloutConfig

    torch.set_num_threads(1)
    records = make_suite("test", 1, 5)[:4]
    cfg = RolloutConfig(mode="single_pass", batch_size=8, device="cpu", seed=4)
    plain = Engine(policy, cfg).run(records)
    one = Engine(policy, replace(cfg, cfg_scale=1.0)).run(records)
    guided = Engine(policy, replace(cfg, cfg_scale=5.0)).run(records)
    assert all(np.array_equal(a.images()[0], b.images()[0]) for a, b in zip(plain, one))
    assert all("failed" not in t.meta and len(t.images()) == 1 for t in guided)
    assert any(not np.array_equal(a.images()[0], b.images()[0]) for a, b in zip(plain, guided))


def test_bad_inputs_fail_in_one_line(tmp_path):
    with pytest.raises(InputError, match="model.image_size"):
        JanusModelConfig(image_size=60)
    with pytest.raises(InputError, match="model.base"):
        JanusPolicy.from_base(tmp_path / "nowhere")
    with pytest.raises(InputError, match="not a checkpoint"):
        JanusPolicy.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "multi_modality"}))  # DeepSeek's own layout
    with pytest.raises(InputError, match="'multi_modality' checkpoint, not transformers' Janus"):
        JanusPolicy.from_base(tmp_path)


def test_markers_take_spare_rows_when_the_vocabulary_has_them(tmp_path):
    """Janus-Pro's language model has more rows (102,400) than its tokenizer has tokens: the markers
    go into those rows and the codes still start at the language model's vocabulary size."""
    from strokes.model.janus import tiny_base

    model, tokenizer = tiny_base(TINY)
    rows = len(tokenizer) + 32
    model.resize_token_embeddings(rows, mean_resizing=False)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    p = JanusPolicy.from_base(tmp_path)
    assert p.processor.code_offset == rows == p.model.get_input_embeddings().num_embeddings
    assert max(p.processor.special.values()) == len(tokenizer) + 14
    assert p.model(input_ids=torch.tensor([[0, rows + 3]])).logits.shape[-1] == rows + 64


def test_a_rollout_actor_loads_the_next_checkpoint_in_place(policy, tmp_path):
    """`rollout.weights.PolicySlot` (what a rollout actor does between rounds): a later Janus
    checkpoint is copied into the same model object, whose logits then equal a fresh load's, and
    the processor keeps reading the model's own VQ."""
    from dataclasses import replace

    from rollout.weights import PolicySlot

    policy.save_pretrained(tmp_path / "a")
    JanusPolicy.build(replace(TINY, seed=1)).save_pretrained(tmp_path / "b")
    ids = torch.tensor([policy.processor.prompt_ids("a red circle") + [policy.processor.code_offset + 3]])
    slot = PolicySlot()
    assert slot.load(tmp_path / "a") == "fresh"
    model = slot.policy.model
    assert slot.load(tmp_path / "b") == "in_place" and slot.policy.model is model
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, Policy.from_pretrained(tmp_path / "b").model(input_ids=ids).logits)
        assert not torch.equal(model(input_ids=ids).logits, policy.model(input_ids=ids).logits)
    assert slot.policy.processor.image_tokenizer.vq is model.model.vqmodel
