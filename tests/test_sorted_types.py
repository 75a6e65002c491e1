"""aot / aot_unpaired through preference_loss (dpo_fast._sorted) against the same loss built
from numpy's stable argsort, NumPy differences and scatters and the sigmoid kernel: the same
bits for both dtypes, every thread count and lengths around the per-thread chunking, on ties,
signed zeros, all-equal differences, NaN and overflowing inputs."""

from __future__ import annotations

import numpy as np
import pytest

import dpo_fast
from dpo_fast._kernels import _pairwise
from dpo_fast._registry import KERNEL_IDS

BETA = 0.3


def reference(name, arrays, compute_grad, label_smoothing=0.0):
    """(losses, grad_chosen, grad_rejected) in float64, reduction='none', the NumPy way."""
    pc, pr, rc, rr = (None if a is None else np.asarray(a, np.float64) for a in arrays)
    length = pc.shape[0]

    def differences(scale):
        zeros = np.zeros(length)
        c, r = pc * scale, pr * scale
        ref_c = zeros if rc is None else rc * scale
        ref_r = zeros if rr is None else rr * scale
        return (c - r, ref_c - ref_r) if name == "aot" else (c - ref_c, r - ref_r)

    with np.errstate(over="ignore", invalid="ignore"):
        scale = 1.0
        first, second = differences(scale)
        if not (np.isfinite(first).all() and np.isfinite(second).all()):
            scale = 0.25
            first, second = differences(scale)
    chosen_order = np.argsort(first, kind="stable")
    rejected_order = chosen_order if name == "aot" else np.argsort(second, kind="stable")
    term = {"losses": np.empty(length), "chosen_rewards": None, "rejected_rewards": None,
            "grad_chosen": np.empty(length), "grad_rejected": np.empty(length)}
    config = _pairwise.LossConfig(((KERNEL_IDS["sigmoid"], 0, 1.0),), beta=BETA / scale,
                                  label_smoothing=label_smoothing)
    _pairwise.run(config, first[chosen_order] + 0.0, np.sort(second) + 0.0, None, None, None,
                  None, None, term, 1)
    losses = np.empty(length)
    losses[chosen_order] = term["losses"]
    if not compute_grad:
        return losses, None, None
    step = term["grad_chosen"] * scale
    grad_chosen, grad_rejected = np.empty(length), np.empty(length)
    grad_chosen[chosen_order] = step
    grad_rejected[rejected_order] = 0.0 - step
    return losses, grad_chosen, grad_rejected


def make(kind, n, rng):
    rc, rr = rng.normal(-60, 8, n), rng.normal(-65, 8, n)
    pc, pr = rc + rng.normal(0.5, 2, n), rr + rng.normal(-0.5, 2, n)
    if kind == "ties":
        pc, pr, rc, rr = (np.round(x / 4) for x in (pc, pr, rc, rr))
    elif kind == "signed zeros":
        pc = np.where(rng.random(n) < 0.5, -0.0, 0.0)
        pr, rc, rr = pc[::-1].copy(), -pc, np.zeros(n)
    elif kind == "equal":
        pc, pr, rc, rr = np.full(n, -3.0), np.full(n, -5.0), np.full(n, -4.0), np.full(n, -4.0)
    elif kind == "nan":
        pc[n // 3] = np.nan
        rr[n // 2] = -np.inf
    elif kind == "overflow":
        pc[::5], pr[::5] = 1.5e308, -1.5e308
    return pc, pr, rc, rr


def bits(array, dtype):
    return np.asarray(array).astype(dtype).tobytes()


@pytest.mark.parametrize("kind", ["normal", "ties", "signed zeros", "equal", "nan", "overflow"])
@pytest.mark.parametrize("name", ["aot", "aot_unpaired"])
def test_sorted_types_match_the_numpy_construction(kind, name):
    rng = np.random.default_rng([ord(c) for c in kind + name])
    for n in (1, 2, 17, 1000, 65_535, 65_536, 98_305):
        arrays = make(kind, n, rng)
        for dtype in (np.float64, np.float32):
            with np.errstate(over="ignore"):  # (1.5e308 is inf in float32)
                typed = [a.astype(dtype) for a in arrays]
            for with_ref in (True, False):
                given = typed if with_ref else typed[:2]
                padded = [*given, None, None][:4]
                losses, grad_c, grad_r = reference(name, padded, True)
                for n_threads in (1, 2, 3):
                    with np.errstate(over="ignore", invalid="ignore"):
                        result = dpo_fast.preference_loss(
                            *given, loss_type=name, beta=BETA, reduction="none",
                            compute_grad=True, check_finite=False, n_threads=n_threads)
                    assert result.losses.dtype == dtype
                    assert bits(result.losses, dtype) == bits(losses, dtype)
                    assert bits(result.grad_chosen, dtype) == bits(grad_c, dtype)
                    assert bits(result.grad_rejected, dtype) == bits(grad_r, dtype)


@pytest.mark.parametrize("name", ["aot", "aot_unpaired"])
def test_mean_and_no_grad_agree_with_none(name):
    """The mean of one call is the float64 sum of its per-pair losses over n, with or
    without the gradients; label smoothing goes to the sorted sigmoid."""
    rng = np.random.default_rng(21)
    arrays = make("normal", 70_001, rng)
    losses, _, _ = reference(name, arrays, False, label_smoothing=0.2)
    for n_threads in (1, 2):
        for compute_grad in (False, True):
            result = dpo_fast.preference_loss(*arrays, loss_type=name, beta=BETA,
                                              label_smoothing=0.2, compute_grad=compute_grad,
                                              n_threads=n_threads)
            assert result.losses.tobytes() == losses.tobytes()
            assert result.loss == float(np.sum(losses)) / losses.shape[0]


def _call(case, arrays):
    name, n, dtype, compute_grad, weighted, n_threads = case
    given = [a[:n].astype(dtype) for a in arrays]
    kwargs = {"loss_weights": [0.5, 2.0]} if isinstance(name, tuple) else {}
    if weighted:
        kwargs["weights"] = np.linspace(0.0, 2.0, n).astype(dtype)
    result = dpo_fast.preference_loss(*given, loss_type=list(name) if isinstance(name, tuple)
                                      else name, beta=BETA, reduction="none",
                                      compute_grad=compute_grad, n_threads=n_threads, **kwargs)
    return b"".join(bits(getattr(result, key), dtype) for key in
                    ("losses", "chosen_rewards", "rejected_rewards", *(
                        ("grad_chosen", "grad_rejected") if compute_grad else ())))


def test_kept_buffers_across_calls_and_threads(monkeypatch):
    """The sorts' buffers are kept per thread from call to call (dpo_fast._sorted): calls of
    other lengths, types, dtypes and gradients one after another, and on two Python threads
    at once, give the bits of calls made with nothing kept; a buffer over CACHED_WORDS is not
    kept, and one too short for the next call is not used."""
    from concurrent.futures import ThreadPoolExecutor

    from dpo_fast import _sorted

    rng = np.random.default_rng(31)
    arrays = make("ties", 120_000, rng)
    cases = [("aot", 120_000, np.float64, False, False, 2),
             ("aot_unpaired", 70_001, np.float32, True, False, 1),
             (("sigmoid", "aot"), 90_000, np.float64, True, True, 2),
             ("aot_unpaired", 5, np.float64, False, False, 2),
             ("aot", 100_000, np.float32, True, False, 2),
             (("aot", "aot_unpaired"), 33_000, np.float32, False, True, 1)]
    expected = []
    for case in cases:
        _sorted._cache.buffer = None
        expected.append(_call(case, arrays))
    for case, want in zip(cases + cases[::-1], expected + expected[::-1]):
        assert _call(case, arrays) == want
    kept = _sorted._cache.buffer
    assert kept is not None and kept.shape[0] >= _sorted._workspace_words(120_000, False)

    def run(seed):
        order = np.random.default_rng(seed).permutation(len(cases) * 2) % len(cases)
        return [(i, _call(cases[i], arrays)) for i in order]

    with ThreadPoolExecutor(2) as pool:
        for results in pool.map(run, range(4)):
            for i, got in results:
                assert got == expected[i]

    monkeypatch.setattr(_sorted, "CACHED_WORDS", 1000)
    _sorted._cache.buffer = None
    assert _call(cases[1], arrays) == expected[1]
    assert _sorted._cache.buffer is None
    assert _call(cases[3], arrays) == expected[3]
    small = _sorted._cache.buffer
    assert small is not None and small.shape[0] <= 1000
    assert _call(cases[0], arrays) == expected[0]  # (a fresh buffer: the small one stays)
    assert _sorted._cache.buffer is small


@pytest.mark.parametrize("name", ["aot", "aot_unpaired", ("sigmoid", "aot")])
def test_numpy_path_beyond_the_sort_gives_the_same_bits(monkeypatch, name):
    """Inputs longer than the radix sort's uint32 positions take numpy's stable argsort and
    scatters (dpo_fast._sorted) with no kept buffers: the same bits (shown on short inputs
    with the limit lowered)."""
    from dpo_fast._kernels import _sort

    rng = np.random.default_rng(41)
    arrays = make("ties", 5000, rng)
    cases = [(name, 5000, dtype, grad, weighted, 2) for dtype in (np.float64, np.float32)
             for grad in (False, True) for weighted in (False, True)]
    expected = [_call(case, arrays) for case in cases]
    monkeypatch.setattr(_sort, "MAX_LENGTH", 4999)
    for case, want in zip(cases, expected):
        assert _call(case, arrays) == want
