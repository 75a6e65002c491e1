"""The validated general path of preference_loss.

dpo_fast._entry (compiled) takes the common call -- 1-D float32/float64 arrays, one per-pair
loss type, default options -- straight to the kernel; every other call comes here: this module
validates every argument (errors name the argument and the first bad index), applies the dtype
rules, allocates or checks the outputs, and runs the plain or the general kernel loop and the
sorted loss types. ``run`` returns the pieces of the result; _entry packs them.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from dpo_fast import _sorted, _threads
from dpo_fast._arrays import (
    check_flag,
    copy_back,
    kernel_array,
    kernel_output,
    tensor_as_array,
)
from dpo_fast._kernels import _pairwise
from dpo_fast._registry import (
    BATCH_COUPLED_LOSS_TYPES,
    F_DIVERGENCE_LOSS_TYPES,
    GT_REWARD_LOSS_TYPES,
    KERNEL_IDS,
    LENGTH_LOSS_TYPES,
    LOSS_REGISTRY,
    LOSS_TYPES,
    NEEDS_LENGTHS,
    PLAIN_TYPES,
    SMOOTHING_LIMITS,
    SORTED_TYPES,
)
from dpo_fast._seed import validate_beta

__all__ = ["run", "LOSS_TYPES", "REDUCTIONS", "BATCH_COUPLED_LOSS_TYPES",
           "F_DIVERGENCE_TYPES", "LENGTH_LOSS_TYPES", "OUTPUT_NAMES", "PREFERENCE_ARG_NAMES",
           "DPO_LOSS_ARG_NAMES", "PLAIN_TYPES", "SMOOTHING_LIMITS"]

# f-divergences (TRL's f_divergence_type); the loss types they apply to are in the registry.
F_DIVERGENCE_TYPES = ("reverse_kl", "forward_kl", "js_divergence", "alpha_divergence")
# DPO-Positive's penalty weight lambda: the paper's value (Pal et al. 2024).
DPOP_LAMBDA_DEFAULT = 50.0
# |f_alpha_divergence_coef - 1| below this is the reverse-KL limit (TRL 1.16's threshold).
ALPHA_LIMIT_TOLERANCE = 1e-6
REDUCTIONS = ("mean", "sum", "none")
OUTPUT_NAMES = ("losses", "chosen_rewards", "rejected_rewards", "grad_chosen", "grad_rejected")
# Positions in the kernel's sums (dpo_fast._kernels._pairwise.SUM_NAMES).
(_SUM_LOSS, _SUM_CHOSEN, _SUM_REJECTED, _SUM_MARGIN, _SUM_ACCURACY, _SUM_CHOSEN_LOGP,
 _SUM_REJECTED_LOGP) = range(len(_pairwise.SUM_NAMES))
_REWARD_SUMS = (_SUM_CHOSEN, _SUM_REJECTED, _SUM_MARGIN)
PREFERENCE_ARG_NAMES = ("chosen_logps", "rejected_logps", "ref_chosen_logps",
                         "ref_rejected_logps")
DPO_LOSS_ARG_NAMES = ("log_probs_chosen_policy", "log_probs_rejected_policy",
                   "log_probs_chosen_ref", "log_probs_rejected_ref")


def _as_input_array(value: Any, name: str) -> np.ndarray:
    """``value`` as a 1-D NumPy array of a supported dtype (no copy yet), or a clear error."""
    if type(value) is np.ndarray:  # the common case, kept cheap for small batches
        array = value
    else:
        if value is None:
            raise TypeError(f"{name} is required, got None")
        if isinstance(value, (list, tuple)) and any(
                isinstance(item, (bool, np.bool_)) for item in value):
            # NumPy would silently turn True into 1.0 next to floats; the list fast path of
            # dpo_loss refuses bools, and so does this one.
            index = next(i for i, item in enumerate(value)
                         if isinstance(item, (bool, np.bool_)))
            raise TypeError(f"{name}[{index}] must be a real number, got bool")
        array = tensor_as_array(value, name, "dpo_fast.torch.preference_loss")
        if array is None:
            try:
                array = np.asarray(value)
            except ValueError as exc:  # ragged nested sequences
                raise ValueError(f"{name} must be a 1-D sequence of numbers: {exc}") from None
    dtype = array.dtype
    kind = dtype.kind
    if kind == "f":
        if dtype.itemsize > 8:
            raise TypeError(f"{name} has dtype {dtype}; convert it to float64 first")
    elif kind not in "iu":
        if kind == "O":
            _raise_for_object_array(array, name)
        raise TypeError(f"{name} must hold real numbers (float or integer), got dtype {dtype}")
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {array.shape}")
    return array


def _raise_for_object_array(array: np.ndarray, name: str) -> None:
    """Explain why NumPy could not make numbers of ``array`` (dtype object)."""
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {array.shape}")
    for index, item in enumerate(array):
        if isinstance(item, bool) or not isinstance(item, numbers.Real):
            if isinstance(item, (list, tuple, np.ndarray)):
                raise ValueError(f"{name} must be 1-D: element {index} is a "
                                 f"{type(item).__name__}")
            raise TypeError(f"{name}[{index}] must be a real number, got "
                            f"{type(item).__name__}")
        try:
            float(item)
        except OverflowError:
            raise ValueError(f"{name}[{index}] = {item!r} is not representable as a finite "
                             "float") from None
    for index, item in enumerate(array):
        if isinstance(item, int) and not -2**63 <= item < 2**63:
            # NumPy keeps a list with an int beyond int64 as objects rather than round it.
            raise ValueError(f"{name}[{index}] = {item!r} does not fit in int64; pass it as a "
                             f"float ({float(item)!r}) if that is the value you mean")
    raise TypeError(f"{name} must hold real numbers, got dtype object")


def _prepare_inputs(values: Sequence[Any], names: Sequence[str], force_float64: bool = False
                    ) -> tuple[list[np.ndarray | None], type, list[np.ndarray]]:
    """Validate the input arrays (None allowed after the first two) and convert them to one
    C-contiguous floating dtype: float32 if every input is float32 (or float16), else
    float64. Copies only where needed; the caller's arrays are never written.

    Returns the converted arrays, their dtype, and the caller's arrays as given (views, for
    the overlap check of ``out=``: a strided input is copied, but ``out`` must not alias the
    original either)."""
    arrays: list[np.ndarray | None] = [_as_input_array(values[0], names[0]),
                                       _as_input_array(values[1], names[1])]
    for value, name in zip(values[2:], names[2:]):
        arrays.append(None if value is None else _as_input_array(value, name))
    if (arrays[2] is None) != (arrays[3] is None):
        given, missing = (names[2], names[3]) if arrays[3] is None else (names[3], names[2])
        raise ValueError(f"{given} was given but {missing} was not: pass both reference "
                         "log-probs, or neither for the reference-free loss")
    present = [a for a in arrays if a is not None]
    length = present[0].shape[0]
    for array, name in zip(present[1:], names[1:]):
        if array.shape[0] != length:
            raise ValueError(f"length mismatch: {names[0]} has {length} elements but "
                             f"{name} has {array.shape[0]}")
    if length == 0:
        raise ValueError(f"{names[0]} is empty: at least one pair is needed")
    single = not force_float64 and all(a.dtype.kind == "f" and a.dtype.itemsize <= 4
                                       for a in present)
    dtype = np.float32 if single else np.float64
    converted = [None if a is None else kernel_array(a, dtype) for a in arrays]
    return converted, dtype, present


def _check_outputs(out: Mapping[str, Any] | None, wanted: Sequence[str], length: int,
                   dtype: type, inputs: Sequence[np.ndarray]
                   ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Allocate the outputs, or check the caller's preallocated ones in ``out``.

    Returns the arrays the kernels write and the caller's ``out`` arrays by key; they differ
    where a caller's array is not aligned (an aligned temporary is written, then copied back
    by :func:`_deliver_outputs`)."""
    if out is None:
        return {key: np.empty(length, dtype=dtype) for key in wanted}, {}
    if not isinstance(out, Mapping):
        raise TypeError(f"out must be a dict of arrays keyed by {OUTPUT_NAMES}, got "
                        f"{type(out).__name__}")
    given = dict(out)
    for key in given:
        if key not in OUTPUT_NAMES:
            raise ValueError(f"out has unknown key {key!r}; expected some of {OUTPUT_NAMES}")
        if key not in wanted:
            raise ValueError(f"out[{key!r}] was given but compute_grad=False")
    arrays: dict[str, np.ndarray] = {}
    targets: dict[str, np.ndarray] = {}
    for key in wanted:
        if key not in given:
            arrays[key] = np.empty(length, dtype=dtype)
            continue
        array = given[key]
        label = f"out[{key!r}]"
        if not isinstance(array, np.ndarray):
            raise TypeError(f"{label} must be a numpy.ndarray, got {type(array).__name__}")
        if array.dtype != dtype:
            raise TypeError(f"{label} has dtype {array.dtype}, but the inputs give "
                            f"{np.dtype(dtype)} results")
        if array.shape != (length,):
            raise ValueError(f"{label} has shape {array.shape}, expected ({length},)")
        if not array.flags.c_contiguous or not array.flags.writeable:
            raise ValueError(f"{label} must be C-contiguous and writeable")
        for other in [*inputs, *targets.values()]:
            if np.may_share_memory(array, other):
                raise ValueError(f"{label} overlaps an input or another output")
        targets[key] = array
        arrays[key] = kernel_output(array)
    return arrays, targets


def _deliver_outputs(outputs: dict[str, np.ndarray], targets: Mapping[str, np.ndarray]) -> None:
    """Copy what the kernels wrote into staged temporaries to the caller's ``out`` arrays
    (see :func:`_check_outputs`), which then stand in ``outputs``."""
    for key, target in targets.items():
        outputs[key] = copy_back(outputs[key], target)


def _first_non_finite(arrays: Sequence[np.ndarray | None], names: Sequence[str]) -> None:
    """Raise ValueError naming the first NaN/inf among the inputs (input order, then index)."""
    for array, name in zip(arrays, names):
        if array is None:
            continue
        bad = np.flatnonzero(~np.isfinite(array))
        if bad.size:
            index = int(bad[0])
            raise ValueError(f"{name}[{index}] is {float(array[index])!r}: inputs must be "
                             "finite (pass check_finite=False to let NaN/inf through)")


def _real(value: Any, name: str) -> float:
    """``value`` as a float (inf if too large), or TypeError naming the parameter."""
    if type(value) is float:
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    try:
        return float(value)
    except OverflowError:
        return math.inf


def _loss_types(loss_type: Any, loss_weights: Any) -> tuple[tuple[str, ...], tuple[float, ...]]:
    """The loss types as a tuple of distinct known names, and their weights."""
    if isinstance(loss_type, str):
        names: tuple[str, ...] = (loss_type,)
    elif isinstance(loss_type, (list, tuple)):
        names = tuple(loss_type)
        if not names:
            raise ValueError("loss_type is an empty list; give at least one loss type")
    else:
        raise ValueError(f"unknown loss_type {loss_type!r}; supported: {list(LOSS_TYPES)}, "
                         "or a list of them")
    for name in names:
        if not isinstance(name, str) or name not in LOSS_TYPES:
            raise ValueError(f"unknown loss_type {name!r}; supported: {list(LOSS_TYPES)}")
    if len(set(names)) != len(names):
        twice = next(name for name in names if names.count(name) > 1)
        raise ValueError(f"loss_type lists {twice!r} twice; give each loss type once (and "
                         "its weight in loss_weights)")
    if len(names) > _pairwise.MAX_TERMS:
        raise ValueError(f"loss_type lists {len(names)} loss types; at most "
                         f"{_pairwise.MAX_TERMS} can be combined")
    if loss_weights is None:
        return names, (1.0,) * len(names)
    if isinstance(loss_weights, (str, bytes)) or not isinstance(loss_weights, Sequence) \
            and not isinstance(loss_weights, np.ndarray):
        raise TypeError(f"loss_weights must be a sequence of real numbers, got "
                        f"{type(loss_weights).__name__}")
    weights = [_real(value, f"loss_weights[{index}]") for index, value in enumerate(loss_weights)]
    if len(weights) != len(names):
        raise ValueError(f"loss_weights has {len(weights)} values but loss_type has "
                         f"{len(names)} loss types")
    for index, value in enumerate(weights):
        if not math.isfinite(value):
            raise ValueError(f"loss_weights[{index}] = {loss_weights[index]!r} is not finite")
    return names, tuple(weights)


def _smoothing_for(names: Sequence[str], label_smoothing: Any) -> float:
    """The epsilon the kernel gets, checked against the range of every listed loss type that
    uses it (exo_pair's must be > 0, as TRL 1.16 requires: it takes log(eps))."""
    epsilon = _real(label_smoothing, "label_smoothing")
    users = [name for name in names if name in SMOOTHING_LIMITS]
    if not users:
        if epsilon != 0.0:
            listed = names[0] if len(names) == 1 else list(names)
            raise ValueError(f"label_smoothing is not used by loss_type={listed!r}; got "
                             f"{label_smoothing!r}")
        return 0.0
    for name in users:
        limit = SMOOTHING_LIMITS[name]
        if LOSS_REGISTRY[name].smoothing_positive:
            if 0.0 < epsilon < limit:
                continue
            raise ValueError(f"label_smoothing must be in (0, {limit:g}) for loss_type="
                             f"{name!r} (the EXO paper recommends 1e-3), got "
                             f"{label_smoothing!r}")
        if 0.0 <= epsilon < limit:
            continue
        raise ValueError(f"label_smoothing must be in [0, {limit:g}) for loss_type={name!r}, "
                         f"got {label_smoothing!r}")
    return epsilon


def _type_parameter(value: Any, name: str, user: str, default: float, types: Sequence[str],
                    minimum: float = -math.inf) -> float:
    """A parameter of one loss type: a finite real (>= minimum); a value other than the
    default with that type not in the call is refused rather than ignored."""
    number = _real(value, name)
    if not (math.isfinite(number) and number >= minimum):
        rule = "finite" if minimum == -math.inf else f"finite and >= {minimum:g}"
        raise ValueError(f"{name} must be {rule}, got {value!r}")
    if number != default and user not in types:
        listed = types[0] if len(types) == 1 else list(types)
        raise ValueError(f"{name} is only used by loss_type={user!r}, not by "
                         f"loss_type={listed!r}; got {value!r}")
    return number


def _gt_scale(value: Any, margins: Any, users: Sequence[str]) -> float:
    """NeMo-Aligner's gt_reward_scale (finite), and the check that gt_reward_margins comes
    exactly with the rpo_* types: required by them, refused (not ignored) without them."""
    scale = _real(value, "gt_reward_scale")
    if not math.isfinite(scale):
        raise ValueError(f"gt_reward_scale must be finite, got {value!r}")
    if not users:
        if margins is not None:
            raise ValueError(f"gt_reward_margins is only used by loss_type in "
                             f"{sorted(GT_REWARD_LOSS_TYPES)}")
        if scale != 1.0:
            raise ValueError(f"gt_reward_scale is only used by loss_type in "
                             f"{sorted(GT_REWARD_LOSS_TYPES)}; got {value!r}")
    elif margins is None:
        raise ValueError(f"loss_type={users[0]!r} needs gt_reward_margins (each pair's "
                         "ground-truth reward of the chosen minus that of the rejected)")
    return scale


def _gt_margins(value: Any, length: int, scale: float) -> np.ndarray:
    """gt_reward_margins as a float64 array of ``length``: finite, and finite times
    gt_reward_scale (the kernel takes g = scale * margin)."""
    name = "gt_reward_margins"
    array = _as_input_array(value, name)
    if array.shape[0] != length:
        raise ValueError(f"length mismatch: chosen_logps has {length} elements but {name} has "
                         f"{array.shape[0]}")
    array = kernel_array(array, np.float64)
    # Two reductions without temporaries: every scale * margin is finite iff the two extremes'
    # are (NaN propagates through min and max); the index search only when one is not.
    with np.errstate(over="ignore", invalid="ignore"):
        extremes_ok = math.isfinite(scale * float(array.min())) and math.isfinite(
            scale * float(array.max()))
    if not extremes_ok:
        with np.errstate(over="ignore", invalid="ignore"):
            bad = ~np.isfinite(array * scale)
        index = int(np.flatnonzero(bad)[0])
        number = float(array[index])
        rule = (f"{name} must be finite" if not math.isfinite(number) else
                f"gt_reward_scale * {name} must be finite (scale {scale!r})")
        raise ValueError(f"{name}[{index}] is {number!r}; {rule}")
    return array


def _divergence(f_divergence_type: Any, f_alpha_divergence_coef: Any,
                names: Sequence[str]) -> tuple[int, float]:
    """The kernel's divergence id and coefficient for TRL's f_divergence_type."""
    alpha = _real(f_alpha_divergence_coef, "f_alpha_divergence_coef")
    if not abs(alpha) <= 1e300:  # (the kernels rescale a = alpha - 1 by 4: no overflow)
        raise ValueError(f"f_alpha_divergence_coef must be finite and in [-1e300, 1e300], "
                         f"got {f_alpha_divergence_coef!r}")
    if not isinstance(f_divergence_type, str) or f_divergence_type not in F_DIVERGENCE_TYPES:
        raise ValueError(f"unknown f_divergence_type {f_divergence_type!r}; expected one of "
                         f"{F_DIVERGENCE_TYPES}")
    ids = _pairwise.DIVERGENCE_IDS
    if f_divergence_type == "alpha_divergence" and abs(alpha - 1.0) < ALPHA_LIMIT_TOLERANCE:
        # The alpha -> 1 limit (reverse KL) within TRL 1.16's tolerance: its scores drop the
        # constant -1/(alpha - 1), which after a length division would blow up as alpha -> 1.
        f_divergence_type = "reverse_kl"
    if f_divergence_type == "reverse_kl":
        return ids["identity"], 0.0
    # (A batch constant in a list, sft, is not a function of the log-ratios: unaffected.)
    refused = [name for name in names if not LOSS_REGISTRY[name].batch_constant
               and name not in F_DIVERGENCE_LOSS_TYPES]
    if refused:
        raise ValueError(f"f_divergence_type={f_divergence_type!r} does not apply to "
                         f"loss_type={refused[0]!r}; it applies to "
                         f"{sorted(F_DIVERGENCE_LOSS_TYPES)} (as in TRL)")
    if f_divergence_type == "js_divergence":
        return ids["js"], 0.0
    # s(x) = (exp(a x) - 1)/a (TRL: e^{a x}/a, the same differences): forward KL is a = -1,
    # the alpha-divergence a = alpha - 1.
    return ids["exp"], -1.0 if f_divergence_type == "forward_kl" else alpha - 1.0


def _per_pair(value: Any, name: str, length: int, *, positive: bool
              ) -> tuple[np.ndarray, float]:
    """Lengths (finite, >= 1: token counts, which TRL clamps to >= 1; below 1, c/n and 1/n
    could overflow) or weights (finite, >= 0) as a float64 array of ``length``, and its sum
    (float(np.sum(array)): sft's token count, its gradient's weight total)."""
    array = _as_input_array(value, name)
    if array.shape[0] != length:
        raise ValueError(f"length mismatch: chosen_logps has {length} elements but {name} has "
                         f"{array.shape[0]}")
    array = kernel_array(array, np.float64)
    # Two reductions without temporaries (NaN propagates through min and sum); the index
    # search only when something is wrong. With every value >= 0 a finite sum means every
    # value is finite (a sum of finite ones that overflowed asks max).
    low, total = float(array.min()), float(np.sum(array))
    high = total if total < math.inf else float(array.max())
    if not ((low >= 1.0 if positive else low >= 0.0) and high < math.inf):
        bad = ~np.isfinite(array) | ((array < 1.0) if positive else (array < 0.0))
        index = int(np.flatnonzero(bad)[0])
        rule = "finite and >= 1 (token counts)" if positive else "finite and >= 0"
        raise ValueError(f"{name}[{index}] is {float(array[index])!r}; {name} must be {rule}")
    return array, total


def _fallback_means(sums: Sequence[float], length: int, outputs: Mapping[str, np.ndarray],
                    arrays: Sequence[np.ndarray | None], beta: float,
                    reward_lengths: tuple[np.ndarray, np.ndarray] | None) -> list[float]:
    """Means of the kernel's sums; with inputs near DBL_MAX a sum can overflow although every
    term and the mean are finite: those means are taken the slow way, dividing first.

    ``reward_lengths``: the (chosen, rejected) lengths when the rewards are length-normalised
    (simpo), else None."""
    means = [total / length for total in sums]
    if math.isfinite(sum(sums)):
        return means

    def share(values: np.ndarray) -> np.ndarray:
        return np.asarray(values, np.float64) / length

    # Rewards are beta * x with x a log-ratio (x = p - ref, or p / n for simpo). Where their
    # sums overflow, the rewards themselves may have: +inf and -inf in one batch, or the same
    # infinity in both rewards of a pair, give NaN means where the mean has a value. So these
    # means are 4 beta * sum((x/4) / length): x/4 is exact for normal x and finite even where
    # p - ref overflows, each term is at most DBL_MAX / length, and 4 beta cannot overflow.
    lengths = (None, None) if reward_lengths is None else reward_lengths

    def quarter_ratios(side: int) -> np.ndarray:
        policy, ref, count = arrays[side], arrays[side + 2], lengths[side]
        values = np.asarray(policy, np.float64) / 4.0
        if ref is not None:
            values -= np.asarray(ref, np.float64) / 4.0
        return values if count is None else values / count

    shares = {
        _SUM_LOSS: lambda: share(outputs["losses"]),
        _SUM_CHOSEN_LOGP: lambda: share(arrays[0]),
        _SUM_REJECTED_LOGP: lambda: share(arrays[1]),
    }
    scaled = {
        _SUM_CHOSEN: lambda: quarter_ratios(0),
        _SUM_REJECTED: lambda: quarter_ratios(1),
        _SUM_MARGIN: lambda: quarter_ratios(0) - quarter_ratios(1),
    }
    for index, total in enumerate(sums):
        if math.isfinite(total):
            continue
        with np.errstate(invalid="ignore", over="ignore"):
            if index in shares:
                # (+inf and -inf losses, possible for robust, have no mean: NaN, quietly.)
                means[index] = float(np.sum(shares[index]()))
            elif index in scaled:
                means[index] = float(np.sum(scaled[index]() / length)) * (4.0 * beta)
    return means


def _per_pair_outputs(value: Any, reduction: Any) -> tuple[str, ...]:
    """The per-pair arrays a call asks for (``per_pair_outputs``): None is all of them."""
    names = OUTPUT_NAMES[:3]
    if value is None:
        return names
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise TypeError(f"per_pair_outputs must be None or a collection of names among "
                        f"{names}, got {value!r} (for one name, pass a tuple: ({value!r},))")
    chosen = list(value)
    for name in chosen:
        if name not in names:
            raise ValueError(f"per_pair_outputs has unknown name {name!r}; expected some of "
                             f"{names}")
    if reduction == "none" and "losses" not in chosen:
        raise ValueError("reduction='none' returns the per-pair losses: include 'losses' in "
                         "per_pair_outputs")
    return tuple(name for name in names if name in chosen)


def _refuse_unwanted_out(out: Any, wanted: Sequence[str]) -> None:
    """An ``out`` array for a per-pair output the call leaves out is a contradiction."""
    if not isinstance(out, Mapping):
        return  # (None, or a type _check_outputs names)
    for key in OUTPUT_NAMES[:3]:
        if key in out and key not in wanted:
            raise ValueError(f"out[{key!r}] was given but per_pair_outputs leaves {key!r} "
                             "out")


def run(values: Sequence[Any], names: Sequence[str], *, beta: Any, loss_type: Any,
        label_smoothing: Any, discopop_tau: Any, reduction: Any, compute_grad: Any,
        check_finite: Any, n_threads: Any, out: Mapping[str, Any] | None,
        force_float64: bool = False, loss_weights: Any = None, simpo_gamma: Any = 0.5,
        f_divergence_type: Any = "reverse_kl", f_alpha_divergence_coef: Any = 1.0,
        chosen_lengths: Any = None, rejected_lengths: Any = None, weights: Any = None,
        dpop_lambda: Any = DPOP_LAMBDA_DEFAULT, bco_delta: Any = 0.0,
        alphapo_alpha: Any = 0.0, gt_reward_margins: Any = None, gt_reward_scale: Any = 1.0,
        per_pair_outputs: Any = None
        ) -> tuple[float | np.ndarray, dict[str, np.ndarray | None], list[float]]:
    """preference_loss, validated: ``(loss, outputs, means)``, with the output arrays by
    OUTPUT_NAMES key (the gradients only with compute_grad) and the means of the kernel's sums
    (SUM_NAMES order). ``names`` are the four input arguments' names for the messages."""
    beta_value = validate_beta(beta)
    types, type_weights = _loss_types(loss_type, loss_weights)
    smoothing = _smoothing_for(types, label_smoothing)
    tau = _real(discopop_tau, "discopop_tau")
    if not 1e-300 <= tau <= 1e300:  # (1/tau must not overflow)
        raise ValueError(f"discopop_tau must be finite and in [1e-300, 1e300], got "
                         f"{discopop_tau!r}")
    gamma = _real(simpo_gamma, "simpo_gamma")
    if not math.isfinite(gamma):
        raise ValueError(f"simpo_gamma must be finite, got {simpo_gamma!r}")
    penalty = _type_parameter(dpop_lambda, "dpop_lambda", "dpop", DPOP_LAMBDA_DEFAULT, types,
                              minimum=0.0)
    delta = _type_parameter(bco_delta, "bco_delta", "bco_pair", 0.0, types)
    shape = _type_parameter(alphapo_alpha, "alphapo_alpha", "alphapo", 0.0, types)
    if shape != 0.0 and not 1e-300 <= abs(shape) <= 1e300:  # (log|alpha| must be finite)
        raise ValueError(f"alphapo_alpha must be 0 or of magnitude in [1e-300, 1e300], got "
                         f"{alphapo_alpha!r}")
    gt_users = [name for name in types if LOSS_REGISTRY[name].gt_rewards]
    gt_scale = _gt_scale(gt_reward_scale, gt_reward_margins, gt_users)
    divergence, divergence_coef = _divergence(f_divergence_type, f_alpha_divergence_coef, types)
    if not isinstance(reduction, str) or reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; expected one of {REDUCTIONS}")
    want_grad = check_flag(compute_grad, "compute_grad")
    want_finite = check_flag(check_finite, "check_finite")
    threads = _threads.validate_n_threads(n_threads)

    arrays, dtype, originals = _prepare_inputs(values, names, force_float64)
    length = arrays[0].shape[0]
    if "orpo" in types:
        # log(1 - p) of an average probability p = exp(logp / n) needs p < 1: logp < 0.
        for array, name in zip(arrays[:2], names[:2]):
            # One SIMD reduction (no temporaries); the index search only when one is >= 0.
            # (fmax skips NaN, which is the finiteness check's.)
            if not np.fmax.reduce(array) >= 0:
                continue
            bad = np.flatnonzero(array >= 0)
            if bad.size:
                raise ValueError(f"{name}[{bad[0]}] is {float(array[bad[0]])!r}: "
                                 "loss_type='orpo' needs log-probs below 0 (an average "
                                 "probability below 1)")
    for name in types:
        if LOSS_REGISTRY[name].reference_free and arrays[2] is not None:
            raise ValueError(f"loss_type={name!r} is reference-free: pass no "
                             "ref_chosen_logps / ref_rejected_logps")
    lengths = {"chosen_lengths": chosen_lengths, "rejected_lengths": rejected_lengths}
    for name in types:
        for needed in NEEDS_LENGTHS.get(name, ()):
            if lengths[needed] is None:
                raise ValueError(f"loss_type={name!r} needs {needed} (token counts of the "
                                 "completions)")
    checked = {key: None if value is None else _per_pair(value, key, length, positive=True)
               for key, value in lengths.items()}
    if weights is not None:
        checked["weights"] = _per_pair(weights, "weights", length, positive=False)
    per_pair = {key: None if pair is None else pair[0] for key, pair in checked.items()
                if key != "weights"}
    pair_weights = checked["weights"][0] if weights is not None else None
    totals = {key: pair[1] for key, pair in checked.items() if pair is not None}
    margins = None if not gt_users else _gt_margins(gt_reward_margins, length, gt_scale)
    per_pair_wanted = _per_pair_outputs(per_pair_outputs, reduction)
    # The sorted types and alphapo's reward pass work on the per-pair arrays after the kernel:
    # they get them all (the unwanted ones are dropped from the result).
    shaped_in_kernel = _kernel_shapes_rewards(types, type_weights, shape)
    reward_pass = shape != 0.0 and "alphapo" in types and not shaped_in_kernel
    internal = any(name in SORTED_TYPES for name in types) or reward_pass
    computed = OUTPUT_NAMES[:3] if internal else per_pair_wanted
    wanted = [*computed, *(OUTPUT_NAMES[3:] if want_grad else ())]
    _refuse_unwanted_out(out, per_pair_wanted)
    # The caller's arrays (a converted copy cannot overlap anything the caller holds).
    # (The lengths and weights the caller passed must not be overwritten either.)
    given = [value for value in (chosen_lengths, rejected_lengths, weights, gt_reward_margins)
             if isinstance(value, np.ndarray)]
    outputs, targets = _check_outputs(out, wanted, length, dtype, [*originals, *given])
    grad_divisor = float(length) if reduction == "mean" else 1.0
    resolved_threads = _threads.resolve_n_threads(threads, length)

    for key in OUTPUT_NAMES[:3]:
        outputs.setdefault(key, None)  # (None: not wanted, the kernels write to scratch)

    def kernel(outputs: dict[str, np.ndarray | None]) -> tuple[float, ...]:
        return _run_kernel(arrays, dtype, per_pair, pair_weights, outputs, types, type_weights,
                           beta_value, smoothing, tau, gamma, divergence, divergence_coef,
                           reduction, grad_divisor, resolved_threads, threads,
                           dpop_lambda=penalty, bco_delta=delta, alphapo_alpha=shape,
                           gt_reward_margins=margins, gt_reward_scale=gt_scale,
                           totals=totals)

    sums = kernel(outputs)
    # Any NaN/inf input makes a reward sum non-finite, so this costs nothing when all is well;
    # a false alarm from an overflowing sum of finite terms only costs the exact search.
    if want_finite and not math.isfinite(sum(sums)):
        _first_non_finite(arrays, names)
    _deliver_outputs(outputs, targets)
    fallback_outputs = outputs
    if outputs["losses"] is None and not math.isfinite(sums[_SUM_LOSS]):
        # The loss sum overflowed (inputs near DBL_MAX): its mean is taken from the per-pair
        # losses, which this call did not keep. Rare: run again with them.
        fallback_outputs = {**outputs, "losses": np.empty(length, dtype=dtype)}
        for key in OUTPUT_NAMES[3:]:
            if fallback_outputs.get(key) is not None:
                fallback_outputs[key] = np.empty(length, dtype=dtype)
        kernel(fallback_outputs)
    means = _fallback_means(
        sums, length, fallback_outputs, arrays, beta_value,
        (per_pair["chosen_lengths"], per_pair["rejected_lengths"])
        if _normalized_rewards(types) else None)
    if reward_pass:
        _alphapo_rewards(outputs, means, arrays, per_pair, beta_value, shape)
    elif shaped_in_kernel and not all(math.isfinite(sums[index]) for index in _REWARD_SUMS):
        # Rewards or margins beyond double (the kernel wrote them, inf where they overflow):
        # their means the careful way, from the inputs.
        _alphapo_rewards(None, means, arrays, per_pair, beta_value, shape,
                         only=[index for index in _REWARD_SUMS
                               if not math.isfinite(sums[index])])
    for key in OUTPUT_NAMES[:3]:
        if key not in per_pair_wanted:
            outputs[key] = None

    if reduction == "mean":
        loss: float | np.ndarray = means[_SUM_LOSS]
    elif reduction == "sum":
        loss = sums[_SUM_LOSS]
    else:
        loss = outputs["losses"]
    return loss, outputs, means


def _kernel_shapes_rewards(types: Sequence[str], type_weights: Sequence[float],
                           alpha: float) -> bool:
    """Whether the kernel writes alphapo's rewards ``beta * r(a)`` itself: alphapo alone with
    weight 1 and alpha != 0 (LossConfig.shaped_rewards: csrc/alphapo_body.h). In a list the
    general loop writes ``beta * p / n`` and :func:`_alphapo_rewards` reshapes them."""
    return alpha != 0.0 and tuple(types) == ("alphapo",) and tuple(type_weights) == (1.0,)


def _alphapo_rewards(outputs: Mapping[str, np.ndarray] | None, means: list[float],
                     arrays: Sequence[np.ndarray | None],
                     per_pair: Mapping[str, np.ndarray | None], beta: float,
                     alpha: float, only: Sequence[int] | None = None) -> None:
    """TRL's rewards of AlphaPO (CPOTrainer.cpo_loss with alpha != 0): ``beta * r(a)`` with
    ``r(a) = -expm1(-alpha * a) / alpha`` of the average log-prob ``a = p / n``, in place of
    the kernel's ``beta * a``; the reward means, margin and accuracy follow. (A NumPy pass
    over the rows, in float64: the loss and its gradient are the kernel's.) A reward whose
    true value overflows double is -inf (alpha > 0) or +inf (alpha < 0); a margin of two
    such rewards is taken from logarithms, so it is NaN for no finite input.

    ``only``: the positions in the sums (chosen, rejected, margin) whose means to set, the
    rest left as they are, with ``outputs`` None: the kernel's rewards stay (alphapo alone,
    whose rewards the kernel computes, where a reward or margin sum overflowed)."""
    sign = -math.copysign(1.0, alpha)  # the sign of r(a) where it is large
    log_scale = math.log(beta) - math.log(abs(alpha))
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        averages = [np.asarray(arrays[side], np.float64) / per_pair[key]
                    for side, key in ((0, "chosen_lengths"), (1, "rejected_lengths"))]
        exponents = [-alpha * a for a in averages]
        rewards = []
        for b in exponents:
            reward = beta * (-np.expm1(b) / alpha)
            # |beta r| = exp(b + log(1 - e^{-b}) + log(beta / |alpha|)) for b > 0, on the
            # rows that need it only (the logarithms of every row were most of the time)
            far = (b > 0.0) & ((b > 700.0) | ~np.isfinite(reward))
            if far.any():
                b_far = b[far]
                reward[far] = sign * np.exp(b_far + np.log(-np.expm1(-b_far)) + log_scale)
            rewards.append(reward)
        chosen, rejected = rewards
        margins = chosen - rejected
        log_margins = None  # log|margin|, formed only where a mean needs it
        bad = ~np.isfinite(margins)
        if bad.any():  # inf - inf: from logarithms, as the kernel's careful path
            gap = -alpha * (averages[0] - averages[1])
            top = np.maximum(exponents[0], exponents[1])
            log_careful = top + np.log(-np.expm1(-np.abs(gap))) + log_scale
            careful = np.where(gap == 0.0, 0.0, -np.sign(gap) * math.copysign(1.0, alpha)
                               * np.exp(log_careful))
            log_margins = np.where(bad, log_careful, np.log(np.abs(margins)))
            margins = np.where(bad, careful, margins)
        length = chosen.shape[0]
        wanted = _REWARD_SUMS if only is None else only
        if _SUM_CHOSEN in wanted:
            means[_SUM_CHOSEN] = float(np.sum(chosen / length))
        if _SUM_REJECTED in wanted:
            means[_SUM_REJECTED] = float(np.sum(rejected / length))
        if _SUM_MARGIN in wanted:
            margin_mean = float(np.sum(margins / length))
            if not math.isfinite(margin_mean):  # +inf and -inf margins: a signed log-sum-exp
                if log_margins is None:
                    log_margins = np.log(np.abs(margins))
                margin_mean = _signed_log_mean(log_margins, margins > 0, margins < 0, length)
            means[_SUM_MARGIN] = margin_mean
        if outputs is None:
            return
        outputs["chosen_rewards"][...] = chosen  # (float32: beyond its range is inf)
        outputs["rejected_rewards"][...] = rejected
    means[_SUM_ACCURACY] = float(np.count_nonzero(chosen > rejected)) / length


def _signed_log_mean(logs: np.ndarray, positive: np.ndarray, negative: np.ndarray,
                     length: int) -> float:
    """The mean of values given as log|v| and their signs: the positive and the negative
    ones summed as log-sum-exps, then their difference over length (inf only where the mean
    itself overflows)."""
    def log_sum(selected: np.ndarray) -> float:
        if not selected.any():
            return -math.inf
        part = logs[selected]
        top = float(np.max(part))
        return top + math.log(float(np.sum(np.exp(part - top)))) if math.isfinite(top) \
            else top
    up, down = log_sum(positive), log_sum(negative)
    if up == down:
        return 0.0
    top, gap = max(up, down), abs(up - down)
    log_value = top + math.log(-math.expm1(-gap)) - math.log(length)
    try:
        value = math.exp(log_value)
    except OverflowError:
        value = math.inf
    return value if up > down else -value


def _normalized_rewards(types: Sequence[str]) -> bool:
    """Whether the rewards are length-normalised (simpo's beta * p / n)."""
    return any(LOSS_REGISTRY[name].normalized_rewards for name in types)


def _takes_normalized(name: str, both_lengths: bool) -> bool:
    """Whether the loss type gets length-normalised log-ratios: always when it requires the
    lengths, when both are given for the optional ones (ipo)."""
    entry = LOSS_REGISTRY[name]
    return entry.normalized and (not entry.optional_lengths or both_lengths)


def _run_kernel(arrays: Sequence[np.ndarray | None], dtype: type,
                 per_pair: Mapping[str, np.ndarray | None], pair_weights: np.ndarray | None,
                 outputs: dict[str, np.ndarray], types: Sequence[str],
                 type_weights: Sequence[float], beta: float, smoothing: float, tau: float,
                 gamma: float, divergence: int, divergence_coef: float, reduction: str,
                 grad_divisor: float, resolved_threads: int, threads: int | None, *,
                 dpop_lambda: float = DPOP_LAMBDA_DEFAULT, bco_delta: float = 0.0,
                 alphapo_alpha: float = 0.0, gt_reward_margins: np.ndarray | None = None,
                 gt_reward_scale: float = 1.0,
                 totals: Mapping[str, float] | None = None) -> tuple[float, ...]:
    """The kernel call for the validated arguments: one LossConfig (which picks the kernel
    loop) for every type but aot / aot_unpaired, whose sorted terms dpo_fast._sorted adds. Returns
    the kernel's sums (with the loss sum of the whole) and fills ``outputs``."""
    length = arrays[0].shape[0]
    chosen_lengths, rejected_lengths = per_pair["chosen_lengths"], per_pair["rejected_lengths"]
    both_lengths = chosen_lengths is not None and rejected_lengths is not None
    terms = tuple(
        (KERNEL_IDS[name], int(_takes_normalized(name, both_lengths)), weight)
        for name, weight in zip(types, type_weights) if name not in SORTED_TYPES)
    totals = {} if totals is None else totals  # (the sums _per_pair took: float(np.sum(.)))

    def total(key: str, array: np.ndarray) -> float:
        return totals[key] if key in totals else float(np.sum(array))


    sft_value = sft_batch_offset = sft_pair_offset = 0.0
    if "sft" in types:
        # sft = -(sum pc)/(sum nc), the same for every pair (TRL); its derivative with
        # respect to every pc_j is -1/(sum nc), times the pair weights the reduction adds up.
        token_count = total("chosen_lengths", chosen_lengths)
        weight_total = float(length) if pair_weights is None else total("weights",
                                                                        pair_weights)
        logp_total = float(np.sum(arrays[0], dtype=np.float64))
        sft_value = -logp_total / token_count
        if not math.isfinite(sft_value):  # a sum of inputs near DBL_MAX overflowed
            sft_value = -float(np.sum(np.asarray(arrays[0], np.float64) / token_count))
        slope = type_weights[types.index("sft")] * (-1.0 / token_count)
        if reduction == "none":
            sft_pair_offset = slope
        else:
            sft_batch_offset = slope * (weight_total / grad_divisor)

    sorted_types = [name for name in types if name in SORTED_TYPES]
    # One sorted type alone: the kernel only takes the rewards and sums and the term is
    # written in place. With sorted terms to add to the kernel's, the kernel writes float64
    # and the sum is cast once at the end.
    alone = bool(sorted_types) and _sorted.alone(types, type_weights, pair_weights)
    staged = dtype is np.float32 and bool(sorted_types) and not alone
    kernel_outputs = ({key: np.empty(length) for key in outputs} if staged else
                      {**outputs, "losses": None, "grad_chosen": None, "grad_rejected": None}
                      if alone else outputs)
    kernel_arrays = ([None if a is None else np.asarray(a, np.float64) for a in arrays]
                     if staged else arrays)
    config = _pairwise.LossConfig(
        terms, beta=beta, label_smoothing=smoothing, discopop_tau=tau, simpo_gamma=gamma,
        sft_value=sft_value, dpop_lambda=dpop_lambda, bco_delta=bco_delta,
        alphapo_alpha=alphapo_alpha, gt_reward_scale=gt_reward_scale,
        divergence=divergence, divergence_coef=divergence_coef,
        normalized_rewards=_normalized_rewards(types), grad_chosen_offset=sft_batch_offset,
        grad_chosen_pair_offset=sft_pair_offset, grad_divisor=grad_divisor,
        weighted=pair_weights is not None)
    sums = list(_pairwise.run(config, *kernel_arrays, chosen_lengths, rejected_lengths,
                              pair_weights, kernel_outputs, resolved_threads,
                              gt_reward_margins=gt_reward_margins))
    if sorted_types:
        sums[_SUM_LOSS] = _sorted.add_sorted_terms(
            types, type_weights, kernel_arrays, outputs, kernel_outputs, staged, pair_weights,
            beta, smoothing, grad_divisor, threads)
    return tuple(sums)
