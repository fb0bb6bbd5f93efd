"""The SFT trainer on a tiny real policy and real base data: it learns, it masks what must not be
learned, packing keeps sequences apart, segment weights act, LoRA merges, runs resume, metrics land,
and `selfplay train` works end to end."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from selfplay.cli import main
from strokes.data.build import DataConfig, build, load
from strokes.errors import InputError
from strokes.model.policy import Policy
from strokes.model.tiny import ModelConfig
from strokes.trajectory import from_row
from trainer.config import LoraConfig, TrainConfig
from trainer.losses import segment_table
from trainer.sft import make_trainer, sft_config, tokenize, train
from trainer.trl_common import use_bf16, use_cuda

torch.set_num_threads(1)
TINY = ModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)


def cfg(**kw) -> TrainConfig:
    """A small, fast CPU run; tests override what they exercise."""
    base = dict(max_steps=4, warmup_steps=0, lr=5e-3, batch_size=4, max_length=512, logging_steps=1,
                save_steps=1000, tokenize_workers=1, num_threads=1)
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def base() -> Policy:
    return Policy.build(TINY)  # fits the image tokenizer once (~10 s); others reuse its processor


def fresh(base: Policy) -> Policy:
    """A newly initialised tiny model (same seed, so the same weights) with the shared processor."""
    return Policy.build(TINY, processor=base.processor)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("data")
    build(DataConfig(size=200, workers=1), out, progress=False)
    return out


@pytest.fixture(scope="module")
def dataset(data_dir):
    return load(data_dir)


@pytest.fixture(scope="module")
def tokenized(dataset, base):
    return tokenize(dataset, base.processor, 1)


def first_batch(trainer) -> dict:
    return dict(next(iter(trainer.get_train_dataloader())))


def eval_loss(trainer, batch: dict) -> float:
    trainer.model.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, dict(batch)).item()
    trainer.model.train()
    return loss


def token_ce(model, ids, labels, position_ids=None):
    """Per-target CE of one row (one sequence, or packed ones told apart by `position_ids`), and
    which targets bear loss."""
    pos = None if position_ids is None else position_ids[None]
    with torch.no_grad():
        logits = model(input_ids=ids[None], position_ids=pos, use_cache=False).logits[0, :-1]
    target = labels[1:]
    ce = torch.nn.functional.cross_entropy(logits, target.clamp(min=0), reduction="none")
    return ce, target != -100


def test_training_lowers_loss_and_moves_every_trainable_parameter(base, tokenized, tmp_path):
    policy = fresh(base)
    trainer = make_trainer(policy, tokenized, cfg(max_steps=8), tmp_path / "trainer")
    batch = first_batch(trainer)
    before_loss = eval_loss(trainer, batch)
    params = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert len(params) == len(list(policy.model.parameters()))  # full fine-tuning: everything trains
    trainer.train()
    after_loss = eval_loss(trainer, batch)
    assert after_loss < before_loss - 0.2, (before_loss, after_loss)
    unchanged = [n for n, p in trainer.model.named_parameters() if p.requires_grad and torch.equal(p, params[n])]
    assert not unchanged


def test_no_loss_on_prompt_or_deliberate_mistakes(base, dataset, tokenized, tmp_path):
    trainer = make_trainer(fresh(base), tokenized, cfg(max_length=1024), tmp_path / "trainer")
    masks = {tuple(r["input_ids"]): r["completion_mask"] for r in tokenized}
    trajs = {tuple(base.processor.encode(from_row(r)).input_ids): from_row(r) for r in dataset}
    p = base.processor
    seen = wrong_codes_seen = 0
    for row in trainer.train_dataset:  # the packed dataset TRL built: every sequence, labels as trained
        start = 0
        for n in row["seq_lengths"]:
            ids, labels = row["input_ids"][start: start + n], row["labels"][start: start + n]
            start += n
            mask = masks[tuple(ids)]  # each packed sequence is a whole tokenized row (none truncated)
            assert labels == [i if m else -100 for i, m in zip(ids, mask)]
            t = trajs[tuple(ids)]
            prompt_len = len(p.prompt_ids(t.prompt))
            assert all(x == -100 for x in labels[:prompt_len])
            assert (labels[prompt_len] == -100) == t.steps[0].wrong_plan  # learning starts right after it
            # every code of a deliberately wrong sketch (or of a wrong plan's sketch) is unlabelled, no other
            wrong = sum(s.wrong_plan or s.wrong_image for s in t.steps)
            wrong += sum(r.wrong_image for s in t.steps for r in s.refinements)
            masked_codes = sum(1 for i, lab in zip(ids, labels) if p.is_code(i) and lab == -100)
            assert masked_codes == p.codes_per_image * wrong
            seen += 1
            wrong_codes_seen += masked_codes
    assert seen == len(tokenized) and wrong_codes_seen > 0

    # And the loss itself: its gradient reaches exactly the logits whose target is labelled.
    batch = first_batch(trainer)
    captured = {}

    def keep(module, args, output) -> None:
        output.retain_grad()
        captured["o"] = output

    hook = trainer.model.lm_head.register_forward_hook(keep)
    trainer.compute_loss(trainer.model, dict(batch)).backward()
    hook.remove()
    touched = captured["o"].grad[:, :-1].abs().sum(-1) > 0
    labelled = batch["labels"][:, 1:] != -100
    assert torch.equal(touched, labelled) and (~labelled).any()


def test_packed_rows_stay_isolated(base, tokenized, tmp_path):
    trainer = make_trainer(fresh(base), tokenized, cfg(batch_size=2), tmp_path / "trainer")
    batch = first_batch(trainer)
    assert batch["input_ids"].shape[0] == 2  # packed rows stay rows (not one flattened row)
    packed = eval_loss(trainer, batch)
    total, count, sequences = 0.0, 0, 0
    for row in range(2):
        pos = batch["position_ids"][row]
        starts = (pos == 0).nonzero().flatten().tolist() + [pos.numel()]
        for s, e in zip(starts[:-1], starts[1:]):
            ce, valid = token_ce(trainer.model, batch["input_ids"][row, s:e], batch["labels"][row, s:e])
            total += ce[valid].sum().item()
            count += int(valid.sum())
            sequences += int(valid.any())
    assert sequences > 2  # two packed rows of 512 tokens hold several sequences
    assert packed == pytest.approx(total / count, rel=1e-4)
    # the check can fail: attending across sequence borders gives another loss
    with torch.no_grad():
        leaky = trainer.compute_loss(trainer.model, {"input_ids": batch["input_ids"], "labels": batch["labels"],
                                                     "attention_mask": torch.ones_like(batch["input_ids"])})
    assert abs(leaky.item() - packed) > 1e-3


def test_segment_weights_scale_each_kind(base, tokenized, tmp_path):
    rows = tokenized.select(range(40))
    weights = {"text": 2.0, "image": 0.0, "boundary": 1.0}
    weighted = make_trainer(fresh(base), rows, cfg(loss_weights=weights), tmp_path / "w")
    plain = make_trainer(fresh(base), rows, cfg(), tmp_path / "p")
    batch = first_batch(weighted)
    kind, _ = segment_table(base.processor, {})
    per_kind, n = [0.0, 0.0, 0.0], 0
    for row in range(batch["input_ids"].shape[0]):
        ce, valid = token_ce(weighted.model, batch["input_ids"][row], batch["labels"][row], batch["position_ids"][row])
        seg = kind[batch["labels"][row, 1:].clamp(min=0)]
        per_kind = [t + ce[valid & (seg == i)].sum().item() for i, t in enumerate(per_kind)]
        n += int(valid.sum())
    assert eval_loss(plain, batch) == pytest.approx(sum(per_kind) / n, rel=1e-4)
    assert eval_loss(weighted, batch) == pytest.approx((2 * per_kind[0] + per_kind[2]) / n, rel=1e-4)
    # with image weight 0, which codes the image targets ask for makes no difference; with weight 1 it does
    other = dict(batch)
    labels = batch["labels"].clone()
    codes = (labels >= base.processor.code_offset) & (labels < base.processor.code_offset + base.processor.num_codes)
    labels[codes] = base.processor.code_offset + (labels[codes] - base.processor.code_offset + 7) % base.processor.num_codes
    other["labels"] = labels
    assert eval_loss(weighted, other) == pytest.approx(eval_loss(weighted, batch), rel=1e-6)
    assert abs(eval_loss(plain, other) - eval_loss(plain, batch)) > 1e-3


def test_length_grouped_batches_pad_less(base, tokenized, tmp_path):
    def pad_share(trainer) -> float:
        masks = [b["attention_mask"] for b in trainer.get_train_dataloader()]
        return 1 - sum(int(m.sum()) for m in masks) / sum(m.numel() for m in masks)

    random = make_trainer(fresh(base), tokenized, cfg(packing=False), tmp_path / "r")
    grouped = make_trainer(fresh(base), tokenized, cfg(packing=False, group_by_length=True), tmp_path / "g")
    assert pad_share(grouped) < pad_share(random) / 2
    with pytest.raises(InputError, match="train.group_by_length"):
        cfg(group_by_length=True)  # packing is on: nothing to group


def test_lora_trains_only_adapters_and_merges_into_a_plain_checkpoint(base, dataset, tmp_path):
    policy = fresh(base)
    original = {k: v.clone() for k, v in policy.model.state_dict().items()}
    lora = LoraConfig(enabled=True, r=4, alpha=8)
    summary = train(policy, dataset.select(range(60)), cfg(max_steps=3, lr=1e-2, lora=lora), tmp_path)
    assert summary["steps"] == 3
    merged = policy.model.state_dict()
    assert set(merged) == set(original)  # a plain model again: no adapter weights left
    targets = tuple(lora.target_modules)
    for name, w in merged.items():
        adapted = name.endswith(".weight") and name.split(".")[-2] in targets
        assert torch.equal(w, original[name]) != adapted, name  # only the adapted projections moved
    ckpt = tmp_path / "checkpoint"
    assert not (ckpt / "adapter_config.json").exists()
    loaded = Policy.from_pretrained(ckpt)
    ids = torch.tensor([base.processor.encode(from_row(dataset[0])).input_ids])
    policy.model.eval()
    with torch.no_grad():
        assert torch.allclose(loaded.model(ids).logits, policy.model(ids).logits, atol=1e-5)


@pytest.fixture(scope="module")
def straight_run(base, dataset, tmp_path_factory):
    """Six uninterrupted steps: the reference for resume and the source of metrics."""
    out = tmp_path_factory.mktemp("straight")
    policy = fresh(base)
    return train(policy, dataset.select(range(80)), cfg(max_steps=6, save_steps=2), out), policy, out


def test_interrupted_run_resumes_to_the_same_result(base, dataset, straight_run, tmp_path):
    summary, reference, _ = straight_run
    rows = dataset.select(range(80))
    first = train(fresh(base), rows, cfg(max_steps=6, save_steps=2, max_minutes=1e-9), tmp_path)
    assert first["steps"] == 1 and not first["complete"] and not first["resumed"]
    assert (tmp_path / "trainer" / "checkpoint-1").is_dir()
    policy = fresh(base)  # a new process after a kill would start from a fresh model, too
    second = train(policy, rows, cfg(max_steps=6, save_steps=2), tmp_path)
    assert second["resumed"] and second["complete"] and second["steps"] == summary["steps"] == 6
    loaded = Policy.from_pretrained(tmp_path / "checkpoint")
    want = reference.model.state_dict()
    for name, w in loaded.model.state_dict().items():
        assert torch.allclose(w, want[name], atol=1e-5), name


def test_metrics_file_has_segment_losses_lr_and_throughput(straight_run):
    _, _, out = straight_run
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r["event"] == "train"]
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5, 6]
    for r in steps:
        for key in ("loss", "loss_text", "loss_image", "loss_boundary", "learning_rate", "grad_norm"):
            assert r[key] > 0, key
        assert r["tokens_per_s"] > 0 and 0.5 < r["useful_token_share"] <= 1
    assert rows[-1]["event"] == "train_end"
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["complete"] and summary["tokens_per_s"] > 0
    from PIL import Image

    assert Image.open(out / "loss.png").size[0] > 500  # the curve, drawn from the same file


def test_wandb_offline_mirrors_the_metrics(base, dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    import wandb

    wandb.teardown()  # wandb keeps the first run's settings per process: this run must read the env above
    train(fresh(base), dataset.select(range(40)), cfg(max_steps=2, report_to="wandb"), tmp_path / "run")
    runs = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1
    assert b"loss_image" in runs[0].read_bytes() and b"tokens_per_s" in runs[0].read_bytes()


def test_cpu_and_gpu_precision_defaults(monkeypatch, tmp_path):
    args = sft_config(TrainConfig(device="cpu"), tmp_path)
    assert args.use_cpu and not args.bf16
    assert sft_config(TrainConfig(device="cpu", bf16=True), tmp_path).bf16
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert use_cuda(TrainConfig()) and use_bf16(TrainConfig())  # auto: CUDA, bf16
    assert not use_bf16(TrainConfig(bf16=False)) and not use_cuda(TrainConfig(device="cpu"))


def test_cli_trains_end_to_end(base, tmp_path):
    init = tmp_path / "init"
    fresh(base).save_pretrained(init)
    config = tmp_path / "tiny.yaml"
    config.write_text(
        "model: {hidden_size: 32, num_layers: 2, num_heads: 2, intermediate_size: 64}\n"
        "data: {size: 40, workers: 1}\n"
        "train: {batch_size: 4, max_length: 512, warmup_steps: 0, logging_steps: 1, tokenize_workers: 1,"
        " num_threads: 1}\n")
    out = tmp_path / "out"
    rc = main(["train", "--config", str(config), "--out", str(out), "--init", str(init),
               "--set", "train.max_steps=3"])
    assert rc == 0
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] == 3 and summary["complete"]
    assert (out / "data" / "summary.json").is_file()  # built from the config's data section
    assert "max_steps: 3" in (out / "config.yaml").read_text()
    Policy.from_pretrained(out / "checkpoint")


@pytest.mark.parametrize("override, field", [("train.lr=fast", "train.lr"),
                                             ("train.learning_rate=0.1", "train.learning_rate"),
                                             ("train.loss_weights.pixels=1", "train.loss_weights.pixels"),
                                             ("train.bf16=maybe", "train.bf16")])
def test_cli_rejects_a_malformed_field_in_one_line(tmp_path, capsys, override, field):
    rc = main(["train", "--config", str(_empty(tmp_path)), "--out", str(tmp_path / "o"), "--set", override])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and field in err


def test_an_empty_dataset_is_refused_in_one_line(base, dataset, tmp_path):
    with pytest.raises(InputError, match="no trajectories"):
        train(fresh(base), dataset.select([]), cfg(), tmp_path)


def test_cli_entry_point_exits_2_on_a_bad_config_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  batch_size: many\n")
    p = subprocess.run([sys.executable, "-m", "selfplay.cli", "train", "--config", str(bad), "--out",
                        str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert p.stderr.strip().count("\n") == 0 and "train.batch_size" in p.stderr


def _empty(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("{}\n")
    return path


def test_exponent_numbers_without_a_dot_are_numbers():
    """YAML 1.1 reads `2e-4` as a string; a float field takes it as the number it is."""
    from selfplay.config import load_config

    assert load_config(None, ["train.lr=2e-4"]).train.lr == 2e-4
