"""Comparison, data and process helpers shared by the tests; also the plain float64 references
of the loss modifiers (with their cases) and of sequence_logps, and the fuzzing's settings,
counting and invariants (tests/test_modifiers_*.py, test_logps_*.py, test_fuzz_*.py)."""

from __future__ import annotations

import ast
import collections
import importlib.util
import math
import numbers
import os
import pathlib
import struct
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from reference import log_sigmoid as logsig
from reference import sigmoid as sig
from test_loss_family import reference_pair

from dpo_fast import _registry, _threads, sequence_logps


def float_bits(x: float) -> int:
    """The IEEE-754 bit pattern of a double (tells -0.0 from 0.0, and every NaN apart)."""
    return struct.unpack("<Q", struct.pack("<d", x))[0]


def same_float(a: float, b: float) -> bool:
    """a and b are the same double bit for bit (any NaN equals any NaN)."""
    if math.isnan(a) and math.isnan(b):
        return True
    return float_bits(a) == float_bits(b)


def assert_same_float(actual: float, expected: float, what: str = "value") -> None:
    """Bitwise equality of two doubles with a readable message."""
    assert same_float(actual, expected), (
        f"{what}: {actual!r} ({float(actual).hex()}) != {expected!r} ({float(expected).hex()})")


def assert_same_float_list(actual: Sequence[float], expected: Sequence[float],
                           what: str = "list") -> None:
    """Two sequences of doubles are equal bit for bit, element by element."""
    assert len(actual) == len(expected), f"{what}: length {len(actual)} != {len(expected)}"
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert_same_float(a, e, f"{what}[{i}]")


def assert_plain_float_list(values: object, what: str = "list") -> None:
    """values is a plain list of plain Python floats (not numpy scalars)."""
    assert type(values) is list, f"{what} is a {type(values).__name__}, not a list"
    for i, v in enumerate(values):
        assert type(v) is float, f"{what}[{i}] is a {type(v).__name__}, not a float"


def assert_same_array(actual: np.ndarray, expected: np.ndarray, what: str = "array") -> None:
    """Same dtype, same shape and the same bytes."""
    assert isinstance(actual, np.ndarray), f"{what} is not an ndarray"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    if actual.tobytes() != expected.tobytes():
        differ = [i for i in range(actual.size)
                  if actual[i].tobytes() != expected[i].tobytes()]
        first = differ[:5]
        raise AssertionError(
            f"{what}: arrays differ bitwise at {len(differ)} indices, first {first}: "
            f"{actual[first].tolist()} vs {expected[first].tolist()}")


def _ordered(values: np.ndarray) -> list[int]:
    """Map floats to integers so that adjacent floats differ by 1 (-0.0 and 0.0 both 0)."""
    values = np.ascontiguousarray(values)
    if values.dtype == np.float64:
        ints = values.view(np.int64).tolist()
        top = 1 << 63
    elif values.dtype == np.float32:
        ints = values.view(np.int32).tolist()
        top = 1 << 31
    else:
        raise TypeError(f"unsupported dtype {values.dtype}")
    return [i if i >= 0 else -(i + top) for i in ints]


def ulp_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Number of representable floats between a and b, element-wise (same dtype)."""
    a = np.atleast_1d(np.asarray(a))
    b = np.atleast_1d(np.asarray(b, dtype=a.dtype))
    return np.array([abs(x - y) for x, y in zip(_ordered(a), _ordered(b))], dtype=object)


def max_ulp_distance(a: np.ndarray, b: np.ndarray) -> int:
    """The largest ulp distance between a and b (0 for empty input)."""
    distances = ulp_distance(a, b)
    return int(max(distances)) if len(distances) else 0


def as_lists(*arrays: Iterable[float]) -> list[list[float]]:
    """Each array as a plain list of Python floats."""
    return [[float(v) for v in a] for a in arrays]


def random_logps(rng: np.random.Generator, n: int, *, scale: float = 30.0,
                 extremes: bool = False) -> list[np.ndarray]:
    """Four float64 arrays of plausible log-probs (negative, spread out); with extremes=True
    some rows are replaced by huge, tiny, subnormal and zero values and large |z|."""
    arrays = [-np.abs(rng.normal(scale * 2, scale, n)) for _ in range(4)]
    if extremes and n:
        specials = np.array([0.0, -0.0, 5e-324, -1e-310, 1e-300, -7e2, 7e2, -7.5e2, 7.5e2,
                             -1e6, 1e6, -3.0e4, 2.5e-5, -1e30, 1e30])
        for a in arrays:
            idx = rng.integers(0, n, size=max(1, n // 10))
            a[idx] = rng.choice(specials, size=idx.size)
    return arrays


# ---- results without NaN (the fuzzing's invariant, and its regression tests') ----
_RESULT_ARRAYS = ("losses", "chosen_rewards", "rejected_rewards", "grad_chosen",
                  "grad_rejected")


def assert_no_nan(values, what):
    """No NaN in values (an array or a scalar), with the first positions in the message."""
    array = np.asarray(values, dtype=np.float64)
    bad = np.flatnonzero(np.isnan(array))
    assert bad.size == 0, f"{what}: NaN at {bad[:5].tolist()} (finite inputs)"


def _both_infinities(values) -> bool:
    values = np.asarray(values, dtype=np.float64)
    return bool(np.any(values == math.inf) and np.any(values == -math.inf))


def result_no_nan(result, what=""):
    """No NaN anywhere in a PreferenceLossResult. The one documented exception: a mean (or
    sum) over per-pair values holding both +inf and -inf (robust's loss can be -inf) has no
    value and is NaN."""
    for name in _RESULT_ARRAYS:
        value = getattr(result, name)
        if value is not None:
            assert_no_nan(value, f"{what} {name}")
    if not _both_infinities(result.losses):
        assert_no_nan(np.asarray(result.loss, dtype=np.float64), f"{what} loss")
    with np.errstate(invalid="ignore"):
        per_pair = {"rewards/chosen": result.chosen_rewards,
                    "rewards/rejected": result.rejected_rewards,
                    "rewards/margins": np.asarray(result.chosen_rewards, np.float64)
                    - np.asarray(result.rejected_rewards, np.float64)}
    for key, value in result.metrics.items():
        if key in per_pair and _both_infinities(per_pair[key]):
            continue
        assert not math.isnan(value), f"{what} metrics[{key}] is NaN"


def no_nan_or_value_error(loss_fn: Callable[..., Any], *args, **kwargs) -> None:
    """``loss_fn(*args, **kwargs)`` (preference_loss) raises ValueError or returns a result
    without NaN (warnings silenced)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = loss_fn(*args, **kwargs)
    except ValueError:
        return
    result_no_nan(result)


class Guarded:
    """A 1-D view of ``n`` items of ``dtype`` at byte ``offset`` inside a bytearray with
    guard bytes before and after: after a call, the guards must be intact (no write out of
    bounds) and, for an input, the whole buffer unchanged."""

    PATTERN = 0xA5

    def __init__(self, values, dtype, offset=0, guard=64):
        values = np.asarray(values, dtype=dtype)
        itemsize = np.dtype(dtype).itemsize
        self.start = guard + offset
        self.nbytes = values.size * itemsize
        self.raw = bytearray([self.PATTERN]) * (self.start + self.nbytes + guard)
        self.array = np.frombuffer(self.raw, dtype=dtype, count=values.size,
                                   offset=self.start).reshape(values.shape)
        self.array[...] = values

    def guards_intact(self) -> bool:
        head = self.raw[:self.start]
        tail = self.raw[self.start + self.nbytes:]
        return head.count(self.PATTERN) == len(head) and tail.count(self.PATTERN) == len(tail)


# ---- a fresh interpreter (for crashes, and for what happens at import) ----
def run_python(code: str, timeout: float = 300.0,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``code`` (dedented) in a new interpreter importing the dpo_fast the tests import.

    ``env`` (default: this process's environment) gets the package's parent directory put
    first on PYTHONPATH.
    """
    env = dict(os.environ if env is None else env)
    origin = importlib.util.find_spec("dpo_fast").origin
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(origin)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout, env=env, check=False)


# ---- the source tree (tests that read csrc/ or setup.py skip without it) ----
ROOT = pathlib.Path(__file__).resolve().parents[1]
CSRC = ROOT / "src" / "dpo_fast" / "_kernels" / "csrc"


def setup_constant(name: str):
    """A literal module-level constant of setup.py (e.g. GCC_FLAGS), read without running it."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
                getattr(target, "id", None) == name for target in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{name} not found in setup.py")


# Why a test that needs an optional package skips, and how to get it (one text per package).
NEEDS_TORCH = 'needs torch: pip install "dpo_fast[torch]" (or a CPU build of torch)'
NEEDS_MATPLOTLIB = 'needs matplotlib: pip install "dpo_fast[bench]"'


# ---- the loss modifiers' plain float64 reference and cases (tests/test_modifiers_*.py,
# tests/test_fuzz_*.py, tests/test_registry.py) ----
# Written with the math module and loops, straight from /work/shared/loss-family.md and the API
# notes; it shares nothing with csrc/ (the per-pair formulas of the older loss types come from
# test_loss_family.py).
LN2 = math.log(2.0)
# The loss types f_divergence_type applies to: each is a function of h = s(x_c) - s(x_r).
F_DIVERGENCE_TYPES = ("sigmoid", "hinge", "ipo", "exo_pair", "robust", "discopop",
                      "sigmoid_norm")
# The loss types label_smoothing applies to.
SMOOTHED = frozenset({"sigmoid", "robust", "exo_pair", "aot", "aot_unpaired", "simpo",
                      "alphapo"})
# (f_divergence_type, f_alpha_divergence_coef) pairs; alpha 1 is reverse_kl again.
DIVERGENCES = [("forward_kl", 1.0), ("js_divergence", 1.0), ("alpha_divergence", 0.5),
               ("alpha_divergence", 1.0), ("alpha_divergence", 2.0),
               ("alpha_divergence", -1.0)]
METRIC_KEYS = {"rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
               "logps/chosen", "logps/rejected"}


def _alpha_limit(alpha):
    """TRL 1.16 treats |alpha - 1| < 1e-6 as reverse KL."""
    return abs(alpha - 1.0) < 1e-6


def score(x, fdiv, alpha):
    """The f-divergence score s(x), with its constant (only differences s(c) - s(r) use it)."""
    if fdiv == "forward_kl":
        return -math.expm1(-x)  # 1 - exp(-x)
    if fdiv == "js_divergence":
        return LN2 + logsig(x)
    if fdiv == "alpha_divergence" and not _alpha_limit(alpha):
        return math.expm1((alpha - 1.0) * x) / (alpha - 1.0)  # (exp((a-1) x) - 1) / (a-1)
    return x


def trl_score(x, fdiv, alpha):
    """TRL 1.16's score, constants dropped: what the length-normalised types divide by n
    (TRL's `chosen_scores / chosen_mask.sum(1)`), so the constants do not cancel there."""
    if fdiv == "forward_kl":
        return -math.exp(-x)
    if fdiv == "js_divergence":
        return logsig(x)
    if fdiv == "alpha_divergence" and not _alpha_limit(alpha):
        return math.exp((alpha - 1.0) * x) / (alpha - 1.0)
    return x


def score_difference(c, r, nc, nr, fdiv, alpha):
    """h of the f-divergence types: s(c) - s(r), or TRL's s(c)/nc - s(r)/nr when normalised
    (nc, nr not None)."""
    if nc is None:
        return score(c, fdiv, alpha) - score(r, fdiv, alpha)
    return trl_score(c, fdiv, alpha) / nc - trl_score(r, fdiv, alpha) / nr


def score_slope(x, fdiv, alpha):
    """s'(x) (only used to size tolerances)."""
    if fdiv == "forward_kl":
        return math.exp(-x)
    if fdiv == "js_divergence":
        return sig(-x)
    if fdiv == "alpha_divergence" and not _alpha_limit(alpha):
        return math.exp((alpha - 1.0) * x)
    return 1.0


def log1mexp(a):
    """log(1 - exp(a)) for a < 0, without cancellation (Maechler 2012)."""
    return math.log(-math.expm1(a)) if a > -LN2 else math.log1p(-math.exp(a))


def smoothed_sigmoid(u, eps):
    """-(1-eps) logsig(u) - eps logsig(-u): sigmoid, simpo, aot."""
    return -(1.0 - eps) * logsig(u) - eps * logsig(-u)


def smoothed_sigmoid_slope(u, beta, eps):
    """d/dD of smoothed_sigmoid(beta * D, eps)."""
    return beta * (-(1.0 - eps) * sig(-u) + eps * sig(u))


def stable_argsort(values):
    return sorted(range(len(values)), key=values.__getitem__)  # Python's sort is stable


def aot_positions(t, pc, pr, rc, rr):
    """(D, order_chosen, order_rejected) of aot / aot_unpaired: D[i] is the difference at
    sorted position i, whose loss belongs to pair order_chosen[i]; the rejected side of its
    gradient goes to pair order_rejected[i]."""
    if t == "aot":
        key = [a - b for a, b in zip(pc, pr)]
        ref = [a - b for a, b in zip(rc, rr)]
        order = stable_argsort(key)
        return [a - b for a, b in zip(sorted(key), sorted(ref))], order, order
    c = [a - b for a, b in zip(pc, rc)]
    r = [a - b for a, b in zip(pr, rr)]
    order_c, order_r = stable_argsort(c), stable_argsort(r)
    return [a - b for a, b in zip(sorted(c), sorted(r))], order_c, order_r


def alphapo_reward(a, shape):
    """AlphaPO's reward of an average log-prob a (TRL's (1 - exp(a)^(-alpha)) / alpha, here
    as -expm1(-alpha a) / alpha); a itself at alpha = 0 (SimPO)."""
    return a if shape == 0.0 else -math.expm1(-shape * a) / shape


def rpo_reference(t, z, g):
    """NeMo-Aligner's reward-aware losses of z = beta (c - r) and g = scale * gt margin, as
    its loss_func writes them (logsigmoid, exp)."""
    if t == "rpo_sq":
        return (z - g) ** 2
    lb_c, lb_r, la_c, la_r = logsig(z), logsig(-z), logsig(g), logsig(-g)
    if t == "rpo_bwd_kl":
        return math.exp(la_c) * (la_c - lb_c) + math.exp(la_r) * (la_r - lb_r)
    return math.exp(lb_c) * (lb_c - la_c) + math.exp(lb_r) * (lb_r - la_r)  # rpo_fwd_kl


def ref_one_type(t, pc, pr, rc, rr, nc, nr, *, beta, eps, tau, gamma, fdiv, alpha,
                 lam=50.0, delta=0.0, shape=0.0, gt=None):
    """Per-pair losses of one loss type, unweighted."""
    n = len(pc)
    c = [a - b for a, b in zip(pc, rc)]
    r = [a - b for a, b in zip(pr, rr)]
    eps = eps if t in SMOOTHED else 0.0
    if t in F_DIVERGENCE_TYPES:
        normalise = t == "sigmoid_norm" or (t == "ipo" and nc is not None and nr is not None)
        out = []
        for i in range(n):
            h = score_difference(c[i], r[i], nc[i] if normalise else None,
                                 nr[i] if normalise else None, fdiv, alpha)
            # reference_pair(t, h, 0, ...) is the loss of t at log-ratio difference h
            out.append(reference_pair("sigmoid" if t == "sigmoid_norm" else t, h, 0.0, beta,
                                      eps, tau))
        return out
    if t == "sft":
        return [-math.fsum(pc) / math.fsum(nc)] * n
    if t == "simpo":
        return [smoothed_sigmoid(beta * (pc[i] / nc[i] - pr[i] / nr[i]) - gamma, eps)
                for i in range(n)]
    if t.startswith("rpo_"):
        return [rpo_reference(t, beta * (c[i] - r[i]), gt[i]) for i in range(n)]
    if t == "alphapo":  # TRL's cpo_loss with alpha: simpo of the shaped rewards
        return [smoothed_sigmoid(beta * (alphapo_reward(pc[i] / nc[i], shape)
                                         - alphapo_reward(pr[i] / nr[i], shape)) - gamma, eps)
                for i in range(n)]
    if t == "orpo":  # TRL's odds_ratio_loss term, of the average log-probs
        out = []
        for i in range(n):
            a_c, a_r = pc[i] / nc[i], pr[i] / nr[i]
            log_odds = (a_c - a_r) - (log1mexp(a_c) - log1mexp(a_r))
            out.append(-beta * logsig(log_odds))
        return out
    if t in ("aot", "aot_unpaired"):
        diffs, order, _ = aot_positions(t, pc, pr, rc, rr)
        out = [0.0] * n
        for i, pair in enumerate(order):
            out[pair] = smoothed_sigmoid(beta * diffs[i], eps)
        return out
    return [reference_pair(t, c[i], r[i], beta, eps, tau, lam=lam, delta=delta)
            for i in range(n)]


def ref_losses(pc, pr, rc=None, rr=None, *, beta=0.1, loss_type="sigmoid", loss_weights=None,
               label_smoothing=0.0, discopop_tau=0.05, simpo_gamma=0.5,
               f_divergence_type="reverse_kl", f_alpha_divergence_coef=1.0,
               chosen_lengths=None, rejected_lengths=None, weights=None, dpop_lambda=50.0,
               bco_delta=0.0, alphapo_alpha=0.0, gt_reward_margins=None, gt_reward_scale=1.0):
    """Per-pair losses w_i * sum_k lw_k * loss_k[i], plain float64 (same keywords as
    preference_loss)."""
    def floats(a):
        return None if a is None else [float(v) for v in a]

    pc, pr, nc, nr = floats(pc), floats(pr), floats(chosen_lengths), floats(rejected_lengths)
    n = len(pc)
    rc = floats(rc) if rc is not None else [0.0] * n
    rr = floats(rr) if rr is not None else [0.0] * n
    types = [loss_type] if isinstance(loss_type, str) else list(loss_type)
    lws = [1.0] * len(types) if loss_weights is None else [float(v) for v in loss_weights]
    gt = None if gt_reward_margins is None else [gt_reward_scale * float(v)
                                                   for v in gt_reward_margins]
    total = [0.0] * n
    for t, lw in zip(types, lws):
        per_pair = ref_one_type(t, pc, pr, rc, rr, nc, nr, beta=beta, eps=label_smoothing,
                                tau=discopop_tau, gamma=simpo_gamma, fdiv=f_divergence_type,
                                alpha=f_alpha_divergence_coef, lam=dpop_lambda,
                                delta=bco_delta, shape=alphapo_alpha, gt=gt)
        total = [acc + lw * v for acc, v in zip(total, per_pair)]
    ws = [1.0] * n if weights is None else floats(weights)
    return [w * v for w, v in zip(ws, total)]


def ref_reduced(reduction, *arrays, **kw):
    losses = ref_losses(*arrays, **kw)
    total = math.fsum(losses)
    return total / len(losses) if reduction == "mean" else total


def ref_rewards(pc, pr, rc=None, rr=None, *, beta, simpo=False, nc=None, nr=None, shape=0.0):
    pc, pr = pc.tolist(), pr.tolist()
    if simpo:  # (alphapo: TRL's beta * r(a), r(a) = a at alpha = 0)
        return ([beta * alphapo_reward(a / b, shape) for a, b in zip(pc, nc)],
                [beta * alphapo_reward(a / b, shape) for a, b in zip(pr, nr)])
    rc = [0.0] * len(pc) if rc is None else rc.tolist()
    rr = [0.0] * len(pc) if rr is None else rr.tolist()
    return ([beta * (a - b) for a, b in zip(pc, rc)], [beta * (a - b) for a, b in zip(pr, rr)])


def ref_aot_grads(t, pc, pr, rc, rr, *, beta, eps, weights):
    """d(sum of losses)/d(pc), d/d(pr) of aot / aot_unpaired: each sorted position's
    derivative scattered to its pairs."""
    pc, pr, rc, rr, weights = (list(map(float, a)) for a in (pc, pr, rc, rr, weights))
    diffs, order_c, order_r = aot_positions(t, pc, pr, rc, rr)
    grad_c, grad_r = [0.0] * len(pc), [0.0] * len(pc)
    for i, diff in enumerate(diffs):
        g = weights[order_c[i]] * smoothed_sigmoid_slope(beta * diff, beta, eps)
        grad_c[order_c[i]] += g
        grad_r[order_r[i]] -= g
    return grad_c, grad_r


def slope_near(f, x, scale):
    """max |f'| around x by one-sided differences (only used to size tolerances)."""
    step = max(1e-7 * scale, 1e-9 * abs(x))
    y = f(x)
    try:
        return max(abs(f(x + step) - y), abs(f(x - step) - y)) / step
    except OverflowError:
        return math.inf


def assert_close_scaled(got, expected, slope, magnitude, what=""):
    """|got - expected| within 1e-12 relative plus the rounding of the argument: the loss
    is f(arg), arg a sum of terms of total size `magnitude`, so a few ulps of `magnitude` in
    arg move the loss by slope * that."""
    tol = 1e-12 * abs(expected) + 1e-14 * slope * magnitude + 1e-300
    assert abs(got - expected) <= tol, f"{what}: got {got!r}, expected {expected!r}"


# ------------------------------------------------------------------- cases and inputs


class Case(NamedTuple):
    name: str
    kw: dict
    refs: bool = True  # pass reference log-probs
    lengths: str = "both"  # "both", "chosen" (sft) or "" (none)
    weights: bool = False  # pass per-pair weights (one of them 0)


def fdiv(fdiv_type, alpha=1.0):
    return {"f_divergence_type": fdiv_type, "f_alpha_divergence_coef": alpha}


CASES = [
    Case("sigmoid_norm", dict(loss_type="sigmoid_norm", beta=0.7)),
    Case("simpo", dict(loss_type="simpo", beta=2.0, simpo_gamma=0.3, label_smoothing=0.1),
         refs=False),
    Case("ipo_lengths", dict(loss_type="ipo", beta=0.3)),
    Case("ipo_lengths_weights", dict(loss_type="ipo", beta=0.3), weights=True),
    Case("sft", dict(loss_type="sft"), lengths="chosen"),
    Case("sft_weights", dict(loss_type="sft"), lengths="chosen", weights=True),
    Case("aot", dict(loss_type="aot", beta=0.5, label_smoothing=0.1), lengths=""),
    Case("aot_unpaired", dict(loss_type="aot_unpaired", beta=0.5, label_smoothing=0.2),
         lengths=""),
    Case("aot_weights", dict(loss_type="aot", beta=0.5), lengths="", weights=True),
    Case("aot_unpaired_weights", dict(loss_type="aot_unpaired", beta=0.5), lengths="",
         weights=True),
    Case("sigmoid_weights", dict(loss_type="sigmoid", beta=0.5, label_smoothing=0.1),
         lengths="", weights=True),
    Case("sigmoid_forward_kl", dict(loss_type="sigmoid", beta=0.5, **fdiv("forward_kl")),
         lengths=""),
    Case("sigmoid_js", dict(loss_type="sigmoid", beta=0.5, **fdiv("js_divergence")),
         lengths=""),
    Case("sigmoid_alpha0.5", dict(loss_type="sigmoid", beta=0.5,
                                  **fdiv("alpha_divergence", 0.5)), lengths=""),
    Case("sigmoid_alpha1", dict(loss_type="sigmoid", beta=0.5, **fdiv("alpha_divergence")),
         lengths=""),
    Case("sigmoid_alpha2", dict(loss_type="sigmoid", beta=0.5,
                                **fdiv("alpha_divergence", 2.0)), lengths=""),
    Case("sigmoid_alpha-1", dict(loss_type="sigmoid", beta=0.5,
                                 **fdiv("alpha_divergence", -1.0)), lengths=""),
    Case("hinge_alpha2", dict(loss_type="hinge", beta=0.2, **fdiv("alpha_divergence", 2.0)),
         lengths=""),
    Case("ipo_lengths_forward_kl", dict(loss_type="ipo", beta=0.3, **fdiv("forward_kl"))),
    Case("ipo_js", dict(loss_type="ipo", beta=0.3, **fdiv("js_divergence")), lengths=""),
    Case("exo_pair_forward_kl", dict(loss_type="exo_pair", beta=0.5, label_smoothing=0.1,
                                     **fdiv("forward_kl")), lengths=""),
    Case("robust_alpha0.5", dict(loss_type="robust", beta=0.5, label_smoothing=0.1,
                                 **fdiv("alpha_divergence", 0.5)), lengths=""),
    Case("discopop_js", dict(loss_type="discopop", beta=0.5, **fdiv("js_divergence")),
         lengths=""),
    Case("sigmoid_norm_alpha2", dict(loss_type="sigmoid_norm", beta=0.7,
                                     **fdiv("alpha_divergence", 2.0))),
    Case("sigmoid_norm_js", dict(loss_type="sigmoid_norm", beta=0.7, **fdiv("js_divergence"))),
    Case("ipo_lengths_alpha0.5", dict(loss_type="ipo", beta=0.3,
                                      **fdiv("alpha_divergence", 0.5))),
    Case("rpo", dict(loss_type=["sigmoid", "sft"], loss_weights=[1.0, 0.5], beta=0.5,
                     label_smoothing=0.1), lengths="chosen"),
    Case("rpo_forward_kl_weights", dict(loss_type=["sigmoid", "sft"], beta=0.5,
                                        **fdiv("forward_kl")), lengths="chosen",
         weights=True),
    Case("ipo+sigmoid_norm", dict(loss_type=["ipo", "sigmoid_norm"], loss_weights=[0.2, 1.5],
                                  beta=0.4)),
    Case("aot+sigmoid+sft", dict(loss_type=["aot", "sigmoid", "sft"],
                                 loss_weights=[0.5, 1.0, 2.0], beta=0.5, label_smoothing=0.1),
         lengths="chosen", weights=True),
    Case("aot_unpaired+ipo", dict(loss_type=("aot_unpaired", "ipo"), loss_weights=[1.0, 0.05],
                                  beta=0.5), lengths=""),
    Case("simpo+sft", dict(loss_type=["simpo", "sft"], loss_weights=[1.0, 0.1], beta=2.0),
         refs=False),
    Case("dpop", dict(loss_type="dpop", beta=0.2), lengths=""),
    Case("orpo", dict(loss_type="orpo", beta=0.1), refs=False),
    Case("orpo+sft", dict(loss_type=["orpo", "sft"], beta=0.25), refs=False),
    Case("dpop_lambda5_weights", dict(loss_type="dpop", beta=0.3, dpop_lambda=5.0),
         lengths="", weights=True),
    Case("bco_delta", dict(loss_type="bco_pair", beta=0.5, bco_delta=0.37), lengths=""),
    Case("dpop+bco+sft", dict(loss_type=["dpop", "bco_pair", "sft"], beta=0.5, bco_delta=-0.2,
                              dpop_lambda=2.0, loss_weights=[1.0, 0.5, 0.25]),
         lengths="chosen"),
    Case("alphapo", dict(loss_type="alphapo", beta=2.0, alphapo_alpha=0.25), refs=False),
    Case("alphapo_negative_eps_weights", dict(loss_type="alphapo", beta=2.5, simpo_gamma=1.0,
                                              alphapo_alpha=-0.5, label_smoothing=0.1),
         refs=False, weights=True),
    Case("alphapo_alpha0", dict(loss_type="alphapo", beta=2.0), refs=False),
    Case("alphapo+sft", dict(loss_type=["alphapo", "sft"], beta=1.5, alphapo_alpha=0.1,
                             loss_weights=[1.0, 0.25]), refs=False),
    Case("rpo_sq", dict(loss_type="rpo_sq", beta=0.1), lengths=""),
    Case("rpo_fwd_kl", dict(loss_type="rpo_fwd_kl", beta=0.2, gt_reward_scale=0.5),
         lengths=""),
    Case("rpo_bwd_kl_weights", dict(loss_type="rpo_bwd_kl", beta=0.3, gt_reward_scale=2.0),
         lengths="", weights=True),
    Case("rpo_bwd_kl+sigmoid+sft", dict(loss_type=["rpo_bwd_kl", "sigmoid", "sft"], beta=0.2,
                                        loss_weights=[1.0, 0.5, 0.1]), lengths="chosen"),
]
CASE_IDS = [case.name for case in CASES]


def loss_types(case):
    t = case.kw["loss_type"]
    return [t] if isinstance(t, str) else list(t)


def build(case, n, seed, *, mean=-40.0, spread=3.0):
    """(arrays, kwargs) for one case: arrays the 2 or 4 log-prob arrays, kwargs the case's
    keywords plus lengths and weights as the case asks."""
    rng = np.random.default_rng(seed)
    arrays = [rng.normal(mean, spread, n) for _ in range(4 if case.refs else 2)]
    kw = dict(case.kw)
    if "exo_pair" in loss_types(case) if "loss_type" in case.kw else False:
        kw.setdefault("label_smoothing", 1e-3)  # it must be set for exo_pair
    if case.lengths:
        kw["chosen_lengths"] = rng.integers(1, 60, n).astype(np.float64)
    if case.lengths == "both":
        kw["rejected_lengths"] = rng.integers(1, 60, n).astype(np.float64)
    if case.weights:
        kw["weights"] = rng.uniform(0.0, 2.0, n)
        kw["weights"][0] = 0.0
    if "loss_type" in case.kw and any(_registry.LOSS_REGISTRY[t].gt_rewards
                                      for t in loss_types(case)):
        kw["gt_reward_margins"] = rng.normal(0.0, 2.0, n)
    return arrays, kw


def assert_metrics_consistent(result, arrays):
    """The metrics keys are unchanged and follow from the rewards and policy log-probs."""
    assert set(result.metrics) == METRIC_KEYS
    cr, rr = result.chosen_rewards.astype(np.float64), result.rejected_rewards.astype(np.float64)
    m = result.metrics

    def assert_mean(key, values):
        values = np.asarray(values, np.float64)
        scale = float(np.mean(np.abs(values))) + 1e-300
        assert abs(m[key] - math.fsum(values) / values.size) <= 1e-13 * scale, key

    assert_mean("rewards/chosen", cr)
    assert_mean("rewards/rejected", rr)
    assert_mean("rewards/margins", np.concatenate([cr, -rr]) * 2)  # mean(cr - rr), unrounded
    assert m["rewards/accuracies"] == np.count_nonzero(cr > rr) / cr.size
    assert_mean("logps/chosen", arrays[0])
    assert_mean("logps/rejected", arrays[1])


# ---- sequence_logps' plain float64 reference (tests/test_logps_*.py, tests/test_fuzz_*.py) ----
def reference(logits, labels, *, ignore_index=-100, mask=None, average=False, temperature=1.0,
              grad_logps=None, grad_token_logps=None):
    """Everything sequence_logps returns (and the gradient), computed the textbook way."""
    x = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels)
    if x.ndim == 2:
        out = reference(x[None], labels[None], ignore_index=ignore_index,
                        mask=None if mask is None else np.asarray(mask)[None], average=average,
                        temperature=temperature, grad_logps=grad_logps,
                        grad_token_logps=(None if grad_token_logps is None
                                          else np.asarray(grad_token_logps)[None]))
        return {k: (v[0] if isinstance(v, np.ndarray) and v.ndim else v) for k, v in out.items()}
    z = x / temperature
    top = z.max(axis=-1, keepdims=True)
    lse = top + np.log(np.exp(z - top).sum(axis=-1, keepdims=True))
    log_softmax = z - lse
    counted = labels != ignore_index
    if mask is not None:
        counted &= np.asarray(mask) != 0
    safe = np.where(counted, labels, 0)
    token = np.take_along_axis(log_softmax, safe[..., None], axis=-1)[..., 0]
    token = np.where(counted, token, 0.0)
    counts = counted.sum(axis=-1)
    sums = token.sum(axis=-1)
    if average:
        sums = np.where(counts > 0, sums / np.maximum(counts, 1), 0.0)
    probs = np.exp(log_softmax)
    entropy = np.where(counted, -(probs * log_softmax).sum(axis=-1), 0.0)
    hits = (np.argmax(x, axis=-1) == labels) & counted
    n = counted.sum()
    # WPO (TRL's use_weighting): logsumexp(2 * log_softmax) per position, the adjusted token
    # log-probs averaged over counted positions (a count of 0 taken as 1), exponentiated.
    top2 = (2 * log_softmax).max(axis=-1, keepdims=True)
    log_sum_p2 = (top2 + np.log(np.exp(2 * log_softmax - top2).sum(axis=-1, keepdims=True)))
    adjusted = np.where(counted, token - log_sum_p2[..., 0], 0.0).sum(axis=-1)
    logit_sums = np.where(counted[..., None], x, 0.0).sum(axis=(-1, -2))
    result = {
        "logps": sums, "counts": counts, "token_logps": token, "entropy": entropy,
        "logsumexp": np.where(counted, lse[..., 0], 0.0),
        "token_accuracy": hits.sum() / n if n else 0.0,
        "mean_entropy": entropy[counted].mean() if n else 0.0,
        "wpo_weights": np.exp(adjusted / np.maximum(counts, 1)),
        "logit_sums": logit_sums,
        "mean_logit": x[counted].mean() if n else 0.0,
    }
    if grad_logps is not None:
        weight = np.broadcast_to(np.asarray(grad_logps, np.float64), sums.shape)[..., None]
        weight = np.broadcast_to(weight, labels.shape)
        if average:
            weight = weight / np.maximum(counts, 1)[..., None]
        if grad_token_logps is not None:
            weight = weight + np.broadcast_to(grad_token_logps, labels.shape)
        onehot = np.zeros_like(z)
        np.put_along_axis(onehot, safe[..., None], 1.0, axis=-1)
        result["grad"] = np.where(counted[..., None],
                                  weight[..., None] * (onehot - probs) / temperature, 0.0)
    return result


def make_batch(rng, b=3, t=7, v=11, dtype=np.float64, scale=3.0, p_masked=0.3,
               ignore_index=-100):
    logits = (rng.standard_normal((b, t, v)) * scale).astype(dtype)
    labels = rng.integers(0, v, size=(b, t))
    mask = rng.random((b, t)) >= p_masked
    labels[rng.random((b, t)) < 0.15] = ignore_index
    return logits, labels, mask


# float32 logits: the row loops use a float exp at temperature 1 (dpo_logps_expf, 1.05 float
# ulps) and a shorter double one otherwise (2.2e-10 relative; csrc/logps_math.h); the
# documented contract is 1e-6 absolute on token log-probs, what they reach is ~4e-8 per token
# (entropies alike). float64 logits keep the full-precision exp.
FLOAT32_TOL = 1e-7


def assert_matches(result, ref, rtol=1e-12, atol=1e-12, dtype=np.float64):
    if dtype == np.float32:
        rtol, atol = max(rtol, FLOAT32_TOL), max(atol, FLOAT32_TOL)
    np.testing.assert_allclose(result.logps, ref["logps"], rtol=rtol, atol=atol)
    np.testing.assert_array_equal(result.counts, ref["counts"])
    np.testing.assert_allclose(result.logsumexp, ref["logsumexp"], rtol=rtol, atol=atol)
    assert result.token_accuracy == pytest.approx(ref["token_accuracy"], abs=1e-15)
    if result.token_logps is not None:
        np.testing.assert_allclose(result.token_logps, ref["token_logps"], rtol=rtol, atol=atol)
    if result.entropy is not None:
        np.testing.assert_allclose(result.entropy, ref["entropy"], rtol=rtol, atol=atol)
        assert result.mean_entropy == pytest.approx(ref["mean_entropy"], rel=rtol, abs=atol)
    if result.wpo_weights is not None:
        np.testing.assert_allclose(result.wpo_weights, ref["wpo_weights"], rtol=rtol, atol=0)
    if result.logit_sums is not None:
        scale = np.abs(ref["logit_sums"]).max(initial=1.0)
        np.testing.assert_allclose(result.logit_sums, ref["logit_sums"], rtol=rtol,
                                   atol=atol * scale)
        assert result.mean_logit == pytest.approx(ref["mean_logit"], rel=rtol,
                                                  abs=atol * scale)


def full(logits, labels, **kwargs):
    return sequence_logps(logits, labels, return_token_logps=True, return_entropy=True,
                          return_wpo_weights=True, return_logit_sums=True, **kwargs)


def assert_same_result(a, b):
    """Two SequenceLogpsResults are equal bit for bit."""
    for name in ("logps", "counts", "logsumexp", "token_logps", "entropy", "wpo_weights",
                 "logit_sums"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            assert x.dtype == y.dtype and x.shape == y.shape, name
            assert x.tobytes() == y.tobytes(), name
    assert a.token_accuracy == b.token_accuracy
    assert a.mean_entropy == b.mean_entropy
    assert a.mean_logit == b.mean_logit


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
