"""alphapo alone with alpha != 0 runs its own fused loop (csrc/alphapo_body.h): TRL's shaped
rewards beta * r(a) computed in the kernel, and a vectorised pass over dpo_pair_alphapo's plain
path with the rows that need its logarithm forms redone by the full function.

Checked here: the loss and gradients are the general loop's values, which calls the full
function on every row (alphapo in a list with a weight-0 sft term); the rewards and
metrics agree with the NumPy reward pass that list takes, and with a plain math-module
reference; extreme inputs give no NaN; SIMD paths and thread counts give the same bits.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from dpo_fast import preference_loss
from dpo_fast._kernels import _pairwise
from dpo_fast._registry import KERNEL_IDS

ALPHAS = [0.25, -0.5, 3.0, 1e-9, -1.0]
GRID = np.array([-1e6, -1e3, -700.0, -50.0, -1.0, -1e-300, 0.0, 1e-300, 1.0, 50.0, 1e3, 1e6])
PARALLEL_N = 100_003  # above the parallel threshold, not a multiple of the chunk


def reward(a, alpha, beta):
    """TRL's beta * (1 - exp(-alpha a)) / alpha, plain float64 (math module)."""
    return beta * (-math.expm1(-alpha * a) / alpha)


def extreme_pairs(dtype, n_min=0):
    pc, pr = (a.ravel() for a in np.meshgrid(GRID, GRID))
    lengths = np.resize(np.array([1.0, 2.5, 7.0, 1000.0]), pc.size)
    reps = max(1, -(-n_min // pc.size))
    pc, pr, lengths = (np.tile(a, reps) for a in (pc, pr, lengths))
    return pc.astype(dtype), pr.astype(dtype), lengths, np.roll(lengths, 3)


def ordinary_pairs(n, dtype, seed=0):
    rng = np.random.default_rng(seed)
    pc, pr = rng.normal(-40.0, 6.0, n), rng.normal(-45.0, 6.0, n)
    nc, nr = rng.integers(1, 60, n).astype(np.float64), rng.integers(1, 60, n).astype(np.float64)
    return pc.astype(dtype), pr.astype(dtype), nc, nr


def both_paths(pc, pr, nc, nr, **kw):
    """alphapo alone (the fused loop) and in a list with a weight-0 sft term (the general
    loop, the NumPy reward pass)."""
    fused = preference_loss(pc, pr, loss_type="alphapo", chosen_lengths=nc,
                            rejected_lengths=nr, compute_grad=True, **kw)
    general = preference_loss(pc, pr, loss_type=["alphapo", "sft"], loss_weights=[1.0, 0.0],
                              chosen_lengths=nc, rejected_lengths=nr, compute_grad=True, **kw)
    return fused, general


def assert_close(got, want, rtol, what):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    same = (got == want) | (np.isnan(got) & np.isnan(want))
    with np.errstate(invalid="ignore"):  # (inf - inf where both are the same inf)
        close = np.isfinite(want) & (np.abs(got - want) <= rtol * np.abs(want))
    bad = np.flatnonzero(~(same | close))
    assert bad.size == 0, f"{what}[{bad[:3].tolist()}]: {got[bad[:3]]} vs {want[bad[:3]]}"


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("inputs", ["ordinary", "extreme"])
def test_fused_loop_matches_general_loop(inputs, alpha, dtype):
    """Loss and gradients bit for bit; rewards within a few ulp (the kernel's expm1 against
    NumPy's), the same accuracy, metrics close; weights and label smoothing on."""
    pc, pr, nc, nr = (ordinary_pairs(500, dtype) if inputs == "ordinary"
                      else extreme_pairs(dtype))
    weights = np.resize(np.array([0.5, 1.0, 0.0, 3.0]), pc.size)
    for beta, extra in ((2.0, {}), (1e3, dict(label_smoothing=0.1, weights=weights))):
        for reduction in ("mean", "none"):
            fused, general = both_paths(pc, pr, nc, nr, beta=beta, alphapo_alpha=alpha,
                                        reduction=reduction, **extra)
            for name in ("losses", "grad_chosen", "grad_rejected"):
                got, want = getattr(fused, name), getattr(general, name)
                assert got.dtype == np.dtype(dtype)
                # (equal values; the general loop's chain rule makes a -0.0 derivative +0.0)
                np.testing.assert_array_equal(got, want, err_msg=name)
            if reduction == "mean":
                assert fused.loss == general.loss
            for name in ("chosen_rewards", "rejected_rewards"):
                got = getattr(fused, name)
                assert not np.isnan(got).any(), name
                rtol = 8 * np.finfo(dtype).eps if dtype == np.float32 else 1e-14
                assert_close(got, getattr(general, name), rtol, name)
            for key, value in general.metrics.items():
                got = fused.metrics[key]
                assert not math.isnan(got), key
                assert got == pytest.approx(value, rel=1e-12, abs=1e-300), key


@pytest.mark.parametrize("alpha", ALPHAS)
def test_rewards_match_plain_reference(alpha):
    """Ordinary batches: the rewards within 1e-15 of the math-module formula of p / n."""
    pc, pr, nc, nr = ordinary_pairs(2000, np.float64, seed=1)
    got = preference_loss(pc, pr, beta=2.0, loss_type="alphapo", alphapo_alpha=alpha,
                          chosen_lengths=nc, rejected_lengths=nr)
    want_c = [reward(a / n, alpha, 2.0) for a, n in zip(pc.tolist(), nc.tolist())]
    want_r = [reward(a / n, alpha, 2.0) for a, n in zip(pr.tolist(), nr.tolist())]
    np.testing.assert_allclose(got.chosen_rewards, want_c, rtol=1e-15, atol=0)
    np.testing.assert_allclose(got.rejected_rewards, want_r, rtol=1e-15, atol=0)
    m = got.metrics
    assert m["rewards/chosen"] == pytest.approx(math.fsum(want_c) / pc.size, rel=1e-13)
    margins = [a - b for a, b in zip(want_c, want_r)]
    assert m["rewards/margins"] == pytest.approx(math.fsum(margins) / pc.size, rel=1e-12,
                                                 abs=1e-14)
    assert m["rewards/accuracies"] == sum(a > b for a, b in zip(want_c, want_r)) / pc.size


def test_overflowing_rewards_and_margins():
    """Rewards beyond double are -inf (alpha > 0); a margin of two of them (inf - inf) comes
    from logarithms: +inf here, e^1000 (1 - e^-0.25) / alpha overflowing too, and its mean
    the careful way; the loss stays finite."""
    pc, pr = np.array([-4000.0, -10.0]), np.array([-4001.0, -12.0])
    ones = np.ones(2)
    got = preference_loss(pc, pr, beta=1.0, loss_type="alphapo", alphapo_alpha=0.25,
                          chosen_lengths=ones, rejected_lengths=ones)
    assert got.chosen_rewards[0] == -math.inf and got.rejected_rewards[0] == -math.inf
    assert got.metrics["rewards/margins"] == math.inf
    assert got.metrics["rewards/chosen"] == -math.inf
    assert got.metrics["rewards/accuracies"] == 0.5  # (-inf > -inf is false)
    assert math.isfinite(got.loss)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_bit_identical_across_simd_paths_and_threads(dtype, simd_levels):
    """The plain pass and the scalar redo, over a batch above the parallel threshold with
    flagged rows spread through it: the same bits on every SIMD path and thread count."""
    pc, pr, nc, nr = ordinary_pairs(PARALLEL_N, dtype, seed=2)
    xc, xr, xnc, xnr = extreme_pairs(dtype)
    step = PARALLEL_N // xc.size
    for k in range(xc.size):  # one extreme row every `step` rows
        pc[k * step], pr[k * step], nc[k * step], nr[k * step] = xc[k], xr[k], xnc[k], xnr[k]
    weights = np.linspace(0.0, 2.0, PARALLEL_N)
    results = []
    for level in simd_levels:
        _pairwise.set_simd_level(level)
        for threads in (1, 2):
            results.append(preference_loss(
                pc, pr, beta=3.0, loss_type="alphapo", alphapo_alpha=0.25,
                label_smoothing=0.05, chosen_lengths=nc, rejected_lengths=nr, weights=weights,
                compute_grad=True, n_threads=threads))
    first = results[0]
    for other in results[1:]:
        assert other.loss == first.loss
        assert other.metrics == first.metrics
        for name in ("losses", "chosen_rewards", "rejected_rewards", "grad_chosen",
                     "grad_rejected"):
            assert getattr(other, name).tobytes() == getattr(first, name).tobytes(), name


def test_loop_choice():
    """The kernel shapes the rewards for alphapo alone (weight 1) with alpha != 0 only."""
    kernel_id = KERNEL_IDS["alphapo"]

    def config(weight=1.0, **kw):
        return _pairwise.LossConfig(((kernel_id, 1, weight),), beta=2.0,
                                    normalized_rewards=True, **kw)

    assert config(alphapo_alpha=0.25).loop == "normalized"
    assert config(alphapo_alpha=0.25).shaped_rewards
    assert not config().shaped_rewards
    assert not config(2.0, alphapo_alpha=0.25).shaped_rewards
