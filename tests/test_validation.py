"""Bad input gets a clear ValueError/TypeError that names the argument."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from helpers import no_nan_or_value_error

from dpo_fast import dpo_loss, preference_loss

SEED_NAMES = ["log_probs_chosen_policy", "log_probs_rejected_policy", "log_probs_chosen_ref",
              "log_probs_rejected_ref"]
PREF_NAMES = ["chosen_logps", "rejected_logps", "ref_chosen_logps", "ref_rejected_logps"]
DBL_MAX = float(np.finfo(np.float64).max)
DBL_MIN = float(np.finfo(np.float64).tiny)
LONG = 8193  # past dpo_loss's list fast path


def short_id(value: object) -> str:
    """A readable test id (10**400 would otherwise be 401 characters)."""
    if isinstance(value, type):
        return value.__name__
    text = repr(value)
    return text if len(text) <= 12 else text[:6] + "..." + text[-3:]


def good_columns(n=5):
    return [[-1.0 - i - k for i in range(n)] for k in range(4)]


def seed_args(kind, n=5):
    """Four valid columns for dpo_loss as lists ('list'), long lists ('long') or arrays."""
    if kind == "long":
        n = LONG
    columns = good_columns(n)
    if kind == "array":
        return [np.array(c) for c in columns]
    return columns


def with_bad(kind, position, bad_value, index=3):
    """Valid dpo_loss columns with element `index` of column `position` replaced."""
    columns = seed_args("long" if kind == "long" else "list")
    columns[position] = list(columns[position])
    columns[position][index] = bad_value
    if kind == "array":
        columns = [np.array(c) for c in columns]
    return columns


# --------------------------------------------------------------------- dpo_loss


@pytest.mark.parametrize("kind", ["list", "array", "long"])
@pytest.mark.parametrize("position", range(4))
def test_dpo_loss_length_mismatch(kind, position):
    """Columns of different lengths: ValueError naming the odd argument."""
    columns = seed_args(kind)
    columns[position] = columns[position][:-1]
    with pytest.raises(ValueError, match=f"length mismatch.*{SEED_NAMES[position]}"
                       if position else "length mismatch"):
        dpo_loss(*columns, 0.5)


@pytest.mark.parametrize("kind", ["list", "tuple", "array"])
def test_dpo_loss_empty(kind):
    """Empty inputs: ValueError saying at least one pair is needed."""
    empty = {"list": [], "tuple": (), "array": np.array([])}[kind]
    with pytest.raises(ValueError, match="log_probs_chosen_policy is empty"):
        dpo_loss(empty, empty, empty, empty, 0.5)


@pytest.mark.parametrize("position", range(4))
def test_dpo_loss_none_argument(position):
    """None where a sequence is required: TypeError naming the argument."""
    columns = seed_args("list")
    columns[position] = None
    with pytest.raises(TypeError, match=f"{SEED_NAMES[position]} is required"):
        dpo_loss(*columns, 0.5)


@pytest.mark.parametrize("position", range(4))
def test_dpo_loss_not_one_dimensional(position):
    """2-D arrays and nested lists: ValueError naming the argument."""
    columns = seed_args("array")
    columns[position] = np.ones((5, 2))
    with pytest.raises(ValueError, match=f"{SEED_NAMES[position]} must be 1-D"):
        dpo_loss(*columns, 0.5)
    nested = seed_args("list")
    nested[position] = [[v] for v in nested[position]]
    with pytest.raises(ValueError, match=f"{SEED_NAMES[position]} must be 1-D"):
        dpo_loss(*nested, 0.5)


@pytest.mark.parametrize("kind", ["list", "long"])
@pytest.mark.parametrize("bad", ["x", None, object(), 1j, b"1"], ids=repr)
@pytest.mark.parametrize("position", [0, 3])
def test_dpo_loss_non_numeric_elements(kind, bad, position):
    """Strings, None, objects, complex numbers: TypeError naming the argument."""
    with pytest.raises(TypeError, match=SEED_NAMES[position]):
        dpo_loss(*with_bad(kind, position, bad), 0.5)


@pytest.mark.parametrize("kind", ["list", "long"])
@pytest.mark.parametrize("position", [0, 2])
def test_dpo_loss_bool_elements_rejected(kind, position):
    """bool is not a log-probability: TypeError naming the argument, on every path."""
    with pytest.raises(TypeError, match=SEED_NAMES[position]):
        dpo_loss(*with_bad(kind, position, True), 0.5)


def test_dpo_loss_bool_array_rejected():
    """A NumPy bool array: TypeError naming the argument."""
    columns = seed_args("array")
    columns[1] = columns[1] > -3
    with pytest.raises(TypeError, match="log_probs_rejected_policy"):
        dpo_loss(*columns, 0.5)


@pytest.mark.parametrize("kind", ["list", "long"])
@pytest.mark.parametrize("position", [0, 3])
def test_dpo_loss_huge_int_element(kind, position):
    """An int too large for a float (10**400): ValueError naming the argument, not a crash."""
    with pytest.raises(ValueError, match=SEED_NAMES[position]):
        dpo_loss(*with_bad(kind, position, 10**400), 0.5)


@pytest.mark.parametrize("kind", ["list", "array", "long"])
@pytest.mark.parametrize("position", range(4))
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_dpo_loss_non_finite(kind, position, bad):
    """NaN/inf anywhere: ValueError giving the argument and the first bad index."""
    columns = with_bad(kind, position, bad, index=3)
    columns[position][4] = math.nan  # a later bad value is not the one reported
    with pytest.raises(ValueError, match=re.escape(f"{SEED_NAMES[position]}[3]")):
        dpo_loss(*columns, 0.5)


@pytest.mark.parametrize("kind", ["list", "array"])
@pytest.mark.parametrize(
    ("beta", "error"),
    [(0.0, ValueError), (-0.5, ValueError), (math.nan, ValueError), (math.inf, ValueError),
     (-math.inf, ValueError), (True, TypeError), (False, TypeError), ("0.5", TypeError),
     (None, TypeError), ([0.5], TypeError), (1j, TypeError), (10**400, ValueError)],
    ids=short_id,
)
def test_dpo_loss_bad_beta(kind, beta, error):
    """beta must be a finite real number > 0 (bool is not accepted)."""
    with pytest.raises(error, match="beta"):
        dpo_loss(*seed_args(kind), beta)


@pytest.mark.parametrize("beta", [1, 0.5, np.float32(0.5), np.float64(2.0), np.int64(3), 1e-300,
                                  1e300])
def test_dpo_loss_good_beta_types(beta):
    """Python and NumPy ints and floats are valid betas."""
    result = dpo_loss(*seed_args("list"), beta)
    assert isinstance(result["loss"], float)


def test_dpo_loss_scalar_argument():
    """A bare number instead of a sequence: an error naming the argument."""
    columns = seed_args("list")
    columns[1] = 3.0
    with pytest.raises((TypeError, ValueError), match="log_probs_rejected_policy"):
        dpo_loss(*columns, 0.5)


# -------------------------------------------------------------- preference_loss


def pref_args(n=5, dtype=np.float64):
    return [np.array(c, dtype=dtype) for c in good_columns(n)]


@pytest.mark.parametrize("position", range(1, 4))
def test_length_mismatch(position):
    """Different lengths: ValueError naming both arguments."""
    arrays = pref_args()
    arrays[position] = arrays[position][:-1]
    with pytest.raises(ValueError, match=f"length mismatch.*chosen_logps.*{PREF_NAMES[position]}"):
        preference_loss(*arrays)


def test_empty_input():
    """Empty arrays: ValueError naming chosen_logps."""
    with pytest.raises(ValueError, match="chosen_logps is empty"):
        preference_loss(np.array([]), np.array([]))
    with pytest.raises(ValueError, match="chosen_logps is empty"):
        preference_loss([], [], [], [])


@pytest.mark.parametrize("position", range(4))
def test_not_one_dimensional(position):
    """2-D, 0-D and ragged inputs: ValueError naming the argument."""
    for bad in (np.ones((5, 1)), np.float64(3.0), [[1.0, 2.0], [3.0]]):
        arrays = pref_args()
        arrays[position] = bad
        with pytest.raises(ValueError, match=PREF_NAMES[position]):
            preference_loss(*arrays)


@pytest.mark.parametrize("position", range(2))
def test_none_where_array_required(position):
    """chosen_logps / rejected_logps cannot be None."""
    arrays = pref_args()
    arrays[position] = None
    with pytest.raises(TypeError, match=f"{PREF_NAMES[position]} is required"):
        preference_loss(*arrays)


@pytest.mark.parametrize("missing", [2, 3])
def test_only_one_reference(missing):
    """One reference without the other: ValueError naming both."""
    arrays = pref_args()
    arrays[missing] = None
    given = PREF_NAMES[5 - missing]
    with pytest.raises(ValueError, match=f"{given} was given but {PREF_NAMES[missing]} was not"):
        preference_loss(*arrays)


@pytest.mark.parametrize("position", range(4))
@pytest.mark.parametrize(
    "bad",
    [np.array([True, False, True, True, False]), np.ones(5, dtype=np.complex128),
     np.array(["a"] * 5), np.array([1.0, "x", 2.0, 3.0, 4.0], dtype=object),
     np.ones(5, dtype=np.longdouble), np.array(["2020-01-01"] * 5, dtype="datetime64[D]"),
     [1.0, None, 2.0, 3.0, 4.0], ["1", "2", "3", "4", "5"]],
    ids=["bool", "complex", "str", "object", "longdouble", "datetime", "None-element",
         "str-list"],
)
def test_non_numeric_dtypes(position, bad):
    """bool/complex/str/object/longdouble/datetime and non-numeric elements: TypeError."""
    if isinstance(bad, np.ndarray) and bad.dtype == np.longdouble and (
            np.finfo(np.longdouble).bits == 64):
        pytest.skip("longdouble is float64 on this platform")
    arrays = pref_args()
    arrays[position] = bad
    with pytest.raises(TypeError, match=PREF_NAMES[position]):
        preference_loss(*arrays)


@pytest.mark.parametrize("position", range(4))
def test_huge_int_element(position):
    """An int too large for a float (10**400) in a list: an error naming the argument."""
    arrays = [list(map(float, a)) for a in pref_args()]
    arrays[position][4] = 10**400
    with pytest.raises((TypeError, ValueError), match=PREF_NAMES[position]):
        preference_loss(*arrays)


@pytest.mark.parametrize("position", [0, 3])
def test_bool_elements_in_float_list_rejected(position):
    """A bool inside a list of floats is not a log-probability: TypeError."""
    arrays = [list(map(float, a)) for a in pref_args()]
    arrays[position][2] = True
    with pytest.raises(TypeError, match=PREF_NAMES[position]):
        preference_loss(*arrays)


@pytest.mark.parametrize(
    ("beta", "error"),
    [(0.0, ValueError), (-1e-300, ValueError), (math.nan, ValueError), (math.inf, ValueError),
     (True, TypeError), ("0.1", TypeError), (None, TypeError), (np.array([0.1]), TypeError),
     (10**400, ValueError)],
    ids=short_id,
)
def test_bad_beta(beta, error):
    """beta not a finite real > 0: error naming beta."""
    with pytest.raises(error, match="beta"):
        preference_loss(*pref_args(), beta=beta)


@pytest.mark.parametrize(
    ("eps", "error"),
    [(-0.1, ValueError), (0.5, ValueError), (1.0, ValueError), (-1e-300, ValueError),
     (math.nan, ValueError), (math.inf, ValueError), (10**400, ValueError), (True, TypeError),
     ("0.1", TypeError), (None, TypeError)],
    ids=short_id,
)
def test_bad_label_smoothing(eps, error):
    """label_smoothing outside [0, 0.5) or not a real number: error naming it."""
    with pytest.raises(error, match="label_smoothing"):
        preference_loss(*pref_args(), label_smoothing=eps)


@pytest.mark.parametrize("eps", [0, 0.0, 0.4999999, np.float32(0.25), 1e-300])
def test_good_label_smoothing(eps):
    """Values in [0, 0.5), including ints and NumPy scalars, are accepted."""
    assert math.isfinite(preference_loss(*pref_args(), label_smoothing=eps).loss)


@pytest.mark.parametrize("loss_type", ["kto_pair", "Sigmoid", "", None, 0, "dpo"])
def test_unknown_loss_type(loss_type):
    """Unknown loss_type: ValueError listing the supported ones."""
    with pytest.raises(ValueError, match="unknown loss_type.*sigmoid"):
        preference_loss(*pref_args(), loss_type=loss_type)


@pytest.mark.parametrize("reduction", ["avg", "MEAN", "", None, 0, "batchmean"])
def test_unknown_reduction(reduction):
    """Unknown reduction: ValueError listing mean/sum/none."""
    with pytest.raises(ValueError, match="unknown reduction.*mean"):
        preference_loss(*pref_args(), reduction=reduction)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("position", range(4))
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_inputs(dtype, position, bad):
    """NaN/inf: ValueError naming the argument and the first offending index."""
    arrays = pref_args(10, dtype)
    arrays[position][7] = bad
    arrays[position][3] = bad
    with pytest.raises(ValueError, match=re.escape(f"{PREF_NAMES[position]}[3]")):
        preference_loss(*arrays)


def test_non_finite_reports_first_argument_in_order():
    """With bad values in several inputs, the first input (in argument order) is named."""
    arrays = pref_args(10)
    arrays[3][0] = math.nan
    arrays[1][6] = math.inf
    with pytest.raises(ValueError, match=re.escape("rejected_logps[6]")):
        preference_loss(*arrays)


def test_non_finite_with_check_finite_false_passes_through():
    """check_finite=False lets NaN through without an exception."""
    arrays = pref_args(10)
    arrays[0][2] = math.nan
    result = preference_loss(*arrays, check_finite=False, compute_grad=True)
    assert math.isnan(result.loss)
    assert math.isnan(result.losses[2]) and math.isnan(result.grad_chosen[2])
    assert np.all(np.isfinite(np.delete(result.losses, 2)))


@pytest.mark.parametrize("name", ["compute_grad", "check_finite"])
@pytest.mark.parametrize("value", [1, 0, "yes", None, 1.0])
def test_bool_flags_must_be_bool(name, value):
    """compute_grad and check_finite accept only True/False."""
    with pytest.raises(TypeError, match=name):
        preference_loss(*pref_args(), **{name: value})


def test_bool_flags_accept_numpy_bool():
    """NumPy booleans are fine for the flags."""
    result = preference_loss(*pref_args(), compute_grad=np.bool_(True),
                             check_finite=np.bool_(False))
    assert result.grad_chosen is not None


@pytest.mark.parametrize("n_threads", [0, -1, 1.5, True, False, "2", 2.0, [2]], ids=repr)
def test_bad_n_threads(n_threads):
    """n_threads must be None or a positive int: anything else is a ValueError."""
    with pytest.raises(ValueError, match="n_threads"):
        preference_loss(*pref_args(), n_threads=n_threads)


@pytest.mark.parametrize("n_threads", [None, 1, 2, 64, np.int64(3)])
def test_good_n_threads(n_threads):
    """None and positive ints (also NumPy ints) are accepted."""
    assert math.isfinite(preference_loss(*pref_args(), n_threads=n_threads).loss)


def test_options_are_keyword_only():
    """beta and the other options cannot be passed positionally."""
    with pytest.raises(TypeError):
        preference_loss(*pref_args(), 0.1)  # type: ignore[misc]


# --------------------------------------------------------------------------- out=


def _out(n=5, dtype=np.float64, keys=("losses", "chosen_rewards", "rejected_rewards")):
    return {k: np.empty(n, dtype=dtype) for k in keys}


@pytest.mark.parametrize(
    ("make_out", "error", "pattern"),
    [
        (lambda: {"losses": np.empty(5, dtype=np.float32)}, TypeError,
         r"out\['losses'\] has dtype float32"),
        (lambda: {"chosen_rewards": np.empty(4)}, ValueError,
         r"out\['chosen_rewards'\] has shape \(4,\)"),
        (lambda: {"losses": np.empty((5, 1))}, ValueError, r"out\['losses'\] has shape"),
        (lambda: {"losses": np.empty(10)[::2]}, ValueError,
         r"out\['losses'\] must be C-contiguous"),
        (lambda: {"losses": [0.0] * 5}, TypeError, r"out\['losses'\] must be a numpy.ndarray"),
        (lambda: {"loss": np.empty(5)}, ValueError, "out has unknown key 'loss'"),
        (lambda: {"grad_chosen": np.empty(5)}, ValueError,
         r"out\['grad_chosen'\] was given but compute_grad=False"),
        (lambda: [("losses", np.empty(5))], TypeError, "out must be a dict"),
        (lambda: 5, TypeError, "out must be a dict"),
        (lambda: "losses", TypeError, "out must be a dict"),
        (lambda: np.empty(5), TypeError, "out must be a dict"),
    ],
    ids=["dtype", "length", "2-D", "strided", "list", "unknown-key", "grad-without-flag",
         "list-of-pairs", "int", "str", "ndarray"],
)
def test_bad_out(make_out, error, pattern):
    """Each kind of bad out= gives an error naming out (and the key)."""
    with pytest.raises(error, match=pattern):
        preference_loss(*pref_args(), out=make_out())


def test_out_read_only():
    """A read-only out array is refused."""
    losses = np.empty(5)
    losses.flags.writeable = False
    with pytest.raises(ValueError, match=r"out\['losses'\] must be C-contiguous and writeable"):
        preference_loss(*pref_args(), out={"losses": losses})


@pytest.mark.parametrize("position", range(4))
def test_out_overlapping_an_input(position):
    """An out array sharing memory with an input is refused (the input would be clobbered)."""
    arrays = pref_args()
    with pytest.raises(ValueError, match=r"out\['chosen_rewards'\] overlaps an input"):
        preference_loss(*arrays, out={"chosen_rewards": arrays[position]})
    buffer = np.arange(10.0) - 20.0
    arrays[position] = buffer[:5]
    with pytest.raises(ValueError, match="overlaps"):
        preference_loss(*arrays, out={"losses": buffer[3:8]})


def test_out_overlapping_a_strided_input():
    """An out array overlapping the memory of a strided (non-contiguous) input is refused
    too; accepting it would silently write the caller's input."""
    buffer = -np.arange(1.0, 11.0)
    chosen = buffer[::2]
    before = chosen.copy()
    out = {"losses": buffer[:5]}
    with pytest.raises(ValueError, match="overlaps"):
        preference_loss(chosen, np.full(5, -3.0), out=out)
    assert chosen.tobytes() == before.tobytes()


def test_out_overlapping_another_output():
    """The same array for two outputs is refused."""
    shared = np.empty(5)
    with pytest.raises(ValueError, match="overlaps"):
        preference_loss(*pref_args(), out={"losses": shared, "chosen_rewards": shared})
    with pytest.raises(ValueError, match="overlaps"):
        preference_loss(*pref_args(), compute_grad=True,
                        out={"grad_chosen": shared, "grad_rejected": shared})


def test_out_dtype_follows_inputs():
    """float32 inputs need float32 out arrays; float64 out arrays are refused."""
    with pytest.raises(TypeError, match=r"out\['losses'\] has dtype float64.*float32"):
        preference_loss(*pref_args(dtype=np.float32), out={"losses": np.empty(5)})


def test_error_leaves_out_untouched_on_validation_failure():
    """A call rejected during validation does not write the out arrays."""
    out = _out()
    for array in out.values():
        array.fill(7.0)
    with pytest.raises(ValueError):
        preference_loss(*pref_args(), beta=-1.0, out=out)
    assert all(np.all(a == 7.0) for a in out.values())


def test_dpo_loss_list_resized_by_float_conversion_is_an_error_not_a_crash():
    """A number whose __float__ empties the list being read gives ValueError, never a read
    of freed memory (the fast path re-checks the list after calling Python code)."""
    import numbers

    class Shrinking:
        def __init__(self, owner):
            self.owner = owner

        def __float__(self):
            self.owner.clear()
            return 1.0

    numbers.Real.register(Shrinking)
    chosen = [0.0, -1.0, -2.0]
    chosen[0] = Shrinking(chosen)
    with pytest.raises(ValueError, match="log_probs_chosen_policy changed size"):
        dpo_loss(chosen, [0.0] * 3, [0.0] * 3, [0.0] * 3, 0.1)


# ------------------------------------------------------------------ regressions
#
# Failures the fuzzing found (tests/test_fuzz_*.py, scripts/fuzz_atheris.py; docs/reliability.md,
# section 6), pinned beside the code they guard. A crash runs in a subprocess.


def _no_nan_or_value_error(*args, **kwargs):
    no_nan_or_value_error(preference_loss, *args, **kwargs)


@pytest.mark.parametrize(("slot", "key", "loss"), [
    ("weights", "losses", "aot"), ("weights", "chosen_rewards", "sigmoid"),
    ("chosen_lengths", "chosen_rewards", "sft"),
    ("rejected_lengths", "grad_rejected", "sigmoid_norm")])
def test_regression_out_overlapping_weights_or_lengths(slot, key, loss):
    """Found by the fuzzing: out= arrays were checked for overlap with the log-prob inputs
    only, not with weights / chosen_lengths / rejected_lengths, so the caller's array was
    overwritten and the result wrong (aot: all-zero losses). Now ValueError."""
    pc, pr = np.array([-1.0, -2.0, -3.0, -4.0]), np.array([-2.0, -1.0, -5.0, -3.0])
    kw = {"loss_type": loss, "compute_grad": True, "reduction": "none"}
    if loss in ("sft", "sigmoid_norm"):
        kw["chosen_lengths"] = np.array([1.0, 2.0, 3.0, 4.0])
        kw["rejected_lengths"] = np.array([2.0, 2.0, 5.0, 1.0])
    if slot == "weights":
        kw["weights"] = np.array([1.0, 2.0, 3.0, 0.5])
    shared = kw[slot]
    before = shared.copy()
    with pytest.raises(ValueError, match="overlap"):
        preference_loss(pc, pr, out={key: shared}, **kw)
    assert shared.tobytes() == before.tobytes()


def test_regression_numpy_bool_in_list_is_refused():
    """Found by the fuzzing: NumPy bools inside a list were taken as 1.0 / 0.0 by
    preference_loss (Python bools are refused, and dpo_loss refuses both). Now TypeError."""
    with pytest.raises(TypeError, match=r"chosen_logps\[0\]"):
        preference_loss([np.True_, -1.0, -2.0], [-1.0, -2.0, -3.0])


@pytest.mark.parametrize("loss", ["sigmoid_norm", "ipo", "simpo"])
@pytest.mark.parametrize("length", [DBL_MIN, 5e-324, 1e-300, 0.5])
def test_regression_tiny_lengths_give_nan(loss, length):
    """Found by the fuzzing: lengths whose reciprocal (or log-ratio / length) overflows,
    accepted as 'finite and > 0', gave NaN losses, gradients and simpo rewards (inf - inf,
    0 * inf). Now lengths must be >= 1 (ValueError); no NaN either way."""
    refs = () if loss == "simpo" else (np.array([0.0]), np.array([0.0]))
    _no_nan_or_value_error(np.array([-50.0]), np.array([-60.0]), *refs, loss_type=loss,
                           chosen_lengths=[length], rejected_lengths=[length],
                           compute_grad=True)


@pytest.mark.parametrize(("beta", "fdiv", "row"), [
    (5e307, "reverse_kl", (DBL_MAX, DBL_MAX, -1e300, -1e300)),
    (5e307, "reverse_kl", (1e6, -DBL_MAX, 0.0, DBL_MAX)),
    (DBL_MAX, "forward_kl", (5e-324, -750.0, -0.0, -0.0)),
])
def test_regression_extreme_beta_large(beta, fdiv, row):
    """Found by the fuzzing: beta > DBL_MAX / 4 overflowed the kernels' 4 * beta rescaling of
    quartered log-ratios (NaN rewards, losses, gradients). Now beta must be in
    [1e-300, 1e300]: ValueError, and no NaN either way."""
    _no_nan_or_value_error(*[np.array([v]) for v in row], beta=beta, f_divergence_type=fdiv,
                           compute_grad=True, reduction="none")


@pytest.mark.parametrize("loss", ["ipo", "sppo_hard"])
def test_regression_extreme_beta_subnormal(loss):
    """Found by the fuzzing: a subnormal beta made 1 / (2 beta) overflow in ipo / sppo_hard
    (NaN for large log-ratios). Now ValueError (beta in [1e-300, 1e300])."""
    _no_nan_or_value_error(np.array([DBL_MAX]), np.array([-1e-310]), np.array([-1e300]),
                           np.array([DBL_MAX]), beta=5e-324, loss_type=loss,
                           compute_grad=True, reduction="none")


@pytest.mark.parametrize("tau", [5e-324, 1e-310])
@pytest.mark.parametrize("z", [-1.0, 0.0])
def test_regression_subnormal_discopop_tau(tau, z):
    """Found by the fuzzing: a subnormal discopop_tau (1 / tau overflows) gave NaN gradients
    for every z <= 0. Now ValueError (discopop_tau in [1e-300, 1e300])."""
    _no_nan_or_value_error(np.array([z]), np.array([0.0]), beta=1.0, loss_type="discopop",
                           discopop_tau=tau, compute_grad=True)


@pytest.mark.parametrize("alpha", [1e308, DBL_MAX, -1e308])
@pytest.mark.parametrize("loss", ["sigmoid", "ipo", "exo_pair"])
def test_regression_huge_alpha_gives_nan(alpha, loss):
    """Found by the fuzzing: f_alpha_divergence_coef above about DBL_MAX / 4 (accepted as
    finite) gave NaN losses and gradients (the kernels' rescaling of the exp-form scores
    overflowed). Now |alpha| <= 1e300 (ValueError), and no NaN either way."""
    for chosen, rejected in ((0.0, 0.5), (0.5, 0.0), (-3.0, 0.0), (0.0, 3.0)):
        _no_nan_or_value_error(np.array([chosen]), np.array([rejected]), np.zeros(1),
                               np.zeros(1), beta=0.5, loss_type=loss,
                               f_divergence_type="alpha_divergence",
                               f_alpha_divergence_coef=alpha, compute_grad=True)
