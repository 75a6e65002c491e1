"""dpo_fast.kto_loss (and dpo_fast.torch.kto_loss): TRL 1.16's KTO losses on unpaired data,
against a plain per-completion reference, loss-family.md's values and finite differences."""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import NEEDS_TORCH
from reference import sigmoid

from dpo_fast import kto_loss


def reference(logps, ref_logps, desirable, *, beta, z, wd=1.0, wu=1.0, loss_type="kto"):
    """TRL's rows, one completion at a time (apo_zero_unpaired: z = 0)."""
    out = []
    for p, r, good in zip(logps, ref_logps, desirable):
        x = p - r
        if loss_type == "kto":
            out.append(wd * (1 - sigmoid(beta * (x - z))) if good
                       else wu * (1 - sigmoid(beta * (z - x))))
        else:
            out.append(wd * (1 - sigmoid(beta * x)) if good else wu * sigmoid(beta * x))
    return out


def batch(seed, n=9):
    rng = np.random.default_rng(seed)
    ref = rng.normal(-40.0, 5.0, n)
    return ref + rng.normal(0.0, 3.0, n), ref, rng.random(n) < 0.5


def test_loss_family_values():
    """loss-family.md: x = 1, z = 0.8, beta = 0.1."""
    result = kto_loss([-10.0, -10.0], [-11.0, -11.0], [True, False], beta=0.1, kl=0.8)
    assert result.losses[0] == pytest.approx(0.49500016666000024, rel=1e-15)
    assert result.losses[1] == pytest.approx(0.5049998333399996, rel=1e-15)
    assert result.loss == pytest.approx((0.49500016666000024 + 0.5049998333399996) / 2,
                                        rel=1e-15)
    assert result.rewards.tolist() == [0.1, 0.1] and result.kl == 0.8


@pytest.mark.parametrize("loss_type", ["kto", "apo_zero_unpaired"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_matches_the_reference_and_finite_differences(loss_type, reduction):
    logps, ref, desirable = batch(3)
    kw = dict(beta=0.2, desirable_weight=1.3, undesirable_weight=0.7, loss_type=loss_type)
    z = 0.4 if loss_type == "kto" else None
    result = kto_loss(logps, ref, desirable, kl=z, reduction=reduction, compute_grad=True,
                      **kw)
    want = reference(logps, ref, desirable, beta=0.2, z=z or 0.0, wd=1.3, wu=0.7,
                     loss_type=loss_type)
    np.testing.assert_allclose(result.losses, want, rtol=1e-14)
    total = math.fsum(want)
    if reduction != "none":
        assert result.loss == pytest.approx(total / len(want) if reduction == "mean" else total,
                                            rel=1e-14)
    step = 1e-6
    for i in range(len(logps)):
        moved = [logps.copy(), logps.copy()]
        moved[0][i] += step
        moved[1][i] -= step
        values = [reference(m, ref, desirable, beta=0.2, z=z or 0.0, wd=1.3, wu=0.7,
                            loss_type=loss_type) for m in moved]
        if reduction == "none":
            numeric = (values[0][i] - values[1][i]) / (2 * step)
        else:
            numeric = (math.fsum(values[0]) - math.fsum(values[1])) / (2 * step)
            numeric /= len(logps) if reduction == "mean" else 1
        assert result.grad[i] == pytest.approx(numeric, rel=1e-6, abs=1e-12)


def test_reference_point_from_mismatched_completions_is_clamped():
    logps, ref, desirable = batch(4)
    kl_logps, ref_kl = np.array([-5.0, -6.0, -7.0]), np.array([-5.5, -6.0, -6.0])
    # mean(kl - ref) = (0.5 + 0 - 1) / 3 < 0: TRL clamps at 0
    assert kto_loss(logps, ref, desirable, kl_logps=kl_logps, ref_kl_logps=ref_kl).kl == 0.0
    high = kto_loss(logps, ref, desirable, kl_logps=kl_logps + 1.0, ref_kl_logps=ref_kl)
    assert high.kl == pytest.approx(2.5 / 3, rel=1e-15)
    same = kto_loss(logps, ref, desirable, kl=high.kl)
    assert same.loss == high.loss
    assert kto_loss(logps, ref, desirable).kl == 0.0  # neither: TRL's calculate_KL=False


def test_metrics_have_trl_names():
    result = kto_loss([-10.0, -9.0, -12.0], [-11.0, -11.0, -11.0], [True, True, False],
                      beta=0.5)
    m = result.metrics
    assert m["count/chosen"] == 2 and m["count/rejected"] == 1
    assert m["rewards/chosen_sum"] == pytest.approx(0.5 * (1 + 2))
    assert m["rewards/rejected_sum"] == pytest.approx(-0.5)
    assert m["logps/chosen_sum"] == -19.0 and m["logps/rejected_sum"] == -12.0
    assert m["rewards/margins"] == pytest.approx(0.75 + 0.5)
    only_good = kto_loss([-1.0], [-1.0], [True]).metrics
    assert "rewards/rejected" not in only_good and "rewards/margins" not in only_good


def test_extreme_log_ratios_give_no_nan():
    result = kto_loss([1e300, -1e300, 0.0], [-1e300, 1e300, 0.0], [True, False, True],
                      beta=1.0, compute_grad=True)
    assert np.isfinite(result.losses).all() and np.isfinite(result.grad).all()
    assert result.losses.tolist()[:2] == [0.0, 0.0]


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(logps=[-1.0, math.nan]), ValueError, r"logps\[1\] is nan; logps must be finite"),
    (dict(ref_logps=[-1.0]), ValueError, r"length mismatch: logps has 2 elements"),
    (dict(desirable=[1, 0]), TypeError, r"desirable must be booleans"),
    (dict(loss_type="kto_pair"), ValueError, r"unknown loss_type 'kto_pair'"),
    (dict(reduction="max"), ValueError, r"unknown reduction 'max'"),
    (dict(desirable_weight=-1.0), ValueError, r"desirable_weight must be >= 0"),
    (dict(beta=0.0), ValueError, r"beta must be"),
    (dict(kl=math.inf), ValueError, r"kl must be finite"),
    (dict(kl=0.1, kl_logps=[-1.0], ref_kl_logps=[-1.0]), ValueError, r"either kl or"),
    (dict(kl_logps=[-1.0]), ValueError, r"ref_kl_logps is missing"),
    (dict(loss_type="apo_zero_unpaired", kl=0.3), ValueError,
     r"kl is not used by loss_type='apo_zero_unpaired'"),
    (dict(logps=[]), ValueError, r"length mismatch|logps is empty"),
])
def test_errors_name_the_argument(kwargs, error, match):
    call = dict(logps=[-1.0, -2.0], ref_logps=[-1.5, -2.5], desirable=[True, False])
    call.update(kwargs)
    with pytest.raises(error, match=match):
        kto_loss(**call)


@pytest.mark.parametrize("n", [1, 511, 512, 513, 3000])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_sums_are_correctly_rounded(n, reduction):
    """The loss and every metric sum are math.fsum's values of the per-completion arrays
    (the compiled pass accumulates them exactly, block by block of 512 rows)."""
    rng = np.random.default_rng(n)
    ref = rng.normal(-40.0, 5.0, n) * 10.0 ** rng.integers(-3, 4, n)
    logps = ref + rng.normal(0.0, 3.0, n)
    desirable = rng.random(n) < 0.4
    kl_logps = rng.normal(-30.0, 3.0, 50)
    result = kto_loss(logps, ref, desirable, beta=0.3, kl_logps=kl_logps,
                      ref_kl_logps=kl_logps - 0.5, reduction=reduction,
                      desirable_weight=1.5, compute_grad=True)
    assert result.kl == max(0.0, math.fsum((kl_logps - (kl_logps - 0.5)).tolist()) / 50)
    total = math.fsum(result.losses.tolist())
    if reduction == "mean":
        assert result.loss == total / n
    elif reduction == "sum":
        assert result.loss == total
    m = result.metrics
    assert m["rewards/chosen_sum"] == math.fsum(result.rewards[desirable].tolist())
    assert m["rewards/rejected_sum"] == math.fsum(result.rewards[~desirable].tolist())
    assert m["logps/chosen_sum"] == math.fsum(logps[desirable].tolist())
    assert m["logps/rejected_sum"] == math.fsum(logps[~desirable].tolist())
    assert m["count/chosen"] == desirable.sum() and m["count/rejected"] == (~desirable).sum()
    want = reference(logps, ref, desirable, beta=0.3, z=result.kl, wd=1.5)
    np.testing.assert_allclose(result.losses, want, rtol=1e-14)
    # Strided inputs (copied to contiguous float64 first) give the same bits.
    strided = kto_loss(np.repeat(logps, 2)[::2], np.repeat(ref, 2)[::2],
                       np.repeat(desirable, 2)[::2], beta=0.3, kl=result.kl,
                       reduction=reduction, desirable_weight=1.5)
    assert strided.losses.tobytes() == result.losses.tobytes()
    assert strided.metrics == result.metrics


def test_every_simd_level_gives_the_same_bits():
    """KTO's rows run at the chosen SIMD level (csrc/pairwise_simd.c): every level, the same
    bits, for rows around the 512-row blocks, extremes and both sides."""
    from dpo_fast._kernels._pairwise import set_simd_level, simd_level, supported_simd_levels

    rng = np.random.default_rng(5)
    n = 1300
    ref = rng.normal(-40.0, 5.0, n)
    logps = ref + rng.normal(0.0, 3.0, n) * 10.0 ** rng.integers(-8, 4, n)
    logps[:4] = [1e300, -1e300, 0.0, -0.0]
    desirable = rng.random(n) < 0.5
    before = simd_level()
    results = {}
    try:
        for level in supported_simd_levels():
            set_simd_level(level)
            result = kto_loss(logps, ref, desirable, beta=0.7, kl=0.3, compute_grad=True,
                              desirable_weight=1.3)
            results[level] = (result.losses.tobytes(), result.rewards.tobytes(),
                              result.grad.tobytes(), result.loss, tuple(result.metrics.items()))
    finally:
        set_simd_level(before)
    assert len(set(results.values())) == 1, list(results)


def test_a_bad_value_is_named_beyond_the_first_block():
    logps, ref = np.full(2000, -3.0), np.full(2000, -4.0)
    logps[1500] = math.inf
    with pytest.raises(ValueError, match=r"logps\[1500\] is inf"):
        kto_loss(logps, ref, np.arange(2000) % 2 == 0)
    logps[1500], ref[1999] = -3.0, math.nan
    with pytest.raises(ValueError, match=r"ref_logps\[1999\] is nan"):
        kto_loss(logps, ref, np.arange(2000) % 2 == 0)


def test_an_overflowing_reference_point_is_named():
    # Finite log-probs whose differences overflow float64: the estimate would be inf and
    # every loss NaN.
    with pytest.raises(ValueError, match=r"overflow float64, so their mean .* is inf; pass kl"):
        kto_loss([-1.0], [-2.0], [True], kl_logps=[1e308, 1e308], ref_kl_logps=[-1e308, -1e308])
    with pytest.raises(ValueError, match=r"overflow float64, so their mean .* is undefined"):
        kto_loss([-1.0], [-2.0], [True], kl_logps=[1e308, -1e308], ref_kl_logps=[-1e308, 1e308])
    # Overflowing only below zero: the estimate is clamped at 0, as TRL's clamp(min=0) does.
    assert kto_loss([-1.0], [-2.0], [True], kl_logps=[-1e308], ref_kl_logps=[1e308]).kl == 0.0
    with pytest.raises(ValueError, match=r"kl_logps\[1\] is nan"):
        kto_loss([-1.0], [-2.0], [True], kl_logps=[-1.0, math.nan], ref_kl_logps=[1.0, 1.0])
    with pytest.raises(ValueError, match=r"ref_kl_logps\[0\] is -inf"):
        kto_loss([-1.0], [-2.0], [True], kl_logps=[-1.0], ref_kl_logps=[-math.inf])


def test_inputs_are_not_modified():
    logps, ref, desirable = batch(8)
    copies = [a.copy() for a in (logps, ref, desirable)]
    kto_loss(logps, ref, desirable, compute_grad=True)
    for before, after in zip(copies, (logps, ref, desirable)):
        np.testing.assert_array_equal(before, after)


def test_torch_adapter_differentiates():
    torch = pytest.importorskip("torch", reason=NEEDS_TORCH)
    import dpo_fast.torch as dft

    logps, ref, desirable = batch(9)
    policy = torch.tensor(logps, requires_grad=True)
    out = dft.kto_loss(policy, torch.tensor(ref), torch.tensor(desirable), beta=0.2, kl=0.3)
    (2.0 * out.loss).backward()
    want = kto_loss(logps, ref, desirable, beta=0.2, kl=0.3, compute_grad=True)
    assert out.loss.item() == want.loss
    np.testing.assert_array_equal(policy.grad.numpy(), 2.0 * want.grad)
    with pytest.raises(ValueError, match="ref_logps requires grad"):
        dft.kto_loss(policy, torch.tensor(ref, requires_grad=True), torch.tensor(desirable))
