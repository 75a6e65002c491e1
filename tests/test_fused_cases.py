"""The fused chunk loop's cases against the general loop: a loss type alone (weighted or
not, sft's batch constant, rpo_sq's margins) runs a fused case of csrc/chunk_body.h, which
must give every output and every sum the general loop gives the same type, byte for byte,
on every SIMD level and thread count; and the compiled fast path of _entry the general
path's bits.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from dpo_fast import _general, _registry, preference_loss
from dpo_fast._kernels import _pairwise


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_weights_in_the_fused_loop_give_the_general_loops_numbers(dtype):
    """A single loss type with per-pair weights runs in the fused chunk loop; the general loop
    (here: the same type plus a zero-weighted second term, which it drops) computes the same
    outputs and sums, for every type with a fused case, rows near DBL_MAX and zero weights
    included."""
    rng = np.random.default_rng(11)
    n = 3000
    arrays = [rng.normal(-40.0, 30.0, n).astype(dtype) for _ in range(4)]
    huge = np.finfo(dtype).max
    arrays[0][:4] = [huge, -huge, 0.0, -huge / 2]
    weights = rng.uniform(0.0, 3.0, n)
    weights[::7] = 0.0
    for name, entry in _registry.LOSS_REGISTRY.items():
        if not entry.plain or entry.gt_rewards:
            continue
        kernel_id = entry.kernel_id
        fused = _pairwise.LossConfig(((kernel_id, 0, 1.0),), beta=0.3, weighted=True)
        general = _pairwise.LossConfig(((kernel_id, 0, 1.0), (kernel_id, 0, 0.0)), beta=0.3,
                                       weighted=True)
        assert (fused.loop, general.loop) == ("plain", "general")
        results = []
        for config in (fused, general):
            outputs = {key: np.empty(n, dtype) for key in
                       ("losses", "chosen_rewards", "rejected_rewards", "grad_chosen",
                        "grad_rejected")}
            sums = _pairwise.run(config, *arrays, None, None, weights, outputs, 2)
            results.append((sums, outputs))
        (sums_fused, out_fused), (sums_general, out_general) = results
        np.testing.assert_array_equal(sums_fused, sums_general, err_msg=name)
        for key in out_fused:
            np.testing.assert_array_equal(out_fused[key], out_general[key], err_msg=name)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_unweighted_unsmoothed_sigmoid_case_gives_the_sigmoid_cases_bits(dtype):
    """sigmoid without weights or label smoothing runs a fused case of its own (eps = 0 and
    weight 1 folded in); it gives the bits of the weighted case with ones, signed zeros
    included, and the general loop's values (which has +0.0 for some -0.0 derivatives: its
    chain-rule products drop the sign of a zero): z = 0, |z| beyond exp's range
    (sigmoid(-z) = +0), rows near DBL_MAX (the scalar redo), both gradients."""
    rng = np.random.default_rng(12)
    n = 4099
    arrays = [rng.normal(-40.0, 30.0, n).astype(dtype) for _ in range(4)]
    huge = np.finfo(dtype).max
    arrays[0][:4] = [huge, -huge, 0.0, -huge / 2]
    arrays[0][4:12] = arrays[1][4:12] = -5.0  # z = 0
    arrays[0][12:20] = 1e4  # beta * (c - r) ~ 3e3: sigmoid(-z) underflows to +0
    arrays[1][20:28] = 1e4  # and the other way
    kernel_id = _registry.LOSS_REGISTRY["sigmoid"].kernel_id
    configs = [(_pairwise.LossConfig(((kernel_id, 0, 1.0),), beta=0.3), None),
               (_pairwise.LossConfig(((kernel_id, 0, 1.0),), beta=0.3, weighted=True),
                np.ones(n)),
               (_pairwise.LossConfig(((kernel_id, 0, 1.0), (kernel_id, 0, 0.0)), beta=0.3,
                                     weighted=True), np.ones(n))]
    assert [config.loop for config, _ in configs] == ["plain", "plain", "general"]
    results = []
    for config, weights in configs:
        for threads in (1, 2):
            outputs = {key: np.empty(n, dtype) for key in
                       ("losses", "chosen_rewards", "rejected_rewards", "grad_chosen",
                        "grad_rejected")}
            sums = _pairwise.run(config, *arrays, None, None, weights, outputs, threads)
            results.append((np.asarray(sums), outputs))
    (sums_first, out_first) = results[0]
    for index, (sums, outputs) in enumerate(results[1:], 1):
        np.testing.assert_array_equal(sums, sums_first)
        for key, value in outputs.items():
            if index < 4:  # the two fused cases, 1 and 2 threads: bit for bit
                assert value.tobytes() == out_first[key].tobytes(), key
            else:
                np.testing.assert_array_equal(value, out_first[key], err_msg=key)


FUSED_AS_GENERAL = [name for name, entry in _registry.LOSS_REGISTRY.items()
                    if entry.fused_as_general]


def _general_bits_inputs(dtype, n, seed):
    """Random rows and the extremes of the general loop's arithmetic: rows near DBL_MAX (the
    scalar redo), c = r and c = -0.0 (zero derivatives, whose sign the general loop drops),
    |z - g| beyond 1e150 (gap^2 overflows), zero, subnormal and huge weights, zero margins."""
    rng = np.random.default_rng(seed)
    arrays = [rng.normal(-40.0, 30.0, n).astype(dtype) for _ in range(4)]
    huge = np.finfo(dtype).max
    arrays[0][:4] = [huge, -huge, 0.0, -huge / 2]
    arrays[0][4:12] = arrays[1][4:12] = -5.0
    arrays[0][12:14] = -0.0
    arrays[2][12:14] = arrays[1][12:14] = arrays[3][12:14] = 0.0
    arrays[0][14:16] = np.finfo(dtype).smallest_subnormal
    arrays[1][16:18] = 1e30
    weights = rng.uniform(0.0, 3.0, n)
    weights[::7] = 0.0
    weights[1::11] = 5e-324
    weights[2::13] = 1e300
    margins = rng.normal(0.0, 3.0, n)
    margins[4:8] = 0.0
    margins[8:12] = -0.0
    margins[18:20] = 1e200
    return arrays, weights, margins


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", FUSED_AS_GENERAL)
def test_fused_cases_of_general_types_give_the_general_loops_bits(name, dtype, simd_levels):
    """sft and rpo_sq had only the general loop; their fused cases finish a row as it does
    (the chain factor through dpo_mul00, sums from 0.0, sft's gradient offsets), so both
    loops give the same bits on every SIMD level and thread count: signed zeros, rows near
    DBL_MAX, zero and extreme weights, sft's pair and batch offsets included."""
    n = 4099
    arrays, weights, margins = _general_bits_inputs(dtype, n, 13)
    kernel_id = _registry.LOSS_REGISTRY[name].kernel_id
    other = _registry.LOSS_REGISTRY["sigmoid"].kernel_id
    params = {"beta": 0.3, "sft_value": -2.5, "gt_reward_scale": -0.7}
    for offsets in ({"grad_chosen_offset": -1.5e-3}, {"grad_chosen_pair_offset": -0.25}, {}):
        for pair_weights in (None, weights):
            kw = {**params, **offsets, "weighted": pair_weights is not None}
            fused = _pairwise.LossConfig(((kernel_id, 0, 1.0),), **kw)
            general = _pairwise.LossConfig(((kernel_id, 0, 1.0), (other, 0, 0.0)), **kw)
            assert (fused.loop, general.loop) == ("plain", "general")
            results = []
            for level in simd_levels:
                _pairwise.set_simd_level(level)
                for config in (fused, general):
                    for threads in (1, 2):
                        outputs = {key: np.empty(n, dtype) for key in
                                   ("losses", "chosen_rewards", "rejected_rewards",
                                    "grad_chosen", "grad_rejected")}
                        sums = _pairwise.run(config, *arrays, None, None, pair_weights,
                                             outputs, threads, gt_reward_margins=margins)
                        results.append(([s.hex() for s in sums],
                                        {key: value.tobytes() for key, value in outputs.items()}))
            _pairwise.set_simd_level(simd_levels[-1])
            for sums, outputs in results[1:]:
                assert sums == results[0][0], (name, offsets)
                for key, value in outputs.items():
                    assert value == results[0][1][key], (name, key, offsets)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("name", FUSED_AS_GENERAL)
def test_fast_path_of_general_types_gives_the_general_paths_bits(name, reduction,
                                                                 monkeypatch):
    """preference_loss runs sft (its batch constant and offsets taken as the general path
    takes them) and rpo_sq (the kernel checks the margins) on the compiled fast path: the bits
    of the general path (here: the type with a zero-weighted sigmoid)."""
    for dtype in (np.float32, np.float64):
        arrays, weights, margins = _general_bits_inputs(dtype, 3001, 17)
        # (inputs near DBL_MAX, or an overflowing (z - g)^2, make a sum inf: handed over)
        arrays[0][:4] = arrays[0][4]
        margins[18:20] = 1e100
        lengths = np.random.default_rng(3).integers(1, 500, 3001).astype(np.float64)
        # sft: integer counts (their exact sum, in parallel) and others (NumPy's sum)
        for kw, pair_weights in itertools.product(
                [{"chosen_lengths": lengths}, {"chosen_lengths": lengths + 0.25}]
                if name == "sft" else [{"gt_reward_margins": margins, "gt_reward_scale": 0.5}],
                (None, weights)):
            with monkeypatch.context() as patch:
                def refuse(*args, **kwargs):
                    raise AssertionError("the call left the fast path")
                patch.setattr(_general, "run", refuse)
                fast = preference_loss(*arrays, beta=0.2, loss_type=name, weights=pair_weights,
                                       reduction=reduction, compute_grad=True, **kw)
            general = preference_loss(*arrays, beta=0.2, loss_type=[name, "sigmoid"],
                                      loss_weights=[1.0, 0.0], weights=pair_weights,
                                      reduction=reduction, compute_grad=True, **kw)
            assert np.asarray(fast.loss).tobytes() == np.asarray(general.loss).tobytes()
            assert {k: v.hex() for k, v in fast.metrics.items()} == {
                k: v.hex() for k, v in general.metrics.items()}
            for key in ("losses", "chosen_rewards", "rejected_rewards", "grad_chosen",
                        "grad_rejected"):
                assert getattr(fast, key).tobytes() == getattr(general, key).tobytes(), key


def test_exact_count_sum_is_numpys_sum_of_integer_counts():
    """sft's fast path takes the token count from an exact sum (integers >= 1 summing below
    2^52: every order of the additions gives it); else -1.0 and NumPy's sum is taken."""
    rng = np.random.default_rng(21)
    for n in (1, 7, 9, 8192, 8193, 30000):
        counts = rng.integers(1, 600, n).astype(np.float64)
        assert _pairwise.exact_count_sum_of(counts) == float(np.sum(counts))
        for bad in (0.5, 2.25, 7.5, np.nan, np.inf, -np.inf, 2.0**52, 0.0, -3.0):
            spoiled = counts.copy()
            spoiled[n // 2] = bad
            assert _pairwise.exact_count_sum_of(spoiled) == -1.0
    assert _pairwise.exact_count_sum_of(np.full(2, 2.0**51 + 1)) == -1.0  # sum past 2^52
    assert _pairwise.exact_count_sum_of(np.full(2, 2.0**51 - 1)) == 2.0**52 - 2
