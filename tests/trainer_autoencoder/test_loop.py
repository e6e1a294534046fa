"""The loop both trainers share (train.loop): a window's losses averaged and checked, the first
non-finite step named, the end of a run (last step, --stop-after, a signal), and the flags both
trainers spell the same, old spellings working with one notice each."""
from __future__ import annotations

import os
import signal

import pytest
import torch

from train import autoencoder
from train.loop import Loop, check_finite
from train.runtime import Dist, TrainError


def test_a_window_is_averaged_and_a_non_finite_loss_names_its_first_step():
    check_finite({"loss": 0.5}, 3)
    loop = Loop(Dist(), start=0, steps=6, progress=False)
    with loop:
        loop.record(1, {"loss": torch.tensor(1.0), "rec": 0.5})  # tensors (no read back per step) or floats
        loop.record(2, {"loss": torch.tensor(3.0), "rec": 1.5})
        assert loop.means() == {"loss": 2.0, "rec": 1.0} and loop.rate > 0
        loop.record(3, {"loss": 1.0, "rec": float("nan")})
        loop.record(4, {"loss": float("inf"), "rec": 0.0})
        with pytest.raises(TrainError, match=r"step 3: the loss is not finite \(rec nan\); nothing written"):
            loop.check()
        with pytest.raises(TrainError, match="step 3: "):  # check() keeps the window for the next line
            loop.means()


def test_a_run_ends_at_its_last_step_at_stop_after_or_after_a_signal():
    loop = Loop(Dist(), start=2, steps=10, stop_after=3, progress=False)
    with loop:
        ends = []
        for step in (3, 4, 5):
            loop.record(step, {"loss": 0.1})
            ends.append(loop.ending)
    assert loop.stop_at == 5 and ends == [False, False, True] and not loop.done
    assert Loop(Dist(), start=2, steps=10, stop_after=0).ending  # build, checkpoint, stop
    assert Loop(Dist(), start=10, steps=10).done and Loop(Dist(), start=0, steps=10).stop_at == 10
    assert loop.every(5) and not loop.every(2) and not loop.every(0) and not loop.every(None)

    loop = Loop(Dist(), start=0, steps=100, progress=False)
    with loop:
        loop.record(1, {"loss": 0.1})
        assert not loop.ending
        os.kill(os.getpid(), signal.SIGTERM)  # a scheduler's SIGTERM: this step finishes, then the run stops
        loop.record(2, {"loss": 0.1})
        assert loop.ending and not loop.done
    assert signal.getsignal(signal.SIGTERM) is not loop.signal._handle  # the handlers are given back


OLD_NEW = [(["--cpu"], ["--device", "cpu"]), (["--save-every", "5"], ["--ckpt-every", "5"]),
           (["--sample-every", "7"], ["--sheet-every", "7"]), (["--max-grad-norm", "1.5"], ["--clip-grad", "1.5"])]


def test_old_flags_keep_working_with_one_notice_each(tmp_path, capsys, monkeypatch):
    base = ["--out", str(tmp_path / "m.safetensors"), "--steps", "3"]
    for old, new in OLD_NEW:
        then = autoencoder.parse(base + old)
        use = new[0] if len(old) > 1 else " ".join(new)  # --cpu: use --device cpu
        assert capsys.readouterr().err == f"note: {old[0]} is deprecated; use {use} (same meaning)\n"
        assert then == autoencoder.parse(base + new) and capsys.readouterr().err == ""
    autoencoder.parse(base + [flag for old, _ in OLD_NEW for flag in old])
    assert len(capsys.readouterr().err.splitlines()) == len(OLD_NEW)
    monkeypatch.setenv("RANK", "1")  # torchrun: only rank 0 says it
    autoencoder.parse(base + ["--cpu"])
    assert capsys.readouterr().err == ""
    text = autoencoder.build_parser().format_help()
    assert "--ckpt-every CKPT_EVERY" in text and "--save-every" not in text and "--cpu" not in text
    assert "(default 40000)" in text.replace("\n", " ").replace("  ", " ")
