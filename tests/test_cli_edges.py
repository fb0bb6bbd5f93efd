"""Issue 30, the command line's edges: a device torch cannot use is one line, a capital letter is read,
a verdict on a plural group is a sentence, and every option's `--help` shows its default."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from selfplay.cli import build_parser, has_default, main
from strokes.shapeworld import Obj, Scene, check, record_from_text, render

BASE = Path(__file__).resolve().parents[1] / "checkpoints" / "base"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a torch that sees no GPU")
@pytest.mark.parametrize("argv", [["sample", str(BASE), "a red circle"], ["eval", str(BASE), "--suite", "s.jsonl"],
                                  ["judge-serve", "--judge", "self", "--checkpoint", str(BASE)]])
def test_a_device_this_torch_cannot_use_is_one_line(argv, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.jsonl").write_text('{"tag": "colors", "include": [{"class": "circle", "count": 1, '
                                      '"color": "red"}], "prompt": "a red circle"}\n')
    assert main([*argv, "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--device cuda: this torch" in err[0] and "no CUDA device" in err[0], err
    assert main([*argv, "--device", "gpu0"]) == 2
    assert "--device gpu0: not a device" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [tmp_path / "s.jsonl"]  # refused before any output


def test_sample_reads_a_capitalised_prompt_and_states_its_verdict_once(tmp_path, capsys):
    assert main(["sample", str(BASE), "Two red squares", "--out", str(tmp_path / "strip.png"), "--max-steps", "3"]) == 0
    out = capsys.readouterr().out
    assert "prompt:  two red squares" in out
    verdicts = [line for line in out.splitlines() if "satisfies the prompt" in line or "GenEval rules" in line]
    assert len(verdicts) == 1, verdicts


def test_a_wrong_colour_on_a_group_of_two_reads_as_a_sentence():
    record = record_from_text("two red squares")
    both_blue = render(Scene((Obj("square", "blue", 4, 4), Obj("square", "blue", 32, 32))))
    one_blue = render(Scene((Obj("square", "red", 4, 4), Obj("square", "blue", 32, 32))))
    assert [c.sentence() for c in check(record, both_blue)] == ["two red squares are blue instead of red"]
    assert [c.sentence() for c in check(record, one_blue)] == ["two red squares are red and blue instead of red"]
    single = render(Scene((Obj("square", "blue", 4, 4),)))
    assert [c.sentence() for c in check(record_from_text("a red square"), single)] == \
        ["a red square is blue instead of red"]  # the inspection language the model learned is unchanged


def test_every_options_help_shows_its_default_once():
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, parser in sub.choices.items():
        text = " ".join(parser.format_help().split())
        assert "(default: None)" not in text, name
        for action in parser._actions:
            if has_default(action):
                assert text.count(f"(default: {action.default})") >= 1, (name, action.option_strings)
                assert "(default " not in action.help, (name, action.help)  # no hand-written twin of it


def test_wrapping_a_model_in_lora_prints_no_deprecation_warning(recwarn):
    """peft reads transformers' deprecated `is_gradient_checkpointing` as it wraps a model (TRL every
    step): silenced by message before every trainer is built, so no run's console shows it."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from strokes import console

    def lora() -> None:
        model = LlamaForCausalLM(LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                             num_attention_heads=2, vocab_size=32))
        get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))

    lora()
    assert any("is_gradient_checkpointing" in str(w.message) for w in recwarn)  # what peft does unhushed
    recwarn.clear()
    console.hush_deprecations()
    lora()
    assert not [w for w in recwarn if issubclass(w.category, FutureWarning)]
