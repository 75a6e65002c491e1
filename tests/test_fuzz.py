"""Fuzzing every public entry point with hypothesis (issue 7, "Fuzzing").

Entry points: ``dpo_loss``, ``preference_loss`` (every parameter), ``sequence_logps``,
``sequence_logps_grad`` and the ``dpo_fast.torch`` adapters; the compiled modules are reached
only through them. Bad inputs come from these classes:

* arbitrary Python objects in every argument: None, str, bytes, dict, set, nested and ragged
  lists, complex, Decimal, Fraction, NumPy scalars, huge ints (10**400, 2**64), objects whose
  ``__float__`` raises (plain and registered as ``numbers.Real``);
* dtypes: float16/32/64, longdouble, int8..int64, uint8..uint64, bool, object, complex,
  datetime64, timedelta64, str, bytes, structured, big-endian floats;
* layouts: 0-d, 2-d, empty, strides up to 32 KiB, negative strides, zero strides, read-only,
  Fortran order, and views that are not aligned (``np.frombuffer`` with an offset of 1..7
  bytes);
* sizes around the SIMD widths, the 8192-row chunk and the parallel threshold
  (``_threads.PARALLEL_MIN_ROWS`` = 32768): 0, 1, 7, 8, 15, 16, 17, 8191, 8192, 8193,
  threshold - 1, threshold, threshold + 1;
* NaN, +-inf, subnormals, +-0.0 and the largest finites at every position of every array;
* ``beta``, ``label_smoothing``, ``discopop_tau``, ``simpo_gamma``, ``f_alpha_divergence_coef``
  and ``temperature`` at and beyond their bounds.

The invariant checked for every case: either a correct result (against the plain references of
tests/reference.py, tests/test_loss_modifiers.py and tests/test_sequence_logps.py, and bit for
bit against the serial call) or ``ValueError`` / ``TypeError``; never a crash, a hang, a
``SystemError``, a NaN from finite inputs, or a changed input (every input, and the guard
bytes around every buffer, are compared before and after). An exception raised by the
caller's own ``__float__`` is passed through unchanged.

Every failure class the fuzzing found is pinned by a regression test (``test_regression_*``,
crashes in a subprocess) beside the code it guards: tests/test_validation.py,
test_sequence_logps.py, test_threads_simd.py, test_extremes.py, test_dpo_loss.py,
test_torch.py and test_sanitizer_regressions.py. All of them are fixed, and
docs/reliability.md lists them.

Every example is counted; the total is printed at the end of the module's tests (and written
as JSON to ``$DPO_FAST_FUZZ_STATS`` when that is set). ``DPO_FAST_FUZZ_SCALE=10`` runs ten
times as many examples. The examples are derandomized, so a run is reproducible.
"""

from __future__ import annotations

import collections
import decimal
import faulthandler
import fractions
import json
import math
import numbers
import os
import sys
import warnings

import numpy as np
import pytest
from helpers import NEEDS_TORCH, Guarded, assert_no_nan, result_no_nan
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import reference_preference_loss
from test_loss_modifiers import ref_losses
from test_sequence_logps import reference as logps_reference
from test_threads_simd import fingerprint

from dpo_fast import (
    _registry,
    _threads,
    dpo_loss,
    preference_loss,
    sequence_logps,
    sequence_logps_grad,
)

TH = _threads.PARALLEL_MIN_ROWS
CHUNK = 8192
DBL_MAX = float(np.finfo(np.float64).max)
DBL_MIN = float(np.finfo(np.float64).tiny)
FLT_MAX = float(np.finfo(np.float32).max)
FLT_MIN = float(np.finfo(np.float32).tiny)
LOSS_TYPES = _registry.LOSS_TYPES
COUPLED = _registry.BATCH_COUPLED_LOSS_TYPES
F_DIV_TYPES = _registry.F_DIVERGENCE_LOSS_TYPES
SMOOTHED = frozenset({"sigmoid", "robust", "aot", "aot_unpaired", "simpo", "alphapo"})
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


@pytest.fixture(scope="module", autouse=True)
def _fuzz_report(request):
    """Print how many fuzz cases ran (and write them to $DPO_FAST_FUZZ_STATS)."""
    yield
    total = sum(FUZZ_COUNTS.values())
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(f"\ndpo_fast fuzz: {total} cases in {len(FUZZ_COUNTS)} fuzz "
                                f"tests (DPO_FAST_FUZZ_SCALE={SCALE:g})")
    path = os.environ.get("DPO_FAST_FUZZ_STATS")
    if path:
        with open(path, "w") as fh:
            json.dump({"total": total, "scale": SCALE, "per_test": dict(FUZZ_COUNTS)}, fh,
                      indent=1, sort_keys=True)


@pytest.fixture(autouse=True)
def _no_hang():
    """'Never a hang': a test of this module that runs for 10 minutes dumps every thread's
    stack and ends the process, instead of blocking the run."""
    try:  # on the real stderr: pytest's capture may have replaced sys.stderr (no fileno)
        faulthandler.dump_traceback_later(600, exit=True, file=sys.__stderr__)
        armed = True
    except (AttributeError, ValueError, OSError):  # no usable stderr (e.g. pythonw)
        armed = False
    yield
    if armed:
        faulthandler.cancel_dump_traceback_later()


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
    smoothing_users = [t for t in types if t in SMOOTHED or t == "exo_pair"]
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


# ======================================================================= 1. arbitrary objects


def _junk_leaf():
    return st.one_of(
        st.none(), st.booleans(), st.text(max_size=4), st.binary(max_size=4),
        st.integers(min_value=-(10**400), max_value=10**400),
        st.sampled_from([10**400, -(10**400), 2**63, 2**64, -(2**63) - 1, 2**31, 0, -1, 3]),
        st.floats(allow_nan=True, allow_infinity=True),
        st.complex_numbers(max_magnitude=10.0),
        st.sampled_from([fractions.Fraction(-1, 3), decimal.Decimal("-1.5"), np.float32(-1.5),
                         np.int8(3), np.uint64(2**64 - 1), np.bool_(True),
                         np.datetime64("2020-01-01"), np.timedelta64(5, "s"),
                         np.longdouble(-2.5), np.complex64(1 + 1j), np.float16(-0.5),
                         Ellipsis, slice(1, 2), object(), float, np.float64]),
        st.builds(FloatRaises), st.builds(RealFloatRaises),
        st.builds(FloatSubclassRaises, st.floats(-10, 10)),
    )


JUNK = st.recursive(
    _junk_leaf(),
    lambda children: st.one_of(
        st.lists(children, max_size=6), st.tuples(children, children),
        st.dictionaries(st.text(max_size=3), children, max_size=3),
        st.frozensets(st.integers(), max_size=3)),
    max_leaves=10)

PREF_SLOTS = ("chosen_logps", "rejected_logps", "ref_chosen_logps", "ref_rejected_logps",
              "element", "beta", "loss_type", "loss_weights", "label_smoothing",
              "discopop_tau", "simpo_gamma", "f_divergence_type", "f_alpha_divergence_coef",
              "chosen_lengths", "rejected_lengths", "weights", "reduction", "compute_grad",
              "check_finite", "n_threads", "out")


def _normalised(value):
    """The float64 array NumPy makes of value, or None if it cannot."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return np.array(value, dtype=np.float64)
    except Exception:
        return None


@fuzz(1000)
@given(slot=st.sampled_from(PREF_SLOTS), junk=JUNK, index=st.integers(0, 4),
       loss_type=st.sampled_from(["sigmoid", "ipo", "discopop", "sigmoid_norm", "simpo",
                                  "exo_pair", ["sigmoid", "sft"], "aot"]),
       as_list=st.booleans())
def test_fuzz_arbitrary_objects_preference_loss(slot, junk, index, loss_type, as_list):
    """Any object in any argument of preference_loss: a correct result or ValueError /
    TypeError (or the caller's own __float__ exception), never anything else."""
    count("arbitrary_objects_preference_loss")
    n = 5
    rng = np.random.default_rng(index)
    arrays = logps_arrays(loss_type, n, rng)
    kw = loss_kwargs(loss_type, n, rng)
    args = [a.tolist() if as_list else a for a in arrays]
    if slot in PREF_NAMES:
        position = PREF_NAMES.index(slot)
        while len(args) <= position:
            args.append(None)
        args[position] = junk
    elif slot == "element":
        args[0] = list(args[0])
        args[0][index] = junk
    else:
        kw[slot] = junk
    result, error = call_checked(preference_loss, *args, **kw)
    if error is not None:
        return
    # Accepted: check against the same call with the odd argument made plain.
    plain_args = [None if a is None else _normalised(a) for a in args]
    if any(p is None for a, p in zip(args, plain_args) if a is not None):
        return  # NumPy itself cannot make floats of it; the API did (e.g. a float subclass)
    result_no_nan(result, "accepted junk")
    if slot in PREF_NAMES or slot == "element":
        while plain_args and plain_args[-1] is None:
            plain_args.pop()
        if all(p.ndim == 1 and np.isfinite(p).all() for p in plain_args):
            plain = preference_loss(*plain_args, **kw)
            for name in OUTPUTS[:3]:
                np.testing.assert_allclose(getattr(result, name), getattr(plain, name),
                                           rtol=1e-6, err_msg=name)


@fuzz(600)
@given(slot=st.integers(0, 4), element=st.booleans(), junk=JUNK, index=st.integers(0, 3),
       kind=st.sampled_from(["list", "tuple", "array"]))
def test_fuzz_arbitrary_objects_dpo_loss(slot, element, junk, index, kind):
    """dpo_loss (list fast path and array path) with any object in any argument."""
    count("arbitrary_objects_dpo_loss")
    rng = np.random.default_rng(index)
    columns = [rng.uniform(-30.0, 0.0, 4) for _ in range(4)]
    convert = {"list": lambda a: a.tolist(), "tuple": lambda a: tuple(a.tolist()),
               "array": lambda a: a}[kind]
    args = [convert(c) for c in columns] + [0.5]
    if slot == 4:
        args[4] = junk
    elif element:
        column = list(args[slot])
        column[index] = junk
        args[slot] = type(args[slot])(column) if kind != "array" else column
    else:
        args[slot] = junk
    result, error = call_checked(dpo_loss, *args)
    if error is not None:
        return
    assert set(result) == {"loss", "chosen_rewards", "rejected_rewards"}
    assert type(result["loss"]) is float and not math.isnan(result["loss"])
    for key in ("chosen_rewards", "rejected_rewards"):
        assert type(result[key]) is list
        assert all(type(v) is float and not math.isnan(v) for v in result[key])


LOGPS_SLOTS = ("logits", "labels", "ignore_index", "mask", "average", "temperature",
               "return_token_logps", "return_entropy", "n_threads")
GRAD_SLOTS = ("logits", "labels", "grad_logps", "ignore_index", "mask", "average",
              "temperature", "grad_token_logps", "n_threads", "out")


@fuzz(700)
@given(grad=st.booleans(), slot=st.integers(0, 9), junk=JUNK, seed=st.integers(0, 99))
def test_fuzz_arbitrary_objects_sequence_logps(grad, slot, junk, seed):
    """sequence_logps / sequence_logps_grad with any object in any argument. (logsumexp is
    left out: see test_regression_logsumexp_dtype_is_checked.)"""
    count("arbitrary_objects_sequence_logps")
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(2, 3, 5))
    labels = rng.integers(0, 5, (2, 3))
    if grad:
        kw = {"logits": logits, "labels": labels, "grad_logps": np.ones(2)}
        kw[GRAD_SLOTS[slot % len(GRAD_SLOTS)]] = junk
        result, error = call_checked(
            lambda logits, labels, grad_logps, **rest: sequence_logps_grad(
                logits, labels, grad_logps, **rest), **kw)
        if error is None:
            assert isinstance(result, np.ndarray)
            assert_no_nan(result, "grad")
    else:
        kw = {"logits": logits, "labels": labels}
        kw[LOGPS_SLOTS[slot % len(LOGPS_SLOTS)]] = junk
        result, error = call_checked(
            lambda logits, labels, **rest: sequence_logps(logits, labels, **rest), **kw)
        if error is None:
            assert_no_nan(result.logps, "logps")
            assert not math.isnan(result.token_accuracy)


# ======================================================================= 2. dtypes

DTYPES = ["float16", "float32", "float64", "longdouble", "int8", "int16", "int32", "int64",
          "uint8", "uint16", "uint32", "uint64", "bool", "object", "complex64", "complex128",
          "datetime64[s]", "timedelta64[ms]", "U4", "S4", "V8", ">f8", ">f4", ">i4",
          [("a", "f8"), ("b", "i4")]]


def _array_of(dtype, values, positive=False):
    """values (moderate negative floats, or positive ones with positive=True) as an array of
    dtype, as far as it can hold them (integers: |values| mod 100, negated for signed
    dtypes unless positive; + 1 when positive)."""
    dtype = np.dtype(dtype)
    if dtype.kind in "iu":
        magnitude = np.abs(np.round(values)).astype(np.int64) % 100 + (1 if positive else 0)
        return (magnitude if dtype.kind == "u" or positive else -magnitude).astype(dtype)
    if dtype.kind == "b":
        return values > -10
    if dtype.kind == "O":
        return np.array(values.tolist(), dtype=object)
    if dtype.kind in "fc":
        return values.astype(dtype)
    if dtype.kind in "mM":
        return np.abs(values).astype(np.int64).astype(dtype)
    if dtype.kind in "US":
        return np.array([f"{v:.1f}" for v in values.ravel()], dtype=dtype).reshape(values.shape)
    return np.zeros(values.shape, dtype=dtype)


@fuzz(700)
@given(dtypes=st.lists(st.sampled_from(DTYPES), min_size=4, max_size=4),
       n=st.sampled_from([1, 2, 7, 8, 9, 17]), seed=st.integers(0, 2**32 - 1),
       with_refs=st.booleans(), loss=st.sampled_from(["sigmoid", "hinge", "ipo", "robust"]),
       extra=st.sampled_from([None, "weights", "chosen_lengths"]))
def test_fuzz_dtypes_preference_loss(dtypes, n, seed, with_refs, loss, extra):
    """Inputs of every dtype: real float (<= 64 bits) and integer dtypes give the
    reference's result in float32 (all float16/float32) or float64; every other dtype gives
    TypeError."""
    count("dtypes_preference_loss")
    rng = np.random.default_rng(seed)
    values = [rng.uniform(-60.0, -1.0, n) for _ in range(4)]
    arrays = [_array_of(d, v) for d, v in zip(dtypes, values)]
    kw = {"loss_type": loss, "beta": 0.3, "compute_grad": True}
    if loss == "robust":
        kw["label_smoothing"] = 0.2
    used = arrays if with_refs else arrays[:2]
    used_dtypes = dtypes if with_refs else dtypes[:2]
    if extra is not None:
        extra_values = _array_of(dtypes[3], np.abs(values[3]) + 1.0, positive=True)
        if extra == "chosen_lengths":
            kw["loss_type"] = "sft"
            kw.pop("label_smoothing", None)
        kw[extra] = extra_values
    result, error = call_checked(preference_loss, *used, **kw)

    def good(d):
        d = np.dtype(d)
        return (d.kind == "f" and d.itemsize <= 8) or d.kind in "iu"

    all_good = all(good(d) for d in used_dtypes) and (extra is None or good(dtypes[3]))
    if not all_good:
        assert isinstance(error, TypeError), f"dtypes {used_dtypes}: got {error!r}"
        return
    assert error is None, f"dtypes {used_dtypes}: {error!r}"
    single = all(np.dtype(d).kind == "f" and np.dtype(d).itemsize <= 4 for d in used_dtypes)
    assert result.losses.dtype == (np.float32 if single else np.float64)
    plain = [np.asarray(a, dtype=np.float64) for a in used]
    plain_kw = dict(kw)
    if extra is not None:
        plain_kw[extra] = np.asarray(kw[extra], dtype=np.float64)
    check_preference_result(result, plain, plain_kw)


@fuzz(500)
@given(logits_dtype=st.sampled_from(DTYPES), labels_dtype=st.sampled_from(DTYPES),
       mask_dtype=st.sampled_from([None, *DTYPES]), seed=st.integers(0, 999),
       grad=st.booleans())
def test_fuzz_dtypes_sequence_logps(logits_dtype, labels_dtype, mask_dtype, seed, grad):
    """logits must be float32/float64 (native byte order), labels integers, the mask bool or
    integers: anything else is TypeError; accepted calls match the reference."""
    count("dtypes_sequence_logps")
    rng = np.random.default_rng(seed)
    b, t, v = 2, 3, 6
    logits = _array_of(logits_dtype, rng.normal(size=(b, t, v)) * 3)
    raw_labels = rng.integers(0, v, (b, t)).astype(np.float64)
    labels = (raw_labels.astype(labels_dtype) if np.dtype(labels_dtype).kind in "iu"
              else _array_of(labels_dtype, raw_labels))
    mask = None if mask_dtype is None else _array_of(mask_dtype, rng.normal(size=(b, t)))
    if grad:
        result, error = call_checked(sequence_logps_grad, logits, labels, 1.0, mask=mask)
    else:
        result, error = call_checked(sequence_logps, logits, labels, mask=mask)
    ld, bd = np.dtype(logits_dtype), np.dtype(labels_dtype)
    md = None if mask_dtype is None else np.dtype(mask_dtype)
    ok = (ld in (np.dtype(np.float32), np.dtype(np.float64)) and ld.isnative
          and bd.kind in "iu" and (md is None or md.kind in "iub"))
    if not ok:
        assert isinstance(error, (TypeError, ValueError)), (ld, bd, md, error)
        if ld.kind not in "f" or ld.itemsize not in (4, 8) or bd.kind not in "iu":
            assert isinstance(error, TypeError), (ld, bd, md, error)
        return
    if error is not None:  # labels out of range (uint wrap) can be a ValueError
        assert isinstance(error, ValueError) and "out of range" in str(error), error
        return
    ref = logps_reference(np.asarray(logits, np.float64), np.asarray(labels, np.int64),
                          mask=mask, grad_logps=1.0 if grad else None)
    if grad:
        np.testing.assert_allclose(result, ref["grad"], rtol=1e-6 if ld == np.float32 else 1e-12,
                                   atol=1e-7 if ld == np.float32 else 1e-13)
    else:  # float32 logits: the float exp's ~4e-8 a token (FLOAT32 contract: 1e-6 a token)
        tol = 1e-7 if ld == np.float32 else 1e-10
        np.testing.assert_allclose(result.logps, ref["logps"], rtol=tol, atol=10 * tol)


# ======================================================================= 3. shapes and layouts

LAYOUTS = ["contiguous", "reversed", "strided", "huge_stride", "unaligned",
           "unaligned_reversed", "readonly", "zero_stride", "scalar_0d", "column_2d", "row_2d",
           "fortran_2d", "empty", "list", "tuple"]


def make_layout(values, dtype, layout, offset, stride, keep):
    """values (1-D float64) as an array of dtype in the given layout; returns (object, the
    1-D float64 values it stands for or None if it is not a valid 1-D input, guards)."""
    guards = []
    if layout == "contiguous":
        return values.astype(dtype), values, guards
    if layout == "reversed":
        return values[::-1].astype(dtype)[::-1], values, guards
    if layout in ("strided", "huge_stride"):
        step = stride if layout == "strided" else 4096
        big = np.zeros(values.size * step, dtype=dtype)
        big[::step] = values
        return big[::step], values, guards
    if layout in ("unaligned", "unaligned_reversed"):
        g = Guarded(values[::-1] if layout == "unaligned_reversed" else values, dtype, offset)
        keep.append(g)
        guards.append(g)
        view = g.array[::-1] if layout == "unaligned_reversed" else g.array
        return view, values, guards
    if layout == "readonly":
        array = values.astype(dtype)
        array.flags.writeable = False
        return array, values, guards
    if layout == "zero_stride":
        return np.broadcast_to(np.asarray(values[0], dtype=dtype), values.shape), \
            np.full(values.shape, values[0]), guards
    if layout == "scalar_0d":
        return np.asarray(values[0], dtype=dtype), None, guards
    if layout == "column_2d":
        return values.astype(dtype)[:, None], None, guards
    if layout == "row_2d":
        return values.astype(dtype)[None, :], None, guards
    if layout == "fortran_2d":
        return np.asfortranarray(np.stack([values, values]).astype(dtype)), None, guards
    if layout == "empty":
        return np.empty(0, dtype=dtype), None, guards
    if layout == "list":
        return values.astype(dtype).tolist(), values, guards
    return tuple(values.astype(dtype).tolist()), values, guards


@fuzz(1000)
@given(layouts=st.lists(st.sampled_from(LAYOUTS), min_size=4, max_size=4),
       dtype=st.sampled_from([np.float32, np.float64, np.int32]),
       n=st.sampled_from([1, 2, 3, 7, 8, 9, 15, 16, 17, 33]), offset=st.integers(1, 7),
       stride=st.integers(2, 9), seed=st.integers(0, 2**32 - 1),
       loss=st.sampled_from(["sigmoid", "ipo", "nca_pair", "aot_unpaired",
                             ["sigmoid", "hinge"]]),
       with_refs=st.booleans(), use_out=st.booleans())
def test_fuzz_layouts_preference_loss(layouts, dtype, n, offset, stride, seed, loss,
                                      with_refs, use_out):
    """Every layout of every input: any 1-D non-empty one gives the reference's result (and
    the same bits as the contiguous call); 0-d, 2-d and empty ones give ValueError; no input
    and no byte around an unaligned buffer is written."""
    count("layouts_preference_loss")
    rng = np.random.default_rng(seed)
    values = logps_arrays(loss, n, rng)
    if dtype is np.int32:
        values = [np.round(v) for v in values]
    values = [v.astype(dtype).astype(np.float64) for v in values]  # exactly representable
    keep: list = []
    made = [make_layout(v, dtype, layout, offset, stride, keep)
            for v, layout in zip(values, layouts)]
    used = made if with_refs else made[:2]
    args = [m[0] for m in used]
    kw = loss_kwargs(loss, n, rng, beta=0.2)
    kw["compute_grad"] = True
    out_guards = []
    valid = all(m[1] is not None for m in used) and len({m[1].size for m in used}) == 1
    # float32 results only when every input is a float32 array (lists are float64).
    out_dtype = np.float32 if dtype is np.float32 and not any(
        isinstance(a, (list, tuple)) for a in args) else np.float64
    if use_out and valid:
        # Preallocated outputs at an odd byte offset inside guarded buffers.
        out_guards = [Guarded(np.zeros(n), out_dtype, offset) for _ in OUTPUTS]
        kw["out"] = {name: g.array for name, g in zip(OUTPUTS, out_guards)}
    result, error = call_checked(preference_loss, *args, **kw)
    for g in [*(gg for m in used for gg in m[2]), *out_guards]:
        assert g.guards_intact(), "bytes around a buffer were written"
    if not valid:
        assert isinstance(error, ValueError), f"{layouts}: {error!r}"
        return
    assert error is None, f"{layouts}: {error!r}"
    plain = [m[1] for m in used]
    plain_kw = {k: v for k, v in kw.items() if k != "out"}
    if use_out:
        for name in OUTPUTS:
            assert getattr(result, name) is kw["out"][name]
    contiguous = preference_loss(*[a if isinstance(a, (list, tuple)) else
                                   np.ascontiguousarray(a) for a in args], **plain_kw)
    assert fingerprint(result) == fingerprint(contiguous)
    check_preference_result(result, plain, plain_kw, rtol=1e-9)


LOGITS_LAYOUTS = ["contiguous", "sliced_t", "neg_b", "neg_t", "neg_v", "vocab_strided",
                  "transposed", "unaligned", "readonly", "two_d", "one_d", "four_d",
                  "zero_b", "zero_t", "zero_v", "broadcast_b"]


def make_logits(x, layout, offset, keep):
    """(logits object, the (B, T, V) float values it stands for or None when invalid,
    guards). x is a float array of shape (B, T, V)."""
    if layout == "contiguous":
        return x, x, []
    if layout == "sliced_t":
        big = np.concatenate([x, x], axis=1)
        return big[:, ::2][:, : x.shape[1]], big[:, ::2][:, : x.shape[1]].copy(), []
    if layout == "neg_b":
        return x[::-1].copy()[::-1], x, []
    if layout == "neg_t":
        return x[:, ::-1].copy()[:, ::-1], x, []
    if layout == "neg_v":
        return x[..., ::-1].copy()[..., ::-1], x, []
    if layout == "vocab_strided":
        big = np.repeat(x, 2, axis=-1)
        return big[..., ::2], x, []
    if layout == "transposed":
        return np.ascontiguousarray(np.swapaxes(x, 1, 2)).swapaxes(1, 2), x, []
    if layout == "unaligned":
        g = Guarded(x, x.dtype, offset)
        keep.append(g)
        return g.array, x, [g]
    if layout == "readonly":
        y = x.copy()
        y.flags.writeable = False
        return y, x, []
    if layout == "two_d":
        return x.reshape(-1, x.shape[-1]), None, []  # valid, handled by the caller
    if layout == "one_d":
        return x.reshape(-1), None, []
    if layout == "four_d":
        return x[None], None, []
    if layout == "zero_b":
        return x[:0], x[:0], []
    if layout == "zero_t":
        return x[:, :0], x[:, :0], []
    if layout == "zero_v":
        return x[..., :0], None, []
    return np.broadcast_to(x[:1], x.shape), np.broadcast_to(x[:1], x.shape).copy(), []


@fuzz(700)
@given(layout=st.sampled_from(LOGITS_LAYOUTS), dtype=st.sampled_from([np.float32, np.float64]),
       b=st.integers(1, 3), t=st.integers(1, 5),
       v=st.sampled_from([1, 2, 7, 8, 9, 15, 16, 17, 31, 33, 65]), offset=st.integers(1, 7),
       label_layout=st.sampled_from(["contiguous", "reversed", "strided", "unaligned",
                                     "int8", "uint64", "list"]),
       mask_kind=st.sampled_from([None, "bool", "int", "strided"]), seed=st.integers(0, 999),
       average=st.booleans(), temperature=st.sampled_from([1.0, 0.5, 3.0]),
       grad=st.booleans(), with_lse=st.booleans(), use_out=st.booleans())
def test_fuzz_layouts_sequence_logps(layout, dtype, b, t, v, offset, label_layout, mask_kind,
                                     seed, average, temperature, grad, with_lse, use_out):
    """Every layout of logits, labels and mask: results equal the textbook reference (and
    the contiguous call bit for bit); bad shapes give ValueError; nothing is written outside
    the outputs."""
    count("layouts_sequence_logps")
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(b, t, v)) * 4).astype(dtype)
    keep: list = []
    logits, plain, guards = make_logits(x, layout, offset, keep)
    shape = np.shape(logits)
    token_shape = shape[:-1] if len(shape) in (2, 3) else (b, t)
    if layout == "two_d":
        plain = x.reshape(1, -1, v)
    labels_plain = rng.integers(0, v, token_shape)
    labels_plain[rng.random(token_shape) < 0.2] = -100
    if label_layout == "reversed":
        labels = labels_plain.ravel()[::-1].copy()[::-1].reshape(token_shape)
    elif label_layout == "strided":
        labels = np.repeat(labels_plain, 2, axis=-1)[..., ::2] if labels_plain.ndim else \
            labels_plain
    elif label_layout == "unaligned":
        g = Guarded(labels_plain, np.int64, offset)
        keep.append(g)
        guards.append(g)
        labels = g.array
    elif label_layout == "int8":
        labels = labels_plain.astype(np.int8) if v <= 127 else labels_plain
    elif label_layout == "uint64":
        labels = np.where(labels_plain < 0, 0, labels_plain).astype(np.uint64)
        labels_plain = labels.astype(np.int64)
    elif label_layout == "list":
        labels = labels_plain.tolist()
    else:
        labels = labels_plain
    mask = None
    if mask_kind is not None:
        mask_plain = rng.random(token_shape) < 0.8
        mask = {"bool": mask_plain, "int": mask_plain.astype(np.int16),
                "strided": np.repeat(mask_plain, 2, axis=-1)[..., ::2]
                if mask_plain.ndim else mask_plain}[mask_kind]
    kw = {"mask": mask, "average": average, "temperature": temperature}
    if grad:
        lse = None
        if with_lse and plain is not None and not (label_layout == "list"
                                                   and labels_plain.size == 0):
            lse = sequence_logps(np.asarray(logits), labels, **kw).logsumexp
        out = None
        if use_out and plain is not None and len(shape) in (2, 3):
            og = Guarded(np.zeros(shape), dtype, offset)
            guards.append(og)
            out = og.array
        upstream = rng.normal(size=token_shape[:-1]) if len(token_shape) else 1.0
        result, error = call_checked(sequence_logps_grad, logits, labels, upstream,
                                     logsumexp=lse, out=out, **kw)
    else:
        result, error = call_checked(sequence_logps, logits, labels, return_token_logps=True,
                                     return_entropy=True, **kw)
    for g in guards:
        assert g.guards_intact(), "bytes around a buffer were written"
    if label_layout == "list" and labels_plain.size == 0 and isinstance(error, TypeError):
        return  # NumPy makes float64 of an empty list: refused as non-integer labels
    if plain is None and layout != "two_d":
        assert isinstance(error, ValueError), f"{layout} {shape}: {error!r}"
        return
    assert error is None, f"{layout} {shape} {label_layout} {mask_kind}: {error!r}"
    ref_logits = np.asarray(plain, np.float64)
    ref_labels = np.asarray(labels_plain).reshape(ref_logits.shape[:-1])
    ref_mask = None if mask is None else np.asarray(mask).reshape(ref_logits.shape[:-1])
    ref = logps_reference(ref_logits, ref_labels, mask=ref_mask, average=average,
                          temperature=temperature,
                          grad_logps=np.asarray(upstream).reshape(ref_logits.shape[0])
                          if grad else None)
    single = dtype == np.float32
    if grad:
        assert result.dtype == dtype and result.shape == shape
        np.testing.assert_allclose(result.reshape(ref["grad"].shape), ref["grad"],
                                   rtol=2e-6 if single else 1e-11,
                                   atol=1e-7 if single else 1e-12)
        if out is not None:
            assert result is out
        contiguous = sequence_logps_grad(np.ascontiguousarray(logits), np.asarray(labels),
                                         upstream, logsumexp=lse, **kw)
        assert result.tobytes() == contiguous.tobytes()
    else:
        tol = 1e-7 if single else 1e-10  # float32: the float exp's ~4e-8 a token
        np.testing.assert_allclose(result.logps.reshape(ref["logps"].shape), ref["logps"],
                                   rtol=tol, atol=10 * tol)
        np.testing.assert_allclose(result.entropy.reshape(ref["entropy"].shape),
                                   ref["entropy"], rtol=max(tol, 1e-9), atol=max(tol, 1e-9))
        np.testing.assert_array_equal(result.counts.reshape(ref["counts"].shape),
                                      ref["counts"])
        contiguous = sequence_logps(np.ascontiguousarray(logits), np.asarray(labels),
                                    return_token_logps=True, return_entropy=True, **kw)
        assert result.logps.tobytes() == contiguous.logps.tobytes()
        assert result.token_logps.tobytes() == contiguous.token_logps.tobytes()


# ======================================================================= 4. sizes

SIZES = [0, 1, 7, 8, 15, 16, 17, 31, 32, 33, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK + 1,
         TH - 1, TH, TH + 1]
SIZE_CASES = ["sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair",
              "sppo_hard", "apo_zero", "apo_down", "discopop", "sigmoid_norm", "simpo",
              "aot", "aot_unpaired", "sft", ["sigmoid", "sft"], ["ipo", "sigmoid_norm"],
              "alphapo", "rpo_sq", "rpo_fwd_kl", ["rpo_bwd_kl", "sft"]]


def windows(n):
    """Row ranges around the SIMD tails, chunk boundaries and the parallel threshold."""
    spans = [(0, min(n, 20)), (max(0, n - 20), n)]
    for edge in (CHUNK, 2 * CHUNK, TH):
        if edge - 3 < n:
            spans.append((max(0, edge - 3), min(n, edge + 3)))
    return spans


@fuzz(120)
@given(n=st.sampled_from(SIZES), loss=st.sampled_from(SIZE_CASES),
       dtype=st.sampled_from([np.float32, np.float64]),
       threads=st.sampled_from([None, 1, 2, 3]),
       reduction=st.sampled_from(["mean", "sum", "none"]),
       fdiv=st.sampled_from(["reverse_kl", "forward_kl", "js_divergence", "alpha_divergence"]),
       weights=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_fuzz_sizes_around_simd_chunk_and_thread_thresholds(n, loss, dtype, threads,
                                                            reduction, fdiv, weights, seed):
    """Sizes around every boundary of the kernels: the same bits for every n_threads; rows
    at the boundaries equal the same rows computed on their own (bit for bit) and the
    reference; n = 0 is ValueError."""
    count("sizes")
    rng = np.random.default_rng(seed)
    spread = 5.0 if fdiv == "reverse_kl" else 2.0
    arrays = [a.astype(dtype) for a in logps_arrays(loss, max(n, 1), rng, spread=spread)]
    kw = loss_kwargs(loss, max(n, 1), rng, fdiv=fdiv, weights=weights)
    if n == 0:
        arrays = [a[:0] for a in arrays]
        kw = {k: (v[:0] if isinstance(v, np.ndarray) else v) for k, v in kw.items()}
        _, error = call_checked(preference_loss, *arrays, **kw)
        assert isinstance(error, ValueError)
        return
    full = dict(kw, compute_grad=True, reduction=reduction)
    result, error = call_checked(preference_loss, *arrays, n_threads=threads, **full)
    assert error is None, repr(error)
    serial = preference_loss(*arrays, n_threads=1, **full)
    assert fingerprint(result) == fingerprint(serial), "n_threads changed the bits"
    types = [loss] if isinstance(loss, str) else loss
    plain = [np.asarray(a, np.float64) for a in arrays]
    if not COUPLED.intersection(types):
        for lo, hi in windows(n):
            part = {k: (v[lo:hi] if isinstance(v, np.ndarray) else v) for k, v in kw.items()}
            alone = preference_loss(*(a[lo:hi] for a in arrays), compute_grad=True,
                                    reduction="none" if reduction == "none" else "sum",
                                    **part)
            for name in ("losses", "chosen_rewards", "rejected_rewards"):
                assert getattr(result, name)[lo:hi].tobytes() == \
                    getattr(alone, name).tobytes(), f"{name}[{lo}:{hi}] of n={n}"
            if reduction != "mean":
                assert result.grad_chosen[lo:hi].tobytes() == alone.grad_chosen.tobytes()
        rows = sorted({i for lo, hi in windows(n) for i in range(lo, hi)})
        check_preference_result(result, plain, kw, reduction=reduction, rows=rows)
    elif n <= 2 * CHUNK + 1:
        check_preference_result(result, plain, kw, reduction=reduction)
    result_no_nan(result)


@fuzz(60)
@given(n=st.sampled_from([1, 7, 8, 9, 31, 32, 33, 34, 100, CHUNK - 1, CHUNK, CHUNK + 1]),
       kind=st.sampled_from(["list", "tuple", "array", "float32"]),
       beta=st.sampled_from([0.1, 0.5, 1.0, 3.0]), seed=st.integers(0, 2**32 - 1))
def test_fuzz_dpo_loss_sizes(n, kind, beta, seed):
    """dpo_loss on the stack buffer (<= 32 pairs), the malloc'd one, the list fast path's
    limit (8192) and beyond (the array path): the exact rounding of the preference_loss
    values, and those match the reference."""
    count("dpo_loss_sizes")
    rng = np.random.default_rng(seed)
    cols = [rng.uniform(-50.0, 0.0, n) for _ in range(4)]
    if kind == "float32":
        cols = [c.astype(np.float32) for c in cols]
    args = {"list": lambda c: c.tolist(), "tuple": lambda c: tuple(c.tolist()),
            "array": lambda c: c, "float32": lambda c: c}[kind]
    result, error = call_checked(dpo_loss, *[args(c) for c in cols], beta)
    assert error is None, repr(error)
    plain = [np.asarray(c, np.float64) for c in cols]
    full = preference_loss(*plain, beta=beta)
    assert result["loss"] == round(full.loss, 4)
    assert result["chosen_rewards"] == [round(x, 4) for x in full.chosen_rewards.tolist()]
    assert result["rejected_rewards"] == [round(x, 4) for x in full.rejected_rewards.tolist()]
    rows = rng.choice(n, size=min(n, 24), replace=False)
    ref = reference_preference_loss(*[c[rows] for c in plain], beta=beta, reduction="none")
    assert_close(full.losses[rows], ref.losses, "losses", rtol=1e-12, atol=1e-15)


# ======================================================================= 5. special values

SPECIAL_64 = [math.nan, -math.nan, math.inf, -math.inf, 5e-324, -5e-324, DBL_MIN, -DBL_MIN,
              1e-310, 0.0, -0.0, DBL_MAX, -DBL_MAX, 1e300, -1e300, 1e6, -1e6]
SPECIAL_32 = [math.nan, math.inf, -math.inf, 1e-45, -1e-45, FLT_MIN, 1e-40, 0.0, -0.0,
              FLT_MAX, -FLT_MAX, 1e30, -1e30, 1e6, -1e6]
SPECIAL_SLOTS = ("chosen_logps", "rejected_logps", "ref_chosen_logps", "ref_rejected_logps",
                 "weights", "chosen_lengths", "rejected_lengths")


@fuzz(1200)
@given(n=st.sampled_from([1, 2, 7, 8, 9, 15, 16, 17, 33]), pos=st.integers(0, 10**6),
       slot=st.sampled_from(SPECIAL_SLOTS), dtype=st.sampled_from([np.float32, np.float64]),
       which=st.integers(0, 16), check_finite=st.booleans(),
       loss=st.sampled_from(["sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust",
                             "bco_pair", "sppo_hard", "apo_zero", "apo_down", "discopop",
                             "sigmoid_norm", "aot", "sft", ["sigmoid", "sft"], "alphapo",
                             "rpo_bwd_kl", "rpo_sq"]),
       reduction=st.sampled_from(["mean", "none"]), seed=st.integers(0, 2**32 - 1))
def test_fuzz_special_values_every_position(n, pos, slot, dtype, which, check_finite, loss,
                                            reduction, seed):
    """NaN, +-inf, subnormals, +-0.0 and huge finites at any position of any array: NaN and
    inf give ValueError naming the argument and index (or, with check_finite=False, stay in
    their own row); finite values give a result without NaN that matches the reference
    where the reference is exact (moderate values)."""
    count("special_values")
    rng = np.random.default_rng(seed)
    specials = SPECIAL_64 if dtype is np.float64 else SPECIAL_32
    value = specials[which % len(specials)]
    pos %= n
    arrays = [a.astype(dtype) for a in logps_arrays(loss, n, rng)]
    kw = loss_kwargs(loss, n, rng, weights=slot == "weights")
    kw["reduction"] = reduction
    kw["compute_grad"] = True
    kw["check_finite"] = check_finite
    if slot in ("chosen_lengths", "rejected_lengths") and slot not in kw:
        return
    if slot in PREF_NAMES:
        index = PREF_NAMES.index(slot)
        target = arrays[index] if index < len(arrays) else None
        if target is None:
            return
    else:
        target = kw[slot]
    target[pos] = value
    stored = float(target[pos])
    original = kw.get(slot)
    result, error = call_checked(preference_loss, *arrays, **kw)
    if slot in ("weights", "chosen_lengths", "rejected_lengths"):
        # weights: finite and >= 0; lengths: finite and >= 1 (token counts)
        bad = not math.isfinite(stored) or stored < (0.0 if slot == "weights" else 1.0)
        if bad:
            assert isinstance(error, ValueError), repr(error)
            assert f"{slot}[{pos}]" in str(error)
            return
    elif not math.isfinite(stored):
        if check_finite:
            assert isinstance(error, ValueError), repr(error)
            names = PREF_NAMES
            assert f"{names[PREF_NAMES.index(slot)]}[{pos}]" in str(error), str(error)
            return
        assert error is None, repr(error)
        types = [loss] if isinstance(loss, str) else loss
        if not COUPLED.intersection(types) and reduction == "none":
            # The NaN / inf stays in its own row: every other row equals the clean call.
            clean = [a.copy() for a in arrays]
            clean[PREF_NAMES.index(slot)][pos] = -1.0
            base = preference_loss(*clean, **kw)
            others = np.arange(n) != pos
            for name in ("losses", "grad_chosen", "grad_rejected"):
                assert getattr(result, name)[others].tobytes() == \
                    getattr(base, name)[others].tobytes(), name
        return
    assert error is None, f"{slot}[{pos}] = {stored!r}: {error!r}"
    result_no_nan(result, f"{slot}[{pos}] = {stored!r}")
    if abs(stored) <= 1e3 and (original is None or np.all(np.abs(original) <= 1e3)):
        plain = [np.asarray(a, np.float64) for a in arrays]
        check_preference_result(result, plain, kw, reduction=reduction)


@fuzz(500)
@given(b=st.integers(1, 3), t=st.integers(1, 4), v=st.sampled_from([1, 2, 7, 8, 9, 16, 17, 33]),
       dtype=st.sampled_from([np.float32, np.float64]), which=st.integers(0, 16),
       pos=st.integers(0, 10**6), counted=st.booleans(), use_lse=st.booleans(),
       seed=st.integers(0, 999))
def test_fuzz_special_values_in_logits(b, t, v, dtype, which, pos, counted, use_lse, seed):
    """A special value at any logit: NaN/inf at a counted position is ValueError naming it;
    at a position that is not counted it is never read; finite ones give no NaN."""
    count("special_values_logits")
    rng = np.random.default_rng(seed)
    specials = SPECIAL_64 if dtype is np.float64 else SPECIAL_32
    value = specials[which % len(specials)]
    logits = rng.normal(size=(b, t, v)).astype(dtype)
    labels = rng.integers(0, v, (b, t))
    flat = pos % logits.size
    bi, ti, vi = np.unravel_index(flat, logits.shape)
    logits[bi, ti, vi] = value
    if not counted:
        labels[bi, ti] = -100
    result, error = call_checked(sequence_logps, logits, labels, return_entropy=True)
    stored = float(logits[bi, ti, vi])
    if counted and not math.isfinite(stored):
        assert isinstance(error, ValueError)
        assert f"[{bi}, {ti}" in str(error)
        return
    assert error is None, repr(error)
    assert_no_nan(result.logps, "logps")
    assert_no_nan(result.entropy, "entropy")
    grad, error = call_checked(sequence_logps_grad, logits, labels, 1.0,
                               logsumexp=result.logsumexp if use_lse else None)
    assert error is None, repr(error)
    assert_no_nan(grad, "grad")
    assert not grad[bi, ti].any() or counted
    if abs(stored) < 1e3:
        ref = logps_reference(logits.astype(np.float64), labels, grad_logps=1.0)
        tol = 1e-7 if dtype is np.float32 else 1e-9  # float32: the float exp
        np.testing.assert_allclose(result.logps, ref["logps"], rtol=tol, atol=10 * tol)
        np.testing.assert_allclose(grad, ref["grad"], rtol=1e-5 if dtype is np.float32
                                   else 1e-10, atol=1e-6 if dtype is np.float32 else 1e-12)


# ======================================================================= 6. scalar parameters

BOUNDARY = [0.0, -0.0, 5e-324, DBL_MIN, 1e-300, 1e-8, 0.05, 0.1, 0.4999999999999999, 0.5,
            0.5000000000000001, 0.9999999999999999, 1.0, 1.0000000000000002, 2.0, 1e8, 1e300,
            DBL_MAX / 4, DBL_MAX, math.inf, -math.inf, math.nan, -1.0, -5e-324, 10**400,
            -(10**400), 3, np.float32(0.25), np.int64(2), fractions.Fraction(1, 3), True,
            np.bool_(False), "0.1", None, 1j, decimal.Decimal("0.1")]
SCALAR_PARAMS = ("beta", "label_smoothing", "discopop_tau", "simpo_gamma",
                 "f_alpha_divergence_coef", "dpop_lambda", "bco_delta", "alphapo_alpha")


def _expected_param_error(name, value, types):
    """ValueError / TypeError / None that preference_loss should give for name=value."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        return TypeError
    try:
        x = float(value)
    except OverflowError:
        x = math.inf if value > 0 else -math.inf
    if name in ("beta", "discopop_tau"):
        return None if 1e-300 <= x <= 1e300 else ValueError
    if name in ("dpop_lambda", "bco_delta"):  # their type's parameter; the default elsewhere
        user, default = ("dpop", 50.0) if name == "dpop_lambda" else ("bco_pair", 0.0)
        if not math.isfinite(x) or (name == "dpop_lambda" and x < 0):
            return ValueError
        return None if user in types or x == default else ValueError
    if name == "alphapo_alpha":  # alphapo's: 0 or |alpha| in [1e-300, 1e300]; 0 elsewhere
        if x != 0.0 and not 1e-300 <= abs(x) <= 1e300:
            return ValueError
        return None if "alphapo" in types or x == 0.0 else ValueError
    if name == "f_alpha_divergence_coef":
        return None if abs(x) <= 1e300 else ValueError
    if name == "simpo_gamma":
        return None if math.isfinite(x) else ValueError
    users = [t for t in types if t in SMOOTHED or t == "exo_pair"]
    if not users:
        return None if x == 0.0 else ValueError
    for t in users:
        if t == "exo_pair" and not 0.0 < x < 1.0:
            return ValueError
        if t != "exo_pair" and not 0.0 <= x < 0.5:
            return ValueError
    return None


@fuzz(1200)
@given(name=st.sampled_from(SCALAR_PARAMS), value=st.sampled_from(BOUNDARY),
       loss=st.sampled_from(["sigmoid", "exo_pair", "robust", "discopop", "simpo", "aot",
                             "ipo", "hinge", ["sigmoid", "exo_pair"], "apo_zero", "dpop",
                             "bco_pair", ["dpop", "sigmoid"], "alphapo", "rpo_sq",
                             ["rpo_fwd_kl", "sigmoid"]]),
       fdiv=st.sampled_from(["reverse_kl", "alpha_divergence"]),
       dtype=st.sampled_from([np.float32, np.float64]), n=st.sampled_from([1, 5, 17]),
       seed=st.integers(0, 2**32 - 1))
def test_fuzz_scalar_parameters_at_and_beyond_bounds(name, value, loss, fdiv, dtype, n, seed):
    """beta, label_smoothing, discopop_tau, simpo_gamma and f_alpha_divergence_coef at and
    beyond their bounds: exactly the promised TypeError / ValueError, and otherwise a result
    without NaN (and equal to the reference for moderate values)."""
    count("scalar_parameters")
    types = [loss] if isinstance(loss, str) else loss
    rng = np.random.default_rng(seed)
    arrays = [a.astype(dtype) for a in logps_arrays(loss, n, rng, spread=3.0)]
    kw = loss_kwargs(loss, n, rng, fdiv=fdiv)
    kw[name] = value
    kw["compute_grad"] = True
    if name == "f_alpha_divergence_coef":
        kw["f_divergence_type"] = "alpha_divergence"
    expected = _expected_param_error(name, value, types)
    # (within 1e-6 of 1 the alpha-divergence is reverse KL, TRL's rule: every type takes it)
    if name == "f_alpha_divergence_coef" and expected is None and \
            abs(float(value) - 1.0) >= 1e-6 and \
            not all(t in F_DIV_TYPES or t == "sft" for t in types):
        expected = ValueError
    result, error = call_checked(preference_loss, *arrays, **kw)
    if expected is not None:
        assert isinstance(error, expected), f"{name}={value!r}: {error!r}"
        assert name in str(error) or "f_divergence_type" in str(error), str(error)
        return
    assert error is None, f"{name}={value!r}: {error!r}"
    result_no_nan(result, f"{name}={value!r}")
    x = float(value)
    moderate = abs(x) <= 1e3 and (name != "beta" or x >= 1e-3) and \
        (name != "discopop_tau" or x >= 1e-3) and \
        (name != "f_alpha_divergence_coef" or abs(x) <= 10)
    if moderate:
        kw[name] = x
        if name == "label_smoothing" and "robust" in types and x > 0.45:
            return  # 1 / (1 - 2 eps) amplifies rounding beyond the fuzz tolerance
        check_preference_result(result, [np.asarray(a, np.float64) for a in arrays], kw,
                                rtol=1e-8)


TEMPERATURES = [5e-324, DBL_MIN, 1e-300, 1e-8, 0.01, 1.0, 7.5, 1e300, DBL_MAX, 0.0, -0.0,
                -1.0, math.inf, math.nan, 10**400, np.float32(2.0), 3, True, "1", None, 1j]


@fuzz(400)
@given(temperature=st.sampled_from(TEMPERATURES), ignore=st.sampled_from(
    [-100, -1, 0, 2**63 - 1, -(2**63), 2**63, 2**64, np.int8(-1), np.uint64(5), 1.0, True,
     "x", None]), dtype=st.sampled_from([np.float32, np.float64]), grad=st.booleans(),
       scale=st.sampled_from([1.0, 1e3, 1e30]), seed=st.integers(0, 999))
def test_fuzz_temperature_and_ignore_index(temperature, ignore, dtype, grad, scale, seed):
    """temperature and ignore_index at and beyond their bounds."""
    count("temperature_ignore_index")
    rng = np.random.default_rng(seed)
    logits = (rng.normal(size=(2, 3, 9)) * scale).astype(dtype)
    labels = rng.integers(0, 9, (2, 3))
    fn = (lambda *a, **k: sequence_logps_grad(*a, 1.0, **k)) if grad else sequence_logps
    result, error = call_checked(fn, logits, labels, temperature=temperature,
                                 ignore_index=ignore)
    # The order of the checks: ignore_index (type, range), then temperature (type, value).
    if isinstance(ignore, (bool, np.bool_)) or not isinstance(ignore, numbers.Integral):
        assert isinstance(error, TypeError), repr(error)
        return
    if not -(2**63) <= int(ignore) < 2**63:
        assert isinstance(error, ValueError), repr(error)
        return
    if isinstance(temperature, (bool, np.bool_)) or not isinstance(temperature, numbers.Real):
        assert isinstance(error, TypeError), repr(error)
        return
    t = math.inf if isinstance(temperature, int) and temperature > 1e308 else float(temperature)
    if not (math.isfinite(t) and t > 0):
        assert isinstance(error, ValueError), repr(error)
        return
    if error is not None:  # 1 / temperature, or a logit / temperature, overflows
        assert isinstance(error, ValueError) and "overflow" in str(error), repr(error)
        return
    values = result if grad else result.logps
    assert_no_nan(values, "result")


# ======================================================================= 7. out=

OUT_KINDS = ["good", "guarded_unaligned", "wrong_dtype", "wrong_shape", "strided", "readonly",
             "fortran_2d", "alias_input", "alias_other_output", "list", "none_value",
             "byteswapped", "unknown_key", "grad_without_flag"]


def _bad_out(kind, n, dtype, an_input, so_far):
    """An out array of the given bad kind (n items of dtype are expected)."""
    other = np.float64 if dtype is np.float32 else np.float32
    if kind == "wrong_dtype":
        return np.empty(n, other)
    if kind == "wrong_shape":
        return np.empty(n + 1, dtype)
    if kind == "strided":
        return np.empty(2 * n, dtype)[::2]
    if kind == "readonly":
        return np.broadcast_to(np.empty(1, dtype), (n,))
    if kind == "fortran_2d":
        return np.empty((n, 2), dtype, order="F")
    if kind == "alias_input":
        return an_input
    if kind == "alias_other_output":
        return next(iter(so_far.values()), an_input)
    if kind == "list":
        return [0.0] * n
    if kind == "none_value":
        return None
    return np.empty(n, np.dtype(dtype).newbyteorder())  # byteswapped


@fuzz(600)
@given(kinds=st.dictionaries(st.sampled_from(OUTPUTS), st.sampled_from(OUT_KINDS),
                             min_size=1, max_size=5),
       dtype=st.sampled_from([np.float32, np.float64]), compute_grad=st.booleans(),
       n=st.sampled_from([1, 8, 17]), offset=st.integers(1, 7), seed=st.integers(0, 999))
def test_fuzz_out(kinds, dtype, compute_grad, n, offset, seed):
    """Preallocated outputs of every kind: good ones are filled with the same bits as a
    call without out=; bad ones give ValueError / TypeError; no byte around them is
    written."""
    count("out")
    rng = np.random.default_rng(seed)
    arrays = [a.astype(dtype) for a in logps_arrays("sigmoid", n, rng)]
    out, guards, valid = {}, [], True
    for position, (name, kind) in enumerate(kinds.items()):
        if kind in ("good", "guarded_unaligned", "grad_without_flag"):
            g = Guarded(np.full(n, 7.0), dtype, offset if kind == "guarded_unaligned" else 0)
            guards.append(g)
            out[name] = g.array
            if name.startswith("grad") and not compute_grad:
                valid = False
        elif kind == "unknown_key":
            out["loss"] = np.empty(n, dtype)
            valid = False
        else:
            # A 1-element array is C-contiguous whatever its stride (NumPy's rule).
            valid = valid and kind == "strided" and n == 1 and not (
                name.startswith("grad") and not compute_grad)
            out[name] = _bad_out(kind, n, dtype, arrays[position % 4], out)
    result, error = call_checked(preference_loss, *arrays, compute_grad=compute_grad, out=out)
    for g in guards:
        assert g.guards_intact(), "bytes around an out array were written"
    if not valid:
        assert isinstance(error, (ValueError, TypeError)), f"{kinds}: {error!r}"
        return
    assert error is None, f"{kinds}: {error!r}"
    plain = preference_loss(*arrays, compute_grad=compute_grad)
    for name, array in out.items():
        assert getattr(result, name) is array
    assert fingerprint(result) == fingerprint(plain)


# ======================================================================= 8. torch adapters

TORCH_DTYPES = ["float16", "bfloat16", "float32", "float64", "int64", "int32", "bool",
                "complex64", "uint8"]


@fuzz(120)
@given(dtype=st.sampled_from(TORCH_DTYPES), layout=st.sampled_from(
    ["contiguous", "strided", "flipped", "negated_view", "expanded", "2d", "0d", "empty",
     "list"]), requires_grad=st.booleans(), n=st.sampled_from([1, 7, 17]),
       seed=st.integers(0, 999), logps=st.booleans())
def test_fuzz_torch_adapters(dtype, layout, requires_grad, n, seed, logps):
    """dpo_fast.torch on tensors of every dtype and layout: the NumPy API's values (and the
    adapters never write an input), or ValueError / TypeError."""
    torch = pytest.importorskip("torch", reason=NEEDS_TORCH)
    import dpo_fast.torch as dtorch

    count("torch_adapters")
    rng = np.random.default_rng(seed)
    tdtype = getattr(torch, dtype)
    # logits (2, n, 6): 2-D logits are pinned by test_regression_torch_two_dim_logits.
    base = torch.from_numpy(rng.uniform(-30.0, -1.0, (2, n, 6) if logps else (4, n)))

    def shaped(x):
        if layout == "strided":
            return torch.repeat_interleave(x, 2, dim=-1)[..., ::2]
        if layout == "flipped":
            return torch.flip(x, dims=[-1]).flip(-1)  # torch has no negative strides
        if layout == "negated_view":  # a view with the negative bit set (private API)
            negated = torch.neg(x)
            return negated._neg_view() if x.is_floating_point() and hasattr(
                negated, "_neg_view") else x
        if layout == "expanded":
            return x[..., :1].expand(x.shape)
        if layout == "2d":
            return x[..., None]
        if layout == "0d":
            return x.reshape(-1)[0]
        if layout == "2d" and logps:
            return x[None]  # 4-D logits
        if layout == "empty":
            return x[..., :0]
        return x

    try:
        tensor = shaped(base.to(tdtype))
    except (RuntimeError, TypeError):
        return
    if requires_grad and tensor.is_floating_point() and layout not in ("negated_view",):
        tensor = tensor.detach().requires_grad_(True)
    before = tensor.detach().clone()
    if logps:
        labels = torch.from_numpy(np.asarray(rng.integers(0, 6, tensor.shape[:-1]
                                                        if tensor.ndim else ())))
        result, error = call_checked(dtorch.sequence_logps, tensor, labels)
        if error is None:
            want = sequence_logps(tensor.detach().resolve_neg().to(torch.float64).numpy(),
                                  labels.numpy())
            np.testing.assert_allclose(result.logps.detach().double().numpy(), want.logps,
                                       rtol=1e-6, atol=1e-5)
            if tensor.requires_grad:
                result.logps.sum().backward()
                assert tensor.grad is not None and not torch.isnan(tensor.grad).any()
    else:
        rows = [tensor[i] for i in range(tensor.shape[0])] if tensor.ndim >= 2 else \
            [tensor] * 4
        rows[2:] = [r.detach() for r in rows[2:]]  # the reference log-probs are constants
        result, error = call_checked(dtorch.preference_loss, *rows, beta=0.3)
        if error is None:
            want = preference_loss(*[r.detach().resolve_neg().to(torch.float64).numpy()
                                     for r in rows], beta=0.3)
            assert float(result.loss.detach()) == pytest.approx(want.loss, rel=1e-5)
            if rows[0].requires_grad:
                result.loss.backward()
    if error is not None:
        assert isinstance(error, (ValueError, TypeError)), repr(error)
    assert torch.equal(tensor.detach(), before), "the input tensor was changed"
