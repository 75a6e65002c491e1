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


# The fast path's types that read side arrays, with the keyword arguments of a call.
SIDE_ARRAY_CALLS = {
    "sigmoid_norm": {"lengths": ("chosen_lengths", "rejected_lengths")},
    "ipo": {"lengths": ("chosen_lengths", "rejected_lengths")},
    "simpo": {"lengths": ("chosen_lengths", "rejected_lengths"), "reference_free": True,
              "simpo_gamma": 0.5},
    "orpo": {"lengths": ("chosen_lengths", "rejected_lengths"), "reference_free": True},
    "alphapo": {"lengths": ("chosen_lengths", "rejected_lengths"), "reference_free": True,
                "alphapo_alpha": 0.25, "simpo_gamma": 0.5},
    "sft": {"lengths": ("chosen_lengths",)},
    "rpo_sq": {"lengths": (), "margins": True},
}
SIDE_DTYPES = [np.float32, np.int64, np.int32]


def _side_array_call(name, dtype, side_dtype, n, seed, **extra):
    """preference_loss's arguments for ``name`` with its lengths or margins in
    ``side_dtype``, and the same with them cast to float64."""
    spec = SIDE_ARRAY_CALLS[name]
    rng = np.random.default_rng(seed)
    logps = [-rng.uniform(1.0, 300.0, n).astype(dtype) for _ in range(4)]
    if spec.get("reference_free"):
        logps = logps[:2]
    kwargs = {key: value for key, value in spec.items()
              if key not in ("lengths", "reference_free", "margins")}
    typed = dict(kwargs)
    for key in spec["lengths"]:
        typed[key] = rng.integers(1, 700, n).astype(side_dtype)
    if spec.get("margins"):
        margins = rng.normal(0.0, 3.0, n)
        typed["gt_reward_margins"] = (margins.astype(side_dtype) if side_dtype == np.float32
                                      else np.round(margins * 10).astype(side_dtype))
    as_float64 = {key: (np.asarray(value, np.float64) if isinstance(value, np.ndarray)
                        else value) for key, value in typed.items()}
    return logps, {**typed, **extra}, {**as_float64, **extra}


def _result_bytes(result):
    return ([np.asarray(result.loss).tobytes()]
            + [v.hex() for v in result.metrics.values()]
            + [getattr(result, key).tobytes() for key in
               ("losses", "chosen_rewards", "rejected_rewards", "grad_chosen", "grad_rejected")])


@pytest.mark.parametrize("side_dtype", SIDE_DTYPES)
@pytest.mark.parametrize("name", sorted(SIDE_ARRAY_CALLS))
def test_side_arrays_of_other_dtypes_stay_on_the_fast_path_with_float64s_bits(
        name, side_dtype, simd_levels, monkeypatch):
    """int64 token counts (what mask.sum(-1) gives), int32 ones and float32 lengths or
    margins next to float32 log-probs run on the compiled fast path (the chunk entry points
    convert each chunk's rows to double), with the bits of the same call with the arrays
    cast to float64: every dtype of the log-probs, SIMD level, thread count, one chunk and
    several, weights and reductions."""
    def refuse(*args, **kwargs):
        raise AssertionError("the call left the fast path")

    for dtype, n in itertools.product((np.float32, np.float64), (5, 40000)):
        weights = np.random.default_rng(n).uniform(0.0, 2.0, n)
        logps, typed, as_float64 = _side_array_call(name, dtype, side_dtype, n, 41)
        for reduction, pair_weights in (("mean", None), ("none", weights)):
            call = {"beta": 0.1, "loss_type": name, "reduction": reduction,
                    "weights": pair_weights, "compute_grad": True}
            expected = None
            for level in simd_levels:
                _pairwise.set_simd_level(level)
                for threads in (1, 2):
                    with monkeypatch.context() as patch:
                        patch.setattr(_general, "run", refuse)
                        fast = preference_loss(*logps, **call, **typed, n_threads=threads)
                    if expected is None:
                        expected = _result_bytes(preference_loss(*logps, **call, **as_float64))
                    assert _result_bytes(fast) == expected, (name, dtype, level, threads)
            _pairwise.set_simd_level(simd_levels[-1])
        # mixed: float64 chosen lengths (read in place) next to converted rejected ones
        if "rejected_lengths" in typed:
            mixed = {**typed, "chosen_lengths": as_float64["chosen_lengths"]}
            with monkeypatch.context() as patch:
                patch.setattr(_general, "run", refuse)
                fast = preference_loss(*logps, **call, **mixed, n_threads=2)
            assert _result_bytes(fast) == _result_bytes(
                preference_loss(*logps, **call, **as_float64)), (name, dtype, "mixed")


@pytest.mark.parametrize("side_dtype", SIDE_DTYPES)
def test_bad_side_values_of_other_dtypes_are_named(side_dtype):
    """A count below 1 (or a NaN float32 one, or an infinite float32 margin) in a converted
    side array leaves the fast path, and the general path names it,
    whatever chunk it is in; the caller's arrays are not written."""
    for name, key, bad in (("sigmoid_norm", "rejected_lengths", 0),
                           ("sft", "chosen_lengths", -3),
                           ("simpo", "chosen_lengths", 0)):
        for where in (2, 17000):
            logps, typed, _ = _side_array_call(name, np.float32, side_dtype, 20000, 5)
            typed[key][where] = bad
            before = typed[key].copy()
            with pytest.raises(ValueError, match=rf"{key}\[{where}\] is"):
                preference_loss(*logps, beta=0.1, loss_type=name, **typed)
            assert typed[key].tobytes() == before.tobytes()
    if side_dtype == np.float32:
        logps, typed, _ = _side_array_call("sigmoid_norm", np.float32, side_dtype, 20000, 6)
        typed["chosen_lengths"][9000] = np.nan
        with pytest.raises(ValueError, match=r"chosen_lengths\[9000\]"):
            preference_loss(*logps, beta=0.1, loss_type="sigmoid_norm", **typed)
        logps, typed, _ = _side_array_call("rpo_sq", np.float32, side_dtype, 20000, 7)
        typed["gt_reward_margins"][12345] = np.inf
        with pytest.raises(ValueError, match=r"gt_reward_margins"):
            preference_loss(*logps, beta=0.1, loss_type="rpo_sq", **typed)


def test_exact_count_sum_of_other_dtypes():
    """The exact token count of int64, int32 and float32 counts is NumPy's sum of their
    float64 cast; non-integers, counts below 1 and sums past 2^52 give -1.0."""
    rng = np.random.default_rng(22)
    for dtype, n in itertools.product((np.int64, np.int32, np.float32), (1, 9, 8193)):
        counts = rng.integers(1, 600, n).astype(dtype)
        assert _pairwise.exact_count_sum_of(counts) == float(np.sum(counts.astype(np.float64)))
        for bad in (0, -3) + ((0.5, np.nan, np.inf) if dtype == np.float32 else ()):
            spoiled = counts.copy()
            spoiled[n // 2] = bad
            assert _pairwise.exact_count_sum_of(spoiled) == -1.0
    assert _pairwise.exact_count_sum_of(np.full(2, 2**51 + 1, np.int64)) == -1.0
    assert _pairwise.exact_count_sum_of(np.full(3, 2**62, np.int64)) == -1.0
    assert _pairwise.exact_count_sum_of(np.full(2, 2**51 - 1, np.int64)) == 2.0**52 - 2


@pytest.mark.parametrize("name", ["sigmoid", "robust", "sigmoid_norm", "alphapo", "rpo_sq",
                                  "sft"])
def test_float32_weights_stay_on_the_fast_path_with_float64s_bits(name, monkeypatch):
    """float32 per-pair weights (next to float32 log-probs, say) are checked (by a loop, or by
    NumPy's min and max above 4096 pairs) and converted per chunk like the side arrays: the
    bits of the same call with the weights cast to float64, on the fast path (sft, whose
    weight total is NumPy's sum of the float64 cast, hands such a call over)."""
    def refuse(*args, **kwargs):
        raise AssertionError("the call left the fast path")

    for dtype, n in itertools.product((np.float32, np.float64), (5, 4096, 5000, 40000)):
        side = name if name in SIDE_ARRAY_CALLS else None
        if side:
            logps, typed, _ = _side_array_call(name, dtype, np.float64, n, 43)
        else:
            rng = np.random.default_rng(43)
            logps, typed = [-rng.uniform(1.0, 300.0, n).astype(dtype) for _ in range(4)], {}
            if name == "robust":
                typed["label_smoothing"] = 0.1
        weights = np.random.default_rng(n).uniform(0.0, 2.0, n).astype(np.float32)
        weights[::5] = 0.0
        for reduction in ("mean", "none"):
            call = {"beta": 0.1, "loss_type": name, "reduction": reduction,
                    "compute_grad": True, **typed}
            with monkeypatch.context() as patch:
                if name != "sft":
                    patch.setattr(_general, "run", refuse)
                got = preference_loss(*logps, **call, weights=weights, n_threads=2)
            expected = preference_loss(*logps, **call, weights=weights.astype(np.float64))
            assert _result_bytes(got) == _result_bytes(expected), (name, dtype, n)
    logps = [np.full(5000, -3.0, np.float32)] * 4
    for where, bad in ((7, -1.0), (4999, np.nan), (100, np.inf)):
        for n in (5000, 100 + 1):
            weights = np.ones(n, np.float32)
            if where < n:
                weights[where] = bad
                with pytest.raises(ValueError, match=rf"weights\[{where}\] is"):
                    preference_loss(*(a[:n] for a in logps), weights=weights)
