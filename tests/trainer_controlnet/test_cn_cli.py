"""train.controlnet's command line without a host: the shape both trainers share (parse -> Options,
train/main exit statuses), old flag spellings working with one notice each, errors naming the flag."""
from __future__ import annotations

import re

import pytest

from train import controlnet
from train.runtime import TrainError

OLD_NEW = [(["--cpu"], ["--device", "cpu"]), (["--save-every", "5"], ["--ckpt-every", "5"]),
           (["--sample-every", "7"], ["--sheet-every", "7"]), (["--max-grad-norm", "1.5"], ["--clip-grad", "1.5"])]


def _argv(tmp_path, *extra):
    return ["--base", "sd15.safetensors", "--autoencoder", "ae.safetensors", "--modules", "HC0", "--data",
            str(tmp_path), "--out", str(tmp_path / "cn.safetensors"), *extra]


def test_old_flags_keep_working_with_one_notice_each(tmp_path, capsys, monkeypatch):
    for old, new in OLD_NEW:
        then = controlnet.parse(_argv(tmp_path, *old))
        use = new[0] if len(old) > 1 else " ".join(new)  # --cpu: use --device cpu
        assert capsys.readouterr().err == f"note: {old[0]} is deprecated; use {use} (same meaning)\n"
        now = controlnet.parse(_argv(tmp_path, *new))
        assert then == now and capsys.readouterr().err == ""
        assert now != controlnet.parse(_argv(tmp_path))  # the flag did something
    every_old = controlnet.parse(_argv(tmp_path, *[flag for old, _ in OLD_NEW for flag in old]))
    assert len(capsys.readouterr().err.splitlines()) == len(OLD_NEW)
    assert (every_old.device, every_old.ckpt_every, every_old.sheet_every, every_old.clip_grad) == ("cpu", 5, 7, 1.5)
    monkeypatch.setenv("RANK", "1")  # torchrun: only rank 0 says it
    controlnet.parse(_argv(tmp_path, "--cpu"))
    assert capsys.readouterr().err == ""


def test_defaults_live_in_the_options_and_show_in_the_help(tmp_path):
    options = controlnet.parse(_argv(tmp_path))
    assert options == controlnet.Options(base="sd15.safetensors", autoencoder="ae.safetensors", modules="HC0",
                                         data=str(tmp_path), out=str(tmp_path / "cn.safetensors"))
    assert (options.batch_size, options.lr, options.keep, options.gradient_checkpointing) == (4, 1e-5, 1, True)
    text = " ".join(controlnet.build_parser().format_help().split())
    assert "--lr LR AdamW learning rate, constant after the warm-up (default 1e-05)" in text
    assert "--keep KEEP checkpoints kept (default 1)" in text
    assert not any(old[0] in text for old, _ in OLD_NEW)  # old spellings work but are not offered


def test_bad_flags_are_one_line_errors_before_anything_loads(tmp_path, capsys):
    for extra, says in ((["--out", str(tmp_path / "cn.ckpt")], "--out must end in .safetensors"),
                        (["--log-every", "0"], "--log-every must be an integer >= 1; got 0"),
                        (["--stop-after", "-1"], "--stop-after must be an integer >= 0"),
                        (["--caption-dropout", "2"], "--caption-dropout must be in [0, 1]"),
                        (["--subsets", "--p-group", "0.9"], "--p-group")):
        with pytest.raises(TrainError, match=re.escape(says)):
            controlnet.train(_argv(tmp_path, *extra))
        assert controlnet.main(_argv(tmp_path, *extra)) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and says in err
