"""The fuzzing's settings, counting, invariants and data builders (tests/test_fuzz_*.py).

The invariant checked for every case (``call_checked`` and ``check_preference_result``):
either a correct result (against the plain references) or ``ValueError`` / ``TypeError``;
never a crash, a hang, a ``SystemError``, a NaN from finite inputs, or a changed input.
Examples are derandomized and counted (the ``_fuzz_report`` fixture of tests/conftest.py);
``DPO_FAST_FUZZ_SCALE=10`` runs ten times as many.
"""

from __future__ import annotations

import collections
import math
import numbers
import os
import warnings

import numpy as np
import pytest
from helpers import assert_no_nan, result_no_nan
from hypothesis import HealthCheck, settings
from reference_modifiers import ref_losses

from dpo_fast import _registry, _threads

# ---- the fuzzing's settings, counting, invariants and data (tests/test_fuzz_*.py) ----
TH = _threads.PARALLEL_MIN_ROWS
CHUNK = 8192
DBL_MAX = float(np.finfo(np.float64).max)
DBL_MIN = float(np.finfo(np.float64).tiny)
FLT_MAX = float(np.finfo(np.float32).max)
FLT_MIN = float(np.finfo(np.float32).tiny)
LOSS_TYPES = _registry.LOSS_TYPES
COUPLED = _registry.BATCH_COUPLED_LOSS_TYPES
F_DIV_TYPES = _registry.F_DIVERGENCE_LOSS_TYPES
# The loss types the fuzzers give a label_smoothing to (besides exo_pair, which needs one).
FUZZ_SMOOTHED = frozenset({"sigmoid", "robust", "aot", "aot_unpaired", "simpo", "alphapo"})
OUTPUTS = ("losses", "chosen_rewards", "rejected_rewards", "grad_chosen", "grad_rejected")
PREF_NAMES = ("chosen_logps", "rejected_logps", "ref_chosen_logps", "ref_rejected_logps")
SEED_NAMES = ("log_probs_chosen_policy", "log_probs_rejected_policy",
              "log_probs_chosen_ref", "log_probs_rejected_ref")

# ------------------------------------------------------------------ settings and counting

SCALE = float(os.environ.get("DPO_FAST_FUZZ_SCALE", "1"))
FUZZ_COUNTS: collections.Counter = collections.Counter()


def fuzz(examples: int):
    """Settings of one fuzz test: a fixed number of derandomized examples, no deadline."""
    return settings(max_examples=max(1, int(examples * SCALE)), deadline=None,
                    derandomize=True, database=None, print_blob=True,
                    suppress_health_check=list(HealthCheck))


def count(name: str) -> None:
    FUZZ_COUNTS[name] += 1


# ------------------------------------------------------------------ invariant helpers


class UserError(Exception):
    """Raised by the fuzzers' own __float__: must come out of the API unchanged."""


class FloatRaises:
    """Not a number, but has a __float__ that raises."""

    def __float__(self):
        raise UserError("__float__ of a non-number")


class RealFloatRaises:
    """Registered as numbers.Real; its __float__ raises."""

    def __float__(self):
        raise UserError("__float__ of a registered Real")


numbers.Real.register(RealFloatRaises)


class FloatSubclassRaises(float):
    """A float subclass whose __float__ raises."""

    def __float__(self):
        raise UserError("__float__ of a float subclass")


ALLOWED = (ValueError, TypeError, UserError)


def _snapshot(value, depth=0):
    """Something to compare after the call to tell whether ``value`` was changed."""
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            return ("obj", value.shape, [id(x) for x in value.ravel(order="K")])
        return ("nd", value.dtype.str, value.shape, value.strides, value.tobytes())
    if isinstance(value, (list, tuple)) and depth < 4:
        return (type(value).__name__, len(value), [(id(x), _snapshot(x, depth + 1))
                                                   for x in value])
    if isinstance(value, dict) and depth < 4:
        return ("dict", sorted(map(repr, value.keys())),
                [(id(v), _snapshot(v, depth + 1)) for v in value.values()])
    if isinstance(value, (bytearray, set)):
        return (type(value).__name__, repr(value))
    return ("id", id(value))




def call_checked(fn, *args, **kwargs):
    """Run fn; return (result, None) or (None, exception) for the allowed exceptions. Any
    other exception fails the test; so does a change of any argument."""
    before = _snapshot(args), _snapshot({k: v for k, v in kwargs.items() if k != "out"})
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # overflow warnings of NumPy are not the subject
            result = fn(*args, **kwargs)
    except ALLOWED as exc:
        error = exc
        result = None
    except SystemError as exc:  # pragma: no cover - a bug
        raise AssertionError(f"SystemError: {exc!r}") from exc
    else:
        error = None
    after = _snapshot(args), _snapshot({k: v for k, v in kwargs.items() if k != "out"})
    assert before == after, "an input was changed by the call"
    return result, error




def assert_close(got, want, what, rtol=1e-9, atol=1e-12):
    """got matches the reference: the same infinities, finite values within tolerance."""
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    assert_no_nan(got, what)
    inf = np.isinf(want)
    assert np.array_equal(got[inf], want[inf]), f"{what}: infinities differ"
    np.testing.assert_allclose(got[~inf], want[~inf], rtol=rtol, atol=atol, err_msg=what)






# ------------------------------------------------------------------ preference_loss data


def loss_kwargs(loss_type, n, rng, *, beta=None, fdiv="reverse_kl", weights=False):
    """Keyword arguments that make a valid call for loss_type (a str or a list)."""
    types = [loss_type] if isinstance(loss_type, str) else list(loss_type)
    kw = {"loss_type": loss_type, "beta": float(rng.choice([0.05, 0.1, 0.5, 2.0]))
          if beta is None else beta}
    if any(t in ("sigmoid_norm", "simpo", "sft", "ipo", "alphapo") for t in types):
        kw["chosen_lengths"] = rng.integers(1, 400, n).astype(np.float64)
        kw["rejected_lengths"] = rng.integers(1, 400, n).astype(np.float64)
    smoothing_users = [t for t in types if t in FUZZ_SMOOTHED or t == "exo_pair"]
    if "exo_pair" in types:  # must be set (> 0), as in TRL
        kw["label_smoothing"] = float(rng.choice([1e-3, 0.1, 0.3]))
    elif smoothing_users and rng.random() < 0.5:
        kw["label_smoothing"] = float(rng.choice([0.0, 0.1, 0.3]))
    if "discopop" in types:
        kw["discopop_tau"] = float(rng.choice([0.05, 0.5, 1.0, 3.0]))
    if "simpo" in types or "alphapo" in types:
        kw["simpo_gamma"] = float(rng.choice([0.0, 0.5, -1.0]))
    if any(t.startswith("rpo_") for t in types):  # ground-truth reward margins (NeMo's RPO)
        kw["gt_reward_margins"] = rng.normal(0.0, 3.0, n)
        if rng.random() < 0.5:
            kw["gt_reward_scale"] = float(rng.choice([0.0, 0.5, 4.0]))
    if "alphapo" in types and rng.random() < 0.8:
        kw["alphapo_alpha"] = float(rng.choice([-1.0, -0.1, 1e-9, 0.25, 3.0]))
    if "dpop" in types and rng.random() < 0.5:
        kw["dpop_lambda"] = float(rng.choice([0.0, 5.0, 50.0, 1e4]))
    if "bco_pair" in types and rng.random() < 0.5:
        kw["bco_delta"] = float(rng.choice([-1.0, 0.37, 20.0]))
    if fdiv != "reverse_kl" and all(t in F_DIV_TYPES or t == "sft" for t in types):
        kw["f_divergence_type"] = fdiv
        kw["f_alpha_divergence_coef"] = float(rng.choice([0.5, 2.0, -1.0]))
    if len(types) > 1:
        kw["loss_weights"] = [float(w) for w in rng.uniform(-1.0, 2.0, len(types))]
    if weights:
        kw["weights"] = rng.uniform(0.0, 3.0, n)
    return kw


def logps_arrays(loss_type, n, rng, *, spread=5.0):
    """Policy and (unless simpo) reference log-probs: moderate values, log-ratios within
    +-spread (so that f-divergence scores do not cancel catastrophically)."""
    types = [loss_type] if isinstance(loss_type, str) else list(loss_type)
    pc = rng.uniform(-300.0, 0.0, n)
    pr = rng.uniform(-300.0, 0.0, n)
    if "simpo" in types or "alphapo" in types:  # reference-free
        return [pc, pr]
    return [pc, pr, pc + rng.uniform(-spread, spread, n), pr + rng.uniform(-spread, spread, n)]


REF_KEYS = ("beta", "loss_type", "loss_weights", "label_smoothing", "discopop_tau",
            "simpo_gamma", "f_divergence_type", "f_alpha_divergence_coef", "chosen_lengths",
            "rejected_lengths", "weights", "dpop_lambda", "bco_delta", "alphapo_alpha",
            "gt_reward_margins", "gt_reward_scale")


def expected_losses(arrays, kw, rows=None):
    """Per-pair reference losses (plain float64, tests/test_loss_modifiers.py), of ``rows``
    only when given (valid for loss types that do not couple the pairs)."""
    ref_kw = {k: kw[k] for k in REF_KEYS if k in kw}
    arrays = [np.asarray(a, dtype=np.float64) for a in arrays]
    if rows is not None:
        arrays = [a[rows] for a in arrays]
        for key in ("chosen_lengths", "rejected_lengths", "weights", "gt_reward_margins"):
            if key in ref_kw:
                ref_kw[key] = np.asarray(ref_kw[key], dtype=np.float64)[rows]
    for key in ("chosen_lengths", "rejected_lengths", "weights", "gt_reward_margins"):
        if key in ref_kw:
            ref_kw[key] = np.asarray(ref_kw[key], dtype=np.float64)
    try:
        return np.array(ref_losses(*arrays, **ref_kw))
    except OverflowError:  # the plain reference's own math.exp / ** overflowed
        return None


def check_preference_result(result, arrays, kw, *, reduction="mean", rows=None, rtol=1e-9):
    """A PreferenceLossResult against the plain reference (losses, rewards, reduction)."""
    types = [kw["loss_type"]] if isinstance(kw["loss_type"], str) else list(kw["loss_type"])
    single = result.losses.dtype == np.float32
    tol = 3e-7 if single else rtol
    n = result.losses.shape[0]
    idx = np.arange(n) if rows is None else np.asarray(rows)
    want = expected_losses(arrays, kw, None if rows is None else idx)
    if want is None:  # no reference value: only the invariants
        result_no_nan(result)
        return
    want64 = want
    if single:
        with np.errstate(over="ignore", under="ignore"):
            want = want.astype(np.float32).astype(np.float64)  # the one rounding of float32
    got = result.losses[idx]
    assert_close(got, want, "losses", rtol=tol, atol=1e-9)
    beta = float(kw["beta"])
    pc, pr = (np.asarray(a, dtype=np.float64)[idx] for a in arrays[:2])
    if "simpo" in types or "alphapo" in types:
        nc = np.asarray(kw["chosen_lengths"], np.float64)[idx]
        nr = np.asarray(kw["rejected_lengths"], np.float64)[idx]
        shape = kw.get("alphapo_alpha", 0.0)  # alphapo: TRL's beta * r(a)

        def reward(a):  # rounded once to float32 for float32 outputs (inf beyond its range)
            value = beta * (a if shape == 0.0 else -np.expm1(-shape * a) / shape)
            with np.errstate(over="ignore"):
                return value.astype(np.float32).astype(np.float64) if single else value

        assert_close(result.chosen_rewards[idx], reward(pc / nc), "chosen_rewards", rtol=tol)
        assert_close(result.rejected_rewards[idx], reward(pr / nr), "rejected_rewards",
                     rtol=tol)
    else:
        rc, rr = ((np.asarray(a, dtype=np.float64)[idx] for a in arrays[2:]) if len(arrays) > 2
                  else (np.zeros(idx.size), np.zeros(idx.size)))
        dtype = result.chosen_rewards.dtype
        # beta * (p - r) in double, rounded once to the output dtype: exact.
        assert result.chosen_rewards[idx].tobytes() == (beta * (pc - rc)).astype(dtype).tobytes()
        assert result.rejected_rewards[idx].tobytes() == \
            (beta * (pr - rr)).astype(dtype).tobytes()
    if rows is None:
        # The reduction is taken in double from the double per-pair values (also for
        # float32 outputs): compare it with the reference's.
        finite = np.isfinite(want64).all()
        total = math.fsum(want64) if finite else float(np.sum(want64))
        if reduction == "mean" and finite:
            assert result.loss == pytest.approx(total / n, rel=1e-8, abs=1e-9)
        elif reduction == "sum" and finite:
            assert result.loss == pytest.approx(total, rel=1e-8, abs=1e-9)
        elif reduction == "none":
            assert result.loss is result.losses
    result_no_nan(result)
