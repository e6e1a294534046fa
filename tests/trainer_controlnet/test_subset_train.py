"""``train.controlnet --subsets`` end to end on the tiny SD1.5-architecture base (CPU)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from scg_testing.trainers import (
    CONTROLNET_SCRIPT,
    ROOT,
    assert_same_training,
    child_env,
    controlnet_args,
    run_controlnet,
)
from train import runtime

pytestmark = pytest.mark.host

SUBSETS = ("--modules", "all", "--subsets", "--p-group", "0.5", "--p-module", "0.4", "--p-none", "0.1")


@pytest.fixture(scope="module")
def trained(files):
    out = files["root"] / "subsets" / "any.safetensors"
    summary = run_controlnet(controlnet_args(files, out, *SUBSETS, "--steps", "30", "--lr", "1e-3",
                                             "--eval-images", "4", "--log-every", "5", "--samples", "1",
                                             "--sheet-every", "30", "--sample-steps", "2"))
    return out, summary


def test_any_subset_training_lowers_the_loss_and_writes_the_format(trained, files):
    from scg_models import formats

    out, s = trained
    assert s["done"] and s["step"] == 30
    assert s["last_eval_loss"] < 0.9 * s["first_eval_loss"], s
    cn = formats.load_controlnet_file(out)
    assert formats.controlnet_kind(cn, str(out)) == formats.ANY_SUBSET
    assert cn.state_dict["input_hint_block.0.weight"].shape[1] == 3 + 16
    with safe_open(str(out), "pt") as fh:
        info = json.loads(fh.metadata()["scg_controlnet"])
    assert info["kind"] == "any_subset" and info["modules"] == list(range(16))
    state = torch.load(runtime.checkpoints(out.with_name("any.train"))[-1], weights_only=True)
    assert state["recipe"]["subsets"] == {"p_group": 0.5, "p_module": 0.4, "p_none": 0.1}
    # the mask inputs were trained (they started random, the gradient reached them)
    assert (cn.state_dict["input_hint_block.0.weight"][:, 3:].float().abs().sum() > 0)


def test_resume_draws_the_same_subsets(files, monkeypatch):
    from train import cn_step

    drawn: list[tuple[int, tuple]] = []
    real = cn_step.SubsetTrainer.subsets_of

    def record(self, positions):
        out = real(self, positions)
        drawn.extend((int(p), tuple(s)) for p, s in zip(positions, out) if int(p) >= 0)  # eval positions are < 0
        return out

    monkeypatch.setattr(cn_step.SubsetTrainer, "subsets_of", record)
    root = files["root"] / "subset_resume"
    common = (*SUBSETS, "--steps", "5", "--lr", "1e-3", "--seed", "4", "--no-gradient-checkpointing")
    run_controlnet(controlnet_args(files, root / "a.safetensors", *common))
    straight, drawn[:] = list(drawn), []
    run_controlnet(controlnet_args(files, root / "b.safetensors", *common, "--stop-after", "2"))
    run_controlnet(controlnet_args(files, root / "b.safetensors", *common, "--resume"))
    assert drawn == straight and len(straight) == 10
    assert len({s for _, s in straight}) > 3  # different subsets per sample
    a = torch.load(runtime.checkpoints(root / "a.train")[-1], weights_only=True)["controlnet"]
    b = torch.load(runtime.checkpoints(root / "b.train")[-1], weights_only=True)["controlnet"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    from scg_models import SCGError

    with pytest.raises(SCGError, match="subsets: saved"):  # a per-group run cannot continue an any-subset one
        run_controlnet(controlnet_args(files, root / "b.safetensors", "--modules", "all", "--steps", "6", "--lr",
                                       "1e-3", "--seed", "4", "--no-gradient-checkpointing", "--resume"))


def test_two_process_gloo_run_matches_one_process(files):
    root = files["root"] / "subset_ddp"
    common = (*SUBSETS, "--steps", "2", "--lr", "1e-4", "--seed", "1", "--no-gradient-checkpointing")
    argv = controlnet_args(files, root / "two.safetensors", *common)
    argv[argv.index("--batch-size") + 1] = "1"
    env = child_env(COMFYUI_PATH=str(files["comfyui"]))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           CONTROLNET_SCRIPT, *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    two = torch.load(root / "two.train" / "ckpts" / "step_00000002.pt", weights_only=True)["controlnet"]
    run_controlnet(controlnet_args(files, root / "one" / "one.safetensors", *common))  # 1 process x batch 2
    one = torch.load(root / "one" / "one.train" / "ckpts" / "step_00000002.pt", weights_only=True)["controlnet"]
    other_args = [("2" if x == "1" and common[i - 1] == "--seed" else x) for i, x in enumerate(common)]
    run_controlnet(controlnet_args(files, root / "other" / "other.safetensors", *other_args))
    other = torch.load(root / "other" / "other.train" / "ckpts" / "step_00000002.pt", weights_only=True)["controlnet"]
    assert_same_training(two, one, other, steps=2, lr=1e-4)


def test_fine_tune_from_a_per_group_controlnet_widens_the_hint_block(files, tmp_path):
    src = tmp_path / "hc0.safetensors"
    run_controlnet(controlnet_args(files, src, "--steps", "2", "--lr", "1e-3"))
    out = tmp_path / "any.safetensors"
    s = run_controlnet(controlnet_args(files, out, *SUBSETS, "--steps", "3", "--stop-after", "0",
                                       "--init-controlnet", str(src)))
    assert s["step"] == 0
    start = torch.load(runtime.checkpoints(tmp_path / "any.train")[-1], weights_only=True)["controlnet"]
    given = load_file(str(src))
    w = start["input_hint_block.0.weight"]
    assert w.shape[1] == 19 and torch.equal(w[:, :3], given["input_hint_block.0.weight"].float())
    assert torch.count_nonzero(w[:, 3:]) == 0  # the mask starts with no effect
    assert all(torch.equal(v, given[k].float()) for k, v in start.items() if k != "input_hint_block.0.weight")
