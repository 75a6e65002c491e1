"""The end-to-end DPO example (examples/dpo_tiny_lm.py) runs, lowers the loss, and computes the
same loss and gradients as plain PyTorch. Needs torch and the source tree."""

from __future__ import annotations

import importlib.util
import math
import os
import pathlib
import subprocess
import sys

import pytest
from helpers import NEEDS_TORCH

import dpo_fast

EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "dpo_tiny_lm.py"

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("torch") is None,
                       reason=NEEDS_TORCH),
    pytest.mark.skipif(not EXAMPLE.exists(), reason="needs the source tree (examples/)"),
]


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("dpo_tiny_lm", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules["dpo_tiny_lm"] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("dpo_tiny_lm", None)


def test_a_few_steps_lower_the_loss(example):
    lines = []
    losses = example.train(steps=3, log=lines.append)
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    assert losses[0] == pytest.approx(math.log(2), abs=1e-6)  # policy == reference at first
    assert losses[-1] < losses[0]
    assert lines[-1].startswith("loss 0.6931 -> ")


def test_gradients_match_plain_torch(example):
    import torch

    policy, reference, batch = example.build(seed=1)
    loss_diff, grad_diff = example.compare_with_torch(policy, reference, batch, beta=0.1)
    assert loss_diff < 1e-6
    assert grad_diff < 1e-6
    # After a step the policy differs from the reference: compare again there.
    example.dpo_loss_dpo_fast(policy, reference, batch).loss.backward()
    with torch.no_grad():
        for p in policy.parameters():
            p -= 0.05 * p.grad
    loss_diff, grad_diff = example.compare_with_torch(policy, reference, batch, beta=0.1)
    assert loss_diff < 1e-6 and grad_diff < 1e-6


def test_runs_as_a_script():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.dirname(os.path.dirname(dpo_fast.__file__)), env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, str(EXAMPLE), "--steps", "2", "--compare"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "vs plain PyTorch" in out.stdout and "step   1" in out.stdout
    assert "Warning" not in out.stderr


def test_fused_path_matches_plain_torch_and_prints_its_memory(example):
    policy, reference, batch = example.build(seed=2)
    loss_diff, grad_diff = example.compare_with_torch(policy, reference, batch, beta=0.1,
                                                      fused=True)
    assert loss_diff < 1e-6 and grad_diff < 1e-6
    lines = []
    losses = example.train(steps=2, fused=True, vocab=200, log=lines.append)
    assert losses[0] == pytest.approx(math.log(2), abs=1e-6) and losses[1] < losses[0]
    assert any(line.startswith("memory: the unfused step builds") for line in lines)
